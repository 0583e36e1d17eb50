//! What should run, and keeping it running: the planner ([`plan`]) turns `pipeline.toml` into
//! routes and topics; [`Running`] makes the running stages and reports those of a plan, the
//! same way at startup and for every live edit; each worker (a [`stage`], a [`report`], a
//! [`join`]) runs under the one [`supervisor`]; [`watch`] turns file changes into edits and
//! swaps, and [`reload`] reads a changed component file.

pub mod join;
pub mod plan;
pub mod reload;
pub mod report;
pub mod stage;
pub mod stages;
pub mod supervisor;
pub mod watch;

use std::sync::Arc;

use tokio::sync::watch as channel;

use crate::config::Pipeline;
use crate::kafka::KafkaSettings;
use plan::{Plan, ViewTopics};
use report::Reports;
use stages::Stages;

/// The running stages and reports, and what follows the plan they run (the order view's
/// topics).
#[derive(Clone)]
pub struct Running {
    /// The stages.
    pub stages: Arc<Stages>,
    /// The reports.
    pub reports: Arc<Reports>,
    kafka: KafkaSettings,
    view_topics: channel::Sender<ViewTopics>,
    /// Held for the whole of an edit: edits apply one at a time, each to what the one before
    /// left running.
    editing: Arc<tokio::sync::Mutex<()>>,
}

impl Running {
    /// Nothing running yet; [`Running::apply`] starts what a pipeline plans.
    pub fn new(stages: Arc<Stages>, reports: Arc<Reports>, kafka: KafkaSettings) -> Self {
        Self {
            stages,
            reports,
            kafka,
            view_topics: channel::Sender::new(ViewTopics::default()),
            editing: Arc::default(),
        }
    }

    /// The topics the order view should read, as the running plan says, now and after every
    /// edit.
    pub fn view_topics(&self) -> channel::Receiver<ViewTopics> {
        self.view_topics.subscribe()
    }

    /// Makes what runs what `pipeline` plans; returns the plan.
    ///
    /// Everything that can fail on bad input (loading and smoke-calling components, creating
    /// topics) happens first; on such an error nothing running was changed.
    pub async fn apply(&self, pipeline: &Pipeline) -> anyhow::Result<Plan> {
        self.apply_after(pipeline, async { Ok(()) }).await
    }

    /// [`Running::apply`], awaiting `loaded` once the components are loaded and before
    /// anything touches Kafka: at startup, the host's claim to its `instance_id` comes after
    /// a bad component has had its chance to fail fast and clearly.
    pub async fn apply_after(
        &self,
        pipeline: &Pipeline,
        loaded: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<Plan> {
        let _editing = self.editing.lock().await;
        let plan = Plan::of(pipeline);
        let reports = self.reports.load_changed(&plan).await?;
        let stages = self.stages.load_changed(&plan).await?;
        loaded.await?;
        plan.ensure_topics(&self.kafka).await?;
        // From here on nothing depends on the input being valid.
        self.stages.apply(&plan, stages).await;
        self.reports.apply(&plan, reports).await;
        self.view_topics.send_replace(plan.view.clone());
        Ok(plan)
    }
}
