//! Kafka transactions as the host drives them (rust-rdkafka's transactional example, KIP-447
//! fencing), written once for every transactional worker: the stages under exactly-once and
//! the joins.
//!
//! [`run`] takes records in batches (those at hand, up to [`MAX_BATCH`] records or
//! [`BATCH_WINDOW`]; while the input is busy, at most one batch every [`BUSY_SPACING`]; a
//! worker is handed those already at hand in chunks of up to [`CHUNK`]),
//! and commits each batch's outputs together with its input offsets in one transaction, so
//! `read_committed` readers downstream see every result exactly once. If anything in a batch
//! fails, the transaction is aborted and the worker ends with the error; its supervisor starts
//! it again from the last committed offsets. What a worker does with records is its
//! [`TransactionalWork`].
//!
//! # Pipelined
//! A commit waits on the broker (the batch's acknowledgements, the offsets, the commit
//! markers) while the worker would sit idle, so it runs on a blocking thread while the next
//! batch's first records are taken and [prepared](TransactionalWork::prepare) (a stage calls
//! its component on them). They are sent in the next transaction, which begins once the
//! commit is done: one producer, transactions still one after the other, each committed only
//! once everything in it is acknowledged.
//!
//! # Under one assignment
//! A batch counts only if the consumer's partitions did not change hands while it was filled:
//! a rebalance (eager: everything revoked, then assigned) sends the consumer back to the
//! committed offsets, so records already in the batch could come again, or belong to another
//! member by now, and the commit would carry the new generation's group metadata, which the
//! broker accepts. Such a batch is aborted and the worker ends with the error: it starts
//! again from the committed offsets, on whatever partitions it then holds.
//!
//! # Bounded in time
//! The broker aborts a transaction left open longer than the producer's
//! `transaction.timeout.ms`; a batch that always takes longer would be redone forever. So a
//! batch has a deadline, [`BUDGET_SHARE`] of that timeout after it began (the rest is for the
//! commit), and a worker hands back the records it could not finish by then: they open the
//! next batch.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message, ToBytes};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::group::{ConsumerErrors, GroupConsumer, STALL_AFTER, StallWatch, take_ready};

/// Most records in one transaction.
pub const MAX_BATCH: usize = 1_000;
/// Most records handed to a worker at once (those the consumer already holds).
pub const CHUNK: usize = 100;
/// A batch ends once no further record is at hand (a lone record does not wait for company:
/// a 2 ms wait for one was a third of each hop of a lone pizza), or when it has been open
/// this long (records keep coming).
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// While the input is busy (the last batch held more than one record and committed less than
/// this long ago), batches begin at most this often: a batch stays open this long from its
/// beginning, however long the gaps between its records. (Measured from the one before's
/// beginning instead, every other batch began right after that one's commit and closed at
/// once: half the transactions held only what arrived during a commit.) Records that arrive
/// in bursts (an upstream commit makes a whole transaction visible at once) then share a
/// transaction instead of each burst paying for one, and a transaction's cost is mostly the
/// broker's (registering partitions, the offsets, the end, a marker on every partition it
/// touched). A lone record on a quiet input does not wait.
pub const BUSY_SPACING: Duration = Duration::from_millis(50);
/// How long a transaction call may take.
pub const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// The share of the transaction timeout a batch may fill; the rest covers its commit
/// (acknowledgements, offsets, commit markers) on a slow broker.
pub const BUDGET_SHARE: f64 = 0.5;
/// How long adding a batch's input offsets to its transaction may take. Shorter than
/// [`TXN_TIMEOUT`] because the Kafka client does not keep its own timeout for this call
/// (librdkafka issue 5456) and, after a broker left, can wait forever on a group coordinator
/// it still believes in (issue 5511): the host's watch, not the client's, ends the wait.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than its own timeout a step of the commit may take before it is taken
/// for stuck.
const STEP_GRACE: Duration = Duration::from_secs(5);

