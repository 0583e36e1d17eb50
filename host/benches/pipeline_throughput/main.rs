//! End-to-end throughput and latency of the demo pipeline, exactly-once against at-least-once,
//! and the chain (pipeline.toml) against fan-out/fan-in (pipeline-fanout.toml: the four stages
//! in parallel on `pizza`, a join assembling their parts), in one process against one broker;
//! and the limit: the raw pipe, the same four hops with a native passthrough in place of each
//! stage (consume → produce the same bytes and key → store the offset after delivery), which is
//! what the broker and the client library can do on this machine; native stages, the raw pipe's
//! hops calling the same stage logic compiled natively (no WebAssembly, none of the host's
//! per-record machinery); and one process per stage, the original's shape: four processes, each
//! a blocking poll-one/produce-one loop with the original's client settings (the bench runs
//! itself as each of them), and the same in the original's language (`original_stage.py`,
//! confluent-kafka, which `dev/bench.sh` installs; the row is skipped without it).
//!
//! Every order enters through `POST /order` and is followed through `GET /order/{id}`, as a
//! customer's would: orders of 1,000 for the table, customers' orders of 100 for the
//! end-to-end rows (`e2e`), one pizza at a time for the latency columns and for the order
//! intake ([`intake`]). Configurations run interleaved, [`REPEATS`] rounds of each, and the
//! table shows medians: throughput, CPU seconds per 1,000 pizzas of this process (the host,
//! the bench's hops, the HTTP client) and any stage processes beside the broker's JVM
//! ([`machine`]), and the 1-pizza order latency.
//!
//! Run: `dev/kafka.sh start && dev/build-stages.sh && cargo bench -p pizza-host --bench pipeline_throughput`
//! (`KAFKA_BOOTSTRAP` points it elsewhere; `BENCH_ONLY`, `BENCH_TOPOLOGIES`, `BENCH_REPEATS`
//! and `BENCH_KAFKA` below choose parts, rows, rounds and client settings). Results are
//! written down in BENCHMARKS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use pizza_host::config::Pipeline;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const STAGES: [&str; 4] = ["sauce", "cheese", "meats", "veggies"];
/// Pizzas per throughput run (each configuration runs with both), in orders of [`ORDER_SIZE`].
const RUNS: [usize; 2] = [10_000, 100_000];
const ORDER_SIZE: usize = 1_000;
/// 1-pizza orders timed one after the other, after the smaller throughput run: enough that
/// the p99 is not simply the slowest one.
const LATENCY_SAMPLES: usize = 500;
/// Runs of each configuration; the table shows medians (`BENCH_REPEATS` overrides).
const REPEATS: usize = 5;
/// Set in a stage process of the one-process-per-stage topology: `<stage> <input> <output> <group>`.
const HOP_ENV: &str = "PIZZA_BENCH_HOP";
/// Partition counts of the scaling curve (chain, at-least-once, 100,000 pizzas).
const PARTITIONS: [i32; 3] = [1, 3, 6];
/// Pizzas of the end-to-end rows, in customers' orders of [`E2E_ORDER_SIZE`].
const E2E_PIZZAS: usize = 20_000;
const E2E_ORDER_SIZE: usize = 100;

mod intake;
mod machine;
mod report;
mod startup;

