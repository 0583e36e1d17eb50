//! One stage's loop: consume a record, call the component, produce the result with the same
//! key, and only then let the input offset be committed.
//!
//! # Delivery (at least once)
//! Records of a partition are called in order and their results are sent in order; sends are
//! pipelined (the loop does not wait for each acknowledgement) through an idempotent producer,
//! which keeps them in order and free of duplicates on retry. A separate task awaits the
//! acknowledgements in the same order and stores each input offset only after its output is
//! acknowledged, so the committed offset never passes an event whose result is not in Kafka.
//! If a send fails for good, the loop stops and is restarted from the last committed offset.
//!
//! # Bad records
//! A record the stage cannot process (the stage returned an error, trapped, ran out of time or
//! memory, or returned something that is not a JSON object keeping `order_id`) and a record
//! that is not UTF-8 text go to the stage's dead-letter topic with headers saying why, and the
//! partition moves on: one bad record never stalls the pipeline or takes the host down.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::kafka::KafkaSettings;
use crate::runtime::{CallError, StageComponent};

/// Sent but not yet acknowledged results per stage; bounds memory when the broker is slow.
const MAX_IN_FLIGHT: usize = 10_000;
/// How long shutdown waits for outstanding acknowledgements before giving up on them (they
/// are then redelivered after restart, never lost).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a consumer error, so a persistent one is logged, not spun on.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);

/// Where a stage reads from and writes to.
#[derive(Debug, Clone)]
pub struct Route {
    /// Consumer group id.
    pub group_id: String,
    /// Input topic.
    pub input: String,
    /// Output topic.
    pub output: String,
    /// Topic for records the stage could not process.
    pub dead_letter: String,
}

/// The dead-letter topic of a stage that reads `input`.
pub fn dead_letter_topic(input: &str) -> String {
    format!("{input}.dlq")
}

/// Why a record went to the dead-letter topic instead of the output.
struct Failure {
    kind: &'static str,
    message: String,
}

impl From<CallError> for Failure {
    fn from(err: CallError) -> Self {
        Failure {
            kind: err.kind(),
            message: err.to_string(),
        }
    }
}

/// A result on its way to the broker, and the input offset it releases once acknowledged.
struct Pending {
    partition: i32,
    offset: i64,
    delivery: DeliveryFuture,
}

