//! The order view's durable store: orders and what happened to their pizzas, indexed by order
//! id, in one local database file (redb), with the Kafka offsets they were read up to.
//!
//! Like a Kafka Streams state store with its checkpoint: every batch of records the view reads
//! is written in one transaction together with the offsets after it, so a restart resumes from
//! where the last committed batch ended, and a batch is never half applied (a kill during one
//! loses the whole batch, which is read again). A lost or deleted file is rebuilt from the
//! topics.
//!
//! Batches commit without waiting for the disk, and once a second with it: a crash (a kill,
//! a power loss) rolls the store back to the last durable commit, at most about a second of
//! batches, offsets included, so they are read again from Kafka and applied once. The durable
//! commits also save the allocator's state, so opening after a crash is a quick check, not a
//! scan of the file.
//!
//! A stage stamps one visit on a whole batch of pizzas, so visits are stored once each, under
//! a digest, and a pizza keeps their ids (a pizza's four visits are twice its size). Retention
//! drops orders and their pizzas, not visits: they cost a few bytes per pizza ever read. A
//! store written in another layout ([`FORMAT`]) is emptied when opened and rebuilt from Kafka.
//!
//! Why redb: it is pure Rust (no C or C++ to build: it adds about 20 s to a cold build on two
//! cores, against minutes for RocksDB), it has ordered tables with tuple keys (an order's
//! pizzas are one range), crash-safe transactions, and a bounded page cache.

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::orders::book::{DroppedPizza, FailedPizza, OrderView, Outcome, Status};
use crate::telemetry::metrics::OrderCounts;

/// Order id → [`Header`] (JSON).
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
/// (order id, pizza id) → [`Row`] (JSON): each pizza once, an order's pizzas side by side.
const OUTCOMES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("outcomes");
/// (first seen, in ms since the epoch; order id): orders oldest first, for retention.
const BY_AGE: TableDefinition<(u64, &str), ()> = TableDefinition::new("orders_by_age");
/// (topic, partition) → the next offset to read.
const OFFSETS: TableDefinition<(&str, i32), i64> = TableDefinition::new("offsets");
/// Orders by status (`in_progress`, `complete`, `failed`), kept with every change.
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
/// Stage visit id → the visit (JSON): a stage stamps one visit on a whole batch of pizzas,
/// so a pizza keeps ids and the batch shares one copy (a visit is twice a pizza's size).
const VISITS: TableDefinition<u64, &str> = TableDefinition::new("visits");
/// `format` → the layout of the tables; a store of another layout is emptied and rebuilt.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The layout this code writes.
const FORMAT: u64 = 2;

/// The most a commit waits for the disk: at most this much of the view is read again after a
/// power loss.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Memory for the database's page cache: the view's memory does not grow with its orders.
const CACHE_BYTES: usize = 32 << 20;
/// Orders dropped per retention pass, so one pass never holds the writer for long.
const DROP_BATCH: usize = 5_000;

/// One thing the view learned from a record.
#[derive(Debug)]
pub enum Change {
    /// An order was placed.
    Open {
        /// The order.
        order_id: String,
        /// Its pizzas.
        count: u32,
    },
    /// A pizza of an order completed or failed.
    Outcome {
        /// The order.
        order_id: String,
        /// Tells the pizza apart from the order's others: its pizza id, else where its
        /// record was.
        key: String,
        /// What happened to it.
        outcome: Outcome,
    },
}

/// A change with the time of the record it came from (ms since the epoch).
#[derive(Debug)]
pub struct Timed {
    /// The change.
    pub change: Change,
    /// When its record was written: retention counts from the first record of an order.
    pub at_ms: u64,
}

/// What the store keeps of an order besides its pizzas.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Header {
    /// Unknown while only pizzas of the order were read (its order record comes later).
    count: Option<u32>,
    /// Pizzas stored: the next one's place in arrival order.
    stored: u32,
    completed: u32,
    failed: u32,
    /// Pizzas a stage dropped (absent in stores written before drops were counted).
    #[serde(default)]
    dropped: u32,
    first_seen_ms: u64,
}

