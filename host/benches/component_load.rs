//! How long it takes to get a component ready and to swap it in (what one call costs is
//! `stage_call`'s).
//!
//! Run: `dev/build-stages.sh && cargo bench -p pizza-host --bench component_load`
//! (results are written down in BENCHMARKS.md). No Kafka needed.

use std::path::Path;
use std::time::{Duration, Instant};

use pizza_host::pipeline::stage::StageShared;
use pizza_host::runtime::{Origin, Runtime, Settings};

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let built = root.join("target/wasm32-wasip1/release");
    let sauce = built.join("pizza_stage_sauce.wasm");
    anyhow::ensure!(
        sauce.exists(),
        "build the stages first: dev/build-stages.sh"
    );
    let cache = std::env::temp_dir().join(format!("pizza-bench-cache-{}", std::process::id()));

    println!("| stage | size | compile (no cache) | load from disk cache | load from memory |");
    println!("|---|---|---|---|---|");
    for (what, file, runs) in [
        ("sauce (Rust)", "pizza_stage_sauce.wasm", 10),
        ("cheese (Rust)", "pizza_stage_cheese.wasm", 10),
        ("cheese-py (Python)", "pizza_stage_cheese_py.wasm", 3),
        ("sauce-js (JavaScript)", "pizza_stage_sauce_js.wasm", 3),
    ] {
        let path = built.join(file);
        let size = std::fs::metadata(&path)?.len();
        let compile = median(runs, || {
            let runtime = Runtime::new(None).expect("runtime");
            timed(|| assert_eq!(load(&runtime, &path), Origin::Compiled))
        });
        let warm = Runtime::new(Some(cache.clone()))?;
        load(&warm, &path);
        let disk = median(runs, || {
            let runtime = Runtime::new(Some(cache.clone())).expect("runtime");
            timed(|| assert_eq!(load(&runtime, &path), Origin::Disk))
        });
        let memory = median(100, || {
            timed(|| assert_eq!(load(&warm, &path), Origin::Memory))
        });
        println!(
            "| {what} | {:.1} KiB | {:.1} ms | {:.2} ms | {:.3} ms |",
            size as f64 / 1024.0,
            ms(compile),
            ms(disk),
            ms(memory),
        );
    }

    let warm = Runtime::new(Some(cache.clone()))?;
    let stage = StageShared::new(
        warm.load("sauce", &sauce, &Settings::default())?,
        pizza_host::telemetry::metrics::Metrics::new().stage("sauce"),
        pizza_host::telemetry::events::Events::default(),
    );
    let swap = median(1_000, || {
        let next = warm
            .load("sauce", &sauce, &Settings::default())
            .expect("loads");
        timed(|| drop(stage.swap(next)))
    });
    println!();
    println!(
        "swap: replacing the running component: {:.2} µs (median of 1,000)",
        swap.as_secs_f64() * 1e6
    );
    let _ = std::fs::remove_dir_all(cache);
    Ok(())
}

/// Loads a stage (compile or cache, validation, smoke call) and says from where.
fn load(runtime: &Runtime, path: &Path) -> Origin {
    runtime
        .load("bench", path, &Settings::default())
        .expect("loads")
        .origin()
}

fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn median(runs: usize, mut sample: impl FnMut() -> Duration) -> Duration {
    let mut samples: Vec<Duration> = (0..runs).map(|_| sample()).collect();
    samples.sort();
    samples[runs / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