/// Runs the stage until `shutdown`, then finishes in-flight records and commits.
///
/// Returns an error when the stage cannot go on (a send failed for good); the caller restarts
/// it, and it resumes from the last committed offset.
pub async fn run(
    component: Arc<StageComponent>,
    route: &Route,
    kafka: &KafkaSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let consumer = Arc::new(kafka.consumer(&route.group_id)?);
    let producer = kafka.producer()?;
    consumer
        .subscribe(&[&route.input])
        .with_context(|| format!("cannot subscribe to {}", route.input))?;

    let (pending_tx, pending_rx) = mpsc::channel(MAX_IN_FLIGHT);
    let mut acker = tokio::spawn(store_acknowledged(
        consumer.clone(),
        route.input.clone(),
        pending_rx,
    ));

    let stopped = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            acked = &mut acker => break acked.context("acknowledgement task panicked").and_then(|r| r),
            received = consumer.recv() => match received {
                Ok(message) => {
                    let pending = process(&component, route, &producer, &message).await?;
                    if pending_tx.send(pending).await.is_err() {
                        // The acker ended; its result says why on the next turn.
                        continue;
                    }
                }
                Err(err) => {
                    tracing::warn!(stage = component.name(), topic = route.input, "consumer error: {err}");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            },
        }
    };

    // Let every sent result be acknowledged and its offset stored, then commit them.
    drop(pending_tx);
    if !acker.is_finished() {
        match tokio::time::timeout(DRAIN_TIMEOUT, acker).await {
            Ok(joined) => joined.context("acknowledgement task panicked")??,
            Err(_) => tracing::warn!(
                stage = component.name(),
                "gave up waiting for acknowledgements"
            ),
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

/// Calls the stage on one record and sends the outcome: the result to the output topic, or
/// the original record to the dead-letter topic.
async fn process(
    component: &StageComponent,
    route: &Route,
    producer: &FutureProducer,
    message: &BorrowedMessage<'_>,
) -> anyhow::Result<Pending> {
    let key = message.key();
    let order_id = key.map(String::from_utf8_lossy);
    let outcome = match message.payload().map(std::str::from_utf8) {
        None => Err(Failure {
            kind: "invalid-input",
            message: "record has no value".into(),
        }),
        Some(Err(err)) => Err(Failure {
            kind: "invalid-input",
            message: format!("value is not UTF-8: {err}"),
        }),
        // A call is CPU-bound for up to its deadline: keep it off the async workers' budget.
        Some(Ok(event)) => tokio::task::block_in_place(|| component.call(event))
            .map_err(Failure::from)
            .and_then(|output| check_output(event, output)),
    };

    let headers = copy_headers(message);
    let record = match &outcome {
        Ok(output) => FutureRecord::to(&route.output)
            .payload(output.as_bytes())
            .headers(headers),
        Err(failure) => {
            tracing::warn!(
                stage = component.name(),
                topic = route.input,
                partition = message.partition(),
                offset = message.offset(),
                order_id = order_id.as_deref(),
                kind = failure.kind,
                "record sent to {}: {}",
                route.dead_letter,
                failure.message
            );
            let why = dead_letter_headers(headers, component, failure, message);
            FutureRecord::to(&route.dead_letter)
                .payload(message.payload().unwrap_or_default())
                .headers(why)
        }
    };
    let record = match key {
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

/// The stage's output must be a JSON object that keeps the input's `order_id`: downstream
/// stages and the order view rely on both.
fn check_output(input: &str, output: String) -> Result<String, Failure> {
    let invalid = |message: String| Failure {
        kind: "invalid-output",
        message,
    };
    let Ok(Value::Object(out)) = serde_json::from_str::<Value>(&output) else {
        return Err(invalid("stage output is not a JSON object".into()));
    };
    let input_order_id = match serde_json::from_str::<Value>(input) {
        Ok(Value::Object(mut map)) => map.remove("order_id"),
        _ => None,
    };
    if let Some(expected) = input_order_id
        && out.get("order_id") != Some(&expected)
    {
        return Err(invalid(format!(
            "stage output changed or dropped order_id (was {expected})"
        )));
    }
    Ok(output)
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

/// Awaits acknowledgements in send order and stores each input offset after its output is
/// safely in Kafka. Returns an error, storing nothing more, at the first failed send.
async fn store_acknowledged(
    consumer: Arc<StreamConsumer>,
    input: String,
    mut pending: mpsc::Receiver<Pending>,
) -> anyhow::Result<()> {
    while let Some(Pending {
        partition,
        offset,
        delivery,
    }) = pending.recv().await
    {
        match delivery.await {
            Ok(Ok(_)) => {
                // Fails only if the partition was revoked meanwhile; its new owner will
                // process the record again (at least once), so there is nothing to do.
                if let Err(err) = consumer.store_offset(&input, partition, offset) {
                    tracing::debug!(topic = input, partition, offset, "offset not stored: {err}");
                }
            }
            Ok(Err((err, _))) => {
                anyhow::bail!(
                    "send for {input}/{partition}@{offset} failed: {err}; resuming from the last commit"
                )
            }
            Err(_) => anyhow::bail!("producer dropped the send for {input}/{partition}@{offset}"),
        }
    }
    Ok(())
}

/// The input record's headers, carried to the output (trace context and the like).
fn copy_headers(message: &BorrowedMessage<'_>) -> OwnedHeaders {
    let mut copy = OwnedHeaders::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            copy = copy.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    copy
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
    ];
    fields.iter().fold(headers, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_must_be_an_object_keeping_order_id() {
        let input = r#"{"order_id":"7","sauce":""}"#;
        assert!(check_output(input, r#"{"order_id":"7","sauce":"bbq"}"#.into()).is_ok());
        for bad in [
            "[1]",
            "not json",
            r#"{"sauce":"bbq"}"#,
            r#"{"order_id":"8"}"#,
            r#"{"order_id":7}"#,
        ] {
            let err = check_output(input, bad.into()).err().map(|f| f.kind);
            assert_eq!(err, Some("invalid-output"), "{bad}");
        }
        // An input without order_id (not a pizza) only needs an object back.
        assert!(check_output(r#"{"x":1}"#, r#"{"x":2}"#.into()).is_ok());
    }
}
