//! Deployments as a fact of the pipeline, not of one host: `pizza-host deploy`, `rollback`,
//! `pause` and `resume` write what they change to the pipeline's compacted topic
//! `<group_prefix>-deployments`, and every host of the pipeline applies it from there, in the
//! topic's order (it has one partition). A host that starts reads the topic first, so it runs
//! the deployed versions and leaves paused stages paused, whatever its files say.
//!
//! The topic holds three kinds of record, told apart by their keys:
//! - `chunk/<digest>/<n>`: the n-th piece (at most [`CHUNK_BYTES`]) of a component, written
//!   before the version that needs it. A component of any size fits in records of the
//!   broker's default limit, and the pieces put together must have the digest that names them.
//! - `version/<stage>/<uuid>`: from here on the stage runs this [`Version`] (a digest, or its
//!   pipeline file's component). Every key is new, so compaction keeps each one: the history
//!   that `versions` lists and `rollback` goes back to. The host that writes a version drops
//!   the stage's versions beyond the newest [`KEEP_VERSIONS`] (tombstones), and the chunks of
//!   components no version kept needs.
//! - `pause/<stage>`: whether the stage is paused; compaction keeps the latest.
//!
//! The host that takes a deploy checks the component (compiled and smoke-called) before it
//! writes anything, so a bad component is refused everywhere and nothing changes. Each host
//! checks again before it swaps; one that cannot load a version keeps what it runs and says why
//! in its stage table (`last_swap_error`). A swap happens between two batches of records, as
//! every swap does, so a deploy loses and doubles nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::kafka::KafkaSettings;
use crate::kafka::send::deliver;
use crate::lock;
use crate::pipeline::stages::{
    DeployedComponent, StageCommandError, Stages, SwapReport, UnknownStage,
};

/// The largest piece of a component in one record: well under the broker's default limit of
/// 1 MiB per record, compressed or not.
pub const CHUNK_BYTES: usize = 512 << 10;
/// How many versions of each stage the topic keeps.
pub const KEEP_VERSIONS: usize = 10;
/// The topic's segments roll hourly, so that compaction drops what was tombstoned within
/// hours (the default week-long segment would keep it a week).
const SEGMENT_MS: &str = "3600000";
/// How long a command waits for this host to apply what it wrote.
const APPLY_WAIT: Duration = Duration::from_secs(60);
/// How many recent outcomes are kept for the commands waiting on them.
const OUTCOMES_KEPT: usize = 256;

/// The deployments topic of the pipeline whose group prefix is `group_prefix`.
pub fn topic(group_prefix: &str) -> String {
    format!("{group_prefix}-deployments")
}

/// A version a stage runs from the moment its record is in the topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Version {
    /// The key of its record (not in the record's value).
    #[serde(skip)]
    pub key: String,
    /// The stage.
    pub stage: String,
    /// The component's `sha256:…`; none for the stage's pipeline-file component.
    pub digest: Option<String>,
    /// The component's size in bytes (0 for the file's).
    pub size: u64,
    /// How many chunk records hold it.
    pub chunks: u32,
    /// When it was deployed (RFC 3339).
    pub at: String,
    /// Who deployed it, as the client said (`pizza-host deploy --by`, default `$USER`).
    pub by: Option<String>,
    /// The `instance_id` of the host that took the deploy.
    pub host: String,
    /// A rollback to an earlier version (its chunks were written then).
    pub rollback: bool,
}

/// A version as `pizza-host versions` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    /// The version.
    #[serde(flatten)]
    pub version: Version,
    /// The stage runs it now (the latest version of the stage).
    pub current: bool,
}

/// What a pause or resume record says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PauseRecord {
    paused: bool,
    at: String,
    by: Option<String>,
    host: String,
}

/// One record of the topic, read.
enum Record {
    Chunk {
        digest: String,
        index: u32,
        bytes: Vec<u8>,
    },
    Version(Version),
    /// A version dropped from the history (the tombstone of its key).
    VersionGone(String),
    Pause {
        stage: String,
        paused: bool,
    },
}

