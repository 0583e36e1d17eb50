//! The `pizza-host` command line: the arguments ([`Cli`], [`Command`]) and [`dispatch`],
//! which hands each subcommand to its own module. A subcommand's module does its work and all
//! of its printing.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::cli::new::Lang;

pub mod add;
pub mod check;
pub mod deploy;
pub mod invoke;
pub mod logs;
pub mod new;
pub mod pause;
pub mod rollback;
pub mod run;
pub mod status;
pub mod versions;

/// Runs WebAssembly stage components between Kafka topics.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// How log lines are written to stderr: for people, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PIZZA_HOST_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[allow(missing_docs)] // a `///` here would change `--help`; `--log-format` says what they are
pub enum LogFormat {
    Text,
    Json,
}

// The subcommands; each is carried out by the module of its name. No `///` here: clap would
// make it the program's `about` in `--help`.
#[allow(missing_docs)]
#[derive(Subcommand)]
pub enum Command {
    /// Runs the pipeline described by a pipeline.toml until Ctrl-C or SIGTERM.
    Run {
        /// The pipeline file.
        #[arg(env = "PIZZA_HOST_PIPELINE")]
        pipeline: PathBuf,
        /// Listen on this address instead of the file's `http.listen`.
        #[arg(long, env = "PIZZA_HOST_LISTEN")]
        listen: Option<SocketAddr>,
        /// The admin API listens on this address instead of the file's `admin.listen`.
        #[arg(long, env = "PIZZA_HOST_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
        /// Do not watch the pipeline and component files for changes.
        #[arg(long, env = "PIZZA_HOST_NO_WATCH")]
        no_watch: bool,
        /// How long a graceful shutdown may take before the host exits anyway, with status 1
        /// and the stages that had not stopped named in the log (e.g. `20s`, `2m`).
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration, env = "PIZZA_HOST_SHUTDOWN_TIMEOUT")]
        shutdown_timeout: std::time::Duration,
        /// In place of the file's top-level settings of the same names.
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Says whether a file is a component that fits a stage, and what it imports and exports.
    Check {
        /// The component file (.wasm).
        component: PathBuf,
        /// A file holding the event to smoke-call it on (as a stage's `sample` in
        /// pipeline.toml). Without it, a sample pizza.
        #[arg(long)]
        sample: Option<PathBuf>,
    },
    /// Runs a stage on JSON events without Kafka and prints the results.
    Invoke {
        /// The component file (.wasm).
        component: PathBuf,
        /// A file holding one JSON document; a `.jsonl` file, or `-` for standard input, holding
        /// one per line. Each is a record's value, or a whole record:
        /// `{"value": …, "key": "…", "headers": {"name": "…"}}`. Without it, a sample pizza.
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
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = config_pair)]
        config: Vec<(String, String)>,
        /// A file holding the event to smoke-call the stage on when it loads (as a stage's
        /// `sample` in pipeline.toml). Without it, a sample pizza.
        #[arg(long)]
        sample: Option<PathBuf>,
    },
    /// Creates a stage project in functions/<name> that builds as it is, and says how to
    /// build, try and add it.
    New {
        /// The stage's name (lowercase letters, digits, dashes); also the field it sets.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// The contract: `topping` (0.1.0: a pizza in, the pizza out) or `processor` (0.2.0:
        /// a record in, any number of records out, to named outputs).
        #[arg(long, value_enum, default_value_t = new::World::Topping)]
        world: new::World,
        /// Where a Rust processor outside a pizza-host checkout finds pizza-stage-sdk: a path
        /// to `crates/stage-sdk`, or a git URL of the checkout.
        #[arg(long)]
        sdk: Option<String>,
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
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = config_pair)]
        config: Vec<(String, String)>,
        /// Where it starts reading: earliest, latest or an RFC 3339 time; an inserted stage
        /// takes over the position of the stage it goes ahead of, so this applies only when
        /// that stage has none.
        #[arg(long)]
        from: Option<crate::config::StartFrom>,
        /// The pipeline file.
        #[arg(long, default_value = "pipeline.toml")]
        pipeline: PathBuf,
    },
    /// Deploys a component file as a stage to every host of the pipeline, through one host's
    /// admin API; hosts started later run it too.
    ///
    /// The token is read from the PIZZA_HOST_ADMIN_TOKEN environment variable.
    Deploy {
        /// The stage and the host that takes the deploy.
        #[command(flatten)]
        target: StageOnHost,
        /// The component file (.wasm).
        component: PathBuf,
        /// Who deploys.
        #[command(flatten)]
        operator: Operator,
    },
    /// Lists the versions deployed of a stage, newest first (admin API; token from
    /// PIZZA_HOST_ADMIN_TOKEN).
    Versions {
        /// The stage and its host.
        #[command(flatten)]
        target: StageOnHost,
        /// A table for people, or JSON.
        #[arg(long, value_enum, default_value_t = Output::Text, env = "PIZZA_HOST_OUTPUT")]
        output: Output,
    },
    /// Makes every host of the pipeline run an earlier version of a stage: the one before the
    /// current, or the one named.
    Rollback {
        /// The stage and the host that takes the rollback.
        #[command(flatten)]
        target: StageOnHost,
        /// The version: its digest or the start of it (as `versions` shows), or `file` for
        /// the component file pipeline.toml names.
        to: Option<String>,
        /// Who rolls back.
        #[command(flatten)]
        operator: Operator,
    },
    /// Prints a stage's recent log lines from a running host's admin API (token from
    /// PIZZA_HOST_ADMIN_TOKEN); with --follow, goes on printing new ones.
    Logs {
        /// The stage and its host.
        #[command(flatten)]
        target: StageOnHost,
        /// Keep printing new lines as the stage logs them.
        #[arg(long, short)]
        follow: bool,
    },
    /// Pauses a stage on every host of the pipeline (admin API; token from
    /// PIZZA_HOST_ADMIN_TOKEN): it commits what it finished and stops taking records, keeping
    /// its offsets; hosts started later keep it paused.
    Pause {
        /// The stage and the host that takes the command.
        #[command(flatten)]
        target: StageOnHost,
        /// Who pauses.
        #[command(flatten)]
        operator: Operator,
    },
    /// Resumes a paused stage, on every host, from where it stopped.
    Resume {
        /// The stage and the host that takes the command.
        #[command(flatten)]
        target: StageOnHost,
        /// Who resumes.
        #[command(flatten)]
        operator: Operator,
    },
    /// Prints the stage table of a running host and whether it is ready; exits non-zero
    /// when it is not.
    Status {
        /// The host's HTTP API.
        #[arg(long, default_value = "http://127.0.0.1:5000", env = "PIZZA_HOST_URL")]
        host: String,
        /// A table for people, or the host's `/readyz` answer as JSON.
        #[arg(long, value_enum, default_value_t = Output::Text, env = "PIZZA_HOST_OUTPUT")]
        output: Output,
    },
    /// Prints a completion script for a shell: `source <(pizza-host completions bash)`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How a command prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[allow(missing_docs)] // a `///` here would change `--help`; `--output` says what they are
