//! Contract 0.2 (`pizza:stage/processor@0.2.0`) against the real broker and the real
//! components: a filter, a splitter on two named outputs, a router, a stage that reads the
//! record's key, headers and timestamp, a non-pizza stage loaded on its own sample, and a 0.2
//! stage inside the 0.1 pizza chain, all in one pipeline under exactly-once (the default).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use pizza_host::config::DEMO_SAMPLE;
use pizza_host::runtime::{Runtime, Settings};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// The topics of this test's 0.2 stages, unique to the run.
struct EventTopics {
    suffix: String,
}

impl EventTopics {
    fn topic(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }
}

/// The demo chain with the splitter (passing pizzas through) between cheese and meats, plus
/// the filter, splitter, router and echo stages on topics of their own.
fn pipeline(topics: &Topics, events: &EventTopics, sample: &std::path::Path) -> String {
    let chain = pipeline_toml(topics);
    // Meats reads what the pass-through splitter writes.
    let between = events.topic("pizza-split");
    let chain = chain.replacen(
        &format!("input = \"{}\"", topics.chain[2]),
        &format!("input = \"{between}\""),
        1,
    );
    let t = |name: &str| events.topic(name);
    let c = |name: &str| component(name).display().to_string();
    format!(
        r#"{chain}
[[stage]]
name = "pass-through"
component = "{splitter}"
input = "{with_cheese}"
output = "{between}"

[[stage]]
name = "filter"
component = "{filter}"
input = "{filter_in}"
output = "{filter_out}"
config = {{ field = "keep", equals = "true" }}

[[stage]]
name = "splitter"
component = "{splitter}"
input = "{split_in}"
outputs = {{ summary = "{split_summary}", items = "{split_items}" }}

[[stage]]
name = "router"
component = "{router}"
input = "{route_in}"
outputs = {{ main = "{route_main}", rejected = "{route_rejected}" }}
config = {{ max = "100" }}

[[stage]]
name = "payments"
component = "{router}"
input = "{pay_in}"
output = "{pay_out}"
sample = "{sample}"

[[stage]]
name = "echo"
component = "{echo}"
input = "{echo_in}"
output = "{echo_out}"
"#,
        with_cheese = topics.chain[2],
        splitter = c("splitter"),
        filter = c("filter"),
        router = c("router"),
        echo = test_component("echo-record").display(),
        filter_in = t("events"),
        filter_out = t("kept"),
        split_in = t("baskets"),
        split_summary = t("basket-summaries"),
        split_items = t("basket-items"),
        route_in = t("payments"),
        route_main = t("accepted"),
        route_rejected = t("rejected"),
        pay_in = t("small-payments"),
        pay_out = t("small-payments-out"),
        sample = sample.display(),
        echo_in = t("echo-in"),
        echo_out = t("echo-out"),
    )
}