/// The open transaction: what was sent in it, which its commit waits for.
pub struct Transaction<'p> {
    producer: &'p FutureProducer,
    sent: Vec<DeliveryFuture>,
}

impl<'p> Transaction<'p> {
    /// The producer whose transaction this is.
    pub fn producer(&self) -> &'p FutureProducer {
        self.producer
    }

    /// Sends `record` in the transaction.
    pub async fn send<K, P>(&mut self, record: FutureRecord<'_, K, P>) -> anyhow::Result<()>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.sent.push(super::send(self.producer, record).await?);
        Ok(())
    }

    /// Counts deliveries of records sent on the producer directly as part of the transaction.
    pub fn include(&mut self, deliveries: impl IntoIterator<Item = DeliveryFuture>) {
        self.sent.extend(deliveries);
    }

    /// True while nothing has been sent in the transaction: the broker has not started its
    /// clock on it yet (it does at the first record), so waiting costs it nothing.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

/// What a worker wants when no record has arrived for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Keep waiting for records.
    Wait,
    /// Run a transaction with no input now (see [`TransactionalWork::finish`]).
    Transact,
    /// Stop: the worker is done (a drained stage).
    Stop,
}

/// What a transactional worker does with its records.
pub trait TransactionalWork {
    /// A transaction begins.
    fn begin(&mut self) {}

