//! Live events for the web page (`GET /events`, server-sent events): each pizza as each stage
//! makes it, each pizza completed or failed as the order view learns it, and a snapshot of the
//! stages and reports every second.
//!
//! Publishing costs nothing while nobody listens: the event is only built when a subscriber
//! is there. A subscriber that falls behind loses the oldest events (it is told how many),
//! never slows a stage down.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

/// Events kept for a subscriber that is behind.
const BACKLOG: usize = 4_096;

/// Where live events are published; cheap to clone.
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<Arc<str>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Events {
    /// Publishes the event `make` builds, if anyone listens.
    pub fn publish(&self, make: impl FnOnce() -> Value) {
        if self.sender.receiver_count() > 0 {
            // No receiver between the check and the send is harmless: the event is dropped.
            let _ = self.sender.send(make().to_string().into());
        }
    }

    /// A new subscriber, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.sender.subscribe()
    }
}
