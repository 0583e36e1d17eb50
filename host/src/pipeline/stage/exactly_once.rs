//! A stage's loop under `guarantee = "exactly-once"`: Kafka's consume–transform–produce
//! transactions (rust-rdkafka's transactional example, KIP-447 fencing).
//!
//! Records are taken in batches (while they keep arriving, up to [`MAX_BATCH`] records or
//! [`BATCH_WINDOW`]; the stage is called on those already at hand in one go, as under
//! at-least-once); each batch's results, dead letters and input offsets are committed in one
//! transaction, so downstream readers (`read_committed`) see every result exactly once. If
//! anything in a batch fails, the transaction is aborted and the stage restarts from its last
//! committed offsets. The transactional id is stable per stage and host instance, so a
//! restarted host fences its own zombie and aborts the transaction it left open.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::time::Instant;

use super::{
    CALL_BATCH, Route, StageShared, StopSignals, consumed_to_end, process_batch, take_ready,
};
use crate::kafka::{ConsumerErrors, KafkaSettings};

/// Most records in one transaction.
pub(crate) const MAX_BATCH: usize = 1_000;
/// A batch ends when no further record arrives within this gap (a lone record is not held
/// back waiting for company)...
pub(crate) const IDLE_GAP: Duration = Duration::from_millis(2);
/// ...or when it has been open this long (records keep coming).
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// How long a transaction call may take.
pub(crate) const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the stage transactionally until told to stop; see the module docs.
pub async fn run(
    stage: &StageShared,
    route: &Route,
    kafka: &KafkaSettings,
    signals: &StopSignals,
    transactional_id: &str,
) -> anyhow::Result<()> {
    let consumer = kafka.transactional_consumer(&route.group_id, stage.group.clone())?;
    let producer = kafka.transactional_producer(transactional_id)?;
    tokio::task::block_in_place(|| producer.init_transactions(TXN_TIMEOUT))
        .with_context(|| format!("cannot start transactions as {transactional_id}"))?;
    consumer
        .subscribe(&[&route.input])
        .with_context(|| format!("cannot subscribe to {}", route.input))?;
    let mut drain_check = tokio::time::interval(super::DRAIN_CHECK);
    drain_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut errors = ConsumerErrors::default();

    loop {
        // The first record opens a batch; stopping happens between batches.
        let first = tokio::select! {
            biased;
            _ = signals.stop.cancelled() => return Ok(()),
            received = consumer.recv() => received,
            _ = drain_check.tick() => {
                if signals.drain.is_cancelled()
                    && tokio::task::block_in_place(|| consumed_to_end(&consumer, &route.input))?
                {
                    return Ok(());
                }
                continue;
            }
        };
        let first = match first {
            Ok(message) => message,
            Err(err) => {
                errors.log(&format!("stage {}", route.name), &err);
                continue;
            }
        };

        tokio::task::block_in_place(|| producer.begin_transaction())
            .context("cannot begin a transaction")?;
        let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let mut sent = Vec::new();
        let batch = async {
            let deadline = Instant::now() + BATCH_WINDOW;
            let name = &route.name;
            let mut ready = take_ready(&consumer, first, CALL_BATCH, &mut errors, name);
            let mut taken = 0;
            loop {
                for message in &ready {
                    next_offsets.insert(message.partition(), message.offset() + 1);
                }
                taken += ready.len();
                let pending = process_batch(stage, route, &producer, &ready).await?;
                sent.extend(pending.into_iter().map(|pending| pending.delivery));
                if taken >= MAX_BATCH {
                    break;
                }
                let until = deadline.min(Instant::now() + IDLE_GAP);
                let Ok(received) = tokio::time::timeout_at(until, consumer.recv()).await else {
                    break;
                };
                let message = received.context("consumer error inside a transaction")?;
                let room = (MAX_BATCH - taken).min(CALL_BATCH);
                ready = take_ready(&consumer, message, room, &mut errors, name);
            }
            anyhow::Ok(())
        }
        .await;

        let committed = batch.and_then(|()| {
            let mut offsets = TopicPartitionList::new();
            for (&partition, &next) in &next_offsets {
                offsets.add_partition_offset(&route.input, partition, Offset::Offset(next))?;
            }
            let group = consumer
                .group_metadata()
                .context("the consumer has no group metadata")?;
            tokio::task::block_in_place(|| {
                producer
                    .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
                    .context("cannot add the offsets to the transaction")?;
                crate::kafka::commit_transaction(&producer, sent, TXN_TIMEOUT)
            })
        });
        if let Err(err) = committed {
            if let Err(abort) =
                tokio::task::block_in_place(|| producer.abort_transaction(TXN_TIMEOUT))
            {
                tracing::warn!(stage = route.name, "abort failed too: {abort}");
            }
            return Err(err.context("transaction aborted; the batch will be processed again"));
        }
    }
}
