//! A join (fan-in, `[[join]]` in `pipeline.toml`): stages that all consume `pizza` each make one
//! part of a pizza on their own topic; the join assembles the parts of each pizza (by its
//! `pizza_id`) into the completed pizza, in the chain's JSON shape, on the output topic.
//!
//! # Exactly once, and durable
//! Parts waiting for their siblings are kept in memory per input partition and, in the same
//! Kafka transaction as the input offsets and the assembled pizzas, on a compacted changelog
//! topic partitioned like the inputs (key: the pizza id; a tombstone once it is assembled or
//! given up on). A host that takes over a partition (after a restart or a rebalance) first
//! reads that partition of the changelog, so it holds exactly the parts the committed offsets
//! have passed: nothing is lost or assembled twice.
//!
//! The inputs must be co-partitioned (same partition count, order id as the key, as the stages
//! keep it), and the join's consumer gets partition `p` of every input together.
//!
//! # Bounded
//! A pizza whose parts have not all arrived `expire_after_ms` after the first one is given up
//! on: what arrived goes, merged, to the dead-letter topic (so the order view shows the pizza as
//! failed), and its parts are dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::JoinConfig;
use crate::kafka::headers;
use crate::kafka::transaction::{self, Idle, TXN_TIMEOUT, Transaction, TransactionalWork};
use crate::kafka::{GroupConsumer, GroupState, KafkaSettings};
use crate::pipeline::plan::JoinRoute;
use crate::pipeline::supervisor::supervise;

/// How often waiting parts are checked for expiry when no record arrives.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// The parts of one pizza that have arrived, as kept in memory and on the changelog.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Waiting {
    /// When the first part arrived here (this host's clock, ms since the epoch): the
    /// producer's timestamp would make a skewed clock expire every pizza, or none.
    first_ms: i64,
    /// The parts' record key (the order id).
    key: Option<String>,
    /// Input topic → the part from it.
    parts: BTreeMap<String, Value>,
}

/// Starts every join of `joins` on `tasks` (their topics exist); they stop when `shutdown` is
/// cancelled.
pub fn start(
    joins: &[JoinRoute],
    kafka: &KafkaSettings,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    for route in joins {
        let join = &route.config;
        tracing::info!(join = join.name, inputs = ?join.inputs, output = join.output, "join started");
        let (route, kafka, stop) = (route.clone(), kafka.clone(), shutdown.clone());
        tasks.spawn(async move {
            let name = format!("join {}", route.config.name);
            supervise(&name, &stop, || run(&route, &kafka, &stop)).await;
            tracing::info!(join = route.config.name, "join stopped and committed");
        });
    }
}

/// Refuses a join whose inputs would differ in partition count (those that exist as they are,
/// the missing ones as the host will create them, with `partitions`): its consumer reads
/// partition `p` of every input together, so the parts of one pizza would otherwise never meet.
pub fn check_co_partitioned(
    joins: &[JoinConfig],
    partitions: i32,
    kafka: &KafkaSettings,
) -> anyhow::Result<()> {
    if joins.is_empty() {
        return Ok(());
    }
    let admin = kafka.admin()?;
    let metadata = tokio::task::block_in_place(|| {
        admin
            .inner()
            .fetch_metadata(None, crate::kafka::ADMIN_TIMEOUT)
    })
    .context("cannot read the partition counts of the joins' inputs")?;
    let existing: HashMap<&str, usize> = metadata
        .topics()
        .iter()
        .map(|topic| (topic.name(), topic.partitions().len()))
        .collect();
    for join in joins {
        let counts: Vec<(&str, usize)> = join
            .inputs
            .iter()
            .map(|topic| {
                let count = existing
                    .get(topic.as_str())
                    .copied()
                    .unwrap_or(usize::try_from(partitions).unwrap_or_default());
                (topic.as_str(), count)
            })
            .collect();
        if counts.iter().any(|&(_, n)| n != counts[0].1) {
            let listed: Vec<String> = counts
                .iter()
                .map(|(topic, n)| format!("{topic} has {n}"))
                .collect();
            anyhow::bail!(
                "join {}: its inputs must have the same number of partitions (be \
                 co-partitioned), but {}",
                join.name,
                listed.join(", ")
            );
        }
    }
    Ok(())
}

/// The join's state: waiting parts per input partition it holds.
struct Assembly<'a> {
    route: &'a JoinRoute,
    kafka: &'a KafkaSettings,
    group: Arc<GroupState>,
    /// The assignment the partitions below were loaded under.
    loaded_under: u64,
    waiting: HashMap<i32, HashMap<String, Waiting>>,
}