fn main() -> anyhow::Result<()> {
    if let Ok(hop) = std::env::var(HOP_ENV) {
        return blocking_hop(&hop);
    }
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let repeats = std::env::var("BENCH_REPEATS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(REPEATS)
        .max(1);
    // BENCH_ONLY=table,e2e,intake,curve,rss,startup,report (any of them, comma-separated)
    // runs those parts.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    let python = original_python();
    if python.is_none() {
        println!(
            "(the Python one-process-per-stage rows are skipped: `dev/bench.sh` installs confluent-kafka)"
        );
    }
    let mut configs = Vec::new();
    if runs("table") {
        for (topology, guarantee) in [
            (Topology::RawPipe, "at-least-once"),
            (Topology::NativeStages, "at-least-once"),
            // The original's consumers commit what they polled, processed or not.
            (Topology::ProcessPerStage, "at-most-once"),
            (Topology::OriginalInPython, "at-most-once"),
            (Topology::Chain, "at-least-once"),
            (Topology::Chain, "exactly-once"),
            (Topology::FanOut, "at-least-once"),
            (Topology::FanOut, "exactly-once"),
        ] {
            for pizzas in RUNS {
                configs.push(Config {
                    topology,
                    guarantee,
                    pizzas,
                    order_size: ORDER_SIZE,
                    partitions: 3,
                    latency: pizzas == RUNS[0],
                });
            }
        }
    }
    if runs("e2e") {
        // Customers' orders of 100, each placed and followed over HTTP, against the original.
        for (topology, guarantee) in [
            (Topology::OriginalInPython, "at-most-once"),
            (Topology::Chain, "at-least-once"),
            (Topology::Chain, "exactly-once"),
        ] {
            configs.push(Config {
                topology,
                guarantee,
                pizzas: E2E_PIZZAS,
                order_size: E2E_ORDER_SIZE,
                partitions: 3,
                latency: false,
            });
        }
    }
    if runs("curve") {
        for partitions in PARTITIONS {
            for topology in [Topology::RawPipe, Topology::Chain] {
                configs.push(Config {
                    topology,
                    guarantee: "at-least-once",
                    pizzas: RUNS[1],
                    order_size: ORDER_SIZE,
                    partitions,
                    latency: false,
                });
            }
        }
    }
    configs.retain(|config| config.topology != Topology::OriginalInPython || python.is_some());
    // BENCH_TOPOLOGIES=RawPipe,Chain keeps the rows of those topologies.
    let topologies = std::env::var("BENCH_TOPOLOGIES").unwrap_or_default();
    configs.retain(|config| {
        topologies.is_empty()
            || topologies
                .split(',')
                .any(|name| name.trim() == format!("{:?}", config.topology))
    });
    // Configurations interleaved, round after round, so a slow minute of the machine does not
    // land on one configuration's runs alone; then the median of each.
    let mut measured: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 1..=repeats {
        for (config, runs) in configs.iter().zip(&mut measured) {
            eprintln!("round {round}/{repeats}: {config:?}");
            runs.push(measure(config).await?);
        }
    }
    let medians: Vec<Run> = measured.iter().map(|runs| median(runs)).collect();
    if !configs.is_empty() {
        print_table(&configs, &medians);
    }
    if runs("intake") {
        intake::bench(repeats).await?;
    }
    if runs("startup") {
        startup::bench().await?;
    }
    if runs("report") {
        report::bench().await?;
    }
    println!();
    println!(
        "peak RSS of this bench process over all runs: {:.0} MiB",
        machine::peak_rss_mib()
    );
    if runs("rss") {
        // glibc keeps freed memory in up to 8 arenas per core; the second run caps them at two.
        for env in [&[][..], &[("MALLOC_ARENA_MAX", "2")][..]] {
            println!(
                "peak RSS of a `pizza-host run` process over {} pizzas (chain, at-least-once){}: {:.0} MiB",
                RUNS[1],
                env.iter()
                    .map(|(k, v)| format!(", {k}={v}"))
                    .collect::<String>(),
                host_process_peak_rss(RUNS[1], env).await?
            );
        }
    }
    Ok(())
}

/// The throughput table (each row against the reference rows of the same size and shape),
/// the orders-of-100 rows and the partition curve, in Markdown.
fn print_table(configs: &[Config], medians: &[Run]) {
    let reference_rows = [
        Topology::RawPipe,
        Topology::NativeStages,
        Topology::ProcessPerStage,
        Topology::OriginalInPython,
    ];
    let reference = |topology: Topology, config: &Config| {
        configs
            .iter()
            .zip(medians)
            .find(|(c, _)| {
                c.topology == topology
                    && (c.pizzas, c.order_size, c.partitions)
                        == (config.pizzas, config.order_size, config.partitions)
            })
            .map(|(_, run)| run.throughput)
    };
    println!(
        "| topology | guarantee | partitions | pizzas | order size | pizzas/s | vs raw pipe | vs native stages | vs one process per stage | vs the same in Python | CPU s / 1,000 pizzas: host (or stage processes) + broker = total | 1-pizza order p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (config, run) in configs.iter().zip(medians) {
        let ratios: String = reference_rows
            .iter()
            .map(|topology| match reference(*topology, config) {
                Some(limit) => format!(" {:.2}× |", run.throughput / limit),
                None => " |".to_owned(),
            })
            .collect();
        let (p50, p99) = match run.latency {
            Some((p50, p99)) => (format!("{:.1} ms", ms(p50)), format!("{:.1} ms", ms(p99))),
            None => (String::new(), String::new()),
        };
        println!(
            "| {:?} | {} | {} | {} | {} | {:.0} |{ratios} {:.3} + {:.3} = {:.3} | {p50} | {p99} |",
            config.topology,
            config.guarantee,
            config.partitions,
            config.pizzas,
            config.order_size,
            run.throughput,
            run.cpu_per_1000.pipeline,
            run.cpu_per_1000.broker,
            run.cpu_per_1000.pipeline + run.cpu_per_1000.broker,
        );
    }
}

/// One configuration of the table.
#[derive(Debug)]
struct Config {
    topology: Topology,
    guarantee: &'static str,
    pizzas: usize,
    order_size: usize,
    partitions: i32,
    /// Whether 1-pizza orders are timed after the throughput run.
    latency: bool,
}

/// What one configuration measured.
struct Run {
    throughput: f64,
    /// CPU seconds per 1,000 pizzas: this process (host, the bench's hops, the HTTP client)
    /// and any stage processes; the broker.
    cpu_per_1000: machine::Cpu,
    /// p50 and p99 of a 1-pizza order, when measured.
    latency: Option<(Duration, Duration)>,
}

/// The median of each figure over `runs`.
fn median(runs: &[Run]) -> Run {
    let latencies: Option<Vec<(Duration, Duration)>> = runs.iter().map(|run| run.latency).collect();
    Run {
        throughput: median_of(runs.iter().map(|run| run.throughput).collect()),
        cpu_per_1000: machine::Cpu {
            pipeline: median_of(runs.iter().map(|run| run.cpu_per_1000.pipeline).collect()),
            broker: median_of(runs.iter().map(|run| run.cpu_per_1000.broker).collect()),
        },
        latency: latencies.map(|latencies| {
            let p50 = median_of(latencies.iter().map(|l| l.0.as_secs_f64()).collect());
            let p99 = median_of(latencies.iter().map(|l| l.1.as_secs_f64()).collect());
            (Duration::from_secs_f64(p50), Duration::from_secs_f64(p99))
        }),
    }
}

/// The `p`th percentile of `sorted` (ascending, not empty), by nearest rank: of 100 samples,
/// the 99th is the second slowest, not the slowest.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}

/// The median of `figures` (the upper one of an even count).
fn median_of(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Topology {
    /// sauce → cheese → meats → veggies.
    Chain,
    /// The four stages on `pizza` in parallel, then a join (which is always transactional).
    FanOut,
    /// The chain's four hops, each a native passthrough: the limit.
    RawPipe,
    /// The raw pipe's hops, each calling its stage's logic compiled natively.
    NativeStages,
    /// The original's shape: a process per stage, each polling one record and producing one.
    ProcessPerStage,
    /// The same in the original's language (host/benches/original_stage.py).
    OriginalInPython,
}

impl Topology {
    /// Whether the bench itself moves the records between the topics (the host only takes
    /// orders and serves the view).
    fn outside_the_host(self) -> bool {
        matches!(
            self,
            Topology::RawPipe
                | Topology::NativeStages
                | Topology::ProcessPerStage
                | Topology::OriginalInPython
        )
    }
}

async fn measure(config: &Config) -> anyhow::Result<Run> {
    let &Config {
        topology,
        guarantee,
        pizzas,
        order_size,
        partitions,
        latency,
    } = config;
    let bootstrap = bootstrap();
    let run = uuid::Uuid::new_v4().simple().to_string();
    // Outside the host, `guarantee` describes the bench's hops; the host only takes the orders.
    let host_guarantee = if topology.outside_the_host() {
        "at-least-once"
    } else {
        guarantee
    };
    let toml = pipeline_toml(topology, host_guarantee, partitions, &run, "127.0.0.1:0")?;
    let pipeline = Pipeline::parse(&toml, Path::new("/"))?;
    if topology.outside_the_host() {
        // No stage creates the hops' topics here.
        let topics: Vec<String> = (0..=STAGES.len()).map(|n| topic(&run, n)).collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        pizza_host::kafka::KafkaSettings::new(
            pipeline.kafka_properties().map_err(anyhow::Error::msg)?,
        )
        .ensure_topics(&topics, pipeline.topics.partitions, Some(1), &[])
        .await?;
    }
    let passthroughs = CancellationToken::new();
    let mut stage_processes = StageProcesses::default();
    for (i, stage) in STAGES.iter().enumerate() {
        let (group, input, output) = (
            format!("bench-{run}-{stage}"),
            topic(&run, i),
            topic(&run, i + 1),
        );
        match topology {
            Topology::RawPipe | Topology::NativeStages => {
                let logic = (topology == Topology::NativeStages).then_some(*stage);
                tokio::spawn(passthrough(
                    bootstrap.clone(),
                    group,
                    input,
                    output,
                    logic,
                    passthroughs.clone(),
                ));
            }
            Topology::ProcessPerStage => stage_processes.0.push(
                std::process::Command::new(std::env::current_exe()?)
                    .env(HOP_ENV, format!("{stage} {input} {output} {group}"))
                    .spawn()?,
            ),
            Topology::OriginalInPython => {
                let (choices, some) = menu(stage);
                let python = original_python().context("no Python with confluent-kafka")?;
                stage_processes.0.push(
                    std::process::Command::new(python)
                        .arg(
                            Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/original_stage.py"),
                        )
                        .args([bootstrap.as_str(), stage, if some { "some" } else { "one" }])
                        .arg(choices.join(","))
                        .args([&input, &output, &group])
                        .spawn()?,
                );
            }
            Topology::Chain | Topology::FanOut => {}
        }
    }
    let shutdown = CancellationToken::new();
    let host = pizza_host::start(pipeline, None, shutdown.clone()).await?;
    let url = format!("http://{}", host.http_addr);
    let client = reqwest::Client::new();

    // Warm-up: consumer groups joined, components hot.
    complete(&client, &url, 100).await?;

    let started = Instant::now();
    let cpu_started = machine::Cpu::now(&stage_processes.pids());
    let orders: Vec<String> = futures::future::try_join_all(
        (0..pizzas / order_size).map(|_| place(&client, &url, order_size)),
    )
    .await?;
    for id in &orders {
        wait(&client, &url, id, order_size).await?;
    }
    let throughput = pizzas as f64 / started.elapsed().as_secs_f64();
    let used = machine::Cpu::now(&stage_processes.pids()).since(cpu_started);
    let thousands = pizzas as f64 / 1000.0;
    let cpu_per_1000 = machine::Cpu {
        pipeline: used.pipeline / thousands,
        broker: used.broker / thousands,
    };

    let mut latencies = Vec::new();
    for _ in 0..if latency { LATENCY_SAMPLES } else { 0 } {
        let started = Instant::now();
        complete(&client, &url, 1).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    shutdown.cancel();
    passthroughs.cancel();
    host.wait().await;
    Ok(Run {
        throughput,
        cpu_per_1000,
        latency: latency.then(|| (percentile(&latencies, 50), percentile(&latencies, 99))),
    })
}

/// Starts a host in this process on the pipeline `toml`; it runs until the token is cancelled.
async fn start_host(toml: &str) -> anyhow::Result<(pizza_host::RunningHost, CancellationToken)> {
    let shutdown = CancellationToken::new();
    let host = pizza_host::start(
        Pipeline::parse(toml, Path::new("/"))?,
        None,
        shutdown.clone(),
    )
    .await?;
    Ok((host, shutdown))
}

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The `n`th topic of the chain of run `run` (0: the orders' pizzas, 4: completed).
fn topic(run: &str, n: usize) -> String {
    if n == 0 {
        format!("bench-pizza-{run}")
    } else {
        format!("bench-{}-{run}", STAGES[n - 1])
    }
}

/// The pipeline of one run, listening on `listen` (no stages for the raw pipe: the bench's
/// passthroughs stand in for them).
fn pipeline_toml(
    topology: Topology,
    guarantee: &str,
    partitions: i32,
    run: &str,
    listen: &str,
) -> anyhow::Result<String> {
    let components = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("target/wasm32-wasip1/release");
    // BENCH_KAFKA="linger.ms=1,compression.type=none" tries other client settings.
    let mut kafka = String::new();
    for setting in std::env::var("BENCH_KAFKA").unwrap_or_default().split(',') {
        if let Some((key, value)) = setting.split_once('=') {
            kafka.push_str(&format!("{:?} = {:?}\n", key.trim(), value.trim()));
        }
    }
    let mut toml = format!(
        "guarantee = \"{guarantee}\"\ngroup_prefix = \"bench-{run}\"\n[kafka]\n\"bootstrap.servers\" = \"{}\"\n{kafka}\
         [topics]\npartitions = {partitions}\n[http]\nlisten = \"{listen}\"\nmax_order_count = {ORDER_SIZE}\n\
         [orders]\ntopic = \"{}\"\ncompleted_topic = \"{}\"\norders_topic = \"bench-orders-{run}\"\n\
         [storage]\ndir = {:?}\n",
        bootstrap(),
        topic(run, 0),
        topic(run, 4),
        std::env::temp_dir().join("pizza-host-bench-stores"),
    );
    let part = |stage: &str| format!("bench-part-{stage}-{run}");
    for (i, stage) in STAGES.iter().enumerate() {
        let (input, output) = match topology {
            Topology::Chain => (topic(run, i), topic(run, i + 1)),
            Topology::FanOut => (topic(run, 0), part(stage)),
            Topology::RawPipe
            | Topology::NativeStages
            | Topology::ProcessPerStage
            | Topology::OriginalInPython => continue,
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
            topic(run, 4)
        ));
    }
    Ok(toml)
}

/// The peak resident memory of a `pizza-host run` process (the chain, at-least-once) over
/// `pizzas` pizzas, in MiB: the host alone, not this bench process. `env` is added to its
/// environment.
async fn host_process_peak_rss(pizzas: usize, env: &[(&str, &str)]) -> anyhow::Result<f64> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let file = std::env::temp_dir().join(format!("pizza-bench-{run}.toml"));
    std::fs::write(
        &file,
        pipeline_toml(
            Topology::Chain,
            "at-least-once",
            3,
            &run,
            &format!("127.0.0.1:{port}"),
        )?,
    )?;
    let mut host = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args(["run", "--no-watch"])
        .envs(env.iter().copied())
        .arg(&file)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !client
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < deadline, "the host did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let orders: Vec<String> = futures::future::try_join_all(
        (0..pizzas / ORDER_SIZE).map(|_| place(&client, &url, ORDER_SIZE)),
    )
    .await?;
    for id in &orders {
        wait(&client, &url, id, ORDER_SIZE).await?;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.id()))?;
    let _ = host.kill();
    let _ = host.wait();
    let _ = std::fs::remove_file(&file);
    Ok(machine::vm_hwm_mib(&status))
}

