//! The order book that `GET /order/{id}` reads, which [`crate::orders::view`] fills from Kafka
//! (and [`crate::orders::publisher`] opens an order in as it is placed).
//!
//! A pizza is counted once, by its `pizza_id` (at-least-once delivery means a stage may
//! process a record twice), whether it completed or went to a dead-letter topic, and an order
//! never holds more than `count` pizzas. An order is `complete` when every pizza completed,
//! `failed` when every pizza is accounted for and some failed, `in_progress` otherwise.
//!
//! The book is bounded: it holds the most recent orders up to a number of pizzas
//! (`[orders] max_pizzas_in_memory`), forgetting the oldest orders beyond it. Kafka keeps every
//! order (the orders and completed topics); this is a view of the recent ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::orders::event_ids::EventIds;

/// Distinct stage visits the book remembers, to share one copy among the pizzas that carry
/// the same (a stage stamps one visit on a whole batch of pizzas); beyond this it starts over.
const MAX_SHARED_VISITS: usize = 10_000;
/// Pizzas kept for orders this host has not heard of yet (their order record may still be on
/// its way); beyond this, the oldest are dropped.
const MAX_EARLY_PIZZAS: usize = 100_000;

/// An order as `GET /order/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    /// The order id.
    pub id: String,
    /// How many pizzas were ordered.
    pub count: u32,
    /// Where the order stands.
    pub status: Status,
    /// The completed pizzas so far, in arrival order: `order_id`, `pizza_id`, `sauce`,
    /// `cheese`, `meats`, `veggies` (and, with `?detail=true`, `stages`).
    #[schema(value_type = Vec<Object>)]
    pub pizzas: Vec<Box<RawValue>>,
    /// The pizzas that went to a dead-letter topic, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedPizza>,
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    Completed(CompletedPizza),
    /// It went to a dead-letter topic.
    Failed(FailedPizza),
}

/// A pizza that came out of the last stage, kept as the JSON text it arrived as: read once
/// to validate it and find its ids, never built into a document (a parsed pizza with its
/// trail takes about four times the memory, and building it cost more than the rest of the
/// view's work together). Its stage visits are shared with the other pizzas of the same
/// batches: a trail is three times the size of its pizza.
#[derive(Debug, Clone)]
pub struct CompletedPizza {
    order_id: Option<String>,
    pizza_id: Option<String>,
    /// A JSON object.
    pizza: Box<RawValue>,
    /// Each stage's visit (see [`crate::kafka::headers::TRAIL`]) in stage order, JSON each.
    visits: Vec<Arc<str>>,
}

impl CompletedPizza {
    /// The pizza a record's value holds, if it is a JSON object, with the stage visits its
    /// trail headers hold (any that is not JSON is left out).
    pub fn parse<'a>(pizza: &[u8], visits: impl IntoIterator<Item = &'a [u8]>) -> Option<Self> {
        let text = std::str::from_utf8(pizza).ok()?.trim();
        let ids = EventIds::of(text)?;
        let as_string = |id: Option<Value>| match id {
            Some(Value::String(id)) => Some(id),
            _ => None,
        };
        let visits = visits
            .into_iter()
            .filter(|visit| serde_json::from_slice::<serde::de::IgnoredAny>(visit).is_ok())
            .filter_map(|visit| std::str::from_utf8(visit).ok())
            .map(Arc::from)
            .collect();
        Some(Self {
            order_id: as_string(ids.order_id),
            pizza_id: as_string(ids.pizza_id),
            pizza: RawValue::from_string(text.to_owned()).ok()?,
            visits,
        })
    }

    /// The order id the pizza names (the record key says it too).
    pub fn order_id(&self) -> Option<&str> {
        self.order_id.as_deref()
    }

    /// The pizza as a document.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.pizza.get()).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Order {
    count: u32,
    pizzas: Vec<Box<RawValue>>,
    /// Each completed pizza's stage visits, for `?detail=true`.
    trails: Vec<Box<[Arc<str>]>>,
    failed: Vec<FailedPizza>,
    seen: HashSet<String>,
}

#[derive(Debug, Default)]
struct Book {
    orders: HashMap<String, Order>,
    /// Order ids, oldest first, to forget the oldest when the book is full.
    opened: VecDeque<String>,
    /// Pizzas ordered by the orders held.
    pizzas_held: usize,
    /// Most pizzas held (0: no limit).
    max_pizzas: usize,
    /// Outcomes for orders not opened yet, in arrival order.
    early: HashMap<String, Vec<Outcome>>,
    early_count: usize,
    /// One copy of each recent stage visit.
    visits: HashSet<Arc<str>>,
}