async fn run(
    route: &JoinRoute,
    kafka: &KafkaSettings,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let group = Arc::new(GroupState::default());
    let consumer = kafka.co_partitioned_consumer(&route.group, group.clone())?;
    let producer = kafka.transactional_producer(&route.transactional_id)?;
    tokio::task::block_in_place(|| producer.init_transactions(TXN_TIMEOUT))
        .with_context(|| format!("cannot start transactions as {}", route.transactional_id))?;
    let inputs: Vec<&str> = route.config.inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&inputs)?;
    let mut assembly = Assembly {
        route,
        kafka,
        group,
        loaded_under: 0,
        waiting: HashMap::new(),
    };
    let name = format!("join {}", route.config.name);
    transaction::run(
        &name,
        &consumer,
        &producer,
        kafka.transaction_timeout(),
        stop,
        EXPIRY_CHECK,
        &mut assembly,
    )
    .await?;
    crate::kafka::leave(&consumer, &assembly.group).await;
    Ok(())
}

impl TransactionalWork for Assembly<'_> {
    fn begin(&mut self) {
        self.forget_if_reassigned();
    }

    async fn process(
        &mut self,
        txn: &mut Transaction<'_>,
        records: &[BorrowedMessage<'_>],
        _deadline: tokio::time::Instant,
    ) -> anyhow::Result<usize> {
        // A part takes no time worth bounding: no component is called.
        for message in records {
            self.take(txn, message).await?;
        }
        Ok(records.len())
    }

    /// Every transaction gives up on the pizzas that waited too long.
    async fn finish(&mut self, txn: &mut Transaction<'_>) -> anyhow::Result<()> {
        self.expire(txn).await
    }

    /// Parts restored after a restart expire too, even if no record comes.
    fn idle(&mut self, _consumer: &GroupConsumer) -> anyhow::Result<Idle> {
        self.load_assigned()?;
        Ok(if self.any_expired() {
            Idle::Transact
        } else {
            Idle::Wait
        })
    }

    /// The transaction's changes to the waiting parts are void: they are read again.
    fn aborted(&mut self) {
        self.waiting.clear();
    }
}

impl Assembly<'_> {
    /// Partitions may have changed hands since the last look: what is held of them may be
    /// stale, so it is read again from the changelog when next needed.
    fn forget_if_reassigned(&mut self) {
        let assignments = self.group.assignments();
        if assignments != self.loaded_under {
            self.waiting.clear();
            self.loaded_under = assignments;
        }
    }

    /// Reads what waits in every assigned partition that is not loaded yet.
    fn load_assigned(&mut self) -> anyhow::Result<()> {
        self.forget_if_reassigned();
        for partition in self.group.partitions().into_keys() {
            self.load(partition)?;
        }
        Ok(())
    }

    /// Takes one part: keeps it, or assembles the pizza if it was the last one missing.
    async fn take(
        &mut self,
        txn: &mut Transaction<'_>,
        message: &BorrowedMessage<'_>,
    ) -> anyhow::Result<()> {
        let partition = message.partition();
        self.load(partition)?;
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let part: Option<Map<String, Value>> = message
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok());
        let id_field = &self.route.config.key;
        let Some((id, part)) = part.and_then(|p| Some((p.get(id_field)?.as_str()?.to_owned(), p)))
        else {
            let why = format!("not a JSON object with a string {id_field:?}");
            let payload = message.payload().unwrap_or_default().to_vec();
            return self
                .dead_letter(txn, key.as_deref(), &payload, "invalid-input", &why)
                .await;
        };
        let arrived = now_ms();
        let waiting = self.waiting.entry(partition).or_default();
        let entry = waiting.entry(id.clone()).or_insert_with(|| Waiting {
            first_ms: arrived,
            key: key.clone(),
            parts: BTreeMap::new(),
        });
        entry
            .parts
            .insert(message.topic().to_owned(), Value::Object(part));
        if entry.parts.len() < self.route.config.inputs.len() {
            let saved = serde_json::to_vec(entry)?;
            return self.send_changelog(txn, partition, &id, Some(&saved)).await;
        }
        let Some(whole) = waiting.remove(&id) else {
            return Ok(());
        };
        let pizza = merge(&self.route.config.inputs, &whole.parts).to_string();
        let mut record = FutureRecord::to(&self.route.config.output).payload(pizza.as_bytes());
        if let Some(key) = &whole.key {
            record = record.key(key.as_str());
        }
        txn.send(record).await?;
        self.send_changelog(txn, partition, &id, None).await
    }

    fn expire_limit_ms(&self) -> i64 {
        i64::try_from(self.route.config.expire_after_ms).unwrap_or(i64::MAX)
    }

    /// True if some pizza waits longer than it may (so an expiry needs a transaction).
    fn any_expired(&self) -> bool {
        let (limit, now) = (self.expire_limit_ms(), now_ms());
        self.waiting
            .values()
            .flat_map(HashMap::values)
            .any(|whole| now - whole.first_ms >= limit)
    }

    /// Gives up on pizzas whose parts did not all arrive in time.
    async fn expire(&mut self, txn: &mut Transaction<'_>) -> anyhow::Result<()> {
        let (limit, now) = (self.expire_limit_ms(), now_ms());
        let mut expired = Vec::new();
        for (&partition, waiting) in &mut self.waiting {
            waiting.retain(|id, whole| {
                let keep = now - whole.first_ms < limit;
                if !keep {
                    expired.push((partition, id.clone(), whole.clone()));
                }
                keep
            });
        }
        for (partition, id, whole) in expired {
            let arrived: Vec<&str> = whole.parts.keys().map(String::as_str).collect();
            let why = format!(
                "only {} of {} parts arrived within {} ms (from {})",
                whole.parts.len(),
                self.route.config.inputs.len(),
                limit,
                arrived.join(", ")
            );
            tracing::warn!(join = self.route.config.name, pizza_id = id, "{why}");
            let partial = merge(&self.route.config.inputs, &whole.parts).to_string();
            self.dead_letter(
                txn,
                whole.key.as_deref(),
                partial.as_bytes(),
                "join-expired",
                &why,
            )
            .await?;
            self.send_changelog(txn, partition, &id, None).await?;
        }
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        txn: &mut Transaction<'_>,
        key: Option<&str>,
        payload: &[u8],
        kind: &str,
        why: &str,
    ) -> anyhow::Result<()> {
        let headers = headers::append(
            OwnedHeaders::new(),
            &[
                (headers::STAGE, self.route.config.name.as_str()),
                (headers::ERROR_KIND, kind),
                (headers::ERROR, why),
            ],
        );
        let mut record = FutureRecord::to(&self.route.dead_letter)
            .payload(payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        txn.send(record).await
    }

    async fn send_changelog(
        &mut self,
        txn: &mut Transaction<'_>,
        partition: i32,
        id: &str,
        value: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let mut record = FutureRecord::<str, [u8]>::to(self.route.config.changelog_topic())
            .partition(partition)
            .key(id);
        if let Some(value) = value {
            record = record.payload(value);
        }
        txn.send(record).await
    }

    /// Reads what waits in `partition` from the changelog, unless it is loaded already.
    fn load(&mut self, partition: i32) -> anyhow::Result<()> {
        if self.waiting.contains_key(&partition) {
            return Ok(());
        }
        let topic = self.route.config.changelog_topic();
        let restored = tokio::task::block_in_place(|| restore(self.kafka, topic, partition))
            .with_context(|| {
                format!("cannot read the waiting parts of partition {partition} from {topic}")
            })?;
        tracing::debug!(
            join = self.route.config.name,
            partition,
            waiting = restored.len(),
            "waiting parts restored"
        );
        self.waiting.insert(partition, restored);
        Ok(())
    }
}

