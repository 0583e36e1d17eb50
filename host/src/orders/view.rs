//! Fills the [`OrderBook`]'s store from Kafka, so orders survive a restart and any host can
//! answer for an order placed on another: order records from the orders topic, completed
//! pizzas from the completed topic, failed ones from the stages' dead-letter topics.
//!
//! Each topic is read from where the store's checkpoint says the view stopped (from its
//! beginning when the store is new or was deleted), in batches that the store applies each
//! in one transaction with the offsets after it. [`start`] returns at once; until the view
//! has caught up with what the topics held at startup, the book says it is rebuilding (and
//! `/readyz` and `GET /order` say so). The view follows the pipeline: a dead-letter topic that
//! a live edit adds (a stage added or moved) is read from its beginning as soon as the edit is
//! applied. The view watches its reader like the stages watch theirs (see [`ReaderWatch`]):
//! a reader that stops handing out records it has is replaced, so the view does not go stale.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::FutureExt as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::kafka::group::{Unfetched, stalled, unfetched};
use crate::kafka::{self, headers};
use crate::orders::book::{CompletedPizza, DroppedPizza, FailedPizza, OrderBook, Outcome};
use crate::orders::store::{Change, Store, Timed};
use crate::pipeline::plan::ViewTopics;
use crate::telemetry::events::Events;

/// How often catching up looks at the consumer's position when no record arrives.
const POSITION_CHECK: Duration = Duration::from_millis(100);
/// Most records applied in one store transaction.
const MAX_BATCH: usize = 5_000;
/// How often a rebuild logs how far it has got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often orders past their retention are dropped.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Makes the view's Kafka readers: the first, and one in place of a reader that stalled.
pub type Readers = Box<dyn Fn() -> anyhow::Result<Arc<StreamConsumer>> + Send>;

/// Assigns a reader from `readers` every partition of `topics`, from the store's checkpoint,
/// and returns the task that reads them into `book` until `shutdown`, watching the reader
/// every `stall_after` ([`kafka::group::STALL_AFTER`] outside tests).
pub async fn start(
    book: OrderBook,
    readers: Readers,
    mut follow: watch::Receiver<ViewTopics>,
    events: Events,
    shutdown: CancellationToken,
    stall_after: Duration,
) -> anyhow::Result<impl Future<Output = ()> + use<>> {
    let mut consumer = readers()?;
    let mut topics = follow.borrow_and_update().clone();
    let store = book.store().clone();
    let (assignment, behind, total) = match tokio::task::block_in_place(|| {
        plan_reads(&consumer, &topics, &store)
    })? {
        Some(plan) => plan,
        None => {
            tracing::warn!(
                "order view: a topic holds fewer records than the store has read: it was recreated; rebuilding the store from the topics"
            );
            tokio::task::block_in_place(|| store.clear())?;
            tokio::task::block_in_place(|| plan_reads(&consumer, &topics, &store))?
                .context("the order topics changed while the view started")?
        }
    };
    consumer
        .assign(&assignment)
        .context("cannot read the order topics")?;
    book.rebuild().begin(total.max(0) as u64);
    let mut catch_up = CatchUp {
        behind,
        started: Instant::now(),
        last_report: Instant::now(),
        total,
    };
    tracing::info!(
        records = total,
        "order view: reading what came after its checkpoint"
    );

    Ok(async move {
        let mut errors = kafka::ConsumerErrors::default();
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        // Until the pipeline can no longer change: a host that does not watch its file drops
        // the sender once started, and a closed channel answers `changed` at once, every time.
        let mut following = true;
        let mut watch = ReaderWatch::every(stall_after);
        // On a schedule, not only when idle: one partition can stop while others flow.
        let mut looks =
            tokio::time::interval_at(tokio::time::Instant::now() + stall_after, stall_after);
        looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        catch_up.check(&consumer, &book);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = looks.tick() => {
                    let Err(stalled) = watch.look(&consumer) else {
                        continue;
                    };
                    tracing::error!("order view: {stalled:#}; starting a new reader");
                    match tokio::task::block_in_place(|| replace_reader(&readers, &consumer, &store)) {
                        Ok(fresh) => {
                            consumer = fresh;
                            // Its positions are compared with its own looks from now on.
                            watch = ReaderWatch::every(stall_after);
                        }
                        Err(err) => tracing::error!("order view: cannot start a new reader; the stalled one stays: {err:#}"),
                    }
                }
                received = consumer.recv() => match received {
                    Ok(first) => {
                        let mut batch = Batch::default();
                        batch.add(&topics, &events, &first);
                        drop(first);
                        while batch.len() < MAX_BATCH {
                            match consumer.recv().now_or_never() {
                                Some(Ok(message)) => batch.add(&topics, &events, &message),
                                Some(Err(err)) => errors.log("order view", &err),
                                None => break,
                            }
                        }
                        if let Err(err) = batch.apply(&book) {
                            // The batch's offsets are not stored: it is read again after a
                            // restart. Going on would store later offsets past it.
                            tracing::error!("order view: cannot write to the store, so it stops following Kafka: {err:#}");
                            break;
                        }
                        catch_up.check(&consumer, &book);
                    }
                    Err(err) => errors.log("order view", &err),
                },
                _ = tokio::time::sleep(POSITION_CHECK), if !book.rebuild().is_ready() => {
                    catch_up.check(&consumer, &book);
                }
                _ = retention.tick() => {
                    match tokio::task::block_in_place(|| store.drop_expired()) {
                        Ok(0) => {}
                        Ok(dropped) => tracing::info!(dropped, "order view: dropped orders past their retention"),
                        Err(err) => tracing::warn!("order view: cannot drop old orders: {err:#}"),
                    }
                }
                changed = follow.changed(), if following => {
                    if changed.is_err() {
                        following = false;
                        continue;
                    }
                    let next = follow.borrow_and_update().clone();
                    if let Err(err) = read_new_topics(&consumer, &topics, &next) {
                        tracing::error!("order view: cannot read the pipeline's new dead-letter topics: {err:#}");
                    }
                    topics = next;
                }
            }
        }
        if let Err(err) = tokio::task::block_in_place(|| store.flush()) {
            tracing::warn!("order view: cannot flush the store on the way out: {err:#}");
        }
    })
}

