//! The broker goes away in the middle of a run and comes back: the host neither exits nor
//! loses or doubles a pizza, and refuses new orders with a JSON 503 while it cannot publish
//! them. The test runs its own broker so that stopping it disturbs no other test.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_run_loses_and_doubles_nothing_and_orders_get_503_meanwhile() {
    let broker = OwnBroker::start("outage");
    let topics = Topics::unique("outage");
    // The stages' consumers rejoin their groups after the outage: the short session of
    // `process_pipeline` lets the members they replace time out soon.
    let pipeline = process_pipeline("outage", &topics, &broker.bootstrap());
    let mut host = HostProcess::start_named(&pipeline, "outage").await;

    let mut orders = host.orders(10, 1_000).await;
    // Customers keep ordering, so group commits are in flight when the broker goes.
    let customers = Customers::start(&host.url, 8, 3);
    customers.wait_placed(8, WITHIN).await;
    let seen_before = host.pizzas(&orders[0]).await;
    let mut completed = 0;
    for id in &orders {
        completed += host.pizzas(id).await;
    }
    assert!(completed < 10_000, "the broker must stop mid-run");
    broker.stop();

    // Once the host has noticed, a new order is refused at once with a JSON error, not held
    // for a publish timeout.
    let client = reqwest::Client::new();
    wait_for(
        WITHIN,
        "the host to refuse orders as unreachable",
        || async {
            let (status, body) = post(&client, &host.url).await;
            (status == 503 && unreachable(&body)).then_some(())
        },
    )
    .await;
    for _ in 0..10 {
        let started = Instant::now();
        let (status, body) = post(&client, &host.url).await;
        let took = started.elapsed();
        assert_eq!(status, 503, "{body}");
        assert!(unreachable(&body), "{body}");
        assert!(
            took < Duration::from_secs(1),
            "refused after {took:?}, not at once"
        );
    }
    let answers = customers.stop().await;
    let cut_off = answers.cut_off();
    println!(
        "{} customer orders placed; {} refused, {} of them cut off in the publisher: {:?}",
        answers.placed.len(),
        answers.refused.len(),
        cut_off.len(),
        cut_off.first()
    );
    assert!(
        !cut_off.is_empty(),
        "the outage must cut off an order transaction in flight"
    );
    // Its abort could not reach the broker either, so the publisher gives up that producer:
    // the next order starts a new one under the same transactional id, which fences the old
    // one and aborts what it left open.
    let log = std::fs::read_to_string(&host.log).unwrap();
    assert!(
        log.contains("the next order starts a new transactional producer"),
        "the cut-off publisher must be replaced"
    );
    // The order view keeps answering from what it has read.
    let (status, order) = get(&host.url, &orders[0]).await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["id"], orders[0].as_str());
    assert_eq!(order["count"], 1_000);
    assert!(order["pizzas"].as_array().unwrap().len() >= seen_before);
    assert!(host.is_running(), "the host must survive the outage");

    broker.restart();
    let after = wait_for(WITHIN, "POST /order to work again", || async {
        let response = client
            .post(format!("{}/order/1000", host.url))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        body["order_id"].as_str().map(str::to_owned)
    })
    .await;
    orders.push(after);
    host.wait_complete(&orders, 1_000, Duration::from_secs(180))
        .await;
    assert!(host.is_running(), "the host must survive the outage");

    let placed: Vec<String> = answers.placed.iter().chain(&orders).cloned().collect();
    assert_orders_exactly_once(&broker.bootstrap(), &topics, &placed, cut_off.len());
    // A stage whose transaction the outage failed was restarted, and the log said when.
    let log = std::fs::read_to_string(&host.log).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("failed: ") && line.contains("; restarting in ")),
        "the log says when a failed stage tries again"
    );
}

