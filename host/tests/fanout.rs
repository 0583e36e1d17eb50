//! The fan-out/fan-in topology against the real broker and the real components: the four
//! topping stages all consume `pizza`, and the join assembles their parts into complete
//! pizzas, exactly once across a crash, giving up on parts whose siblings never come.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const WITHIN: Duration = Duration::from_secs(120);

/// A fan-out pipeline's topics: `pizza`, one part topic per stage, the completed topic.
struct Fanout {
    suffix: String,
    pizza: String,
    parts: Vec<String>,
    completed: String,
}

impl Fanout {
    fn unique(test: &str) -> Self {
        let suffix = format!("{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Self {
            pizza: format!("pizza-{suffix}"),
            parts: STAGES
                .iter()
                .map(|s| format!("pizza-{s}-{suffix}"))
                .collect(),
            completed: format!("pizza-with-veggies-{suffix}"),
            suffix,
        }
    }

    /// The pipeline: orders of up to 1,000, parts given up on after `expire_after_ms`.
    fn toml(&self, expire_after_ms: u64) -> String {
        let mut toml = format!(
            r#"
group_prefix = "test-{suffix}"
[kafka]
"bootstrap.servers" = "{bootstrap}"
"session.timeout.ms" = 6000
[http]
listen = "127.0.0.1:0"
max_order_count = 1000
[orders]
topic = "{pizza}"
completed_topic = "{completed}"
orders_topic = "pizza-orders-{suffix}"
[[join]]
name = "assemble"
inputs = {inputs}
output = "{completed}"
expire_after_ms = {expire_after_ms}
"#,
            suffix = self.suffix,
            bootstrap = bootstrap(),
            pizza = self.pizza,
            completed = self.completed,
            inputs = json!(self.parts),
        );
        for (stage, output) in STAGES.iter().zip(&self.parts) {
            toml.push_str(&format!(
                "[[stage]]\nname = \"{stage}\"\ncomponent = \"{}\"\ninput = \"{}\"\noutput = \"{output}\"\n",
                component(stage).display(),
                self.pizza,
            ));
        }
        toml
    }
}

