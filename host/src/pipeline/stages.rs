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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::StageConfig;
use crate::kafka::KafkaSettings;
use crate::lock;
use crate::pipeline::plan::{Plan, StageRoute};
use crate::pipeline::reload;
use crate::pipeline::stage::running::{RunningStage, stop_upstream_first, swap_in};
use crate::pipeline::stage::{StageShared, StopSignals};
use crate::runtime::{LoadError, Runtime, StageComponent};
use crate::telemetry::events::Events;
use crate::telemetry::metrics::Metrics;

/// Where a stage's current component came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The file named in `pipeline.toml`.
    File(PathBuf),
    /// Deployed to the pipeline (`pizza-host deploy` or `rollback`): every host of the
    /// pipeline runs it, after a restart too, until the next deploy or a rollback to the file.
    Deployment,
}

/// One of a stage's outputs.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NamedOutput {
    /// The name a processor sends records to it by.
    pub name: String,
    /// Its topic.
    pub topic: String,
}

/// One stage as the admin API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StageInfo {
    /// The stage's name.
    pub name: String,
    /// Input topic.
    pub input: String,
    /// Output topic (the first of its outputs).
    pub output: String,
    /// Every output, the default first.
    pub outputs: Vec<NamedOutput>,
    /// The world its component exports (`pizza:stage/topping@0.1.0` or
    /// `pizza:stage/processor@0.2.0`).
    pub world: String,
    /// Where records it cannot process go.
    pub dead_letter: String,
    /// Retries of a call whose error the stage marked retryable.
    pub retries: u32,
    /// Where the running component came from: `{"file": "<path>"}` or `"deployment"`.
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
    /// Records the stage dropped: it returned no record for them (a filter), not a failure.
    pub dropped: u64,
    /// The most recent failure to process a record, if any.
    pub last_error: Option<ErrorInfo>,
    /// The most recent rejected swap (file change or upload), if any.
    pub last_swap_error: Option<ErrorInfo>,
    /// Paused on this host (`pizza-host pause`): it holds no partitions and takes no records
    /// until resumed.
    pub paused: bool,
    /// True once the stage's consumer has joined its group.
    pub joined: bool,
    /// The input partitions this host's consumer holds.
    pub partitions: Vec<PartitionInfo>,
    /// What the stage's loop is doing, once it has begun: a stage that holds partitions and
    /// stays in one activity while its input grows is stuck there.
    pub activity: Option<Activity>,
    /// How the Kafka client last described its consumer: the group handler's state and join
    /// state, and each held partition's fetch state (`active` when it is being read).
    pub client_view: Option<String>,
}

