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

use crate::config::ReportConfig;
use crate::kafka::KafkaSettings;
use crate::pipeline::plan::{Plan, ReportRoute};
use crate::pipeline::reload::{self, Reread};
use crate::pipeline::stages::ErrorInfo;
use crate::pipeline::supervisor::supervise;
use crate::runtime::{CallError, ReportComponent, Runtime};

pub mod fold;

use fold::ReportShared;

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
    /// The most recent rejected swap (its component file changed to something that does not
    /// load), if any.
    pub last_swap_error: Option<ErrorInfo>,
}

struct RunningReport {
    config: ReportConfig,
    route: ReportRoute,
    shared: Arc<ReportShared>,
    /// Digest of the component file when last read, to tell a change from a touch.
    file_digest: String,
    last_swap_error: Option<ErrorInfo>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The components of the reports a plan adds or changes, loaded and smoke-called by
/// [`Reports::load_changed`], so [`Reports::apply`] cannot fail on bad input.
pub struct LoadedReports(BTreeMap<String, ReportComponent>);

/// The host's running reports.
pub struct Reports {
    runtime: Runtime,
    kafka: KafkaSettings,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    running: Mutex<BTreeMap<String, RunningReport>>,
}

impl Reports {
    /// No reports yet; [`Reports::apply`] starts them.
    pub fn new(
        runtime: Runtime,
        kafka: KafkaSettings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            runtime,
            kafka,
            shutdown,
            tasks,
            running: Mutex::new(BTreeMap::new()),
        }
    }

    /// Loads the components of the reports `plan` adds or changes; nothing running changes.
    /// Fails on a component that does not load.
    pub async fn load_changed(&self, plan: &Plan) -> anyhow::Result<LoadedReports> {
        // Decided under the lock, loaded outside it (compiling takes seconds).
        let changed: Vec<_> = {
            let running = self.running.lock().await;
            plan.reports
                .iter()
                .filter(|(config, route)| {
                    !running
                        .get(&config.name)
                        .is_some_and(|r| r.config == *config && r.route == *route)
                })
                .collect()
        };
        let mut loaded = BTreeMap::new();
        for (config, _) in changed {
            loaded.insert(config.name.clone(), self.load_file(config).await?);
        }
        Ok(LoadedReports(loaded))
    }

    /// Makes the running reports those of `plan` (whose topics exist): stops removed ones,
    /// swaps the component of those whose component or limits changed (keeping their state),
    /// restarts those whose route changed, starts new ones.
    ///
    /// Reports are taken out of the running set under its lock and stopped (their state saved)
    /// outside it, so the status endpoints keep answering during an edit.
    pub async fn apply(&self, plan: &Plan, loaded: LoadedReports) {
        let LoadedReports(mut loaded) = loaded;
        let leaving: Vec<RunningReport> = {
            let mut running = self.running.lock().await;
            let names: Vec<String> = running
                .iter()
                .filter(|(name, report)| {
                    match plan.reports.iter().find(|(r, _)| &r.name == *name) {
                        None => true,
                        Some((_, route)) => loaded.contains_key(*name) && report.route != *route,
                    }
                })
                .map(|(name, _)| name.clone())
                .collect();
            names.iter().filter_map(|name| running.remove(name)).collect()
        };
        for report in leaving {
            stop(report).await;
        }
        let mut running = self.running.lock().await;
        for (config, route) in &plan.reports {
            let Some(component) = loaded.remove(&config.name) else {
                continue; // unchanged
            };
            if let Some(report) = running.get_mut(&config.name) {
                // Same route (a moved report was stopped above): keeps its state.
                report.file_digest = component.digest().to_owned();
                tracing::info!(
                    report = config.name,
                    digest = component.digest(),
                    "report component swapped"
                );
                report.shared.swap(component);
                report.config = config.clone();
            } else {
                tracing::info!(
                    report = config.name,
                    component = %config.component.display(),
                    digest = component.digest(),
                    input = route.input,
                    "report started"
                );
                let report = self.spawn(config.clone(), route.clone(), component);
                running.insert(report.config.name.clone(), report);
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
                    last_error: report.shared.last_error().map(ErrorInfo::from),
                    last_swap_error: report.last_swap_error.clone(),
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
    /// no-op if the file's content is unchanged. On error the old version keeps running, and
    /// the error is recorded on the report (`last_swap_error`).
    pub async fn reload_file(&self, name: &str) -> anyhow::Result<()> {
        let (config, seen) = {
            let running = self.running.lock().await;
            let report = running
                .get(name)
                .ok_or_else(|| UnknownReport(name.to_owned()))?;
            (report.config.clone(), report.file_digest.clone())
        };
        let loaded = match reload::reread(&config.component, &seen).await {
            Ok(Reread::Unchanged(_)) => return Ok(()),
            Ok(Reread::Changed { bytes, digest }) => {
                if let Some(report) = self.running.lock().await.get_mut(name) {
                    report.file_digest = digest;
                }
                let (runtime, settings) = (self.runtime.clone(), config.settings());
                let report = name.to_owned();
                reload::off_thread(move || runtime.load_report_bytes(&report, &bytes, &settings))
                    .await
            }
            Err(err) => Err(err),
        };
        let mut running = self.running.lock().await;
        let Some(report) = running.get_mut(name) else {
            return Ok(()); // removed by an edit meanwhile
        };
        match loaded {
            Ok(component) => {
                tracing::info!(
                    report = name,
                    new_digest = component.digest(),
                    "report component swapped"
                );
                report.shared.swap(component);
                Ok(())
            }
            Err(err) => {
                let err = err.context(format!(
                    "report `{name}`: component {}",
                    config.component.display()
                ));
                report.last_swap_error = Some(ErrorInfo::now("swap-rejected", format!("{err:#}")));
                Err(err)
            }
        }
    }

    async fn load_file(&self, config: &ReportConfig) -> anyhow::Result<ReportComponent> {
        let (runtime, config) = (self.runtime.clone(), config.clone());
        reload::off_thread(move || {
            runtime
                .load_report(&config.name, &config.component, &config.settings())
                .map_err(anyhow::Error::from)
        })
        .await
    }

    fn spawn(
        &self,
        config: ReportConfig,
        route: ReportRoute,
        component: ReportComponent,
    ) -> RunningReport {
        let file_digest = component.digest().to_owned();
        let shared = Arc::new(ReportShared::new(component));
        let stop = self.shutdown.child_token();
        let task = self.tasks.spawn({
            let (shared, route, kafka, stop) = (
                shared.clone(),
                route.clone(),
                self.kafka.clone(),
                stop.clone(),
            );
            async move {
                let name = format!("report {}", route.name);
                supervise(&name, &stop, || fold::run(&shared, &route, &kafka, &stop)).await;
            }
        });
        RunningReport {
            config,
            route,
            shared,
            file_digest,
            last_swap_error: None,
            stop,
            task,
        }
    }
}

/// A reload named a report that is not running.
#[derive(Debug, thiserror::Error)]
#[error("no report named {0:?}")]
pub struct UnknownReport(pub String);

async fn stop(report: RunningReport) {
    report.stop.cancel();
    if let Err(err) = report.task.await {
        tracing::error!(report = report.config.name, "report task failed: {err}");
    }
    tracing::info!(report = report.config.name, "report stopped and saved");
}