    /// Processes `records` (in input order, inside the open transaction) and says how many it
    /// handled: all of them, or as many as it could before `deadline` (at least the first
    /// while the transaction [is empty](Transaction::is_empty)). The rest open the next
    /// transaction.
    fn process(
        &mut self,
        txn: &mut Transaction<'_>,
        records: &[BorrowedMessage<'_>],
        deadline: Instant,
    ) -> impl Future<Output = anyhow::Result<usize>> + Send;

    /// Last work of a transaction before it commits (also the whole of a transaction that
    /// [`Idle::Transact`] asked for).
    fn finish(
        &mut self,
        txn: &mut Transaction<'_>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// No record arrived within the idle period: what now.
    fn idle(&mut self, consumer: &GroupConsumer) -> anyhow::Result<Idle>;

    /// While the previous transaction commits: the next batch's first `records`, taken
    /// meanwhile, for the work that needs no transaction (a stage calls its component on
    /// them). They are then handed to [`process`](Self::process) as usual, unless their
    /// partitions changed hands in between (they are read again then).
    fn prepare(&mut self, _records: &[BorrowedMessage<'_>]) {}

    /// The transaction was aborted: whatever the worker built inside it is void.
    fn aborted(&mut self) {}

    /// How long the consumer may hold records it does not hand out, while the loop waits
    /// for records, before it is taken for stalled (see [`StallWatch`]).
    fn stall_after(&self) -> Duration {
        STALL_AFTER
    }
}

/// Runs `work` on `consumer`'s records in transactions of `producer` (whose transactions are
/// initialised, with `transaction_timeout`) until `stop` or until the work says
/// [`Idle::Stop`]; asks the work what to do every `idle_every` without records. Stopping
/// happens between transactions.
pub async fn run<W: TransactionalWork>(
    name: &str,
    consumer: &GroupConsumer,
    producer: &FutureProducer,
    transaction_timeout: Duration,
    stop: &CancellationToken,
    idle_every: Duration,
    work: &mut W,
) -> anyhow::Result<()> {
    let budget = transaction_timeout.mul_f64(BUDGET_SHARE);
    let mut idle = tokio::time::interval(idle_every);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut errors = ConsumerErrors::default();
    let mut stall = StallWatch::every(work.stall_after());
    // Records taken from the consumer that the last batch had no time for, or taken while it
    // committed: they open the next.
    let mut carried: Vec<BorrowedMessage<'_>> = Vec::new();
    // The consumer's assignment count when `carried` was taken.
    let mut carried_under = 0;
    // When the last batch finished committing, if it held more than one record: the input
    // counts as busy for [`BUSY_SPACING`] after that (see [`paced`]).
    let mut busy_at: Option<Instant> = None;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        errors.check_fatal()?;
        // Partitions that changed hands start again from their committed offsets (eager
        // rebalancing): what was taken of them before is read again, by whoever holds them.
        if !carried.is_empty() && consumer.context().assignments() != carried_under {
            carried.clear();
        }
        // The first record opens a batch, under the assignment of the moment.
        let mut batch_under = carried_under;
        let first = if !carried.is_empty() {
            None
        } else {
            consumer.context().doing("waiting for records");
            tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            received = consumer.recv() => match received {
                Ok(message) => {
                    batch_under = consumer.context().assignments();
                    Some(message)
                }
                Err(err) => {
                    errors.log(name, &err);
                    continue;
                }
            },
            _ = idle.tick() => match stall.check(consumer).and_then(|()| work.idle(consumer))? {
                Idle::Wait => continue,
                Idle::Stop => return Ok(()),
                Idle::Transact => None,
            },
            }
        };
        let mut txn = Transaction {
            producer,
            sent: Vec::new(),
        };
        work.begin();
        consumer.context().doing("processing a batch");
        tokio::task::block_in_place(|| producer.begin_transaction())
            .context("cannot begin a transaction")?;
        let began = Instant::now();
        let deadline = began + budget;
        let stay_open_until = paced(busy_at.take(), began);
        let mut taken = 0;
        let mut offsets = Offsets::default();
        let filled = async {
            let ready = match first {
                Some(first) => take_ready(consumer, first, CHUNK, &mut errors, name),
                None => std::mem::take(&mut carried),
            };
            if !ready.is_empty() {
                let batch = Batch {
                    consumer,
                    deadline,
                    stay_open_until,
                    offsets: &mut offsets,
                    errors: &mut errors,
                };
                (carried, taken) = batch.fill(name, ready, work, &mut txn).await?;
                // Taken under the assignment of now, as far as this batch is concerned.
                carried_under = consumer.context().assignments();
            }
            work.finish(&mut txn).await
        }
        .await;
        // Partitions that changed hands during the batch (a rebalance served while it took
        // records) make it void: its records may be another member's by now, or be taken
        // again from the committed offsets into this very batch, and the group metadata the
        // commit would carry is the new generation's, so the broker would not refuse it.
        let filled = filled.and_then(|()| {
            let moved = consumer.context().assignments() != batch_under;
            anyhow::ensure!(
                offsets.0.is_empty() || !moved,
                "the consumer's partitions changed hands during the batch"
            );
            Ok(())
        });
        let committed = match filled {
            Ok(()) => {
                let sent = std::mem::take(&mut txn.sent);
                let mut commit =
                    std::pin::pin!(commit_in_background(consumer, producer, &offsets, sent));
                // While it commits, the next batch's first records are taken and prepared.
                let mut finished = None;
                if carried.is_empty() {
                    tokio::select! {
                        biased;
                        done = &mut commit => finished = Some(done),
                        _ = stop.cancelled() => {}
                        received = consumer.recv() => match received {
                            Ok(message) => {
                                // Before taking the rest: a rebalance meanwhile drops them.
                                carried_under = consumer.context().assignments();
                                carried = take_ready(consumer, message, CHUNK, &mut errors, name);
                                work.prepare(&carried);
                            }
                            Err(err) => errors.log(name, &err),
                        },
                    }
                }
                match finished {
                    Some(done) => done,
                    None => commit.await,
                }
            }
            Err(err) => Err(err),
        };
        if let Err(err) = committed {
            consumer.context().doing("aborting");
            if let Err(abort) =
                tokio::task::block_in_place(|| producer.abort_transaction(TXN_TIMEOUT))
            {
                tracing::warn!(worker = name, "abort failed too: {abort}");
            }
            work.aborted();
            return Err(err.context("transaction aborted; the batch will be processed again"));
        }
        busy_at = (taken > 1).then(Instant::now);
    }
}

/// Commits the open transaction of `producer` on blocking threads once `sent` is acknowledged,
/// with `offsets` (the next input offsets of its batch), so the caller may go on with the next
/// batch's records meanwhile. The records are sent at once, not after a linger, while the
/// offsets are added.
///
/// Each step is watched: one that outlasts its own timeout by [`STEP_GRACE`] fails the commit.
/// The caller then aborts and its worker starts over with a new producer, whose start fences
/// this one, so whatever the stuck call still does cannot count. (Seen on a cluster: after a
/// broker left, a stage sat "committing" for minutes, its partitions held, nothing logged.)
async fn commit_in_background(
    consumer: &GroupConsumer,
    producer: &FutureProducer,
    offsets: &Offsets,
    sent: Vec<DeliveryFuture>,
) -> anyhow::Result<()> {
    let offsets = offsets.to_list()?;
    let group = if offsets.count() > 0 {
        Some(
            consumer
                .group_metadata()
                .context("the consumer has no group metadata")?,
        )
    } else {
        None
    };
    // Both round trips at once: the records' acknowledgements and the offsets' registration
    // do not depend on each other, only the end of the transaction depends on both. The
    // offsets step is labelled last, so /readyz names it from then on, even once it is done
    // and the acknowledgements are still awaited (it is the step the client has been seen to
    // hang in). Both are awaited even when one fails: an abort while the offsets call still
    // runs would be refused as a conflicting call, leaving the transaction open until the
    // restarted worker's producer fences it.
    let acknowledged = producer.clone();
    let records = watched_step(
        consumer,
        "committing: waiting for acknowledgements",
        TXN_TIMEOUT,
        move || wait_acknowledged(&acknowledged, sent, TXN_TIMEOUT),
    );
    let offsets_added = async {
        let Some(group) = group else {
            return Ok(());
        };
        let producer = producer.clone();
        watched_step(
            consumer,
            "committing: adding the input offsets",
            OFFSETS_TIMEOUT,
            move || {
                producer
                    .send_offsets_to_transaction(&offsets, &group, OFFSETS_TIMEOUT)
                    .context("cannot add the offsets to the transaction")
            },
        )
        .await
    };
    let (records, offsets_added) = tokio::join!(records, offsets_added);
    records.and(offsets_added)?;
    let producer = producer.clone();
    watched_step(
        consumer,
        "committing: ending the transaction",
        TXN_TIMEOUT,
        move || {
            producer
                .commit_transaction(TXN_TIMEOUT)
                .context("cannot commit the transaction")
        },
    )
    .await
}

/// One blocking Kafka call of a commit, run off the async threads and shown as what the
/// consumer's loop does; fails if the call has not returned within its own `timeout` and
/// [`STEP_GRACE`] (the call is left to finish on its thread).
async fn watched_step(
    consumer: &GroupConsumer,
    step: &'static str,
    timeout: Duration,
    call: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    consumer.context().doing(step);
    let limit = timeout + STEP_GRACE;
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(call)).await {
        Ok(returned) => returned.context("the commit panicked")?,
        Err(_) => anyhow::bail!("{step}: no answer from the Kafka client in {limit:?}"),
    }
}

/// The batch of the open transaction, while it is being filled.
struct Batch<'b, 'c> {
    consumer: &'c GroupConsumer,
    /// When the batch must close, for its transaction to commit in time.
    deadline: Instant,
    /// The input is busy: the batch waits for records until then, whatever the gaps.
    stay_open_until: Option<Instant>,
    offsets: &'b mut Offsets,
    errors: &'b mut ConsumerErrors,
}

impl<'c> Batch<'_, 'c> {
    /// Fills the open transaction: `ready`, and what follows while records keep arriving and
    /// time is left. Returns the records taken that there was no time for, in order, and how
    /// many it handled.
    async fn fill<W: TransactionalWork>(
        self,
        name: &str,
        mut ready: Vec<BorrowedMessage<'c>>,
        work: &mut W,
        txn: &mut Transaction<'_>,
    ) -> anyhow::Result<(Vec<BorrowedMessage<'c>>, usize)> {
        let consumer = self.consumer;
        let window = Instant::now() + BATCH_WINDOW;
        let mut taken = 0;
        loop {
            let handled = work.process(txn, &ready, self.deadline).await?;
            for message in &ready[..handled] {
                self.offsets.passed(message);
            }
            taken += handled;
            if handled < ready.len() {
                return Ok((ready.split_off(handled), taken));
            }
            if taken >= MAX_BATCH || Instant::now() >= self.deadline {
                return Ok((Vec::new(), taken));
            }
            let now = Instant::now();
            let until = closes_at(now, window, self.stay_open_until);
            let received = if until <= now {
                // Closing now: only a record already at hand is taken. Not through a timeout
                // due now, which tokio fires on its next millisecond tick: a lone record
                // would wait for that at every stage.
                consumer.recv().now_or_never()
            } else {
                tokio::time::timeout_at(until, consumer.recv()).await.ok()
            };
            let Some(received) = received else {
                return Ok((Vec::new(), taken));
            };
            let message = received.context("consumer error inside a transaction")?;
            ready = take_ready(
                consumer,
                message,
                (MAX_BATCH - taken).min(CHUNK),
                self.errors,
                name,
            );
        }
    }
}

