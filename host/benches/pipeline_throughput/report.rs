//! Report cost per event (`BENCH_ONLY=report`): the cheese report folding 100,000 events
//! whose cheeses take 10,000 values, with one state for everything (each event passes the
//! whole state in and out, so it grows with the state) and keyed by cheese (`state_key`: each
//! event passes its cheese's state alone). It measures the time per event over the first and
//! the last 10,000 events of the input.
//!
//! The events are written straight to the report's input before the host starts, so the
//! report folds them back to back.

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use crate::Topology;

const EVENTS: u64 = 100_000;
const CHEESES: u64 = 10_000;
/// Events at each end of the input whose folding is timed.
const WINDOW: u64 = 10_000;

/// Measures both ways and prints the table.
pub async fn bench() -> anyhow::Result<()> {
    println!();
    println!(
        "| report state | events | keys | per event, first {WINDOW} | per event, last {WINDOW} | last / first |"
    );
    println!("|---|---|---|---|---|---|");
    for keyed in [false, true] {
        eprintln!("report cost per event, keyed: {keyed}");
        let (first, last) = measure(keyed).await?;
        println!(
            "| {} | {EVENTS} | {CHEESES} | {:.1} µs | {:.1} µs | {:.2}× |",
            if keyed {
                "keyed by cheese (`state_key`)"
            } else {
                "one state"
            },
            first.as_secs_f64() * 1e6,
            last.as_secs_f64() * 1e6,
            last.as_secs_f64() / first.as_secs_f64(),
        );
    }
    Ok(())
}

/// The time per event over the first and the last [`WINDOW`] events.
async fn measure(keyed: bool) -> anyhow::Result<(Duration, Duration)> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let input = format!("bench-report-input-{run}");
    let components = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("target/wasm32-wasip1/release");
    let mut toml = crate::pipeline_toml(Topology::RawPipe, "exactly-once", 3, &run, "127.0.0.1:0")?;
    toml.push_str(&format!(
        "[[report]]\nname = \"cheese\"\ncomponent = \"{}\"\ninput = \"{input}\"\n{}",
        components.join("pizza_report_cheese.wasm").display(),
        if keyed {
            "state_key = \"cheese\"\n"
        } else {
            ""
        },
    ));
    // The broker creates no topic on its own; the host would create it only when it starts.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", crate::bootstrap())
        .create()?;
    for created in admin
        .create_topics(
            &[NewTopic::new(&input, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        created.map_err(|(topic, err)| anyhow::anyhow!("cannot create {topic}: {err}"))?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", crate::bootstrap())
        .set("linger.ms", "20")
        .create()?;
    let mut sends = Vec::new();
    for n in 0..EVENTS {
        let event = format!(
            r#"{{"order_id":"bench-{n}","pizza_id":"bench-{n}-0","cheese":"cheese-{}"}}"#,
            n % CHEESES
        );
        let key = format!("bench-{n}");
        sends.push(
            producer
                .send_result(FutureRecord::to(&input).key(&key).payload(&event))
                .map_err(|(err, _)| err)?,
        );
    }
    for delivery in sends {
        delivery.await?.map_err(|(err, _)| err)?;
    }

    let (host, shutdown) = crate::start_host(&toml).await?;
    let url = format!("http://{}/report", host.http_addr);
    // When the report had folded each count of events, polled.
    let mut crossed: Vec<(u64, Instant)> = Vec::new();
    let started = Instant::now();
    loop {
        let listed: Value = reqwest::get(&url).await?.json().await?;
        let events = listed["reports"][0]["events"].as_u64().unwrap_or_default();
        crossed.push((events, Instant::now()));
        if events >= EVENTS {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1200),
            "the report folded {events} of {EVENTS} events in 20 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    host.wait().await;
    // The time from the first poll at or past `from` to the first at or past `to`, per event.
    let per_event = |from: u64, to: u64| -> anyhow::Result<Duration> {
        let at = |n: u64| {
            crossed
                .iter()
                .find(|(events, _)| *events >= n)
                .copied()
                .expect("the last poll passed every count")
        };
        let ((a, start), (b, end)) = (at(from), at(to));
        anyhow::ensure!(b > a, "no events between two polls");
        Ok(end.duration_since(start) / (b - a) as u32)
    };
    Ok((per_event(1, WINDOW)?, per_event(EVENTS - WINDOW, EVENTS)?))
}
