//! One stage's loop: consume a record, call the component, produce the result with the same
//! key, and only then let the input offset be committed.
//!
//! # Delivery (at least once)
//! Records are taken in batches of those the consumer already holds (never waiting for more)
//! and the stage is called on a batch in one go, which saves a thread hand-over per record.
//! Records of a partition are called in order and their results are sent in order; sends are
//! pipelined (the loop does not wait for each acknowledgement) through an idempotent producer,
//! which keeps them in order and free of duplicates on retry. A separate task awaits the
//! acknowledgements in the same order and stores a batch's input offsets only after all its
//! outputs are acknowledged, so the committed offset never passes an event whose result is not
//! in Kafka.
//! If a send fails for good, the loop stops and is restarted from the last committed offset.
//!
//! # Bad records
//! A record the stage cannot process (see [`CallError`]) and a record that is not UTF-8 text go to the stage's dead-letter topic with headers saying why, and the
//! partition moves on: one bad record never stalls the pipeline or takes the host down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use futures::FutureExt as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::kafka::{ConsumerErrors, GroupConsumer, GroupState, KafkaSettings};
use crate::telemetry::events::Events;
use crate::telemetry::metrics::StageMetrics;
use crate::telemetry::trace_context;

pub mod exactly_once;
use crate::runtime::{CallError, StageComponent};

/// The header each stage adds to its output: `{"stage", "digest", "at"}` (JSON), so the last
/// topic's records say when each stage processed the pizza, with which component.
pub const TRAIL_HEADER: &str = "pizza-host.trail";

/// Most records called in one batch under at-least-once (those the consumer already holds).
pub(crate) const CALL_BATCH: usize = 100;
/// Sent but not yet acknowledged results per stage (counted in whole batches of at most
/// [`CALL_BATCH`]); bounds memory when the broker is slow.
const MAX_IN_FLIGHT: usize = 10_000;
/// How long shutdown waits for outstanding acknowledgements before giving up on them (they
/// are then redelivered after restart, never lost).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait before the first retry of a retryable stage error; doubled for each further one.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// How often a draining stage checks whether it has reached the end of its input.
pub(crate) const DRAIN_CHECK: Duration = Duration::from_millis(100);
/// How long a watermark or committed-offset query may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a running stage shares with the rest of the host: its current component, which a
/// swap replaces atomically between two batches of records, and its counters.
pub struct StageShared {
    component: ArcSwap<StageComponent>,
    /// What the stage has done so far.
    pub stats: StageStats,
    /// Its consumer's place in the group (assignment, lag).
    pub group: Arc<GroupState>,
    /// Where each pizza it makes is shown live.
    events: Events,
}

impl StageShared {
    /// A stage that starts with `component`, counts into `metrics` and shows what it makes
    /// on `events`.
    pub fn new(component: StageComponent, metrics: StageMetrics, events: Events) -> Self {
        Self {
            component: ArcSwap::from_pointee(component),
            stats: StageStats {
                processed: AtomicU64::default(),
                dead_lettered: AtomicU64::default(),
                last_error: Mutex::default(),
                metrics,
            },
            group: Arc::default(),
            events,
        }
    }

    /// The component that processes the next record.
    pub fn current(&self) -> Arc<StageComponent> {
        self.component.load_full()
    }

    /// Makes `component` process every record from the next one on; returns the old one.
    /// A batch being processed right now finishes with the old version.
    pub fn swap(&self, component: StageComponent) -> Arc<StageComponent> {
        self.stats.metrics.swapped();
        self.component.swap(Arc::new(component))
    }
}

/// Counters of one stage, for the admin API, logs and metrics.
pub struct StageStats {
    /// Records whose result was sent to the output topic.
    pub processed: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// The most recent failure.
    pub last_error: Mutex<Option<LastError>>,
    metrics: StageMetrics,
}

/// A stage's most recent failure.
#[derive(Debug, Clone)]
pub struct LastError {
    /// When it happened.
    pub at: SystemTime,
    /// [`CallError::kind`] or `invalid-input`.
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
}

impl StageStats {
    fn record(&self, outcome: &Result<String, Failure>) {
        match outcome {
            Ok(_) => {
                self.processed.fetch_add(1, Ordering::Relaxed);
                self.metrics.record_out();
            }
            Err(failure) => {
                self.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.metrics.dead_letter(failure.kind);
                let last = LastError {
                    at: SystemTime::now(),
                    kind: failure.kind,
                    message: failure.message.clone(),
                };
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(last);
            }
        }
    }
}