fn values(records: &[Record]) -> Vec<Value> {
    records
        .iter()
        .map(|r| serde_json::from_slice(&r.value).expect("JSON value"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_filter_split_route_and_read_the_whole_record_beside_toppings() {
    let topics = Topics::unique("contract");
    let events = EventTopics {
        suffix: topics.suffix.clone(),
    };
    let dir = temp_dir("contract");
    let sample = dir.join("payment.json");
    std::fs::write(&sample, r#"{"user": "sample", "amount": 1}"#).expect("sample");
    let host = TestHost::start_toml(&pipeline(&topics, &events, &sample)).await;

    // Pizzas go through three toppings of 0.1 and a processor of 0.2, once each.
    let order = host.order(5).await;
    host.wait_complete(&order, 5, WAIT).await;
    let pass_through = host.stage("pass-through").await.expect("stage");
    assert_eq!(pass_through.world, "pizza:stage/processor@0.2.0");
    assert_eq!(
        host.stage("sauce").await.expect("stage").world,
        "pizza:stage/topping@0.1.0"
    );
    let completed = read_records(topics.completed(), 5, WAIT);
    assert_eq!(completed.len(), 5);
    for pizza in values(&completed) {
        assert_eq!(pizza["order_id"], order.as_str(), "{pizza}");
        for field in ["sauce", "cheese", "meats", "veggies"] {
            assert!(!pizza[field].is_null(), "{field} missing: {pizza}");
        }
    }

    // The filter keeps every other event and counts the rest as dropped, not as failures.
    for n in 0..20 {
        let event = json!({"n": n, "keep": n % 2 == 0}).to_string();
        produce(
            &events.topic("events"),
            Some(&format!("e{n}")),
            event.as_bytes(),
        )
        .await;
    }
    let kept = read_records(&events.topic("kept"), 10, WAIT);
    // (Across partitions: in any order.)
    let mut kept_n: Vec<i64> = values(&kept)
        .iter()
        .map(|v| v["n"].as_i64().expect("n"))
        .collect();
    kept_n.sort_unstable();
    assert_eq!(kept_n, (0..20).step_by(2).collect::<Vec<_>>());
    let filter = wait_for(WAIT, "the filter's counts", || async {
        let filter = host.stage("filter").await?;
        (filter.dropped == 10).then_some(filter)
    })
    .await;
    assert_eq!((filter.processed, filter.dead_lettered), (10, 0));
    let metrics = scrape(&host.url).await;
    let dropped = sum(
        &metrics,
        "pizza_host_stage_records_dropped_total",
        "stage=\"filter\"",
    );
    let failed = sum(
        &metrics,
        "pizza_host_stage_dead_letters_total",
        "stage=\"filter\"",
    );
    assert_eq!((dropped, failed), (10.0, 0.0));
    assert_eq!(record_count(&format!("{}.dlq", events.topic("events"))), 0);

    // The splitter turns one basket into three records on two outputs.
    let basket = json!({"basket": "b1", "items": ["dough", "sauce"]}).to_string();
    produce(&events.topic("baskets"), Some("b1"), basket.as_bytes()).await;
    let summaries = read_records(&events.topic("basket-summaries"), 1, WAIT);
    let items = read_records(&events.topic("basket-items"), 2, WAIT);
    assert_eq!(values(&summaries), [json!({"basket": "b1", "count": 2})]);
    assert_eq!(
        values(&items),
        [
            json!({"basket": "b1", "item": "dough", "index": 0}),
            json!({"basket": "b1", "item": "sauce", "index": 1})
        ]
    );
    for record in summaries.iter().chain(&items) {
        assert_eq!(record.key.as_deref(), Some("b1"), "the input's key is kept");
        assert!(record.headers.contains_key("pizza-host.trail"));
    }

    // The router sends by content; what it rejects carries its reason.
    for (key, payment) in [
        ("p1", r#"{"amount": 5}"#),
        ("p2", r#"{"amount": 500}"#),
        ("p3", "not json"),
    ] {
        produce(&events.topic("payments"), Some(key), payment.as_bytes()).await;
    }
    let accepted = read_records(&events.topic("accepted"), 1, WAIT);
    let rejected = read_records(&events.topic("rejected"), 2, WAIT);
    assert_eq!(
        accepted
            .iter()
            .map(|r| r.key.as_deref())
            .collect::<Vec<_>>(),
        [Some("p1")]
    );
    let reasons: BTreeMap<_, _> = rejected
        .iter()
        .map(|r| (r.key.clone().expect("key"), r.headers["reason"].clone()))
        .collect();
    assert_eq!(reasons["p2"], "amount 500 is over 100");
    assert_eq!(reasons["p3"], "the value is not JSON");
    // A value that is not UTF-8 reaches a processor as bytes, and leaves as it came.
    produce(&events.topic("payments"), Some("p4"), &[0xff, 0x00, 0xfe]).await;
    let rejected = read_records(&events.topic("rejected"), 3, WAIT);
    let bytes = rejected.iter().find(|r| r.key.as_deref() == Some("p4"));
    assert_eq!(bytes.map(|r| &r.value[..]), Some(&[0xff, 0x00, 0xfe][..]));
    assert_eq!(
        bytes.map(|r| r.headers["reason"].as_str()),
        Some("the value is not text")
    );
    let not_json = rejected.iter().find(|r| r.key.as_deref() == Some("p3"));
    assert_eq!(
        not_json.map(|r| &r.value[..]),
        Some(&b"not json"[..]),
        "passed on as it came"
    );

    // A stage for other events loads on its own sample: declaring only `main`, the router
    // would route the demo's pizza to an undeclared output, so it is refused on that.
    produce(
        &events.topic("small-payments"),
        Some("s1"),
        br#"{"user": "a", "amount": 3}"#,
    )
    .await;
    let paid = read_records(&events.topic("small-payments-out"), 1, WAIT);
    assert_eq!(values(&paid), [json!({"user": "a", "amount": 3})]);
    let runtime = Runtime::new(None).expect("runtime");
    let only_main = Settings {
        sample: DEMO_SAMPLE.into(),
        output_rule: pizza_host::runtime::OutputRule {
            outputs: vec!["main".to_owned()].into(),
            ..Default::default()
        },
        ..Settings::default()
    };
    let refused = runtime
        .load("payments", &component("router"), &only_main)
        .err()
        .expect("refused on a pizza");
    assert!(
        format!("{refused:#}").contains("output `rejected`, which it does not declare"),
        "{refused:#}"
    );

    // A processor sees the record's key, headers, timestamp and place, and sets key and
    // headers of what it returns.
    let producer = producer();
    let sent_at = 1_700_000_000_123_i64;
    producer
        .send(
            FutureRecord::to(&events.topic("echo-in"))
                .key("k1")
                .payload("hello")
                .timestamp(sent_at)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "h",
                    value: Some("v"),
                })),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(err, _)| err)
        .expect("sent");
    let echoed = read_records(&events.topic("echo-out"), 1, WAIT);
    assert_eq!(echoed.len(), 1);
    let echo: Value = serde_json::from_slice(&echoed[0].value).expect("JSON");
    assert_eq!(echo["value"], "hello");
    assert_eq!(echo["key"], "k1");
    assert_eq!(echo["headers"]["h"], "v");
    assert_eq!(echo["timestamp"], sent_at);
    assert_eq!(echo["topic"], events.topic("echo-in"));
    assert_eq!(echo["offset"], 0);
    assert_eq!(echoed[0].key.as_deref(), Some("echo-k1"));
    assert_eq!(echoed[0].headers["echoed"], "yes");
    assert!(
        !echoed[0].headers.contains_key("pizza-host.stage"),
        "a stage cannot write the host's headers: {:?}",
        echoed[0].headers
    );
    assert_eq!(
        echoed[0].headers["h"], "v",
        "the input's headers are passed on"
    );

    host.stop(Duration::from_secs(20)).await;
}

#[test]
fn invoke_runs_a_processor_on_a_jsonl_file_of_values_and_records() {
    let dir = temp_dir("invoke-jsonl");
    let input = dir.join("events.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"basket\": \"b1\", \"items\": [\"dough\", \"sauce\"]}\n",
            "\n",
            "{\"value\": {\"basket\": \"b2\"}, \"key\": \"k2\", \"headers\": {\"h\": \"v\"}}\n",
        ),
    )
    .expect("input");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args([
            "invoke",
            &component("splitter").display().to_string(),
            "--input",
        ])
        .arg(&input)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(
        lines,
        [
            json!({"to": null, "value": {"basket": "b1", "count": 2}}),
            json!({"to": "items", "value": {"basket": "b1", "item": "dough", "index": 0}}),
            json!({"to": "items", "value": {"basket": "b1", "item": "sauce", "index": 1}}),
            json!({"to": null, "value": {"basket": "b2"}}),
        ]
    );
    // The echo shows the record's key and headers arrived.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args([
            "invoke",
            &test_component("echo-record").display().to_string(),
            "--input",
        ])
        .arg(&input)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let last: Value = serde_json::from_str(text.lines().last().expect("a line")).expect("JSON");
    assert_eq!(last["key"], "echo-k2", "{text}");
    let echo = &last["value"];
    assert_eq!(echo["headers"]["h"], "v", "{text}");
    assert_eq!(echo["key"], "k2", "{text}");
}

