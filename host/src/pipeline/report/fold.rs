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
//!
//! # Keyed state
//! With `state_key`, the state is one state per value of that event field, and an event is
//! folded into its key's state alone. A save writes each key changed since the last one as a
//! record of its own (`<instance>/state/<key>`: the key's state and the input position it
//! reaches), then the position record (`<instance>`). A crash between the two leaves keys
//! ahead of the position: the events folded again after a restart are skipped for a key whose
//! saved position is past them, so each event still counts once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// The state and how far into the input it reaches; saved as one record (a keyed report's
/// keys are saved as records of their own, see [`KeyState`]).
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
    /// The event field that keys the state, if it is keyed.
    #[serde(default)]
    state_key: Option<String>,
    /// Counts the times the report started over; saved keys of an earlier one are not its.
    #[serde(default)]
    generation: u64,
    /// A keyed report's states, by key.
    #[serde(skip)]
    keyed: HashMap<String, KeyState>,
    /// Keys changed since the last save.
    #[serde(skip)]
    changed: BTreeSet<String>,
}

/// One key's state, saved as a record of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeyState {
    /// The state as the component last returned it (JSON text).
    state: String,
    /// The input position when it was last saved: it holds every event before it.
    saved_at: BTreeMap<i32, i64>,
    /// The report's generation when it was saved.
    #[serde(default)]
    generation: u64,
}

impl Default for Folded {
    fn default() -> Self {
        Self {
            state: "null".into(),
            offsets: BTreeMap::new(),
            events: 0,
            failed: 0,
            state_key: None,
            generation: 0,
            keyed: HashMap::new(),
            changed: BTreeSet::new(),
        }
    }
}

