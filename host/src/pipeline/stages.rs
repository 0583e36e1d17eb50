//! The set of running stages, and every change to it while the host runs: starting and
//! stopping stages, swapping a stage's component, and applying an edited pipeline.
//!
//! Every change is validated whole before anything is touched: new components are compiled
//! and smoke-called and new topics created first, and only then are stages stopped, swapped or
//! started. A failed change leaves the running pipeline exactly as it was.
//!
//! A swap replaces the component between two batches of records (see [`StageShared::swap`]): the
//! consumer, its partition assignment and its offsets are not touched, so no record is skipped
//! or processed twice because of it. Stages an edit does not change are not touched at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Guarantee, Pipeline, StageConfig};
use crate::kafka::KafkaSettings;
use crate::pipeline::stage::{self, Route, StageShared, StopSignals};
use crate::runtime::{self, LoadError, Runtime, StageComponent};
use crate::telemetry::events::Events;
use crate::telemetry::metrics::Metrics;

/// Pause before a stopped stage is started again.
pub(crate) const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// How long a pipeline edit waits for a stage to read its old input to the end.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Where a stage's current component came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The file named in `pipeline.toml`.
    File(PathBuf),
    /// Uploaded through the admin API; a restart goes back to the file.
    Upload,
}

/// One stage as the admin API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StageInfo {
    /// The stage's name.
    pub name: String,
    /// Input topic.
    pub input: String,
    /// Output topic.
    pub output: String,
    /// Where the running component came from: `{"file": "<path>"}` or `"upload"`.
    #[schema(value_type = Object)]
    pub source: Source,
    /// SHA-256 of the running component.
    pub digest: String,
    /// When the running component was loaded (RFC 3339).
    pub loaded_at: String,
    /// How many times the component was swapped since the stage started.
    pub swaps: u64,
    /// Records whose result went to the output topic.
    pub processed: u64,
    /// Records that went to the dead-letter topic.
    pub dead_lettered: u64,
    /// The most recent failure to process a record, if any.
    pub last_error: Option<ErrorInfo>,
    /// The most recent rejected swap (file change or upload), if any.
    pub last_swap_error: Option<ErrorInfo>,
    /// True once the stage's consumer has joined its group.
    pub joined: bool,
    /// The input partitions this host's consumer holds.
    pub partitions: Vec<PartitionInfo>,
}

/// One input partition of a stage on this host.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PartitionInfo {
    /// The partition.
    pub partition: i32,
    /// Records not yet read, once librdkafka has reported it.
    pub lag: Option<i64>,
}

/// A failure as the admin API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    /// When (RFC 3339).
    pub at: String,
    /// The kind of failure.
    pub kind: String,
    /// What went wrong.
    pub message: String,
}

/// What a swap did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SwapReport {
    /// The stage.
    pub stage: String,
    /// Digest of the component that was running.
    pub old_digest: String,
    /// Digest of the component now running.
    pub new_digest: String,
    /// True when the new component was identical to the running one (nothing was swapped).
    pub unchanged: bool,
    /// Loading, compiling and validating the new component took this long (off the hot path).
    pub load_ms: f64,
    /// How long the stage was held while the component was replaced.
    pub pause_us: f64,
}

impl SwapReport {
    fn unchanged(stage: &str, digest: String, load: Duration) -> Self {
        Self {
            stage: stage.to_owned(),
            old_digest: digest.clone(),
            new_digest: digest,
            unchanged: true,
            load_ms: load.as_secs_f64() * 1e3,
            pause_us: 0.0,
        }
    }
}

struct RunningStage {
    config: StageConfig,
    shared: Arc<StageShared>,
    source: Source,
    loaded_at: SystemTime,
    swaps: u64,
    /// Digest of the component file's content when last read, to tell a change from a touch.
    file_digest: String,
    last_swap_error: Option<ErrorInfo>,
    signals: StopSignals,
    task: JoinHandle<()>,
}

