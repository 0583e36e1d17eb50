//! One running stage as the registry ([`super::super::stages`]) holds it: started under the
//! supervisor, its component swapped, stopped (upstream first, draining a stage whose input's
//! producer stopped), and shown in the stage table.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{StageShared, StopSignals, at_least_once, exactly_once};
use crate::config::{StageConfig, StartFrom};
use crate::kafka::KafkaSettings;
use crate::pipeline::plan::StageRoute;
use crate::pipeline::stages::{
    Activity, ErrorInfo, NamedOutput, PartitionInfo, Source, StageInfo, SwapReport,
};
use crate::pipeline::supervisor::supervise;
use crate::runtime::StageComponent;

/// How long a pipeline edit waits for a stage to read its old input to the end.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// A stage that runs: its configuration and route, its shared state, and its task.
pub(crate) struct RunningStage {
    pub config: StageConfig,
    pub route: StageRoute,
    pub shared: Arc<StageShared>,
    pub source: Source,
    pub loaded_at: SystemTime,
    pub swaps: u64,
    /// Digest of the component file's content when last read, to tell a change from a touch.
    pub file_digest: String,
    pub last_swap_error: Option<ErrorInfo>,
    pub signals: StopSignals,
    /// The stage's loop (finished, or finishing, while the stage is paused).
    pub task: JoinHandle<()>,
    /// Paused by the operator: its loop was told to stop and is not started again until
    /// resumed. The handle stays here, so whoever stops, restarts or resumes the stage waits
    /// for the old loop to be done, whoever asked for the pause.
    pub paused: bool,
}

impl RunningStage {
    /// Starts the stage's loop for `route` under the supervisor, on `tasks`; its component
    /// came from `source`.
    pub fn start(
        config: StageConfig,
        route: StageRoute,
        shared: Arc<StageShared>,
        source: Source,
        kafka: KafkaSettings,
        signals: StopSignals,
        tasks: &TaskTracker,
    ) -> Self {
        let task = spawn(&shared, &route, kafka, &signals, tasks);
        Self::new(config, route, shared, source, signals, task, false)
    }

    /// The stage, paused from the start (the pipeline's deployments say so): no loop runs
    /// until [`RunningStage::resume`].
    pub fn start_paused(
        config: StageConfig,
        route: StageRoute,
        shared: Arc<StageShared>,
        source: Source,
        signals: StopSignals,
        tasks: &TaskTracker,
    ) -> Self {
        let task = tasks.spawn(async {});
        Self::new(config, route, shared, source, signals, task, true)
    }

    fn new(
        config: StageConfig,
        route: StageRoute,
        shared: Arc<StageShared>,
        source: Source,
        signals: StopSignals,
        task: JoinHandle<()>,
        paused: bool,
    ) -> Self {
        // A deployed component is not the file's: the file is read afresh when the stage
        // goes back to it.
        let file_digest = match source {
            Source::File(_) => shared.current().digest().to_owned(),
            Source::Deployment => String::new(),
        };
        Self {
            source,
            config,
            route,
            shared,
            loaded_at: SystemTime::now(),
            swaps: 0,
            file_digest,
            last_swap_error: None,
            signals,
            task,
            paused,
        }
    }

    /// Tells the stage's loop to stop (it finishes its in-flight records, commits and leaves
    /// its group) and marks the stage paused; false if it was paused already.
    pub fn pause(&mut self) -> bool {
        if self.paused {
            return false;
        }
        self.paused = true;
        self.signals.stop.cancel();
        true
    }

    /// Starts the loop of a paused stage again, from its committed offsets, with `stop` as
    /// its new stop signal. The old loop must be done (else a second member would join under
    /// the same name and transactional id).
    pub fn resume(&mut self, kafka: KafkaSettings, stop: CancellationToken, tasks: &TaskTracker) {
        debug_assert!(self.paused && self.task.is_finished());
        self.signals = StopSignals {
            stop,
            drain: CancellationToken::new(),
        };
        // What the old consumer knew of its group is not the new one's.
        self.shared.group.reset();
        self.task = spawn(&self.shared, &self.route, kafka, &self.signals, tasks);
        self.paused = false;
    }

