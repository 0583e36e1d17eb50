//! The one way a record is handed to a producer: waiting, without blocking a thread, while
//! the producer's queue is full.
//!
//! A full queue is back-pressure (the broker is slower than the stages, see
//! `PRODUCER_QUEUE_KIB`), never an error: the record is offered again shortly.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// How long to wait before offering a record to a full queue again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);

/// Hands `record` to `producer`. Its delivery is settled later: the returned future says how.
pub async fn send<K, P>(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, K, P>,
) -> anyhow::Result<DeliveryFuture>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(QUEUE_FULL_WAIT).await;
            }
            Err((err, _)) => return Err(err).context("cannot hand a record to the producer"),
        }
    }
}

/// Hands `record` to `producer` and waits for the broker's acknowledgement; returns the
/// record's offset.
pub async fn deliver<K, P>(
    producer: &FutureProducer,
    record: FutureRecord<'_, K, P>,
) -> anyhow::Result<i64>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    match send(producer, record).await?.await {
        Ok(Ok(delivered)) => Ok(delivered.offset),
        Ok(Err((err, _))) => Err(err.into()),
        Err(_) => anyhow::bail!("the producer was dropped"),
    }
}