/// The assembled pizza: the first input's part, with every field another part sets (a
/// non-empty value where the first has none) filled in, in input order.
fn merge(inputs: &[String], parts: &BTreeMap<String, Value>) -> Value {
    let mut whole = Map::new();
    for part in inputs.iter().filter_map(|input| parts.get(input)) {
        for (field, value) in part.as_object().into_iter().flatten() {
            let unset = |v: &Value| v.is_null() || v.as_str() == Some("");
            let take = whole
                .get(field)
                .is_none_or(|have| unset(have) && !unset(value));
            if take {
                whole.insert(field.clone(), value.clone());
            }
        }
    }
    Value::Object(whole)
}

/// Blocking: the parts waiting in `partition` of the changelog `topic`, read to its end.
fn restore(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
) -> anyhow::Result<HashMap<String, Waiting>> {
    let mut waiting = HashMap::new();
    let reader = format!("join-restore-{topic}");
    kafka.read_to_end(&reader, topic, Some(partition), |message| {
        let Some(id) = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
        else {
            return;
        };
        match message.payload().map(serde_json::from_slice::<Waiting>) {
            Some(Ok(parts)) => {
                waiting.insert(id, parts);
            }
            Some(Err(err)) => {
                tracing::warn!(topic, partition, "unreadable waiting parts skipped: {err}")
            }
            None => {
                waiting.remove(&id);
            }
        }
    })?;
    Ok(waiting)
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merging_takes_each_field_from_the_part_that_set_it() {
        let inputs: Vec<String> = ["s", "c", "m", "v"].map(String::from).to_vec();
        let blank = json!({"order_id": "1", "pizza_id": "1-0", "sauce": "", "cheese": "", "meats": "", "veggies": ""});
        let mut parts = BTreeMap::new();
        for (input, field, value) in [
            ("s", "sauce", "bbq"),
            ("c", "cheese", "extra"),
            ("m", "meats", "ham"),
            ("v", "veggies", "olives"),
        ] {
            let mut part = blank.clone();
            part[field] = json!(value);
            parts.insert(input.to_owned(), part);
        }
        assert_eq!(
            merge(&inputs, &parts),
            json!({"order_id": "1", "pizza_id": "1-0", "sauce": "bbq", "cheese": "extra", "meats": "ham", "veggies": "olives"})
        );
        parts.remove("m");
        assert_eq!(
            merge(&inputs, &parts)["meats"],
            "",
            "a missing part leaves its field unset"
        );
    }
}