impl Header {
    fn status(&self) -> Option<Status> {
        let count = self.count?;
        Some(
            if self.completed + self.dropped >= count && self.failed == 0 {
                Status::Complete
            } else if self.completed + self.failed + self.dropped >= count {
                Status::Failed
            } else {
                Status::InProgress
            },
        )
    }

    fn full(&self) -> bool {
        self.count
            .is_some_and(|count| self.completed + self.failed + self.dropped >= count)
    }
}

/// A stored pizza: completed (`pizza`, `stages`: ids in [`VISITS`]) or failed.
#[derive(Serialize, Deserialize)]
struct Row<'a> {
    seq: u32,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pizza: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    stages: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed: Option<FailedPizza>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dropped: Option<DroppedPizza>,
}

/// The store of one host's order view.
pub struct Store {
    db: Database,
    /// Orders first seen longer ago are not kept (`None`: all are).
    retention: Option<Duration>,
    last_durable: std::sync::Mutex<Instant>,
}

impl Store {
    /// Opens the store at `path`, creating it (and its folder) if missing.
    pub fn open(path: &Path, retention: Option<Duration>) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt as _;
            // The orders are the customers' business: folders it makes are this user's alone.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create the store folder {}", dir.display()))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|err| match err {
                redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                    "the order store {} is in use by another host: give each host its own \
                     instance_id or [storage] dir",
                    path.display()
                ),
                err => anyhow::Error::new(err)
                    .context(format!("cannot open the order store {}", path.display())),
            })?;
        let store = Self {
            db,
            retention,
            last_durable: std::sync::Mutex::new(Instant::now()),
        };
        // Every table exists from the start, so readers never meet a missing one.
        let format = store.write(true, |t| {
            let format = t.meta.borrow().get("format")?.map(|v| v.value());
            let empty = t.orders.borrow().is_empty()? && t.offsets.borrow().is_empty()?;
            Ok(if empty { Some(FORMAT) } else { format })
        })?;
        if format != Some(FORMAT) {
            tracing::warn!(
                store = %path.display(),
                "the order store was written by another version: emptied, it is rebuilt from Kafka"
            );
            store.clear()?;
        }
        store.write(true, |t| {
            t.meta.borrow_mut().insert("format", FORMAT)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Runs `change` in one write transaction and commits it, waiting for the disk when
    /// `durable` or when the last durable commit is older than [`DURABLE_EVERY`].
    fn write<T>(
        &self,
        durable: bool,
        change: impl FnOnce(&Tables<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut txn = self.db.begin_write()?;
        let mut last = self
            .last_durable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let durable = durable || last.elapsed() >= DURABLE_EVERY;
        if durable {
            txn.set_quick_repair(true);
        } else {
            txn.set_durability(Durability::None)?;
        }
        let result = {
            let tables = Tables {
                orders: RefCell::new(txn.open_table(ORDERS)?),
                outcomes: RefCell::new(txn.open_table(OUTCOMES)?),
                by_age: RefCell::new(txn.open_table(BY_AGE)?),
                offsets: RefCell::new(txn.open_table(OFFSETS)?),
                counts: RefCell::new(txn.open_table(COUNTS)?),
                visits: RefCell::new(txn.open_table(VISITS)?),
                meta: RefCell::new(txn.open_table(META)?),
                stored_visits: RefCell::default(),
            };
            change(&tables)?
        };
        txn.commit().context("cannot commit to the order store")?;
        if durable {
            *last = Instant::now();
        }
        Ok(result)
    }

    /// Where the view stopped reading: (topic, partition) → the next offset.
    pub fn offsets(&self) -> anyhow::Result<Vec<((String, i32), i64)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OFFSETS)?;
        let mut offsets = Vec::new();
        for entry in table.iter()? {
            let (key, next) = entry?;
            let (topic, partition) = key.value();
            offsets.push(((topic.to_owned(), partition), next.value()));
        }
        Ok(offsets)
    }

    /// Applies `changes` and records `positions` (topic, partition, next offset) in one
    /// transaction. Returns the orders whose record was applied.
    pub fn apply(
        &self,
        changes: &[Timed],
        positions: &[(String, i32, i64)],
    ) -> anyhow::Result<Vec<String>> {
        let cutoff = self.cutoff_ms();
        self.write(false, |t| {
            let mut opened = Vec::new();
            for timed in changes {
                if timed.at_ms < cutoff {
                    continue; // older than the retention: dropped on arrival
                }
                match &timed.change {
                    Change::Open { order_id, count } => {
                        t.update(order_id, timed.at_ms, |header| {
                            if header.count.is_none() {
                                header.count = Some(*count);
                            }
                            Ok(())
                        })?;
                        opened.push(order_id.clone());
                    }
                    Change::Outcome {
                        order_id,
                        key,
                        outcome,
                    } => {
                        t.update(order_id, timed.at_ms, |header| {
                            t.add_outcome(order_id, key, outcome, header)
                        })?;
                    }
                }
            }
            let mut offsets = t.offsets.borrow_mut();
            for (topic, partition, next) in positions {
                offsets.insert((topic.as_str(), *partition), *next)?;
            }
            Ok(opened)
        })
    }

    /// The order `id` as it stands, if its order record was read (or `count` is known from
    /// elsewhere: this host placed it). With `detail`, each pizza carries its stage visits.
    pub fn get(
        &self,
        id: &str,
        detail: bool,
        count: Option<u32>,
    ) -> anyhow::Result<Option<OrderView>> {
        let txn = self.db.begin_read()?;
        let header = match txn.open_table(ORDERS)?.get(id)? {
            Some(bytes) => serde_json::from_slice::<Header>(bytes.value())?,
            None => Header::default(),
        };
        let Some(count) = header.count.or(count) else {
            return Ok(None);
        };
        let outcomes = txn.open_table(OUTCOMES)?;
        let next = format!("{id}\0");
        let mut rows = Vec::new();
        for entry in outcomes.range((id, "")..(next.as_str(), ""))? {
            let (_, bytes) = entry?;
            rows.push(bytes);
        }
        let mut parsed: Vec<Row<'_>> = rows
            .iter()
            .map(|bytes| serde_json::from_slice(bytes.value()))
            .collect::<Result<_, _>>()?;
        parsed.sort_by_key(|row| row.seq);
        parsed.truncate(count as usize);
        let visits = txn.open_table(VISITS)?;
        let mut pizzas = Vec::new();
        let mut failed = Vec::new();
        let mut dropped = Vec::new();
        for row in parsed {
            if let Some(pizza) = row.pizza {
                pizzas.push(if detail {
                    let mut stages = Vec::with_capacity(row.stages.len());
                    for id in &row.stages {
                        if let Some(visit) = visits.get(id)? {
                            stages.push(visit.value().to_owned());
                        }
                    }
                    with_stages(pizza, &stages)
                } else {
                    pizza.to_owned()
                });
            } else if let Some(failure) = row.failed {
                failed.push(failure);
            } else if let Some(drop) = row.dropped {
                dropped.push(drop);
            }
        }
        let header = Header {
            count: Some(count),
            completed: pizzas.len() as u32,
            failed: failed.len() as u32,
            dropped: dropped.len() as u32,
            ..header
        };
        Ok(Some(OrderView {
            id: id.to_owned(),
            count,
            status: header.status().unwrap_or(Status::InProgress),
            pizzas,
            failed,
            dropped,
        }))
    }

    /// How many orders are in progress, complete and failed.
    pub fn counts(&self) -> anyhow::Result<OrderCounts> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COUNTS)?;
        let count = |status: Status| -> anyhow::Result<usize> {
            Ok(table
                .get(status_key(status))?
                .map_or(0, |n| n.value() as usize))
        };
        Ok(OrderCounts {
            in_progress: count(Status::InProgress)?,
            complete: count(Status::Complete)?,
            failed: count(Status::Failed)?,
        })
    }

    /// Drops orders first seen before the retention, a bounded number per call; returns how
    /// many it dropped.
    pub fn drop_expired(&self) -> anyhow::Result<usize> {
        let cutoff = self.cutoff_ms();
        if cutoff == 0 {
            return Ok(0);
        }
        self.write(false, |t| {
            let expired: Vec<(u64, String)> = {
                let by_age = t.by_age.borrow();
                let mut expired = Vec::new();
                for entry in by_age.range((0, "")..(cutoff, ""))?.take(DROP_BATCH) {
                    let (key, _) = entry?;
                    let (at, id) = key.value();
                    expired.push((at, id.to_owned()));
                }
                expired
            };
            for (at, id) in &expired {
                t.by_age.borrow_mut().remove((*at, id.as_str()))?;
                let header = match t.orders.borrow_mut().remove(id.as_str())? {
                    Some(bytes) => Some(serde_json::from_slice::<Header>(bytes.value())?),
                    None => None,
                };
                if let Some(header) = header {
                    t.count(header.status(), None)?;
                }
                let next = format!("{id}\0");
                t.outcomes
                    .borrow_mut()
                    .retain_in((id.as_str(), "")..(next.as_str(), ""), |_, _| false)?;
            }
            Ok(expired.len())
        })
    }

    /// Forgets everything: the topics were recreated, and the view is read again from them.
    pub fn clear(&self) -> anyhow::Result<()> {
        self.write(true, |t| {
            t.orders.borrow_mut().retain(|_, _| false)?;
            t.outcomes.borrow_mut().retain(|_, _| false)?;
            t.by_age.borrow_mut().retain(|_, _| false)?;
            t.offsets.borrow_mut().retain(|_, _| false)?;
            t.counts.borrow_mut().retain(|_, _| false)?;
            t.visits.borrow_mut().retain(|_, _| false)?;
            Ok(())
        })
    }

    /// Waits for the disk to hold every commit so far (on the way out).
    pub fn flush(&self) -> anyhow::Result<()> {
        self.write(true, |_| Ok(()))
    }

    /// Records first seen before this are not kept (0: all are).
    fn cutoff_ms(&self) -> u64 {
        let Some(retention) = self.retention else {
            return 0;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(retention).as_millis() as u64
    }
}

