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
//! - [`report`]: the reports (`GET /report/{name}`): a component folds a topic into a state
//!   the host keeps exactly once ([`report::fold`]).
//! - [`join`]: fan-in: assembling a pizza's parts, made by stages in parallel, exactly once.
//! - [`reload`]: watching `pipeline.toml` and component files.
//! - [`admin`]: the token-guarded admin API (stage table, deploy).
//! - [`tools`]: `check` and `invoke`, for stage authors, without Kafka.
//! - [`scaffold`]: `new`, a stage project in Rust, Python or JavaScript.
//! - [`pipeline_edit`]: `add`, a new stage put into `pipeline.toml` ahead of another.
//! - `atomic_file`: replacing a file in one rename (the compile cache, `add`).
//! - [`order_publisher`]: placing an order: its records, published under the guarantee.
//! - [`orders`]: the order book `GET /order` reads.
//! - [`order_view`]: filling the order book from Kafka (orders, completed and failed pizzas).
//! - [`cluster_health`]: whether Kafka answers (orders are refused with 503 while it does not).
//! - [`http`]: the axum routes (orders, metrics, health), and [`web`]: the web page.
//! - [`events`]: live events (pizzas as stages make them) for the web page.
//! - [`metrics`]: what the host counts, for Prometheus.
//! - [`openapi`]: the HTTP API's OpenAPI document, generated from the handlers.
//! - [`trace_context`]: the W3C `traceparent` each order's records carry across stages.
//!
//! [`start`] wires them together; `main.rs` only parses the command line and handles signals.

pub mod admin;
mod atomic_file;
pub mod cluster_health;
pub mod config;
mod event_ids;
pub mod events;
pub mod http;
pub mod join;
pub mod kafka;
pub mod metrics;
pub mod openapi;
pub mod order_publisher;
pub mod order_view;
pub mod orders;
pub mod pipeline_edit;
pub mod reload;
pub mod report;
pub mod runtime;
pub mod scaffold;
pub mod stage;
pub mod stages;
pub mod tools;
pub mod trace_context;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Guarantee, Overrides, Pipeline};
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
    /// have finished their in-flight records and committed, and then the servers closed.
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
    watch: Option<(PathBuf, Overrides)>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningHost> {
    let runtime = Runtime::new(pipeline.compile_cache.clone())
        .context("cannot start the WebAssembly runtime")?
        .with_seed(pipeline.seed);
    let kafka = KafkaSettings::new(pipeline.kafka_properties().map_err(anyhow::Error::msg)?);
    let admin_token = pipeline.admin.token()?;
    // Stages, the order view and file watching run on `tasks`; the HTTP and admin servers
    // on `servers`, which stop only once `tasks` are done (see `stop_servers_after`).
    let tasks = TaskTracker::new();
    let servers = TaskTracker::new();
    let metrics = metrics::Metrics::new();
    let events = events::Events::default();

    // Stages first: their components are checked before any topic is created, so a bad
    // file fails fast and clearly.
    let reports = Arc::new(report::Reports::new(
        runtime.clone(),
        kafka.clone(),
        &pipeline,
        shutdown.clone(),
        tasks.clone(),
    ));
    let report_plan = reports.plan(&pipeline).await?;
    let stages = Arc::new(Stages::new(
        runtime,
        kafka.clone(),
        &pipeline,
        shutdown.clone(),
        tasks.clone(),
        metrics.clone(),
        events.clone(),
    ));
    stages.apply(&pipeline).await?;
    reports.carry_out(report_plan).await;
    join::start(
        &pipeline.joins,
        &kafka,
        &pipeline.group_prefix,
        &pipeline.instance_id,
        (
            pipeline.topics.partitions,
            pipeline.topics.replication_factor,
        ),
        &tasks,
        &shutdown,
    )
    .await?;
    let (partitions, replication) = (
        pipeline.topics.partitions,
        pipeline.topics.replication_factor,
    );
    let pizza_topics = [
        pipeline.orders.topic.as_str(),
        pipeline.orders.completed_topic.as_str(),
    ];
    kafka
        .ensure_topics(&pizza_topics, partitions, replication, &[])
        .await?;
    // One record per order, keyed by its id: compaction keeps every order and nothing else.
    kafka
        .ensure_topics(
            &[pipeline.orders.orders_topic.as_str()],
            partitions,
            replication,
            &[("cleanup.policy", "compact")],
        )
        .await?;
    let health =
        cluster_health::spawn_probe(&kafka, &pipeline.orders.topic, &tasks, shutdown.clone())?;

    let book = orders::OrderBook::bounded(pipeline.orders.max_pizzas_in_memory);
    let reader = kafka.reader(&format!("{}-order-view", pipeline.group_prefix))?;
    let view_topics = order_view::ViewTopics {
        orders: pipeline.orders.orders_topic.clone(),
        completed: pipeline.orders.completed_topic.clone(),
        dead_letters: pipeline
            .stages
            .iter()
            .map(|s| s.dead_letter_topic())
            .chain(pipeline.joins.iter().map(|j| j.dead_letter_topic()))
            // Stages that share an input share its dead-letter topic: read it once.
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let view = order_view::start(
        book.clone(),
        reader,
        view_topics,
        events.clone(),
        shutdown.clone(),
    )
    .await?;
    tasks.spawn(view);

    let app = http::router(http::AppState {
        book,
        publisher: match pipeline.guarantee {
            Guarantee::ExactlyOnce => order_publisher::Publisher::transactional(
                &kafka,
                &format!("{}-orders-{}", pipeline.group_prefix, pipeline.instance_id),
            )?,
            Guarantee::AtLeastOnce => order_publisher::Publisher::at_least_once(&kafka)?,
        },
        health,
        order_ids: Arc::new(order_publisher::OrderIds::new(pipeline.seed)),
        topics: order_publisher::OrderTopics {
            orders: pipeline.orders.orders_topic.clone(),
            pizzas: pipeline.orders.topic.clone(),
        },
        max_order_count: pipeline.http.max_order_count,
        stages: stages.clone(),
        reports: reports.clone(),
        metrics,
        events,
        shutdown: shutdown.clone(),
    });
    let servers_stop = CancellationToken::new();
    let http_addr = serve(
        "HTTP API",
        pipeline.http.listen,
        app,
        &servers,
        &servers_stop,
    )
    .await?;
    let admin_addr = match admin_token {
        Some(token) => {
            let app = admin::router(stages.clone(), token);
            Some(
                serve(
                    "admin API",
                    pipeline.admin.listen,
                    app,
                    &servers,
                    &servers_stop,
                )
                .await?,
            )
        }
        None => None,
    };

    if let Some((path, overrides)) = watch {
        let running = reload::Running {
            stages: stages.clone(),
            reports,
        };
        tasks.spawn(reload::watch(path, overrides, pipeline, running, shutdown.clone()).await?);
    }
    tasks.close();
    servers.spawn(stop_servers_after(tasks, shutdown, servers_stop));
    servers.close();
    Ok(RunningHost {
        http_addr,
        admin_addr,
        stages,
        tasks: servers,
    })
}

/// The servers outlive the stages' drain on shutdown: meanwhile `POST /order` answers 503 and
/// `/readyz` says the host is shutting down (so a load balancer moves traffic away), and
/// `GET /order` and `/metrics` keep answering. Once every stage has committed, they stop.
async fn stop_servers_after(
    tasks: TaskTracker,
    shutdown: CancellationToken,
    servers_stop: CancellationToken,
) {
    shutdown.cancelled().await;
    tasks.wait().await;
    servers_stop.cancel();
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