/// One hop of the raw pipe: every record of `input` produced to `output` as it is (same key,
/// same bytes, same headers), or with the value the native `stage` makes, its offset stored for the next auto-commit
/// once the broker has it. With the host's client settings (linger 5 ms, lz4, idempotence),
/// many sends in flight.
async fn passthrough(
    bootstrap: String,
    group: String,
    input: String,
    output: String,
    stage: Option<&'static str>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "100")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    consumer.subscribe(&[&input])?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()?;
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            Some((partition, offset, delivered)) = in_flight.next(), if !in_flight.is_empty() => {
                let _: Result<_, _> = delivered;
                consumer.store_offset(&input, partition, offset)?;
            }
            message = consumer.recv(), if in_flight.len() < 10_000 => {
                let message = message?;
                let made = stage.zip(message.payload()).and_then(|(stage, pizza)| native_stage(stage, pizza));
                let mut record = FutureRecord::<[u8], [u8]>::to(&output);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(payload) = made.as_deref().or(message.payload()) {
                    record = record.payload(payload);
                }
                // The record as it came, headers too (the host carries them on as well).
                if let Some(headers) = message.headers() {
                    record = record.headers(headers.detach());
                }
                // Enqueue now (the delivery future owns nothing of the message); a full queue
                // empties as the broker acknowledges.
                let delivery = loop {
                    match producer.send_result(record) {
                        Ok(delivery) => break delivery,
                        Err((_, returned)) => {
                            record = returned;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                };
                let (partition, offset) = (message.partition(), message.offset());
                in_flight.push(async move { (partition, offset, delivery.await) });
            }
        }
    }
}

