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

/// The demo pipeline with the sauce stage replaced by the hostile test component (which
/// passes an event through unless its `act` field says how to misbehave), on tight limits.
fn hostile_pipeline(topics: &Topics) -> String {
    pipeline_toml(topics).replacen(
        &format!(
            "name = \"sauce\"\ncomponent = \"{}\"",
            component("sauce").display()
        ),
        &format!(
            "name = \"chaos\"\ncomponent = \"{}\"\ntimeout_ms = 300\nmemory_mib = 16",
            test_component("hostile").display()
        ),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_of_stage_failure_is_dead_lettered_and_the_pipeline_keeps_flowing() {
    let topics = Topics::unique("hostile");
    let dir = temp_dir("hostile");
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, hostile_pipeline(&topics)).unwrap();
    let host = TestHost::start_watching(&path).await;

    let expected = [
        ("loop", "timeout"),
        ("alloc", "memory-limit"),
        ("panic", "trap"),
        ("non-json", "invalid-output"),
        ("drop-order-id", "invalid-output"),
        ("error", "returned-error"),
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
    let stage = host.stage("chaos").await.unwrap();
    assert_eq!(stage.dead_lettered, expected.len() as u64);
    assert!(stage.last_error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_with_a_failed_pizza_says_which_stage_failed_it_and_why() {
    let topics = Topics::unique("failed-order");
    let dir = temp_dir("failed-order");
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, hostile_pipeline(&topics)).unwrap();
    let host = TestHost::start_watching(&path).await;

    // An order placed by someone else on the same topics (another host, or the original
    // service): its record on the orders topic, and two pizzas, one of which makes the stage
    // panic.
    let id = "4242424242";
    produce(
        &format!("pizza-orders-{}", topics.suffix),
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
    let host = TestHost::start(&topics).await;
    let before = host.order(3).await;
    host.wait_complete(&before, 3, WITHIN).await;
    let (_, was) = host.get_order(&before).await;
    host.stop(Duration::from_secs(30)).await;

    let restarted = TestHost::start(&topics).await;
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
    first.wait_complete(&id, 4, WITHIN).await;
    let order: Value = second.wait_complete(&id, 4, WITHIN).await;
    assert_eq!(order["count"], 4);
}