impl Folded {
    /// The whole state: a keyed report's states merged into one object (a key whose state
    /// is not an object appears under its key).
    fn whole(&self) -> String {
        if self.state_key.is_none() {
            return self.state.clone();
        }
        let mut keys: Vec<_> = self.keyed.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        let mut merged = serde_json::Map::new();
        for (key, state) in keys {
            match serde_json::from_str(&state.state) {
                Ok(serde_json::Value::Object(fields)) => merged.extend(fields),
                Ok(serde_json::Value::Null) => {}
                Ok(other) => {
                    merged.insert(key.clone(), other);
                }
                Err(_) => {
                    merged.insert(key.clone(), state.state.clone().into());
                }
            }
        }
        serde_json::Value::Object(merged).to_string()
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

    /// The current state (JSON text; a keyed report's merged), and the events folded and
    /// skipped so far.
    pub fn state(&self) -> (String, u64, u64) {
        let folded = self.lock();
        (folded.whole(), folded.events, folded.failed)
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

/// Folds one record into the state (a keyed report's: into its key's); a record the
/// component cannot fold is skipped, counted and logged (it stays in the input topic for
/// anyone to inspect).
fn fold(
    shared: &ReportShared,
    route: &ReportRoute,
    value: Option<&[u8]>,
    partition: i32,
    offset: i64,
) {
    let event = match value.map(std::str::from_utf8) {
        Some(Ok(event)) => event,
        Some(Err(_)) | None => {
            let err = CallError::InvalidOutput("the record's value is not UTF-8 text".into());
            return skip(shared, route, partition, offset, err);
        }
    };
    let key = match &route.state_key {
        None => None,
        Some(field) => match key_of(event, field) {
            Ok(key) => Some(key),
            Err(err) => return skip(shared, route, partition, offset, err),
        },
    };
    let state = {
        let mut current = shared.lock();
        match &key {
            None => current.state.clone(),
            Some(key) => match current.keyed.get(key) {
                // Its key was saved after this event was folded, and a crash came before the
                // position was: the event is in the state already.
                Some(saved)
                    if saved
                        .saved_at
                        .get(&partition)
                        .is_some_and(|&at| at > offset) =>
                {
                    current.offsets.insert(partition, offset + 1);
                    current.events += 1;
                    return;
                }
                Some(saved) => saved.state.clone(),
                None => "null".into(),
            },
        }
    };
    let component = shared.current();
    match tokio::task::block_in_place(|| component.update(&state, event)) {
        Ok(state) => {
            let mut current = shared.lock();
            current.offsets.insert(partition, offset + 1);
            current.events += 1;
            match key {
                None => current.state = state,
                Some(key) => {
                    current.keyed.entry(key.clone()).or_default().state = state;
                    current.changed.insert(key);
                }
            }
        }
        Err(err) => skip(shared, route, partition, offset, err),
    }
}

/// The value of `field` in `event` as a state key: a string as it is, anything else as its
/// JSON text.
fn key_of(event: &str, field: &str) -> Result<String, CallError> {
    let event: serde_json::Value = serde_json::from_str(event)
        .map_err(|err| CallError::InvalidOutput(format!("the event is not JSON: {err}")))?;
    match event.get(field) {
        Some(serde_json::Value::String(key)) => Ok(key.clone()),
        Some(serde_json::Value::Null) | None => Err(CallError::InvalidOutput(format!(
            "the event has no {field:?}, which keys the report's state"
        ))),
        Some(other) => Ok(other.to_string()),
    }
}

/// Counts and logs an event the report could not fold, and moves past it.
fn skip(shared: &ReportShared, route: &ReportRoute, partition: i32, offset: i64, err: CallError) {
    let mut current = shared.lock();
    current.offsets.insert(partition, offset + 1);
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

/// Saves the state and its position, and waits for the broker to take it: a keyed report's
/// changed keys first, each as a record of its own, then the position (see the module doc).
async fn save_state(
    shared: &ReportShared,
    route: &ReportRoute,
    producer: &rdkafka::producer::FutureProducer,
) -> anyhow::Result<()> {
    let (keys, position) = {
        let mut current = shared.lock();
        let offsets = current.offsets.clone();
        let generation = current.generation;
        let changed = std::mem::take(&mut current.changed);
        let mut keys = Vec::with_capacity(changed.len());
        for key in changed {
            let Some(state) = current.keyed.get_mut(&key) else {
                continue;
            };
            state.saved_at = offsets.clone();
            state.generation = generation;
            keys.push((key_record(route, &key), serde_json::to_string(&*state)?));
        }
        (keys, serde_json::to_string(&*current)?)
    };
    let failed = |err| {
        anyhow::Error::new(err).context(format!(
            "cannot save report {} to {}",
            route.name, route.changelog
        ))
    };
    let sends = keys.iter().map(|(key, state)| {
        producer.send(
            FutureRecord::to(&route.changelog).key(key).payload(state),
            SAVE_TIMEOUT,
        )
    });
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(err, _)| failed(err))?;
    }
    producer
        .send(
            FutureRecord::to(&route.changelog)
                .key(&route.key)
                .payload(&position),
            SAVE_TIMEOUT,
        )
        .await
        .map_err(|(err, _)| failed(err))?;
    Ok(())
}

/// The changelog key of one key's state.
fn key_record(route: &ReportRoute, key: &str) -> String {
    format!("{}/state/{key}", route.key)
}

/// Blocking: the last state saved under `route.key` (and a keyed report's keys), read from
/// the whole changelog; a fresh state if there is none, or if it was keyed otherwise.
fn restore(kafka: &KafkaSettings, route: &ReportRoute) -> anyhow::Result<Folded> {
    let mut latest: Option<Folded> = None;
    let mut keyed: HashMap<String, KeyState> = HashMap::new();
    let prefix = key_record(route, "");
    let reader = format!("report-restore-{}", route.name);
    kafka.read_to_end(&reader, &route.changelog, None, |message| {
        let Some(key) = message.key() else { return };
        let unreadable = |err: serde_json::Error| {
            tracing::warn!(
                report = route.name,
                offset = message.offset(),
                "unreadable saved state skipped: {err}"
            );
        };
        if key == route.key.as_bytes() {
            match message.payload().map(serde_json::from_slice::<Folded>) {
                Some(Ok(folded)) => latest = Some(folded),
                Some(Err(err)) => unreadable(err),
                None => {}
            }
        } else if let Some(state_key) = key.strip_prefix(prefix.as_bytes()) {
            match message.payload().map(serde_json::from_slice::<KeyState>) {
                Some(Ok(state)) => {
                    keyed.insert(String::from_utf8_lossy(state_key).into_owned(), state);
                }
                Some(Err(err)) => unreadable(err),
                None => {}
            }
        }
    })?;
    let mut folded = latest.unwrap_or_default();
    if folded.state_key != route.state_key {
        if folded.events > 0 {
            tracing::warn!(
                report = route.name,
                "the report's state_key changed: it starts over from the beginning of {}",
                route.input
            );
        }
        // Keys saved before are of another generation: ignored from now on.
        folded = Folded {
            state_key: route.state_key.clone(),
            generation: folded.generation + 1,
            ..Folded::default()
        };
    }
    if folded.state_key.is_some() {
        keyed.retain(|_, state| state.generation == folded.generation);
        folded.keyed = keyed;
    }
    Ok(folded)
}