/// Until when a batch that began at `began` stays open, whatever the gaps between its
/// records, if the last batch held several records and finished committing at `busy_at`:
/// while the input is busy (within [`BUSY_SPACING`] of that), a batch stays open that long
/// from its beginning, so batches begin at most that often. Once the input has been quiet
/// that long, a lone record goes at once again.
fn paced(busy_at: Option<Instant>, began: Instant) -> Option<Instant> {
    busy_at
        .filter(|&committed| began < committed + BUSY_SPACING)
        .map(|_| began + BUSY_SPACING)
}

/// When an open batch that has just handled its records at `now` closes if no further record
/// is at hand: at once, or at `stay_open_until` if that is later, but never after its
/// `window`.
fn closes_at(now: Instant, window: Instant, stay_open_until: Option<Instant>) -> Instant {
    window.min(stay_open_until.map_or(now, |paced| paced.max(now)))
}

/// The next offset to read of each input partition a batch passed.
#[derive(Default)]
struct Offsets(Vec<(String, i32, i64)>);

impl Offsets {
    fn passed(&mut self, message: &BorrowedMessage<'_>) {
        let (topic, partition) = (message.topic(), message.partition());
        let next = message.offset() + 1;
        match self
            .0
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some(entry) => entry.2 = next,
            None => self.0.push((topic.to_owned(), partition, next)),
        }
    }

    fn to_list(&self) -> anyhow::Result<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for (topic, partition, next) in &self.0 {
            list.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        Ok(list)
    }
}

