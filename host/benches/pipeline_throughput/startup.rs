//! Order view startup (`BENCH_ONLY=startup`): how long a host takes from start to ready
//! against a history of completed orders, on its first start (the store is empty, so the view
//! reads every topic from its beginning: what every start cost before the store) and on a
//! restart (it reads what came after its checkpoint); how big the store is per order; and
//! how long `/healthz` takes to answer while the rebuild runs.
//!
//! The history is written straight to the topics as the host's own records look (order
//! records; completed pizzas, each with the four stage visits of its trail header), in orders
//! of 100: running millions of pizzas through the stages first would measure the stages.
//! `BENCH_STARTUP_PIZZAS=200000,1000000` picks the history sizes.

use std::path::Path;
use std::time::{Duration, Instant};

use pizza_host::config::Pipeline;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{Topology, ms, topic};

/// Pizzas of history of each run, unless `BENCH_STARTUP_PIZZAS` says otherwise.
const HISTORY: [usize; 3] = [200_000, 1_000_000, 2_000_000];
const ORDER_SIZE: usize = 100;

/// What one history size measured.
struct Startup {
    pizzas: usize,
    records: usize,
    first_listening: Duration,
    first_ready: Duration,
    restart_listening: Duration,
    restart_ready: Duration,
    /// Records the restart found after its checkpoint.
    restart_behind: u64,
    store_bytes: u64,
    /// `/healthz` while the first start rebuilt: median and slowest.
    healthz_p50: Duration,
    healthz_max: Duration,
}

/// Measures every history size once and prints the table.
pub async fn bench() -> anyhow::Result<()> {
    let sizes: Vec<usize> = match std::env::var("BENCH_STARTUP_PIZZAS") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => HISTORY.to_vec(),
    };
    let mut rows = Vec::new();
    for pizzas in sizes {
        eprintln!("order view startup against {pizzas} pizzas of history");
        rows.push(measure(pizzas).await?);
    }
    println!();
    println!(
        "| pizzas of history | records | first start: listening | first start: ready (reads it all) | restart: listening | restart: ready | records after the checkpoint | store | per order (100 pizzas) | /healthz during the rebuild: p50, max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let orders = (row.pizzas / ORDER_SIZE) as f64;
        println!(
            "| {} | {} | {:.2} s | {:.1} s | {:.2} s | {:.2} s | {} | {:.0} MiB | {:.1} KiB | {:.1} ms, {:.1} ms |",
            row.pizzas,
            row.records,
            row.first_listening.as_secs_f64(),
            row.first_ready.as_secs_f64(),
            row.restart_listening.as_secs_f64(),
            row.restart_ready.as_secs_f64(),
            row.restart_behind,
            row.store_bytes as f64 / (1 << 20) as f64,
            row.store_bytes as f64 / orders / 1024.0,
            ms(row.healthz_p50),
            ms(row.healthz_max),
        );
    }
    Ok(())
}

async fn measure(pizzas: usize) -> anyhow::Result<Startup> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let toml = crate::pipeline_toml(Topology::Chain, "exactly-once", 3, &run, "127.0.0.1:0")?;
    let pipeline = Pipeline::parse(&toml, Path::new("/"))?;
    let store_dir = pipeline
        .storage
        .dir
        .clone()
        .expect("resolved")
        .join(&pipeline.group_prefix);

    // A first host creates the topics; its store goes, so the measured first start reads all.
    let (host, shutdown) = start(&pipeline).await?.0;
    stop(host, shutdown).await;
    std::fs::remove_dir_all(&store_dir)?;
    let records = write_history(&run, pizzas).await?;

    let ((host, shutdown), first_listening) = start(&pipeline).await?;
    let url = format!("http://{}", host.http_addr);
    let (first_ready, healthz) = wait_ready(&url, true).await?;
    let first_ready = first_listening + first_ready;
    stop(host, shutdown).await;
    let store_bytes = folder_size(&store_dir)?;

    let ((host, shutdown), restart_listening) = start(&pipeline).await?;
    let url = format!("http://{}", host.http_addr);
    let (restart_ready, _) = wait_ready(&url, false).await?;
    let restart_behind = readyz(&url).await?["order_view"]["total"]
        .as_u64()
        .unwrap_or_default();
    stop(host, shutdown).await;
    std::fs::remove_dir_all(&store_dir)?;

    let mut healthz = healthz;
    healthz.sort();
    Ok(Startup {
        pizzas,
        records,
        first_listening,
        first_ready,
        restart_listening,
        restart_ready: restart_listening + restart_ready,
        restart_behind,
        store_bytes,
        healthz_p50: healthz.get(healthz.len() / 2).copied().unwrap_or_default(),
        healthz_max: healthz.last().copied().unwrap_or_default(),
    })
}