impl Record {
    /// The record under `key`, or `None` for one this host does not know (a later version's,
    /// or damaged: logged).
    fn parse(key: &[u8], payload: Option<&[u8]>) -> Option<Self> {
        let key = std::str::from_utf8(key).ok()?;
        let Some(payload) = payload else {
            // Tombstones of chunks need nothing: what used them is gone already.
            return key
                .starts_with("version/")
                .then(|| Self::VersionGone(key.to_owned()));
        };
        let parsed = if let Some(rest) = key.strip_prefix("chunk/") {
            let (digest, index) = rest.rsplit_once('/')?;
            Some(Self::Chunk {
                digest: digest.to_owned(),
                index: index.parse().ok()?,
                bytes: payload.to_vec(),
            })
        } else if key.starts_with("version/") {
            serde_json::from_slice(payload).ok().map(|version| {
                Self::Version(Version {
                    key: key.to_owned(),
                    ..version
                })
            })
        } else if let Some(stage) = key.strip_prefix("pause/") {
            serde_json::from_slice::<PauseRecord>(payload)
                .ok()
                .map(|record| Self::Pause {
                    stage: stage.to_owned(),
                    paused: record.paused,
                })
        } else {
            None
        };
        if parsed.is_none() {
            tracing::warn!(key, "skipping a deployments record this host cannot read");
        }
        parsed
    }
}

/// What the topic says so far: each stage's versions, oldest first, and the paused stages.
#[derive(Debug, Default)]
struct Ledger {
    versions: BTreeMap<String, Vec<Version>>,
    paused: BTreeSet<String>,
}

impl Ledger {
    fn record(&mut self, record: &Record) {
        match record {
            Record::Chunk { .. } => {}
            Record::Version(version) => self
                .versions
                .entry(version.stage.clone())
                .or_default()
                .push(version.clone()),
            Record::VersionGone(key) => {
                for versions in self.versions.values_mut() {
                    versions.retain(|version| version.key != *key);
                }
            }
            Record::Pause { stage, paused } => {
                if *paused {
                    self.paused.insert(stage.clone());
                } else {
                    self.paused.remove(stage);
                }
            }
        }
    }

    /// The version stage `stage` runs, if it was ever deployed.
    fn current(&self, stage: &str) -> Option<&Version> {
        self.versions.get(stage)?.last()
    }

    /// The keys to tombstone so that `stage` keeps its newest `keep` versions: the older
    /// versions, and the chunks of their components that no kept version of any stage needs.
    fn trim(&self, stage: &str, keep: usize) -> Vec<String> {
        let Some(versions) = self.versions.get(stage) else {
            return Vec::new();
        };
        let cut = versions.len().saturating_sub(keep);
        let needed: BTreeSet<&str> = self
            .versions
            .iter()
            .flat_map(|(name, versions)| &versions[if name == stage { cut } else { 0 }..])
            .filter_map(|version| version.digest.as_deref())
            .collect();
        let mut keys = Vec::new();
        let mut dropped = BTreeSet::new();
        for version in &versions[..cut] {
            keys.push(version.key.clone());
            if let Some(digest) = version.digest.as_deref()
                && !needed.contains(digest)
                && dropped.insert(digest)
            {
                keys.extend((0..version.chunks).map(|n| format!("chunk/{digest}/{n}")));
            }
        }
        keys
    }
}

/// Why a command was refused or did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No such stage on this host.
    #[error(transparent)]
    Unknown(#[from] UnknownStage),
    /// The component does not load, or the rollback has nowhere to go: nothing was written.
    #[error("{0:#}")]
    Refused(anyhow::Error),
    /// No deployed version of the stage matches.
    #[error(
        "stage {stage:?} has no deployed version {wanted:?} (`pizza-host versions {stage}` lists them)"
    )]
    NoSuchVersion {
        /// The stage.
        stage: String,
        /// What was asked for.
        wanted: String,
    },
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// Kafka did not take the record: nothing changed.
    #[error("cannot write to the deployments topic {topic}: {cause:#}")]
    NotWritten {
        /// The topic.
        topic: String,
        /// Why.
        cause: anyhow::Error,
    },
    /// Written for every host, but this host did not apply it (in time, or at all).
    #[error("written for every host of the pipeline, but not applied on this one: {0}")]
    NotApplied(String),
}