fn assert_complete_pizza(pizza: &Value) {
    for field in [
        "order_id", "pizza_id", "sauce", "cheese", "meats", "veggies",
    ] {
        let value = pizza[field].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "{field} not set: {pizza}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_of_1_3_and_500_are_assembled_with_every_topping() {
    let topics = Fanout::unique("fanout");
    let host = TestHost::start_toml(&topics.toml(60_000)).await;
    for count in [1, 3, 500] {
        let id = host.order(count).await;
        let order = host.wait_complete(&id, count as usize, WITHIN).await;
        let pizzas = order["pizzas"].as_array().unwrap();
        for pizza in pizzas {
            assert_complete_pizza(pizza);
            assert_eq!(pizza["order_id"], id.as_str());
        }
        let ids: std::collections::HashSet<&str> = pizzas
            .iter()
            .map(|p| p["pizza_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), count as usize);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_host_mid_join_loses_and_doubles_nothing() {
    let topics = Fanout::unique("fanout-crash");
    let pipeline = temp_dir("fanout-crash").join("pipeline.toml");
    std::fs::write(&pipeline, topics.toml(120_000)).unwrap();
    let host = HostProcess::start_named(&pipeline, "fanout-crash").await;
    // In flight: input of a topping stage or of the join beyond what its group committed.
    let in_flight = || {
        let join = format!("test-{}-join-assemble", topics.suffix);
        STAGES
            .iter()
            .map(|stage| {
                records_after_commit(&format!("test-{}-{stage}", topics.suffix), &topics.pizza)
            })
            .chain(
                topics
                    .parts
                    .iter()
                    .map(|part| records_after_commit(&join, part)),
            )
            .sum()
    };
    let (host, orders) =
        kill_while_in_flight(host, &pipeline, "fanout-crash", 2, 2, in_flight).await;
    host.wait_complete(&orders, 1_000, WITHIN).await;

    // As read_committed readers see it: every pizza assembled exactly once, complete.
    let total = orders.len() * 1_000;
    let records = read_records(&topics.completed, total, WITHIN);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for record in &records {
        let pizza: Value = serde_json::from_slice(&record.value).unwrap();
        assert_complete_pizza(&pizza);
        *seen
            .entry(pizza["pizza_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), total);
    assert_eq!(
        record_count(&topics.completed),
        total as i64,
        "nothing assembled twice"
    );
    assert_eq!(record_count(&format!("{}.dlq", topics.completed)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_whose_siblings_never_come_expires_to_the_dead_letter_topic_even_across_a_restart() {
    let topics = Fanout::unique("fanout-expire");
    let toml = topics.toml(4_000);
    let host = TestHost::start_toml(&toml).await;
    // An order of one pizza, of which only a sauce part ever comes: no other stage sees it.
    produce(
        &format!("pizza-orders-{}", topics.suffix),
        Some("lonely"),
        json!({"order_id": "lonely", "count": 1})
            .to_string()
            .as_bytes(),
    )
    .await;
    let part = json!({"order_id": "lonely", "pizza_id": "lonely-0", "sauce": "bbq", "cheese": ""});
    produce(
        &topics.parts[0],
        Some("lonely"),
        part.to_string().as_bytes(),
    )
    .await;
    // Once the join has it on its changelog, restart the host: the new one must restore it
    // and expire it, though no further record comes to that partition.
    let changelog = format!("test-{}-join-assemble", topics.suffix);
    wait_for(WITHIN, "the part on the join's changelog", || async {
        (record_count(&changelog) == 1).then_some(())
    })
    .await;
    host.stop(WITHIN).await;
    let host = TestHost::start_toml(&toml).await;
    // Orders placed meanwhile are not held up.
    let id = host.order(3).await;
    host.wait_complete(&id, 3, WITHIN).await;

    let dead = read_records(&format!("{}.dlq", topics.completed), 1, WITHIN);
    assert_eq!(dead.len(), 1, "the lonely part is given up on");
    let record = &dead[0];
    assert_eq!(record.key.as_deref(), Some("lonely"));
    assert_eq!(record.headers["pizza-host.error-kind"], "join-expired");
    assert!(
        record.headers["pizza-host.error"].contains("only 1 of 4 parts"),
        "{:?}",
        record.headers
    );
    let given_up: Value = serde_json::from_slice(&record.value).unwrap();
    assert_eq!(given_up["sauce"], "bbq");
    // The order view shows it failed, by the join, with the reason.
    let order = wait_for(WITHIN, "the order view to see the failure", || async {
        let (status, order) = host.get_order("lonely").await;
        (status == 200 && order["status"] == "failed").then_some(order)
    })
    .await;
    let failed = &order["failed"][0];
    assert_eq!(failed["pizza_id"], "lonely-0", "{order}");
    assert_eq!(failed["stage"], "assemble", "{order}");
    assert_eq!(failed["kind"], "join-expired", "{order}");
    assert_eq!(
        record_count(&topics.completed),
        3,
        "the lonely pizza never completes"
    );
}

/// Expiry counts from when a part arrived, by the host's clock: parts whose producer's clock
/// is an hour behind still wait for their siblings and are assembled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parts_stamped_by_a_skewed_clock_are_not_expired_early() {
    use rdkafka::producer::FutureRecord;
    let topics = Fanout::unique("fanout-skew");
    let _host = TestHost::start_toml(&topics.toml(60_000)).await;
    let hour_ago = now_ms() - 3_600_000;
    let producer = producer();
    let send_part = |topic: &str, field: &str| {
        let mut part = json!({"order_id": "skewed", "pizza_id": "skewed-0",
            "sauce": "", "cheese": "", "meats": "", "veggies": ""});
        part[field] = "chosen".into();
        let producer = producer.clone();
        let (topic, payload) = (topic.to_owned(), part.to_string());
        async move {
            let record = FutureRecord::to(&topic)
                .key("skewed")
                .payload(&payload)
                .timestamp(hour_ago);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    // The first part alone first: it must be kept waiting, not given up on.
    send_part(&topics.parts[0], "sauce").await;
    let changelog = format!("test-{}-join-assemble", topics.suffix);
    wait_for(WITHIN, "the first part taken", || async {
        (record_count(&changelog) >= 1).then_some(())
    })
    .await;
    for (topic, field) in topics.parts[1..].iter().zip(["cheese", "meats", "veggies"]) {
        send_part(topic, field).await;
    }
    let completed = read_records(&topics.completed, 1, WITHIN);
    assert_eq!(completed.len(), 1, "the pizza is assembled");
    let pizza: Value = serde_json::from_slice(&completed[0].value).unwrap();
    assert_complete_pizza(&pizza);
    assert_eq!(record_count(&format!("{}.dlq", topics.completed)), 0);
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// A join's inputs must be co-partitioned: a host whose join reads topics of different
/// partition counts refuses to start, naming the join and the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_over_inputs_of_different_partition_counts_stops_startup_with_a_clear_error() {
    let topics = Fanout::unique("fanout-partitions");
    let kafka = pizza_host::kafka::KafkaSettings::new(
        [("bootstrap.servers".to_owned(), bootstrap())].into(),
    );
    kafka
        .ensure_topics(&[topics.parts[1].as_str()], 4, Some(1), &[])
        .await
        .unwrap();
    let pipeline = temp_dir("fanout-partitions").join("pipeline.toml");
    std::fs::write(&pipeline, topics.toml(60_000)).unwrap();
    let (status, stderr) = run_refused(&pipeline, "fanout-partitions", WITHIN).await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("join assemble"), "{stderr}");
    assert!(
        stderr.contains(&format!("{} has 4", topics.parts[1])),
        "{stderr}"
    );
}
