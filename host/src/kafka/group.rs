//! A consumer's place in its group: whether it joined, which partitions it holds and how far
//! behind it is (kept in a [`GroupState`] that outlives the consumer), and logging the errors
//! a consumer hands out without repeating itself; taking the records a consumer already holds,
//! and telling whether it has read its input to the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

/// How long a watermark or committed-offset query may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Logs the errors a consumer hands out, without repeating itself, and remembers a fatal one.
///
/// Consumer errors are mostly librdkafka saying what it is retrying on its own (a broker went
/// away, a rebalance failed), so they are logged and never waited on: waiting after each would
/// leave the errors that pile up during an outage to be drained one per wait, long after the
/// broker is back, with the records queued behind them. The same message is logged at most once
/// per [`ConsumerErrors::EVERY`].
///
/// A fatal error is different: the consumer hands out nothing after it (a static member fenced
/// by another with its `group.instance.id`, as when a restarted consumer joins while the one it
/// replaces is still leaving), so a loop that went on polling would wait forever.
/// [`ConsumerErrors::check_fatal`] makes its owner start over with a new consumer.
#[derive(Debug, Default)]
pub struct ConsumerErrors {
    last: Option<(String, std::time::Instant)>,
    fatal: Option<String>,
}

impl ConsumerErrors {
    /// How often one message is logged while it repeats.
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Logs `err` (from the consumer of `what`) unless it was just logged.
    pub fn log(&mut self, what: &str, err: &rdkafka::error::KafkaError) {
        let message = err.to_string();
        if let rdkafka::error::KafkaError::MessageConsumptionFatal(_) = err {
            tracing::error!("{what}: the consumer failed for good: {message}; starting a new one");
            self.fatal = Some(message);
            return;
        }
        let repeated = matches!(&self.last, Some((last, at)) if *last == message && at.elapsed() < Self::EVERY);
        if !repeated {
            tracing::warn!("{what}: consumer error: {message}");
            self.last = Some((message, std::time::Instant::now()));
        }
    }

    /// An error once the consumer has reported a fatal one: it is of no more use.
    pub fn check_fatal(&self) -> anyhow::Result<()> {
        match &self.fatal {
            Some(fatal) => anyhow::bail!("the consumer failed for good: {fatal}"),
            None => Ok(()),
        }
    }
}

/// A stage's consumer: it reports to a [`GroupState`].
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// What a stage's consumer knows of its place in the group: whether it joined, which
/// partitions it holds, and how far behind it is on each. Outlives the consumer (a restarted
/// stage gets a new one), so the host's readiness and metrics always find it.
#[derive(Debug, Default)]
pub struct GroupState {
    joined: AtomicBool,
    /// Counts assignments and revocations, so a consumer's owner can tell that its partitions
    /// changed hands (and any state it keeps per partition may be stale) since it last looked.
    assignments: std::sync::atomic::AtomicU64,
    /// Assigned partition → records not yet read (`None` until librdkafka reports it).
    partitions: Mutex<BTreeMap<i32, Option<i64>>>,
    /// What the consumer's loop is doing and since when: a loop that stopped moving shows
    /// where (waiting for records while its partitions are held, or inside a commit).
    activity: Mutex<Option<(&'static str, std::time::Instant)>>,
    /// How librdkafka last described the consumer's group membership and its fetchers.
    client_view: Mutex<Option<String>>,
    /// Held (topic, partition) → the next offset the client fetches, as its statistics last
    /// said (absent while it is not fetching the partition).
    fetch_positions: Mutex<BTreeMap<(String, i32), i64>>,
}

impl GroupState {
    /// True once the consumer has joined its group and received an assignment (possibly of
    /// no partitions, when the group has more members than the topic has partitions).
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// How many times the consumer's partitions have changed (assigned or revoked) so far.
    pub fn assignments(&self) -> u64 {
        self.assignments.load(Ordering::Acquire)
    }

