//! Bad stages, bad records and restarts, against the real broker and real components: every
//! failure lands in a dead-letter topic with its kind, the pipeline keeps flowing, the order
//! view tells the user, and orders survive a restart.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const WITHIN: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_of_stage_failure_is_dead_lettered_and_the_pipeline_keeps_flowing() {
    let topics = Topics::unique("hostile");
    let dir = temp_dir("hostile");
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, hostile_pipeline(&topics, 300)).unwrap();
    let host = TestHost::start_watching(&path).await;

    let expected = [
        ("loop", "timeout"),
        ("alloc", "memory-limit"),
        ("panic", "trap"),
        ("non-json", "invalid-output"),
        ("drop-order-id", "invalid-output"),
        ("error", "returned-error"),
        ("retryable", "returned-error"),
    ];
    for (act, _) in expected {
        let event = json!({"order_id": format!("hostile-{act}"), "act": act}).to_string();
        produce(
            topics.orders(),
            Some(&format!("hostile-{act}")),
            event.as_bytes(),
        )
        .await;
    }
    // Orders placed behind the hostile records still complete.
    let id = host.order(5).await;
    host.wait_complete(&id, 5, WITHIN).await;

    let dead = read_records(&format!("{}.dlq", topics.orders()), expected.len(), WITHIN);
    let kinds: BTreeMap<String, (String, String)> = dead
        .iter()
        .map(|r| {
            let h = &r.headers;
            let key = r.key.clone().unwrap();
            (
                key,
                (
                    h["pizza-host.error-kind"].clone(),
                    h["pizza-host.error"].clone(),
                ),
            )
        })
        .collect();
    for (act, kind) in expected {
        let (got, message) = &kinds[&format!("hostile-{act}")];
        assert_eq!(got, kind, "{act}: {message}");
    }
    assert!(
        kinds["hostile-panic"].1.contains("panics on purpose"),
        "the panic message is kept: {:?}",
        kinds["hostile-panic"]
    );
    assert!(
        kinds["hostile-loop"].1.contains("300ms"),
        "{:?}",
        kinds["hostile-loop"]
    );
    // Only the error the stage marked retryable was retried (1 call + 3 retries).
    let attempts = |act: &str| {
        dead.iter()
            .find(|r| r.key.as_deref() == Some(&format!("hostile-{act}")))
            .unwrap()
            .headers["pizza-host.attempts"]
            .clone()
    };
    assert_eq!(attempts("retryable"), "4");
    assert_eq!(attempts("error"), "1");
    let stage = host.stage("chaos").await.unwrap();
    assert_eq!(stage.dead_lettered, expected.len() as u64);
    assert!(stage.last_error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_with_a_failed_pizza_says_which_stage_failed_it_and_why() {
    let topics = Topics::unique("failed-order");
    let dir = temp_dir("failed-order");
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, hostile_pipeline(&topics, 300)).unwrap();
    let host = TestHost::start_watching(&path).await;

    // An order placed by someone else on the same topics (another host, or the original
    // service): its record on the orders topic, and two pizzas, one of which makes the stage
    // panic.
    let id = "4242424242";
    produce(
        &topics.order_records(),
        Some(id),
        json!({"order_id": id, "count": 2}).to_string().as_bytes(),
    )
    .await;
    for (n, act) in [(0, "panic"), (1, "none")] {
        let pizza =
            json!({"order_id": id, "pizza_id": format!("{id}-{n}"), "sauce": "", "act": act});
        produce(topics.orders(), Some(id), pizza.to_string().as_bytes()).await;
    }
    let order = wait_for(WITHIN, "the order to be settled", || async {
        let (status, order) = host.get_order(id).await;
        (status == 200 && order["status"] != "in_progress").then_some(order)
    })
    .await;
    assert_eq!(order["status"], "failed", "{order}");
    assert_eq!(order["pizzas"].as_array().unwrap().len(), 1);
    let failed = &order["failed"][0];
    assert_eq!(failed["pizza_id"], format!("{id}-0"));
    assert_eq!(failed["stage"], "chaos");
    assert_eq!(failed["kind"], "trap");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("panics on purpose"),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_survive_a_restart_of_the_host() {
    let topics = Topics::unique("restart");
    // The same instance before and after, as a host restarted in place would be.
    let toml = format!(
        "instance_id = \"restart-{}\"\n{}",
        topics.suffix,
        pipeline_toml(&topics)
    );
    let host = TestHost::start_toml(&toml).await;
    let before = host.order(3).await;
    host.wait_complete(&before, 3, WITHIN).await;
    let (_, was) = host.get_order(&before).await;
    host.stop(Duration::from_secs(30)).await;

    let restarted = TestHost::start_toml(&toml).await;
    // Answered from the rebuilt view at once: no waiting.
    let (status, order) = restarted.get_order(&before).await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "complete");
    assert_eq!(
        order["pizzas"], was["pizzas"],
        "the same pizzas, in the same order"
    );
    // And it keeps taking orders.
    let after = restarted.order(2).await;
    let order = restarted.wait_complete(&after, 2, WITHIN).await;
    assert_eq!(order["status"], "complete");
    assert_eq!(
        record_count(topics.completed()),
        5,
        "nothing processed twice across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_host_answers_for_orders_placed_on_the_first() {
    let topics = Topics::unique("two-hosts");
    let first = TestHost::start(&topics).await;
    let second = TestHost::start(&topics).await;
    let id = first.order(4).await;
    // Asked at once, before the second host can have read it: "not yet", never "no such order".
    let response = reqwest::get(format!("{}/order/{id}", second.url))
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!(
        status == 200 || (status == 503 && response.headers().contains_key("retry-after")),
        "a new order placed on another host answered {status}"
    );
    first.wait_complete(&id, 4, WITHIN).await;
    let order: Value = second.wait_complete(&id, 4, WITHIN).await;
    assert_eq!(order["count"], 4);
}

/// Under at-least-once this test fails (a killed stage redoes its uncommitted records, so
/// pizzas show up twice downstream): it is what exactly-once buys. Each kill lands while
/// records are in flight: some stage's input lies beyond its committed offset right after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_host_mid_run_three_times_loses_and_doubles_nothing() {
    let topics = Topics::unique("crash");
    let pipeline = process_pipeline("crash", &topics, &bootstrap());
    let host = HostProcess::start_named(&pipeline, "crash").await;
    let (host, orders) = kill_while_in_flight(host, &pipeline, "crash", 3, 3, || {
        stage_records_after_commit(&topics)
    })
    .await;
    host.wait_complete(&orders, 1_000, Duration::from_secs(180))
        .await;

    assert_every_pizza_exactly_once(&bootstrap(), &topics, orders.len() * 1_000);
}