/// What applying one record did on this host.
#[derive(Debug, Clone)]
enum Outcome {
    Swapped(SwapReport),
    Paused { changed: bool },
    Failed(String),
}

/// This host's side of the pipeline's deployments: it writes commands to the topic and
/// applies every record of it to the stages.
pub struct Deployments {
    kafka: KafkaSettings,
    topic: String,
    /// This host's `instance_id`, which each command it writes carries.
    host: String,
    stages: Arc<Stages>,
    producer: FutureProducer,
    ledger: Mutex<Ledger>,
    /// Where to follow the topic from: just after what [`Deployments::open`] read.
    follow_from: Offset,
    /// The offset after the last record applied here...
    applied: watch::Sender<i64>,
    /// ...and what applying each of the recent ones did, for the commands waiting on them.
    outcomes: Mutex<BTreeMap<i64, Outcome>>,
    shutdown: CancellationToken,
}

impl Deployments {
    /// Creates the topic if missing, reads it, and presets `stages` with what it says (the
    /// deployed components, the paused stages), before they start.
    pub async fn open(
        kafka: &KafkaSettings,
        group_prefix: &str,
        replication: Option<i32>,
        host: &str,
        stages: Arc<Stages>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let topic = topic(group_prefix);
        kafka
            .ensure_topics(
                &[&topic],
                1,
                replication,
                &[("cleanup.policy", "compact"), ("segment.ms", SEGMENT_MS)],
            )
            .await?;
        let mut ledger = Ledger::default();
        let mut next = None;
        tokio::task::block_in_place(|| {
            kafka.read_to_end(&format!("{topic}-reader"), &topic, Some(0), |message| {
                next = Some(message.offset() + 1);
                if let Some(key) = message.key()
                    && let Some(record) = Record::parse(key, message.payload())
                {
                    ledger.record(&record);
                }
            })
        })?;
        let wanted: BTreeSet<String> = ledger
            .versions
            .values()
            .filter_map(|versions| versions.last()?.digest.clone())
            .collect();
        let mut components =
            tokio::task::block_in_place(|| read_components(kafka, &topic, &wanted))?;
        let deployed = ledger
            .versions
            .iter()
            .filter_map(|(stage, versions)| {
                let digest = versions.last()?.digest.clone()?;
                match components.get_mut(&digest) {
                    Some(bytes) => Some((stage.clone(), DeployedComponent { digest, bytes: bytes.clone() })),
                    None => {
                        tracing::error!(stage, digest, "the deployed component's chunks are missing from {topic}; running the file's");
                        None
                    }
                }
            })
            .collect();
        stages.preset(deployed, ledger.paused.clone());
        Ok(Arc::new(Self {
            producer: kafka.producer()?,
            kafka: kafka.clone(),
            topic,
            host: host.to_owned(),
            stages,
            ledger: Mutex::new(ledger),
            follow_from: next.map_or(Offset::Beginning, Offset::Offset),
            applied: watch::Sender::new(next.unwrap_or(0)),
            outcomes: Mutex::default(),
            shutdown,
        }))
    }