/// The host's running stages.
pub struct Stages {
    runtime: Runtime,
    kafka: KafkaSettings,
    group_prefix: String,
    /// This host's name among those running the pipeline (see `Pipeline::instance_id`).
    instance_id: String,
    /// Stages run transactionally.
    exactly_once: bool,
    partitions: i32,
    replication: i32,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    events: Events,
    running: Mutex<BTreeMap<String, RunningStage>>,
    last_edit_error: Mutex<Option<ErrorInfo>>,
}

impl Stages {
    /// No stages yet; [`Stages::apply`] starts them. Stage tasks are spawned on `tasks` and stop
    /// when `shutdown` is cancelled.
    pub fn new(
        runtime: Runtime,
        kafka: KafkaSettings,
        pipeline: &Pipeline,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        metrics: Arc<Metrics>,
        events: Events,
    ) -> Self {
        Self {
            runtime,
            kafka,
            group_prefix: pipeline.group_prefix.clone(),
            instance_id: pipeline.instance_id.clone(),
            exactly_once: pipeline.guarantee == Guarantee::ExactlyOnce,
            partitions: pipeline.topics.partitions,
            replication: pipeline.topics.replication_factor,
            shutdown,
            tasks,
            metrics,
            events,
            running: Mutex::new(BTreeMap::new()),
            last_edit_error: Mutex::new(None),
        }
    }

