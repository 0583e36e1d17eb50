//! Orders: placing one (its record on the orders topic, then its pizzas), and the order book
//! that `GET /order/{id}` reads, which [`crate::order_view`] fills from Kafka.
//!
//! A pizza is counted once, by its `pizza_id` (at-least-once delivery means a stage may
//! process a record twice), whether it completed or went to a dead-letter topic, and an order
//! never holds more than `count` pizzas. An order is `complete` when every pizza completed,
//! `failed` when every pizza is accounted for and some failed, `in_progress` otherwise.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use serde_json::{Value, json};

/// How long `POST /order` waits for the broker to acknowledge the order.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Pizzas kept for orders this host has not heard of yet (their order record may still be on
/// its way); beyond this, the oldest are dropped.
const MAX_EARLY_PIZZAS: usize = 100_000;

/// An order as `GET /order/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    /// The order id.
    pub id: String,
    /// How many pizzas were ordered.
    pub count: u32,
    /// Where the order stands.
    pub status: Status,
    /// The completed pizzas so far, in arrival order.
    pub pizzas: Vec<Value>,
    /// The pizzas that went to a dead-letter topic, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedPizza>,
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Some pizzas are still on their way.
    InProgress,
    /// Every pizza completed.
    Complete,
    /// Every pizza is accounted for, and some failed.
    Failed,
}

/// A pizza that a stage could not make.
#[derive(Debug, Clone, Serialize)]
pub struct FailedPizza {
    /// The pizza's id, when it had one.
    pub pizza_id: Option<String>,
    /// The stage that failed it.
    pub stage: String,
    /// The kind of failure (`trap`, `timeout`, …).
    pub kind: String,
    /// What went wrong.
    pub error: String,
}

/// What happened to one pizza, as the order view learns it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It came out of the last stage.
    Completed(Value),
    /// It went to a dead-letter topic.
    Failed(FailedPizza),
}

#[derive(Debug, Default)]
struct Order {
    count: u32,
    pizzas: Vec<Value>,
    failed: Vec<FailedPizza>,
    seen: HashSet<String>,
}

#[derive(Debug, Default)]
struct Book {
    orders: HashMap<String, Order>,
    /// Outcomes for orders not opened yet, in arrival order.
    early: HashMap<String, Vec<Outcome>>,
    early_count: usize,
}

/// The orders and what happened to their pizzas.
#[derive(Debug, Clone, Default)]
pub struct OrderBook {
    book: Arc<Mutex<Book>>,
}

impl OrderBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        // Each update leaves the book consistent, so a poisoned lock is still safe to use.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The order with `id`, as it stands.
    pub fn get(&self, id: &str) -> Option<OrderView> {
        self.lock().orders.get(id).map(|order| {
            let accounted = order.pizzas.len() + order.failed.len();
            let status = if order.pizzas.len() == order.count as usize {
                Status::Complete
            } else if accounted >= order.count as usize {
                Status::Failed
            } else {
                Status::InProgress
            };
            OrderView {
                id: id.to_owned(),
                count: order.count,
                status,
                pizzas: order.pizzas.clone(),
                failed: order.failed.clone(),
            }
        })
    }

    /// Records an order; outcomes that arrived for it earlier are applied now. Opening an
    /// order twice (its record read back after this host placed it) changes nothing.
    pub fn open(&self, id: &str, count: u32) {
        let mut book = self.lock();
        if book.orders.contains_key(id) {
            return;
        }
        book.orders.insert(
            id.to_owned(),
            Order {
                count,
                ..Order::default()
            },
        );
        if let Some(early) = book.early.remove(id) {
            book.early_count -= early.len();
            let order = book.orders.get_mut(id).expect("just inserted");
            for outcome in early {
                order.apply(outcome);
            }
        }
    }

    fn cancel(&self, id: &str) {
        self.lock().orders.remove(id);
    }

    /// Records what happened to one pizza of order `order_id`; false if it was already
    /// counted or the order is full.
    pub fn record(&self, order_id: &str, outcome: Outcome) -> bool {
        let mut book = self.lock();
        if let Some(order) = book.orders.get_mut(order_id) {
            return order.apply(outcome);
        }
        if book.early_count >= MAX_EARLY_PIZZAS {
            tracing::warn!("order view: too many pizzas for unknown orders; forgetting them");
            book.early.clear();
            book.early_count = 0;
        }
        book.early
            .entry(order_id.to_owned())
            .or_default()
            .push(outcome);
        book.early_count += 1;
        false
    }
}

