//! pizza-host: runs WebAssembly stage components between Kafka topics, and serves the
//! pizza-ordering HTTP API of Confluent's event-driven microservices demo.
//!
//! A pipeline (`pipeline.toml`) names the stages; each stage is a component that exports the
//! `pizza:stage/topping` world (see `wit/stage.wit`). For every stage the host runs one
//! consumer (its own group) and one producer: consume from the input topic, call the
//! component, produce the result to the output topic with the same key, commit.
//!
//! # Layout
//! - [`config`]: `pipeline.toml` types and validation.
//! - [`runtime`]: the wasmtime engine, the stage sandbox and limits, loading and calling.
//! - [`kafka`]: client settings and topic creation.
//! - [`stage`]: one stage's consume → call → produce → commit loop.
//! - [`orders`]: publishing orders and the order view built from the completed topic.
//! - [`http`]: the axum routes.
//!
//! [`start`] wires them together; `main.rs` only parses the command line and handles signals.

pub mod config;
pub mod http;
pub mod kafka;
pub mod orders;
pub mod runtime;
pub mod stage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Pipeline;
use crate::kafka::KafkaSettings;
use crate::runtime::{Runtime, StageComponent};
use crate::stage::Route;

/// Pause before a stopped stage is started again.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// A host that is running; see [`start`].
pub struct RunningHost {
    /// Where the HTTP API listens (useful when the configured port was 0).
    pub http_addr: SocketAddr,
    tasks: TaskTracker,
}

impl RunningHost {
    /// Waits until every task has finished after the shutdown token was cancelled: stages
    /// have finished their in-flight records and committed, and the HTTP server has closed.
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

/// Loads every stage, creates missing topics, and starts the stages, the order view and the
/// HTTP API. Returns once all of them are running; they stop when `shutdown` is cancelled.
///
/// Fails, before touching Kafka, if a component is missing or is not a stage component.
pub async fn start(pipeline: Pipeline, shutdown: CancellationToken) -> anyhow::Result<RunningHost> {
    let runtime = Runtime::new().context("cannot start the WebAssembly runtime")?;
    let mut stages = Vec::with_capacity(pipeline.stages.len());
    for stage in &pipeline.stages {
        let component = runtime.load(&stage.name, &stage.component, stage.limits())?;
        tracing::info!(
            stage = stage.name,
            component = %stage.component.display(),
            digest = component.digest(),
            input = stage.input,
            output = stage.output,
            "stage loaded"
        );
        let route = Route {
            group_id: format!("{}-{}", pipeline.group_prefix, stage.name),
            input: stage.input.clone(),
            output: stage.output.clone(),
            dead_letter: stage::dead_letter_topic(&stage.input),
        };
        stages.push((Arc::new(component), route));
    }

    let kafka = KafkaSettings::new(pipeline.kafka_properties().map_err(anyhow::Error::msg)?);
    let mut topics = pipeline.topics();
    topics.extend(stages.iter().map(|(_, route)| route.dead_letter.as_str()));
    let topics: Vec<&str> = topics.into_iter().collect();
    kafka
        .ensure_topics(
            &topics,
            pipeline.topics.partitions,
            pipeline.topics.replication_factor,
        )
        .await?;

    let tasks = TaskTracker::new();
    let book = orders::OrderBook::default();
    let reader = kafka.reader(&format!("{}-order-view", pipeline.group_prefix))?;
    let view = orders::start_view(
        book.clone(),
        reader,
        &pipeline.orders.completed_topic,
        shutdown.clone(),
    )
    .await?;
    tasks.spawn(view);

    for (component, route) in stages {
        tasks.spawn(supervise(component, route, kafka.clone(), shutdown.clone()));
    }

    let listener = tokio::net::TcpListener::bind(pipeline.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", pipeline.http.listen))?;
    let http_addr = listener.local_addr()?;
    let app = http::router(http::AppState {
        book,
        producer: kafka.producer()?,
        order_topic: pipeline.orders.topic.clone(),
        max_order_count: pipeline.http.max_order_count,
    });
    let stop_serving = shutdown.clone().cancelled_owned();
    tasks.spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop_serving)
            .await
        {
            tracing::error!("HTTP server failed: {err}");
        }
    });
    tasks.close();
    tracing::info!("HTTP API listening on http://{http_addr}");
    Ok(RunningHost { http_addr, tasks })
}

/// Runs a stage until shutdown, restarting it from its last committed offset if it stops.
async fn supervise(
    component: Arc<StageComponent>,
    route: Route,
    kafka: KafkaSettings,
    shutdown: CancellationToken,
) {
    loop {
        match stage::run(component.clone(), &route, &kafka, &shutdown).await {
            Ok(()) if shutdown.is_cancelled() => {
                tracing::info!(stage = component.name(), "stage stopped and committed");
                return;
            }
            Ok(()) => {}
            Err(err) => tracing::error!(
                stage = component.name(),
                "stage stopped: {err:#}; restarting"
            ),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RESTART_BACKOFF) => {}
        }
    }
}