/// Notices a reader that has stopped handing out records it has: the Kafka client has been
/// seen to stop fetching a partition for good after its leader moved (see the stages'
/// [`kafka::group::StallWatch`]), and a view whose reader stopped would answer `GET /order`
/// from a store that no longer moves. Every `every`, it looks at each assigned partition's
/// position (where the view is: it applies what it is handed at once) against the
/// partition's end as its leader reports it (the last stable offset: the reader is
/// `read_committed`); a partition behind its end at one look and at the same position at the
/// next has handed out nothing for that long. A look that fails (a leader away) is forgotten.
struct ReaderWatch {
    every: Duration,
    /// The partitions behind their ends at the last look.
    last: Vec<Unfetched>,
}

impl ReaderWatch {
    fn every(every: Duration) -> Self {
        Self {
            every,
            last: Vec::new(),
        }
    }

    /// Looks now; an error names the partitions that handed out nothing since the last look.
    fn look(&mut self, consumer: &StreamConsumer) -> anyhow::Result<()> {
        let now = match tokio::task::block_in_place(|| behind(consumer)) {
            Ok(now) => now,
            Err(err) => {
                tracing::debug!("order view: cannot tell whether its reader reads: {err:#}");
                self.last.clear();
                return Ok(());
            }
        };
        let stalled = stalled(&self.last, &now);
        self.last = now;
        anyhow::ensure!(
            stalled.is_empty(),
            "its reader has handed out no record of {} in {:?} although the broker holds more",
            stalled.join(", "),
            self.every
        );
        Ok(())
    }
}

/// The partitions `consumer` reads that hold records beyond its position. A partition with
/// no position yet (nothing fetched) is left out.
fn behind(consumer: &StreamConsumer) -> anyhow::Result<Vec<Unfetched>> {
    let positions = consumer
        .position()?
        .elements()
        .iter()
        .filter_map(|partition| match partition.offset() {
            Offset::Offset(at) => Some(((partition.topic().to_owned(), partition.partition()), at)),
            _ => None,
        })
        .collect();
    unfetched(consumer, &positions)
}

