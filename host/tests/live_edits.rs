//! Live edits of `pipeline.toml` go through the same planner as startup: what an edit changes
//! is applied as if the host had started with it (against the real broker and components).

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pizza_host::cli::add::{NewStage, add_stage};
use serde_json::json;
use support::*;

const WITHIN: Duration = Duration::from_secs(60);

/// The README's `add` flow moves veggies' input to `pizza-with-oregano`, and so its dead
/// letters to `pizza-with-oregano.dlq`: the order view reads that topic from the edit on, and
/// an order whose pizza fails there ends `failed` instead of staying `in_progress`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_view_reads_the_dead_letters_of_a_stage_moved_by_add() {
    let topics = Topics::unique("view-follows");
    // veggies is the hostile component: it passes a pizza through unless told to fail.
    let toml = pipeline_toml(&topics).replacen(
        &format!("component = \"{}\"", component("veggies").display()),
        &format!("component = \"{}\"", test_component("hostile").display()),
        1,
    );
    let path = temp_dir("view-follows").join("pipeline.toml");
    std::fs::write(&path, toml).unwrap();
    let host = TestHost::start_watching(&path).await;

    let oregano_topic = format!("pizza-with-oregano-{}", topics.suffix);
    add_stage(
        &path,
        &NewStage {
            name: "oregano".into(),
            component: test_component("oregano"),
            before: "veggies".into(),
            output: Some(oregano_topic.clone()),
            config: Default::default(),
            from: None,
        },
    )
    .unwrap();
    let moved_dead_letters = format!("{oregano_topic}.dlq");
    wait_for(WITHIN, "veggies to read oregano's output", || async {
        let veggies = host.stage("veggies").await?;
        (veggies.input == oregano_topic && veggies.dead_letter == moved_dead_letters).then_some(())
    })
    .await;

    // An order of two pizzas, one of which the moved stage fails.
    let order_id = format!("moved-{}", topics.suffix);
    let orders_topic = topics.order_records();
    let order = json!({"order_id": order_id, "count": 2}).to_string();
    produce(&orders_topic, Some(&order_id), order.as_bytes()).await;
    for (n, act) in [(0, None), (1, Some("panic"))] {
        let mut pizza = json!({"order_id": order_id, "pizza_id": format!("{order_id}-{n}"),
            "sauce": "", "cheese": "", "meats": "", "veggies": ""});
        if let Some(act) = act {
            pizza["act"] = act.into();
        }
        produce(
            topics.orders(),
            Some(&order_id),
            pizza.to_string().as_bytes(),
        )
        .await;
    }

    let order = wait_for(WITHIN, "the order to end", || async {
        let (status, order) = host.get_order(&order_id).await;
        (status == 200 && order["status"] != "in_progress").then_some(order)
    })
    .await;
    assert_eq!(order["status"], "failed", "{order}");
    assert_eq!(order["pizzas"].as_array().unwrap().len(), 1, "{order}");
    let failed = &order["failed"][0];
    assert_eq!(failed["stage"], "veggies", "{order}");
    assert_eq!(failed["kind"], "trap", "{order}");
    assert_eq!(read_records(&moved_dead_letters, 1, WITHIN).len(), 1);
}

