//! pizza-host: runs WebAssembly stage components between Kafka topics, and serves the
//! pizza-ordering HTTP API of Confluent's event-driven microservices demo.
//!
//! A pipeline (`pipeline.toml`) names the stages; each stage is a component that exports the
//! `pizza:stage/topping` world (see `wit/stage.wit`). For every stage the host runs one
//! consumer (its own group) and one producer: consume from the input topic, call the
//! component, produce the result to the output topic with the same key, commit — in Kafka
//! transactions by default (exactly once), or committing after acknowledgement (at least once).
//!
//! # Layout
//! - [`config`]: `pipeline.toml` types and validation.
//! - [`runtime`]: the wasmtime engine, the stage sandbox and limits, loading and calling.
//! - [`kafka`]: client settings and topic creation.
//! - [`stage`]: one stage's consume → call → produce → commit loop (and its transactional
//!   form in [`stage::exactly_once`]).
//! - [`stages`]: the running stages; swaps and pipeline edits, validated before applied.
//! - [`reload`]: watching `pipeline.toml` and component files.
//! - [`admin`]: the token-guarded admin API (stage table, deploy).
//! - [`tools`]: `check` and `invoke`, for stage authors, without Kafka.
//! - [`orders`]: placing orders, and the order book `GET /order` reads.
//! - [`order_view`]: filling the order book from Kafka (orders, completed and failed pizzas).
//! - [`http`]: the axum routes.
//!
//! [`start`] wires them together; `main.rs` only parses the command line and handles signals.

pub mod admin;
pub mod config;
pub mod http;
pub mod kafka;
pub mod order_view;
pub mod orders;
pub mod reload;
pub mod runtime;
pub mod stage;
pub mod stages;
pub mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Guarantee, Pipeline};
use crate::kafka::KafkaSettings;
use crate::runtime::Runtime;
use crate::stages::Stages;

/// A host that is running; see [`start`].
pub struct RunningHost {
    /// Where the HTTP API listens (useful when the configured port was 0).
    pub http_addr: SocketAddr,
    /// Where the admin API listens, if it is on.
    pub admin_addr: Option<SocketAddr>,
    /// The running stages.
    pub stages: Arc<Stages>,
    tasks: TaskTracker,
}

impl RunningHost {
    /// Waits until every task has finished after the shutdown token was cancelled: stages
    /// have finished their in-flight records and committed, and the HTTP server has closed.
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

/// Loads every stage, creates missing topics, and starts the stages, the order view, the HTTP
/// API and (with a token) the admin API. With `watch`, the pipeline file at that path and the
/// component files it names are watched and changes applied live. Returns once everything
/// runs; it all stops when `shutdown` is cancelled.
///
/// Fails if a component is missing, is not a stage component, or fails its smoke call.
pub async fn start(
    pipeline: Pipeline,
    watch: Option<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningHost> {
    let runtime = Runtime::new(pipeline.compile_cache.clone())
        .context("cannot start the WebAssembly runtime")?;
    let kafka = KafkaSettings::new(pipeline.kafka_properties().map_err(anyhow::Error::msg)?);
    let admin_token = pipeline.admin.token()?;
    let tasks = TaskTracker::new();

    // Stages first: their components are checked before any topic is created, so a bad
    // file fails fast and clearly.
    let stages = Arc::new(Stages::new(
        runtime,
        kafka.clone(),
        &pipeline,
        shutdown.clone(),
        tasks.clone(),
    ));
    stages.apply(&pipeline).await?;
    let order_topics = [
        pipeline.orders.topic.as_str(),
        pipeline.orders.completed_topic.as_str(),
        pipeline.orders.orders_topic.as_str(),
    ];
    kafka
        .ensure_topics(
            &order_topics,
            pipeline.topics.partitions,
            pipeline.topics.replication_factor,
        )
        .await?;

    let book = orders::OrderBook::default();
    let reader = kafka.reader(&format!("{}-order-view", pipeline.group_prefix))?;
    let view_topics = order_view::ViewTopics {
        orders: pipeline.orders.orders_topic.clone(),
        completed: pipeline.orders.completed_topic.clone(),
        dead_letters: pipeline
            .stages
            .iter()
            .map(|s| s.dead_letter_topic())
            .collect(),
    };
    let view = order_view::start(book.clone(), reader, view_topics, shutdown.clone()).await?;
    tasks.spawn(view);

    let app = http::router(http::AppState {
        book,
        publisher: match pipeline.guarantee {
            Guarantee::ExactlyOnce => orders::Publisher::transactional(
                &kafka,
                &format!("{}-orders-{}", pipeline.group_prefix, pipeline.instance_id),
            )?,
            Guarantee::AtLeastOnce => orders::Publisher::AtLeastOnce(kafka.producer()?),
        },
        topics: orders::OrderTopics {
            orders: pipeline.orders.orders_topic.clone(),
            pizzas: pipeline.orders.topic.clone(),
        },
        max_order_count: pipeline.http.max_order_count,
    });
    let http_addr = serve("HTTP API", pipeline.http.listen, app, &tasks, &shutdown).await?;
    let admin_addr = match admin_token {
        Some(token) => {
            let app = admin::router(stages.clone(), token);
            Some(serve("admin API", pipeline.admin.listen, app, &tasks, &shutdown).await?)
        }
        None => None,
    };

    if let Some(path) = watch {
        tasks.spawn(reload::watch(path, pipeline, stages.clone(), shutdown.clone()).await?);
    }
    tasks.close();
    Ok(RunningHost {
        http_addr,
        admin_addr,
        stages,
        tasks,
    })
}

/// Serves `app` on `addr` until `shutdown`; returns the bound address.
async fn serve(
    what: &str,
    addr: SocketAddr,
    app: axum::Router,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let stop = shutdown.clone().cancelled_owned();
    let what = what.to_owned();
    tracing::info!("{what} listening on http://{bound}");
    tasks.spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("{what} failed: {err}");
        }
    });
    Ok(bound)
}