    /// Makes the running stages those of `pipeline`: starts new stages, stops removed ones,
    /// restarts those whose topics changed, swaps those whose component or limits changed,
    /// and leaves the others alone.
    ///
    /// Everything that can fail on bad input (loading and smoke-calling components, creating
    /// topics) happens first; on such an error nothing was changed. Stages are then stopped
    /// upstream first; a stage moving off a topic whose producer just stopped first reads
    /// that topic to its end, and a stage that starts reading a topic another stage left
    /// takes over that stage's committed offsets, so an edit neither strands nor repeats a
    /// record.
    pub async fn apply(&self, pipeline: &Pipeline) -> anyhow::Result<()> {
        let mut running = self.running.lock().await;
        let mut starts = Vec::new();
        let mut restarts = Vec::new();
        let mut swaps = Vec::new();
        for config in &pipeline.stages {
            match running.get(&config.name) {
                Some(old) if old.config == *config => {}
                None => starts.push((config.clone(), self.load_file(config).await?)),
                Some(old)
                    if old.config.input != config.input || old.config.output != config.output =>
                {
                    restarts.push((config.clone(), self.load_file(config).await?));
                }
                Some(_) => swaps.push((config.clone(), self.load_file(config).await?)),
            }
        }
        let mut topics: Vec<String> = Vec::new();
        for (config, _) in starts.iter().chain(&restarts) {
            topics.extend([
                config.input.clone(),
                config.output.clone(),
                config.dead_letter_topic(),
            ]);
        }
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.kafka
            .ensure_topics(&topics, self.partitions, self.replication, &[])
            .await?;

        // From here on nothing depends on the input being valid.
        let leaving: Vec<RunningStage> = running
            .keys()
            .filter(|name| {
                !pipeline.stages.iter().any(|s| &s.name == *name)
                    || restarts.iter().any(|(c, _)| &c.name == *name)
            })
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|name| running.remove(&name))
            .collect();
        let stopped = stop_upstream_first(leaving).await;
        for (config, _) in starts.iter().chain(&restarts) {
            let Some(previous) = stopped.iter().find(|old| {
                old.input == config.input
                    && old.name != config.name
                    && !pipeline
                        .stages
                        .iter()
                        .any(|s| s.name == old.name && s.input == old.input)
            }) else {
                continue;
            };
            let (from, to) = (self.group_id(&previous.name), self.group_id(&config.name));
            tracing::info!(
                topic = config.input,
                from,
                to,
                "handing over committed offsets"
            );
            if let Err(err) = self
                .kafka
                .copy_committed_offsets(&from, &to, &config.input)
                .await
            {
                tracing::error!(
                    stage = config.name,
                    "offsets not handed over, the stage starts from its own: {err:#}"
                );
            }
        }
        for (config, component) in swaps {
            if let Some(stage) = running.get_mut(&config.name) {
                stage.file_digest = component.digest().to_owned();
                let settings_changed = stage.config.settings() != config.settings();
                swap_in(
                    stage,
                    component,
                    Source::File(config.component.clone()),
                    Duration::ZERO,
                    settings_changed,
                );
                stage.config = config;
            }
        }
        for (config, component) in starts.into_iter().chain(restarts) {
            tracing::info!(
                stage = config.name,
                component = %config.component.display(),
                digest = component.digest(),
                origin = ?component.origin(),
                input = config.input,
                output = config.output,
                "stage started"
            );
            let stage = self.spawn(config, component);
            running.insert(stage.config.name.clone(), stage);
        }
        Ok(())
    }

    /// Reloads stage `name` from its component file; a no-op if the file is unchanged.
    pub async fn reload_file(&self, name: &str) -> anyhow::Result<SwapReport> {
        let (config, seen) = {
            let running = self.running.lock().await;
            let stage = running
                .get(name)
                .ok_or_else(|| UnknownStage(name.to_owned()))?;
            (stage.config.clone(), stage.file_digest.clone())
        };
        let started = Instant::now();
        let path = config.component.clone();
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(err) => {
                let err = LoadError::new(
                    name,
                    &path,
                    anyhow::Error::new(err).context("cannot read the file"),
                );
                return Err(self.swap_rejected(name, err.into()).await);
            }
        };
        // Watch events come for reads and touches too: only new content counts as a change.
        let digest = runtime::digest(&bytes);
        if digest == seen {
            return Ok(SwapReport::unchanged(name, digest, started.elapsed()));
        }
        if let Some(stage) = self.running.lock().await.get_mut(name) {
            stage.file_digest = digest;
        }
        let runtime = self.runtime.clone();
        let (stage, settings) = (name.to_owned(), config.settings());
        let loaded =
            tokio::task::spawn_blocking(move || runtime.load_bytes(&stage, &bytes, &settings))
                .await
                .context("loading the component panicked")
                .and_then(|loaded| {
                    loaded.map_err(|cause| LoadError::new(name, &path, cause).into())
                });
        match loaded {
            Ok(component) => Ok(self
                .swap(name, component, Source::File(path), started.elapsed())
                .await),
            Err(err) => Err(self.swap_rejected(name, err).await),
        }
    }

    /// Swaps stage `name` to the component in `bytes` (an upload).
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> anyhow::Result<SwapReport> {
        let settings = {
            let running = self.running.lock().await;
            running
                .get(name)
                .map(|s| s.config.settings())
                .ok_or_else(|| UnknownStage(name.to_owned()))?
        };
        let started = Instant::now();
        let runtime = self.runtime.clone();
        let stage = name.to_owned();
        let loaded =
            tokio::task::spawn_blocking(move || runtime.load_bytes(&stage, &bytes, &settings))
                .await
                .context("loading the component panicked")
                .and_then(|loaded| {
                    loaded.with_context(|| format!("stage `{name}`: uploaded component"))
                });
        match loaded {
            Ok(component) => Ok(self
                .swap(name, component, Source::Upload, started.elapsed())
                .await),
            Err(err) => Err(self.swap_rejected(name, err).await),
        }
    }

    /// Remembers why a pipeline edit was rejected.
    pub async fn edit_rejected(&self, message: String) {
        *self.last_edit_error.lock().await = Some(ErrorInfo {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind: "edit-rejected".into(),
            message,
        });
    }

    /// Why the most recent rejected pipeline edit was rejected.
    pub async fn last_edit_error(&self) -> Option<ErrorInfo> {
        self.last_edit_error.lock().await.clone()
    }

    /// The running stages, for the admin API.
    pub async fn list(&self) -> Vec<StageInfo> {
        let running = self.running.lock().await;
        running.values().map(info).collect()
    }

    /// Names and component files of the running stages, for the file watcher.
    pub async fn component_files(&self) -> Vec<(String, PathBuf)> {
        let running = self.running.lock().await;
        running
            .values()
            .map(|s| (s.config.name.clone(), s.config.component.clone()))
            .collect()
    }

    /// Records a rejected swap on the stage, for the admin API, and hands the error back.
    async fn swap_rejected(&self, name: &str, err: anyhow::Error) -> anyhow::Error {
        if let Some(stage) = self.running.lock().await.get_mut(name) {
            stage.last_swap_error = Some(ErrorInfo {
                at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                kind: "swap-rejected".into(),
                message: format!("{err:#}"),
            });
        }
        err
    }

    async fn swap(
        &self,
        name: &str,
        component: StageComponent,
        source: Source,
        load: Duration,
    ) -> SwapReport {
        let mut running = self.running.lock().await;
        let Some(stage) = running.get_mut(name) else {
            // Removed by a pipeline edit while the new version was loading: nothing to swap.
            return SwapReport {
                stage: name.to_owned(),
                old_digest: String::new(),
                new_digest: component.digest().to_owned(),
                unchanged: true,
                load_ms: load.as_secs_f64() * 1e3,
                pause_us: 0.0,
            };
        };
        swap_in(stage, component, source, load, false)
    }

    async fn load_file(&self, config: &StageConfig) -> anyhow::Result<StageComponent> {
        let runtime = self.runtime.clone();
        let config = config.clone();
        // Compiling takes tens of milliseconds of CPU: keep it off the async workers.
        let component = tokio::task::spawn_blocking(move || {
            runtime.load(&config.name, &config.component, &config.settings())
        })
        .await
        .context("loading the component panicked")??;
        Ok(component)
    }

    fn group_id(&self, stage: &str) -> String {
        format!("{}-{}", self.group_prefix, stage)
    }

    fn spawn(&self, config: StageConfig, component: StageComponent) -> RunningStage {
        let group_id = self.group_id(&config.name);
        let route = Route {
            name: config.name.clone(),
            transactional_id: self
                .exactly_once
                .then(|| format!("{group_id}-{}", self.instance_id)),
            group_id,
            input: config.input.clone(),
            output: config.output.clone(),
            dead_letter: config.dead_letter_topic(),
            retries: config.retries,
        };
        let component_digest = component.digest().to_owned();
        let shared = Arc::new(StageShared::new(
            component,
            self.metrics.stage(&config.name),
            self.events.clone(),
        ));
        let signals = StopSignals {
            stop: self.shutdown.child_token(),
            drain: CancellationToken::new(),
        };
        let task = self.tasks.spawn(supervise(
            shared.clone(),
            route,
            self.kafka.clone(),
            signals.clone(),
        ));
        RunningStage {
            source: Source::File(config.component.clone()),
            config,
            shared,
            loaded_at: SystemTime::now(),
            swaps: 0,
            file_digest: component_digest,
            last_swap_error: None,
            signals,
            task,
        }
    }
}

