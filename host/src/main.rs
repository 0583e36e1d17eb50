//! The `pizza-host` command line: parses arguments, sets up logging and signal handling, and
//! hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pizza_host::config::Pipeline;
use tokio_util::sync::CancellationToken;

/// Runs WebAssembly stage components between Kafka topics.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the pipeline described by a pipeline.toml until Ctrl-C or SIGTERM.
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Listen on this address instead of the file's `http.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run { pipeline, listen } => runtime.block_on(run(pipeline, listen)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: PathBuf, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut pipeline = Pipeline::load(&path)?;
    if let Some(listen) = listen {
        pipeline.http.listen = listen;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    let host = pizza_host::start(pipeline, shutdown).await?;
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