impl Order {
    fn apply(&mut self, outcome: Outcome) -> bool {
        if self.pizzas.len() + self.failed.len() >= self.count as usize {
            return false;
        }
        let pizza_id = match &outcome {
            Outcome::Completed(pizza) => pizza
                .get("pizza_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            Outcome::Failed(failed) => failed.pizza_id.clone(),
        };
        if let Some(pizza_id) = pizza_id
            && !self.seen.insert(pizza_id)
        {
            return false;
        }
        match outcome {
            Outcome::Completed(pizza) => self.pizzas.push(pizza),
            Outcome::Failed(failed) => self.failed.push(failed),
        }
        true
    }
}

/// A new order's id: the decimal form of a random 128-bit UUID, like the original service's.
pub fn new_order_id() -> String {
    uuid::Uuid::new_v4().as_u128().to_string()
}

/// The pizza events of a new order, in the original demo's shape (every topping empty) plus
/// a `pizza_id` that lets the view count a redelivered pizza once.
pub fn new_pizzas(order_id: &str, count: u32) -> Vec<String> {
    (0..count)
        .map(|n| {
            json!({
                "order_id": order_id,
                "pizza_id": format!("{order_id}-{n}"),
                "sauce": "",
                "cheese": "",
                "meats": "",
                "veggies": "",
            })
            .to_string()
        })
        .collect()
}

/// The record of an order on the orders topic, from which every host's view learns about it.
pub fn order_record(order_id: &str, count: u32) -> String {
    json!({ "order_id": order_id, "count": count }).to_string()
}

/// Where a new order is published.
#[derive(Debug, Clone)]
pub struct OrderTopics {
    /// Order records (id and count), read back by every host's order view.
    pub orders: String,
    /// The first stage's input, where the pizzas go.
    pub pizzas: String,
}

/// How new orders reach Kafka.
#[derive(Clone)]
pub enum Publisher {
    /// Each record is acknowledged on its own; a failure midway leaves part of the order.
    AtLeastOnce(FutureProducer),
    /// The order record and its pizzas go in one transaction: all or none. One transaction
    /// at a time per producer, hence the lock.
    ExactlyOnce(Arc<Mutex<FutureProducer>>),
}

impl Publisher {
    /// A transactional publisher with id `transactional_id`, ready to use.
    pub fn transactional(
        kafka: &crate::kafka::KafkaSettings,
        transactional_id: &str,
    ) -> anyhow::Result<Self> {
        let producer = kafka.transactional_producer(transactional_id)?;
        tokio::task::block_in_place(|| producer.init_transactions(PUBLISH_TIMEOUT))
            .with_context(|| format!("cannot start transactions as {transactional_id}"))?;
        Ok(Self::ExactlyOnce(Arc::new(Mutex::new(producer))))
    }
}

/// Opens the order in `book`, publishes its record and then its pizzas, keyed by the order
/// id; returns once the broker acknowledged everything. On failure the order is forgotten here.
pub async fn place(
    book: &OrderBook,
    publisher: &Publisher,
    topics: &OrderTopics,
    order_id: &str,
    count: u32,
) -> anyhow::Result<()> {
    // Opened first, so a pizza that completes before the last send returns finds its order.
    book.open(order_id, count);
    let records: Vec<(String, String)> =
        std::iter::once((topics.orders.clone(), order_record(order_id, count)))
            .chain(
                new_pizzas(order_id, count)
                    .into_iter()
                    .map(|pizza| (topics.pizzas.clone(), pizza)),
            )
            .collect();
    let published = match publisher {
        Publisher::AtLeastOnce(producer) => publish_each(producer, order_id, &records).await,
        Publisher::ExactlyOnce(producer) => {
            let (producer, key) = (producer.clone(), order_id.to_owned());
            tokio::task::spawn_blocking(move || publish_in_transaction(&producer, &key, &records))
                .await
                .context("publishing panicked")
                .and_then(|published| published)
        }
    };
    if published.is_err() {
        book.cancel(order_id);
    }
    published
}

async fn publish_each(
    producer: &FutureProducer,
    key: &str,
    records: &[(String, String)],
) -> anyhow::Result<()> {
    // The order record first: a view that sees a pizza knows its order.
    let mut records = records.iter();
    if let Some((topic, order)) = records.next() {
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(order),
                PUBLISH_TIMEOUT,
            )
            .await
            .map_err(|(err, _)| err)
            .context("the broker did not acknowledge the order")?;
    }
    let sends = records.map(|(topic, pizza)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(pizza),
            PUBLISH_TIMEOUT,
        )
    });
    for result in futures::future::join_all(sends).await {
        result
            .map_err(|(err, _)| err)
            .context("the broker did not acknowledge all of the order's pizzas")?;
    }
    Ok(())
}