    /// Applies each new record of the topic to the stages, in order, until shutdown.
    pub async fn follow(self: Arc<Self>) -> anyhow::Result<()> {
        let reader: StreamConsumer = self.kafka.reader(&format!("{}-follower", self.topic))?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, 0, self.follow_from)?;
        reader.assign(&assignment)?;
        // The pieces of the components being deployed, until their version arrives.
        let mut chunks: BTreeMap<String, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
        let mut failing = false;
        loop {
            let message = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                message = reader.recv() => message,
            };
            let message = match message {
                Ok(message) => {
                    failing = false;
                    message
                }
                Err(err) => {
                    // The cluster is away: librdkafka goes on trying; said once per outage.
                    if !failing {
                        tracing::warn!(topic = self.topic, "cannot read deployments: {err}");
                    }
                    failing = true;
                    continue;
                }
            };
            let offset = message.offset();
            let record = message
                .key()
                .and_then(|key| Record::parse(key, message.payload()));
            let outcome = match record {
                None => None,
                Some(Record::Chunk {
                    digest,
                    index,
                    bytes,
                }) => {
                    chunks.entry(digest).or_default().insert(index, bytes);
                    None
                }
                Some(gone @ Record::VersionGone(_)) => {
                    lock(&self.ledger).record(&gone);
                    None
                }
                Some(record) => {
                    lock(&self.ledger).record(&record);
                    let outcome = self.apply(record, &mut chunks).await;
                    // A deploy's pieces come just before its version; pieces left over belong
                    // to a deploy that did not finish (or arrived interleaved with another's,
                    // and are read again from the topic).
                    chunks.clear();
                    Some(outcome)
                }
            };
            if let Some(outcome) = outcome {
                let mut outcomes = lock(&self.outcomes);
                outcomes.insert(offset, outcome);
                while outcomes.len() > OUTCOMES_KEPT {
                    outcomes.pop_first();
                }
            }
            self.applied.send_replace(offset + 1);
        }
    }

    /// Applies a version or a pause to this host's stages.
    async fn apply(
        &self,
        record: Record,
        chunks: &mut BTreeMap<String, BTreeMap<u32, Vec<u8>>>,
    ) -> Outcome {
        match record {
            Record::Chunk { .. } | Record::VersionGone(_) => {
                Outcome::Failed("not a command".into())
            }
            Record::Version(version) => {
                let stage = version.stage.clone();
                if !self.stages.has(&stage).await {
                    return Outcome::Failed(UnknownStage(stage).to_string());
                }
                let swapped = match &version.digest {
                    None => self.stages.revert_to_file(&stage).await,
                    Some(digest) => match self.component(&version, chunks.remove(digest)) {
                        Ok(deployed) => self.stages.deploy(&stage, deployed).await,
                        Err(err) => Err(err),
                    },
                };
                match swapped {
                    Ok(report) => Outcome::Swapped(report),
                    Err(err) => {
                        tracing::error!(
                            stage,
                            digest = version.digest,
                            "deployed version not applied on this host, which keeps what it runs: {err:#}"
                        );
                        Outcome::Failed(format!("{err:#}"))
                    }
                }
            }
            Record::Pause { stage, paused } => {
                let done = if paused {
                    self.stages.pause(&stage).await
                } else {
                    self.resume(&stage).await
                };
                match done {
                    Ok(changed) => Outcome::Paused { changed },
                    Err(err) => Outcome::Failed(err.to_string()),
                }
            }
        }
    }

    /// Resumes `stage`, waiting for its loop to finish stopping first.
    async fn resume(&self, stage: &str) -> Result<bool, StageCommandError> {
        loop {
            match self.stages.resume(stage).await {
                Err(StageCommandError::StillStopping(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                done => return done,
            }
        }
    }

    /// The bytes of `version`: from `pieces` read just now if they are whole, else from the
    /// topic; checked against the version's digest.
    fn component(
        &self,
        version: &Version,
        pieces: Option<BTreeMap<u32, Vec<u8>>>,
    ) -> anyhow::Result<DeployedComponent> {
        let digest = version.digest.clone().unwrap_or_default();
        let bytes = match pieces.and_then(|pieces| assemble(&digest, version.chunks, pieces)) {
            Some(bytes) => bytes,
            None => tokio::task::block_in_place(|| {
                read_components(&self.kafka, &self.topic, &BTreeSet::from([digest.clone()]))
            })?
            .remove(&digest)
            .with_context(|| format!("the chunks of {digest} are missing from {}", self.topic))?,
        };
        Ok(DeployedComponent { digest, bytes })
    }

    /// Deploys `bytes` as stage `stage` on every host of the pipeline: checks it here, writes
    /// it, and answers once this host runs it.
    pub async fn deploy(
        &self,
        stage: &str,
        bytes: Vec<u8>,
        by: Option<String>,
    ) -> Result<SwapReport, CommandError> {
        self.check_running(stage).await?;
        let bytes: Arc<[u8]> = bytes.into();
        let component = self
            .stages
            .validate(stage, bytes.clone())
            .await
            .map_err(|err| match err.downcast::<UnknownStage>() {
                Ok(unknown) => CommandError::Unknown(unknown),
                Err(err) => CommandError::Refused(err),
            })?;
        let digest = component.digest().to_owned();
        if let Some(report) = self.already_runs(stage, Some(&digest)).await {
            return Ok(report);
        }
        let chunks = bytes.chunks(CHUNK_BYTES).count();
        let version = self.version(stage, Some(digest.clone()), bytes.len(), chunks, by, false);
        let offset = self
            .write(|producer, topic| async move {
                // One after another: the next piece is handed over only once the broker has
                // the one before, so a large component does not fill the producer's queue.
                for (index, piece) in bytes.chunks(CHUNK_BYTES).enumerate() {
                    let key = format!("chunk/{digest}/{index}");
                    deliver(producer, FutureRecord::to(topic).key(&key).payload(piece)).await?;
                }
                write_version(producer, topic, &version).await
            })
            .await?;
        let swapped = self.swapped_at(offset).await;
        self.trim(stage).await;
        swapped
    }

    /// Makes stage `stage` run an earlier version on every host: `to` names it (a digest or
    /// a prefix of one, or `file` for the pipeline file's component); without `to`, the
    /// version before the current one.
    pub async fn rollback(
        &self,
        stage: &str,
        to: Option<&str>,
        by: Option<String>,
    ) -> Result<SwapReport, CommandError> {
        self.check_running(stage).await?;
        let target = self.rollback_target(stage, to)?;
        if let Some(report) = self.already_runs(stage, target.digest.as_deref()).await {
            return Ok(report);
        }
        if let Some(digest) = &target.digest {
            let deployed = self
                .component(&target, None)
                .map_err(CommandError::Refused)?;
            self.stages
                .validate(stage, deployed.bytes)
                .await
                .map_err(CommandError::Refused)?;
            tracing::debug!(stage, digest, "rollback target checked");
        }
        let version = self.version(
            stage,
            target.digest,
            usize::try_from(target.size).unwrap_or(usize::MAX),
            usize::try_from(target.chunks).unwrap_or(usize::MAX),
            by,
            true,
        );
        let offset = self
            .write(|producer, topic| async move { write_version(producer, topic, &version).await })
            .await?;
        let swapped = self.swapped_at(offset).await;
        self.trim(stage).await;
        swapped
    }

    /// Drops `stage`'s versions beyond the newest [`KEEP_VERSIONS`], and the chunks no kept
    /// version needs, from the topic (tombstones; this host's follower drops them from the
    /// history). A failure is only logged: the history is just longer for a while.
    async fn trim(&self, stage: &str) {
        let keys = lock(&self.ledger).trim(stage, KEEP_VERSIONS);
        for key in keys {
            let tombstone = FutureRecord::<String, [u8]>::to(&self.topic).key(&key);
            if let Err(err) = deliver(&self.producer, tombstone).await {
                tracing::warn!(stage, key, "cannot drop an old version: {err:#}");
                return;
            }
        }
    }

    /// The version a rollback of `stage` goes to; see [`Deployments::rollback`].
    fn rollback_target(&self, stage: &str, to: Option<&str>) -> Result<Version, CommandError> {
        let ledger = lock(&self.ledger);
        let versions = ledger.versions.get(stage).map_or(&[][..], Vec::as_slice);
        let file = Version {
            digest: None,
            size: 0,
            chunks: 0,
            ..self.version(stage, None, 0, 0, None, true)
        };
        match to {
            Some("file") => Ok(file),
            Some(wanted) => {
                let prefix = if wanted.starts_with("sha256:") {
                    wanted.to_owned()
                } else {
                    format!("sha256:{wanted}")
                };
                versions
                    .iter()
                    .rev()
                    .find(|v| v.digest.as_deref().is_some_and(|d| d.starts_with(&prefix)))
                    .cloned()
                    .ok_or_else(|| CommandError::NoSuchVersion {
                        stage: stage.to_owned(),
                        wanted: wanted.to_owned(),
                    })
            }
            None => {
                let Some((current, earlier)) = versions.split_last() else {
                    return Err(CommandError::Refused(anyhow::anyhow!(
                        "stage {stage:?} was never deployed: it runs its pipeline file's component, and there is nothing to roll back to"
                    )));
                };
                if current.digest.is_none() {
                    return Err(CommandError::Refused(anyhow::anyhow!(
                        "stage {stage:?} runs its pipeline file's component already; name a version to go to (`pizza-host versions {stage}`)"
                    )));
                }
                Ok(earlier
                    .iter()
                    .rev()
                    .find(|v| v.digest != current.digest)
                    .cloned()
                    .unwrap_or(file))
            }
        }
    }

    /// Pauses (`paused`) or resumes stage `stage` on every host; answers once this host has
    /// (a pause: once the stage committed what it finished and left its group).
    pub async fn pause(
        &self,
        stage: &str,
        paused: bool,
        by: Option<String>,
    ) -> Result<bool, CommandError> {
        self.check_running(stage).await?;
        let record = PauseRecord {
            paused,
            at: now(),
            by,
            host: self.host.clone(),
        };
        let payload = serde_json::to_vec(&record).map_err(|err| CommandError::NotWritten {
            topic: self.topic.clone(),
            cause: err.into(),
        })?;
        let key = format!("pause/{stage}");
        let offset = self
            .write(|producer, topic| async move {
                deliver(
                    producer,
                    FutureRecord::to(topic).key(&key).payload(&payload),
                )
                .await
            })
            .await?;
        match self.outcome_at(offset).await? {
            Outcome::Paused { changed } => Ok(changed),
            Outcome::Failed(why) => Err(CommandError::NotApplied(why)),
            Outcome::Swapped(_) => Err(CommandError::NotApplied("not a pause".into())),
        }
    }

    /// Stage `stage`'s versions, newest first.
    pub async fn versions(&self, stage: &str) -> Result<Vec<VersionInfo>, CommandError> {
        let versions = lock(&self.ledger).versions.get(stage).cloned();
        let Some(versions) = versions else {
            self.check_running(stage).await?;
            return Ok(Vec::new());
        };
        Ok(versions
            .into_iter()
            .rev()
            .enumerate()
            .map(|(i, version)| VersionInfo {
                version,
                current: i == 0,
            })
            .collect())
    }

    /// A version of `stage` taken by this host now.
    fn version(
        &self,
        stage: &str,
        digest: Option<String>,
        size: usize,
        chunks: usize,
        by: Option<String>,
        rollback: bool,
    ) -> Version {
        Version {
            key: format!("version/{stage}/{}", uuid::Uuid::now_v7()),
            stage: stage.to_owned(),
            digest,
            size: size as u64,
            chunks: u32::try_from(chunks).unwrap_or(u32::MAX),
            at: now(),
            by,
            host: self.host.clone(),
            rollback,
        }
    }

    async fn check_running(&self, stage: &str) -> Result<(), CommandError> {
        if self.shutdown.is_cancelled() {
            return Err(CommandError::ShuttingDown);
        }
        if !self.stages.has(stage).await {
            return Err(UnknownStage(stage.to_owned()).into());
        }
        Ok(())
    }

    /// An "unchanged" report when the stage's latest version is already `digest` (none: the
    /// file's) and this host runs it: nothing is written.
    async fn already_runs(&self, stage: &str, digest: Option<&str>) -> Option<SwapReport> {
        let current = lock(&self.ledger).current(stage)?.digest.clone();
        if current.as_deref() != digest {
            return None;
        }
        let running = self.stages.list().await;
        let info = running.iter().find(|s| s.name == stage)?;
        (digest.is_none_or(|d| d == info.digest))
            .then(|| SwapReport::unchanged(stage, info.digest.clone(), Duration::ZERO))
    }

    /// Runs `writing` with the producer and the topic; the offset it returns is the record
    /// this host then applies.
    async fn write<'a, F, Fut>(&'a self, writing: F) -> Result<i64, CommandError>
    where
        F: FnOnce(&'a FutureProducer, &'a str) -> Fut,
        Fut: Future<Output = anyhow::Result<i64>>,
    {
        writing(&self.producer, &self.topic)
            .await
            .map_err(|cause| CommandError::NotWritten {
                topic: self.topic.clone(),
                cause,
            })
    }

    async fn swapped_at(&self, offset: i64) -> Result<SwapReport, CommandError> {
        match self.outcome_at(offset).await? {
            Outcome::Swapped(report) => Ok(report),
            Outcome::Failed(why) => Err(CommandError::NotApplied(why)),
            Outcome::Paused { .. } => Err(CommandError::NotApplied("not a version".into())),
        }
    }

    /// What applying the record at `offset` did here, once it is applied.
    async fn outcome_at(&self, offset: i64) -> Result<Outcome, CommandError> {
        let mut applied = self.applied.subscribe();
        let reached = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|&next| next > offset));
        match reached.await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => {
                return Err(CommandError::NotApplied(format!(
                    "this host did not apply it within {APPLY_WAIT:?}"
                )));
            }
        }
        lock(&self.outcomes)
            .remove(&offset)
            .ok_or_else(|| CommandError::NotApplied("its outcome is no longer known".into()))
    }
}