/// `stage`'s logic, natively: what its component does to `pizza`, without WebAssembly.
fn native_stage(stage: &str, pizza: &[u8]) -> Option<Vec<u8>> {
    let mut rng = pizza_stage_kit::wasi_rng();
    let topping = match menu(stage) {
        (choices, false) => pizza_stage_kit::pick_one(choices, &mut rng),
        (choices, true) => pizza_stage_kit::pick_some(choices, &mut rng),
    };
    let pizza = std::str::from_utf8(pizza).ok()?;
    pizza_stage_kit::enrich(pizza, stage, topping)
        .ok()
        .map(String::into_bytes)
}

/// `stage`'s menu, and whether it picks some of it (meats, veggies) rather than one.
fn menu(stage: &str) -> (&'static [&'static str], bool) {
    use pizza_stage_kit::menu;
    match stage {
        "sauce" => (&menu::SAUCES, false),
        "cheese" => (&menu::CHEESES, false),
        "meats" => (&menu::MEATS, true),
        _ => (&menu::VEGGIES, true),
    }
}

/// The Python of the project's virtualenv, if it has confluent-kafka (`dev/bench.sh` installs
/// it), for the original's stages.
fn original_python() -> Option<std::path::PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/venv/bin/python");
    std::process::Command::new(&python)
        .args(["-c", "import confluent_kafka"])
        .output()
        .is_ok_and(|done| done.status.success())
        .then_some(python)
}

