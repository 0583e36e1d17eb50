//! How long it takes to get a component ready and to swap it in, and what one call costs.
//!
//! Run: `dev/build-stages.sh && cargo bench -p pizza-host --bench component_load`
//! (results are written down in BENCHMARKS.md). No Kafka needed.

use std::path::Path;
use std::time::{Duration, Instant};

use pizza_host::runtime::{Origin, Runtime, SMOKE_TEST_PIZZA, Settings};
use pizza_host::stage::StageShared;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let sauce = root.join("target/wasm32-wasip1/release/pizza_stage_sauce.wasm");
    anyhow::ensure!(
        sauce.exists(),
        "build the stages first: dev/build-stages.sh"
    );
    let cache = std::env::temp_dir().join(format!("pizza-bench-cache-{}", std::process::id()));

    let compile = median(10, || {
        let runtime = Runtime::new(None).expect("runtime");
        timed(|| assert_eq!(load(&runtime, &sauce), Origin::Compiled))
    });
    let warm = Runtime::new(Some(cache.clone()))?;
    load(&warm, &sauce);
    let disk = median(10, || {
        let runtime = Runtime::new(Some(cache.clone())).expect("runtime");
        timed(|| assert_eq!(load(&runtime, &sauce), Origin::Disk))
    });
    let memory = median(100, || {
        timed(|| assert_eq!(load(&warm, &sauce), Origin::Memory))
    });

    let stage = StageShared::new(
        warm.load("sauce", &sauce, &Settings::default())?,
        pizza_host::metrics::Metrics::new().stage("sauce"),
        pizza_host::events::Events::default(),
    );
    let swap = median(1_000, || {
        let next = warm
            .load("sauce", &sauce, &Settings::default())
            .expect("loads");
        timed(|| drop(stage.swap(next)))
    });

    let component = stage.current();
    let calls = 20_000;
    let started = Instant::now();
    for _ in 0..calls {
        component.call(SMOKE_TEST_PIZZA).expect("call");
    }
    let per_call = started.elapsed() / calls;

    println!("| what | median |");
    println!("|---|---|");
    println!("| load: compile (no cache) | {:.1} ms |", ms(compile));
    println!(
        "| load: from the disk cache (restart) | {:.2} ms |",
        ms(disk)
    );
    println!("| load: from memory (swap back) | {:.3} ms |", ms(memory));
    println!(
        "| swap: replacing the running component | {:.2} µs |",
        swap.as_secs_f64() * 1e6
    );
    println!(
        "| call: fresh instance per event (mean of {calls}) | {:.1} µs |",
        per_call.as_secs_f64() * 1e6
    );
    let _ = std::fs::remove_dir_all(cache);
    Ok(())
}

/// Loads the sauce stage (compile or cache, validation, smoke call) and says from where.
fn load(runtime: &Runtime, sauce: &Path) -> Origin {
    runtime
        .load("sauce", sauce, &Settings::default())
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