    /// The stage as the stage table shows it.
    pub fn info(&self) -> StageInfo {
        info(self)
    }
}

/// Starts the stage's loop on `tasks`.
fn spawn(
    shared: &Arc<StageShared>,
    route: &StageRoute,
    kafka: KafkaSettings,
    signals: &StopSignals,
    tasks: &TaskTracker,
) -> JoinHandle<()> {
    tasks.spawn(run_supervised(
        shared.clone(),
        route.clone(),
        kafka,
        signals.clone(),
    ))
}

/// Runs a stage until `stop` (or drained), restarting it from its last committed offset when
/// it fails.
async fn run_supervised(
    shared: Arc<StageShared>,
    route: StageRoute,
    kafka: KafkaSettings,
    signals: StopSignals,
) {
    let name = format!("stage {}", route.name);
    supervise(&name, &signals.stop, || async {
        if route.from != StartFrom::Earliest {
            kafka
                .start_group_at(&route.group_id, &route.input, route.from)
                .await?;
        }
        match &route.transactional_id {
            Some(id) => exactly_once::run(&shared, &route, &kafka, &signals, id).await,
            None => at_least_once::run(&shared, &route, &kafka, &signals).await,
        }
    })
    .await;
    tracing::info!(stage = route.name, "stage stopped and committed");
}

/// Makes `component` the stage's. The same file from the same source is no change, unless
/// `settings_changed` (limits or config edited): the component carries its settings.
pub(crate) fn swap_in(
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

/// Stops `leaving`, each after the stages that feed it; returns their routes.
pub(crate) async fn stop_upstream_first(mut leaving: Vec<RunningStage>) -> Vec<StageRoute> {
    let mut stopped: Vec<StageRoute> = Vec::new();
    while !leaving.is_empty() {
        // Next: a stage no other leaving stage feeds (or any, should the edit form a cycle).
        let next = (0..leaving.len())
            .find(|&i| {
                !leaving
                    .iter()
                    .any(|other| other.route.feeds(&leaving[i].route.input))
            })
            .unwrap_or(0);
        let stage = leaving.swap_remove(next);
        let producer_stopped = stopped.iter().any(|s| s.feeds(&stage.route.input));
        stopped.push(stage.route.clone());
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
    if stage.paused {
        // Its loop is stopped: what waits in its old input stays there (documented).
        tracing::warn!(
            stage = stage.config.name,
            topic = stage.config.input,
            "a paused stage moves without draining its old input"
        );
        stop(stage).await;
        return;
    }
    tracing::info!(
        stage = stage.config.name,
        topic = stage.config.input,
        "draining before the stage moves"
    );
    stage.signals.drain.cancel();
    let task = stage.task;
    let name = stage.config.name.clone();
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
        .map(ErrorInfo::from);
    StageInfo {
        name: stage.config.name.clone(),
        input: stage.config.input.clone(),
        output: stage.config.output.clone(),
        dead_letter: stage.route.dead_letter.clone(),
        retries: stage.route.retries,
        source: stage.source.clone(),
        digest: stage.shared.current().digest().to_owned(),
        loaded_at: humantime::format_rfc3339_millis(stage.loaded_at).to_string(),
        swaps: stage.swaps,
        processed: stats.processed.load(std::sync::atomic::Ordering::Relaxed),
        dead_lettered: stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        dropped: stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        world: stage.shared.current().world().to_owned(),
        outputs: stage
            .route
            .outputs
            .iter()
            .map(|(name, topic)| NamedOutput {
                name: name.clone(),
                topic: topic.clone(),
            })
            .collect(),
        last_error,
        last_swap_error: stage.last_swap_error.clone(),
        paused: stage.paused,
        joined: stage.shared.group.joined() && !stage.paused,
        partitions: stage
            .shared
            .group
            .partitions()
            .into_iter()
            .map(|(partition, lag)| PartitionInfo { partition, lag })
            .collect(),
        activity: stage.shared.group.activity().map(|(doing, took)| Activity {
            doing: doing.to_owned(),
            for_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        }),
        client_view: stage.shared.group.client_view(),
    }
}
