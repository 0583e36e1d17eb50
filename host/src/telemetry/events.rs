//! Live events for the web page (`GET /events`, server-sent events): each pizza as each stage
//! makes it, each pizza completed or failed as the order view learns it, and a snapshot of the
//! stages and reports every second.
//!
//! Publishing costs nothing while nobody listens: the event is only built when a subscriber
//! is there. A subscriber that falls behind loses the oldest events (it is told how many),
//! never slows a stage down. At most [`MAX_SUBSCRIBERS`] listen at once.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

/// Events kept for a subscriber that is behind.
const BACKLOG: usize = 4_096;
/// Most subscribers at once: each holds a connection and is sent a snapshot every second, so
/// any client could otherwise open them without bound.
pub const MAX_SUBSCRIBERS: usize = 100;

/// Where live events are published; cheap to clone.
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<Arc<str>>,
    subscribers: Arc<Semaphore>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            subscribers: Arc::new(Semaphore::new(MAX_SUBSCRIBERS)),
        }
    }
}

/// A subscriber's receiver, and its place among the [`MAX_SUBSCRIBERS`] (given back when
/// dropped).
pub struct Subscription {
    /// The events from the moment of subscribing on.
    pub receiver: broadcast::Receiver<Arc<str>>,
    _place: OwnedSemaphorePermit,
}

impl Events {
    /// Publishes the event `make` builds, if anyone listens.
    pub fn publish(&self, make: impl FnOnce() -> Value) {
        if self.sender.receiver_count() > 0 {
            // No receiver between the check and the send is harmless: the event is dropped.
            let _ = self.sender.send(make().to_string().into());
        }
    }

    /// A new subscriber, seeing events from now on; `None` while [`MAX_SUBSCRIBERS`] are
    /// subscribed.
    pub fn subscribe(&self) -> Option<Subscription> {
        let place = self.subscribers.clone().try_acquire_owned().ok()?;
        Some(Subscription {
            receiver: self.sender.subscribe(),
            _place: place,
        })
    }
}
