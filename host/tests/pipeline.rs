//! The end-to-end pipeline against the real broker and the real stage components: orders go
//! in over HTTP, pass the four WebAssembly stages through Kafka, and come out complete.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use support::*;

const SAUCES: [&str; 6] = ["regular", "light", "extra", "none", "alfredo", "bbq"];
const CHEESES: [&str; 4] = ["extra", "none", "three cheese", "goat cheese"];
const MEATS: [&str; 6] = [
    "pepperoni",
    "sausage",
    "ham",
    "anchovies",
    "salami",
    "bacon",
];
const VEGGIES: [&str; 6] = [
    "tomato",
    "olives",
    "onions",
    "peppers",
    "pineapple",
    "mushrooms",
];

const COMPLETE_WITHIN: Duration = Duration::from_secs(90);

/// Asserts that `pizza` carries `order_id` and a valid choice for every topping.
fn assert_valid_pizza(pizza: &Value, order_id: &str) {
    assert_eq!(pizza["order_id"], order_id, "{pizza}");
    let field = |name: &str| {
        pizza[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} missing: {pizza}"))
            .to_owned()
    };
    assert!(SAUCES.contains(&field("sauce").as_str()), "{pizza}");
    assert!(CHEESES.contains(&field("cheese").as_str()), "{pizza}");
    for (name, options) in [("meats", &MEATS), ("veggies", &VEGGIES)] {
        let value = field(name);
        if value == "none" {
            continue;
        }
        let items: Vec<&str> = value.split(" & ").collect();
        assert!((1..=4).contains(&items.len()), "{pizza}");
        assert!(items.iter().all(|item| options.contains(item)), "{pizza}");
        assert_eq!(
            items.iter().collect::<HashSet<_>>().len(),
            items.len(),
            "repeated {name}: {pizza}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_of_1_3_and_50_complete_with_a_valid_choice_for_every_topping() {
    let topics = Topics::unique("orders");
    orders_complete(&topics, TestHost::start(&topics).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_complete_the_same_way_at_least_once() {
    let topics = Topics::unique("orders-alo");
    let toml = format!("guarantee = \"at-least-once\"\n{}", pipeline_toml(&topics));
    orders_complete(&topics, TestHost::start_toml(&toml).await).await;
}

/// Under at-least-once every producer on a lone pizza's way (the door's, each stage's) sends
/// at once when nudged, so with a linger of 9 s (the door's records time out after 10) an
/// order completes within 6 instead of waiting 9 s at each of five hops: the first order
/// (new producers, connecting while the nudge lasts), and the same customer's next order right
/// after it (producers nudged a moment ago). (That the door's pizzas, sent once their order
/// record is acknowledged, are nudged too shows best on a broker farther than a nudge under
/// load lasts: `publisher::an_orders_pizzas_do_not_wait_out_the_linger_on_a_far_broker`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_order_does_not_wait_out_a_long_linger_at_least_once() {
    const LINGER: Duration = Duration::from_secs(9);
    let topics = Topics::unique("orders-linger");
    let toml = format!("guarantee = \"at-least-once\"\n{}", pipeline_toml(&topics)).replacen(
        "[kafka]\n",
        &format!("[kafka]\n\"linger.ms\" = \"{}\"\n", LINGER.as_millis()),
        1,
    );
    let host = TestHost::start_toml(&toml).await;
    for _ in 0..2 {
        let id = host.order(1).await;
        let order = host.wait_complete(&id, 1, LINGER * 2 / 3).await;
        assert_valid_pizza(&order["pizzas"][0], &id);
    }
}

async fn orders_complete(topics: &Topics, host: TestHost) {
    let mut orders = Vec::new();
    for count in [1usize, 3, 50] {
        orders.push((host.order(count as u32).await, count));
    }
    for (id, count) in &orders {
        let order = host.wait_complete(id, *count, COMPLETE_WITHIN).await;
        assert_eq!(order["id"], id.as_str());
        assert_eq!(order["count"], *count);
        let pizzas = order["pizzas"].as_array().expect("pizzas");
        for pizza in pizzas {
            assert_valid_pizza(pizza, id);
        }
        let distinct: HashSet<&str> = pizzas
            .iter()
            .filter_map(|p| p["pizza_id"].as_str())
            .collect();
        assert_eq!(distinct.len(), *count, "every pizza once");
    }
    // Nothing more arrives later: every stage produced each pizza exactly once here.
    assert_eq!(record_count(topics.completed()), 54);
    // The completed records are keyed by the order id, like the original's.
    let keys: HashSet<Option<String>> = read_records(topics.completed(), 54, COMPLETE_WITHIN)
        .into_iter()
        .map(|r| r.key)
        .collect();
    let expected: HashSet<Option<String>> = orders.iter().map(|(id, _)| Some(id.clone())).collect();
    assert_eq!(keys, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_counts_get_400_and_publish_nothing_and_unknown_orders_get_404() {
    let topics = Topics::unique("http-errors");
    let host = TestHost::start(&topics).await;
    let client = reqwest::Client::new();

    for count in ["0", "-1", "abc", "1e9", "101", "4294967296"] {
        let response = client
            .post(format!("{}/order/{count}", host.url))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400, "count {count}");
        let body: Value = response.json().await.expect("JSON error body");
        let message = body["error"].as_str().expect("error message");
        assert!(message.contains("from 1 to 100"), "{message}");
    }
    assert_eq!(
        record_count(topics.orders()),
        0,
        "a rejected order publishes nothing"
    );

    let (status, body) = host.get_order("123456789").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().expect("error").contains("123456789"));

    let response = client
        .get(format!("{}/no/such/route", host.url))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("JSON error body");
    assert!(body["error"].is_string());

    // The limit is the boundary, not below it.
    let id = host.order(100).await;
    host.wait_complete(&id, 100, COMPLETE_WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_goes_to_the_dead_letter_topic_and_the_partition_moves_on() {
    let topics = Topics::unique("poison");
    let host = TestHost::start(&topics).await;

    // Written by someone else: not JSON, and not UTF-8.
    produce(topics.orders(), Some("poison-1"), b"this is not json").await;
    produce(topics.orders(), Some("poison-2"), &[0xff, 0xfe, 0x00]).await;
    let id = host.order(3).await;
    host.wait_complete(&id, 3, COMPLETE_WITHIN).await;

    let dead = read_records(&format!("{}.dlq", topics.orders()), 2, COMPLETE_WITHIN);
    assert_eq!(dead.len(), 2, "both poison records are kept");
    let not_json = dead
        .iter()
        .find(|r| r.key.as_deref() == Some("poison-1"))
        .expect("poison-1");
    assert_eq!(
        not_json.value, b"this is not json",
        "the original bytes are kept"
    );
    assert_eq!(not_json.headers["pizza-host.stage"], "sauce");
    assert_eq!(not_json.headers["pizza-host.error-kind"], "returned-error");
    assert!(not_json.headers["pizza-host.error"].contains("not valid JSON"));
    assert_eq!(not_json.headers["pizza-host.topic"], topics.orders());
    assert!(not_json.headers["pizza-host.digest"].starts_with("sha256:"));
    let not_utf8 = dead
        .iter()
        .find(|r| r.key.as_deref() == Some("poison-2"))
        .expect("poison-2");
    assert_eq!(not_utf8.value, [0xff, 0xfe, 0x00]);
    assert_eq!(not_utf8.headers["pizza-host.error-kind"], "invalid-input");
    // Nothing but the three pizzas reached the end.
    assert_eq!(record_count(topics.completed()), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_written_like_the_original_services_pass_through_unchanged_but_enriched() {
    let topics = Topics::unique("wire");
    let _host = TestHost::start(&topics).await;

    // The original PizzaService: decimal UUID order id as key, pretty-printed JSON, no pizza_id.
    let order_id = "199467350823967746698504683131014209792";
    let original = format!(
        "{{\n    \"order_id\": \"{order_id}\",\n    \"sauce\": \"\",\n    \"cheese\": \"\",\n    \"meats\": \"\",\n    \"veggies\": \"\",\n    \"note\": \"kept\"\n}}"
    );
    produce(topics.orders(), Some(order_id), original.as_bytes()).await;

    let out = read_records(topics.completed(), 1, COMPLETE_WITHIN);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key.as_deref(), Some(order_id));
    let pizza: Value = serde_json::from_slice(&out[0].value).expect("JSON");
    assert_valid_pizza(&pizza, order_id);
    assert_eq!(
        pizza["note"], "kept",
        "fields the stages do not own are kept"
    );
    let fields: Vec<&String> = pizza.as_object().expect("object").keys().collect();
    assert_eq!(
        fields,
        ["order_id", "sauce", "cheese", "meats", "veggies", "note"],
        "field order kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_pizza_is_counted_once() {
    // No stages: the order's pizzas stay on the order topic, and the test plays the last stage.
    let topics = Topics::unique("dedupe");
    let toml = format!(
        "[kafka]\n\"bootstrap.servers\" = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[orders]\ntopic = \"{}\"\ncompleted_topic = \"{}\"\norders_topic = \"{}-orders\"\n",
        bootstrap(),
        topics.orders(),
        topics.completed(),
        topics.orders()
    );
    let host = TestHost::start_toml(&toml).await;
    let id = host.order(2).await;

    let pizza = |n: u32| {
        format!(
            r#"{{"order_id":"{id}","pizza_id":"{id}-{n}","sauce":"bbq","cheese":"extra","meats":"ham","veggies":"olives"}}"#
        )
    };
    // Same key, same partition: the redelivery of pizza 0 arrives before pizza 1.
    for record in [pizza(0), pizza(0), pizza(1)] {
        produce(topics.completed(), Some(&id), record.as_bytes()).await;
    }
    let order = host.wait_complete(&id, 2, COMPLETE_WITHIN).await;
    let ids: Vec<&str> = order["pizzas"]
        .as_array()
        .expect("pizzas")
        .iter()
        .filter_map(|p| p["pizza_id"].as_str())
        .collect();
    assert_eq!(ids, [format!("{id}-0"), format!("{id}-1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_in_flight_records_and_commits_them() {
    let topics = Topics::unique("shutdown");
    let host = TestHost::start(&topics).await;
    let id = host.order(20).await;
    host.wait_complete(&id, 20, COMPLETE_WITHIN).await;
    host.stop(Duration::from_secs(30)).await;

    // Every stage committed all it consumed (a restart would redo nothing), and each produced
    // every pizza once (nothing skipped, nothing doubled).
    for (i, stage) in STAGES.iter().enumerate() {
        let group = format!("test-{}-{stage}", topics.suffix);
        assert_eq!(
            records_after_commit(&group, &topics.chain[i]),
            0,
            "stage {stage}"
        );
        assert_eq!(record_count(&topics.chain[i + 1]), 20, "stage {stage}");
    }
}

/// Runs the real binary on a pipeline file and returns (exit success, stderr).
/// Records of a partition leave every stage in the order they came, under either guarantee:
/// three keys, 200 numbered records each, written in order to the first topic; on the
/// completed topic each key's numbers rise with the offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_of_a_partition_leave_every_stage_in_the_order_they_came() {
    use rdkafka::producer::FutureRecord;
    const KEYS: [&str; 3] = ["a", "b", "c"];
    const EACH: u64 = 200;
    for guarantee in ["exactly-once", "at-least-once"] {
        let topics = Topics::unique("in-order");
        let host = TestHost::start_toml(&format!(
            "guarantee = \"{guarantee}\"\n{}",
            pipeline_toml(&topics)
        ))
        .await;
        // All sent at once, so the stages take them in batches of many; idempotence keeps
        // each partition's records in the order they were sent.
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        let values: Vec<(&str, String)> = (0..EACH)
            .flat_map(|seq| {
                KEYS.map(|key| {
                    let value = serde_json::json!({
                        "order_id": key, "pizza_id": format!("{key}-{seq}"), "seq": seq,
                        "sauce": "", "cheese": "", "meats": "", "veggies": "",
                    });
                    (key, value.to_string())
                })
            })
            .collect();
        let sends = values.iter().map(|(key, value)| {
            producer.send(
                FutureRecord::to(topics.orders()).key(*key).payload(value),
                Duration::from_secs(10),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(err, _)| err).unwrap();
        }
        let expected = KEYS.len() * EACH as usize;
        let mut records = read_records(topics.completed(), expected, COMPLETE_WITHIN);
        assert_eq!(records.len(), expected, "{guarantee}: every record once");
        records.sort_by_key(|record| (record.partition, record.offset));
        for key in KEYS {
            let seqs: Vec<u64> = records
                .iter()
                .filter(|record| record.key.as_deref() == Some(key))
                .map(|record| {
                    let pizza: Value = serde_json::from_slice(&record.value).unwrap();
                    pizza["seq"].as_u64().unwrap()
                })
                .collect();
            assert_eq!(
                seqs,
                (0..EACH).collect::<Vec<_>>(),
                "{guarantee}: key {key} out of order"
            );
        }
        drop(host);
    }
}

/// The first SIGTERM waits for in-flight records; a second one exits at once. The stage here
/// is stuck in a call that may run 30 s (the hostile component looping up to its time limit),
/// so only the second signal can end the process within seconds, with code 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_signal_exits_at_once_without_waiting_for_in_flight_records() {
    let topics = Topics::unique("second-signal");
    let pipeline = temp_dir("second-signal").join("pipeline.toml");
    std::fs::write(&pipeline, hostile_pipeline(&topics, 30_000)).unwrap();
    let host = HostProcess::start(&pipeline).await;
    let stuck = serde_json::json!({"order_id": "stuck", "act": "loop"}).to_string();
    produce(topics.orders(), Some("stuck"), stuck.as_bytes()).await;
    let metrics = format!("{}/metrics", host.url);
    wait_for(
        COMPLETE_WITHIN,
        "the stage to be in its looping call",
        || async {
            let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
            text.lines()
                .any(|line| {
                    line.starts_with("pizza_host_stage_records_in_total{stage=\"chaos\"}")
                        && !line.ends_with(" 0")
                })
                .then_some(())
        },
    )
    .await;

    let signalled = std::time::Instant::now();
    host.signal("TERM");
    wait_for(
        Duration::from_secs(10),
        "the graceful shutdown to start",
        || async {
            let log = std::fs::read_to_string(&host.log).unwrap_or_default();
            log.contains("shutting down").then_some(())
        },
    )
    .await;
    host.signal("TERM");
    let code = host.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(130), "exited without the second signal's code");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "waited for the looping call: {:?}",
        signalled.elapsed()
    );
}

fn run_binary(pipeline: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("pizza-host-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("not-a-component.wasm"), "hello, I am text").expect("write");
    std::fs::write(dir.join("pipeline.toml"), pipeline).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args(["run", "pipeline.toml"])
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pizza-host");
    let _ = std::fs::remove_dir_all(&dir);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_stage_file_that_is_not_a_component_stops_startup_with_a_clear_error() {
    let stage = |file: &str| {
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[[stage]]\nname = \"sauce\"\ncomponent = \"{file}\"\ninput = \"a\"\noutput = \"b\"\n"
        )
    };
    let (ok, stderr) = run_binary(&stage("not-a-component.wasm"));
    assert!(!ok, "must not start");
    assert!(stderr.contains("stage `sauce`"), "{stderr}");
    assert!(stderr.contains("not-a-component.wasm"), "{stderr}");
    assert!(stderr.contains("not a WebAssembly file"), "{stderr}");

    let (ok, stderr) = run_binary(&stage("missing.wasm"));
    assert!(!ok, "must not start");
    assert!(
        stderr.contains("stage `sauce`") && stderr.contains("missing.wasm"),
        "{stderr}"
    );
    assert!(stderr.contains("cannot read the file"), "{stderr}");

    let (ok, stderr) = run_binary(&format!("{}\nbogus = 1\n", stage("missing.wasm")));
    assert!(!ok, "must not start");
    assert!(
        stderr.contains("pipeline.toml") && stderr.contains("bogus"),
        "{stderr}"
    );
}

/// Concurrent orders under exactly-once share transactions (group commit): each is answered
/// once committed and completes exactly once, and the orders topic holds fewer commit markers
/// than orders, where one transaction per order would write one marker each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_orders_share_transactions_and_each_completes_exactly_once() {
    let topics = Topics::unique("group-commit");
    let host = TestHost::start(&topics).await;
    let orders: Vec<String> = futures::future::join_all((0..64).map(|_| host.order(1))).await;
    assert_eq!(orders.iter().collect::<HashSet<_>>().len(), 64);
    for id in &orders {
        host.wait_complete(id, 1, Duration::from_secs(90)).await;
    }
    let orders_topic = topics.order_records();
    let records = read_records(&orders_topic, 64, Duration::from_secs(30));
    assert_eq!(records.len(), 64, "every order record once");
    let markers = offsets_spanned(&orders_topic) - 64;
    assert!(
        (1..64).contains(&markers),
        "{markers} commit markers for 64 orders: no two shared a transaction"
    );
}

/// Records that reach a busy stage in bursts share its transactions. An upstream producer
/// commits bursts of five pizzas back to back, each commit making one burst visible at once;
/// the sauce stage's transactions, counted by the commit markers on its one-partition output,
/// begin at most every `BUSY_SPACING` (50 ms) over the time its output spans, where one per
/// burst would be several times as many.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bursts_reaching_a_busy_stage_share_its_transactions() {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

    const BURSTS: usize = 100;
    const BURST: usize = 5;
    const PIZZAS: i64 = (BURSTS * BURST) as i64;
    let spacing_ms = pizza_host::kafka::transaction::BUSY_SPACING.as_millis() as i64;
    let topics = Topics::unique("bursts");
    let _host = TestHost::start_toml(&format!(
        "{}[topics]\npartitions = 1\n",
        pipeline_toml(&topics)
    ))
    .await;

    // Committed as the host commits (its records sent at once, not after a linger): a
    // producer's own flush would take 100 ms a commit, slower than the spacing.
    let upstream: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set(
            "transactional.id",
            format!("test-{}-upstream", topics.suffix),
        )
        .create()
        .unwrap();
    tokio::task::block_in_place(|| upstream.init_transactions(Duration::from_secs(30))).unwrap();
    let sauced = topics.chain[1].clone();
    for burst in 0..BURSTS {
        upstream.begin_transaction().unwrap();
        let mut sent = Vec::new();
        let order = format!("burst-{burst}");
        for (n, pizza) in pizza_host::orders::publisher::new_pizzas(&order, BURST as u32)
            .iter()
            .enumerate()
        {
            let id = format!("{order}-{n}");
            let record = FutureRecord::to(topics.orders()).key(&id).payload(pizza);
            sent.push(pizza_host::kafka::send(&upstream, record).await.unwrap());
        }
        tokio::task::block_in_place(|| {
            pizza_host::kafka::commit_transaction(&upstream, sent, Duration::from_secs(30))
        })
        .unwrap();
        if burst == 0 {
            // The stage is consuming before the rest come: they reach it live, not as a backlog
            // that one batch would take whole.
            wait_for(
                Duration::from_secs(60),
                "the first burst past the sauce stage",
                || async { (record_count(&sauced) == BURST as i64).then_some(()) },
            )
            .await;
        }
    }
    assert_eq!(
        offsets_spanned(topics.orders()) - PIZZAS,
        BURSTS as i64,
        "one commit marker per burst upstream"
    );

    wait_for(
        Duration::from_secs(60),
        "every pizza committed past the sauce stage",
        || async { (record_count(&sauced) == PIZZAS).then_some(()) },
    )
    .await;
    let records = read_records(&sauced, PIZZAS as usize, Duration::from_secs(30));
    let pizzas: HashSet<&str> = records.iter().filter_map(|r| r.key.as_deref()).collect();
    assert_eq!(pizzas.len(), records.len(), "every pizza once");
    // The first burst went alone (the rest waited until it was through): the others reached
    // the stage live, over the span of their outputs.
    let transactions = offsets_spanned(&sauced) - PIZZAS - 1;
    let live = || {
        records
            .iter()
            .filter(|r| !r.key.as_deref().unwrap_or_default().starts_with("burst-0-"))
            .map(|r| r.timestamp)
    };
    let span = live().max().unwrap() - live().min().unwrap();
    println!(
        "{} bursts made {transactions} transactions of the sauce stage over {span} ms",
        BURSTS - 1
    );
    // The first of them is not paced (the input was quiet while the first burst went through),
    // nor is one after any pause of the upstream longer than the spacing (which is in the span
    // too); one more for the timestamps' rounding to milliseconds. An aborted batch would add
    // markers and fail this, never pass it wrongly.
    assert!(
        transactions <= span / spacing_ms + 3,
        "{transactions} transactions for {} bursts over {span} ms: batches began more often \
         than every {spacing_ms} ms while the input was busy",
        BURSTS - 1
    );
}

/// A group commit that fails answers each of its orders with an error and publishes none of
/// them. The failure is a fence: a producer with the publisher's transactional id starts (as
/// a restarted host's would), so the transaction in flight, which holds many queued orders
/// with 64 clients ordering, can no longer commit. The publisher then starts a new producer
/// and later orders go through. Afterwards `read_committed` readers see exactly the orders
/// answered 200, each once, on the orders topic and through the whole chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_group_commit_answers_each_of_its_orders_with_an_error_and_publishes_none() {
    use rdkafka::producer::{BaseProducer, Producer};

    const FENCES: usize = 5;
    const PIZZAS: u32 = 2;
    let topics = Topics::unique("group-fenced");
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let host = TestHost::start_toml(&format!(
        "instance_id = \"{instance}\"\n{}",
        pipeline_toml(&topics)
    ))
    .await;
    let transactional_id = pizza_host::pipeline::plan::transactional_id(
        &format!("test-{}-orders", topics.suffix),
        &instance,
    );

    let customers = Customers::start(&host.url, 64, PIZZAS);
    let mut fences = Vec::new();
    for fence in 0..FENCES {
        customers.wait_placed(64, Duration::from_secs(60)).await;
        let refused_before = customers.refused();
        let id = transactional_id.clone();
        let fencer = tokio::task::spawn_blocking(move || {
            let producer: BaseProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("transactional.id", &id)
                .create()
                .unwrap();
            producer.init_transactions(Duration::from_secs(30)).unwrap();
            producer
        })
        .await
        .unwrap();
        fences.push(fencer);
        wait_for(
            Duration::from_secs(30),
            &format!("fence {fence} to fail the transaction in flight"),
            || async { (customers.refused() > refused_before).then_some(()) },
        )
        .await;
    }
    // The publisher recovered: orders go through again.
    customers.wait_placed(64, Duration::from_secs(60)).await;
    let answers = customers.stop().await;

    let placed: HashSet<String> = answers.placed.iter().cloned().collect();
    let refused = answers.refused.len();
    println!(
        "{} orders placed, {refused} refused by {FENCES} fences",
        placed.len()
    );
    assert!(
        refused > FENCES,
        "{FENCES} fences failed only {refused} orders: no failed group held several"
    );
    // Per topic, how many records each order has: an order's record and its pizzas are
    // published together or not at all.
    let per_order = PIZZAS as usize;
    for (topic, each) in [
        (topics.order_records(), 1),
        (topics.orders().to_owned(), per_order),
        (topics.completed().to_owned(), per_order),
    ] {
        let records = read_records(&topic, placed.len() * each, Duration::from_secs(90));
        let mut counts: HashMap<String, usize> = HashMap::new();
        for record in &records {
            *counts
                .entry(record.key.clone().expect("keyed by order id"))
                .or_default() += 1;
        }
        assert_eq!(
            counts.keys().cloned().collect::<HashSet<_>>(),
            placed,
            "{topic}: exactly the orders answered 200"
        );
        assert!(
            counts.values().all(|&n| n == each),
            "{topic}: {each} records of every order"
        );
        assert_eq!(
            record_count(&topic),
            (placed.len() * each) as i64,
            "{topic}: nothing of a refused order"
        );
    }
}

/// A new stage's `from`: `latest` skips what its input already holds, a time skips what was
/// written before it, and the default (`earliest`) reads it all. Each run here has new consumer
/// groups (a new `group_prefix`) over the same topics, as a new stage would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_stage_starts_where_its_from_says() {
    let topics = Topics::unique("from");
    let first_run = pipeline_toml(&topics);
    let host = TestHost::start_toml(&first_run).await;
    let backlog = host.order(5).await;
    host.wait_complete(&backlog, 5, COMPLETE_WITHIN).await;
    host.stop(COMPLETE_WITHIN).await;
    let after_backlog = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();

    // Only sauce changes where it starts; the groups are new, so cheese reads everything.
    let run = |prefix: &str, from: &str| {
        first_run
            .replace(
                &format!("group_prefix = \"test-{}\"", topics.suffix),
                &format!("group_prefix = \"test-{}-{prefix}\"", topics.suffix),
            )
            .replacen(
                "name = \"sauce\"\n",
                &format!("name = \"sauce\"\nfrom = \"{from}\"\n"),
                1,
            )
    };
    // The time first: the orders of each run are written after it.
    for (prefix, from) in [("time", after_backlog.as_str()), ("latest", "latest")] {
        let toml = run(prefix, from);
        assert_ne!(toml, first_run);
        let host = TestHost::start_toml(&toml).await;
        let order = host.order(3).await;
        host.wait_complete(&order, 3, COMPLETE_WITHIN).await;
        // Cheese, reading from the beginning, caught up with the 5 pizzas of the backlog too.
        wait_for(
            COMPLETE_WITHIN,
            "cheese to read the whole backlog",
            || async { (stage_records_in(&host.url, "cheese").await >= 5.0 + 3.0).then_some(()) },
        )
        .await;
        assert_eq!(
            stage_records_in(&host.url, "sauce").await,
            3.0,
            "sauce with from = {from} took only the new order's pizzas"
        );
        host.stop(COMPLETE_WITHIN).await;
    }
}
