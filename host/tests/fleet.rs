//! Deployments to a fleet: three host processes of one pipeline, each told what to run by the
//! pipeline's deployments topic rather than by its own files. A deploy, a rollback, a refused
//! component and a pause, each sent to one host, reach all three, also a host restarted since.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const ADMIN_TOKEN: &str = "fleet-test-admin-token-7f3a";
/// How soon every host must run what one of them was told.
const FLEET_WITHIN: Duration = Duration::from_secs(10);
/// How long orders may take to complete.
const WITHIN: Duration = Duration::from_secs(90);

/// A host of the fleet: its process and its admin API.
struct FleetHost {
    process: HostProcess,
    admin: String,
}

impl FleetHost {
    async fn start(pipeline: &std::path::Path, name: &str) -> Self {
        let admin = format!("127.0.0.1:{}", free_port());
        let process = HostProcess::start_with_env(
            pipeline,
            name,
            &[
                ("PIZZA_HOST_ADMIN_TOKEN", ADMIN_TOKEN),
                ("PIZZA_HOST_ADMIN_LISTEN", &admin),
            ],
        )
        .await;
        Self {
            process,
            admin: format!("http://{admin}"),
        }
    }

    /// The stage as this host's `/readyz` shows it.
    async fn stage(&self, name: &str) -> Option<Value> {
        let ready: Value = reqwest::get(format!("{}/readyz", self.process.url))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        ready["stages"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }

    /// `pizza-host ARGS --host <this host's admin API>`: whether it succeeded, and what it said.
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
            .args(args)
            .args(["--host", &self.admin])
            .env("PIZZA_HOST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("PIZZA_HOST_OPERATOR", "fleet-test")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    }
}

/// Waits until every host's stage `stage` satisfies `check`; returns how long that took.
async fn wait_on_every_host(
    hosts: &[FleetHost],
    stage: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    wait_for(FLEET_WITHIN, what, || async {
        for host in hosts {
            if !host.stage(stage).await.as_ref().is_some_and(&check) {
                return None;
            }
        }
        Some(())
    })
    .await;
    started.elapsed()
}

/// Places orders of 2 pizzas through each host in turn until `stop`, counting them in
/// `count`; returns their ids.
fn keep_ordering(
    urls: Vec<String>,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut placed = Vec::new();
        for url in urls.iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            placed.push(place_order(url, 2).await);
            count.fetch_add(1, Ordering::Relaxed);
            // A steady trickle, not a flood: three hosts share two cores with the broker.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        placed
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_rollback_or_pause_through_one_host_reaches_all_three_and_outlasts_a_restart() {
    let topics = Topics::unique("fleet");
    let pipeline = process_pipeline("fleet", &topics, &bootstrap());
    let mut hosts = Vec::new();
    for name in ["fleet-a", "fleet-b", "fleet-c"] {
        hosts.push(FleetHost::start(&pipeline, name).await);
    }
    wait_for(
        Duration::from_secs(90),
        "every host to hold partitions of every stage",
        || async {
            for host in &hosts {
                if host.process.stages_holding_partitions().await != STAGES.len() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let file_digest = hosts[0].stage("sauce").await.unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let v2 = test_component("sauce-v2");
    let v2_digest = pizza_host::runtime::digest(&std::fs::read(&v2).unwrap());

    // A deploy through host a, while orders flow through all three.
    let (count, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let ordering = keep_ordering(
        hosts.iter().map(|h| h.process.url.clone()).collect(),
        count.clone(),
        stop.clone(),
    );
    wait_for(WITHIN, "orders flowing before the deploy", || async {
        (count.load(Ordering::Relaxed) >= 6).then_some(())
    })
    .await;
    let (ok, said) = hosts[0].cli(&["deploy", "sauce", v2.to_str().unwrap()]);
    assert!(
        ok && said.contains("stage sauce: swapped sha256:"),
        "{said}"
    );
    let took = wait_on_every_host(&hosts, "sauce", "the deploy on every host", |s| {
        s["digest"] == v2_digest.as_str() && s["source"] == "deployment"
    })
    .await;
    println!("deploy: every host ran the new version {took:?} after host a answered");
    stop.store(true, Ordering::Relaxed);
    let placed = ordering.await.unwrap();
    assert!(placed.len() >= 3, "orders flowed: {}", placed.len());
    for host in &hosts {
        host.process.wait_complete(&placed, 2, WITHIN).await;
    }
    assert_every_pizza_exactly_once(&bootstrap(), &topics, placed.len() * 2);
    let mut total = placed.len() * 2;

    // A host restarted after the deploy runs the deployed version, not its file's.
    let FleetHost { process, .. } = hosts.pop().unwrap();
    assert_eq!(process.terminate(Duration::from_secs(30)), Some(0));
    hosts.push(FleetHost::start(&pipeline, "fleet-c").await);
    let sauce = hosts[2].stage("sauce").await.unwrap();
    assert_eq!(sauce["digest"], v2_digest.as_str(), "{sauce}");
    assert_eq!(sauce["source"], "deployment", "{sauce}");

    // The history, as JSON, from any host.
    let (ok, said) = hosts[1].cli(&["versions", "sauce", "--output", "json"]);
    assert!(ok, "{said}");
    let versions: Value = serde_json::from_str(&said).unwrap();
    assert_eq!(versions.as_array().unwrap().len(), 1, "{versions}");
    assert_eq!(versions[0]["digest"], v2_digest.as_str());
    assert_eq!(versions[0]["current"], true);
    assert_eq!(versions[0]["by"], "fleet-test");
    assert_eq!(versions[0]["host"], "fleet-a");
    assert_eq!(
        versions[0]["size"],
        std::fs::metadata(&v2).unwrap().len(),
        "{versions}"
    );

    // A component of many records (the JavaScript sauce, 12 MB in chunks of 512 KiB),
    // through host b.
    let js = components().join("pizza_stage_sauce_js.wasm");
    let js_digest = pizza_host::runtime::digest(&std::fs::read(&js).unwrap());
    let (ok, said) = hosts[1].cli(&["deploy", "sauce", js.to_str().unwrap()]);
    assert!(ok, "{said}");
    wait_on_every_host(&hosts, "sauce", "the chunked deploy on every host", |s| {
        s["digest"] == js_digest.as_str()
    })
    .await;

    // Rollbacks: without a version, to the one before (v2), through host a; then to the
    // pipeline file's, through host c.
    let (ok, said) = hosts[0].cli(&["rollback", "sauce"]);
    assert!(ok, "{said}");
    wait_on_every_host(&hosts, "sauce", "the rollback to v2 on every host", |s| {
        s["digest"] == v2_digest.as_str() && s["source"] == "deployment"
    })
    .await;
    let (ok, said) = hosts[2].cli(&["rollback", "sauce", "file"]);
    assert!(ok, "{said}");
    wait_on_every_host(
        &hosts,
        "sauce",
        "the rollback to the file on every host",
        |s| s["digest"] == file_digest.as_str() && s["source"]["file"].is_string(),
    )
    .await;
    let (_, said) = hosts[1].cli(&["rollback", "sauce", "0123abcd"]);
    assert!(
        said.contains("has no deployed version \"0123abcd\""),
        "{said}"
    );

    // A bad component is refused by the host that takes it, and nothing changes anywhere.
    let (ok, said) = hosts[0].cli(&[
        "deploy",
        "sauce",
        test_component("always-panics").to_str().unwrap(),
    ]);
    assert!(!ok && said.contains("smoke call"), "{said}");
    let (_, said) = hosts[2].cli(&["versions", "sauce", "--output", "json"]);
    let versions: Value = serde_json::from_str(&said).unwrap();
    let digests: Vec<&Value> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["digest"])
        .collect();
    assert_eq!(
        digests,
        [
            &Value::Null,
            &Value::from(v2_digest.as_str()),
            &Value::from(js_digest.as_str()),
            &Value::from(v2_digest.as_str()),
        ],
        "newest first, the refused deploy not among them: {versions}"
    );
    assert_eq!(versions[0]["rollback"], true);
    assert_eq!(versions[0]["current"], true);
    assert_eq!(versions[1]["current"], false);
    for host in &hosts {
        let sauce = host.stage("sauce").await.unwrap();
        assert_eq!(sauce["digest"], file_digest.as_str(), "{sauce}");
    }
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args(["status", "--host", &hosts[0].process.url])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("sauce: a new version was refused at") && status.contains("smoke call"),
        "the host that refused it says so: {status}"
    );

    // The history keeps the newest 10 versions of a stage: 10 more (deploys of v2 and
    // rollbacks to the file, by turns, through host b) push out the 4 above.
    for _ in 0..5 {
        let (ok, said) = hosts[1].cli(&["deploy", "sauce", v2.to_str().unwrap()]);
        assert!(ok, "{said}");
        let (ok, said) = hosts[1].cli(&["rollback", "sauce", "file"]);
        assert!(ok, "{said}");
    }
    wait_for(WITHIN, "the history trimmed to 10 on host c", || async {
        let (_, said) = hosts[2].cli(&["versions", "sauce", "--output", "json"]);
        let versions: Value = serde_json::from_str(&said).ok()?;
        (versions.as_array()?.len() == 10).then_some(())
    })
    .await;
    let (_, said) = hosts[0].cli(&["versions", "sauce", "--output", "json"]);
    let versions: Value = serde_json::from_str(&said).unwrap();
    assert!(
        versions
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["digest"] != js_digest.as_str()),
        "the JavaScript version is gone: {versions}"
    );

    // A pause through host a holds the stage on every host; orders wait at its input, and a
    // resume through host c lets them through, each pizza once.
    let (ok, said) = hosts[0].cli(&["pause", "sauce"]);
    assert_eq!((ok, said.as_str()), (true, "stage sauce: paused\n"));
    wait_on_every_host(&hosts, "sauce", "the pause on every host", |s| {
        s["paused"] == true && s["partitions"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    let passed = record_count(&topics.chain[1]);
    let held = hosts[1].process.orders(3, 5).await;
    let sauce_group = format!("test-{}-sauce", topics.suffix);
    wait_for(WITHIN, "the pizzas waiting at the paused stage", || async {
        (records_after_commit(&sauce_group, topics.orders()) == 15).then_some(())
    })
    .await;
    assert_eq!(
        record_count(&topics.chain[1]),
        passed,
        "nothing passed the pause"
    );
    // A host restarted while the stage is paused starts it paused.
    let FleetHost { process, .. } = hosts.remove(1);
    assert_eq!(process.terminate(Duration::from_secs(30)), Some(0));
    hosts.insert(1, FleetHost::start(&pipeline, "fleet-b").await);
    let sauce = hosts[1].stage("sauce").await.unwrap();
    assert_eq!(sauce["paused"], true, "{sauce}");
    assert_eq!(records_after_commit(&sauce_group, topics.orders()), 15);
    assert_eq!(
        record_count(&topics.chain[1]),
        passed,
        "nothing passed the pause across the restart"
    );
    let (ok, said) = hosts[2].cli(&["resume", "sauce"]);
    assert_eq!((ok, said.as_str()), (true, "stage sauce: resumed\n"));
    for host in &hosts {
        host.process.wait_complete(&held, 5, WITHIN).await;
    }
    total += 15;
    assert_every_pizza_exactly_once(&bootstrap(), &topics, total);
}