/// Writes `version` under its key; returns its offset.
async fn write_version(
    producer: &FutureProducer,
    topic: &str,
    version: &Version,
) -> anyhow::Result<i64> {
    let key = format!("version/{}/{}", version.stage, uuid::Uuid::now_v7());
    let payload = serde_json::to_vec(version)?;
    deliver(
        producer,
        FutureRecord::to(topic).key(&key).payload(&payload),
    )
    .await
}

/// Reads the components named in `wanted` from the topic's chunks, each checked against its
/// digest; a component whose chunks are not all there is left out.
fn read_components(
    kafka: &KafkaSettings,
    topic: &str,
    wanted: &BTreeSet<String>,
) -> anyhow::Result<BTreeMap<String, Arc<[u8]>>> {
    if wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut pieces: BTreeMap<String, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
    // The versions that name each digest say how many pieces it has.
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    kafka.read_to_end(
        &format!("{topic}-reader"),
        topic,
        Some(0),
        |message| match message
            .key()
            .and_then(|key| Record::parse(key, message.payload()))
        {
            Some(Record::Chunk {
                digest,
                index,
                bytes,
            }) if wanted.contains(&digest) => {
                pieces.entry(digest).or_default().insert(index, bytes);
            }
            Some(Record::Version(Version {
                digest: Some(digest),
                chunks,
                ..
            })) if wanted.contains(&digest) => {
                counts.insert(digest, chunks);
            }
            _ => {}
        },
    )?;
    Ok(pieces
        .into_iter()
        .filter_map(|(digest, pieces)| {
            let count = *counts.get(&digest)?;
            let bytes = assemble(&digest, count, pieces)?;
            Some((digest, bytes))
        })
        .collect())
}

