//! The edges a real deployment reaches, against the real broker and real (hostile)
//! components: records too large to send, what a client may put in a request, and a Kafka
//! client that stops fetching.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const WITHIN: Duration = Duration::from_secs(90);

/// A stage whose output is over what the producer may send dead-letters that record as
/// `too-large` and moves on; a near-limit input that fits passes. Under both guarantees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_output_is_dead_lettered_and_the_partition_moves_on() {
    for guarantee in ["exactly-once", "at-least-once"] {
        let topics = Topics::unique(&format!("big-{guarantee}"));
        let toml = format!(
            "guarantee = \"{guarantee}\"\n{}",
            hostile_pipeline(&topics, 2_000)
        );
        let host = TestHost::start_toml(&toml).await;
        let (big, near_limit) = (7, 13);
        for n in 0..20 {
            let key = format!("big-{n}");
            let mut record = json!({"order_id": key, "pizza_id": format!("{key}-0"),
                "sauce": "", "cheese": "", "meats": "", "veggies": ""});
            if n == big {
                record["act"] = "big".into();
            }
            if n == near_limit {
                record["filler"] = "y".repeat(990_000).into();
            }
            produce(topics.orders(), Some(&key), record.to_string().as_bytes()).await;
        }
        // Every record but the oversized one comes out of the stage, in the same partition
        // as the oversized one or not: nothing stalls behind it.
        let out = read_records(&topics.chain[1], 19, WITHIN);
        assert_eq!(out.len(), 19, "{guarantee}");
        assert!(out.iter().all(|r| r.key.as_deref() != Some("big-7")));
        assert!(out.iter().any(|r| r.key.as_deref() == Some("big-13")));
        let dead = read_records(&format!("{}.dlq", topics.orders()), 1, WITHIN);
        assert_eq!(dead.len(), 1, "{guarantee}");
        assert_eq!(dead[0].key.as_deref(), Some("big-7"));
        assert_eq!(dead[0].headers["pizza-host.error-kind"], "too-large");
        assert!(
            dead[0].value.len() < 1_000,
            "the original input is dead-lettered, not the oversized output"
        );
        let chaos = host.stage("chaos").await.unwrap();
        assert_eq!(chaos.dead_lettered, 1, "{guarantee}");
        host.stop(Duration::from_secs(30)).await;
    }
}

/// An exactly-once batch commits before the broker's transaction timeout however slow its
/// records are: calls that run to their deadline and records that need retries close the
/// batch early instead of keeping its transaction open until the broker aborts it (after which
/// the same batch would be redone forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_batch_under_exactly_once_commits_before_the_transaction_timeout() {
    let topics = Topics::unique("slow-batch");
    // 2 s, checked by the broker every 10 s: the 15 slow records alone (0.7 s each, or twice
    // that when a reused instance's failure is tried again fresh), in one batch, would keep a
    // transaction open for 10 to 20 s.
    let toml = hostile_pipeline(&topics, 700).replacen(
        "[kafka]\n",
        "[kafka]\n\"transaction.timeout.ms\" = 2000\n",
        1,
    );
    let host = TestHost::start_toml(&toml).await;
    let act = |n: usize| match n % 3 {
        0 => Some("loop"),
        1 if n < 30 => Some("retryable"),
        _ => None,
    };
    let records = 45;
    let producer = producer();
    let mut sends = Vec::new();
    for n in 0..records {
        let key = format!("slow-{n}");
        let mut record = json!({"order_id": key, "pizza_id": format!("{key}-0"),
            "sauce": "", "cheese": "", "meats": "", "veggies": ""});
        if let Some(act) = act(n) {
            record["act"] = act.into();
        }
        let payload = record.to_string();
        let record = rdkafka::producer::FutureRecord::to(topics.orders())
            .key(&key)
            .payload(&payload);
        sends.push(producer.send_result(record).map_err(|(err, _)| err));
    }
    for send in sends {
        send.unwrap().await.unwrap().unwrap();
    }
    let keys = |records: Vec<Record>| -> std::collections::BTreeSet<String> {
        records.into_iter().filter_map(|r| r.key).collect()
    };
    let passed: usize = (0..records).filter(|n| act(*n).is_none()).count();
    let out = keys(read_records(&topics.chain[1], passed, WITHIN));
    let dead = keys(read_records(
        &format!("{}.dlq", topics.orders()),
        records - passed,
        WITHIN,
    ));
    assert_eq!(out.len(), passed, "every good record passed once: {out:?}");
    assert_eq!(
        dead.len(),
        records - passed,
        "every slow or failing record dead-lettered once: {dead:?}"
    );
    host.stop(Duration::from_secs(30)).await;
}