/// A new reader from `readers`, assigned what `stalled` reads, each partition from the store's
/// checkpoint (everything the stalled reader handed out is applied: the view applies a batch
/// before it asks for more).
fn replace_reader(
    readers: &Readers,
    stalled: &StreamConsumer,
    store: &Store,
) -> anyhow::Result<Arc<StreamConsumer>> {
    let checkpoint: HashMap<(String, i32), i64> = store.offsets()?.into_iter().collect();
    let fresh = readers()?;
    let mut assignment = TopicPartitionList::new();
    for partition in stalled.assignment()?.elements() {
        let (topic, id) = (partition.topic(), partition.partition());
        let (low, _) = kafka::watermarks(&*fresh, topic, id)?;
        let (_, from) = resume_at(checkpoint.get(&(topic.to_owned(), id)).copied(), low);
        assignment.add_partition_offset(topic, id, from)?;
    }
    fresh
        .assign(&assignment)
        .context("cannot assign the new reader")?;
    Ok(fresh)
}

/// Where the view reads a partition whose records begin at `low`: right after the store's
/// `checkpoint` of it, or from its beginning where there is none or retention deleted what
/// followed it (an offset out of range would be reset to the end, skipping records). The
/// offset, and how the reader is assigned it.
fn resume_at(checkpoint: Option<i64>, low: i64) -> (i64, Offset) {
    match checkpoint {
        Some(next) if next > low => (next, Offset::Offset(next)),
        _ => (low, Offset::Beginning),
    }
}

/// Where to read each partition of the view's topics from, and where each that is behind
/// ended at startup; `None` if a partition ends before the store's checkpoint (the topic was
/// recreated since).
fn plan_reads(
    consumer: &StreamConsumer,
    topics: &ViewTopics,
    store: &Store,
) -> anyhow::Result<Option<Reads>> {
    let checkpoint: HashMap<(String, i32), i64> = store.offsets()?.into_iter().collect();
    let mut assignment = TopicPartitionList::new();
    // Where each partition that is behind ended at startup.
    let mut behind: HashMap<(String, i32), i64> = HashMap::new();
    let mut total = 0;
    let all = [&topics.orders, &topics.completed, &topics.dropped]
        .into_iter()
        .chain(&topics.dead_letters);
    for topic in all {
        for id in kafka::partitions(consumer.client(), topic)? {
            let (low, high) = kafka::watermarks(consumer, topic, id)?;
            let next = checkpoint.get(&(topic.clone(), id)).copied();
            if next.is_some_and(|next| next > high) {
                return Ok(None);
            }
            let (from, offset) = resume_at(next, low);
            if high > from {
                behind.insert((topic.clone(), id), high);
                total += high - from;
            }
            assignment.add_partition_offset(topic, id, offset)?;
        }
    }
    Ok(Some((assignment, behind, total)))
}

/// What [`plan_reads`] finds: the assignment, the startup end of each partition that is
/// behind, and how many offsets they are behind in all.
type Reads = (TopicPartitionList, HashMap<(String, i32), i64>, i64);

/// Tells the book when the view has read what the topics held at startup.
struct CatchUp {
    /// Partitions not read to their startup end yet → that end.
    behind: HashMap<(String, i32), i64>,
    started: Instant,
    last_report: Instant,
    total: i64,
}