    /// The assigned partitions with their lag, when known.
    pub fn partitions(&self) -> BTreeMap<i32, Option<i64>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Option<i64>>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that the consumer's loop now does `what` (a few words: "waiting for records",
    /// "committing", …).
    pub fn doing(&self, what: &'static str) {
        let mut activity = self.activity.lock().unwrap_or_else(PoisonError::into_inner);
        if activity.is_none_or(|(doing, _)| doing != what) {
            *activity = Some((what, std::time::Instant::now()));
        }
    }

    /// What the consumer's loop does, and for how long it has, once it has begun.
    pub fn activity(&self) -> Option<(&'static str, Duration)> {
        let activity = self.activity.lock().unwrap_or_else(PoisonError::into_inner);
        activity.map(|(what, since)| (what, since.elapsed()))
    }

    /// How librdkafka last described the consumer (its statistics, once a second): the
    /// group handler's state and join state, and each held partition's fetch state.
    pub fn client_view(&self) -> Option<String> {
        self.client_view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Where the client fetches each held partition it is fetching (see [`StallWatch`]).
    fn fetch_positions(&self) -> BTreeMap<(String, i32), i64> {
        self.fetch_positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn reset(&self) {
        self.joined.store(false, Ordering::Release);
        self.lock().clear();
    }
}

/// The librdkafka callbacks of a stage's consumer, kept in its [`GroupState`].
pub struct GroupContext {
    group: String,
    state: Arc<GroupState>,
}

impl GroupContext {
    /// The callbacks of a consumer in `group`, reporting to `state`.
    pub fn new(group: &str, state: Arc<GroupState>) -> Self {
        Self {
            group: group.to_owned(),
            state,
        }
    }
}

impl GroupContext {
    /// How many times the consumer's partitions have changed so far (see
    /// [`GroupState::assignments`]).
    pub fn assignments(&self) -> u64 {
        self.state.assignments()
    }

    /// Notes what the consumer's loop now does (see [`GroupState::doing`]).
    pub fn doing(&self, what: &'static str) {
        self.state.doing(what);
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let mut partitions = self.state.lock();
        let mut view = match &statistics.cgrp {
            Some(group) => format!("group {}, join {}", group.state, group.join_state),
            None => "no group".to_owned(),
        };
        let mut fetch_positions = BTreeMap::new();
        for (name, topic) in &statistics.topics {
            for (id, stats) in &topic.partitions {
                let Some(lag) = partitions.get_mut(id) else {
                    continue; // not ours (or librdkafka's internal partition -1)
                };
                view += &format!("; partition {id} {}", stats.fetch_state);
                if stats.next_offset >= 0 {
                    view += &format!(" at {}", stats.next_offset);
                    fetch_positions.insert((name.clone(), *id), stats.next_offset);
                }
                // Records not yet read: from the position when there is one; right after an
                // assignment, from the committed offset.
                *lag = if stats.app_offset >= 0 && stats.ls_offset >= 0 {
                    Some((stats.ls_offset - stats.app_offset).max(0))
                } else if stats.consumer_lag >= 0 {
                    Some(stats.consumer_lag)
                } else {
                    *lag
                };
            }
        }
        *self
            .state
            .client_view
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(view);
        *self
            .state
            .fetch_positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fetch_positions;
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                let ids: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(group = self.group, partitions = ?ids, "partitions assigned");
                *self.state.lock() = ids.into_iter().map(|id| (id, None)).collect();
                self.state.joined.store(true, Ordering::Release);
                self.state.assignments.fetch_add(1, Ordering::AcqRel);
            }
            Rebalance::Revoke(revoked) => {
                let ids: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(group = self.group, partitions = ?ids, "partitions revoked");
                self.state.lock().clear();
                self.state.assignments.fetch_add(1, Ordering::AcqRel);
            }
            Rebalance::Error(err) => tracing::warn!(group = self.group, "rebalance failed: {err}"),
        }
    }
}

/// `first` and the records after it that the consumer already holds, up to `max` in all:
/// a batch taken without waiting.
pub(crate) fn take_ready<'c>(
    consumer: &'c GroupConsumer,
    first: BorrowedMessage<'c>,
    max: usize,
    errors: &mut ConsumerErrors,
    worker: &str,
) -> Vec<BorrowedMessage<'c>> {
    let mut batch = vec![first];
    while batch.len() < max {
        // Polled once: a record not there yet is left for the next batch, none is lost.
        match consumer.recv().now_or_never() {
            Some(Ok(message)) => batch.push(message),
            Some(Err(err)) => {
                errors.log(worker, &err);
                break;
            }
            None => break,
        }
    }
    batch
}