/// Blocking: one transaction holding every record of the order.
fn publish_in_transaction(
    producer: &Mutex<FutureProducer>,
    key: &str,
    records: &[(String, String)],
) -> anyhow::Result<()> {
    let producer = producer.lock().unwrap_or_else(PoisonError::into_inner);
    producer
        .begin_transaction()
        .context("cannot begin a transaction")?;
    let sent = records.iter().try_for_each(|(topic, value)| {
        let mut record = FutureRecord::to(topic).key(key).payload(value);
        loop {
            match producer.send_result(record) {
                Ok(_delivery) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((err, _)) => return Err(err),
            }
        }
    });
    match sent.and_then(|()| producer.commit_transaction(PUBLISH_TIMEOUT)) {
        Ok(()) => Ok(()),
        Err(err) => {
            if let Err(abort) = producer.abort_transaction(PUBLISH_TIMEOUT) {
                tracing::warn!("aborting the order's transaction failed too: {abort}");
            }
            Err(err).context("the order was not published (its transaction was aborted)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pizza(order_id: &str, n: u32) -> Outcome {
        Outcome::Completed(
            json!({"order_id": order_id, "pizza_id": format!("{order_id}-{n}"), "sauce": "bbq"}),
        )
    }

    fn failure(order_id: &str, n: u32) -> Outcome {
        Outcome::Failed(FailedPizza {
            pizza_id: Some(format!("{order_id}-{n}")),
            stage: "cheese".into(),
            kind: "trap".into(),
            error: "boom".into(),
        })
    }

    #[test]
    fn redelivered_pizzas_count_once_and_orders_never_overfill() {
        let book = OrderBook::default();
        book.open("1", 2);
        assert!(book.record("1", pizza("1", 0)));
        assert!(
            !book.record("1", pizza("1", 0)),
            "a redelivery is not a new pizza"
        );
        assert_eq!(book.get("1").map(|o| o.status), Some(Status::InProgress));
        assert!(book.record("1", pizza("1", 1)));
        assert!(
            !book.record("1", Outcome::Completed(json!({"order_id": "1"}))),
            "the order is full"
        );
        let order = book.get("1").expect("order");
        assert_eq!((order.pizzas.len(), order.status), (2, Status::Complete));
        assert!(book.get("2").is_none());
    }

    #[test]
    fn an_order_with_a_failed_pizza_ends_failed_with_the_reason() {
        let book = OrderBook::default();
        book.open("1", 2);
        assert!(book.record("1", failure("1", 0)));
        assert!(
            !book.record("1", pizza("1", 0)),
            "a pizza is counted once, failed or not"
        );
        assert_eq!(book.get("1").map(|o| o.status), Some(Status::InProgress));
        assert!(book.record("1", pizza("1", 1)));
        let order = book.get("1").expect("order");
        assert_eq!(order.status, Status::Failed);
        assert_eq!(order.failed[0].stage, "cheese");
    }

    #[test]
    fn pizzas_that_arrive_before_their_order_are_kept_for_it() {
        let book = OrderBook::default();
        assert!(!book.record("7", pizza("7", 0)));
        book.open("7", 1);
        book.open("7", 1);
        assert_eq!(book.get("7").map(|o| o.status), Some(Status::Complete));
    }

    #[test]
    fn new_pizzas_have_the_original_fields_and_distinct_ids() {
        let id = new_order_id();
        assert!(id.parse::<u128>().is_ok(), "{id}");
        let pizzas = new_pizzas(&id, 3);
        let ids: HashSet<String> = pizzas
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_str(p).expect("json");
                for field in ["sauce", "cheese", "meats", "veggies"] {
                    assert_eq!(v[field], "", "{field}");
                }
                assert_eq!(v["order_id"], id.as_str());
                v["pizza_id"].as_str().expect("pizza_id").to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 3);
    }
}
