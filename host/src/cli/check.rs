//! `pizza-host check`: says whether a file is a component that fits a stage (or a report),
//! and what it imports (with what the sandbox grants for each) and exports. No Kafka needed.

use std::path::Path;

use anyhow::Context as _;

use crate::config::default_compile_cache;
use crate::config::default_stage_settings;
use crate::runtime::Runtime;

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

/// Prints whether `path` is a component that fits a stage world, and what it imports and
/// exports. Fails (with the reason) when it does not fit. The smoke call is made on `sample`
/// (a file holding one event) or, without it, on the demo's pizza.
pub fn run(path: &Path, sample: Option<&Path>) -> anyhow::Result<()> {
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
    // Tried as `pipeline.toml` would run it with only defaults written.
    let mut settings = default_stage_settings(Default::default());
    if let Some(sample) = sample {
        let text = std::fs::read_to_string(sample)
            .with_context(|| format!("cannot read the sample {}", sample.display()))?;
        settings.sample = text.trim().into();
    }
    let as_stage = runtime.load_bytes("check", &bytes, &settings);
    let err = match as_stage {
        Ok(stage) => {
            println!(
                "  fits: {} (smoke call passed), digest {}",
                stage.world(),
                stage.digest()
            );
            return Ok(());
        }
        Err(err) => err,
    };
    // Not a stage: maybe a report.
    if exports.iter().any(|e| e == "update" || e == "render") {
        let report = runtime.load_report_bytes("check", &bytes, &settings);
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
