//! Order intake (`BENCH_ONLY=intake`): how many `POST /order/1` one host answers per second
//! with 1, 16 and 64 clients ordering back to back over keep-alive connections, under each
//! guarantee, and how long each order waits for its answer (p50, p99). The chain runs behind
//! the front door as usual, so the pizzas are made too; under exactly-once concurrent orders
//! share transactions (group commit).

use std::time::{Duration, Instant};

use crate::machine::Cpu;
use crate::{Topology, median_of, ms};

/// Concurrent clients of each configuration.
const CLIENTS: [usize; 3] = [1, 16, 64];
/// How long the clients order in each run.
const ORDERING: Duration = Duration::from_secs(5);
const GUARANTEES: [&str; 2] = ["at-least-once", "exactly-once"];

/// What one run measured.
struct Intake {
    orders_per_second: f64,
    p50: Duration,
    p99: Duration,
    /// CPU seconds per 1,000 orders (this process: host and clients; the broker).
    cpu_per_1000: Cpu,
}

/// Runs every configuration `repeats` times, interleaved, and prints the medians.
pub async fn bench(repeats: usize) -> anyhow::Result<()> {
    let configs: Vec<(&str, usize)> = GUARANTEES
        .iter()
        .flat_map(|guarantee| CLIENTS.map(|clients| (*guarantee, clients)))
        .collect();
    let mut measured: Vec<Vec<Intake>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 1..=repeats {
        for (&(guarantee, clients), runs) in configs.iter().zip(&mut measured) {
            eprintln!("round {round}/{repeats}: order intake, {guarantee}, {clients} clients");
            runs.push(measure(guarantee, clients).await?);
        }
    }
    let medians: Vec<Intake> = measured
        .iter()
        .map(|runs| {
            let of = |figure: fn(&Intake) -> f64| median_of(runs.iter().map(figure).collect());
            Intake {
                orders_per_second: of(|run| run.orders_per_second),
                p50: Duration::from_secs_f64(of(|run| run.p50.as_secs_f64())),
                p99: Duration::from_secs_f64(of(|run| run.p99.as_secs_f64())),
                cpu_per_1000: Cpu {
                    pipeline: of(|run| run.cpu_per_1000.pipeline),
                    broker: of(|run| run.cpu_per_1000.broker),
                },
            }
        })
        .collect();
    println!();
    println!(
        "| guarantee | clients | orders/s | vs at-least-once | p50 | p99 | CPU s / 1,000 orders: host + broker |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (&(guarantee, clients), run) in configs.iter().zip(&medians) {
        let at_least_once = configs
            .iter()
            .zip(&medians)
            .find(|((g, c), _)| *g == GUARANTEES[0] && *c == clients)
            .map(|(_, run)| run.orders_per_second);
        let ratio = at_least_once.map_or(String::new(), |a| {
            format!("{:.2}×", run.orders_per_second / a)
        });
        println!(
            "| {guarantee} | {clients} | {:.0} | {ratio} | {:.1} ms | {:.1} ms | {:.3} + {:.3} |",
            run.orders_per_second,
            ms(run.p50),
            ms(run.p99),
            run.cpu_per_1000.pipeline,
            run.cpu_per_1000.broker,
        );
    }
    Ok(())
}

/// One run: a host on the chain under `guarantee`, `clients` clients ordering one pizza at a
/// time for [`ORDERING`].
async fn measure(guarantee: &str, clients: usize) -> anyhow::Result<Intake> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let toml = crate::pipeline_toml(Topology::Chain, guarantee, 3, &run, "127.0.0.1:0")?;
    let (host, shutdown) = crate::start_host(&toml).await?;
    let url = format!("http://{}", host.http_addr);
    // Warm-up: consumer groups joined, components hot, the publisher's producer started.
    crate::complete(&reqwest::Client::new(), &url, 1).await?;

    let cpu_started = Cpu::now(&[]);
    let started = Instant::now();
    let until = started + ORDERING;
    let per_client = futures::future::try_join_all((0..clients).map(|_| {
        let url = url.clone();
        async move {
            // A client of its own: one keep-alive connection, as one customer's browser.
            let client = reqwest::Client::new();
            let mut waited = Vec::new();
            while Instant::now() < until {
                let placed = Instant::now();
                crate::place(&client, &url, 1).await?;
                waited.push(placed.elapsed());
            }
            anyhow::Ok(waited)
        }
    }))
    .await?;
    let elapsed = started.elapsed();
    let used = Cpu::now(&[]).since(cpu_started);
    shutdown.cancel();
    host.wait().await;

    let mut waited: Vec<Duration> = per_client.into_iter().flatten().collect();
    waited.sort();
    anyhow::ensure!(!waited.is_empty(), "no order was placed");
    let thousands = waited.len() as f64 / 1000.0;
    Ok(Intake {
        orders_per_second: waited.len() as f64 / elapsed.as_secs_f64(),
        p50: crate::percentile(&waited, 50),
        p99: crate::percentile(&waited, 99),
        cpu_per_1000: Cpu {
            pipeline: used.pipeline / thousands,
            broker: used.broker / thousands,
        },
    })
}
