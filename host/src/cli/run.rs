//! `pizza-host run`: loads the pipeline, starts the host, and runs it until Ctrl-C or
//! SIGTERM; a second signal exits at once.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Overrides, Pipeline};

/// How `run` was asked to run.
#[derive(Debug)]
pub struct RunOptions {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Watch the pipeline and component files and apply changes live.
    pub watch: bool,
    /// Settings in place of the file's.
    pub overrides: Overrides,
    /// How long a graceful shutdown may take before the host exits anyway: a worker stuck
    /// on a broker call must not keep the process alive until the orchestrator kills it
    /// (Kubernetes does at 30 s unless told otherwise), and a stop that is bounded and names
    /// what hung is what an operator can act on. Leaving early loses nothing: what was not
    /// committed is redone by whoever takes the partitions.
    pub shutdown_timeout: Duration,
}

/// Runs the pipeline until a signal, then waits for the graceful shutdown to finish.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let RunOptions {
        pipeline: path,
        watch,
        overrides,
        shutdown_timeout,
    } = options;
    let pipeline = overrides.apply(Pipeline::load(&path)?);
    tracing::info!(
        file = %path.display(),
        stages = pipeline.stages.len(),
        guarantee = ?pipeline.guarantee,
        instance_id = pipeline.instance_id,
        "pipeline loaded"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    let host = crate::start(
        pipeline,
        watch.then_some((path, overrides)),
        shutdown.clone(),
    )
    .await?;
    let stages = host.stages.clone();
    tokio::select! {
        () = host.wait() => {}
        () = overdue(&shutdown, shutdown_timeout) => {
            tracing::error!(
                "shutdown did not finish within {shutdown_timeout:?}; exiting without waiting \
                 further (records not committed are redone by whoever takes the partitions, \
                 none are lost); {}",
                stages.describe_unstopped()
            );
            std::process::exit(1);
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Completes `limit` after `shutdown` was cancelled.
async fn overdue(shutdown: &CancellationToken, limit: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(limit).await;
}

/// The first Ctrl-C or SIGTERM starts a graceful shutdown; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::warn!("cannot watch SIGTERM: {err}");
                return;
            }
        };
    for attempt in 0.. {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        if attempt > 0 {
            tracing::warn!("second signal: exiting without finishing in-flight records");
            std::process::exit(130);
        }
        tracing::info!("shutting down: finishing in-flight records (signal again to exit at once)");
        shutdown.cancel();
    }
}