/// The orders and what happened to their pizzas.
#[derive(Debug, Clone, Default)]
pub struct OrderBook {
    book: Arc<Mutex<Book>>,
}

impl OrderBook {
    /// A book holding the most recent orders up to `max_pizzas` pizzas in all.
    pub fn bounded(max_pizzas: usize) -> Self {
        Self {
            book: Arc::new(Mutex::new(Book {
                max_pizzas,
                ..Book::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        // Each update leaves the book consistent, so a poisoned lock is still safe to use.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The order with `id`, as it stands. With `detail`, each pizza also says when each
    /// stage processed it and with which component (`"stages": [{stage, at, digest}, …]`).
    pub fn get(&self, id: &str, detail: bool) -> Option<OrderView> {
        self.lock().orders.get(id).map(|order| {
            let pizzas = if detail {
                order
                    .pizzas
                    .iter()
                    .zip(&order.trails)
                    .map(|(pizza, trail)| with_stages(pizza, trail))
                    .collect()
            } else {
                order.pizzas.clone()
            };
            OrderView {
                id: id.to_owned(),
                count: order.count,
                status: order.status(),
                pizzas,
                failed: order.failed.clone(),
            }
        })
    }

    /// How many orders are in progress, complete and failed.
    pub fn counts(&self) -> crate::telemetry::metrics::OrderCounts {
        let mut counts = crate::telemetry::metrics::OrderCounts::default();
        for order in self.lock().orders.values() {
            match order.status() {
                Status::InProgress => counts.in_progress += 1,
                Status::Complete => counts.complete += 1,
                Status::Failed => counts.failed += 1,
            }
        }
        counts
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
        book.opened.push_back(id.to_owned());
        book.pizzas_held += count as usize;
        book.forget_oldest(id);
        if let Some(early) = book.early.remove(id) {
            book.early_count -= early.len();
            let order = book.orders.get_mut(id).expect("just inserted");
            for outcome in early {
                order.apply(outcome);
            }
        }
    }

    pub(crate) fn cancel(&self, id: &str) {
        let mut book = self.lock();
        if let Some(order) = book.orders.remove(id) {
            book.pizzas_held -= order.count as usize;
        }
    }

    /// Records what happened to one pizza of order `order_id`; false if it was already
    /// counted or the order is full.
    pub fn record(&self, order_id: &str, mut outcome: Outcome) -> bool {
        let mut book = self.lock();
        if let Outcome::Completed(completed) = &mut outcome {
            for visit in &mut completed.visits {
                *visit = book.shared(visit);
            }
        }
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

/// `pizza` with its trail added as `stages`.
fn with_stages(pizza: &RawValue, visits: &[Arc<str>]) -> Box<RawValue> {
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_default();
    let mut pizza = parse(pizza.get());
    if let Value::Object(fields) = &mut pizza {
        let stages = visits.iter().map(|visit| parse(visit)).collect();
        fields.insert("stages".into(), Value::Array(stages));
    }
    serde_json::value::to_raw_value(&pizza).expect("a document serializes")
}

impl Book {
    /// The book's copy of `visit`.
    fn shared(&mut self, visit: &Arc<str>) -> Arc<str> {
        if let Some(shared) = self.visits.get(visit) {
            return shared.clone();
        }
        if self.visits.len() >= MAX_SHARED_VISITS {
            self.visits.clear();
        }
        self.visits.insert(visit.clone());
        visit.clone()
    }

    /// Forgets the oldest finished orders while the book holds more pizzas than it may. Orders
    /// in progress (and `keep`, the one just opened) are never forgotten: a burst of orders may
    /// hold the book above its bound until they finish.
    fn forget_oldest(&mut self, keep: &str) {
        let mut in_progress = Vec::new();
        while self.max_pizzas > 0 && self.pizzas_held > self.max_pizzas {
            let Some(oldest) = self.opened.pop_front() else {
                break;
            };
            match self.orders.get(&oldest) {
                None => {} // cancelled
                Some(order) if oldest == keep || order.status() == Status::InProgress => {
                    in_progress.push(oldest);
                }
                Some(order) => {
                    self.pizzas_held -= order.count as usize;
                    self.orders.remove(&oldest);
                }
            }
        }
        for id in in_progress.into_iter().rev() {
            self.opened.push_front(id);
        }
        // Ids of cancelled orders linger in `opened`; drop them once they dominate.
        if self.opened.len() > 2 * self.orders.len() + 1024 {
            let orders = &self.orders;
            self.opened.retain(|id| orders.contains_key(id));
        }
    }
}

impl Order {
    fn status(&self) -> Status {
        let accounted = self.pizzas.len() + self.failed.len();
        if self.pizzas.len() == self.count as usize {
            Status::Complete
        } else if accounted >= self.count as usize {
            Status::Failed
        } else {
            Status::InProgress
        }
    }

    fn apply(&mut self, outcome: Outcome) -> bool {
        if self.pizzas.len() + self.failed.len() >= self.count as usize {
            return false;
        }
        let pizza_id = match &outcome {
            Outcome::Completed(completed) => completed.pizza_id.clone(),
            Outcome::Failed(failed) => failed.pizza_id.clone(),
        };
        if let Some(pizza_id) = pizza_id
            && !self.seen.insert(pizza_id)
        {
            return false;
        }
        match outcome {
            Outcome::Completed(completed) => {
                self.pizzas.push(completed.pizza);
                self.trails.push(completed.visits.into_boxed_slice());
            }
            Outcome::Failed(failed) => self.failed.push(failed),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn completed(pizza: Value) -> Outcome {
        let visit = br#"{"stage": "sauce"}"#.as_slice();
        let parsed = CompletedPizza::parse(pizza.to_string().as_bytes(), [visit]);
        Outcome::Completed(parsed.expect("a pizza"))
    }

    fn pizza(order_id: &str, n: u32) -> Outcome {
        completed(
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
        assert_eq!(
            book.get("1", false).map(|o| o.status),
            Some(Status::InProgress)
        );
        assert!(book.record("1", pizza("1", 1)));
        assert!(
            !book.record("1", completed(json!({"order_id": "1"}))),
            "the order is full"
        );
        let order = book.get("1", false).expect("order");
        assert_eq!((order.pizzas.len(), order.status), (2, Status::Complete));
        let first = |order: &OrderView| serde_json::from_str::<Value>(order.pizzas[0].get());
        assert!(first(&order).expect("JSON").get("stages").is_none());
        let detailed = book.get("1", true).expect("order");
        assert_eq!(
            first(&detailed).expect("JSON")["stages"][0]["stage"],
            "sauce"
        );
        assert_eq!(book.counts().complete, 1);
        assert!(book.get("2", false).is_none());
    }

    #[test]
    fn pizzas_share_one_copy_of_a_stage_visit() {
        let book = OrderBook::default();
        book.open("1", 2);
        book.record("1", pizza("1", 0));
        book.record("1", pizza("1", 1));
        let inner = book.lock();
        let trails = &inner.orders["1"].trails;
        assert!(Arc::ptr_eq(&trails[0][0], &trails[1][0]));
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
        assert_eq!(
            book.get("1", false).map(|o| o.status),
            Some(Status::InProgress)
        );
        assert!(book.record("1", pizza("1", 1)));
        let order = book.get("1", false).expect("order");
        assert_eq!(order.status, Status::Failed);
        assert_eq!(order.failed[0].stage, "cheese");
    }

    #[test]
    fn pizzas_that_arrive_before_their_order_are_kept_for_it() {
        let book = OrderBook::default();
        assert!(!book.record("7", pizza("7", 0)));
        book.open("7", 1);
        book.open("7", 1);
        assert_eq!(
            book.get("7", false).map(|o| o.status),
            Some(Status::Complete)
        );
    }

    #[test]
    fn a_bounded_book_forgets_the_oldest_finished_orders_beyond_its_pizzas() {
        let book = OrderBook::bounded(2);
        let finish = |id: &str| {
            let pizza = serde_json::json!({"order_id": id, "pizza_id": format!("{id}-0")});
            book.record(id, completed(pizza));
        };
        book.open("a", 1);
        finish("a");
        book.open("b", 1);
        book.open("c", 1);
        assert!(
            book.get("a", false).is_none(),
            "the oldest finished order went"
        );
        // b is in progress: kept, though the book is over its bound.
        book.open("d", 1);
        assert!(book.get("b", false).is_some() && book.get("c", false).is_some());
        finish("b");
        book.open("e", 1);
        assert!(book.get("b", false).is_none(), "finished, then forgotten");
        for id in ["c", "d", "e"] {
            assert!(book.get(id, false).is_some(), "{id} in progress");
        }
    }
}