/// The tables of one write transaction. `RefCell`s: a change reads one table while it
/// updates another.
struct Tables<'t> {
    orders: RefCell<redb::Table<'t, &'static str, &'static [u8]>>,
    outcomes: RefCell<redb::Table<'t, (&'static str, &'static str), &'static [u8]>>,
    by_age: RefCell<redb::Table<'t, (u64, &'static str), ()>>,
    offsets: RefCell<redb::Table<'t, (&'static str, i32), i64>>,
    counts: RefCell<redb::Table<'t, &'static str, u64>>,
    visits: RefCell<redb::Table<'t, u64, &'static str>>,
    meta: RefCell<redb::Table<'t, &'static str, u64>>,
    /// Visits known to be stored, so the pizzas of a batch look theirs up once.
    stored_visits: RefCell<std::collections::HashSet<u64>>,
}

impl Tables<'_> {
    /// Applies `edit` to the header of order `id` (a new one first seen at `at_ms` if it has
    /// none) and keeps the counts by status in step.
    fn update(
        &self,
        id: &str,
        at_ms: u64,
        edit: impl FnOnce(&mut Header) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let existing = self
            .orders
            .borrow()
            .get(id)?
            .map(|bytes| serde_json::from_slice::<Header>(bytes.value()))
            .transpose()?;
        let mut header = existing.unwrap_or(Header {
            first_seen_ms: at_ms,
            ..Header::default()
        });
        if existing.is_none() {
            self.by_age.borrow_mut().insert((at_ms, id), ())?;
        }
        let before = existing.and_then(|h| h.status());
        edit(&mut header)?;
        self.orders
            .borrow_mut()
            .insert(id, serde_json::to_vec(&header)?.as_slice())?;
        self.count(before, header.status())
    }

    /// Stores one pizza of an order unless it is stored already or the order is full.
    fn add_outcome(
        &self,
        id: &str,
        key: &str,
        outcome: &Outcome,
        header: &mut Header,
    ) -> anyhow::Result<()> {
        if header.full() || self.outcomes.borrow().get((id, key))?.is_some() {
            return Ok(());
        }
        let row = match outcome {
            Outcome::Completed(pizza) => {
                header.completed += 1;
                let mut stages = Vec::new();
                for visit in pizza.visits() {
                    stages.push(self.visit_id(visit.get())?);
                }
                Row {
                    seq: header.stored,
                    pizza: Some(pizza.json()),
                    stages,
                    failed: None,
                    dropped: None,
                }
            }
            Outcome::Failed(failure) => {
                header.failed += 1;
                Row {
                    seq: header.stored,
                    pizza: None,
                    stages: Vec::new(),
                    failed: Some(failure.clone()),
                    dropped: None,
                }
            }
            Outcome::Dropped(drop) => {
                header.dropped += 1;
                Row {
                    seq: header.stored,
                    pizza: None,
                    stages: Vec::new(),
                    failed: None,
                    dropped: Some(drop.clone()),
                }
            }
        };
        header.stored += 1;
        self.outcomes
            .borrow_mut()
            .insert((id, key), serde_json::to_vec(&row)?.as_slice())?;
        Ok(())
    }

    /// The id of `visit`, stored once: the first 8 bytes of its SHA-256.
    fn visit_id(&self, visit: &str) -> anyhow::Result<u64> {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(visit.as_bytes());
        let id = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        if self.stored_visits.borrow_mut().insert(id) && self.visits.borrow().get(id)?.is_none() {
            self.visits.borrow_mut().insert(id, visit)?;
        }
        Ok(id)
    }

    /// Moves an order from the count of `before` to that of `after`.
    fn count(&self, before: Option<Status>, after: Option<Status>) -> anyhow::Result<()> {
        if before == after {
            return Ok(());
        }
        let mut counts = self.counts.borrow_mut();
        if let Some(before) = before {
            let n = counts.get(status_key(before))?.map_or(0, |n| n.value());
            counts.insert(status_key(before), n.saturating_sub(1))?;
        }
        if let Some(after) = after {
            let n = counts.get(status_key(after))?.map_or(0, |n| n.value());
            counts.insert(status_key(after), n + 1)?;
        }
        Ok(())
    }
}