impl CatchUp {
    fn check(&mut self, consumer: &StreamConsumer, book: &OrderBook) {
        if book.rebuild().is_ready() {
            return;
        }
        // Caught up once the consumer's position passed each end: counting records would
        // not do, since transaction markers take offsets too.
        let Ok(positions) = consumer.position() else {
            return;
        };
        self.behind.retain(|(topic, partition), end| {
            let at = positions
                .find_partition(topic, *partition)
                .map(|e| e.offset());
            !matches!(at, Some(Offset::Offset(at)) if at >= *end)
        });
        let left = self.behind.len();
        let state = book.rebuild().state();
        if left == 0 {
            book.rebuild().finish();
            tracing::info!(
                records = state.applied,
                ms = self.started.elapsed().as_millis() as u64,
                "order view caught up"
            );
        } else if self.last_report.elapsed() >= PROGRESS_EVERY {
            self.last_report = Instant::now();
            tracing::info!(
                applied = state.applied,
                of = self.total,
                partitions_left = left,
                "order view: rebuilding"
            );
        }
    }
}
/// Adds the dead-letter topics that `next` has and `current` has not to what `consumer`
/// reads, from their beginning; the partitions it reads already keep their positions.
fn read_new_topics(
    consumer: &StreamConsumer,
    current: &ViewTopics,
    next: &ViewTopics,
) -> anyhow::Result<()> {
    let added: Vec<&String> = next
        .dead_letters
        .difference(&current.dead_letters)
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    for topic in added {
        for id in tokio::task::block_in_place(|| kafka::partitions(consumer.client(), topic))? {
            assignment.add_partition_offset(topic, id, Offset::Beginning)?;
        }
        tracing::info!(topic, "order view: reading a new dead-letter topic");
    }
    consumer
        .incremental_assign(&assignment)
        .context("cannot add the new dead-letter topics")?;
    Ok(())
}

/// Records read together, applied to the store in one transaction.
#[derive(Default)]
struct Batch {
    changes: Vec<Timed>,
    /// (topic, partition) → the offset after the last record read.
    positions: HashMap<(String, i32), i64>,
    records: u64,
}

impl Batch {
    fn len(&self) -> usize {
        self.records as usize
    }

    /// Adds what one record of any of the view's topics says (and tells who follows the
    /// order live).
    fn add(&mut self, topics: &ViewTopics, events: &Events, message: &BorrowedMessage<'_>) {
        self.records += 1;
        self.positions.insert(
            (message.topic().to_owned(), message.partition()),
            message.offset() + 1,
        );
        if let Some(change) = change_of(topics, events, message) {
            let at_ms = message
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or_else(now_ms);
            self.changes.push(Timed { change, at_ms });
        }
    }