/// Request methods a client makes up do not make metric series: any number of them counts
/// under one `other` method.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn made_up_request_methods_do_not_make_new_metric_series() {
    let topics = Topics::unique("methods");
    let host = TestHost::start(&topics).await;
    let client = reqwest::Client::new();
    for n in 0..100 {
        let method = reqwest::Method::from_bytes(format!("FOO{n}").as_bytes()).unwrap();
        let response = client
            .request(method, format!("{}/healthz", host.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    }
    let metrics = reqwest::get(format!("{}/metrics", host.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("pizza_host_http_requests_total{"))
        .collect();
    assert!(series.len() <= 5, "{series:#?}");
    assert!(
        series
            .iter()
            .any(|s| s.contains("method=\"other\"") && s.ends_with(" 100")),
        "{series:#?}"
    );
    assert!(!metrics.contains("FOO"), "no made-up method is a label");
}

/// `pizza-host.*` headers on records written to the pipeline's first topic are not the
/// host's: a forged trail does not show in the order, and a forged stage on a record that
/// then fails does not name the stage that failed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_host_headers_on_input_are_dropped() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let topics = Topics::unique("forged");
    let host = TestHost::start_toml(&hostile_pipeline(&topics, 1_000)).await;
    let order_id = format!("forged-{}", topics.suffix);
    let order = json!({"order_id": order_id, "count": 2}).to_string();
    produce(&topics.order_records(), Some(&order_id), order.as_bytes()).await;
    let forged = r#"{"stage":"forged","digest":"sha256:00","at":"2000-01-01T00:00:00Z"}"#;
    let producer = producer();
    for (n, act) in [(0, None), (1, Some("panic"))] {
        let mut pizza = json!({"order_id": order_id, "pizza_id": format!("{order_id}-{n}"),
            "sauce": "", "cheese": "", "meats": "", "veggies": ""});
        if let Some(act) = act {
            pizza["act"] = act.into();
        }
        let payload = pizza.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "pizza-host.trail",
                value: Some(forged),
            })
            .insert(Header {
                key: "pizza-host.stage",
                value: Some("forged"),
            })
            .insert(Header {
                key: "pizza-host.error-kind",
                value: Some("forged"),
            });
        let record = FutureRecord::to(topics.orders())
            .key(&order_id)
            .payload(&payload)
            .headers(headers);
        send(&producer, record).await;
    }

    let order = wait_for(WITHIN, "the order to end", || async {
        let response = reqwest::get(format!("{}/order/{order_id}?detail=true", host.url))
            .await
            .ok()?;
        let order: serde_json::Value = response.json().await.ok()?;
        (order["status"] == "failed").then_some(order)
    })
    .await;
    let stages: Vec<&str> = order["pizzas"][0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|visit| visit["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["chaos", "cheese", "meats", "veggies"], "{order}");
    assert_eq!(order["failed"][0]["stage"], "chaos", "{order}");
    assert_eq!(order["failed"][0]["kind"], "trap", "{order}");

    // On a topic a stage writes, the downstream stages pass on the trail a record carries and
    // drop the host's other headers.
    let mid = json!({"order_id": "forged-mid", "pizza_id": "forged-mid-0", "sauce": "",
        "cheese": "", "meats": "", "veggies": ""})
    .to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "pizza-host.trail",
            value: Some(forged),
        })
        .insert(Header {
            key: "pizza-host.error-kind",
            value: Some("forged"),
        });
    let key = "forged-mid".to_owned();
    let record = FutureRecord::to(&topics.chain[2])
        .key(&key)
        .payload(&mid)
        .headers(headers);
    send(&producer, record).await;
    let completed = read_records(topics.completed(), 2, WITHIN);
    let passed = completed
        .iter()
        .find(|r| r.key.as_deref() == Some("forged-mid"))
        .expect("the record through the last stages");
    let host_headers: Vec<&String> = passed
        .headers
        .keys()
        .filter(|key| key.starts_with("pizza-host."))
        .collect();
    assert_eq!(host_headers, ["pizza-host.trail"], "{:?}", passed.headers);
}