/// What a stage's loop is doing.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Activity {
    /// A few words: `waiting for records`, `processing a batch`, `committing` (or one of its
    /// steps, `committing: adding the input offsets`, …), `aborting`.
    pub doing: String,
    /// For how long, in milliseconds.
    pub for_ms: u64,
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
    pub(crate) fn unchanged(stage: &str, digest: String, load: Duration) -> Self {
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

/// The host's running stages.
pub struct Stages {
    runtime: Runtime,
    kafka: KafkaSettings,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    events: Events,
    running: Mutex<BTreeMap<String, RunningStage>>,
    last_edit_error: Mutex<Option<ErrorInfo>>,
    /// What the pipeline's deployments say, which outlasts a stage's restart by an edit: the
    /// deployed component of each stage that has one (in place of its file's)...
    deployed: std::sync::Mutex<BTreeMap<String, DeployedComponent>>,
    /// ...and the stages that are paused.
    paused: std::sync::Mutex<BTreeSet<String>>,
}

/// A stage's deployed component: its digest and its bytes.
#[derive(Debug, Clone)]
pub struct DeployedComponent {
    /// `sha256:…` of `bytes`.
    pub digest: String,
    /// The component.
    pub bytes: Arc<[u8]>,
}

/// What [`Stages::apply`] does to each stage of a plan.
enum Change {
    Start,
    /// Its route changed (topics, dead-letter topic, retries): stopped and started again.
    Restart,
    /// Its component or settings changed: swapped between two batches.
    Swap,
}

impl Stages {
    /// No stages yet; [`Stages::apply`] starts them. Stage tasks are spawned on `tasks` and stop
    /// when `shutdown` is cancelled.
    pub fn new(
        runtime: Runtime,
        kafka: KafkaSettings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        metrics: Arc<Metrics>,
        events: Events,
    ) -> Self {
        Self {
            runtime,
            kafka,
            shutdown,
            tasks,
            metrics,
            events,
            running: Mutex::new(BTreeMap::new()),
            last_edit_error: Mutex::new(None),
            deployed: std::sync::Mutex::default(),
            paused: std::sync::Mutex::default(),
        }
    }

    /// Before the first [`Stages::apply`]: the deployed components stages start with instead
    /// of their files', and the stages that start paused.
    pub fn preset(&self, deployed: BTreeMap<String, DeployedComponent>, paused: BTreeSet<String>) {
        *lock(&self.deployed) = deployed;
        *lock(&self.paused) = paused;
    }

    /// Whether stage `name` runs on this host.
    pub async fn has(&self, name: &str) -> bool {
        self.running.lock().await.contains_key(name)
    }

    /// Loads and smoke-calls the component of every stage of `plan` that is new or changed;
    /// nothing running changes. Fails on a component that does not load.
    pub async fn load_changed(&self, plan: &Plan) -> anyhow::Result<Vec<LoadedStage>> {
        // Decided under the lock, loaded outside it: compiling takes seconds, and the status
        // endpoints read the running set meanwhile.
        let changes: Vec<(&StageConfig, &StageRoute, Change)> = {
            let running = self.running.lock().await;
            plan.stages
                .iter()
                .filter_map(|(config, route)| {
                    let change = match running.get(&config.name) {
                        Some(old) if old.config == *config && old.route == *route => {
                            return None;
                        }
                        None => Change::Start,
                        Some(old) if old.route != *route => Change::Restart,
                        Some(_) => Change::Swap,
                    };
                    Some((config, route, change))
                })
                .collect()
        };
        let mut loaded = Vec::new();
        for (config, route, change) in changes {
            let component = self.load_file(config).await?;
            loaded.push(LoadedStage {
                config: config.clone(),
                route: route.clone(),
                component,
                source: Source::File(config.component.clone()),
                change,
            });
        }
        Ok(loaded)
    }

    /// Makes the running stages those of `plan`, with the components [`Stages::load_changed`]
    /// loaded for it (the plan's topics exist): starts new stages, stops removed ones, restarts
    /// those whose route changed, swaps those whose component or settings changed, and leaves
    /// the others alone. Cannot fail on bad input.
    ///
    /// Stages are stopped upstream first; a stage moving off a topic whose producer just
    /// stopped first reads that topic to its end, and a stage that starts reading a topic
    /// another stage left takes over that stage's committed offsets, so an edit neither
    /// strands nor repeats a record.
    ///
    /// The running set is locked only to take stages out and put them in: draining a stage
    /// (up to 30 s) and handing over offsets
    /// happen outside the lock, so the status endpoints keep answering during an edit. Edits
    /// themselves are one at a time (see [`super::Running::apply`]).
    pub async fn apply(&self, plan: &Plan, mut loaded: Vec<LoadedStage>) {
        self.prefer_deployed(&mut loaded).await;
        let leaving: Vec<RunningStage> = {
            let mut running = self.running.lock().await;
            running
                .keys()
                .filter(|name| {
                    !plan.stages.iter().any(|(s, _)| &s.name == *name)
                        || loaded
                            .iter()
                            .any(|l| &l.config.name == *name && matches!(l.change, Change::Restart))
                })
                .cloned()
                .collect::<Vec<_>>()
                .into_iter()
                .filter_map(|name| running.remove(&name))
                .collect()
        };
        let stopped = stop_upstream_first(leaving).await;
        let mut starting = Vec::new();
        for LoadedStage {
            config,
            route,
            component,
            source,
            change,
        } in loaded
        {
            if let Change::Swap = change {
                let mut running = self.running.lock().await;
                if let Some(stage) = running.get_mut(&config.name) {
                    if let Source::File(_) = source {
                        stage.file_digest = component.digest().to_owned();
                    }
                    let settings_changed = stage.config.settings() != config.settings();
                    swap_in(stage, component, source, Duration::ZERO, settings_changed);
                    stage.config = config;
                }
                continue;
            }
            self.hand_over_offsets(&stopped, plan, &route).await;
            tracing::info!(
                stage = config.name,
                component = %config.component.display(),
                digest = component.digest(),
                origin = ?component.origin(),
                input = route.input,
                world = component.world(),
                outputs = ?route.outputs,
                dead_letter = route.dead_letter,
                "stage started"
            );
            let shared = Arc::new(StageShared::new(
                component,
                self.metrics.stage(&config.name),
                self.events.clone(),
            ));
            let signals = StopSignals {
                stop: self.shutdown.child_token(),
                drain: CancellationToken::new(),
            };
            if lock(&self.paused).contains(&config.name) {
                tracing::info!(stage = config.name, "stage paused: not consuming");
                starting.push(RunningStage::start_paused(
                    config,
                    route,
                    shared,
                    source,
                    signals,
                    &self.tasks,
                ));
            } else {
                starting.push(RunningStage::start(
                    config,
                    route,
                    shared,
                    source,
                    self.kafka.clone(),
                    signals,
                    &self.tasks,
                ));
            }
        }
        let mut running = self.running.lock().await;
        for stage in starting {
            running.insert(stage.config.name.clone(), stage);
        }
    }

    /// A stage starting on `route` reads its input from where a stopped stage that left that
    /// input had committed, if there is one.
    async fn hand_over_offsets(&self, stopped: &[StageRoute], plan: &Plan, route: &StageRoute) {
        let Some(previous) = stopped.iter().find(|old| {
            old.input == route.input
                && old.name != route.name
                && !plan
                    .stages
                    .iter()
                    .any(|(_, s)| s.name == old.name && s.input == old.input)
        }) else {
            return;
        };
        let (from, to) = (&previous.group_id, &route.group_id);
        tracing::info!(
            topic = route.input,
            from,
            to,
            "handing over committed offsets"
        );
        if let Err(err) = self
            .kafka
            .copy_committed_offsets(from, to, &route.input)
            .await
        {
            tracing::error!(
                stage = route.name,
                "offsets not handed over, the stage starts from its own: {err:#}"
            );
        }
    }

    /// Reloads stage `name` from its component file; a no-op if the file is unchanged, or if
    /// the stage runs a deployed component (which stays until a rollback to the file).
    pub async fn reload_file(&self, name: &str) -> anyhow::Result<SwapReport> {
        let (config, seen, digest) = {
            let running = self.running.lock().await;
            let stage = running
                .get(name)
                .ok_or_else(|| UnknownStage(name.to_owned()))?;
            (
                stage.config.clone(),
                stage.file_digest.clone(),
                stage.shared.current().digest().to_owned(),
            )
        };
        if lock(&self.deployed).contains_key(name) {
            tracing::info!(
                stage = name,
                "the component file changed, but the stage runs its deployed version; `pizza-host rollback {name} file` goes back to the file"
            );
            return Ok(SwapReport::unchanged(name, digest, Duration::ZERO));
        }
        let started = Instant::now();
        let path = config.component.clone();
        let bytes = match reload::reread(&path, &seen).await {
            Ok(reload::Reread::Unchanged(digest)) => {
                return Ok(SwapReport::unchanged(name, digest, started.elapsed()));
            }
            Ok(reload::Reread::Changed { bytes, digest }) => {
                if let Some(stage) = self.running.lock().await.get_mut(name) {
                    stage.file_digest = digest;
                }
                bytes
            }
            Err(err) => {
                let err = LoadError::new(name, &path, err);
                return Err(self.swap_rejected(name, err.into()).await);
            }
        };
        let loaded = self
            .load_bytes(name, bytes, config.settings())
            .await
            .map_err(|cause| LoadError::new(name, &path, cause).into());
        match loaded {
            Ok(component) => Ok(self
                .swap(name, component, Source::File(path), started.elapsed())
                .await),
            Err(err) => Err(self.swap_rejected(name, err).await),
        }
    }

    /// Loads and smoke-calls `bytes` as stage `name`'s component, without swapping it in: a
    /// deploy is checked here before it is written for every host. A rejection is recorded on
    /// the stage.
    pub async fn validate(&self, name: &str, bytes: Arc<[u8]>) -> anyhow::Result<StageComponent> {
        let settings = {
            let running = self.running.lock().await;
            running
                .get(name)
                .map(|s| s.config.settings())
                .ok_or_else(|| UnknownStage(name.to_owned()))?
        };
        let loaded = self
            .load_bytes(name, bytes, settings)
            .await
            .map_err(|err| err.context(format!("stage `{name}`: deployed component")));
        match loaded {
            Ok(component) => Ok(component),
            Err(err) => Err(self.swap_rejected(name, err).await),
        }
    }

    /// Swaps stage `name` to a deployed component, which it keeps (over its file, and across
    /// edits that restart it) until the next deploy or [`Stages::revert_to_file`]. On a
    /// component that does not load here, the stage keeps what it runs.
    pub async fn deploy(
        &self,
        name: &str,
        deployed: DeployedComponent,
    ) -> anyhow::Result<SwapReport> {
        let started = Instant::now();
        let component = self.validate(name, deployed.bytes.clone()).await?;
        lock(&self.deployed).insert(name.to_owned(), deployed);
        Ok(self
            .swap(name, component, Source::Deployment, started.elapsed())
            .await)
    }

    /// Swaps stage `name` back from its deployed component to its file's.
    pub async fn revert_to_file(&self, name: &str) -> anyhow::Result<SwapReport> {
        lock(&self.deployed).remove(name);
        if let Some(stage) = self.running.lock().await.get_mut(name) {
            // Read the file afresh, changed or not.
            stage.file_digest.clear();
        }
        self.reload_file(name).await
    }

    /// Pauses stage `name` on this host: it finishes its in-flight records, commits them and
    /// leaves its group, keeping its offsets, so [`Stages::resume`] goes on where it stopped.
    /// Returns once its loop is done (false if it was paused already). Safe to abandon: the
    /// stage stays paused and its loop stops all the same.
    pub async fn pause(&self, name: &str) -> Result<bool, StageCommandError> {
        let changed = {
            let mut running = self.running.lock().await;
            let stage = running
                .get_mut(name)
                .ok_or_else(|| UnknownStage(name.to_owned()))?;
            lock(&self.paused).insert(name.to_owned());
            stage.pause()
        };
        // The registry's lock is taken only to look: the stage table keeps answering.
        loop {
            let done = {
                let running = self.running.lock().await;
                running
                    .get(name)
                    .is_none_or(|stage| !stage.paused || stage.task.is_finished())
            };
            if done {
                break;
            }
            tokio::time::sleep(PAUSE_CHECK).await;
        }
        if changed {
            tracing::info!(stage = name, "stage paused: not consuming");
        }
        Ok(changed)
    }

    /// Resumes stage `name` from its committed offsets; false if it was not paused. Refused
    /// while its loop is still stopping and once the host is shutting down.
    pub async fn resume(&self, name: &str) -> Result<bool, StageCommandError> {
        if self.shutdown.is_cancelled() {
            return Err(StageCommandError::ShuttingDown);
        }
        let mut running = self.running.lock().await;
        let stage = running
            .get_mut(name)
            .ok_or_else(|| UnknownStage(name.to_owned()))?;
        if !stage.paused {
            return Ok(false);
        }
        if !stage.task.is_finished() {
            return Err(StageCommandError::StillStopping(name.to_owned()));
        }
        lock(&self.paused).remove(name);
        stage.resume(self.kafka.clone(), self.shutdown.child_token(), &self.tasks);
        tracing::info!(stage = name, "stage resumed from its committed offsets");
        Ok(true)
    }

    /// Remembers why a pipeline edit was rejected.
    pub async fn edit_rejected(&self, message: String) {
        *self.last_edit_error.lock().await = Some(ErrorInfo::now("edit-rejected", message));
    }

    /// Why the most recent rejected pipeline edit was rejected.
    pub async fn last_edit_error(&self) -> Option<ErrorInfo> {
        self.last_edit_error.lock().await.clone()
    }

    /// The running stages, for the admin API.
    pub async fn list(&self) -> Vec<StageInfo> {
        let running = self.running.lock().await;
        running.values().map(RunningStage::info).collect()
    }

    /// Which stages have not stopped yet, and where each stands in its group, for the log of a
    /// shutdown that took too long. Does not wait: the registry may be held by what hangs.
    pub fn describe_unstopped(&self) -> String {
        let Ok(running) = self.running.try_lock() else {
            return "the stage registry is busy (a pipeline edit did not finish)".into();
        };
        let unstopped: Vec<String> = running
            .values()
            .filter(|stage| !stage.task.is_finished())
            .map(|stage| {
                let group = &stage.shared.group;
                format!(
                    "stage {} (joined its group: {}, partitions held: {:?})",
                    stage.config.name,
                    group.joined(),
                    group.partitions().keys().collect::<Vec<_>>()
                )
            })
            .collect();
        if unstopped.is_empty() {
            "every stage stopped; a report, a join or the order view did not".into()
        } else {
            format!("still running: {}", unstopped.join(", "))
        }
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
            stage.last_swap_error = Some(ErrorInfo::now("swap-rejected", format!("{err:#}")));
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
            let mut report = SwapReport::unchanged(name, component.digest().to_owned(), load);
            report.old_digest = String::new();
            return report;
        };
        swap_in(stage, component, source, load, false)
    }

    async fn load_file(&self, config: &StageConfig) -> anyhow::Result<StageComponent> {
        let (runtime, config) = (self.runtime.clone(), config.clone());
        reload::off_thread(move || {
            runtime
                .load(&config.name, &config.component, &config.settings())
                .map_err(anyhow::Error::from)
        })
        .await
    }

    /// Loads and smoke-calls `bytes` as stage `name`'s component with `settings`, off the
    /// async threads.
    async fn load_bytes(
        &self,
        name: &str,
        bytes: impl AsRef<[u8]> + Send + 'static,
        settings: crate::runtime::Settings,
    ) -> anyhow::Result<StageComponent> {
        let (runtime, name) = (self.runtime.clone(), name.to_owned());
        reload::off_thread(move || runtime.load_bytes(&name, bytes.as_ref(), &settings)).await
    }

    /// Puts the deployed component of each stage of `loaded` that has one in place of its
    /// file's (checked all the same, so that a bad file fails an edit or a start whatever was
    /// deployed), if it loads here.
    async fn prefer_deployed(&self, loaded: &mut [LoadedStage]) {
        for stage in loaded {
            let deployed = lock(&self.deployed).get(&stage.config.name).cloned();
            let Some(deployed) = deployed else { continue };
            let loaded = self.load_bytes(
                &stage.config.name,
                deployed.bytes.clone(),
                stage.config.settings(),
            );
            match loaded.await {
                Ok(component) => {
                    stage.component = component;
                    stage.source = Source::Deployment;
                }
                Err(err) => tracing::error!(
                    stage = stage.config.name,
                    digest = deployed.digest,
                    "the deployed component does not load on this host; running the file's: {err:#}"
                ),
            }
        }
    }
}