/// The admin API asked for a stage that is not running.
#[derive(Debug, thiserror::Error)]
#[error("no stage named {0:?}")]
pub struct UnknownStage(pub String);

/// Makes `component` the stage's. The same file from the same source is no change, unless
/// `settings_changed` (limits or config edited): the component carries its settings.
fn swap_in(
    stage: &mut RunningStage,
    component: StageComponent,
    source: Source,
    load: Duration,
    settings_changed: bool,
) -> SwapReport {
    let name = stage.config.name.clone();
    let new_digest = component.digest().to_owned();
    let old_digest = stage.shared.current().digest().to_owned();
    let unchanged = old_digest == new_digest && stage.source == source && !settings_changed;
    let mut pause = Duration::ZERO;
    if !unchanged {
        let held = Instant::now();
        stage.shared.swap(component);
        pause = held.elapsed();
        stage.source = source;
        stage.loaded_at = SystemTime::now();
        stage.swaps += 1;
        tracing::info!(
            stage = name,
            old_digest,
            new_digest,
            load_ms = load.as_secs_f64() * 1e3,
            pause_us = pause.as_secs_f64() * 1e6,
            settings_changed,
            "component swapped"
        );
    }
    SwapReport {
        stage: name,
        old_digest,
        new_digest,
        unchanged,
        load_ms: load.as_secs_f64() * 1e3,
        pause_us: pause.as_secs_f64() * 1e6,
    }
}