/// At least once survives a crash: a host killed under at-least-once while records were in
/// flight (some stage's input lay beyond its committed offset) loses nothing once restarted.
/// A pizza may be made twice downstream, but every one arrives and the order view counts each
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_host_under_at_least_once_loses_nothing_and_the_view_counts_each_pizza_once() {
    let topics = Topics::unique("alo-crash");
    let pipeline = process_pipeline("alo-crash", &topics, &bootstrap());
    switch_to_at_least_once(&pipeline);
    let host = HostProcess::start_named(&pipeline, "alo-crash").await;
    let orders = host.orders(10, 1_000).await;
    // Killed as soon as the first pizzas come out, with most of the 10,000 still on their way.
    wait_for(WITHIN, "the first pizzas to complete", || async {
        (host.pizzas(&orders[0]).await > 0).then_some(())
    })
    .await;
    host.kill();
    let in_flight = stage_records_after_commit(&topics);
    assert!(
        in_flight > 0,
        "the kill came after everything was committed"
    );

    let host = HostProcess::start_named(&pipeline, "alo-crash").await;
    // Exactly 1,000 each: a pizza made twice is counted once.
    host.wait_complete(&orders, 1_000, Duration::from_secs(180))
        .await;
    // The view counts a pizza when it first arrives, so it is complete while redone copies
    // may still be on their way: read the topic only once every stage has committed its
    // input, so the count below is the topic's last and the read takes every record.
    wait_for(WITHIN, "every stage to commit its input", || async {
        (stage_records_after_commit(&topics) == 0).then_some(())
    })
    .await;
    let total = record_count(topics.completed());
    let records = read_records(topics.completed(), total as usize, Duration::from_secs(90));
    let ids: std::collections::HashSet<String> = records
        .iter()
        .map(|record| {
            let pizza: Value = serde_json::from_slice(&record.value).unwrap();
            pizza["pizza_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 10_000, "every pizza arrived");
    println!(
        "{in_flight} records beyond the stages' commits at the kill; {total} completed records \
         for 10,000 pizzas"
    );
}

/// The demo pipeline in a fresh folder, for hosts run as processes, with orders of up to
/// 1,000 and the default consumer session timeout (45 s): what a crashed member holds up is
/// what these tests measure.
fn default_session_pipeline(test: &str, topics: &Topics) -> std::path::PathBuf {
    let pipeline = temp_dir(test).join("pipeline.toml");
    let toml = pipeline_toml(topics).replace("[http]\n", "[http]\nmax_order_count = 1000\n");
    std::fs::write(&pipeline, toml).unwrap();
    pipeline
}

/// Static group membership: a crashed host that comes back under its name takes its
/// partitions back at once instead of after the dead members' 45-second sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_killed_under_load_and_restarted_under_its_name_resumes_within_seconds() {
    let topics = Topics::unique("resume");
    let pipeline = default_session_pipeline("resume", &topics);
    let host = HostProcess::start_named(&pipeline, "resume").await;
    let mut orders = host.orders(4, 1_000).await;
    let watched = &orders[3];
    wait_for(WITHIN, "progress before the kill", || async {
        (host.pizzas(watched).await > 0).then_some(())
    })
    .await;
    host.kill();

    let restarted = std::time::Instant::now();
    let host = HostProcess::start_named(&pipeline, "resume").await;
    let first = host.order(3).await;
    let limit = Duration::from_secs(15);
    host.wait_complete(
        std::slice::from_ref(&first),
        3,
        limit.saturating_sub(restarted.elapsed()),
    )
    .await;
    eprintln!("restart to first order complete: {:?}", restarted.elapsed());
    orders.push(first);
    host.wait_complete(&orders[..4], 1_000, WITHIN).await;
    assert_every_pizza_exactly_once(&bootstrap(), &topics, 4_003);
}

/// Two live hosts with one `instance_id` would fence each other's transactions in turn: the
/// second is refused, with an error that says how to fix it, and the first is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_live_host_with_the_same_instance_id_refuses_to_start() {
    let topics = Topics::unique("twin");
    let pipeline = default_session_pipeline("twin", &topics);
    let first = HostProcess::start_named(&pipeline, "twin").await;
    let (status, stderr) = run_refused(&pipeline, "twin", WITHIN).await;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("another live host runs this pipeline as instance_id \"twin\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("Give each host its own instance_id"),
        "{stderr}"
    );

    let order = first.order(3).await;
    first.wait_complete(&[order], 3, WITHIN).await;
}

/// An idle host stays idle: no task loops without waiting. The order view once did, for the
/// host's whole life, as soon as the pipeline could no longer change (a host not watching its
/// file drops the sender of pipeline changes once started): a core's worth of CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_host_spends_almost_no_cpu() {
    let topics = Topics::unique("idle");
    let pipeline = process_pipeline("idle", &topics, &bootstrap());
    let host = HostProcess::start(&pipeline).await;
    let order = host.order(1).await;
    host.wait_complete(&[order], 1, WITHIN).await;
    // A measurement window, not a wait for something to happen.
    let window = Duration::from_secs(3);
    let before = cpu_seconds(host.pid());
    tokio::time::sleep(window).await;
    let used = cpu_seconds(host.pid()) - before;
    assert!(
        used < 0.25 * window.as_secs_f64(),
        "an idle host used {used:.2} CPU seconds in {window:?}"
    );
}

