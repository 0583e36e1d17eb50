//! What an operator sees and does, against the real broker and the real components: metrics
//! that add up, a trace id that follows an order across every topic, health and readiness,
//! the `status` command, a graceful shutdown under load, and several hosts sharing the work.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const WITHIN: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_add_up_and_one_trace_id_follows_each_order_through_every_stage() {
    let topics = Topics::unique("observe");
    let host = TestHost::start(&topics).await;
    // One poison record, so that a dead letter shows in the counters.
    produce(topics.orders(), Some("poison"), b"not json").await;
    let id = host.order(20).await;
    host.wait_complete(&id, 20, WITHIN).await;
    wait_for(WITHIN, "the poison record dead-lettered", || async {
        (record_count(&format!("{}.dlq", topics.orders())) == 1).then_some(())
    })
    .await;

    // Every stage: what came in went out or to the dead letters. Lag shows per partition.
    let metrics = wait_for(WITHIN, "lag of every stage's partitions", || async {
        let metrics = scrape(&host.url).await;
        STAGES
            .iter()
            .all(|stage| {
                sum(
                    &metrics,
                    "pizza_host_stage_consumer_lag",
                    &format!("stage=\"{stage}\""),
                ) == 0.0
                    && metrics.keys().any(|k| {
                        k.starts_with("pizza_host_stage_consumer_lag{")
                            && k.contains(&format!("stage=\"{stage}\""))
                    })
            })
            .then_some(metrics)
    })
    .await;
    for stage in STAGES {
        let label = format!("stage=\"{stage}\"");
        let input = sum(&metrics, "pizza_host_stage_records_in_total", &label);
        let output = sum(&metrics, "pizza_host_stage_records_out_total", &label);
        let dead = sum(&metrics, "pizza_host_stage_dead_letters_total", &label);
        let expected_dead = if stage == "sauce" { 1.0 } else { 0.0 };
        assert_eq!(dead, expected_dead, "{stage}");
        assert_eq!(input, output + dead, "{stage}: in = out + dead letters");
        assert!(output >= 20.0, "{stage}: {output}");
        let calls = sum(
            &metrics,
            "pizza_host_stage_call_duration_seconds_count",
            &label,
        );
        assert_eq!(calls, output + dead, "{stage}: one call per record");
        let digest = host.stage(stage).await.unwrap().digest;
        assert_eq!(
            metrics.get(&format!(
                "pizza_host_stage_component_info{{stage=\"{stage}\",digest=\"{digest}\"}}"
            )),
            Some(&1.0),
            "{stage}"
        );
    }
    assert_eq!(metrics["pizza_host_orders_placed_total"], 1.0);
    assert_eq!(metrics["pizza_host_orders{status=\"complete\"}"], 1.0);
    assert_eq!(
        metrics["pizza_host_http_requests_total{route=\"/order/{param}\",method=\"POST\",status=\"200\"}"],
        1.0
    );

    // The same trace id on every record of the order, on every topic; a new span per hop.
    let mut trace_ids = HashSet::new();
    let mut spans = HashSet::new();
    for (hop, topic) in topics.chain.iter().enumerate() {
        // The first topic holds the poison record too.
        let records = if hop == 0 { 21 } else { 20 };
        for record in read_records(topic, records, WITHIN) {
            if record.key.as_deref() != Some(id.as_str()) {
                continue;
            }
            let traceparent = &record.headers["traceparent"];
            let parts: Vec<&str> = traceparent.split('-').collect();
            assert_eq!(parts.len(), 4, "{traceparent}");
            trace_ids.insert(parts[1].to_owned());
            spans.insert((topic.clone(), parts[2].to_owned()));
        }
    }
    assert_eq!(trace_ids.len(), 1, "one trace per order: {trace_ids:?}");
    // The order's pizzas share its span on the first topic; each stage makes a new one.
    assert_eq!(spans.len(), 1 + 4 * 20, "a new span on each hop");

    // With detail, each pizza says when each stage processed it, and with which component.
    let response = reqwest::get(format!("{}/order/{id}?detail=true", host.url))
        .await
        .unwrap();
    let order: Value = response.json().await.unwrap();
    for pizza in order["pizzas"].as_array().unwrap() {
        let visits = pizza["stages"].as_array().unwrap();
        let names: Vec<&str> = visits
            .iter()
            .map(|v| v["stage"].as_str().unwrap())
            .collect();
        assert_eq!(names, STAGES, "{pizza}");
        let times: Vec<&str> = visits.iter().map(|v| v["at"].as_str().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert!(
            visits
                .iter()
                .all(|v| v["digest"].as_str().unwrap().starts_with("sha256:"))
        );
    }
    let plain: Value = reqwest::get(format!("{}/order/{id}", host.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(plain["pizzas"][0].get("stages").is_none(), "{plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_the_status_command_describe_a_running_host() {
    let topics = Topics::unique("ready");
    let host = TestHost::start(&topics).await;
    let health: Value = reqwest::get(format!("{}/healthz", host.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready: Value = wait_for(WITHIN, "the host to be ready", || async {
        let response = reqwest::get(format!("{}/readyz", host.url)).await.ok()?;
        (response.status() == 200).then_some(())?;
        response.json().await.ok()
    })
    .await;
    assert_eq!(ready["ready"], true);
    let stages = ready["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 4);
    let held: usize = stages
        .iter()
        .map(|s| s["partitions"].as_array().unwrap().len())
        .sum();
    assert_eq!(held, 4 * 3, "one host holds every partition of every stage");
    // Each stage says what its loop is doing, and how its Kafka client sees its membership
    // and its fetchers (from the client's statistics, once a second).
    let ready: Value = wait_for(WITHIN, "every stage's client described", || async {
        let ready: Value = reqwest::get(format!("{}/readyz", host.url))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let stages = ready["stages"].as_array()?;
        stages
            .iter()
            .all(|s| {
                s["client_view"]
                    .as_str()
                    .is_some_and(|v| v.contains("active"))
            })
            .then_some(ready)
    })
    .await;
    for stage in ready["stages"].as_array().unwrap() {
        assert_eq!(stage["activity"]["doing"], "waiting for records", "{stage}");
        assert!(stage["activity"]["for_ms"].as_u64().is_some(), "{stage}");
        let view = stage["client_view"].as_str().unwrap();
        assert!(view.starts_with("group up, join steady"), "{view}");
        for partition in 0..3 {
            assert!(
                view.contains(&format!("partition {partition} active")),
                "{view}"
            );
        }
    }

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args(["status", "--host", &host.url])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    for stage in STAGES {
        assert!(out.contains(stage), "{out}");
    }
    assert!(out.lines().last() == Some("ready"), "{out}");

    // The same as JSON, its host named by the environment, as a script would have it.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args(["status", "--output", "json"])
        .env("PIZZA_HOST_URL", &host.url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["ready"], true);
    assert_eq!(status["order_view"]["state"], "ready");
    assert_eq!(status["stages"].as_array().map(Vec::len), Some(4));

    // Completion scripts for the shells.
    for shell in ["bash", "zsh", "fish"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && script.contains("pizza-host") && script.contains("status"),
            "{shell}: {script}"
        );
    }

    // Errors stay JSON, with the right status.
    let client = reqwest::Client::new();
    let wrong_method = client
        .delete(format!("{}/order/1", host.url))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let body: Value = wrong_method.json().await.unwrap();
    assert!(body["error"].is_string());
    let bad_detail = reqwest::get(format!("{}/order/1?detail=maybe", host.url))
        .await
        .unwrap();
    assert_eq!(bad_detail.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_host_refuses_orders_and_is_not_ready_while_it_finishes_its_records() {
    let topics = Topics::unique("draining");
    let host = TestHost::start_toml(&hostile_pipeline(&topics, 3_000)).await;
    // A record the stage spins on until its 3 s limit: the host must finish it before it stops.
    let spin = serde_json::json!({"order_id": "spin", "act": "loop"}).to_string();
    produce(topics.orders(), Some("spin"), spin.as_bytes()).await;
    wait_for(WITHIN, "the stage to take the record", || async {
        let metrics = scrape(&host.url).await;
        (sum(
            &metrics,
            "pizza_host_stage_records_in_total",
            "stage=\"chaos\"",
        ) >= 1.0)
            .then_some(())
    })
    .await;
    host.shutdown.cancel();

    let refused = reqwest::Client::new()
        .post(format!("{}/order/1", host.url))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    let ready = reqwest::get(format!("{}/readyz", host.url)).await.unwrap();
    assert_eq!(ready.status(), 503);
    let url = host.url.clone();
    host.stop(Duration::from_secs(30)).await;
    assert!(
        reqwest::get(format!("{url}/healthz")).await.is_err(),
        "the server stopped"
    );
    // The record in hand was finished (as a timeout) and committed, not dropped.
    assert_eq!(record_count(&format!("{}.dlq", topics.orders())), 1);
    assert_eq!(
        records_after_commit(&format!("test-{}-chaos", topics.suffix), topics.orders()),
        0
    );
}

#[test]
fn logs_are_json_lines_with_a_flag() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args(["--log-format", "json", "check", "/no/such/file.wasm"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line: Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "ERROR", "{stderr}");
    assert!(
        line["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/file.wasm"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_cleanly_leaving_the_groups_and_nothing_is_lost_or_doubled() {
    let topics = Topics::unique("sigterm");
    // The default session timeout (45 s): a host that did not leave its groups would hold up
    // the next one's assignment that long.
    let pipeline = temp_dir("sigterm").join("pipeline.toml");
    let toml = pipeline_toml(&topics).replace("[http]\n", "[http]\nmax_order_count = 1000\n");
    std::fs::write(&pipeline, toml).unwrap();
    let host = HostProcess::start_named(&pipeline, "sigterm").await;
    let orders = host.orders(5, 1_000).await;
    let stopping = Instant::now();
    let code = host.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "exit status after SIGTERM");
    eprintln!("graceful stop took {:?}", stopping.elapsed());

    let restarted = Instant::now();
    let host = HostProcess::start_named(&pipeline, "sigterm").await;
    wait_for(
        Duration::from_secs(30),
        "every stage to join again",
        || async {
            let response = reqwest::get(format!("{}/readyz", host.url)).await.ok()?;
            (response.status() == 200).then_some(())
        },
    )
    .await;
    eprintln!("ready again after {:?}", restarted.elapsed());
    host.wait_complete(&orders, 1_000, Duration::from_secs(120))
        .await;
    assert_every_pizza_exactly_once(&bootstrap(), &topics, 5_000);
}

/// On SIGTERM the host stops consuming, finishes the records in hand and commits them. Under
/// at-least-once, where anything done but not committed would be done again and show up
/// twice, a host stopped under load and restarted makes every pizza exactly once; and what
/// the stopped host left lies beyond its commits, untouched, for the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_at_least_once_commits_what_it_finished_so_a_restart_redoes_nothing() {
    let topics = Topics::unique("alo-sigterm");
    let pipeline = process_pipeline("alo-sigterm", &topics, &bootstrap());
    switch_to_at_least_once(&pipeline);
    let host = HostProcess::start_named(&pipeline, "alo-sigterm").await;
    // Enough that the stages are still at it when the signal comes: at-least-once moved all
    // of 10,000 pizzas between the first one completing and the signal once (2026-12-06).
    let orders = host.orders(20, 1_000).await;
    wait_for(WITHIN, "the first pizzas to complete", || async {
        (host.pizzas(&orders[0]).await > 0).then_some(())
    })
    .await;
    host.signal("TERM");
    assert_eq!(host.wait_exit(Duration::from_secs(60)), Some(0));
    let left = stage_records_after_commit(&topics);
    assert!(
        left > 0,
        "the stopped host must stop consuming, not drain every topic"
    );

    let host = HostProcess::start_named(&pipeline, "alo-sigterm").await;
    host.wait_complete(&orders, 1_000, Duration::from_secs(180))
        .await;
    println!("{left} records left beyond the commits by the stop");
    assert_every_pizza_exactly_once(&bootstrap(), &topics, 20_000);
}

/// Hosts are static group members (a crashed host comes back to its partitions at once), but
/// one stopped on purpose leaves its groups: the others take its partitions now, not after
/// its 45-second sessions time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_stopped_for_good_hands_its_partitions_to_the_others_at_once() {
    let topics = Topics::unique("handover");
    let pipeline = temp_dir("handover").join("pipeline.toml");
    std::fs::write(&pipeline, pipeline_toml(&topics)).unwrap();
    // Both hold partitions before one leaves: each stage's group has rebalanced.
    let (staying, leaving) = start_pair(&pipeline, ["handover-a", "handover-b"]).await;
    assert_eq!(leaving.terminate(Duration::from_secs(60)), Some(0));
    // It beat on the hosts topic while it ran, and its last record there is a tombstone.
    let hosts_topic = format!("test-{}-hosts", topics.suffix);
    let records = read_records(
        &hosts_topic,
        record_count(&hosts_topic) as usize,
        Duration::from_secs(30),
    );
    let leaver: Vec<&Record> = records
        .iter()
        .filter(|r| r.key.as_deref() == Some("handover-b"))
        .collect();
    let (last, beats) = leaver.split_last().expect("records of the leaving host");
    assert!(last.value.is_empty(), "a tombstone last");
    assert!(
        !beats.is_empty() && beats.iter().all(|beat| !beat.value.is_empty()),
        "beats before it"
    );

    let stopped = Instant::now();
    // Ten orders: their keys spread over every partition, the leaver's included.
    let mut orders = Vec::new();
    for _ in 0..10 {
        orders.push(staying.order(1).await);
    }
    staying
        .wait_complete(&orders, 1, Duration::from_secs(15))
        .await;
    eprintln!("orders complete {:?} after the stop", stopped.elapsed());
}

/// A host killed for good keeps its partitions until its consumer sessions time out (6 s
/// here): the other host gets them then, not at once as from a host that left its groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_host_holds_its_partitions_until_its_sessions_time_out() {
    const SESSION: Duration = Duration::from_secs(6);
    let topics = Topics::unique("held");
    let pipeline = process_pipeline("held", &topics, &bootstrap());
    let (staying, dying) = start_pair(&pipeline, ["held-a", "held-b"]).await;
    dying.kill();
    let killed = Instant::now();
    wait_for(WITHIN, "the other host to hold every partition", || async {
        let held = staying.partitions_per_stage().await;
        (held == [3; 4]).then_some(())
    })
    .await;
    let took = killed.elapsed();
    println!("partitions moved {took:?} after the kill");
    // The session counts from the last heartbeat, which may have come up to one heartbeat
    // interval (librdkafka's 3 s) before the kill.
    assert!(
        took >= SESSION - Duration::from_secs(3),
        "the partitions moved after {took:?}, before the {SESSION:?} sessions timed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hosts_share_the_work_and_when_one_is_killed_every_order_completes_exactly_once() {
    let topics = Topics::unique("scale");
    let pipeline = process_pipeline("scale", &topics, &bootstrap());
    let mut hosts = Vec::new();
    for name in ["scale-a", "scale-b", "scale-c"] {
        hosts.push(HostProcess::start_named(&pipeline, name).await);
    }
    // Each host takes orders; with three partitions per topic, each ends up with a share.
    let mut orders = Vec::new();
    for round in 0..9 {
        orders.push(hosts[round % 3].order(1_000).await);
    }
    // The host to be killed holds partitions of every stage, and is killed while it works on
    // them: once its first stage has taken records.
    wait_for(WITHIN, "the first host to hold partitions", || async {
        (hosts[0].stages_holding_partitions().await == STAGES.len()).then_some(())
    })
    .await;
    wait_for(WITHIN, "the first host to take records", || async {
        (stage_records_in(&hosts[0].url, "sauce").await > 0.0).then_some(())
    })
    .await;
    hosts.remove(0).kill();
    let in_flight = stage_records_after_commit(&topics);
    assert!(
        in_flight > 0,
        "the kill came after everything was committed"
    );

    for host in &hosts {
        host.wait_complete(&orders, 1_000, Duration::from_secs(180))
            .await;
    }
    assert_every_pizza_exactly_once(&bootstrap(), &topics, 9_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_requests_are_refused_with_json_errors() {
    let topics = Topics::unique("limits");
    let host = TestHost::start(&topics).await;
    let client = reqwest::Client::new();
    let big_body = client
        .post(format!("{}/order/1", host.url))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(big_body.status(), 413);
    let body: Value = big_body.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("1024 bytes"),
        "{body}"
    );
    let long_path = reqwest::get(format!("{}/order/{}", host.url, "9".repeat(600)))
        .await
        .unwrap();
    assert_eq!(long_path.status(), 414);
    assert!(long_path.json::<Value>().await.unwrap()["error"].is_string());
    let unknown = reqwest::get(format!("{}/no/such/route", host.url))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.json::<Value>().await.unwrap()["error"].is_string());
    // None of it placed an order.
    let metrics = scrape(&host.url).await;
    assert_eq!(metrics["pizza_host_orders_placed_total"], 0.0);
}

/// Every top-level setting of the pipeline file can come from the environment instead
/// (`PIZZA_HOST_<NAME>`), as a container or a unit file sets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn top_level_settings_come_from_the_environment() {
    let topics = Topics::unique("env-settings");
    let pipeline = process_pipeline("env-settings", &topics, &bootstrap());
    let stores = temp_dir("env-stores");
    let cache = temp_dir("env-compile-cache");
    let prefix = format!("env-{}", topics.suffix);
    let host = HostProcess::start_with_env(
        &pipeline,
        "the-hostname",
        &[
            ("PIZZA_HOST_INSTANCE_ID", "from-env"),
            ("PIZZA_HOST_STORAGE_DIR", stores.to_str().unwrap()),
            ("PIZZA_HOST_GUARANTEE", "at-least-once"),
            ("PIZZA_HOST_GROUP_PREFIX", &prefix),
            ("PIZZA_HOST_COMPILE_CACHE", cache.to_str().unwrap()),
            // Less than one compiled stage: each new entry deletes the one before it.
            ("PIZZA_HOST_COMPILE_CACHE_MAX_MIB", "1"),
        ],
    )
    .await;
    let orders = host.orders(2, 3).await;
    host.wait_complete(&orders, 3, Duration::from_secs(90))
        .await;
    let store = stores.join(&prefix).join("from-env").join("orders.redb");
    assert!(
        store.is_file(),
        "the store is where the environment says: {store:?}"
    );
    let compiled: Vec<_> = walk(&cache)
        .into_iter()
        .filter(|file| file.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(
        compiled.len(),
        1,
        "four stages compiled into a cache of at most 1 MiB keep only the newest: {compiled:?}"
    );
    let log = std::fs::read_to_string(&host.log).unwrap();
    let loaded = log
        .lines()
        .find(|line| line.contains("pipeline loaded"))
        .unwrap_or_default();
    assert!(
        loaded.contains("AtLeastOnce") && loaded.contains("from-env"),
        "{loaded}"
    );
    assert_eq!(
        host.terminate(Duration::from_secs(30)),
        Some(0),
        "a clean exit"
    );
}