/// A splitter killed (SIGKILL) while an event's three records were on their way writes each of
/// them exactly once once restarted: an event's records share its transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_event_is_written_exactly_once_across_kill_9() {
    const BASKETS: usize = 20_000;
    let topics = Topics::unique("split-crash");
    let events = EventTopics {
        suffix: topics.suffix.clone(),
    };
    let pipeline = process_pipeline("split-crash", &topics, &bootstrap());
    let (input, summaries, items) = (
        events.topic("baskets"),
        events.topic("basket-summaries"),
        events.topic("basket-items"),
    );
    let toml = std::fs::read_to_string(&pipeline).expect("pipeline");
    let splitter = format!(
        "{toml}\n[[stage]]\nname = \"splitter\"\ncomponent = \"{}\"\ninput = \"{input}\"\n\
         outputs = {{ summary = \"{summaries}\", items = \"{items}\" }}\n",
        component("splitter").display()
    );
    std::fs::write(&pipeline, splitter).expect("pipeline");
    let mut host = HostProcess::start_named(&pipeline, "split-crash").await;
    let group = format!("test-{}-splitter", topics.suffix);

    let producer = producer();
    let mut sent = Vec::with_capacity(BASKETS);
    for n in 0..BASKETS {
        let basket = json!({"basket": n, "items": ["dough", "sauce"]}).to_string();
        let key = format!("b{n}");
        let record = FutureRecord::to(&input).key(&key).payload(&basket);
        sent.push(producer.send_result(record).expect("queued"));
    }
    for delivery in sent {
        delivery.await.expect("delivered").expect("acknowledged");
    }

    // Killed while some input lay beyond the committed offset; tried again if a kill came
    // after everything was committed.
    let mut landed = false;
    for attempt in 1..=3 {
        let taken = stage_records_in(&host.url, "splitter").await;
        wait_for(WAIT, "the splitter to make progress", || async {
            (stage_records_in(&host.url, "splitter").await > taken).then_some(())
        })
        .await;
        host.kill();
        let in_flight = records_after_commit(&group, &input);
        println!("kill {attempt}: {in_flight} baskets to redo");
        host = HostProcess::start_named(&pipeline, "split-crash").await;
        if in_flight > 0 {
            landed = true;
            break;
        }
    }
    assert!(landed, "no kill found baskets in flight");

    wait_for(Duration::from_secs(120), "every basket split", || async {
        (record_count(&items) >= 2 * BASKETS as i64).then_some(())
    })
    .await;
    let summary_records = read_records(&summaries, BASKETS + 1, Duration::from_secs(30));
    let item_records = read_records(&items, 2 * BASKETS + 1, Duration::from_secs(30));
    assert_eq!(summary_records.len(), BASKETS, "each summary once");
    assert_eq!(item_records.len(), 2 * BASKETS, "each item once");
    let distinct: std::collections::BTreeSet<(i64, i64)> = values(&item_records)
        .iter()
        .map(|item| {
            (
                item["basket"].as_i64().expect("basket"),
                item["index"].as_i64().expect("index"),
            )
        })
        .collect();
    assert_eq!(distinct.len(), 2 * BASKETS);
    assert_eq!(record_count(&format!("{input}.dlq")), 0);
    drop(host);
}

