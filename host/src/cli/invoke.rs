//! `pizza-host invoke`: runs a stage on JSON events without Kafka, printing each result on
//! standard output and each failure, with its kind, on standard error.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{DEMO_SAMPLE, default_compile_cache, default_stage_settings};
use crate::runtime::{Runtime, Settings};

/// `invoke`: runs the stage and fails when any event failed.
pub fn run(path: &Path, how: &Invocation) -> anyhow::Result<()> {
    match invoke(path, how)? {
        0 => Ok(()),
        failed => Err(anyhow::anyhow!("{failed} event(s) failed")),
    }
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
