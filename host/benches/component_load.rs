//! How long it takes to get a component ready and to swap it in, and what one call costs.
//!
//! Run: `dev/build-stages.sh && cargo bench -p pizza-host --bench component_load`
//! (results are written down in BENCHMARKS.md). No Kafka needed.

use std::path::Path;
use std::time::{Duration, Instant};

use pizza_host::runtime::{Origin, Runtime, SMOKE_TEST_PIZZA, Settings};
use pizza_host::stage::StageShared;

/// The sauce stage's list, for the native comparison.
const NATIVE_CHOICES: [&str; 10] = [
    "regular", "light", "extra", "none", "alfredo", "regular", "light", "extra", "alfredo", "bbq",
];

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

    println!(
        "| stage | size | compile (no cache) | load from disk cache | load from memory | call, fresh instance | call, reused instance |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (what, file, runs, calls) in [
        ("sauce (Rust)", "pizza_stage_sauce.wasm", 10, 20_000),
        ("cheese (Rust)", "pizza_stage_cheese.wasm", 10, 20_000),
        ("cheese-py (Python)", "pizza_stage_cheese_py.wasm", 3, 500),
        ("sauce-js (JavaScript)", "pizza_stage_sauce_js.wasm", 3, 500),
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
        let per_call = |reuse_instances: bool| -> anyhow::Result<Duration> {
            let settings = Settings {
                reuse_instances,
                ..Settings::default()
            };
            let component = warm.load("bench", &path, &settings)?;
            let started = Instant::now();
            for _ in 0..calls {
                component.call(SMOKE_TEST_PIZZA).expect("call");
            }
            Ok(started.elapsed() / calls)
        };
        let (fresh, reused) = (per_call(false)?, per_call(true)?);
        println!(
            "| {what} | {:.1} KiB | {:.1} ms | {:.2} ms | {:.3} ms | {:.1} µs | {:.1} µs |",
            size as f64 / 1024.0,
            ms(compile),
            ms(disk),
            ms(memory),
            fresh.as_secs_f64() * 1e6,
            reused.as_secs_f64() * 1e6,
        );
    }
    // The same work without WebAssembly: parse, pick, set the field, serialize.
    let mut rng = pizza_stage_kit::wasi_rng();
    let calls = 200_000;
    let started = Instant::now();
    for _ in 0..calls {
        let sauce = pizza_stage_kit::pick_one(&NATIVE_CHOICES, &mut rng);
        std::hint::black_box(pizza_stage_kit::enrich(SMOKE_TEST_PIZZA, "sauce", sauce).ok());
    }
    let native = started.elapsed() / calls;
    println!(
        "| sauce, native Rust (no WebAssembly) | | | | | {:.2} µs | |",
        native.as_secs_f64() * 1e6
    );
    println!();
    println!("Calls: the mean of 20,000 (Rust) or 500 (Python, JavaScript) on the sample pizza.");

    let warm = Runtime::new(Some(cache.clone()))?;
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
