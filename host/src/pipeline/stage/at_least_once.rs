//! A stage's loop under `guarantee = "at-least-once"`.
//!
//! Records are taken in batches of those the consumer already holds (never waiting for more)
//! and the stage is called on a batch in one go, which saves a thread hand-over per record.
//! Records of a partition are called in order and their results are sent in order; sends are
//! pipelined (the loop does not wait for each acknowledgement) through an idempotent producer,
//! which keeps them in order and free of duplicates on retry, and [nudged](Nudge) after each
//! batch so that a lone record does not wait out the linger. A separate task awaits the
//! acknowledgements in the same order and stores a batch's input offsets only after all its
//! outputs (every record each input became) are acknowledged, so the committed offset never passes an event whose result is not
//! in Kafka. If a send fails for good, the loop stops; its supervisor starts it again from the
//! last committed offset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{CALL_BATCH, DRAIN_CHECK, Pending, StageShared, StopSignals, process};
use crate::kafka::group::{StallWatch, consumed_to_end, take_ready};
use crate::kafka::{ConsumerErrors, GroupConsumer, KafkaSettings, Nudge};
use crate::pipeline::plan::StageRoute as Route;

/// Sent but not yet acknowledged results per stage (counted in whole batches of at most
/// [`CALL_BATCH`]); bounds memory when the broker is slow.
const MAX_IN_FLIGHT: usize = 10_000;
/// How long shutdown waits for outstanding acknowledgements before giving up on them (they
/// are then redelivered after restart, never lost).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    let nudge = Nudge::new(kafka.linger());
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
    let mut stall = StallWatch::default();
    let name = format!("stage {}", route.name);
    let stopped = loop {
        if let Err(fatal) = errors.check_fatal() {
            break Err(fatal);
        }
        consumer.context().doing("waiting for records");
        tokio::select! {
            biased;
            _ = signals.stop.cancelled() => break Ok(()),
            acked = &mut acker => break acked.context("acknowledgement task panicked").and_then(|r| r),
            received = consumer.recv() => match received {
                Ok(first) => {
                    consumer.context().doing("processing a batch");
                    let batch = take_ready(&consumer, first, CALL_BATCH, &mut errors, &name);
                    let pending = process::batch(stage, route, &producer, &batch, None, None).await?;
                    nudge.nudge(&producer, pending.iter().map(|p| p.deliveries.len()).sum());
                    // If the acker ended, its result says why on the next turn.
                    let _ = pending_tx.send(pending).await;
                }
                Err(err) => errors.log(&name, &err),
            },
            // Last in priority: records first. Ticks even when not draining, so a drain
            // request is noticed while the input is idle.
            _ = drain_check.tick() => {
                if let Err(stalled) = stall.check(&consumer) {
                    break Err(stalled);
                }
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
    consumer.context().doing("committing");
    drop(pending_tx);
    if !acker.is_finished() {
        match tokio::time::timeout(DRAIN_TIMEOUT, acker).await {
            Ok(joined) => joined.context("acknowledgement task panicked")??,
            Err(_) => tracing::warn!(stage = route.name, "gave up waiting for acknowledgements"),
        }
    }
    stopped?;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(err) => {
            return Err(err).context(
                "final offset commit failed (records since the last commit will be redelivered)",
            );
        }
    }
    crate::kafka::leave(&consumer, &stage.group).await;
    Ok(())
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
            deliveries,
        } in batch
        {
            for delivery in deliveries {
                crate::kafka::send::acknowledged(delivery)
                    .await
                    .with_context(|| {
                        format!(
                            "send for {input}/{partition}@{offset} failed; resuming from the last commit"
                        )
                    })?;
            }
            next_offsets.insert(partition, offset + 1);
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