pub enum Output {
    Text,
    Json,
}

/// A stage of a running host, reached through the host's admin API.
#[derive(Debug, Clone, clap::Args)]
pub struct StageOnHost {
    /// The stage.
    pub stage: String,
    /// The host's admin API.
    #[arg(
        long,
        default_value = "http://127.0.0.1:5001",
        env = "PIZZA_HOST_ADMIN_URL"
    )]
    pub host: String,
}

/// Who runs a command that changes the pipeline, as its record says.
#[derive(Debug, Clone, clap::Args)]
pub struct Operator {
    /// Your name in the deployment's record (default: the USER environment variable).
    #[arg(long, env = "PIZZA_HOST_OPERATOR")]
    pub by: Option<String>,
}

impl Operator {
    /// The name given, else the user's.
    pub fn name(&self) -> Option<String> {
        self.by.clone().or_else(|| std::env::var("USER").ok())
    }
}

/// `run`'s flags for the pipeline file's top-level settings; each also comes from the
/// environment (`PIZZA_HOST_<NAME>`), so a container or a unit file sets them without
/// editing the file.
#[derive(Debug, Clone, clap::Args)]
pub struct SettingsArgs {
    /// This host's name among the hosts of the pipeline (`instance_id`).
    #[arg(long, env = "PIZZA_HOST_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// `exactly-once` or `at-least-once` (`guarantee`).
    #[arg(long, value_enum, env = "PIZZA_HOST_GUARANTEE")]
    pub guarantee: Option<crate::config::Guarantee>,
    /// Prefix of the consumer group ids and transactional ids (`group_prefix`).
    #[arg(long, env = "PIZZA_HOST_GROUP_PREFIX")]
    pub group_prefix: Option<String>,
    /// Folder of compiled components (`compile_cache`).
    #[arg(long, env = "PIZZA_HOST_COMPILE_CACHE")]
    pub compile_cache: Option<PathBuf>,
    /// The most the compile cache keeps on disk, in MiB (`compile_cache_max_mib`).
    #[arg(long, env = "PIZZA_HOST_COMPILE_CACHE_MAX_MIB")]
    pub compile_cache_max_mib: Option<u64>,
    /// Folder of the order view's store (`[storage] dir`).
    #[arg(long, env = "PIZZA_HOST_STORAGE_DIR")]
    pub storage_dir: Option<PathBuf>,
    /// Makes every stage's randomness and every order id reproducible (for tests and
    /// demos): the same seed and the same orders give the same pizzas (`seed`).
    #[arg(long, env = "PIZZA_HOST_SEED")]
    pub seed: Option<u64>,
}

