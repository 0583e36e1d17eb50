//! The component runtime on the real stage components, without Kafka: the compile cache and
//! what loading accepts.

mod support;

use std::time::Duration;

use pizza_host::runtime::{Limits, Origin, Runtime};
use support::{component, temp_dir};

#[test]
fn a_component_is_compiled_once_then_taken_from_memory_or_disk() {
    let cache = temp_dir("compile-cache");
    let sauce = component("sauce");

    let first = Runtime::new(Some(cache.clone())).expect("runtime");
    let loaded = first
        .load("sauce", &sauce, Limits::default())
        .expect("loads");
    assert_eq!(loaded.origin(), Origin::Compiled);
    let again = first
        .load("sauce", &sauce, Limits::default())
        .expect("loads");
    assert_eq!(again.origin(), Origin::Memory);

    // A restarted host (a new runtime on the same cache folder) does not recompile.
    let restarted = Runtime::new(Some(cache.clone())).expect("runtime");
    let loaded = restarted
        .load("sauce", &sauce, Limits::default())
        .expect("loads");
    assert_eq!(loaded.origin(), Origin::Disk);
    let out = loaded.call(r#"{"order_id":"1"}"#).expect("calls");
    assert!(out.contains("\"sauce\""), "{out}");

    // A damaged cache entry is recompiled, not trusted.
    for entry in walk(&cache) {
        std::fs::write(&entry, b"garbage").expect("damage");
    }
    let damaged = Runtime::new(Some(cache)).expect("runtime");
    let loaded = damaged
        .load("sauce", &sauce, Limits::default())
        .expect("loads");
    assert_eq!(loaded.origin(), Origin::Compiled);
}

#[test]
fn without_a_cache_folder_every_runtime_compiles() {
    let sauce = component("sauce");
    for _ in 0..2 {
        let runtime = Runtime::new(None).expect("runtime");
        let loaded = runtime.load(
            "sauce",
            &sauce,
            Limits {
                timeout: Duration::from_secs(1),
                memory_bytes: 16 << 20,
            },
        );
        assert_eq!(loaded.expect("loads").origin(), Origin::Compiled);
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