/// Where a stage reads from and writes to.
#[derive(Debug, Clone)]
pub struct Route {
    /// The stage's name.
    pub name: String,
    /// Consumer group id.
    pub group_id: String,
    /// Under exactly-once, the stage's transactional id (stable per stage and host instance).
    pub transactional_id: Option<String>,
    /// Input topic.
    pub input: String,
    /// Output topic.
    pub output: String,
    /// Topic for records the stage could not process.
    pub dead_letter: String,
    /// Retries of a call whose error the stage marked retryable.
    pub retries: u32,
}

/// Why a record went to the dead-letter topic instead of the output.
struct Failure {
    kind: &'static str,
    message: String,
    /// Calls made (1 plus the retries).
    attempts: u32,
    /// The stage said calling again may succeed.
    retryable: bool,
}

impl From<CallError> for Failure {
    fn from(err: CallError) -> Self {
        Failure {
            kind: err.kind(),
            retryable: matches!(
                err,
                CallError::Returned {
                    retryable: true,
                    ..
                }
            ),
            message: err.to_string(),
            attempts: 1,
        }
    }
}

/// A result on its way to the broker, and the input offset it releases once acknowledged.
pub(crate) struct Pending {
    partition: i32,
    offset: i64,
    delivery: DeliveryFuture,
}

/// How a running stage is told to stop.
#[derive(Debug, Clone, Default)]
pub struct StopSignals {
    /// Stop taking records now; finish the ones in flight and commit.
    pub stop: CancellationToken,
    /// Keep taking records until the input is consumed to its end, then stop as above. Used
    /// when a pipeline edit moves the stage off a topic whose producer was removed, so no
    /// record is stranded there.
    pub drain: CancellationToken,
}

/// Runs the stage until told to stop, then finishes in-flight records and commits.
///
/// Returns an error when the stage cannot go on (a send failed for good); the caller restarts
/// it, and it resumes from the last committed offset.
pub async fn run(
    stage: &StageShared,
    route: &Route,
    kafka: &KafkaSettings,
    signals: &StopSignals,
) -> anyhow::Result<()> {
    let consumer = Arc::new(kafka.consumer(&route.group_id, stage.group.clone())?);
    let producer = kafka.producer()?;
    consumer
        .subscribe(&[&route.input])
        .with_context(|| format!("cannot subscribe to {}", route.input))?;

    let (pending_tx, pending_rx) = mpsc::channel(MAX_IN_FLIGHT / CALL_BATCH);
    let mut acker = tokio::spawn(store_acknowledged(
        consumer.clone(),
        route.input.clone(),
        pending_rx,
    ));

    let mut drain_check = tokio::time::interval(DRAIN_CHECK);
    drain_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut errors = ConsumerErrors::default();
    let stopped = loop {
        tokio::select! {
            biased;
            _ = signals.stop.cancelled() => break Ok(()),
            acked = &mut acker => break acked.context("acknowledgement task panicked").and_then(|r| r),
            received = consumer.recv() => match received {
                Ok(first) => {
                    let batch = take_ready(&consumer, first, CALL_BATCH, &mut errors, &route.name);
                    let pending = process_batch(stage, route, &producer, &batch).await?;
                    // If the acker ended, its result says why on the next turn.
                    let _ = pending_tx.send(pending).await;
                }
                Err(err) => errors.log(&format!("stage {}", route.name), &err),
            },
            // Last in priority: records first. Ticks even when not draining, so a drain
            // request is noticed while the input is idle.
            _ = drain_check.tick() => {
                if !signals.drain.is_cancelled() {
                    continue;
                }
                match tokio::task::block_in_place(|| consumed_to_end(&consumer, &route.input)) {
                    Ok(true) => break Ok(()),
                    Ok(false) => {}
                    Err(err) => tracing::warn!(stage = route.name, "cannot tell whether {} is drained: {err}", route.input),
                }
            }
        }
    };

    // Let every sent result be acknowledged and its offset stored, then commit them.
    drop(pending_tx);
    if !acker.is_finished() {
        match tokio::time::timeout(DRAIN_TIMEOUT, acker).await {
            Ok(joined) => joined.context("acknowledgement task panicked")??,
            Err(_) => tracing::warn!(stage = route.name, "gave up waiting for acknowledgements"),
        }
    }
    stopped?;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(err) => Err(err).context(
            "final offset commit failed (records since the last commit will be redelivered)",
        ),
    }
}

