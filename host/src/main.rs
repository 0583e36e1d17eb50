//! The `pizza-host` command line: parses arguments, sets up logging and signal handling, and
//! hands over to the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pizza_host::cli::scaffold::Lang;
use pizza_host::config::{ADMIN_TOKEN_ENV, Overrides, Pipeline};
use tokio_util::sync::CancellationToken;

/// Runs WebAssembly stage components between Kafka topics.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// How log lines are written to stderr: for people, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PIZZA_HOST_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        /// Do not watch the pipeline and component files for changes.
        #[arg(long)]
        no_watch: bool,
        /// Makes every stage's randomness and every order id reproducible (for tests and
        /// demos): the same seed and the same orders give the same pizzas.
        #[arg(long, env = "PIZZA_HOST_SEED")]
        seed: Option<u64>,
    },
    /// Says whether a file is a component that fits a stage, and what it imports and exports.
    Check {
        /// The component file (.wasm).
        component: PathBuf,
    },
    /// Runs a stage on JSON events without Kafka and prints the results.
    Invoke {
        /// The component file (.wasm).
        component: PathBuf,
        /// A file holding one JSON document, or `-` for one document per line of standard
        /// input. Without it, a sample pizza.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The stage's name, for its log lines and (with --seed) its randomness: with the
        /// name and seed of a run, a stage gives what it gave in that run.
        #[arg(long, default_value = "invoke")]
        stage: String,
        /// Makes the stage's randomness reproducible.
        #[arg(long)]
        seed: Option<u64>,
        /// A setting the stage reads through its `config` import (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = pizza_host::cli::tools::config_pair)]
        config: Vec<(String, String)>,
    },
    /// Creates a stage project in functions/<name> that builds as it is, and says how to
    /// build, try and add it.
    New {
        /// The stage's name (lowercase letters, digits, dashes); also the field it sets.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
    },
    /// Puts a new stage into a pipeline file ahead of an existing stage; a host watching the
    /// file starts it live. The component is checked first.
    Add {
        /// The new stage's name.
        name: String,
        /// Its component file (.wasm).
        component: PathBuf,
        /// The stage it goes ahead of: it reads that stage's input, which then reads its output.
        #[arg(long)]
        before: String,
        /// Its output topic (default pizza-with-<name>).
        #[arg(long)]
        output: Option<String>,
        /// A setting for its `config` table (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = pizza_host::cli::tools::config_pair)]
        config: Vec<(String, String)>,
        /// The pipeline file.
        #[arg(long, default_value = "pipeline.toml")]
        pipeline: PathBuf,
    },
    /// Swaps a stage of a running host to a component file, through the admin API.
    ///
    /// The token is read from the PIZZA_HOST_ADMIN_TOKEN environment variable.
    Deploy {
        /// The stage to swap.
        stage: String,
        /// The component file (.wasm).
        component: PathBuf,
        /// The host's admin API.
        #[arg(long, default_value = "http://127.0.0.1:5001")]
        host: String,
    },
    /// Prints the stage table of a running host and whether it is ready; exits non-zero
    /// when it is not.
    Status {
        /// The host's HTTP API.
        #[arg(long, default_value = "http://127.0.0.1:5000")]
        host: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
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
        Command::Run {
            pipeline,
            listen,
            no_watch,
            seed,
        } => runtime.block_on(run(pipeline, listen, !no_watch, seed)),
        Command::Check { component } => pizza_host::cli::tools::check(&component),
        Command::Invoke {
            component,
            input,
            stage,
            seed,
            config,
        } => {
            let how = pizza_host::cli::tools::Invocation {
                input,
                stage,
                seed,
                config: config.into_iter().collect(),
            };
            match pizza_host::cli::tools::invoke(&component, &how) {
                Ok(0) => Ok(()),
                Ok(failed) => Err(anyhow::anyhow!("{failed} event(s) failed")),
                Err(err) => Err(err),
            }
        }
        Command::New { name, lang } => new_stage(&name, lang),
        Command::Add {
            name,
            component,
            before,
            output,
            config,
            pipeline,
        } => {
            let stage = pizza_host::cli::pipeline_edit::NewStage {
                name,
                component,
                before,
                output,
                config: config.into_iter().collect(),
            };
            pizza_host::cli::pipeline_edit::add_stage(&pipeline, &stage).map(|added| {
                println!(
                    "{}: stage `{}` reads {} and writes {}, which `{}` now reads",
                    pipeline.display(),
                    stage.name,
                    added.input,
                    added.output,
                    stage.before
                );
            })
        }
        Command::Deploy {
            stage,
            component,
            host,
        } => runtime.block_on(deploy(&stage, &component, &host)),
        Command::Status { host } => runtime.block_on(status(&host)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    path: PathBuf,
    listen: Option<SocketAddr>,
    watch: bool,
    seed: Option<u64>,
) -> anyhow::Result<()> {
    let overrides = Overrides { listen, seed };
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
    let host = pizza_host::start(pipeline, watch.then_some((path, overrides)), shutdown).await?;
    host.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// `new`: scaffolds the project and prints the next steps.
fn new_stage(name: &str, lang: Lang) -> anyhow::Result<()> {
    let created = pizza_host::cli::scaffold::new_stage(Path::new(""), name, lang)?;
    let dir = created.dir.display();
    let component = created.component.display();
    println!("created {dir}");
    println!();
    println!("build it:   (cd {dir} && {})", created.build);
    println!("check it:   pizza-host check {component}");
    println!("try it:     pizza-host invoke {component}");
    println!("add it:     pizza-host add {name} {component} --before veggies");
    println!();
    println!("or by hand: this in pipeline.toml, and the next stage's input set to its output");
    println!();
    println!("[[stage]]");
    println!("name = \"{name}\"");
    println!("component = \"{component}\"");
    println!("input = \"pizza-with-meats\"");
    println!("output = \"pizza-with-{name}\"");
    println!("# config = {{ choices = \"light,regular,extra\" }}");
    Ok(())
}

async fn deploy(stage: &str, component: &Path, host: &str) -> anyhow::Result<()> {
    let token = std::env::var(ADMIN_TOKEN_ENV)
        .with_context(|| format!("set {ADMIN_TOKEN_ENV} to the host's admin token"))?;
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let url = format!("{}/admin/stages/{stage}", host.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .put(&url)
        .bearer_auth(token)
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("{url} answered {status} without JSON"))?;
    if !status.is_success() {
        anyhow::bail!(
            "{url} answered {status}: {}",
            body["error"].as_str().unwrap_or_default()
        );
    }
    if body["unchanged"] == true {
        println!(
            "stage {stage}: already running {}",
            body["new_digest"].as_str().unwrap_or_default()
        );
    } else {
        println!(
            "stage {stage}: swapped {} -> {} (load {:.1} ms, pause {:.1} µs)",
            body["old_digest"].as_str().unwrap_or_default(),
            body["new_digest"].as_str().unwrap_or_default(),
            body["load_ms"].as_f64().unwrap_or_default(),
            body["pause_us"].as_f64().unwrap_or_default(),
        );
    }
    Ok(())
}

async fn status(host: &str) -> anyhow::Result<()> {
    let url = format!("{}/readyz", host.trim_end_matches('/'));
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("{url} did not answer with JSON"))?;
    println!(
        "{:<12} {:<40} {:<14} {:>10} {:>6}  partitions (lag)",
        "stage", "input -> output", "digest", "processed", "dead"
    );
    for stage in body["stages"].as_array().into_iter().flatten() {
        let text = |key: &str| stage[key].as_str().unwrap_or_default().to_owned();
        let partitions: Vec<String> = stage["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| match p["lag"].as_i64() {
                Some(lag) => format!("{} ({lag})", p["partition"]),
                None => format!("{} (?)", p["partition"]),
            })
            .collect();
        let digest = text("digest");
        println!(
            "{:<12} {:<40} {:<14} {:>10} {:>6}  {}",
            text("name"),
            format!("{} -> {}", text("input"), text("output")),
            digest.get(..14).unwrap_or(&digest),
            stage["processed"],
            stage["dead_lettered"],
            if partitions.is_empty() {
                "none".to_owned()
            } else {
                partitions.join(", ")
            },
        );
    }
    if body["ready"] == true {
        println!("ready");
        Ok(())
    } else {
        for reason in body["waiting_for"].as_array().into_iter().flatten() {
            println!("not ready: {}", reason.as_str().unwrap_or_default());
        }
        anyhow::bail!("the host at {host} is not ready")
    }
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