/// `dead_letter` and `retries` edited in the file apply to the running stage: the new
/// dead-letter topic is created and used, with the new number of attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letter_and_retries_edits_apply_live() {
    let topics = Topics::unique("route-edit");
    let original = hostile_pipeline(&topics, 1_000);
    let path = temp_dir("route-edit").join("pipeline.toml");
    std::fs::write(&path, &original).unwrap();
    let host = TestHost::start_watching(&path).await;
    let retryable = |id: &str| json!({"order_id": id, "act": "retryable"}).to_string();

    let first_dead_letters = format!("{}.dlq", topics.orders());
    produce(topics.orders(), Some("r1"), retryable("r1").as_bytes()).await;
    let before = read_records(&first_dead_letters, 1, WITHIN);
    assert_eq!(before.len(), 1);
    assert_eq!(
        before[0].headers["pizza-host.attempts"], "4",
        "1 call and 3 retries"
    );

    let new_dead_letters = format!("chaos-failures-{}", topics.suffix);
    let edited = original.replacen(
        "name = \"chaos\"\n",
        &format!("name = \"chaos\"\nretries = 1\ndead_letter = \"{new_dead_letters}\"\n"),
        1,
    );
    replace_file(&path, edited.as_bytes());
    wait_for(WITHIN, "the edited route to run", || async {
        let chaos = host.stage("chaos").await?;
        (chaos.dead_letter == new_dead_letters && chaos.retries == 1 && chaos.joined).then_some(())
    })
    .await;

    produce(topics.orders(), Some("r2"), retryable("r2").as_bytes()).await;
    let after = read_records(&new_dead_letters, 1, WITHIN);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].key.as_deref(), Some("r2"));
    assert_eq!(
        after[0].headers["pizza-host.attempts"], "2",
        "1 call and 1 retry"
    );
    // The first dead letter is where it was, and nothing more went there.
    let old = read_records(&first_dead_letters, 2, Duration::from_secs(3));
    assert_eq!(old.len(), 1, "{old:?}");
}

/// An edit that drains a stage (it moves off a topic whose producer the edit removes, and
/// first reads that topic to its end) does that outside the running set's lock: `/readyz`
/// answers at once throughout, and no record of the drained topic is stranded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_endpoints_answer_during_an_edit_that_drains() {
    let topics = Topics::unique("drain-edit");
    // veggies is the hostile component: a `loop` record takes it a whole call timeout.
    let toml = pipeline_toml(&topics).replacen(
        &format!("component = \"{}\"", component("veggies").display()),
        &format!("component = \"{}\"", test_component("hostile").display()),
        1,
    );
    let path = temp_dir("drain-edit").join("pipeline.toml");
    std::fs::write(&path, &toml).unwrap();
    let host = TestHost::start_watching(&path).await;
    wait_for(WITHIN, "veggies to join its group", || async {
        host.stage("veggies").await?.joined.then_some(())
    })
    .await;

    // A backlog of slow records before veggies, then an edit that removes meats: veggies
    // must drain meats' topic before it moves to cheese's.
    let backlog = 8;
    for n in 0..backlog {
        let key = format!("drain-{n}");
        let record = json!({"order_id": key, "act": "loop"}).to_string();
        produce(&topics.chain[3], Some(&key), record.as_bytes()).await;
    }
    let meats = format!(
        "[[stage]]\nname = \"meats\"\ncomponent = \"{}\"\ninput = \"{}\"\noutput = \"{}\"\n",
        component("meats").display(),
        topics.chain[2],
        topics.chain[3],
    );
    assert!(toml.contains(&meats));
    let edited = toml.replacen(&meats, "", 1).replacen(
        &format!("input = \"{}\"", topics.chain[3]),
        &format!("input = \"{}\"", topics.chain[2]),
        1,
    );
    replace_file(&path, edited.as_bytes());

    let answered_mid_edit = AtomicUsize::new(0);
    let client = reqwest::Client::new();
    wait_for(WITHIN, "veggies to read cheese's output", || async {
        let ready = tokio::time::timeout(
            Duration::from_secs(2),
            client.get(format!("{}/readyz", host.url)).send(),
        )
        .await
        .expect("/readyz answers within 2 s during the edit")
        .unwrap();
        let ready: serde_json::Value = ready.json().await.unwrap();
        let names: Vec<&str> = ready["stages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        if !names.contains(&"veggies") {
            // veggies is out of the running set: draining.
            answered_mid_edit.fetch_add(1, Ordering::Relaxed);
        }
        let veggies = host.stage("veggies").await?;
        (veggies.input == topics.chain[2] && veggies.joined).then_some(())
    })
    .await;
    assert!(
        answered_mid_edit.load(Ordering::Relaxed) > 0,
        "/readyz was asked while veggies drained"
    );
    let dead = read_records(&format!("{}.dlq", topics.chain[3]), backlog, WITHIN);
    assert_eq!(
        dead.len(),
        backlog,
        "every record of the drained topic was handled"
    );
}
