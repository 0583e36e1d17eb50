//! End-to-end throughput and latency of the demo pipeline, exactly-once against at-least-once,
//! and the chain (pipeline.toml) against fan-out/fan-in (pipeline-fanout.toml: the four stages
//! in parallel on `pizza`, a join assembling their parts), in one process against one broker.
//!
//! Run: `dev/kafka.sh start && dev/build-stages.sh && cargo bench -p pizza-host --bench pipeline_throughput`
//! (`KAFKA_BOOTSTRAP` points it elsewhere). Results are written down in BENCHMARKS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use pizza_host::config::Pipeline;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const STAGES: [&str; 4] = ["sauce", "cheese", "meats", "veggies"];
/// Pizzas per throughput run, in orders of [`ORDER_SIZE`].
const PIZZAS: usize = 10_000;
const ORDER_SIZE: usize = 1_000;
const LATENCY_SAMPLES: usize = 30;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    println!("| topology | guarantee | {PIZZAS} pizzas: pizzas/s | 1-pizza order p50 | p90 |");
    println!("|---|---|---|---|---|");
    for topology in [Topology::Chain, Topology::FanOut] {
        for guarantee in ["exactly-once", "at-least-once"] {
            let (throughput, p50, p90) = measure(topology, guarantee).await?;
            println!(
                "| {topology:?} | {guarantee} | {throughput:.0} | {:.1} ms | {:.1} ms |",
                ms(p50),
                ms(p90)
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Topology {
    /// sauce → cheese → meats → veggies.
    Chain,
    /// The four stages on `pizza` in parallel, then a join (which is always transactional).
    FanOut,
}

async fn measure(topology: Topology, guarantee: &str) -> anyhow::Result<(f64, Duration, Duration)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let components = root.join("target/wasm32-wasip1/release");
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = |n: usize| {
        if n == 0 {
            format!("bench-pizza-{run}")
        } else {
            format!("bench-{}-{run}", STAGES[n - 1])
        }
    };
    let mut toml = format!(
        "guarantee = \"{guarantee}\"\ngroup_prefix = \"bench-{run}\"\n[kafka]\n\"bootstrap.servers\" = \"{bootstrap}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nmax_order_count = {ORDER_SIZE}\n\
         [orders]\ntopic = \"{}\"\ncompleted_topic = \"{}\"\norders_topic = \"bench-orders-{run}\"\n",
        topic(0),
        topic(4)
    );
    let part = |stage: &str| format!("bench-part-{stage}-{run}");
    for (i, stage) in STAGES.iter().enumerate() {
        let (input, output) = match topology {
            Topology::Chain => (topic(i), topic(i + 1)),
            Topology::FanOut => (topic(0), part(stage)),
        };
        toml.push_str(&format!(
            "[[stage]]\nname = \"{stage}\"\ncomponent = \"{}\"\ninput = \"{input}\"\noutput = \"{output}\"\n",
            components
                .join(format!("pizza_stage_{stage}.wasm"))
                .display(),
        ));
    }
    if topology == Topology::FanOut {
        let parts: Vec<String> = STAGES.iter().map(|s| part(s)).collect();
        toml.push_str(&format!(
            "[[join]]\nname = \"assemble\"\ninputs = {}\noutput = \"{}\"\n",
            serde_json::to_string(&parts)?,
            topic(4)
        ));
    }
    let pipeline = Pipeline::parse(&toml, Path::new("/"))?;
    let shutdown = CancellationToken::new();
    let host = pizza_host::start(pipeline, None, shutdown.clone()).await?;
    let url = format!("http://{}", host.http_addr);
    let client = reqwest::Client::new();

    // Warm-up: consumer groups joined, components hot.
    complete(&client, &url, 100).await?;

    let started = Instant::now();
    let orders: Vec<String> = futures::future::try_join_all(
        (0..PIZZAS / ORDER_SIZE).map(|_| place(&client, &url, ORDER_SIZE)),
    )
    .await?;
    for id in &orders {
        wait(&client, &url, id, ORDER_SIZE).await?;
    }
    let throughput = PIZZAS as f64 / started.elapsed().as_secs_f64();

    let mut latencies = Vec::new();
    for _ in 0..LATENCY_SAMPLES {
        let started = Instant::now();
        complete(&client, &url, 1).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    shutdown.cancel();
    host.wait().await;
    Ok((
        throughput,
        latencies[LATENCY_SAMPLES / 2],
        latencies[LATENCY_SAMPLES * 9 / 10],
    ))
}

async fn place(client: &reqwest::Client, url: &str, count: usize) -> anyhow::Result<String> {
    let body: Value = client
        .post(format!("{url}/order/{count}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(body["order_id"].as_str().unwrap_or_default().to_owned())
}

async fn wait(client: &reqwest::Client, url: &str, id: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let order: Value = client
            .get(format!("{url}/order/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if order["pizzas"].as_array().map(Vec::len) == Some(count) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "order {id} did not complete");
        // Polling a big order often would take the CPU the pipeline needs.
        tokio::time::sleep(Duration::from_millis(if count > 1 { 50 } else { 1 })).await;
    }
}

async fn complete(client: &reqwest::Client, url: &str, count: usize) -> anyhow::Result<()> {
    let id = place(client, url, count).await?;
    wait(client, url, &id, count).await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