/// Carries out `command`.
pub fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            pipeline,
            listen,
            admin_listen,
            no_watch,
            shutdown_timeout,
            settings,
        } => block_on(run::run(run::RunOptions {
            pipeline,
            watch: !no_watch,
            shutdown_timeout,
            overrides: crate::config::Overrides {
                listen,
                admin_listen,
                seed: settings.seed,
                instance_id: settings.instance_id,
                guarantee: settings.guarantee,
                group_prefix: settings.group_prefix,
                compile_cache: settings.compile_cache,
                compile_cache_max_mib: settings.compile_cache_max_mib,
                storage_dir: settings.storage_dir,
            },
        })),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "pizza-host", &mut std::io::stdout());
            Ok(())
        }
        Command::Check { component, sample } => check::run(&component, sample.as_deref()),
        Command::Invoke {
            component,
            input,
            stage,
            seed,
            config,
            sample,
        } => {
            let how = invoke::Invocation {
                input,
                stage,
                seed,
                config: config.into_iter().collect(),
                sample,
            };
            invoke::run(&component, &how)
        }
        Command::New {
            name,
            lang,
            world,
            sdk,
        } => new::run(&name, &new::Spec { lang, world, sdk }),
        Command::Add {
            name,
            component,
            before,
            output,
            config,
            from,
            pipeline,
        } => {
            let stage = add::NewStage {
                name,
                component,
                before,
                output,
                config: config.into_iter().collect(),
                from,
            };
            add::run(&pipeline, &stage)
        }
        Command::Deploy {
            target,
            component,
            operator,
        } => block_on(deploy::run(&target, &component, operator.name())),
        Command::Versions { target, output } => block_on(versions::run(&target, output)),
        Command::Rollback {
            target,
            to,
            operator,
        } => block_on(rollback::run(&target, to.as_deref(), operator.name())),
        Command::Logs { target, follow } => {
            block_on(logs::run(&target.stage, follow, &target.host))
        }
        Command::Pause { target, operator } => block_on(pause::run(&target, true, operator.name())),
        Command::Resume { target, operator } => {
            block_on(pause::run(&target, false, operator.name()))
        }
        Command::Status { host, output } => block_on(status::run(&host, output)),
    }
}

/// The admin token of the commands that call a host's admin API, from the environment
/// (never a flag: it would show in the process list).
fn admin_token() -> anyhow::Result<String> {
    let name = crate::config::ADMIN_TOKEN_ENV;
    std::env::var(name).with_context(|| format!("set {name} to the host's admin token"))
}

/// How long the async runtime may take to wind down once a command has finished: dropping it
/// would wait without end for blocking work still running (a librdkafka call left behind by a
/// stopped worker), and a host that has logged "stopped" must exit.
const RUNTIME_EXIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `command` on a multi-threaded async runtime, then shuts the runtime down within
/// [`RUNTIME_EXIT_LIMIT`].
fn block_on<T>(command: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(command);
    runtime.shutdown_timeout(RUNTIME_EXIT_LIMIT);
    result
}

/// Parses a `--config key=value` argument.
pub fn config_pair(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected key=value, got {arg:?}")),
    }
}
