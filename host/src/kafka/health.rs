//! Whether the Kafka cluster answers right now, as the HTTP API needs to know it.
//!
//! While the cluster is unreachable the stages simply wait (their clients reconnect on their
//! own), but a customer should not: `POST /order` refuses at once with 503 instead of holding
//! the request for a publish timeout. A probe asks the cluster for one topic's metadata every
//! [`PROBE_INTERVAL`] and keeps the answer here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kafka::KafkaSettings;

/// How often the probe asks.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe may wait for an answer before the cluster counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The latest probe's answer; cheap to clone and to read.
#[derive(Debug, Clone, Default)]
pub struct ClusterHealth {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    unreachable: AtomicBool,
    /// Why the last probe failed.
    cause: Mutex<String>,
}

impl ClusterHealth {
    /// Why the cluster is unreachable, or `None` while it answers (or before the first probe).
    pub fn unreachable(&self) -> Option<String> {
        if !self.inner.unreachable.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.inner
                .cause
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    fn set(&self, outcome: Result<(), String>) {
        let was_unreachable = self.inner.unreachable.load(Ordering::Acquire);
        match outcome {
            Ok(()) => {
                if was_unreachable {
                    tracing::info!("Kafka answers again");
                }
                self.inner.unreachable.store(false, Ordering::Release);
            }
            Err(cause) => {
                if !was_unreachable {
                    tracing::warn!(
                        "Kafka is unreachable: {cause}; orders are refused until it answers"
                    );
                }
                *self
                    .inner
                    .cause
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = cause;
                self.inner.unreachable.store(true, Ordering::Release);
            }
        }
    }
}

/// Starts probing the cluster, asking for `topic`'s metadata, until `shutdown`.
pub fn spawn_probe(
    kafka: &KafkaSettings,
    topic: &str,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<ClusterHealth> {
    let client = Arc::new(kafka.admin()?);
    let health = ClusterHealth::default();
    let (probe, topic) = (health.clone(), topic.to_owned());
    tasks.spawn(async move {
        loop {
            let (client, topic) = (client.clone(), topic.clone());
            let answered = tokio::task::spawn_blocking(move || {
                client
                    .inner()
                    .fetch_metadata(Some(&topic), PROBE_TIMEOUT)
                    .map(drop)
                    .map_err(|err| err.to_string())
            })
            .await
            .unwrap_or_else(|err| Err(format!("the probe panicked: {err}")));
            probe.set(answered);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
    });
    Ok(health)
}
