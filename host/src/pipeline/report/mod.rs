//! The running reports (`[[report]]` in `pipeline.toml`): starting and stopping them as the
//! pipeline changes, swapping a report's component (its state stays), and rendering one for
//! `GET /report/{name}`.
//!
//! A report reads its topic on its own, with no consumer group, so it keeps answering with its
//! last counts whatever happens to the stages that feed the topic. How it keeps its state
//! exactly once is in [`fold`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Pipeline, ReportConfig};
use crate::kafka::KafkaSettings;
use crate::pipeline::stages::{ErrorInfo, RESTART_BACKOFF};
use crate::runtime::{self, CallError, ReportComponent, Runtime};

pub mod fold;

use fold::{ReportRoute, ReportShared};

/// One report as `GET /report` lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReportInfo {
    /// Its name; it is served at `/report/{name}`.
    pub name: String,
    /// The topic it folds.
    pub input: String,
    /// The component file named in `pipeline.toml`.
    #[schema(value_type = String)]
    pub component: PathBuf,
    /// SHA-256 of the running component.
    pub digest: String,
    /// Events folded in.
    pub events: u64,
    /// Events the component could not fold (skipped).
    pub failed: u64,
    /// The most recent event it could not fold.
    pub last_error: Option<ErrorInfo>,
}

struct RunningReport {
    config: ReportConfig,
    shared: Arc<ReportShared>,
    /// Digest of the component file when last read, to tell a change from a touch.
    file_digest: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What [`Reports::plan`] found an edited pipeline needs: components already loaded and
/// topics created, so [`Reports::carry_out`] cannot fail on bad input.
pub struct ReportPlan {
    reports: Vec<ReportConfig>,
    loaded: BTreeMap<String, ReportComponent>,
}

/// The host's running reports.
pub struct Reports {
    runtime: Runtime,
    kafka: KafkaSettings,
    instance_id: String,
    replication: i32,
    partitions: i32,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    running: Mutex<BTreeMap<String, RunningReport>>,
}

impl Reports {
    /// No reports yet; [`Reports::plan`] and [`Reports::carry_out`] start them.
    pub fn new(
        runtime: Runtime,
        kafka: KafkaSettings,
        pipeline: &Pipeline,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            runtime,
            kafka,
            instance_id: pipeline.instance_id.clone(),
            replication: pipeline.topics.replication_factor,
            partitions: pipeline.topics.partitions,
            shutdown,
            tasks,
            running: Mutex::new(BTreeMap::new()),
        }
    }

    /// Loads the components of the reports `pipeline` adds or changes and creates their
    /// topics; nothing running changes. Fails on a component that does not load.
    pub async fn plan(&self, pipeline: &Pipeline) -> anyhow::Result<ReportPlan> {
        let running = self.running.lock().await;
        let mut loaded = BTreeMap::new();
        for config in &pipeline.reports {
            if running
                .get(&config.name)
                .is_some_and(|r| r.config == *config)
            {
                continue;
            }
            loaded.insert(config.name.clone(), self.load_file(config).await?);
            let changelog = config.changelog_topic();
            self.kafka
                .ensure_topics(&[&config.input], self.partitions, self.replication, &[])
                .await?;
            // One partition: a report's saved states are few and small, and its history is
            // read whole at every start.
            self.kafka
                .ensure_topics(
                    &[changelog],
                    1,
                    self.replication,
                    &[("cleanup.policy", "compact")],
                )
                .await?;
        }
        Ok(ReportPlan {
            reports: pipeline.reports.clone(),
            loaded,
        })
    }