/// Blocking: commits `producer`'s open transaction once every record sent in it (`sent`) is
/// acknowledged; fails, committing nothing, if one was not delivered.
pub fn commit_transaction(
    producer: &FutureProducer,
    sent: Vec<DeliveryFuture>,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_acknowledged(producer, sent, timeout)?;
    producer
        .commit_transaction(timeout)
        .context("cannot commit the transaction")
}

/// Blocking: sends what `producer` still holds at once and waits until every record of `sent`
/// is acknowledged and counted out; fails if one was not delivered.
fn wait_acknowledged(
    producer: &FutureProducer,
    sent: Vec<DeliveryFuture>,
    timeout: Duration,
) -> anyhow::Result<()> {
    if !super::send::flush_now(producer, timeout) {
        anyhow::bail!("the transaction's records were not acknowledged within {timeout:?}");
    }
    for delivery in sent {
        futures::executor::block_on(super::send::acknowledged(delivery))
            .context("a record of the transaction was not delivered")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use rdkafka::mocking::{MockCluster, MockCoordinator};

    use super::*;
    use crate::kafka::KafkaSettings;

    /// A lone record's batch closes at once and does not slow the next; a batch that begins
    /// soon after one of several committed stays open for the spacing from its own beginning
    /// (within its window), so bursts a few milliseconds apart share a transaction and
    /// batches begin at most every spacing; once the input was quiet for the spacing, a lone
    /// record goes at once again.
    #[test]
    fn batches_begin_at_most_every_busy_spacing_while_the_input_is_busy() {
        let committed = Instant::now();
        let began = committed + Duration::from_millis(1);
        assert_eq!(paced(None, began), None, "after a lone record");
        let busy = paced(Some(committed), began);
        assert_eq!(busy, Some(began + BUSY_SPACING));
        let quiet = committed + BUSY_SPACING;
        assert_eq!(paced(Some(committed), quiet), None, "after a quiet spell");

        let now = began + Duration::from_millis(7);
        let window = now + BATCH_WINDOW;
        assert_eq!(closes_at(now, window, None), now);
        assert_eq!(closes_at(now, window, busy), began + BUSY_SPACING);
        // Once the spacing has passed, the batch closes when nothing more is at hand; the
        // window still bounds it.
        let late = began + BUSY_SPACING + Duration::from_millis(1);
        assert_eq!(closes_at(late, late + BATCH_WINDOW, busy), late);
        assert_eq!(
            closes_at(now, now + Duration::from_millis(1), busy),
            now + Duration::from_millis(1)
        );
    }

    /// A loop whose consumer stops handing out records it has (here: its partition paused,
    /// which to the watch looks like a fetcher that stopped) fails, naming the partition, so
    /// that its supervisor starts it again with a new consumer; until then it went on
    /// committing what it had.
    #[test]
    fn the_loop_fails_when_its_consumer_stops_fetching() -> anyhow::Result<()> {
        /// Counts the records it is handed; sends nothing.
        struct Counting(Arc<std::sync::atomic::AtomicUsize>);
        impl TransactionalWork for Counting {
            async fn process(
                &mut self,
                _txn: &mut Transaction<'_>,
                records: &[BorrowedMessage<'_>],
                _deadline: Instant,
            ) -> anyhow::Result<usize> {
                self.0
                    .fetch_add(records.len(), std::sync::atomic::Ordering::Relaxed);
                Ok(records.len())
            }
            async fn finish(&mut self, _txn: &mut Transaction<'_>) -> anyhow::Result<()> {
                Ok(())
            }
            fn idle(&mut self, _consumer: &GroupConsumer) -> anyhow::Result<Idle> {
                Ok(Idle::Wait)
            }
            fn stall_after(&self) -> Duration {
                Duration::from_millis(500)
            }
        }

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let cluster = MockCluster::new(1)?;
        cluster.create_topic("in", 1, 1)?;
        let settings = KafkaSettings::new(BTreeMap::from([
            ("bootstrap.servers".to_owned(), cluster.bootstrap_servers()),
            ("statistics.interval.ms".to_owned(), "100".to_owned()),
        ]));
        let failed = runtime.block_on(async {
            let plain = settings.producer()?;
            let write = |n: usize| {
                let plain = plain.clone();
                async move {
                    for _ in 0..n {
                        let record = FutureRecord::<str, str>::to("in").key("k").payload("{}");
                        plain
                            .send(record, TXN_TIMEOUT)
                            .await
                            .map_err(|(err, _)| err)?;
                    }
                    anyhow::Ok(())
                }
            };
            write(3).await?;
            let consumer = settings.transactional_consumer("stage", Arc::default())?;
            consumer.subscribe(&["in"])?;
            let producer = settings.transactional_producer("stage-txn")?;
            producer.init_transactions(TXN_TIMEOUT)?;
            let handed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut work = Counting(handed.clone());
            let stop = CancellationToken::new();
            let running = run(
                "stage",
                &consumer,
                &producer,
                TXN_TIMEOUT,
                &stop,
                Duration::from_millis(100),
                &mut work,
            );
            let stall = async {
                let handed_out = |n| {
                    let handed = handed.clone();
                    async move {
                        while handed.load(std::sync::atomic::Ordering::Relaxed) < n {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                };
                tokio::time::timeout(TXN_TIMEOUT, handed_out(3)).await?;
                let mut partition = TopicPartitionList::new();
                partition.add_partition("in", 0);
                consumer.pause(&partition)?;
                write(2).await?;
                // Past the watch's two looks, the loop has failed (or this fails the test).
                tokio::time::sleep(TXN_TIMEOUT).await;
                anyhow::Ok(())
            };
            tokio::select! {
                ran = running => anyhow::Ok(ran.err()),
                waited = stall => waited.map(|()| None),
            }
        })?;
        runtime.shutdown_background();
        let err = format!(
            "{:#}",
            failed.context("the loop went on with a stalled consumer")?
        );
        assert!(err.contains("in [0] (at 3 of 5)"), "{err}");
        Ok(())
    }

    /// The hang seen on a real cluster after a broker left (a stage "committing" for minutes):
    /// the group coordinator stops answering in mid-transaction, and the Kafka client, which
    /// does not enforce the offsets call's own timeout (librdkafka 5456), may wait for it
    /// forever. The commit still fails, at the offsets step, within its timeout and grace.
    #[test]
    fn a_commit_fails_in_bounded_time_when_the_group_coordinator_stops_answering()
    -> anyhow::Result<()> {
        // Built by hand so that its end does not wait for a call still stuck on its thread.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let cluster = MockCluster::new(3)?;
        for topic in ["in", "out"] {
            cluster.create_topic(topic, 1, 3)?;
            cluster.partition_leader(topic, 0, Some(1))?;
        }
        cluster.coordinator(MockCoordinator::Group("stage".into()), 2)?;
        cluster.coordinator(MockCoordinator::Transaction("stage-txn".into()), 1)?;
        let settings = KafkaSettings::new(BTreeMap::from([(
            "bootstrap.servers".to_owned(),
            cluster.bootstrap_servers(),
        )]));
        let (committed, took) = runtime.block_on(async {
            let plain = settings.producer()?;
            let record = FutureRecord::<str, str>::to("in").key("k").payload("{}");
            plain
                .send(record, TXN_TIMEOUT)
                .await
                .map_err(|(err, _)| err)?;
            let consumer = settings.transactional_consumer("stage", Arc::default())?;
            consumer.subscribe(&["in"])?;
            let message = tokio::time::timeout(TXN_TIMEOUT, consumer.recv()).await??;
            let mut offsets = Offsets::default();
            offsets.passed(&message);
            let producer = settings.transactional_producer("stage-txn")?;
            producer.init_transactions(TXN_TIMEOUT)?;
            producer.begin_transaction()?;
            let record = FutureRecord::<str, str>::to("out").key("k").payload("{}");
            let sent = vec![producer.send_result(record).map_err(|(err, _)| err)?];
            // Acknowledged first: the watch under test is the offsets step's.
            assert!(crate::kafka::send::flush_now(&producer, TXN_TIMEOUT));
            cluster.broker_round_trip_time(2, Duration::from_secs(3_600))?;
            let started = std::time::Instant::now();
            let committed = commit_in_background(&consumer, &producer, &offsets, sent).await;
            anyhow::Ok((committed, started.elapsed()))
        })?;
        runtime.shutdown_background();
        let err = format!(
            "{:#}",
            committed.expect_err("committed against a silent coordinator")
        );
        assert!(err.contains("offsets"), "failed elsewhere: {err}");
        let bound = OFFSETS_TIMEOUT + STEP_GRACE + Duration::from_secs(1);
        assert!(took <= bound, "took {took:?}, more than {bound:?}: {err}");
        Ok(())
    }
}
