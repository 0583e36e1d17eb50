//! Orders: publishing a new order's pizzas, and the order view built from the completed topic.
//!
//! The view holds the orders this host took. Pizzas arrive from the completed topic, which is
//! read from its end as it stood at startup (so the view is ready before the first order is
//! taken); a pizza is matched to its order by the record key (the order id, as in the
//! original demo) or, failing that, its `order_id` field. Redelivered pizzas (at-least-once
//! means a stage may process a record twice) are recognised by their `pizza_id` and counted
//! once, and an order never holds more than `count` pizzas.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::kafka::ADMIN_TIMEOUT;

/// How long `POST /order` waits for the broker to acknowledge the pizzas.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// An order as `GET /order/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    /// The order id.
    pub id: String,
    /// How many pizzas were ordered.
    pub count: u32,
    /// The completed pizzas so far, in arrival order.
    pub pizzas: Vec<Value>,
}

#[derive(Debug)]
struct Order {
    count: u32,
    pizzas: Vec<Value>,
    seen: HashSet<String>,
}

/// The orders this host took and the completed pizzas that arrived for them.
#[derive(Debug, Clone, Default)]
pub struct OrderBook {
    orders: Arc<Mutex<HashMap<String, Order>>>,
}

impl OrderBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Order>> {
        // The map stays consistent across a panic (each update is one insert), so a poisoned
        // lock is still safe to use.
        self.orders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The order with `id`, as it stands.
    pub fn get(&self, id: &str) -> Option<OrderView> {
        self.lock().get(id).map(|order| OrderView {
            id: id.to_owned(),
            count: order.count,
            pizzas: order.pizzas.clone(),
        })
    }

    fn open(&self, id: &str, count: u32) {
        let order = Order {
            count,
            pizzas: Vec::new(),
            seen: HashSet::new(),
        };
        self.lock().insert(id.to_owned(), order);
    }

    fn cancel(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Adds a completed pizza to its order; false if the order is unknown here, the pizza was
    /// already counted, or the order is full.
    fn complete(&self, order_id: &str, pizza: Value) -> bool {
        let mut orders = self.lock();
        let Some(order) = orders.get_mut(order_id) else {
            return false;
        };
        if order.pizzas.len() >= order.count as usize {
            return false;
        }
        if let Some(pizza_id) = pizza.get("pizza_id").and_then(Value::as_str)
            && !order.seen.insert(pizza_id.to_owned())
        {
            return false;
        }
        order.pizzas.push(pizza);
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

/// Opens the order in `book` and publishes its pizzas to `topic`, keyed by the order id;
/// returns once the broker acknowledged every one. On failure the order is forgotten.
pub async fn place(
    book: &OrderBook,
    producer: &FutureProducer,
    topic: &str,
    order_id: &str,
    count: u32,
) -> anyhow::Result<()> {
    // Opened first, so a pizza that completes before the last send returns finds its order.
    book.open(order_id, count);
    let pizzas = new_pizzas(order_id, count);
    let sends = pizzas.iter().map(|pizza| {
        producer.send(
            FutureRecord::to(topic).key(order_id).payload(pizza),
            PUBLISH_TIMEOUT,
        )
    });
    let results = futures::future::join_all(sends).await;
    if let Some(Err((err, _))) = results.into_iter().find(Result::is_err) {
        book.cancel(order_id);
        return Err(err).context("the broker did not acknowledge the order's pizzas");
    }
    Ok(())
}

/// Reads completed pizzas into `book` until `shutdown`. The reader is positioned at the end
/// of every partition of `topic` before this returns its task, so no pizza of an order taken
/// afterwards can be missed.
pub async fn start_view(
    book: OrderBook,
    consumer: StreamConsumer,
    topic: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()> + use<>> {
    let metadata =
        tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), ADMIN_TIMEOUT))
            .with_context(|| format!("cannot read the partitions of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (_, high) = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, partition, ADMIN_TIMEOUT)
        })
        .with_context(|| format!("cannot read the end offset of {topic}/{partition}"))?;
        assignment.add_partition_offset(topic, partition, Offset::Offset(high))?;
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("cannot read {topic}"))?;

    Ok(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                received = consumer.recv() => match received {
                    Ok(message) => record_pizza(&book, &message),
                    Err(err) => tracing::warn!("order view: consumer error: {err}"),
                },
            }
        }
    })
}

fn record_pizza(book: &OrderBook, message: &rdkafka::message::BorrowedMessage<'_>) {
    let pizza: Option<Map<String, Value>> = message
        .payload()
        .and_then(|p| serde_json::from_slice(p).ok());
    let Some(pizza) = pizza else {
        tracing::warn!(
            topic = message.topic(),
            offset = message.offset(),
            "order view: skipped a record that is not a JSON object"
        );
        return;
    };
    let order_id = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(str::to_owned)
        .or_else(|| {
            pizza
                .get("order_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    if let Some(order_id) = order_id
        && book.complete(&order_id, Value::Object(pizza))
    {
        tracing::debug!(order_id, "pizza completed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pizza(order_id: &str, n: u32) -> Value {
        json!({"order_id": order_id, "pizza_id": format!("{order_id}-{n}"), "sauce": "bbq"})
    }

    #[test]
    fn redelivered_pizzas_count_once_and_orders_never_overfill() {
        let book = OrderBook::default();
        book.open("1", 2);
        assert!(book.complete("1", pizza("1", 0)));
        assert!(
            !book.complete("1", pizza("1", 0)),
            "a redelivery is not a new pizza"
        );
        assert!(book.complete("1", pizza("1", 1)));
        assert!(
            !book.complete("1", json!({"order_id": "1"})),
            "the order is full"
        );
        assert_eq!(book.get("1").map(|o| o.pizzas.len()), Some(2));
        assert!(!book.complete("2", pizza("2", 0)), "unknown order");
        assert!(book.get("2").is_none());
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
