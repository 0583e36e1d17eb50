//! What one stage call costs: the stage's logic as a native function, a call on a reused
//! instance (the default) and a call on a fresh store and instance (`reuse_instances = false`,
//! and seeded runs), for a Rust, a Python and a JavaScript stage, on the sample pizza; and a
//! call of contract 0.2.0 (the whole record in, a list of records out) beside one of 0.1.0.
//!
//! Run: `dev/build-stages.sh && cargo bench -p pizza-host --bench stage_call` (criterion; no
//! Kafka needed). Results are written down in BENCHMARKS.md.

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pizza_host::config::DEMO_SAMPLE as SMOKE_TEST_PIZZA;
use pizza_host::runtime::{Event, Runtime, Settings};
use pizza_stage_kit::menu;

fn stage_calls(c: &mut Criterion) {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("target/wasm32-wasip1/release");
    let runtime = Runtime::new(None).expect("a runtime");
    for (stage, choices, components) in [
        (
            "sauce",
            &menu::SAUCES[..],
            [
                ("Rust", "pizza_stage_sauce.wasm"),
                ("JavaScript", "pizza_stage_sauce_js.wasm"),
            ],
        ),
        (
            "cheese",
            &menu::CHEESES[..],
            [
                ("Rust", "pizza_stage_cheese.wasm"),
                ("Python", "pizza_stage_cheese_py.wasm"),
            ],
        ),
    ] {
        let mut group = c.benchmark_group(stage);
        group.bench_function("native Rust (no WebAssembly)", |b| {
            let mut rng = pizza_stage_kit::wasi_rng();
            b.iter(|| {
                let topping = pizza_stage_kit::pick_one(choices, &mut rng);
                pizza_stage_kit::enrich(SMOKE_TEST_PIZZA, stage, topping)
            });
        });
        for (language, file) in components {
            let path = built.join(file);
            assert!(path.exists(), "build the stages first: dev/build-stages.sh");
            for reuse_instances in [true, false] {
                let settings = Settings {
                    reuse_instances,
                    ..Settings::default()
                };
                let component = runtime.load(stage, &path, &settings).expect("loads");
                let instance = if reuse_instances { "reused" } else { "fresh" };
                // An interpreter's fresh instance copies a 10–18 MB heap: fewer samples.
                group.sample_size(if reuse_instances || language == "Rust" {
                    100
                } else {
                    10
                });
                group.bench_function(format!("{language}, {instance} instance"), |b| {
                    b.iter(|| {
                        component
                            .call_text(SMOKE_TEST_PIZZA)
                            .expect("the call succeeds")
                    });
                });
            }
        }
        group.finish();
    }
}

/// A call of each contract version on a reused instance, on the sample pizza as a record
/// that carries the four headers a pizza has by the last stage (trace context and trail).
fn contract_versions(c: &mut Criterion) {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("target/wasm32-wasip1/release");
    let runtime = Runtime::new(None).expect("a runtime");
    let settings = Settings {
        reuse_instances: true,
        ..Settings::default()
    };
    let visit =
        br#"{"stage":"sauce","digest":"sha256:0123456789abcdef","at":"2026-12-06T00:00:00.000Z"}"#;
    let headers: [(&str, &[u8]); 4] = [
        (
            "traceparent",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("pizza-host.trail", visit),
        ("pizza-host.trail", visit),
        ("pizza-host.trail", visit),
    ];
    let event = Event {
        value: SMOKE_TEST_PIZZA.as_bytes(),
        key: Some(b"smoke-test"),
        headers: &headers,
        timestamp: Some(1_700_000_000_000),
        topic: "pizza-with-meats",
        partition: 3,
        offset: 12_345,
    };
    let mut group = c.benchmark_group("contract");
    for (what, file) in [
        (
            "0.1.0 topping (sauce: sets a field)",
            "pizza_stage_sauce.wasm",
        ),
        (
            "0.2.0 processor (splitter: parses, passes the pizza on)",
            "pizza_stage_splitter.wasm",
        ),
        (
            "0.2.0 processor (filter: parses, keeps or drops)",
            "pizza_stage_filter.wasm",
        ),
    ] {
        let path = built.join(file);
        assert!(path.exists(), "build the stages first: dev/build-stages.sh");
        let component = runtime.load("bench", &path, &settings).expect("loads");
        group.bench_function(what, |b| {
            b.iter(|| component.call(&event).expect("the call succeeds"));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = stage_calls, contract_versions
}
criterion_main!(benches);
