//! The one way a record is handed to a producer: waiting, without blocking a thread, while
//! the producer's queue is full; and sending what a producer holds at once, when lingering
//! for company would only delay it.
//!
//! A full queue is back-pressure (the broker is slower than the stages, see
//! `PRODUCER_QUEUE_KIB`), never an error: the record is offered again shortly.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

/// How long to wait before offering a record to a full queue again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);
/// How long a nudge under load keeps the producer sending at once. librdkafka sends early
/// only if a broker thread wakes while it lasts, so it is a best effort: long enough for the
/// threads to wake on an idle machine, short enough that records handed over meanwhile are
/// few (they too are sent at once).
const NUDGE_HOLD: Duration = Duration::from_millis(1);
/// How long one hurry of [`deliver`] keeps the producer sending at once; it hurries again
/// until its record is acknowledged, as its caller waits for that anyway (a new producer may
/// take longer than one hold to connect).
const DELIVER_HOLD: Duration = Duration::from_secs(1);

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
/// record's offset. The record is sent at once: a caller that waits for it has nothing to
/// batch it with (a host's beat, a deployment's pieces one after the other), and its
/// tombstone at shutdown must not wait out a long linger.
pub async fn deliver<K, P>(
    producer: &FutureProducer,
    record: FutureRecord<'_, K, P>,
) -> anyhow::Result<i64>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let mut acknowledged = std::pin::pin!(acknowledged(send(producer, record).await?));
    // Hurried again while it is not acknowledged: a producer still connecting after one hold
    // would otherwise keep the record for a whole linger.
    loop {
        hurry(producer, DELIVER_HOLD);
        if let Ok(offset) = tokio::time::timeout(DELIVER_HOLD, acknowledged.as_mut()).await {
            return offset;
        }
    }
}

/// What became of a record handed to a producer: its offset once the broker acknowledged it.
pub async fn acknowledged(sent: DeliveryFuture) -> anyhow::Result<i64> {
    match sent.await {
        Ok(Ok(delivered)) => Ok(delivered.offset),
        Ok(Err((err, _))) => Err(err.into()),
        Err(_) => anyhow::bail!("the producer was dropped"),
    }
}

/// Blocking: has `producer` send everything it holds now, not after `linger.ms` (also what it
/// is given meanwhile), and waits up to `timeout` until every record has an outcome; false if
/// one has none yet. An outcome may be a failure: callers check each record's delivery.
///
/// For when waiting for more records to batch only delays: a transaction about to commit
/// (nothing more is sent in it), or a stage with nothing more to send (a lone pizza paid one
/// 5 ms linger per hop, most of its latency). librdkafka's
/// `rd_kafka_flush` sends at once while it waits, but rust-rdkafka's `flush` calls it with
/// no wait and then polls in 100 ms slices that run to their end (every commit took 100 ms),
/// so it is called here directly. Delivery reports are events (rust-rdkafka's producers use
/// the event API, served by the producer's polling thread), so it waits on the client's
/// count of unacknowledged records rather than polling.
#[allow(unsafe_code)]
pub fn flush_now(producer: &FutureProducer, timeout: Duration) -> bool {
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the live client `producer` owns, borrowed for the whole call, and
    // librdkafka's flush may be called from any thread beside its other calls.
    let flushed =
        unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), millis) };
    flushed == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
}

/// Has `producer` send what it holds at once, and whatever it is given for up to `hold`
/// more or until all it holds is acknowledged, on a blocking thread (see [`flush_now`]); the
/// thread's outcome is whether all was acknowledged.
pub fn hurry(producer: &FutureProducer, hold: Duration) -> tokio::task::JoinHandle<bool> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || flush_now(&producer, hold))
}

/// Sends a producer's records at once when they have no company to wait for.
///
/// `linger.ms` holds records back so that one request carries many under load; a record
/// that is alone only waits (five hops of 5 ms were most of a lone pizza's way through the
/// pipeline). Whoever has just handed records to the producer nudges it, and the producer
/// sends what it holds now if those records are all it holds (nobody else's wait for
/// company: a lone pizza, a customer ordering alone, again and again) or if the last nudge
/// is a linger ago or more. So a lone record leaves at once, and under load records still
/// leave in batches, a few times per linger at most.
pub struct Nudge {
    linger: Duration,
    last: Mutex<Option<Instant>>,
}

impl Nudge {
    /// Nudges at most once per `linger` (the producers' `linger.ms`) under load; never if it
    /// is zero.
    pub fn new(linger: Duration) -> Self {
        Self {
            linger,
            last: Mutex::new(None),
        }
    }