fn status_key(status: Status) -> &'static str {
    match status {
        Status::InProgress => "in_progress",
        Status::Complete => "complete",
        Status::Failed => "failed",
    }
}

/// `pizza` with its stage visits added as `stages`.
fn with_stages(pizza: &RawValue, visits: &[String]) -> Box<RawValue> {
    let mut pizza: Value = serde_json::from_str(pizza.get()).unwrap_or_default();
    if let Value::Object(fields) = &mut pizza {
        let stages = visits
            .iter()
            .map(|visit| serde_json::from_str(visit).unwrap_or_default())
            .collect();
        fields.insert("stages".into(), Value::Array(stages));
    }
    serde_json::value::to_raw_value(&pizza).expect("a document serializes")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::orders::book::CompletedPizza;

    fn store(dir: &tempfile::TempDir, retention: Option<Duration>) -> Store {
        Store::open(&dir.path().join("orders.redb"), retention).expect("store")
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    }

    fn open(order_id: &str, count: u32) -> Timed {
        Timed {
            change: Change::Open {
                order_id: order_id.into(),
                count,
            },
            at_ms: now(),
        }
    }

    fn pizza(order_id: &str, n: u32) -> Timed {
        let pizza =
            json!({"order_id": order_id, "pizza_id": format!("{order_id}-{n}"), "sauce": "bbq"});
        let visit = br#"{"stage": "sauce"}"#.as_slice();
        let parsed = CompletedPizza::parse(pizza.to_string().as_bytes(), [visit]).expect("pizza");
        Timed {
            change: Change::Outcome {
                order_id: order_id.into(),
                key: format!("{order_id}-{n}"),
                outcome: Outcome::Completed(parsed),
            },
            at_ms: now(),
        }
    }

    fn failure(order_id: &str, n: u32) -> Timed {
        Timed {
            change: Change::Outcome {
                order_id: order_id.into(),
                key: format!("{order_id}-{n}"),
                outcome: Outcome::Failed(FailedPizza {
                    pizza_id: Some(format!("{order_id}-{n}")),
                    stage: "cheese".into(),
                    kind: "trap".into(),
                    error: "boom".into(),
                }),
            },
            at_ms: now(),
        }
    }

    fn get(store: &Store, id: &str) -> Option<OrderView> {
        store.get(id, false, None).expect("read")
    }

    #[test]
    fn redelivered_pizzas_count_once_and_orders_never_overfill() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, None);
        store
            .apply(&[open("1", 2), pizza("1", 0), pizza("1", 0)], &[])
            .expect("apply");
        let order = get(&store, "1").expect("order");
        assert_eq!((order.pizzas.len(), order.status), (1, Status::InProgress));
        store
            .apply(&[pizza("1", 1), pizza("1", 2)], &[])
            .expect("apply");
        let order = get(&store, "1").expect("order");
        assert_eq!((order.pizzas.len(), order.status), (2, Status::Complete));
        let first = serde_json::from_str::<Value>(order.pizzas[0].get()).expect("JSON");
        assert!(first.get("stages").is_none());
        let detailed = store.get("1", true, None).expect("read").expect("order");
        let first = serde_json::from_str::<Value>(detailed.pizzas[0].get()).expect("JSON");
        assert_eq!(first["stages"][0]["stage"], "sauce");
        assert_eq!(store.counts().expect("counts").complete, 1);
        assert!(get(&store, "2").is_none());
    }

    #[test]
    fn an_order_with_a_failed_pizza_ends_failed_with_the_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, None);
        store
            .apply(&[open("1", 2), failure("1", 0), pizza("1", 0)], &[])
            .expect("apply");
        assert_eq!(get(&store, "1").map(|o| o.status), Some(Status::InProgress));
        store.apply(&[pizza("1", 1)], &[]).expect("apply");
        let order = get(&store, "1").expect("order");
        assert_eq!(order.status, Status::Failed);
        assert_eq!(order.failed[0].stage, "cheese");
        let counts = store.counts().expect("counts");
        assert_eq!((counts.in_progress, counts.failed), (0, 1));
    }

    #[test]
    fn an_order_whose_other_pizzas_were_dropped_ends_complete_listing_them() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, None);
        let dropped = |n: u32| Timed {
            change: Change::Outcome {
                order_id: "1".into(),
                key: format!("1-{n}"),
                outcome: Outcome::Dropped(DroppedPizza {
                    pizza_id: Some(format!("1-{n}")),
                    stage: "extra-only".into(),
                }),
            },
            at_ms: now(),
        };
        store
            .apply(&[open("1", 3), dropped(0), pizza("1", 1)], &[])
            .expect("apply");
        assert_eq!(get(&store, "1").map(|o| o.status), Some(Status::InProgress));
        // A drop delivered again counts once.
        store.apply(&[dropped(0), dropped(2)], &[]).expect("apply");
        let order = get(&store, "1").expect("order");
        assert_eq!(order.status, Status::Complete);
        assert_eq!((order.pizzas.len(), order.dropped.len()), (1, 2));
        assert_eq!(order.dropped[0].stage, "extra-only");
        let counts = store.counts().expect("counts");
        assert_eq!((counts.complete, counts.failed), (1, 0));
    }

    #[test]
    fn pizzas_that_arrive_before_their_order_are_kept_for_it() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, None);
        store.apply(&[pizza("7", 0)], &[]).expect("apply");
        assert!(get(&store, "7").is_none(), "no count, no order yet");
        let placed_here = store.get("7", false, Some(1)).expect("read");
        assert_eq!(placed_here.map(|o| o.status), Some(Status::Complete));
        store
            .apply(&[open("7", 1), open("7", 1)], &[])
            .expect("apply");
        assert_eq!(get(&store, "7").map(|o| o.status), Some(Status::Complete));
        assert_eq!(store.counts().expect("counts").complete, 1);
    }

    #[test]
    fn the_checkpoint_and_the_orders_outlive_the_process() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let store = store(&dir, None);
            let positions = [("orders".to_owned(), 0, 41), ("done".to_owned(), 2, 7)];
            store
                .apply(&[open("1", 1), pizza("1", 0)], &positions)
                .expect("apply");
        } // closed without a flush: the last commit was not waited for
        let store = store(&dir, None);
        let mut offsets = store.offsets().expect("offsets");
        offsets.sort();
        assert_eq!(
            offsets,
            [(("done".to_owned(), 2), 7), (("orders".to_owned(), 0), 41)]
        );
        assert_eq!(get(&store, "1").map(|o| o.status), Some(Status::Complete));
        store.clear().expect("clear");
        assert!(store.offsets().expect("offsets").is_empty());
        assert!(get(&store, "1").is_none());
        assert_eq!(store.counts().expect("counts").complete, 0);
    }

    #[test]
    fn a_batch_of_pizzas_shares_one_copy_of_each_stage_visit() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, None);
        store
            .apply(&[open("1", 2), pizza("1", 0), pizza("1", 1)], &[])
            .expect("apply");
        let visits = store
            .write(false, |t| Ok(t.visits.borrow().len()?))
            .expect("read");
        assert_eq!(visits, 1, "both pizzas carry the same visit");
    }

    #[test]
    fn a_store_of_another_layout_is_emptied_to_be_rebuilt() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let store = store(&dir, None);
            let positions = [("orders".to_owned(), 0, 41)];
            store.apply(&[open("1", 1)], &positions).expect("apply");
            store
                .write(true, |t| {
                    t.meta.borrow_mut().insert("format", FORMAT - 1)?;
                    Ok(())
                })
                .expect("older layout");
        }
        let store = store(&dir, None);
        assert!(store.offsets().expect("offsets").is_empty(), "read again");
        assert!(get(&store, "1").is_none());
        drop(store);
        let store = self::store(&dir, None);
        store.apply(&[open("2", 1)], &[]).expect("apply");
        drop(store);
        assert!(
            get(&self::store(&dir, None), "2").is_some(),
            "kept once current"
        );
    }

    #[test]
    fn a_store_in_use_refuses_a_second_host_and_says_why() {
        let dir = tempfile::tempdir().expect("dir");
        let _first = store(&dir, None);
        let second = Store::open(&dir.path().join("orders.redb"), None);
        let err = format!("{:#}", second.err().expect("refused"));
        assert!(err.contains("in use by another host"), "{err}");
    }

    #[test]
    fn the_folders_a_store_makes_are_its_users_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("prefix/instance/orders.redb");
        Store::open(&path, None).expect("store");
        for folder in ["prefix", "prefix/instance"] {
            let mode = std::fs::metadata(dir.path().join(folder))
                .expect("made")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{folder}");
        }
    }

    #[test]
    fn orders_past_their_retention_are_dropped_or_never_stored() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, Some(Duration::from_secs(3_600)));
        let two_hours_ago = now() - 2 * 3_600_000;
        let old = |mut timed: Timed| {
            timed.at_ms = two_hours_ago;
            timed
        };
        store
            .apply(&[old(open("old", 1)), open("new", 1), pizza("new", 0)], &[])
            .expect("apply");
        assert!(get(&store, "old").is_none(), "too old to be stored");
        // Stored while it was recent (the retention shortened since): dropped by a pass.
        let longer = Store {
            retention: Some(Duration::from_secs(3 * 3_600)),
            ..store
        };
        longer
            .apply(&[old(open("old", 1)), old(pizza("old", 0))], &[])
            .expect("apply");
        assert!(get(&longer, "old").is_some());
        assert_eq!(longer.drop_expired().expect("drop"), 0);
        let shorter = Store {
            retention: Some(Duration::from_secs(3_600)),
            ..longer
        };
        assert_eq!(shorter.drop_expired().expect("drop"), 1);
        assert!(get(&shorter, "old").is_none());
        assert!(get(&shorter, "new").is_some());
        assert_eq!(shorter.counts().expect("counts").complete, 1);
    }
}