/// The `count` pieces put together, if they are all there and their digest is `digest`.
fn assemble(digest: &str, count: u32, pieces: BTreeMap<u32, Vec<u8>>) -> Option<Arc<[u8]>> {
    if pieces.len() != count as usize || pieces.keys().copied().ne(0..count) {
        return None;
    }
    let bytes: Vec<u8> = pieces.into_values().flatten().collect();
    if crate::runtime::digest(&bytes) != digest {
        tracing::error!(
            digest,
            "a deployed component's chunks do not match its digest"
        );
        return None;
    }
    Some(bytes.into())
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(bytes: &[u8], size: usize) -> BTreeMap<u32, Vec<u8>> {
        bytes
            .chunks(size)
            .enumerate()
            .map(|(i, piece)| (i as u32, piece.to_vec()))
            .collect()
    }

    #[test]
    fn a_component_is_put_together_only_from_all_its_pieces_with_its_digest() {
        let bytes: Vec<u8> = (0..2_000u32).map(|i| i as u8).collect();
        let digest = crate::runtime::digest(&bytes);
        let whole = pieces(&bytes, 300);
        assert_eq!(
            assemble(&digest, 7, whole.clone()).as_deref(),
            Some(&bytes[..])
        );

        let mut missing = whole.clone();
        missing.remove(&3);
        assert!(assemble(&digest, 7, missing).is_none(), "a missing piece");
        assert!(
            assemble(&digest, 8, whole.clone()).is_none(),
            "fewer pieces than said"
        );
        let mut damaged = whole;
        if let Some(first) = damaged.get_mut(&0) {
            first[0] ^= 1;
        }
        assert!(assemble(&digest, 7, damaged).is_none(), "another digest");
    }

    #[test]
    fn trimming_drops_old_versions_and_only_the_chunks_nothing_kept_needs() {
        let version = |key: &str, stage: &str, digest: Option<&str>, chunks: u32| {
            Record::Version(Version {
                key: key.into(),
                stage: stage.into(),
                digest: digest.map(Into::into),
                size: 1,
                chunks,
                at: String::new(),
                by: None,
                host: "h".into(),
                rollback: false,
            })
        };
        let mut ledger = Ledger::default();
        for record in [
            version("version/sauce/1", "sauce", Some("a"), 2),
            version("version/sauce/2", "sauce", Some("b"), 1),
            version("version/cheese/1", "cheese", Some("b"), 1),
            version("version/sauce/3", "sauce", Some("a"), 2),
            version("version/sauce/4", "sauce", Some("c"), 1),
            version("version/sauce/5", "sauce", None, 0),
        ] {
            ledger.record(&record);
        }
        let keys = ledger.trim("sauce", 2);
        assert_eq!(
            keys,
            [
                "version/sauce/1",
                "chunk/a/0",
                "chunk/a/1",
                "version/sauce/2",
                "version/sauce/3",
            ],
            "b stays: cheese runs it"
        );
        for key in keys {
            if let Some(record) = Record::parse(key.as_bytes(), None) {
                ledger.record(&record);
            }
        }
        let left: Vec<&str> = ledger.versions["sauce"]
            .iter()
            .map(|v| v.key.as_str())
            .collect();
        assert_eq!(left, ["version/sauce/4", "version/sauce/5"]);
        assert!(ledger.trim("sauce", 2).is_empty());
    }

    #[test]
    fn records_are_told_apart_by_their_keys_and_unknown_ones_are_skipped() {
        let version = br#"{"stage":"sauce","digest":"sha256:ab","size":3,"chunks":1,"at":"2026-12-06T00:00:00Z","by":null,"host":"h1","rollback":false}"#;
        let mut ledger = Ledger::default();
        for (key, payload) in [
            (&b"chunk/sha256:ab/0"[..], &b"abc"[..]),
            (b"version/sauce/1", version),
            (
                b"pause/cheese",
                br#"{"paused":true,"at":"x","by":null,"host":"h1"}"#,
            ),
            (b"future/kind", b"{}"),
        ] {
            if let Some(record) = Record::parse(key, Some(payload)) {
                ledger.record(&record);
            }
        }
        assert_eq!(
            ledger.current("sauce").and_then(|v| v.digest.as_deref()),
            Some("sha256:ab")
        );
        assert!(ledger.paused.contains("cheese"));
        assert!(
            Record::parse(b"pause/cheese", None).is_none(),
            "a tombstone"
        );
    }
}