/// CPU seconds (user and system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which may hold spaces: utime and stime are the 12th
    // and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Peak resident memory of process `pid`, in MiB (Linux's VmHWM).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stages_that_allocate_without_bound_leave_the_host_memory_bounded() {
    const HOARDERS: usize = 200;
    let topics = Topics::unique("hoard");
    let dir = temp_dir("hoard");
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(&pipeline, hostile_pipeline(&topics, 300)).unwrap();
    let host = HostProcess::start(&pipeline).await;
    let before = peak_rss_mib(host.pid());

    // Each of these grows its instance to the 16 MiB limit before it is stopped: kept
    // instead of freed, they would add up to over 3 GiB.
    let producer = producer();
    let sends = (0..HOARDERS).map(|n| {
        let key = format!("hoard-{n}");
        let event = json!({"order_id": key, "act": "alloc"}).to_string();
        let producer = producer.clone();
        let topic = topics.orders().to_owned();
        async move {
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&event),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
    futures::future::join_all(sends).await;
    let id = host.order(5).await;
    wait_for(WITHIN, "the order behind the hoarders", || async {
        (host.pizzas(&id).await == 5).then_some(())
    })
    .await;
    wait_for(WITHIN, "every hoarder dead-lettered", || async {
        (record_count(&format!("{}.dlq", topics.orders())) == HOARDERS as i64).then_some(())
    })
    .await;

    let peak = peak_rss_mib(host.pid());
    eprintln!("host peak RSS: {before} MiB at start, {peak} MiB after {HOARDERS} hoarders");
    assert!(
        peak < before + 128,
        "peak RSS grew from {before} MiB to {peak} MiB"
    );
}

/// `dead_lettered` of stage `name` in the host's stage table.
async fn dead_lettered(url: &str, name: &str) -> u64 {
    let table: Value = reqwest::get(format!("{url}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stages = table["stages"].as_array().unwrap();
    let stage = stages.iter().find(|s| s["name"] == name).unwrap();
    stage["dead_lettered"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stage_spinning_at_its_time_limit_does_not_hold_up_the_others() {
    const SPINS: u64 = 20;
    let topics = Topics::unique("starve");
    let spin = format!("spin-{}", topics.suffix);
    let toml = format!(
        "{}[[stage]]\nname = \"spinner\"\ncomponent = \"{}\"\ninput = \"{spin}\"\n\
         output = \"spun-{}\"\ntimeout_ms = 500\n",
        pipeline_toml(&topics),
        test_component("hostile").display(),
        topics.suffix
    );
    let pipeline = temp_dir("starve").join("pipeline.toml");
    std::fs::write(&pipeline, toml).unwrap();
    // A process of its own: the runtime it gets is the real one (a worker per core).
    let host = HostProcess::start(&pipeline).await;
    for n in 0..SPINS {
        let key = format!("spin-{n}");
        let event = json!({"order_id": key, "act": "loop"}).to_string();
        produce(&spin, Some(&key), event.as_bytes()).await;
    }
    wait_for(WITHIN, "the spinner to be spinning", || async {
        (dead_lettered(&host.url, "spinner").await >= 1).then_some(())
    })
    .await;

    let id = host.order(50).await;
    wait_for(WITHIN, "the order, while the spinner spins", || async {
        (host.pizzas(&id).await == 50).then_some(())
    })
    .await;
    let spun = dead_lettered(&host.url, "spinner").await;
    assert!(
        spun < SPINS,
        "the order completed only after the spinner had spun all {SPINS} records"
    );
}
