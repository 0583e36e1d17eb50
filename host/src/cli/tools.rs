//! Commands for stage authors that need no Kafka: `check` (does this file fit a stage, and
//! what does it ask for) and `invoke` (run it on events and show what comes out).

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{DEMO_SAMPLE, default_compile_cache, default_stage_settings};
use crate::runtime::{Runtime, Settings};

/// What the sandbox gives a stage through an interface it imports.
pub fn grant(import: &str) -> &'static str {
    let interface = import.split('@').next().unwrap_or(import);
    match interface {
        i if i.starts_with("wasi:random/") => "granted",
        "pizza:stage/config" => "granted: the `config` table of its pipeline.toml entry",
        "pizza:stage/log" => "granted: lines go to the host's log under the stage's name",
        i if i.starts_with("pizza:stage/") => "the stage contract's types (nothing to provide)",
        i if i.starts_with("wasi:filesystem/") => {
            "linked, but no directory is preopened: the stage sees no files"
        }
        i if i.starts_with("wasi:sockets/") => {
            "linked, but every address is refused: the stage has no network"
        }
        "wasi:cli/environment" => "linked, but empty: no environment variables, no arguments",
        i if i.starts_with("wasi:clocks/") => {
            "linked, but frozen at the Unix epoch: the stage has no clock"
        }
        "wasi:cli/stderr" => "linked: what the stage writes is kept for its error messages",
        i if i.starts_with("wasi:cli/") || i.starts_with("wasi:io/") => {
            "linked: standard streams and exit, nothing read or kept"
        }
        _ => "not provided by pizza-host: the component cannot be loaded",
    }
}

/// Prints whether `path` is a component that fits the stage world, and what it imports and
/// exports. Fails (with the reason) when it does not fit.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let runtime = Runtime::new(Some(default_compile_cache()))?;
    let (imports, exports) = runtime
        .describe(&bytes)
        .with_context(|| path.display().to_string())?;
    println!("{}", path.display());
    println!("  exports:");
    for export in &exports {
        println!("    {export}");
    }
    println!("  imports:");
    for import in &imports {
        println!("    {import}: {}", grant(import));
    }
    let as_stage = runtime.load_bytes("check", &bytes, &Settings::default());
    let err = match as_stage {
        Ok(stage) => {
            println!(
                "  fits: pizza:stage/topping (smoke call passed), digest {}",
                stage.digest()
            );
            return Ok(());
        }
        Err(err) => err,
    };
    // Not a stage: maybe a report.
    if exports.iter().any(|e| e == "update" || e == "render") {
        let report = runtime.load_report_bytes("check", &bytes, &Settings::default());
        return match report {
            Ok(report) => {
                println!(
                    "  fits: pizza:stage/report (smoke calls passed), digest {}",
                    report.digest()
                );
                Ok(())
            }
            Err(err) => Err(err.context(format!("{} does not fit a report", path.display()))),
        };
    }
    Err(err.context(format!("{} does not fit a stage", path.display())))
}

/// How `invoke` runs a stage.
#[derive(Debug, Default)]
pub struct Invocation {
    /// A file holding one JSON document, `-` for one document per line of standard input, or
    /// `None` for the sample pizza.
    pub input: Option<PathBuf>,
    /// The stage's name: what its log lines are attributed to, and (with a seed) part of what
    /// seeds its randomness, so `--stage sauce --seed 7` repeats what `run --seed 7` gave the
    /// `sauce` stage for the same event.
    pub stage: String,
    /// Makes the stage's randomness reproducible.
    pub seed: Option<u64>,
    /// The stage's `config` table.
    pub config: BTreeMap<String, String>,
}

/// Runs the stage in `path` on each event of the invocation's input, printing each result on
/// standard output and each error, with its kind, on standard error. Returns how many events
/// failed.
pub fn invoke(path: &Path, how: &Invocation) -> anyhow::Result<usize> {
    let runtime = Runtime::new(Some(default_compile_cache()))?.with_seed(how.seed);
    let settings = Settings {
        reuse_instances: false,
        ..default_stage_settings(how.config.clone())
    };
    let stage = runtime
        .load(&how.stage, path, &settings)
        .map_err(anyhow::Error::from)?;
    let events: Vec<String> = match &how.input {
        None => vec![DEMO_SAMPLE.to_owned()],
        Some(p) if p == Path::new("-") => std::io::stdin()
            .lock()
            .lines()
            .filter(|line| !matches!(line, Ok(l) if l.trim().is_empty()))
            .collect::<Result<_, _>>()
            .context("cannot read standard input")?,
        Some(p) => vec![
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ],
    };
    let mut failed = 0;
    for event in &events {
        match stage.call(event) {
            Ok(output) => println!("{output}"),
            Err(err) => {
                failed += 1;
                eprintln!("error ({}): {err}", err.kind());
            }
        }
    }
    Ok(failed)
}

/// Parses a `--config key=value` argument.
pub fn config_pair(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected key=value, got {arg:?}")),
    }
}
