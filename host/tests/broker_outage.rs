//! The broker goes away in the middle of a run and comes back: the host neither exits nor
//! loses or doubles a pizza, and refuses new orders with a JSON 503 while it cannot publish
//! them. The test runs its own broker so that stopping it disturbs no other test.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::time::Duration;

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

    let mut orders = Vec::new();
    for _ in 0..10 {
        orders.push(host.order(1_000).await);
    }
    let mut completed = 0;
    for id in &orders {
        completed += host.pizzas(id).await;
    }
    assert!(completed < 10_000, "the broker must stop mid-run");
    broker.stop();

    // While the broker is down, a new order is refused with a JSON error, not held.
    let client = reqwest::Client::new();
    let refused: Value = wait_for(WITHIN, "POST /order to answer 503", || async {
        let response = client
            .post(format!("{}/order/1", host.url))
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .ok()?;
        (response.status() == 503).then_some(())?;
        response.json().await.ok()
    })
    .await;
    assert!(
        refused["error"].as_str().unwrap().contains("not placed"),
        "{refused}"
    );
    // The order view keeps answering from what it has read.
    let (status, _) = get(&host.url, &orders[0]).await;
    assert_eq!(status, 200);
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
    assert_every_pizza_exactly_once(&broker.bootstrap(), &topics, 11_000);
}

async fn get(url: &str, id: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{url}/order/{id}")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}