/// Stops `leaving`, each after the stages that feed it; returns their configurations.
async fn stop_upstream_first(mut leaving: Vec<RunningStage>) -> Vec<StageConfig> {
    let mut stopped: Vec<StageConfig> = Vec::new();
    while !leaving.is_empty() {
        // Next: a stage no other leaving stage feeds (or any, should the edit form a cycle).
        let next = (0..leaving.len())
            .find(|&i| {
                !leaving
                    .iter()
                    .any(|other| other.config.output == leaving[i].config.input)
            })
            .unwrap_or(0);
        let stage = leaving.swap_remove(next);
        let producer_stopped = stopped.iter().any(|s| s.output == stage.config.input);
        stopped.push(stage.config.clone());
        if producer_stopped {
            drain_and_stop(stage).await;
        } else {
            stop(stage).await;
        }
    }
    stopped
}

/// Lets the stage read its input to the end (its producer has stopped), then stops it.
async fn drain_and_stop(stage: RunningStage) {
    tracing::info!(
        stage = stage.config.name,
        topic = stage.config.input,
        "draining before the stage moves"
    );
    stage.signals.drain.cancel();
    let name = stage.config.name.clone();
    let task = stage.task;
    tokio::pin!(task);
    if tokio::time::timeout(DRAIN_LIMIT, &mut task).await.is_err() {
        tracing::error!(
            stage = name,
            "not drained after {DRAIN_LIMIT:?}; stopping anyway, records left behind stay in the topic"
        );
        stage.signals.stop.cancel();
        let _ = task.await;
    }
}

async fn stop(stage: RunningStage) {
    stage.signals.stop.cancel();
    if let Err(err) = stage.task.await {
        tracing::error!(stage = stage.config.name, "stage task failed: {err}");
    }
}

fn info(stage: &RunningStage) -> StageInfo {
    let stats = &stage.shared.stats;
    let last_error = stats
        .last_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .map(|e| ErrorInfo {
            at: humantime::format_rfc3339_millis(e.at).to_string(),
            kind: e.kind.to_owned(),
            message: e.message,
        });
    StageInfo {
        name: stage.config.name.clone(),
        input: stage.config.input.clone(),
        output: stage.config.output.clone(),
        source: stage.source.clone(),
        digest: stage.shared.current().digest().to_owned(),
        loaded_at: humantime::format_rfc3339_millis(stage.loaded_at).to_string(),
        swaps: stage.swaps,
        processed: stats.processed.load(std::sync::atomic::Ordering::Relaxed),
        dead_lettered: stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        last_error,
        last_swap_error: stage.last_swap_error.clone(),
        joined: stage.shared.group.joined(),
        partitions: stage
            .shared
            .group
            .partitions()
            .into_iter()
            .map(|(partition, lag)| PartitionInfo { partition, lag })
            .collect(),
    }
}

/// Runs a stage until `stop`, restarting it from its last committed offset if it fails.
async fn supervise(
    shared: Arc<StageShared>,
    route: Route,
    kafka: KafkaSettings,
    signals: StopSignals,
) {
    let stop = &signals.stop;
    loop {
        let ran = match &route.transactional_id {
            Some(id) => stage::exactly_once::run(&shared, &route, &kafka, &signals, id).await,
            None => stage::run(&shared, &route, &kafka, &signals).await,
        };
        match ran {
            Ok(()) if stop.is_cancelled() || signals.drain.is_cancelled() => {
                tracing::info!(stage = route.name, "stage stopped and committed");
                return;
            }
            Ok(()) => {}
            Err(err) => tracing::error!(stage = route.name, "stage stopped: {err:#}; restarting"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RESTART_BACKOFF) => {}
        }
    }
}

/// True if `a` and `b` name the same file (comparing absolute paths).
pub fn same_file(a: &Path, b: &Path) -> bool {
    std::path::absolute(a).ok() == std::path::absolute(b).ok()
}
