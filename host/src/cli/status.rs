//! `pizza-host status`: prints the stage table of a running host and whether it is ready
//! ([`crate::api::client::Client::readiness`]), or with `--output json` the host's answer as it
//! is; not ready is an error, so the exit code says it.

use crate::api::client::Client;
use crate::api::types::{PartitionInfo, StageInfo};
use crate::cli::Output;

/// Prints the table and the readiness of the host at `host` (or, as JSON, its `/readyz`
/// answer).
pub async fn run(host: &str, output: Output) -> anyhow::Result<()> {
    let readiness = Client::new(host).readiness().await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&readiness)?);
        anyhow::ensure!(readiness.ready, "the host at {host} is not ready");
        return Ok(());
    }
    println!(
        "{:<12} {:<40} {:<14} {:>10} {:>6}  partitions (lag)",
        "stage", "input -> output", "digest", "processed", "dead"
    );
    for stage in &readiness.stages {
        println!("{}", row(stage));
    }
    // A version this host refused (a file change, or a deploy another host accepted): it
    // runs the one before, and the operator should know.
    for stage in &readiness.stages {
        if let Some(error) = &stage.last_swap_error {
            println!(
                "{}: a new version was refused at {} and the old one runs: {}",
                stage.name, error.at, error.message
            );
        }
    }
    if readiness.ready {
        println!("ready");
        Ok(())
    } else {
        for reason in &readiness.waiting_for {
            println!("not ready: {reason}");
        }
        anyhow::bail!("the host at {host} is not ready")
    }
}

/// One stage's line of the table.
fn row(stage: &StageInfo) -> String {
    let partitions: Vec<String> = stage.partitions.iter().map(partition).collect();
    format!(
        "{:<12} {:<40} {:<14} {:>10} {:>6}  {}",
        stage.name,
        format!("{} -> {}", stage.input, outputs(stage)),
        stage.digest.get(..14).unwrap_or(&stage.digest),
        stage.processed,
        stage.dead_lettered,
        if stage.paused {
            "paused".to_owned()
        } else if partitions.is_empty() {
            "none".to_owned()
        } else {
            partitions.join(", ")
        },
    )
}

/// The stage's output topics.
fn outputs(stage: &StageInfo) -> String {
    let topics: Vec<&str> = stage.outputs.iter().map(|o| o.topic.as_str()).collect();
    if topics.is_empty() {
        stage.output.clone()
    } else {
        topics.join(" | ")
    }
}

/// A partition and its lag, `?` until librdkafka has reported it.
fn partition(p: &PartitionInfo) -> String {
    match p.lag {
        Some(lag) => format!("{} ({lag})", p.partition),
        None => format!("{} (?)", p.partition),
    }
}