/// `first` and the records after it that the consumer already holds, up to `max` in all:
/// a batch taken without waiting.
pub(crate) fn take_ready<'c>(
    consumer: &'c GroupConsumer,
    first: BorrowedMessage<'c>,
    max: usize,
    errors: &mut ConsumerErrors,
    stage: &str,
) -> Vec<BorrowedMessage<'c>> {
    let mut batch = vec![first];
    while batch.len() < max {
        // Polled once: a record not there yet is left for the next batch, none is lost.
        match consumer.recv().now_or_never() {
            Some(Ok(message)) => batch.push(message),
            Some(Err(err)) => {
                errors.log(&format!("stage {stage}"), &err);
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

/// Calls the stage on each of `messages` (records taken from the input in order) and sends
/// each outcome, in order: the result to the output topic, or the original record to the
/// dead-letter topic.
///
/// The first call of every record happens in one hand-over of the worker thread
/// ([`block_in_place`](tokio::task::block_in_place)), which costs more than a call on a reused
/// instance; a record whose call failed with a retryable error is then retried before its
/// result is sent, so results still leave in input order. A swap takes effect from the next
/// batch.
pub(crate) async fn process_batch(
    stage: &StageShared,
    route: &Route,
    producer: &FutureProducer,
    messages: &[BorrowedMessage<'_>],
) -> anyhow::Result<Vec<Pending>> {
    let component = stage.current();
    let metrics = &stage.stats.metrics;
    // A call is CPU-bound for up to its deadline: keep it off the async workers' budget.
    let first_calls: Vec<Result<String, Failure>> = tokio::task::block_in_place(|| {
        messages
            .iter()
            .map(|message| call_once(&component, metrics, message))
            .collect()
    });
    let visit = trail_visit(&component);
    let mut sent = Vec::with_capacity(messages.len());
    for (message, outcome) in messages.iter().zip(first_calls) {
        let outcome = match outcome {
            Err(failure) if failure.retryable && route.retries > 0 => {
                let event = message.payload().map(std::str::from_utf8);
                let event = event.and_then(Result::ok).unwrap_or_default();
                retry(&component, metrics, event, route.retries).await
            }
            outcome => outcome,
        };
        sent.push(
            send_outcome(stage, route, producer, &component, &visit, message, outcome).await?,
        );
    }
    Ok(sent)
}

/// The stage's first call on one record (a record with no UTF-8 value is not called).
fn call_once(
    component: &StageComponent,
    metrics: &StageMetrics,
    message: &BorrowedMessage<'_>,
) -> Result<String, Failure> {
    metrics.record_in();
    let invalid = |message: String| Failure {
        kind: "invalid-input",
        message,
        attempts: 0,
        retryable: false,
    };
    match message.payload().map(std::str::from_utf8) {
        None => Err(invalid("record has no value".into())),
        Some(Err(err)) => Err(invalid(format!("value is not UTF-8: {err}"))),
        Some(Ok(event)) => timed_call(component, metrics, event).map_err(Failure::from),
    }
}

/// One call of the stage, counted in its metrics.
fn timed_call(
    component: &StageComponent,
    metrics: &StageMetrics,
    event: &str,
) -> Result<String, CallError> {
    let started = std::time::Instant::now();
    let called = component.call(event);
    metrics.call(
        started.elapsed(),
        called.as_ref().err().map(CallError::kind),
    );
    called
}

/// Calls the stage again after its first call failed with a retryable error, with
/// exponential backoff, while it says its error may pass. The partition waits meanwhile:
/// records of a partition stay in order.
async fn retry(
    component: &StageComponent,
    metrics: &StageMetrics,
    event: &str,
    retries: u32,
) -> Result<String, Failure> {
    let mut attempt = 1;
    loop {
        tokio::time::sleep(RETRY_BACKOFF * 2u32.pow(attempt - 1)).await;
        attempt += 1;
        match tokio::task::block_in_place(|| timed_call(component, metrics, event)) {
            Ok(output) => return Ok(output),
            Err(CallError::Returned {
                retryable: true, ..
            }) if attempt <= retries => {}
            Err(err) => {
                return Err(Failure {
                    attempts: attempt,
                    ..Failure::from(err)
                });
            }
        }
    }
}

/// Sends one record's outcome: the result to the output topic, or the original record to the
/// dead-letter topic with headers saying why.
async fn send_outcome(
    stage: &StageShared,
    route: &Route,
    producer: &FutureProducer,
    component: &StageComponent,
    visit: &str,
    message: &BorrowedMessage<'_>,
    outcome: Result<String, Failure>,
) -> anyhow::Result<Pending> {
    stage.stats.record(&outcome);
    if let Ok(output) = &outcome {
        stage.events.publish(|| {
            serde_json::json!({
                "type": "stage",
                "stage": component.name(),
                "pizza": serde_json::from_str::<serde_json::Value>(output).unwrap_or_default(),
            })
        });
    }
    let record = match &outcome {
        Ok(output) => FutureRecord::to(&route.output)
            .payload(output.as_bytes())
            .headers(onward_headers(message, visit)),
        Err(failure) => {
            tracing::warn!(
                stage = component.name(),
                topic = route.input,
                partition = message.partition(),
                offset = message.offset(),
                order_id = message.key().map(String::from_utf8_lossy).as_deref(),
                trace_id = trace_id(message).as_deref(),
                kind = failure.kind,
                "record sent to {}: {}",
                route.dead_letter,
                failure.message
            );
            let why = dead_letter_headers(copy_headers(message), component, failure, message);
            FutureRecord::to(&route.dead_letter)
                .payload(message.payload().unwrap_or_default())
                .headers(why)
        }
    };
    let record = match message.key() {
        Some(key) => record.key(key),
        None => record,
    };
    let delivery = enqueue(producer, record).await?;
    Ok(Pending {
        partition: message.partition(),
        offset: message.offset(),
        delivery,
    })
}

/// Hands a record to the producer, waiting while its queue is full.
async fn enqueue(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> anyhow::Result<DeliveryFuture> {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((err, _)) => return Err(err).context("cannot hand a record to the producer"),
        }
    }
}

/// Awaits acknowledgements in send order and, once a batch's results are all safely in
/// Kafka, stores its input offsets (one call for the batch). Returns an error, storing nothing
/// more, at the first failed send.
async fn store_acknowledged(
    consumer: Arc<GroupConsumer>,
    input: String,
    mut pending: mpsc::Receiver<Vec<Pending>>,
) -> anyhow::Result<()> {
    while let Some(batch) = pending.recv().await {
        let mut next_offsets = BTreeMap::new();
        for Pending {
            partition,
            offset,
            delivery,
        } in batch
        {
            match delivery.await {
                Ok(Ok(_)) => {
                    next_offsets.insert(partition, offset + 1);
                }
                Ok(Err((err, _))) => {
                    anyhow::bail!(
                        "send for {input}/{partition}@{offset} failed: {err}; resuming from the last commit"
                    )
                }
                Err(_) => {
                    anyhow::bail!("producer dropped the send for {input}/{partition}@{offset}")
                }
            }
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in next_offsets {
            offsets.add_partition_offset(&input, partition, Offset::Offset(next))?;
        }
        // Fails only for partitions revoked meanwhile; their new owner will process those
        // records again (at least once), so there is nothing to do.
        if let Err(err) = consumer.store_offsets(&offsets) {
            tracing::debug!(topic = input, "offsets not stored: {err}");
        }
    }
    Ok(())
}

/// The input record's headers, as they were.
fn copy_headers(message: &BorrowedMessage<'_>) -> OwnedHeaders {
    let mut copy = OwnedHeaders::new();
    for header in message.headers().into_iter().flat_map(|h| h.iter()) {
        copy = copy.insert(header);
    }
    copy
}

/// This stage's entry in a result's trail (see [`TRAIL_HEADER`]), stamped now: made once per
/// batch, whose records are processed within the same few milliseconds.
fn trail_visit(component: &StageComponent) -> String {
    serde_json::json!({
        "stage": component.name(),
        "digest": component.digest(),
        "at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    })
    .to_string()
}

/// The headers of a result: the input's, with the trace context continued as a child span
/// of this stage and `visit` added to the trail.
fn onward_headers(message: &BorrowedMessage<'_>, visit: &str) -> OwnedHeaders {
    let mut onward = OwnedHeaders::new();
    for header in message.headers().into_iter().flat_map(|h| h.iter()) {
        let child = (header.key == trace_context::HEADER)
            .then(|| trace_context::child_of(std::str::from_utf8(header.value?).ok()?))
            .flatten();
        onward = onward.insert(Header {
            key: header.key,
            value: child.as_deref().map(str::as_bytes).or(header.value),
        });
    }
    onward.insert(Header {
        key: TRAIL_HEADER,
        value: Some(visit.as_bytes()),
    })
}

/// The trace id of a record's trace context, for logs.
fn trace_id(message: &BorrowedMessage<'_>) -> Option<String> {
    let header = message
        .headers()?
        .iter()
        .find(|h| h.key == trace_context::HEADER)?;
    let traceparent = std::str::from_utf8(header.value?).ok()?;
    trace_context::trace_id(traceparent).map(str::to_owned)
}

/// The headers that tell an operator where a dead-lettered record came from and why.
fn dead_letter_headers(
    headers: OwnedHeaders,
    component: &StageComponent,
    failure: &Failure,
    message: &BorrowedMessage<'_>,
) -> OwnedHeaders {
    let fields = [
        ("pizza-host.stage", component.name().to_owned()),
        ("pizza-host.digest", component.digest().to_owned()),
        ("pizza-host.error-kind", failure.kind.to_owned()),
        ("pizza-host.error", failure.message.clone()),
        ("pizza-host.topic", message.topic().to_owned()),
        ("pizza-host.partition", message.partition().to_string()),
        ("pizza-host.offset", message.offset().to_string()),
        ("pizza-host.attempts", failure.attempts.to_string()),
    ];
    fields.iter().fold(headers, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    })
}