    /// Writes the batch to the store, with the offsets after it.
    fn apply(self, book: &OrderBook) -> anyhow::Result<()> {
        let positions: Vec<(String, i32, i64)> = self
            .positions
            .into_iter()
            .map(|((topic, partition), next)| (topic, partition, next))
            .collect();
        let opened = tokio::task::block_in_place(|| book.store().apply(&self.changes, &positions))?;
        book.read_back(&opened);
        if !book.rebuild().is_ready() {
            book.rebuild().applied(self.records);
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one record of any of the view's topics says about an order, if anything.
fn change_of(
    topics: &ViewTopics,
    events: &Events,
    message: &BorrowedMessage<'_>,
) -> Option<Change> {
    let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
    // A pizza without an id is told apart by where its record is.
    let at = || {
        format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        )
    };
    if message.topic() == topics.completed {
        let visits = message
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .filter(|h| h.key == headers::TRAIL)
            .filter_map(|h| h.value);
        let Some(pizza) = message
            .payload()
            .and_then(|p| CompletedPizza::parse(p, visits))
        else {
            tracing::warn!(
                topic = message.topic(),
                offset = message.offset(),
                "order view: completed record is not a JSON object"
            );
            return None;
        };
        let Some(order_id) = key.or(pizza.order_id()).map(str::to_owned) else {
            no_order_id(message);
            return None;
        };
        events.publish_for_order(
            &order_id,
            || json!({"type": "complete", "pizza": pizza.to_value()}),
        );
        return Some(Change::Outcome {
            key: pizza.pizza_id().map_or_else(at, str::to_owned),
            order_id,
            outcome: Outcome::Completed(pizza),
        });
    }
    let json: Option<Map<String, Value>> = message
        .payload()
        .and_then(|p| serde_json::from_slice(p).ok());
    let order_id = key
        .map(str::to_owned)
        .or_else(|| json.as_ref()?.get("order_id")?.as_str().map(str::to_owned));
    let Some(order_id) = order_id else {
        no_order_id(message);
        return None;
    };
    if message.topic() == topics.orders {
        let count = json
            .as_ref()
            .and_then(|j| j.get("count")?.as_u64())
            .and_then(|c| u32::try_from(c).ok());
        let Some(count) = count else {
            tracing::warn!(order_id, "order view: order record without a count");
            return None;
        };
        return Some(Change::Open { order_id, count });
    }
    let header = |name: &str| {
        message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let pizza_id = json
        .as_ref()
        .and_then(|j| j.get("pizza_id")?.as_str().map(str::to_owned));
    if message.topic() == topics.dropped {
        let dropped = DroppedPizza {
            pizza_id,
            stage: header(headers::STAGE),
        };
        events.publish_for_order(
            &order_id,
            || json!({"type": "dropped", "order_id": order_id, "dropped": dropped}),
        );
        return Some(Change::Outcome {
            key: dropped.pizza_id.clone().unwrap_or_else(at),
            order_id,
            outcome: Outcome::Dropped(dropped),
        });
    }
    let failed = FailedPizza {
        pizza_id,
        stage: header(headers::STAGE),
        kind: header(headers::ERROR_KIND),
        error: header(headers::ERROR),
    };
    events.publish_for_order(
        &order_id,
        || json!({"type": "failed", "order_id": order_id, "failure": failed}),
    );
    Some(Change::Outcome {
        key: failed.pizza_id.clone().unwrap_or_else(at),
        order_id,
        outcome: Outcome::Failed(failed),
    })
}

fn no_order_id(message: &BorrowedMessage<'_>) {
    tracing::debug!(
        topic = message.topic(),
        offset = message.offset(),
        "order view: record without an order id"
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, PoisonError};

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::FutureRecord;

    use super::*;
    use crate::kafka::KafkaSettings;

    /// A view whose reader stops handing out records (here: a partition paused, which to the
    /// watch looks like a fetcher that stopped) gets a new reader, from the store's
    /// checkpoint, and goes on: an order written after the stall is read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_view_whose_reader_stalls_starts_a_new_one_and_goes_on() -> anyhow::Result<()> {
        const SOON: Duration = Duration::from_secs(20);
        let cluster = MockCluster::new(1)?;
        let topics = ViewTopics {
            orders: "orders".into(),
            completed: "completed".into(),
            dropped: "dropped".into(),
            dead_letters: Default::default(),
        };
        for topic in [&topics.orders, &topics.completed, &topics.dropped] {
            cluster.create_topic(topic, 1, 1)?;
        }
        let settings = KafkaSettings::new(BTreeMap::from([(
            "bootstrap.servers".to_owned(),
            cluster.bootstrap_servers(),
        )]));
        let producer = settings.producer()?;
        let order = |id: &'static str| {
            let producer = producer.clone();
            async move {
                let value = crate::orders::publisher::order_record(id, 1);
                let record = FutureRecord::<str, str>::to("orders")
                    .key(id)
                    .payload(&value);
                producer.send(record, SOON).await.map_err(|(err, _)| err)?;
                anyhow::Ok(())
            }
        };
        let dir = tempfile::tempdir()?;
        let book = OrderBook::new(Store::open(&dir.path().join("orders.db"), None)?);
        let read = |id: &'static str| {
            let book = book.clone();
            async move {
                let deadline = Instant::now() + SOON;
                while book.store().get(id, false, None)?.is_none() {
                    anyhow::ensure!(Instant::now() < deadline, "order {id} not read in {SOON:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::Ok(())
            }
        };

        let first: Arc<StreamConsumer> = Arc::new(settings.reader("view")?);
        let handed = Mutex::new(Some(first.clone()));
        let reader_settings = settings.clone();
        let readers: Readers =
            Box::new(
                move || match handed.lock().unwrap_or_else(PoisonError::into_inner).take() {
                    Some(first) => Ok(first),
                    None => Ok(Arc::new(reader_settings.reader("view")?)),
                },
            );
        let (_follow, following) = watch::channel(topics);
        let shutdown = CancellationToken::new();
        let view = start(
            book.clone(),
            readers,
            following,
            Events::default(),
            shutdown.clone(),
            Duration::from_millis(300),
        )
        .await?;
        let view = tokio::spawn(view);

        order("1").await?;
        read("1").await?;
        let mut orders = TopicPartitionList::new();
        orders.add_partition("orders", 0);
        first.pause(&orders)?;
        order("2").await?;
        read("2").await?;
        shutdown.cancel();
        view.await?;
        Ok(())
    }
}
