//! A stage's loop under `guarantee = "exactly-once"`: the host's transactional driver
//! ([`crate::kafka::transaction`]) with the stage's batch as its work. Each batch's results,
//! dead letters and input offsets are committed in one transaction; while one commits, the
//! stage calls its component on the first records of the next. The transactional id is
//! stable per stage and host instance, so a restarted host fences its own zombie and aborts the
//! transaction it left open.

use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::Producer;
use tokio::time::Instant;

use super::process::{self, Bound};
use super::{DRAIN_CHECK, StageShared, StopSignals};
use crate::kafka::group::consumed_to_end;
use crate::kafka::transaction::{self, Idle, TXN_TIMEOUT, Transaction, TransactionalWork};
use crate::kafka::{GroupConsumer, KafkaSettings};
use crate::pipeline::plan::StageRoute as Route;

/// Runs the stage transactionally until told to stop or drained; see the module docs.
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
    let mut work = StageWork {
        stage,
        route,
        signals,
        called_ahead: None,
    };
    let name = format!("stage {}", route.name);
    transaction::run(
        &name,
        &consumer,
        &producer,
        kafka.transaction_timeout(),
        &signals.stop,
        DRAIN_CHECK,
        &mut work,
    )
    .await?;
    crate::kafka::leave(&consumer, &stage.group).await;
    Ok(())
}

/// The stage's batch, as transactional work.
struct StageWork<'a> {
    stage: &'a StageShared,
    route: &'a Route,
    signals: &'a StopSignals,
    /// The next batch's first records, called while the previous transaction committed.
    called_ahead: Option<process::CalledAhead>,
}

impl TransactionalWork for StageWork<'_> {
    async fn process(
        &mut self,
        txn: &mut Transaction<'_>,
        records: &[BorrowedMessage<'_>],
        deadline: Instant,
    ) -> anyhow::Result<usize> {
        let bound = Bound {
            deadline,
            fresh: txn.is_empty(),
        };
        let ahead = self.called_ahead.take();
        let pending = process::batch(
            self.stage,
            self.route,
            txn.producer(),
            records,
            Some(bound),
            ahead,
        )
        .await?;
        let handled = pending.len();
        txn.include(pending.into_iter().flat_map(|pending| pending.deliveries));
        Ok(handled)
    }

    async fn finish(&mut self, _txn: &mut Transaction<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn prepare(&mut self, records: &[BorrowedMessage<'_>]) {
        self.called_ahead = Some(process::call_ahead(self.stage, records));
    }

    /// A draining stage stops once it has read its input to the end.
    fn idle(&mut self, consumer: &GroupConsumer) -> anyhow::Result<Idle> {
        let drained = self.signals.drain.is_cancelled()
            && tokio::task::block_in_place(|| consumed_to_end(consumer, &self.route.input))?;
        Ok(if drained { Idle::Stop } else { Idle::Wait })
    }
}
