//! The component runtime on the real stage components, without Kafka: the compile cache and
//! what loading accepts.

mod support;

use pizza_host::runtime::{Origin, Runtime, Settings};
use support::{component, temp_dir};

#[test]
fn a_component_is_compiled_once_then_taken_from_memory_or_disk() {
    let cache = temp_dir("compile-cache");
    let sauce = component("sauce");

    let first = Runtime::new(Some(cache.clone())).expect("runtime");
    let loaded = first
        .load("sauce", &sauce, &Settings::default())
        .expect("loads");
    assert_eq!(loaded.origin(), Origin::Compiled);
    let again = first
        .load("sauce", &sauce, &Settings::default())
        .expect("loads");
    assert_eq!(again.origin(), Origin::Memory);

    // A restarted host (a new runtime on the same cache folder) does not recompile.
    let restarted = Runtime::new(Some(cache.clone())).expect("runtime");
    let loaded = restarted
        .load("sauce", &sauce, &Settings::default())
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
        .load("sauce", &sauce, &Settings::default())
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
            &Settings::new(1_000, 16, &Default::default()),
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

/// Runs `pizza-host <args>` with `stdin`, returning (success, stdout, stderr).
fn pizza_host(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pizza-host");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (
        output.status.success(),
        text(output.stdout),
        text(output.stderr),
    )
}

#[test]
fn check_says_what_a_component_asks_for_and_whether_it_fits() {
    let sauce = component("sauce").display().to_string();
    let (ok, out, _) = pizza_host(&["check", &sauce], "");
    assert!(ok, "{out}");
    assert!(out.contains("wasi:random/random@0.2.12: granted"), "{out}");
    assert!(
        out.contains("wasi:filesystem/preopens@0.2.3: linked, but no directory is preopened"),
        "{out}"
    );
    assert!(out.contains("fits: pizza:stage/topping"), "{out}");

    let report = support::components().join("pizza_report_cheese.wasm");
    let (ok, out, err) = pizza_host(&["check", &report.display().to_string()], "");
    assert!(ok, "{out}{err}");
    assert!(out.contains("fits: pizza:stage/report"), "{out}");

    let other = support::test_component("wrong-world").display().to_string();
    let (ok, out, err) = pizza_host(&["check", &other], "");
    assert!(!ok);
    assert!(out.contains("hello"), "lists the exports it has: {out}");
    assert!(
        err.contains("does not export the `pizza:stage/topping` world"),
        "{err}"
    );
}

#[test]
fn invoke_runs_a_stage_on_each_line_and_reports_failures_with_their_kind() {
    let cheese = component("cheese").display().to_string();
    let (ok, out, err) = pizza_host(
        &["invoke", &cheese, "--input", "-"],
        "{\"order_id\":\"1\"}\n[1]\n\n{\"order_id\":\"2\"}\n",
    );
    assert!(!ok, "one event failed");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["order_id"], "2");
    assert!(lines.iter().all(|l| l["cheese"].is_string()));
    assert!(
        err.contains(
            "error (returned-error): stage returned an error: expected a JSON object, got an array"
        ),
        "{err}"
    );

    let (ok, out, _) = pizza_host(&["invoke", &cheese], "");
    assert!(ok);
    assert!(out.contains("\"order_id\":\"smoke-test\""), "{out}");
}

#[test]
fn a_stage_reaching_for_files_environment_clock_or_network_gets_nothing() {
    let escape = support::test_component("escape").display().to_string();
    let acts = ["read-file", "list-root", "env", "clock", "connect"];
    let input: String = acts
        .iter()
        .map(|act| format!("{{\"order_id\":\"1\",\"act\":\"{act}\"}}\n"))
        .collect();
    let (ok, out, err) = pizza_host(&["invoke", &escape, "--input", "-"], &input);
    assert!(ok, "{err}");
    let got: std::collections::HashMap<String, String> = out
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("JSON");
            let field = |name: &str| event[name].as_str().expect(name).to_owned();
            (field("act"), field("escape"))
        })
        .collect();
    assert!(got["read-file"].starts_with("refused"), "{got:?}");
    assert!(got["list-root"].starts_with("refused"), "{got:?}");
    assert_eq!(got["env"], "0 variables, HOME=None");
    assert_eq!(got["clock"], "0 s since the epoch");
    assert!(got["connect"].starts_with("refused"), "{got:?}");
}

#[test]
fn a_component_importing_what_stages_are_not_granted_is_refused_and_check_says_why() {
    let thief = support::test_component("ungranted").display().to_string();
    let (ok, out, err) = pizza_host(&["check", &thief], "");
    assert!(!ok, "{out}");
    assert!(
        out.contains("test:evil/secrets@0.1.0: not provided by pizza-host"),
        "{out}"
    );
    assert!(
        err.contains("the component needs imports that stages are not granted"),
        "{err}"
    );
    let (ok, _, err) = pizza_host(&["invoke", &thief], "");
    assert!(!ok);
    assert!(err.contains("not granted"), "{err}");
}