    /// Makes the running reports those of the plan: stops removed ones, swaps the component
    /// of those whose component or limits changed (keeping their state), restarts those whose
    /// topics changed, starts new ones.
    pub async fn carry_out(&self, plan: ReportPlan) {
        let mut running = self.running.lock().await;
        let ReportPlan {
            reports,
            mut loaded,
        } = plan;
        let removed: Vec<String> = running
            .keys()
            .filter(|name| !reports.iter().any(|r| &r.name == *name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(report) = running.remove(&name) {
                stop(report).await;
            }
        }
        for config in reports {
            let Some(component) = loaded.remove(&config.name) else {
                continue; // unchanged
            };
            match running.get_mut(&config.name) {
                Some(report)
                    if report.config.input == config.input
                        && report.config.changelog == config.changelog =>
                {
                    report.file_digest = component.digest().to_owned();
                    tracing::info!(
                        report = config.name,
                        digest = component.digest(),
                        "report component swapped"
                    );
                    report.shared.swap(component);
                    report.config = config;
                }
                _ => {
                    if let Some(old) = running.remove(&config.name) {
                        stop(old).await;
                    }
                    tracing::info!(
                        report = config.name,
                        component = %config.component.display(),
                        digest = component.digest(),
                        input = config.input,
                        "report started"
                    );
                    let report = self.spawn(config, component);
                    running.insert(report.config.name.clone(), report);
                }
            }
        }
    }

    /// The report `name` rendered as JSON text, or `None` if there is no such report.
    pub async fn render(&self, name: &str) -> Option<Result<String, CallError>> {
        let shared = self.running.lock().await.get(name)?.shared.clone();
        let (state, _, _) = shared.state();
        let component = shared.current();
        let rendered = tokio::task::spawn_blocking(move || component.render(&state)).await;
        Some(rendered.unwrap_or_else(|err| Err(CallError::Trap(err.to_string()))))
    }

    /// Every running report.
    pub async fn list(&self) -> Vec<ReportInfo> {
        self.running
            .lock()
            .await
            .values()
            .map(|report| {
                let (_, events, failed) = report.shared.state();
                ReportInfo {
                    name: report.config.name.clone(),
                    input: report.config.input.clone(),
                    component: report.config.component.clone(),
                    digest: report.shared.current().digest().to_owned(),
                    events,
                    failed,
                    last_error: report.shared.last_error().map(|e| ErrorInfo {
                        at: humantime::format_rfc3339_millis(e.at).to_string(),
                        kind: e.kind.to_owned(),
                        message: e.message,
                    }),
                }
            })
            .collect()
    }

    /// The component file of every running report, by report name.
    pub async fn component_files(&self) -> Vec<(String, PathBuf)> {
        self.running
            .lock()
            .await
            .values()
            .map(|r| (r.config.name.clone(), r.config.component.clone()))
            .collect()
    }

    /// Reloads report `name` from its component file and swaps it in (the state stays); a
    /// no-op if the file's content is unchanged. On error the old version keeps running.
    pub async fn reload_file(&self, name: &str) -> anyhow::Result<()> {
        let Some(config) = self
            .running
            .lock()
            .await
            .get(name)
            .map(|r| r.config.clone())
        else {
            return Ok(());
        };
        let bytes = tokio::fs::read(&config.component).await?;
        let digest = runtime::digest(&bytes);
        {
            let running = self.running.lock().await;
            if running.get(name).is_some_and(|r| r.file_digest == digest) {
                return Ok(());
            }
        }
        let component = self.load_file(&config).await?;
        let mut running = self.running.lock().await;
        if let Some(report) = running.get_mut(name) {
            tracing::info!(
                report = name,
                old_digest = report.file_digest,
                new_digest = component.digest(),
                "report component swapped"
            );
            report.file_digest = component.digest().to_owned();
            report.shared.swap(component);
        }
        Ok(())
    }

    async fn load_file(&self, config: &ReportConfig) -> anyhow::Result<ReportComponent> {
        let (runtime, config) = (self.runtime.clone(), config.clone());
        // Loading runs the component: on a thread with stack to spare.
        let loaded = tokio::task::spawn_blocking(move || {
            runtime.load_report(&config.name, &config.component, &config.settings())
        })
        .await??;
        Ok(loaded)
    }

    fn spawn(&self, config: ReportConfig, component: ReportComponent) -> RunningReport {
        let route = ReportRoute {
            name: config.name.clone(),
            input: config.input.clone(),
            changelog: config.changelog_topic().to_owned(),
            key: self.instance_id.clone(),
        };
        let file_digest = component.digest().to_owned();
        let shared = Arc::new(ReportShared::new(component));
        let stop = self.shutdown.child_token();
        let task = self.tasks.spawn(supervise(
            shared.clone(),
            route,
            self.kafka.clone(),
            stop.clone(),
        ));
        RunningReport {
            config,
            shared,
            file_digest,
            stop,
            task,
        }
    }
}

async fn stop(report: RunningReport) {
    report.stop.cancel();
    if let Err(err) = report.task.await {
        tracing::error!(report = report.config.name, "report task failed: {err}");
    }
    tracing::info!(report = report.config.name, "report stopped and saved");
}

/// Runs a report until `stop`, starting it again from its saved state if a run fails.
async fn supervise(
    shared: Arc<ReportShared>,
    route: ReportRoute,
    kafka: KafkaSettings,
    stop: CancellationToken,
) {
    loop {
        match fold::run(&shared, &route, &kafka, &stop).await {
            Ok(()) => return,
            Err(err) => tracing::error!(report = route.name, "report stopped: {err:#}; restarting"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RESTART_BACKOFF) => {}
        }
    }
}
