//! One report's loop: restore the saved state, read the input topic from where that state
//! left off, fold each event into the state with the component, and save the state now and
//! then.
//!
//! # Exactly once
//! The state and the position in the input (the next offset of every partition) are saved
//! together, as one record on the report's compacted changelog topic, keyed by this host's
//! instance id. After a crash or restart the report resumes from the last saved record: the
//! events after its position are folded again into exactly the state that had not seen them,
//! so no event is counted twice or missed. The input is read `read_committed`, so a stage's
//! aborted transactions are never counted. Each host keeps its own copy of every report (its
//! own key), so any host answers for it.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::kafka::{self, ConsumerErrors, KafkaSettings};
use crate::pipeline::plan::ReportRoute;
use crate::pipeline::stage::LastError;
use crate::runtime::{CallError, ReportComponent};

/// How often a changed state is saved. A crash loses nothing either way (the events after the
/// last save are folded again); this bounds how many.
const SAVE_EVERY: Duration = Duration::from_millis(200);
/// How long a save may wait for the broker.
const SAVE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a running report shares with the host: its component (swapped between two events),
/// and its state (read by `GET /report/{name}`).
pub struct ReportShared {
    component: ArcSwap<ReportComponent>,
    folded: Mutex<Folded>,
    last_error: Mutex<Option<LastError>>,
}

/// The state and how far into the input it reaches; saved as one record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Folded {
    /// The state as the component last returned it (JSON text; `null` before any event).
    state: String,
    /// Next offset to read, per input partition.
    offsets: BTreeMap<i32, i64>,
    /// Events folded in.
    events: u64,
    /// Events the component could not fold (skipped).
    failed: u64,
}

impl Default for Folded {
    fn default() -> Self {
        Self {
            state: "null".into(),
            offsets: BTreeMap::new(),
            events: 0,
            failed: 0,
        }
    }
}

impl ReportShared {
    /// A report that starts with `component` and an empty state.
    pub fn new(component: ReportComponent) -> Self {
        Self {
            component: ArcSwap::from_pointee(component),
            folded: Mutex::default(),
            last_error: Mutex::default(),
        }
    }

    /// The running component.
    pub fn current(&self) -> std::sync::Arc<ReportComponent> {
        self.component.load_full()
    }

    /// Makes `component` fold every event from the next one on; the state stays.
    pub fn swap(&self, component: ReportComponent) {
        self.component.store(std::sync::Arc::new(component));
    }

    /// The current state (JSON text), and the events folded and skipped so far.
    pub fn state(&self) -> (String, u64, u64) {
        let folded = self.lock();
        (folded.state.clone(), folded.events, folded.failed)
    }

    /// The most recent event the component could not fold.
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Folded> {
        self.folded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs the report until `stop`, then saves its state. An error (a save that failed) ends the
/// run; the caller starts it again, and it resumes from the last saved state.
pub async fn run(
    shared: &ReportShared,
    route: &ReportRoute,
    kafka: &KafkaSettings,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let restored = {
        let (kafka, route) = (kafka.clone(), route.clone());
        tokio::task::spawn_blocking(move || restore(&kafka, &route))
            .await
            .context("restoring panicked")??
    };
    tracing::info!(
        report = route.name,
        events = restored.events,
        "report state restored from {}",
        route.changelog
    );
    let consumer: StreamConsumer = kafka.reader(&format!("report-{}-{}", route.name, route.key))?;
    let mut assignment = TopicPartitionList::new();
    for partition in
        tokio::task::block_in_place(|| kafka::partitions(consumer.client(), &route.input))?
    {
        let from = restored
            .offsets
            .get(&partition)
            .map_or(Offset::Beginning, |&next| Offset::Offset(next));
        assignment.add_partition_offset(&route.input, partition, from)?;
    }
    *shared.lock() = restored;
    consumer
        .assign(&assignment)
        .with_context(|| format!("cannot read {}", route.input))?;
    let producer = kafka.producer()?;

    let mut save = tokio::time::interval(SAVE_EVERY);
    let mut unsaved = false;
    let mut errors = ConsumerErrors::default();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = save.tick() => {
                if unsaved {
                    save_state(shared, route, &producer).await?;
                    unsaved = false;
                }
            }
            received = consumer.recv() => match received {
                Ok(message) => {
                    fold(shared, route, message.payload(), message.partition(), message.offset());
                    unsaved = true;
                }
                Err(err) => errors.log(&format!("report {}", route.name), &err),
            },
        }
    }
    if unsaved {
        save_state(shared, route, &producer).await?;
    }
    Ok(())
}

/// Folds one record into the state; a record the component cannot fold is skipped, counted
/// and logged (it stays in the input topic for anyone to inspect).
fn fold(
    shared: &ReportShared,
    route: &ReportRoute,
    value: Option<&[u8]>,
    partition: i32,
    offset: i64,
) {
    let component = shared.current();
    let state = shared.lock().state.clone();
    let folded = match value.map(std::str::from_utf8) {
        Some(Ok(event)) => tokio::task::block_in_place(|| component.update(&state, event)),
        Some(Err(_)) | None => Err(CallError::InvalidOutput(
            "the record's value is not UTF-8 text".into(),
        )),
    };
    let mut current = shared.lock();
    current.offsets.insert(partition, offset + 1);
    match folded {
        Ok(state) => {
            current.state = state;
            current.events += 1;
        }
        Err(err) => {
            current.failed += 1;
            tracing::warn!(
                report = route.name,
                topic = route.input,
                partition,
                offset,
                kind = err.kind(),
                "event skipped: {err}"
            );
            *shared
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(LastError {
                at: SystemTime::now(),
                kind: err.kind(),
                message: err.to_string(),
            });
        }
    }
}

/// Saves the state and its position as one record, and waits for the broker to take it.
async fn save_state(
    shared: &ReportShared,
    route: &ReportRoute,
    producer: &rdkafka::producer::FutureProducer,
) -> anyhow::Result<()> {
    let saved = serde_json::to_string(&*shared.lock())?;
    producer
        .send(
            FutureRecord::to(&route.changelog)
                .key(&route.key)
                .payload(&saved),
            SAVE_TIMEOUT,
        )
        .await
        .map_err(|(err, _)| err)
        .with_context(|| format!("cannot save report {} to {}", route.name, route.changelog))?;
    Ok(())
}

/// Blocking: the last state saved under `route.key`, read from the whole changelog (a fresh
/// state if there is none).
fn restore(kafka: &KafkaSettings, route: &ReportRoute) -> anyhow::Result<Folded> {
    let mut latest: Option<Folded> = None;
    let reader = format!("report-restore-{}", route.name);
    kafka.read_to_end(&reader, &route.changelog, None, |message| {
        if message.key() != Some(route.key.as_bytes()) {
            return;
        }
        match message.payload().map(serde_json::from_slice::<Folded>) {
            Some(Ok(folded)) => latest = Some(folded),
            Some(Err(err)) => tracing::warn!(
                report = route.name,
                offset = message.offset(),
                "unreadable saved state skipped: {err}"
            ),
            None => {}
        }
    })?;
    Ok(latest.unwrap_or_default())
}