/// True when this consumer has read every record of its assigned partitions of `topic`
/// (as far as they reached when asked).
pub(crate) fn consumed_to_end(consumer: &GroupConsumer, topic: &str) -> anyhow::Result<bool> {
    let positions = consumer.position()?;
    for element in positions.elements_for_topic(topic) {
        let partition = element.partition();
        let (low, high) = consumer.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)?;
        let next = match element.offset() {
            Offset::Offset(next) => next,
            // Nothing read since the assignment: the committed offset says where it starts.
            _ => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let committed = consumer.committed_offsets(tpl, WATERMARK_TIMEOUT)?;
                match committed
                    .find_partition(topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(next)) => next,
                    _ => low,
                }
            }
        };
        if next < high {
            tracing::debug!(topic, partition, next, high, "not drained yet");
            return Ok(false);
        }
    }
    Ok(true)
}

/// A partition with records beyond where a consumer stands (its client's fetch position for
/// [`StallWatch`], its position for the order view's watch).
#[derive(Debug)]
pub(crate) struct Unfetched {
    topic: String,
    partition: i32,
    /// Where the consumer stands: the next offset it fetches, or hands out.
    next: i64,
    /// The partition's end as the consumer may read it (the last stable offset for a
    /// `read_committed` consumer: the broker answers with the client's isolation level).
    end: i64,
}

/// Of the partitions `consumer` stands at in `fetched` (topic, partition → next offset),
/// those with records beyond it, each end asked of the partition's leader now (each question
/// may take [`STALL_LOOK_TIMEOUT`]).
pub(crate) fn unfetched<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    fetched: &BTreeMap<(String, i32), i64>,
) -> anyhow::Result<Vec<Unfetched>> {
    let mut unfetched = Vec::new();
    for ((topic, partition), &next) in fetched {
        let (_, end) = consumer.fetch_watermarks(topic, *partition, STALL_LOOK_TIMEOUT)?;
        if next < end {
            unfetched.push(Unfetched {
                topic: topic.clone(),
                partition: *partition,
                next,
                end,
            });
        }
    }
    Ok(unfetched)
}

/// How long a consumer's partition may hold records it does not hand out, while the loop
/// reading it waits for records, before the consumer is taken for stalled (see
/// [`StallWatch`]).
pub const STALL_AFTER: Duration = Duration::from_secs(30);
/// How long one question of a stall check may take: the loop waits for it, so a leader that
/// does not answer (it is moving) costs one short wait, and the look is given up.
const STALL_LOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// Notices a consumer that has stopped handing out records it has: the Kafka client has been
/// seen to stop fetching a partition after its leader moved (a broker restarted), without an
/// error and for good (librdkafka issue 5153, "resolved by restarting the consumer"). The
/// loop waits for records then, its partitions held, and nothing in the host would move.
///
/// Asked whenever the loop is idle (nothing at hand), it looks at most every
/// [`STALL_AFTER`]: a partition that had records beyond the client's fetch position at one
/// look and is still at that position at the next, the consumer's partitions unchanged in
/// between, has not been fetched for that long. Then [`StallWatch::check`] fails, and the
/// worker's supervisor starts it again with a new consumer, from the committed offsets.
///
/// The fetch position is where the stall is (the fetcher stops), and the client's statistics
/// that carry it also say the fetcher's state, for the error. It moves past the aborted
/// records and the markers a `read_committed` consumer never hands out, so a partition at
/// rest at its end is not taken for stalled. Without statistics (`statistics.interval.ms`
/// set to 0) nothing is watched.
#[derive(Debug)]
pub struct StallWatch {
    every: Duration,
    /// The last look: when, under which assignment, and what was not fetched then.
    last: Option<(std::time::Instant, u64, Vec<Unfetched>)>,
}