/// Beyond 256 requests in flight the API answers 503 at once instead of queueing, and live
/// streams do not count among them. The requests held are orders waiting on a broker that
/// stopped answering but keeps its connections (frozen), before the host's probe calls it
/// unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_256_requests_in_flight_the_rest_are_refused_at_once_and_streams_do_not_count() {
    use std::sync::{Arc, Mutex};

    const LIMIT: usize = 256;
    const SENT: usize = 300;
    let broker = OwnBroker::start("request-limit");
    let topics = Topics::unique("request-limit");
    let pipeline = process_pipeline("request-limit", &topics, &broker.bootstrap());
    let host = HostProcess::start_named(&pipeline, "request-limit").await;
    let first = host.order(1).await;
    host.wait_complete(std::slice::from_ref(&first), 1, WITHIN)
        .await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        let stream = reqwest::get(format!("{}/events", host.url)).await.unwrap();
        assert_eq!(stream.status(), 200);
        streams.push(stream);
    }

    broker.freeze();
    let answers: Arc<Mutex<Vec<(u16, Value)>>> = Arc::default();
    let client = reqwest::Client::new();
    let requests: Vec<_> = (0..SENT)
        .map(|_| {
            let (client, url, answers) = (client.clone(), host.url.clone(), answers.clone());
            tokio::spawn(async move {
                let answer = post(&client, &url).await;
                answers.lock().unwrap().push(answer);
            })
        })
        .collect();
    let too_many = |answers: &[(u16, Value)]| {
        answers
            .iter()
            .filter(|(status, body)| {
                *status == 503
                    && body["error"]
                        .as_str()
                        .is_some_and(|error| error.contains("too many requests in flight"))
            })
            .count()
    };
    wait_for(
        WITHIN,
        "the requests beyond the limit to be refused",
        || async { (answers.lock().unwrap().len() >= SENT - LIMIT).then_some(()) },
    )
    .await;
    {
        let answers = answers.lock().unwrap();
        assert_eq!(answers.len(), SENT - LIMIT, "{LIMIT} orders are held");
        assert_eq!(too_many(&answers), SENT - LIMIT, "{answers:?}");
    }

    // Once the broker answers again, the held orders are answered too, none as "too many".
    broker.thaw();
    for request in requests {
        request.await.unwrap();
    }
    let answers = answers.lock().unwrap();
    assert_eq!(too_many(&answers), SENT - LIMIT);
    println!(
        "held orders: {} placed, {} refused",
        answers.iter().filter(|(status, _)| *status == 200).count(),
        answers.iter().filter(|(status, _)| *status == 503).count() - (SENT - LIMIT),
    );
    drop(streams);
}

/// A shutdown is bounded: a host whose broker hangs (SIGSTOP) cannot leave its groups, yet
/// it exits once its shutdown timeout has passed, with status 1 and a log line that names
/// the stages that had not stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shutdown_that_cannot_finish_ends_at_its_timeout_and_names_the_stages_left() {
    let broker = OwnBroker::start("shutdown-timeout");
    let topics = Topics::unique("shutdown-timeout");
    let pipeline = process_pipeline("shutdown-timeout", &topics, &broker.bootstrap());
    let host = HostProcess::start_with_env(
        &pipeline,
        "shutdown-timeout",
        &[("PIZZA_HOST_SHUTDOWN_TIMEOUT", "1s")],
    )
    .await;
    wait_for(WITHIN, "every stage to hold partitions", || async {
        (host.stages_holding_partitions().await == STAGES.len()).then_some(())
    })
    .await;

    broker.freeze();
    let log = host.log.clone();
    let signalled = Instant::now();
    let status = host.terminate(Duration::from_secs(15));
    let took = signalled.elapsed();
    broker.thaw();
    let tail = log_tail(&log, 40);
    assert_eq!(status, Some(1), "{tail}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("shutdown did not finish within 1s") && log.contains("still running: stage "),
        "{tail}"
    );
    println!("exited {took:?} after SIGTERM with its broker frozen");
}

async fn post(client: &reqwest::Client, url: &str) -> (u16, Value) {
    // An order taken just before the host noticed the outage waits for its transaction to
    // fail: the records' delivery timeout, then the abort (29.9 s in one run); those after
    // it are refused at once, which the test checks on its own.
    let response = client
        .post(format!("{url}/order/1"))
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn unreachable(body: &Value) -> bool {
    body["error"]
        .as_str()
        .is_some_and(|error| error.contains("Kafka is unreachable"))
}

async fn get(url: &str, id: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{url}/order/{id}")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}
