//! A batch of one stage: call the component on each record, in order, and send each outcome
//! — the records it became (none for a dropped event, several for a split one) to their output
//! topics with the record's key and headers plus this stage's trail visit, or the original
//! record to the dead-letter topic with headers saying why.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{Failure, Pending, StageShared};
use crate::kafka::headers;
use crate::pipeline::plan::StageRoute as Route;
use crate::runtime::{CallError, Event, Output, PROCESSOR_WORLD, StageComponent};
use crate::telemetry::metrics::StageMetrics;
use crate::telemetry::trace_context;

/// What a record costs beyond its key, value and headers in librdkafka's size check (its
/// framing), with room to spare.
const RECORD_OVERHEAD: usize = 512;
/// What the dead-letter headers add, besides the error message.
const DEAD_LETTER_HEADERS: usize = 512;

/// Wait before the first retry of a retryable stage error; doubled for each further one.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// Calls the stage on each of `messages` (records taken from the input in order) and sends
/// each outcome, in order: the result to the output topic, or the original record to the
/// dead-letter topic. Returns one pending send per record handled: all of them, or under a
/// [`Bound`] the first ones, those that fit in it.
///
/// The first call of every record happens in one hand-over of the worker thread
/// ([`block_in_place`](tokio::task::block_in_place)), which costs more than a call on a reused
/// instance, unless it was made `ahead` (see [`call_ahead`]); a record whose call failed with a
/// retryable error is then retried before its result is sent, so results still leave in input
/// order. A swap takes effect from the next batch.
pub(crate) async fn batch(
    stage: &StageShared,
    route: &Route,
    producer: &FutureProducer,
    messages: &[BorrowedMessage<'_>],
    bound: Option<Bound>,
    ahead: Option<CalledAhead>,
) -> anyhow::Result<Vec<Pending>> {
    // Records called ahead keep the version that made them (their trail names it).
    let (component, mut first_calls) =
        match ahead.filter(|ahead| ahead.first == messages.first().map(identity)) {
            Some(ahead) => (ahead.component, ahead.outcomes),
            None => (stage.current(), Vec::new()),
        };
    first_calls.truncate(messages.len());
    let metrics = &stage.stats.metrics;
    let to_call = &messages[first_calls.len()..];
    if !to_call.is_empty() {
        // A call is CPU-bound for up to its deadline: keep it off the async workers' budget.
        tokio::task::block_in_place(|| {
            for message in to_call {
                if let Some(bound) = bound
                    && !bound.may_start(first_calls.is_empty(), component.longest_call())
                {
                    break;
                }
                first_calls.push(call_once(&component, metrics, message));
            }
        });
    }
    let visit = trail_visit(&component);
    let mut sent = Vec::with_capacity(first_calls.len());
    for (message, outcome) in messages.iter().zip(first_calls) {
        let outcome = match outcome {
            Err(failure) if failure.retryable && route.retries > 0 => {
                // Its retries may take long: under a bound, only before anything is sent
                // (they then open the next transaction, whose clock has not started).
                if bound.is_some_and(|bound| !(bound.fresh && sent.is_empty())) {
                    break;
                }
                retry(&component, metrics, message, route.retries).await
            }
            outcome => outcome,
        };
        sent.push(
            send_outcome(stage, route, producer, &component, &visit, message, outcome).await?,
        );
    }
    Ok(sent)
}

/// The first calls of records taken while the previous transaction committed (see
/// [`call_ahead`]), to be sent in the next.
pub(crate) struct CalledAhead {
    component: std::sync::Arc<StageComponent>,
    /// Partition and offset of the first record called, to match them to the next batch.
    first: Option<(i32, i64)>,
    outcomes: Vec<Result<Vec<Output>, Failure>>,
}

/// Calls the stage on `messages` now, sending nothing: under exactly-once the next batch's
/// first records are called while the previous transaction commits, so the stage's work and
/// the commit's round trips overlap. [`batch`] then sends these outcomes.
pub(crate) fn call_ahead(stage: &StageShared, messages: &[BorrowedMessage<'_>]) -> CalledAhead {
    let component = stage.current();
    let outcomes = tokio::task::block_in_place(|| {
        messages
            .iter()
            .map(|message| call_once(&component, &stage.stats.metrics, message))
            .collect()
    });
    CalledAhead {
        first: messages.first().map(identity),
        component,
        outcomes,
    }
}

/// Where a record sits in its topic.
fn identity(message: &BorrowedMessage<'_>) -> (i32, i64) {
    (message.partition(), message.offset())
}

/// How long a batch may take, when it is part of a transaction that must commit before the
/// broker's transaction timeout (see [`crate::kafka::transaction`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    /// When the batch must be done.
    pub deadline: Instant,
    /// Whether nothing was sent in the transaction before this batch.
    pub fresh: bool,
}

impl Bound {
    /// Whether a call that may take up to `longest` can start now (`first` of the batch).
    /// The first record of a fresh transaction always can: a batch must make progress.
    fn may_start(self, first: bool, longest: Duration) -> bool {
        (first && self.fresh) || Instant::now() + longest <= self.deadline
    }
}

/// The stage's first call on one record (a record without a value is not called).
fn call_once(
    component: &StageComponent,
    metrics: &StageMetrics,
    message: &BorrowedMessage<'_>,
) -> Result<Vec<Output>, Failure> {
    metrics.record_in();
    timed_call(component, metrics, message).map_err(|err| Failure {
        // Nothing was called on input the stage could not be given.
        attempts: u32::from(!matches!(err, CallError::InvalidInput(_))),
        ..Failure::from(err)
    })
}

/// One call of the stage on `message`, counted in its metrics.
fn timed_call(
    component: &StageComponent,
    metrics: &StageMetrics,
    message: &BorrowedMessage<'_>,
) -> Result<Vec<Output>, CallError> {
    let Some(value) = message.payload() else {
        return Err(CallError::InvalidInput("record has no value".into()));
    };
    // Only a processor reads the headers: a topping's call does not pay for listing them.
    let headers: Vec<(&str, &[u8])> = if component.world() == PROCESSOR_WORLD {
        let all = message.headers().into_iter().flat_map(|h| h.iter());
        all.map(|h| (h.key, h.value.unwrap_or_default())).collect()
    } else {
        Vec::new()
    };
    let event = Event {
        value,
        key: message.key(),
        headers: &headers,
        timestamp: message.timestamp().to_millis(),
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
    };
    let started = std::time::Instant::now();
    let called = component.call(&event);
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
    message: &BorrowedMessage<'_>,
    retries: u32,
) -> Result<Vec<Output>, Failure> {
    let mut attempt = 1;
    loop {
        tokio::time::sleep(RETRY_BACKOFF * 2u32.pow(attempt - 1)).await;
        attempt += 1;
        match tokio::task::block_in_place(|| timed_call(component, metrics, message)) {
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

/// Sends one record's outcome: the records it became to their outputs (none for a dropped
/// event), or the original record to the dead-letter topic with headers saying why. Either
/// all of an event's records are sent or none is: one too large sends the event to the
/// dead-letter topic instead.
async fn send_outcome(
    stage: &StageShared,
    route: &Route,
    producer: &FutureProducer,
    component: &StageComponent,
    visit: &str,
    message: &BorrowedMessage<'_>,
    outcome: Result<Vec<Output>, Failure>,
) -> anyhow::Result<Pending> {
    let outcome = outcome.and_then(|outputs| check_sizes(route, visit, message, outputs));
    stage.stats.record(&outcome);
    let mut pending = Pending {
        partition: message.partition(),
        offset: message.offset(),
        deliveries: Vec::new(),
    };
    let outputs = match outcome {
        Ok(outputs) => outputs,
        Err(failure) => {
            let record = dead_letter(route, component, message, &failure);
            let record = match message.key() {
                Some(key) => record.key(key),
                None => record,
            };
            pending
                .deliveries
                .push(crate::kafka::send(producer, record).await?);
            return Ok(pending);
        }
    };
    if outputs.is_empty()
        && let Some(notices) = &route.drop_notices
    {
        let record = drop_notice(notices, route, component, message);
        pending
            .deliveries
            .push(crate::kafka::send(producer, record).await?);
        return Ok(pending);
    }
    // An order's records are keyed by its id.
    let order_id = message.key().and_then(|key| std::str::from_utf8(key).ok());
    for output in outputs {
        if let Some(order_id) = order_id {
            stage.events.publish_for_order(order_id, || {
                serde_json::json!({
                    "type": "stage",
                    "stage": component.name(),
                    "pizza": serde_json::from_slice::<serde_json::Value>(&output.value).unwrap_or_default(),
                })
            });
        }
        // The runtime checked the name against the stage's declared outputs.
        let topic = route
            .output_topic(output.to.as_deref())
            .unwrap_or(&route.outputs[0].1);
        let record = FutureRecord::to(topic)
            .payload(&output.value[..])
            .headers(onward_headers(message, visit, route, &output.headers));
        let record = match output.key.as_deref().or(message.key()) {
            Some(key) => record.key(key),
            None => record,
        };
        pending
            .deliveries
            .push(crate::kafka::send(producer, record).await?);
    }
    Ok(pending)
}

/// `outputs`, unless one would be larger than the stage may send.
fn check_sizes(
    route: &Route,
    visit: &str,
    message: &BorrowedMessage<'_>,
    outputs: Vec<Output>,
) -> Result<Vec<Output>, Failure> {
    let carried = headers_size(message) + visit.len();
    for output in &outputs {
        let key_bytes = output
            .key
            .as_ref()
            .map_or(message.key().map_or(0, <[u8]>::len), Vec::len);
        let added: usize = output.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let size = output.value.len() + key_bytes + carried + added;
        if size + RECORD_OVERHEAD > route.max_output_bytes {
            return Err(Failure {
                kind: "too-large",
                message: format!(
                    "the output record would be {size} bytes, over the stage's limit of {} \
                     (max_output_bytes, or what the producer may send)",
                    route.max_output_bytes
                ),
                attempts: 1,
                retryable: false,
            });
        }
    }
    Ok(outputs)
}

/// The note that the stage dropped `message`, a pizza (see [`Route::drop_notices`]): the
/// record as it came, with headers naming the stage, for the order view to count.
fn drop_notice<'a>(
    topic: &'a str,
    route: &Route,
    component: &StageComponent,
    message: &'a BorrowedMessage<'_>,
) -> FutureRecord<'a, [u8], [u8]> {
    let headers = headers::append(
        copy_headers(message, route),
        &[
            (headers::STAGE, component.name()),
            (headers::DIGEST, component.digest()),
        ],
    );
    let record = FutureRecord::to(topic)
        .payload(message.payload().unwrap_or_default())
        .headers(headers);
    match message.key() {
        Some(key) => record.key(key),
        None => record,
    }
}

/// The record sent to the dead-letter topic for `message`: its value and headers, with
/// headers saying why.
fn dead_letter<'a>(
    route: &'a Route,
    component: &StageComponent,
    message: &'a BorrowedMessage<'_>,
    failure: &Failure,
) -> FutureRecord<'a, [u8], [u8]> {
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
    let why = dead_letter_headers(copy_headers(message, route), component, failure, message);
    let payload = message.payload().unwrap_or_default();
    let key_bytes = message.key().map_or(0, <[u8]>::len);
    let size = payload.len() + key_bytes + headers_size(message) + DEAD_LETTER_HEADERS;
    // An input near the limit, with the headers that say why, may not fit: the dead letter
    // then goes without the value, its headers naming where the record is.
    let payload = if size + failure.message.len() + RECORD_OVERHEAD > route.max_output_bytes {
        &[][..]
    } else {
        payload
    };
    FutureRecord::to(&route.dead_letter)
        .payload(payload)
        .headers(why)
}