impl Default for StallWatch {
    fn default() -> Self {
        Self::every(STALL_AFTER)
    }
}

impl StallWatch {
    /// A watch that looks at most once per `every` (so it notices a stall within twice that).
    pub fn every(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// Looks again if the last look is old enough; an error names the partitions that were
    /// not fetched since and what the Kafka client says of them. A failed look (a leader
    /// away) is logged at debug and forgotten: the client is waiting on the cluster then, not
    /// stuck, and a new consumer would not help.
    pub fn check(&mut self, consumer: &GroupConsumer) -> anyhow::Result<()> {
        if self
            .last
            .as_ref()
            .is_some_and(|(at, _, _)| at.elapsed() < self.every)
        {
            return Ok(());
        }
        let assignments = consumer.context().assignments();
        let fetched = consumer.context().state.fetch_positions();
        let now = match tokio::task::block_in_place(|| unfetched(consumer, &fetched)) {
            Ok(now) => now,
            Err(err) => {
                tracing::debug!("cannot tell whether the consumer is fetching: {err:#}");
                self.last = None;
                return Ok(());
            }
        };
        // Only against a look under the same assignment: partitions that changed hands start
        // fetching afresh.
        let stalled = match self.last.take() {
            Some((_, assigned_then, before)) if assigned_then == assignments => {
                stalled(&before, &now)
            }
            _ => Vec::new(),
        };
        self.last = Some((std::time::Instant::now(), assignments, now));
        anyhow::ensure!(
            stalled.is_empty(),
            "the consumer has handed out no record of {} in {:?} although the broker holds \
             more; the Kafka client says: {}; starting a new consumer",
            stalled.join(", "),
            self.every,
            consumer
                .context()
                .state
                .client_view()
                .unwrap_or_else(|| "nothing yet".to_owned()),
        );
        Ok(())
    }
}

/// The partitions not fetched at both looks whose fetch position did not move in between,
/// described.
pub(crate) fn stalled(before: &[Unfetched], now: &[Unfetched]) -> Vec<String> {
    now.iter()
        .filter(|now| {
            before.iter().any(|then| {
                then.topic == now.topic && then.partition == now.partition && then.next == now.next
            })
        })
        .map(|u| format!("{} [{}] (at {} of {})", u.topic, u.partition, u.next, u.end))
        .collect()
}

/// How long a stopping consumer waits for its group to let it go.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a leaving consumer is polled, to serve its rebalance callbacks.
const LEAVE_POLL: Duration = Duration::from_millis(5);

/// Leaves `consumer`'s group (its state is `state`), so its partitions go to the other
/// members now. A static member (see [`super::KafkaSettings::with_instance_id`]) does not
/// leave when it is closed, which is what lets a crashed host come back to its partitions; a
/// consumer that stops on purpose calls this instead: it unsubscribes and serves the
/// revocation, after which librdkafka sends the leave (once closing has begun it no longer
/// would). A consumer still joining is unsubscribed the same way: closing it mid-join
/// otherwise waits for a rebalance callback that nobody serves.
pub async fn leave(consumer: &GroupConsumer, state: &GroupState) {
    let joined = state.joined();
    let before = state.assignments();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            // librdkafka's unsubscribe waits, without a timeout, until the group is done with
            // the consumer, which may first need a rebalance callback served; callbacks are
            // served by polling the consumer, so one thread unsubscribes while this one polls.
            let unsubscribing = scope.spawn(|| consumer.unsubscribe());
            let deadline = std::time::Instant::now() + LEAVE_TIMEOUT;
            let mut warned = false;
            while !unsubscribing.is_finished()
                || (joined && state.assignments() == before && std::time::Instant::now() < deadline)
            {
                // Records after unsubscribing are not ours to process; errors are the group's.
                let _ = consumer.recv().now_or_never();
                std::thread::sleep(LEAVE_POLL);
                if !warned && std::time::Instant::now() >= deadline {
                    warned = true;
                    tracing::warn!(
                        "the group did not take back this consumer's partitions in \
                         {LEAVE_TIMEOUT:?}; they move once its session times out"
                    );
                }
            }
        });
    });
}