type Started = ((pizza_host::RunningHost, CancellationToken), Duration);

/// Starts a host; returns it and how long it took to listen.
async fn start(pipeline: &Pipeline) -> anyhow::Result<Started> {
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let host = pizza_host::start(pipeline.clone(), None, shutdown.clone()).await?;
    Ok(((host, shutdown), started.elapsed()))
}

async fn stop(host: pizza_host::RunningHost, shutdown: CancellationToken) {
    shutdown.cancel();
    host.wait().await;
}

async fn readyz(url: &str) -> anyhow::Result<Value> {
    Ok(reqwest::get(format!("{url}/readyz")).await?.json().await?)
}

/// Waits until the order view is ready; returns how long that took and, with `probe`, how
/// long each `/healthz` asked meanwhile took to answer.
async fn wait_ready(url: &str, probe: bool) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let started = Instant::now();
    let client = reqwest::Client::new();
    let mut healthz = Vec::new();
    loop {
        if readyz(url).await?["order_view"]["state"] == "ready" {
            return Ok((started.elapsed(), healthz));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the order view did not catch up in 30 minutes"
        );
        if probe {
            let asked = Instant::now();
            client
                .get(format!("{url}/healthz"))
                .send()
                .await?
                .error_for_status()?;
            healthz.push(asked.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `pizzas` completed pizzas in orders of [`ORDER_SIZE`], with their order records, as
/// the host writes them; returns how many records that is.
async fn write_history(run: &str, pizzas: usize) -> anyhow::Result<usize> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", crate::bootstrap())
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    let orders_topic = format!("bench-orders-{run}");
    let completed = topic(run, 4);
    let visit = |stage: &str| {
        format!(
            r#"{{"stage":"{stage}","digest":"sha256:5d1f0a4e9c7b3a2f","at":"2026-12-02T17:00:00.000Z"}}"#
        )
    };
    let visits: Vec<String> = crate::STAGES.iter().map(|stage| visit(stage)).collect();
    let mut records = 0;
    let mut sends = Vec::new();
    for order in 0..pizzas / ORDER_SIZE {
        let order_id = format!("history-{order:08}");
        let value = format!(r#"{{"order_id":"{order_id}","count":{ORDER_SIZE}}}"#);
        sends.push(
            producer
                .send_result(
                    FutureRecord::to(&orders_topic)
                        .key(&order_id)
                        .payload(&value),
                )
                .map_err(|(err, _)| err)?,
        );
        for n in 0..ORDER_SIZE {
            let pizza = format!(
                r#"{{"order_id":"{order_id}","pizza_id":"{order_id}-{n}","sauce":"regular","cheese":"mozzarella","meats":"pepperoni & ham","veggies":"mushrooms & olives"}}"#
            );
            let mut headers = OwnedHeaders::new();
            for visit in &visits {
                headers = headers.insert(Header {
                    key: "pizza-host.trail",
                    value: Some(visit.as_bytes()),
                });
            }
            sends.push(
                producer
                    .send_result(
                        FutureRecord::to(&completed)
                            .key(&order_id)
                            .payload(&pizza)
                            .headers(headers),
                    )
                    .map_err(|(err, _)| err)?,
            );
        }
        records += ORDER_SIZE + 1;
        if sends.len() >= 20_000 {
            acknowledged(std::mem::take(&mut sends)).await?;
        }
    }
    acknowledged(sends).await?;
    Ok(records)
}

async fn acknowledged(sends: Vec<rdkafka::producer::DeliveryFuture>) -> anyhow::Result<()> {
    for delivery in sends {
        delivery.await?.map_err(|(err, _)| err)?;
    }
    Ok(())
}

/// Bytes of the files under `dir`.
fn folder_size(dir: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        bytes += if entry.file_type()?.is_dir() {
            folder_size(&entry.path())?
        } else {
            entry.metadata()?.len()
        };
    }
    Ok(bytes)
}