    /// Has `producer` send what it holds now, if that is only the `handed_over` records the
    /// caller has just given it (and is waiting for), or if it was not nudged within the last
    /// linger. Does not wait: the send happens on a blocking thread, returned when there is
    /// one.
    ///
    /// Records that are alone are held on to until they are acknowledged, for up to a
    /// linger: librdkafka sends early only if a broker thread wakes while the nudge lasts,
    /// and on a busy machine a thread may take longer than a millisecond to wake (then a
    /// lone pizza waited the whole linger at a hop), or a new producer longer to connect.
    /// Whatever the producer is given meanwhile is sent at once too: at worst, when load
    /// begins after a quiet spell, records handed over within that one linger go out without
    /// waiting for company. Under load a nudge lasts [`NUDGE_HOLD`], as the next comes soon.
    pub fn nudge(
        &self,
        producer: &FutureProducer,
        handed_over: usize,
    ) -> Option<tokio::task::JoinHandle<bool>> {
        if self.linger.is_zero() {
            return None;
        }
        // Counts records not yet acknowledged, and acknowledgements not yet taken.
        let alone =
            usize::try_from(producer.in_flight_count()).is_ok_and(|held| held <= handed_over);
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if !alone && last.is_some_and(|last| now.duration_since(last) < self.linger) {
                return None;
            }
            *last = Some(now);
        }
        Some(hurry(
            producer,
            if alone { self.linger } else { NUDGE_HOLD },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::kafka::KafkaSettings;

    /// A linger far longer than the waits below: a record that arrives within them was sent
    /// at once, not when the linger ran out.
    const LONG_LINGER: &str = "20000";
    const SOON: Duration = Duration::from_secs(5);

    /// Settings for the mock cluster's topic `out`, with the long linger.
    fn lingering(bootstrap_servers: String) -> KafkaSettings {
        KafkaSettings::new(BTreeMap::from([
            ("bootstrap.servers".to_owned(), bootstrap_servers),
            ("linger.ms".to_owned(), LONG_LINGER.to_owned()),
        ]))
    }

    fn record(key: &str) -> FutureRecord<'_, str, str> {
        FutureRecord::to("out").key(key).payload("{}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_now_sends_at_once_what_the_producer_would_linger_over() -> anyhow::Result<()> {
        let cluster = MockCluster::new(1)?;
        cluster.create_topic("out", 1, 1)?;
        let producer = lingering(cluster.bootstrap_servers()).producer()?;
        let sent = send(&producer, record("a")).await?;
        let flushed = hurry(&producer, SOON).await?;
        assert!(
            flushed,
            "not acknowledged within {SOON:?} of a {LONG_LINGER} ms linger"
        );
        assert_eq!(acknowledged(sent).await?, 0);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deliver_sends_at_once_whatever_the_linger() -> anyhow::Result<()> {
        let cluster = MockCluster::new(1)?;
        cluster.create_topic("out", 1, 1)?;
        let producer = lingering(cluster.bootstrap_servers()).producer()?;
        for (expected, key) in [(0, "a"), (1, "b")] {
            let offset = tokio::time::timeout(SOON, deliver(&producer, record(key))).await;
            assert_eq!(
                offset.ok().transpose()?,
                Some(expected),
                "not delivered within {SOON:?} of a {LONG_LINGER} ms linger"
            );
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nudge_sends_records_that_are_alone_at_once_and_others_once_a_linger()
    -> anyhow::Result<()> {
        let cluster = MockCluster::new(1)?;
        cluster.create_topic("out", 1, 1)?;
        let settings = lingering(cluster.bootstrap_servers());
        let producer = settings.producer()?;
        let nudge = Nudge::new(settings.linger());
        assert_eq!(nudge.linger, Duration::from_secs(20));

        // Alone, from a new producer: held on to until the producer has connected.
        let first = send(&producer, record("first")).await?;
        let nudged = nudge
            .nudge(&producer, 1)
            .context("the first nudge sent nothing")?;
        let offset = tokio::time::timeout(SOON, acknowledged(first)).await;
        assert_eq!(
            offset.ok().transpose()?,
            Some(0),
            "a new producer's nudged record waited for the linger"
        );
        assert!(
            nudged.await?,
            "the nudge ended before its record was acknowledged"
        );

        // Alone, twice within the linger (a customer ordering again and again): both at once.
        for (expected, key) in [(1, "a"), (2, "b")] {
            let alone = send(&producer, record(key)).await?;
            let nudged = nudge
                .nudge(&producer, 1)
                .with_context(|| format!("the nudge of {key} sent nothing"))?;
            let offset = tokio::time::timeout(SOON, acknowledged(alone)).await;
            assert_eq!(
                offset.ok().transpose()?,
                Some(expected),
                "the nudged record {key} waited for the linger"
            );
            // Whatever the producer is given while a nudge lasts goes at once too.
            nudged.await?;
        }

        // With company (another caller's record waits too), within the linger: batched.
        let company = send(&producer, record("c")).await?;
        let ours = send(&producer, record("d")).await?;
        assert!(
            nudge.nudge(&producer, 1).is_none(),
            "nudged with company within a linger"
        );
        let early = tokio::time::timeout(Duration::from_secs(1), acknowledged(ours)).await;
        assert!(
            early.is_err(),
            "a nudge with company within the linger sent at once: {early:?}"
        );
        drop(company);
        Ok(())
    }
}