/// A stage's new component, loaded and smoke-called for a plan, and what to do with it.
pub struct LoadedStage {
    config: StageConfig,
    route: StageRoute,
    component: StageComponent,
    source: Source,
    change: Change,
}

/// Why a pause or resume was refused.
#[derive(Debug, thiserror::Error)]
pub enum StageCommandError {
    /// No such stage.
    #[error(transparent)]
    Unknown(#[from] UnknownStage),
    /// Its loop has not finished stopping from the pause yet.
    #[error("stage {0:?} is still stopping from its pause; try again in a moment")]
    StillStopping(String),
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
}

/// How often a pause looks whether the stage's loop is done.
const PAUSE_CHECK: Duration = Duration::from_millis(20);

/// The admin API asked for a stage that is not running.
#[derive(Debug, thiserror::Error)]
#[error("no stage named {0:?}")]
pub struct UnknownStage(pub String);

impl From<crate::pipeline::stage::LastError> for ErrorInfo {
    fn from(error: crate::pipeline::stage::LastError) -> Self {
        Self {
            at: humantime::format_rfc3339_millis(error.at).to_string(),
            kind: error.kind.to_owned(),
            message: error.message,
        }
    }
}

impl ErrorInfo {
    /// A failure of `kind` that happened now.
    pub(crate) fn now(kind: &str, message: String) -> Self {
        Self {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind: kind.into(),
            message,
        }
    }
}

/// True if `a` and `b` name the same file (comparing absolute paths).
pub fn same_file(a: &Path, b: &Path) -> bool {
    std::path::absolute(a).ok() == std::path::absolute(b).ok()
}
