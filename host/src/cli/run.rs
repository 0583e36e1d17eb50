//! `pizza-host run`: loads the pipeline, starts the host, and runs it until Ctrl-C or
//! SIGTERM; a second signal exits at once.

use std::path::PathBuf;

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
}

/// Runs the pipeline until a signal, then waits for the graceful shutdown to finish.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let RunOptions {
        pipeline: path,
        watch,
        overrides,
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
    let host = crate::start(pipeline, watch.then_some((path, overrides)), shutdown).await?;
    host.wait().await;
    tracing::info!("stopped");
    Ok(())
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