async fn send(
    producer: &rdkafka::producer::FutureProducer,
    record: rdkafka::producer::FutureRecord<'_, String, String>,
) {
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Live streams are capped: beyond the cap a client is answered 503 at once, the host keeps
/// answering everything else, and a closed stream frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_streams_beyond_the_cap_are_refused_and_the_host_keeps_answering() {
    use pizza_host::telemetry::events::MAX_SUBSCRIBERS;
    let topics = Topics::unique("streams");
    let host = TestHost::start(&topics).await;
    let client = reqwest::Client::new();
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let response = client
            .get(format!("{}/events", host.url))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => open.push(response),
            503 => refused += 1,
            other => panic!("/events answered {other}"),
        }
    }
    assert_eq!(open.len(), MAX_SUBSCRIBERS);
    assert_eq!(refused, 300 - MAX_SUBSCRIBERS);
    let health = tokio::time::timeout(
        Duration::from_secs(2),
        client.get(format!("{}/healthz", host.url)).send(),
    )
    .await
    .expect("/healthz answers while the streams are open")
    .unwrap();
    assert_eq!(health.status(), 200);

    open.pop();
    wait_for(WITHIN, "the closed stream's place to be free", || async {
        let response = client
            .get(format!("{}/events", host.url))
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}

/// The Kafka client has been seen to stop fetching a partition for good after a broker
/// restart, without an error (librdkafka issue 5153); a stage's loop then waits for records
/// while its partition holds them. The stall watch notices such a consumer (here one whose
/// partition is paused: from outside, a client that does not fetch) within two looks, and
/// leaves alone one at rest, even where its partition ends in an aborted transaction, and
/// one that reads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_fetching_is_noticed_and_one_at_rest_is_not() {
    use pizza_host::kafka::group::StallWatch;
    use pizza_host::kafka::{GroupState, KafkaSettings, commit_transaction, send};
    use rdkafka::consumer::Consumer;
    use rdkafka::producer::{FutureRecord, Producer};

    const LOOK: Duration = Duration::from_millis(500);
    let topics = Topics::unique("stall");
    let topic = topics.orders().to_owned();
    // The watch reads the client's statistics: often enough to be fresh at each look.
    let kafka = KafkaSettings::new(
        [
            ("bootstrap.servers".to_owned(), bootstrap()),
            ("statistics.interval.ms".to_owned(), "100".to_owned()),
        ]
        .into(),
    );
    kafka
        .ensure_topics(&[&topic], 1, Some(1), &[])
        .await
        .unwrap();
    let producer = kafka
        .transactional_producer(&format!("test-{}-upstream", topics.suffix))
        .unwrap();
    let timeout = Duration::from_secs(30);
    tokio::task::block_in_place(|| producer.init_transactions(timeout)).unwrap();
    let transaction = |records: usize, commit: bool| {
        let (producer, topic) = (&producer, &topic);
        async move {
            producer.begin_transaction().unwrap();
            let mut sent = Vec::new();
            for _ in 0..records {
                let record = FutureRecord::to(topic).key("k").payload("{}");
                sent.push(send(producer, record).await.unwrap());
            }
            if commit {
                tokio::task::block_in_place(|| commit_transaction(producer, sent, timeout))
                    .unwrap();
            } else {
                // Written first: an abort purges what the client has not sent yet.
                for delivery in sent {
                    delivery.await.unwrap().unwrap();
                }
                tokio::task::block_in_place(|| producer.abort_transaction(timeout)).unwrap();
            }
        }
    };
    // Offsets 0-2 and a commit marker, then 4-5 aborted and their marker: the end is 7.
    transaction(3, true).await;
    transaction(2, false).await;

    let state = std::sync::Arc::new(GroupState::default());
    let group = format!("test-{}-stall", topics.suffix);
    let consumer = kafka.transactional_consumer(&group, state).unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let read = |records: usize| {
        let consumer = &consumer;
        async move {
            let deadline = std::time::Instant::now() + WITHIN;
            for record in 0..records {
                let received = tokio::time::timeout_at(deadline.into(), consumer.recv()).await;
                assert!(
                    matches!(received, Ok(Ok(_))),
                    "read {record} of {records} records: {received:?}"
                );
            }
        }
    };
    // The three records; the aborted two are skipped.
    read(3).await;

    // Between looks the consumer is polled, as a stage's loop does: that serves the client's
    // statistics, which the watch reads. Nothing is handed out: the consumer is at rest, or
    // not fetching.
    let idle = |wait| {
        let consumer = &consumer;
        async move {
            let received = tokio::time::timeout(wait, consumer.recv()).await;
            assert!(received.is_err(), "a record was handed out");
        }
    };
    // At rest at the end, past the aborted records it skipped: looks a look apart find
    // nothing.
    let mut watch = StallWatch::every(LOOK);
    for _ in 0..3 {
        watch.check(&consumer).unwrap();
        idle(LOOK).await;
    }

    // Not fetching while records arrive: noticed at the second look after them.
    let assignment = consumer.assignment().unwrap();
    consumer.pause(&assignment).unwrap();
    transaction(2, true).await;
    let started = std::time::Instant::now();
    let stalled = loop {
        if let Err(stalled) = watch.check(&consumer) {
            break stalled.to_string();
        }
        assert!(
            started.elapsed() < 4 * LOOK + WITHIN / 10,
            "a consumer that does not fetch was not noticed"
        );
        idle(LOOK / 10).await;
    };
    assert!(
        stalled.contains(&format!("{topic} [0] (at 7 of 10)")),
        "the error names the partition and where it stands: {stalled}"
    );

    // Fetching again: it reads on, and the watch (a fresh one, as a restarted stage's)
    // finds nothing wrong.
    consumer.resume(&assignment).unwrap();
    let mut watch = StallWatch::every(LOOK);
    read(2).await;
    for _ in 0..3 {
        watch.check(&consumer).unwrap();
        idle(LOOK).await;
    }
}