/// `new --world processor` writes a stage that builds as it is and runs as a processor: here
/// in Python, outside a checkout (with its own copy of the 0.2.0 WIT); a Rust processor there
/// needs to be told where the SDK is.
#[test]
fn new_writes_a_processor_that_builds_and_runs() {
    support::components(); // componentize-py, as dev/build-stages.sh installs it
    let dir = temp_dir("new-processor");
    let pizza_host = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("runs")
    };
    let refused = pizza_host(&["new", "tagger", "--world", "processor", "--lang", "rust"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--sdk"));

    let created = pizza_host(&["new", "tagger", "--world", "processor", "--lang", "python"]);
    assert!(created.status.success(), "{created:?}");
    let project = dir.join("functions/tagger");
    let built =
        std::process::Command::new(workspace_root().join(".local/venv/bin/componentize-py"))
            .args([
                "-d",
                "stage-wit",
                "-w",
                "processor",
                "componentize",
                "app",
                "-o",
                "stage.wasm",
            ])
            .current_dir(&project)
            .output()
            .expect("componentize-py runs");
    assert!(built.status.success(), "{built:?}");
    std::fs::write(
        dir.join("in.jsonl"),
        "hello\n{\"value\": \"\", \"key\": \"k\"}\n",
    )
    .expect("input");
    let invoked = pizza_host(&[
        "invoke",
        "functions/tagger/stage.wasm",
        "--input",
        "in.jsonl",
    ]);
    assert!(invoked.status.success(), "{invoked:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&invoked.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    // The empty event is dropped; the other passes on, tagged with where it was read.
    assert_eq!(
        lines,
        [json!({"to": null, "value": "hello", "headers": {"tagger": "invoke/0/0"}})]
    );
}

/// A filter on the pizzas' way drops some: each order still ends `complete`, its dropped
/// pizzas listed as dropped by the filter (not failed, not missing), and the host's metrics
/// count them as drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pizzas_a_filter_drops_are_counted_as_dropped_and_the_order_completes() {
    let topics = Topics::unique("filtered");
    // Between cheese and meats, a filter keeps the pizzas with extra cheese.
    let between = format!("pizza-filtered-{}", topics.suffix);
    let toml = pipeline_toml(&topics).replacen(
        &format!("input = \"{}\"", topics.chain[2]),
        &format!("input = \"{between}\""),
        1,
    );
    let toml = format!(
        "{toml}\n[[stage]]\nname = \"extra-only\"\ncomponent = \"{}\"\ninput = \"{}\"\n\
         output = \"{between}\"\nconfig = {{ field = \"cheese\", equals = \"extra\" }}\n",
        component("filter").display(),
        topics.chain[2],
    );
    let host = TestHost::start_toml(&toml).await;
    let order = host.order(30).await;
    let view = wait_for(WAIT, "every pizza accounted for", || async {
        let (status, view) = host.get_order(&order).await;
        (status == 200 && view["status"] == "complete").then_some(view)
    })
    .await;
    let pizzas = view["pizzas"].as_array().cloned().unwrap_or_default();
    let dropped = view["dropped"].as_array().cloned().unwrap_or_default();
    assert_eq!(pizzas.len() + dropped.len(), 30, "{view}");
    assert!(!dropped.is_empty(), "some pizza had another cheese: {view}");
    assert!(view.get("failed").is_none(), "{view}");
    for pizza in &pizzas {
        assert_eq!(pizza["cheese"], "extra", "{pizza}");
    }
    for drop in &dropped {
        assert_eq!(drop["stage"], "extra-only", "{drop}");
        assert!(drop["pizza_id"].is_string(), "{drop}");
    }
    let metrics = scrape(&host.url).await;
    let counted = sum(
        &metrics,
        "pizza_host_stage_records_dropped_total",
        "stage=\"extra-only\"",
    );
    assert_eq!(counted, dropped.len() as f64);
    let failures = sum(
        &metrics,
        "pizza_host_stage_dead_letters_total",
        "stage=\"extra-only\"",
    );
    assert_eq!(failures, 0.0);
    host.stop(Duration::from_secs(20)).await;
}

/// Under at-least-once, an event's records are all written, in order, before its offset is
/// committed: once the splitter is idle, its group has committed every basket and each
/// basket's three records are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_at_least_once_a_split_events_records_are_written_before_its_offset_commits() {
    const BASKETS: usize = 200;
    let topics = Topics::unique("split-alo");
    let events = EventTopics {
        suffix: topics.suffix.clone(),
    };
    let (input, summaries, items) = (
        events.topic("baskets"),
        events.topic("basket-summaries"),
        events.topic("basket-items"),
    );
    let toml = format!(
        "guarantee = \"at-least-once\"\n{}\n[[stage]]\nname = \"splitter\"\ncomponent = \"{}\"\n\
         input = \"{input}\"\noutputs = {{ summary = \"{summaries}\", items = \"{items}\" }}\n",
        pipeline_toml(&topics),
        component("splitter").display()
    );
    let host = TestHost::start_toml(&toml).await;
    for n in 0..BASKETS {
        let basket = json!({"basket": n, "items": ["dough", "sauce"]}).to_string();
        produce(&input, Some(&format!("b{n}")), basket.as_bytes()).await;
    }
    let group = format!("test-{}-splitter", topics.suffix);
    wait_for(WAIT, "every basket committed", || async {
        (record_count(&input) == BASKETS as i64 && records_after_commit(&group, &input) == 0)
            .then_some(())
    })
    .await;
    let item_records = read_records(&items, 2 * BASKETS, WAIT);
    assert_eq!(read_records(&summaries, BASKETS, WAIT).len(), BASKETS);
    assert_eq!(item_records.len(), 2 * BASKETS);
    // Within a basket (one key, one partition), its items in the order returned.
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for item in values(&item_records) {
        let basket = item["basket"].as_i64().expect("basket");
        let index = item["index"].as_i64().expect("index");
        assert_eq!(
            last.insert(basket, index).map_or(-1, |i| i) + 1,
            index,
            "{item}"
        );
    }
    host.stop(Duration::from_secs(20)).await;
}
