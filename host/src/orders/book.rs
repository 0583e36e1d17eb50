//! The order book that `GET /order/{id}` reads: the orders of the durable
//! [`store`](crate::orders::store), which [`crate::orders::view`] fills from Kafka, plus the
//! orders this host placed that the view has not read back yet (so a customer can follow an
//! order at once), and how far the view's rebuild has got.
//!
//! A pizza is counted once, by its `pizza_id` (at-least-once delivery means a stage may
//! process a record twice), whether it completed or went to a dead-letter topic, and an order
//! never holds more than `count` pizzas. An order is `complete` when every pizza completed,
//! `failed` when every pizza is accounted for and some failed, `in_progress` otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::orders::event_ids::EventIds;
use crate::orders::store::Store;

/// An unknown order whose id was made less than this ago may have been placed on another host
/// and not be read here yet: it is answered "not yet" (503, `Retry-After`), not 404.
const RECENT: std::time::Duration = std::time::Duration::from_secs(60);
/// Orders placed here and not read back yet that the book remembers; beyond this (the view is
/// far behind or stopped), it starts over: they are still answered once the view reads them.
const MAX_PLACED: usize = 100_000;

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
    /// The pizzas a stage dropped (a filter passed nothing on for them): accounted for, not
    /// failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<DroppedPizza>,
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Some pizzas are still on their way.
    InProgress,
    /// Every pizza completed, or was dropped by a stage.
    Complete,
    /// Every pizza is accounted for, and some failed.
    Failed,
}

/// A pizza that a stage could not make.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

/// A pizza that a stage dropped on purpose.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DroppedPizza {
    /// The pizza's id, when it had one.
    pub pizza_id: Option<String>,
    /// The stage that dropped it.
    pub stage: String,
}

/// What happened to one pizza, as the order view learns it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It came out of the last stage.
    Completed(CompletedPizza),
    /// It went to a dead-letter topic.
    Failed(FailedPizza),
    /// A stage dropped it.
    Dropped(DroppedPizza),
}

/// A pizza that came out of the last stage, kept as the JSON text it arrived as: read once
/// to validate it and find its ids, never built into a document (building it cost more than
/// the rest of the view's work together).
#[derive(Debug, Clone)]
pub struct CompletedPizza {
    order_id: Option<String>,
    pizza_id: Option<String>,
    /// A JSON object.
    pizza: Box<RawValue>,
    /// Each stage's visit (see [`crate::kafka::headers::TRAIL`]) in stage order.
    visits: Vec<Box<RawValue>>,
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
            .filter_map(|visit| std::str::from_utf8(visit).ok())
            .filter_map(|visit| RawValue::from_string(visit.trim().to_owned()).ok())
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

    /// The pizza id it names, if any.
    pub fn pizza_id(&self) -> Option<&str> {
        self.pizza_id.as_deref()
    }

    /// The pizza as its JSON text.
    pub fn json(&self) -> &RawValue {
        &self.pizza
    }

    /// Its stage visits, JSON each, in stage order.
    pub fn visits(&self) -> impl Iterator<Item = &RawValue> {
        self.visits.iter().map(|visit| &**visit)
    }

    /// The pizza as a document.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.pizza.get()).unwrap_or_default()
    }
}

/// How far the order view has read the history it found at startup.
#[derive(Debug, Default)]
pub struct Rebuild {
    /// Records that were behind the store's checkpoint when the host started.
    total: AtomicU64,
    /// Of those, how many are applied.
    applied: AtomicU64,
    ready: AtomicBool,
}

impl Rebuild {
    /// `total` records are behind the checkpoint.
    pub fn begin(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// `n` more records are applied.
    pub fn applied(&self, n: u64) {
        self.applied.fetch_add(n, Ordering::Relaxed);
    }

    /// The view has caught up with what the topics held at startup.
    pub fn finish(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the view has caught up.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Where the rebuild stands, for `/readyz`.
    pub fn state(&self) -> RebuildState {
        RebuildState {
            state: if self.is_ready() {
                "ready"
            } else {
                "rebuilding"
            }
            .to_owned(),
            applied: self.applied.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        }
    }
}

/// Where the order view's rebuild stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RebuildState {
    /// `rebuilding` while the view reads the history it found at startup, then `ready`.
    pub state: String,
    /// Records applied of that history.
    pub applied: u64,
    /// Records that were behind the store's checkpoint at startup (after a clean restart,
    /// only those that arrived while the host was down).
    pub total: u64,
}

/// What the book knows of an order.
#[derive(Debug)]
pub enum Lookup {
    /// The order as it stands.
    Found(OrderView),
    /// Not known yet: the view is still reading the history, or the id is new enough that
    /// another host may have just placed it.
    NotYet(RebuildState),
    /// No such order.
    Unknown,
}

/// The orders and what happened to their pizzas.
#[derive(Clone)]
pub struct OrderBook {
    store: Arc<Store>,
    /// Orders placed here whose order record the view has not read back yet: id → count.
    placed: Arc<Mutex<HashMap<String, u32>>>,
    rebuild: Arc<Rebuild>,
}

impl OrderBook {
    /// A book over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store: Arc::new(store),
            placed: Arc::default(),
            rebuild: Arc::default(),
        }
    }

    /// The store the view writes to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// How far the view's rebuild has got.
    pub fn rebuild(&self) -> &Arc<Rebuild> {
        &self.rebuild
    }

    fn placed(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // Each update leaves the map consistent, so a poisoned lock is still safe to use.
        self.placed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The order with `id`, as it stands. With `detail`, each pizza also says when each
    /// stage processed it and with which component (`"stages": [{stage, at, digest}, …]`).
    pub fn get(&self, id: &str, detail: bool) -> anyhow::Result<Lookup> {
        let placed = self.placed().get(id).copied();
        Ok(match self.store.get(id, detail, placed)? {
            Some(order) => Lookup::Found(order),
            None if !self.rebuild.is_ready() => Lookup::NotYet(self.rebuild.state()),
            None if crate::orders::publisher::placed_recently(id, RECENT) => {
                Lookup::NotYet(self.rebuild.state())
            }
            None => Lookup::Unknown,
        })
    }

    /// How many orders are in progress, complete and failed.
    pub fn counts(&self) -> anyhow::Result<crate::telemetry::metrics::OrderCounts> {
        let mut counts = self.store.counts()?;
        counts.in_progress += self.placed().len();
        Ok(counts)
    }

    /// Remembers an order placed here until the view reads its record back.
    pub fn open(&self, id: &str, count: u32) {
        let mut placed = self.placed();
        if placed.len() >= MAX_PLACED {
            placed.clear();
        }
        placed.insert(id.to_owned(), count);
    }

    /// Forgets an order that could not be placed.
    pub(crate) fn cancel(&self, id: &str) {
        self.placed().remove(id);
    }

    /// The view read the records of `ids` back: the store answers for them now.
    pub fn read_back<'a>(&self, ids: impl IntoIterator<Item = &'a String>) {
        let mut placed = self.placed();
        for id in ids {
            placed.remove(id);
        }
    }
}
