//! A host's presence among the hosts of its pipeline, and the one-host-per-`instance_id` rule.
//!
//! The `instance_id` names a host's transactional producers and its static membership in
//! every consumer group (`group.instance.id`), which is what lets a crashed host, restarted
//! under the same name, take its partitions back at once instead of after the session timeout.
//! The same name makes two live hosts fence each other's transactions and group memberships in
//! turn, so a host must not start while another live host has its name.
//!
//! Kafka cannot tell a live member from a crashed one until its session times out, so hosts
//! beat: every [`BEAT_EVERY`] a host writes a record keyed by its `instance_id` (a random boot
//! id, its process and start time) to the compacted topic `<group_prefix>-hosts`, and a
//! tombstone when it stops cleanly. A starting host reads the topic; if the last record under
//! its name is a beat (not a tombstone), that host is either alive or crashed, and the
//! starting host watches for [`WATCH_FOR`], more than two beats: a beat from another boot means
//! a live host, and the start is refused. Only a restart after a crash pays that wait; comparing
//! the beat's timestamp with this host's clock would need synchronised clocks.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kafka::KafkaSettings;
use crate::kafka::send::deliver;

/// How often a host writes its beat.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a starting host watches for another host's beat under its name.
pub const WATCH_FOR: Duration = Duration::from_millis(2_500);
/// The hosts topic's segments roll hourly, so compaction keeps it at one record per host
/// (the default week-long segment would keep every beat of the week).
const SEGMENT_MS: &str = "3600000";
/// How long a stopping host tries to write its tombstone.
const TOMBSTONE_TIMEOUT: Duration = Duration::from_secs(5);

/// The hosts topic of the pipeline whose group prefix is `group_prefix`.
pub fn topic(group_prefix: &str) -> String {
    format!("{group_prefix}-hosts")
}

/// What a host's beat says about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Beat {
    /// Random per process: tells this host's beats from another's under the same name.
    pub boot: String,
    /// The machine's name, as the `HOSTNAME` environment variable has it, if set.
    pub machine: Option<String>,
    /// The host's process id.
    pub pid: u32,
    /// When the host started (RFC 3339).
    pub started_at: String,
    /// The host's version.
    pub version: String,
}

/// Another live host has this host's `instance_id`.
#[derive(Debug, thiserror::Error)]
#[error(
    "another live host runs this pipeline as instance_id {instance_id:?} (pid {pid} on {machine}, started {started_at}); \
     two hosts with one instance_id fence each other's transactions and consumer groups, so this one does not start. \
     Give each host its own instance_id (`instance_id` in pipeline.toml, or the HOSTNAME environment variable)",
    pid = other.pid,
    machine = other.machine.as_deref().unwrap_or("an unnamed machine"),
    started_at = other.started_at,
)]
pub struct InstanceTaken {
    /// The name both hosts have.
    pub instance_id: String,
    /// The other host's latest beat.
    pub other: Beat,
}

/// Claims `instance_id` among the hosts of the pipeline whose hosts topic is `topic`: fails
/// with [`InstanceTaken`] if another live host has it; otherwise beats on `tasks` until
/// `shutdown`, then writes a tombstone.
pub async fn claim(
    kafka: &KafkaSettings,
    topic: &str,
    replication: Option<i32>,
    instance_id: &str,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    kafka
        .ensure_topics(
            &[topic],
            1,
            replication,
            &[("cleanup.policy", "compact"), ("segment.ms", SEGMENT_MS)],
        )
        .await?;
    let beat = Beat {
        boot: uuid::Uuid::new_v4().to_string(),
        machine: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
        pid: std::process::id(),
        started_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let producer = kafka.producer()?;
    let payload = serde_json::to_vec(&beat)?;
    let last_was_beat = tokio::task::block_in_place(|| last_was_beat(kafka, topic, instance_id))?;
    // Beating before watching: of two hosts starting together, each sees the other.
    let beating = CancellationToken::new();
    let beats = tasks.spawn(beat_until(
        producer,
        topic.to_owned(),
        instance_id.to_owned(),
        payload,
        beating.clone(),
    ));
    if last_was_beat {
        tracing::info!(
            instance_id,
            "the last host named {instance_id:?} did not stop cleanly; watching {WATCH_FOR:?} for its beat"
        );
        let other = tokio::task::block_in_place(|| watch(kafka, topic, instance_id, &beat.boot));
        match other {
            Ok(None) => {}
            Ok(Some(other)) => {
                // Stop beating without a tombstone: the name is the other host's.
                beats.abort();
                return Err(InstanceTaken {
                    instance_id: instance_id.to_owned(),
                    other,
                }
                .into());
            }
            Err(err) => {
                beats.abort();
                return Err(err);
            }
        }
    }
    tasks.spawn(async move {
        shutdown.cancelled().await;
        beating.cancel();
    });
    Ok(())
}

/// Writes `payload` under `instance_id` every [`BEAT_EVERY`] until `stop`, then a tombstone.
async fn beat_until(
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    instance_id: String,
    payload: Vec<u8>,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(BEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        let record = FutureRecord::to(&topic)
            .key(&instance_id)
            .payload(payload.as_slice());
        // A beat that cannot be written (the cluster is away) is only missed: the next one
        // says the same. Logged once per outage.
        let written = tokio::select! {
            _ = stop.cancelled() => break,
            written = deliver(&producer, record) => written.map(drop),
        };
        match written {
            Ok(()) => failing = false,
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(topic, "cannot write this host's beat: {err:#}");
            }
            Err(_) => {}
        }
    }
    let tombstone = FutureRecord::<_, [u8]>::to(&topic).key(&instance_id);
    let written = tokio::time::timeout(TOMBSTONE_TIMEOUT, deliver(&producer, tombstone)).await;
    let written = written.map(|w| w.map(drop));
    if let Err(err) = written.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out"))) {
        tracing::warn!(
            topic,
            "cannot write this host's tombstone; the next host named {instance_id:?} will wait {WATCH_FOR:?} before it starts: {err:#}"
        );
    }
}

/// Whether the last record under `instance_id` on `topic` is a beat (not a tombstone): the
/// last host of that name is alive or crashed.
fn last_was_beat(kafka: &KafkaSettings, topic: &str, instance_id: &str) -> anyhow::Result<bool> {
    let mut beat = false;
    kafka.read_to_end(&format!("{topic}-reader"), topic, Some(0), |message| {
        if message.key() == Some(instance_id.as_bytes()) {
            beat = message.payload().is_some();
        }
    })?;
    Ok(beat)
}

/// Watches `topic` from its end for [`WATCH_FOR`]: the first beat under `instance_id` from a
/// boot other than `boot`, if any.
fn watch(
    kafka: &KafkaSettings,
    topic: &str,
    instance_id: &str,
    boot: &str,
) -> anyhow::Result<Option<Beat>> {
    let reader: BaseConsumer = kafka.reader(&format!("{topic}-watch"))?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::End)?;
    reader.assign(&assignment)?;
    let until = Instant::now() + WATCH_FOR;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Some(message) = reader.poll(left.min(Duration::from_millis(100))) else {
            continue;
        };
        let message = message.with_context(|| format!("cannot read {topic}"))?;
        if message.key() != Some(instance_id.as_bytes()) {
            continue;
        }
        let Some(Ok(beat)) = message.payload().map(serde_json::from_slice::<Beat>) else {
            continue;
        };
        if beat.boot != boot {
            return Ok(Some(beat));
        }
    }
    Ok(None)
}
