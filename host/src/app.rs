//! Wires the layers together: [`start`] plans the pipeline, starts its workers, the order
//! view and the servers, and [`RunningHost`] waits for them to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Guarantee, Overrides, Pipeline};
use crate::kafka::KafkaSettings;
use crate::pipeline::Running;
use crate::pipeline::report::Reports;
use crate::pipeline::stages::Stages;
use crate::runtime::Runtime;

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
    let runtime = Runtime::with_cache_limit(
        pipeline.compile_cache.clone(),
        pipeline.compile_cache_max_mib.saturating_mul(1 << 20),
    )
    .context("cannot start the WebAssembly runtime")?
    .with_seed(pipeline.seed);
    let kafka = KafkaSettings::new(pipeline.kafka_properties().map_err(anyhow::Error::msg)?)
        .with_instance_id(&pipeline.instance_id);
    let admin_token = pipeline.admin.token()?;
    let store_path = pipeline
        .storage
        .dir
        .clone()
        .unwrap_or_else(crate::config::default_storage_dir)
        .join(&pipeline.group_prefix)
        .join(&pipeline.instance_id)
        .join("orders.redb");
    let retention = (pipeline.storage.retention_days > 0).then(|| {
        std::time::Duration::from_secs(u64::from(pipeline.storage.retention_days) * 86_400)
    });
    // Stages, the order view and file watching run on `tasks`; the HTTP and admin servers
    // on `servers`, which stop only once `tasks` are done (see `stop_servers_after`).
    let tasks = TaskTracker::new();
    let servers = TaskTracker::new();
    let metrics = crate::telemetry::metrics::Metrics::new();
    let events = crate::telemetry::events::Events::default();

    // Components are loaded and smoke-called before any topic is created, so a bad file
    // fails fast and clearly.
    let reports = Arc::new(Reports::new(
        runtime.clone(),
        kafka.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));
    let stages = Arc::new(Stages::new(
        runtime,
        kafka.clone(),
        shutdown.clone(),
        tasks.clone(),
        metrics.clone(),
        events.clone(),
    ));
    let running = Running::new(stages.clone(), reports.clone(), kafka.clone());
    // Before any consumer joins a group as this instance, or any producer takes its
    // transactional ids: another live host with the same name would be fenced by them.
    let hosts_topic = crate::fleet::presence::topic(&pipeline.group_prefix);
    let claim = crate::fleet::presence::claim(
        &kafka,
        &hosts_topic,
        pipeline.topics.replication_factor,
        &pipeline.instance_id,
        &tasks,
        shutdown.clone(),
    );
    // Before any stage starts: a refusal later would leave their consumers to close mid-join.
    crate::pipeline::join::check_co_partitioned(
        &pipeline.joins,
        pipeline.topics.partitions,
        &kafka,
    )?;
    // The store opens once the claim holds (a twin of this instance on the same machine is
    // refused by the claim, which says why) and before any stage starts (a refusal once
    // consumers are joining their groups would leave them to close mid-join).
    // The pipeline's deployments are read before any stage starts: what was deployed runs in
    // place of the files (which have been checked by then all the same, so a bad file fails
    // fast and clearly).
    let mut store = None;
    let mut deployments = None;
    let claimed_and_opened = async {
        claim.await?;
        store = Some(tokio::task::block_in_place(|| {
            crate::orders::store::Store::open(&store_path, retention)
        })?);
        deployments = Some(
            crate::fleet::deployments::Deployments::open(
                &kafka,
                &pipeline.group_prefix,
                pipeline.topics.replication_factor,
                &pipeline.instance_id,
                stages.clone(),
                shutdown.clone(),
            )
            .await?,
        );
        anyhow::Ok(())
    };
    let plan = running.apply_after(&pipeline, claimed_and_opened).await?;
    let store = store.context("the order store was not opened")?;
    let deployments = deployments.context("the deployments were not read")?;
    crate::pipeline::join::start(&plan.joins, &kafka, &tasks, &shutdown);
    let following = deployments.clone();
    tasks.spawn(async move {
        if let Err(err) = following.follow().await {
            tracing::error!("this host no longer follows the pipeline's deployments: {err:#}");
        }
    });
    let health = crate::kafka::health::spawn_probe(
        &kafka,
        &pipeline.orders.topic,
        &tasks,
        shutdown.clone(),
    )?;

    let book = crate::orders::book::OrderBook::new(store);
    let (reader_settings, reader_name) = (
        kafka.clone(),
        format!("{}-order-view", pipeline.group_prefix),
    );
    let view = crate::orders::view::start(
        book.clone(),
        Box::new(move || Ok(Arc::new(reader_settings.reader(&reader_name)?))),
        running.view_topics(),
        events.clone(),
        shutdown.clone(),
        crate::kafka::group::STALL_AFTER,
    )
    .await?;
    tasks.spawn(view);

    let state = crate::api::AppState {
        book,
        publisher: match pipeline.guarantee {
            Guarantee::ExactlyOnce => crate::orders::publisher::Publisher::transactional(
                &kafka,
                &crate::pipeline::plan::order_door_transactional_id(&pipeline),
            )?,
            Guarantee::AtLeastOnce => crate::orders::publisher::Publisher::at_least_once(&kafka)?,
        },
        health,
        order_ids: Arc::new(crate::orders::publisher::OrderIds::new(pipeline.seed)),
        topics: crate::orders::publisher::OrderTopics {
            orders: pipeline.orders.orders_topic.clone(),
            pizzas: pipeline.orders.topic.clone(),
        },
        max_order_count: pipeline.http.max_order_count,
        stages: stages.clone(),
        reports: reports.clone(),
        metrics,
        events,
        shutdown: shutdown.clone(),
    };
    servers.spawn(crate::api::web::publish_snapshots(state.clone()));
    let app = crate::api::router(state);
    let servers_stop = CancellationToken::new();
    let http_addr = crate::api::serve(
        "HTTP API",
        pipeline.http.listen,
        app,
        &servers,
        &servers_stop,
    )
    .await?;
    let admin_addr = match admin_token {
        Some(token) => {
            let app =
                crate::api::admin::router(stages.clone(), deployments, token, servers_stop.clone());
            Some(
                crate::api::serve(
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
        tasks.spawn(
            crate::pipeline::watch::watch(path, overrides, pipeline, running, shutdown.clone())
                .await?,
        );
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
