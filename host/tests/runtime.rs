//! The component runtime on the real stage components, without Kafka: the compile cache and
//! what loading accepts.

mod support;

use pizza_host::runtime::{Origin, Runtime, Settings};
use support::{component, temp_dir, walk};

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
    let out = loaded.call_text(r#"{"order_id":"1"}"#).expect("calls");
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
        err.contains(
            "exports neither `pizza:stage/topping@0.1.0` nor `pizza:stage/processor@0.2.0`"
        ),
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

#[test]
fn invoke_names_the_kind_of_every_failure_and_exits_non_zero() {
    let hostile = support::test_component("hostile").display().to_string();
    for (act, kind) in [
        ("panic", "error (trap): stage trapped: thread"),
        ("loop", "error (timeout): stage ran past its time limit"),
        (
            "alloc",
            "error (memory-limit): stage exceeded its memory limit",
        ),
        ("error", "error (returned-error)"),
        ("drop-order-id", "error (invalid-output)"),
    ] {
        let (ok, out, err) = pizza_host(
            &["invoke", &hostile, "--input", "-"],
            &format!("{{\"order_id\":\"1\",\"act\":\"{act}\"}}\n"),
        );
        assert!(!ok, "{act}: {out}");
        assert!(err.contains(kind), "{act}: {err}");
        if act == "panic" {
            assert!(err.contains("hostile stage panics on purpose"), "{err}");
        }
    }
    let not_wasm = temp_dir("not-wasm").join("stage.wasm");
    std::fs::write(&not_wasm, "hello").expect("write");
    let not_wasm = not_wasm.display().to_string();
    for command in ["check", "invoke"] {
        let (ok, _, err) = pizza_host(&[command, &not_wasm], "");
        assert!(!ok);
        assert!(err.contains("not a WebAssembly file"), "{command}: {err}");
    }
}

/// Runs the sauce stage on twenty pizzas with `args` and returns the sauces.
fn sauces(args: &[&str]) -> Vec<String> {
    let sauce = component("sauce").display().to_string();
    let input: String = (0..20)
        .map(|n| format!("{{\"order_id\":\"1\",\"pizza_id\":\"1-{n}\",\"sauce\":\"\"}}\n"))
        .collect();
    let mut command = vec!["invoke", sauce.as_str(), "--input", "-"];
    command.extend(args);
    let (ok, out, err) = pizza_host(&command, &input);
    assert!(ok, "{err}");
    out.lines()
        .map(|line| {
            let pizza: serde_json::Value = serde_json::from_str(line).expect("JSON");
            pizza["sauce"].as_str().expect("sauce").to_owned()
        })
        .collect()
}

#[test]
fn a_seed_makes_a_stage_repeat_itself_and_another_seed_or_none_does_not() {
    let seeded = sauces(&["--seed", "42", "--stage", "sauce"]);
    assert_eq!(seeded.len(), 20);
    assert_eq!(seeded, sauces(&["--seed", "42", "--stage", "sauce"]));
    assert_ne!(seeded, sauces(&["--seed", "43", "--stage", "sauce"]));
    // The stage's name is part of the seed: two stages do not draw in step.
    assert_ne!(seeded, sauces(&["--seed", "42", "--stage", "other"]));
    // Twenty draws from six sauces repeating by chance: about one in 10^15.
    assert_ne!(sauces(&[]), sauces(&[]));
}

#[test]
fn a_stage_reads_its_config_and_refuses_a_setting_it_cannot_use() {
    let picked = sauces(&["--config", "choices=pesto, tomato"]);
    assert!(
        picked.iter().all(|s| s == "pesto" || s == "tomato"),
        "{picked:?}"
    );
    assert!(picked.contains(&"pesto".to_owned()) && picked.contains(&"tomato".to_owned()));

    let sauce = component("sauce").display().to_string();
    let (ok, _, err) = pizza_host(&["invoke", &sauce, "--config", "choices= , "], "");
    assert!(!ok);
    assert!(err.contains("config `choices` names no option"), "{err}");
}

#[test]
fn a_stage_logs_through_the_host_under_its_name() {
    let cheese = component("cheese").display().to_string();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"));
    command
        .args([
            "invoke",
            &cheese,
            "--stage",
            "cheese",
            "--config",
            "choices=gouda",
        ])
        .env("RUST_LOG", "stage=debug")
        .env("NO_COLOR", "1");
    let output = command.output().expect("runs");
    assert!(output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.lines().any(|l| l.contains("DEBUG")
            && l.contains("cheese: gouda")
            && l.contains("stage=\"cheese\"")),
        "{err}"
    );
}

/// What `calls` the hostile component reports for each event: how many calls its instance had
/// served.
fn instance_calls(reuse_instances: bool, acts: &[&str]) -> Vec<Option<u64>> {
    let runtime = Runtime::new(None).expect("runtime");
    let settings = Settings {
        reuse_instances,
        ..Settings::new(1_000, 16, &Default::default())
    };
    let hostile = runtime
        .load("hostile", &support::test_component("hostile"), &settings)
        .expect("loads");
    acts.iter()
        .map(|act| {
            let event = format!("{{\"order_id\":\"1\",\"act\":\"{act}\"}}");
            let output = hostile.call_text(&event).ok()?;
            serde_json::from_str::<serde_json::Value>(&output).ok()?["calls"].as_u64()
        })
        .collect()
}

#[test]
fn a_reused_instance_serves_calls_until_one_fails_and_is_then_replaced() {
    let count = ["count", "count", "count"];
    // The load's smoke call was the instance's first.
    assert_eq!(instance_calls(true, &count), [Some(2), Some(3), Some(4)]);
    assert_eq!(instance_calls(false, &count), [Some(1), Some(1), Some(1)]);
    for failure in ["panic", "loop", "alloc"] {
        assert_eq!(
            instance_calls(true, &["count", failure, "count", "count"]),
            [Some(2), None, Some(1), Some(2)],
            "after a {failure}, a fresh instance"
        );
    }
    // An instance that wrote to stderr answers, and is then dropped.
    assert_eq!(
        instance_calls(true, &["count", "stderr", "count"]),
        [Some(2), Some(3), Some(1)]
    );
    // A returned error is an answer, not a failure: the instance stays.
    assert_eq!(
        instance_calls(true, &["count", "error", "count"]),
        [Some(2), None, Some(4)]
    );
}

#[test]
fn an_event_that_fails_in_a_reused_instance_is_called_again_in_a_fresh_one() {
    // The reused instance panics (its third call); the event gets a fresh instance, which
    // succeeds and stays.
    assert_eq!(
        instance_calls(true, &["count", "fail-when-reused", "count"]),
        [Some(2), Some(1), Some(2)]
    );
}

#[test]
fn an_instance_whose_memory_keeps_growing_is_retired_before_it_runs_out() {
    // 16 MiB limit, 1 MiB more per call: an instance is retired once past 8 MiB, so no call
    // ever hits the limit, and the count starts again.
    let calls = instance_calls(true, &["leak"; 40]);
    assert!(calls.iter().all(Option::is_some), "{calls:?}");
    let restarts = calls.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(restarts >= 2, "instances were replaced: {calls:?}");
}

/// The compile cache's entries are loaded as native code: a folder owned by another user, or
/// writable by others, is refused; a new one is created for this user alone.
#[test]
fn a_compile_cache_someone_else_could_write_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let fresh = temp_dir("cache-new").join("nested").join("cache");
    Runtime::new(Some(fresh.clone())).expect("a new folder is created");
    let mode = std::fs::metadata(&fresh)
        .expect("created")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);

    let shared = temp_dir("cache-shared");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = Runtime::new(Some(shared))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("writable by its group or by others"), "{err}");

    // Another user's folder (the suite runs as root in CI; elsewhere chown needs it).
    let theirs = temp_dir("cache-theirs");
    if std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_ok() {
        let err = Runtime::new(Some(theirs))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("belongs to user 65534"), "{err}");
    } else {
        eprintln!("not root: the other user's folder is not tried");
    }
}

/// Without `compile_cache`, components are cached under `$XDG_CACHE_HOME/pizza-host`, or
/// `~/.cache/pizza-host` when that is not set, created for this user alone.
#[test]
fn the_default_compile_cache_is_per_user_under_xdg_cache_home_or_home() {
    use std::os::unix::fs::PermissionsExt as _;
    let check = |env: &[(&str, &std::path::Path)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"));
        command.env_remove("XDG_CACHE_HOME");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command
            .arg("check")
            .arg(support::component("sauce"))
            .output()
            .expect("run pizza-host");
        assert!(output.status.success(), "{output:?}");
    };
    let xdg = temp_dir("cache-xdg");
    check(&[("XDG_CACHE_HOME", &xdg)]);
    let home = temp_dir("cache-home");
    check(&[("HOME", &home)]);
    for cache in [
        xdg.join("pizza-host"),
        home.join(".cache").join("pizza-host"),
    ] {
        let mode = std::fs::metadata(&cache)
            .unwrap_or_else(|err| panic!("{}: {err}", cache.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{}", cache.display());
        assert!(
            !walk(&cache).is_empty(),
            "{}: nothing cached",
            cache.display()
        );
    }
}