/// Bytes of `message`'s headers (names and values).
fn headers_size(message: &BorrowedMessage<'_>) -> usize {
    message.headers().map_or(0, |headers| {
        headers
            .iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    })
}

/// The input record's headers, but those of the host's own it may not trust (see
/// [`headers::pass_on`]).
fn copy_headers(message: &BorrowedMessage<'_>, route: &Route) -> OwnedHeaders {
    let mut copy = OwnedHeaders::new();
    let kept = message.headers().into_iter().flat_map(|h| h.iter());
    for header in kept.filter(|h| headers::pass_on(h.key, route.trusts_trail)) {
        copy = copy.insert(header);
    }
    copy
}

/// This stage's entry in a result's trail (see [`headers::TRAIL`]), stamped now: made once per
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
/// of this stage, the headers the stage `added` (but the host's own, which a stage may not
/// write) and `visit` added to the trail.
fn onward_headers(
    message: &BorrowedMessage<'_>,
    visit: &str,
    route: &Route,
    added: &[(String, Vec<u8>)],
) -> OwnedHeaders {
    // Sized once: the list grows by a trail entry per stage, past librdkafka's default of 5.
    let carried = message.headers().map_or(0, Headers::count);
    let mut onward = OwnedHeaders::new_with_capacity(carried + added.len() + 1);
    let kept = message.headers().into_iter().flat_map(|h| h.iter());
    for header in kept.filter(|h| headers::pass_on(h.key, route.trusts_trail)) {
        let child = (header.key == trace_context::HEADER)
            .then(|| trace_context::child_of(std::str::from_utf8(header.value?).ok()?))
            .flatten();
        onward = onward.insert(Header {
            key: header.key,
            value: child.as_deref().map(str::as_bytes).or(header.value),
        });
    }
    for (key, value) in added
        .iter()
        .filter(|(key, _)| !key.starts_with(headers::PREFIX))
    {
        onward = onward.insert(Header {
            key,
            value: Some(value),
        });
    }
    onward.insert(Header {
        key: headers::TRAIL,
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
    input_headers: OwnedHeaders,
    component: &StageComponent,
    failure: &Failure,
    message: &BorrowedMessage<'_>,
) -> OwnedHeaders {
    let (partition, offset) = (
        message.partition().to_string(),
        message.offset().to_string(),
    );
    let attempts = failure.attempts.to_string();
    headers::append(
        input_headers,
        &[
            (headers::STAGE, component.name()),
            (headers::DIGEST, component.digest()),
            (headers::ERROR_KIND, failure.kind),
            (headers::ERROR, &failure.message),
            (headers::TOPIC, message.topic()),
            (headers::PARTITION, &partition),
            (headers::OFFSET, &offset),
            (headers::ATTEMPTS, &attempts),
        ],
    )
}