/// A stage process of the one-process-per-stage topology (`spec` as in [`HOP_ENV`]), in the
/// original services' shape: poll one record (waiting up to a second), make the pizza, produce
/// it, repeat; the consumer commits what it polled in the background; the original's client
/// settings (librdkafka defaults). Runs until killed.
fn blocking_hop(spec: &str) -> anyhow::Result<()> {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::{BaseProducer, BaseRecord};
    let [stage, input, output, group] = spec.split(' ').collect::<Vec<_>>()[..] else {
        anyhow::bail!("{HOP_ENV} must be `<stage> <input> <output> <group>`, not {spec:?}");
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[input])?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    loop {
        let message = match consumer.poll(Duration::from_secs(1)) {
            None => continue,
            Some(Err(err)) => {
                eprintln!("{stage}: {err}");
                continue;
            }
            Some(Ok(message)) => message,
        };
        let Some(pizza) = message.payload().and_then(|p| native_stage(stage, p)) else {
            continue;
        };
        let mut record = BaseRecord::<[u8], [u8]>::to(output).payload(&pizza);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(100));
                }
                Err((err, _)) => anyhow::bail!("{stage}: cannot produce: {err}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
}

/// The stage processes of a one-process-per-stage run; killed when dropped.
#[derive(Default)]
struct StageProcesses(Vec<std::process::Child>);

impl StageProcesses {
    /// The processes' ids, for their CPU time.
    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(std::process::Child::id).collect()
    }
}

impl Drop for StageProcesses {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
