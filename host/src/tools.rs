//! Commands for stage authors that need no Kafka: `check` (does this file fit a stage, and
//! what does it ask for) and `invoke` (run it on events and show what comes out).

use std::io::BufRead as _;
use std::path::Path;

use anyhow::Context as _;

use crate::runtime::{Limits, Runtime, SMOKE_TEST_PIZZA};

/// What the sandbox gives a stage through an interface it imports.
pub fn grant(import: &str) -> &'static str {
    let interface = import.split('@').next().unwrap_or(import);
    match interface {
        i if i.starts_with("wasi:random/") => "granted",
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
    let runtime = Runtime::new(None)?;
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
    let as_stage = runtime.load_bytes("check", &bytes, Limits::default());
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
        let report = runtime.load_report_bytes("check", &bytes, Limits::default());
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

/// Runs the stage in `path` on each event of `input` (a file holding one JSON document, `-` for
/// one document per line of standard input, or the sample pizza when `None`), printing each
/// result on standard output and each error, with its kind, on standard error. Returns how
/// many events failed.
pub fn invoke(path: &Path, input: Option<&Path>) -> anyhow::Result<usize> {
    let runtime = Runtime::new(None)?;
    let stage = runtime
        .load("invoke", path, Limits::default())
        .map_err(anyhow::Error::from)?;
    let events: Vec<String> = match input {
        None => vec![SMOKE_TEST_PIZZA.to_owned()],
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
