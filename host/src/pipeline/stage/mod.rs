//! One stage: a component between an input and an output topic. This module holds what a
//! running stage shares with the host (its component, swapped between batches, and its
//! counters) and where it reads and writes; [`process`] calls the component on a batch and
//! sends each outcome; [`at_least_once`] and [`exactly_once`] are the two loops around it,
//! one per delivery guarantee.
//!
//! # Bad records
//! A record the stage cannot process (see [`CallError`]) and a record that is not UTF-8 text
//! go to the stage's dead-letter topic with headers saying why, and the partition moves on:
//! one bad record never stalls the pipeline or takes the host down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::kafka::GroupState;
use crate::runtime::{CallError, Output, StageComponent};
use crate::telemetry::events::Events;
use crate::telemetry::metrics::StageMetrics;

pub mod at_least_once;
pub mod exactly_once;
pub mod process;
pub(crate) mod running;

/// Most records called in one batch (those the consumer already holds).
pub(crate) const CALL_BATCH: usize = crate::kafka::transaction::CHUNK;
/// How often a draining stage checks whether it has reached the end of its input.
pub(crate) const DRAIN_CHECK: Duration = Duration::from_millis(100);

/// What a running stage shares with the rest of the host: its current component, which a
/// swap replaces atomically between two batches of records, and its counters.
pub struct StageShared {
    component: ArcSwap<StageComponent>,
    /// What the stage has done so far.
    pub stats: StageStats,
    /// Its consumer's place in the group (assignment, lag).
    pub group: Arc<GroupState>,
    /// Where each event it makes is shown live.
    pub(crate) events: Events,
}

impl StageShared {
    /// A stage that starts with `component`, counts into `metrics` and shows what it makes
    /// on `events`.
    pub fn new(component: StageComponent, metrics: StageMetrics, events: Events) -> Self {
        Self {
            component: ArcSwap::from_pointee(component),
            stats: StageStats {
                processed: AtomicU64::default(),
                dropped: AtomicU64::default(),
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
    /// Records whose results were sent to the outputs.
    pub processed: AtomicU64,
    /// Records the stage dropped (it returned no record for them): a filter's, not a failure.
    pub dropped: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// The most recent failure.
    pub last_error: Mutex<Option<LastError>>,
    pub(crate) metrics: StageMetrics,
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
    pub(crate) fn record(&self, outcome: &Result<Vec<Output>, Failure>) {
        match outcome {
            Ok(outputs) if outputs.is_empty() => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.dropped();
            }
            Ok(outputs) => {
                self.processed.fetch_add(1, Ordering::Relaxed);
                self.metrics.records_out(outputs.len());
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

/// Why a record went to the dead-letter topic instead of the output.
pub(crate) struct Failure {
    pub kind: &'static str,
    pub message: String,
    /// Calls made (1 plus the retries).
    pub attempts: u32,
    /// The stage said calling again may succeed.
    pub retryable: bool,
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

/// What one input record became on its way to the broker (none, one or several records),
/// and the input offset it releases once all are acknowledged.
pub(crate) struct Pending {
    pub partition: i32,
    pub offset: i64,
    pub deliveries: Vec<rdkafka::producer::DeliveryFuture>,
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
