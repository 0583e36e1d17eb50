//! Live events for the web page (`GET /events`, server-sent events): each pizza as each stage
//! makes it, each pizza completed or failed as the order view learns it, and a snapshot of the
//! stages and reports every second.
//!
//! An order's events go only to subscribers who name that order (`/events?order=<id>`): an
//! order id is what lets its customer see it, so a stream never carries other customers' ids.
//! Every subscriber gets the snapshots, rendered once per tick for all of them.
//!
//! Publishing costs nothing while nobody listens: an order's event is only built when a
//! subscriber watches that order. A subscriber that falls behind loses the oldest events (it
//! is told how many), never slows a stage down. At most [`MAX_SUBSCRIBERS`] listen at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

/// Events kept for a subscriber that is behind.
const BACKLOG: usize = 4_096;
/// Most subscribers at once: each holds a connection and is sent a snapshot every second, so
/// any client could otherwise open them without bound.
pub const MAX_SUBSCRIBERS: usize = 100;

/// One published event: its JSON text, and the order it belongs to (`None`: for everyone).
#[derive(Debug)]
struct Live {
    order_id: Option<Box<str>>,
    json: Arc<str>,
}

/// Where live events are published; cheap to clone.
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<Arc<Live>>,
    subscribers: Arc<Semaphore>,
    /// Order id → subscribers watching it.
    watched: Arc<Mutex<HashMap<Box<str>, usize>>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            subscribers: Arc::new(Semaphore::new(MAX_SUBSCRIBERS)),
            watched: Arc::default(),
        }
    }
}

impl Events {
    /// Publishes the event of order `order_id` that `make` builds, if anyone watches that
    /// order.
    pub fn publish_for_order(&self, order_id: &str, make: impl FnOnce() -> Value) {
        let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        if watched.contains_key(order_id) {
            drop(watched);
            // No receiver between the check and the send is harmless: the event is dropped.
            let _ = self.sender.send(Arc::new(Live {
                order_id: Some(order_id.into()),
                json: make().to_string().into(),
            }));
        }
    }

    /// Whether anyone listens (so a snapshot is worth rendering).
    pub fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Publishes an event every subscriber gets.
    pub fn publish_to_all(&self, event: &Value) {
        let _ = self.sender.send(Arc::new(Live {
            order_id: None,
            json: event.to_string().into(),
        }));
    }

    /// A new subscriber, seeing from now on the events for everyone and those of `order_id`;
    /// `None` while [`MAX_SUBSCRIBERS`] are subscribed.
    pub fn subscribe(&self, order_id: Option<&str>) -> Option<Subscription> {
        let place = self.subscribers.clone().try_acquire_owned().ok()?;
        if let Some(order_id) = order_id {
            let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
            *watched.entry(order_id.into()).or_default() += 1;
        }
        Some(Subscription {
            receiver: self.sender.subscribe(),
            order_id: order_id.map(Into::into),
            events: self.clone(),
            _place: place,
        })
    }
}

/// A subscriber's stream of events, and its place among the [`MAX_SUBSCRIBERS`] (given back,
/// with its order no longer watched, when dropped).
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Live>>,
    order_id: Option<Box<str>>,
    events: Events,
    _place: OwnedSemaphorePermit,
}

impl Subscription {
    /// The next event this subscriber may see, as JSON text.
    pub async fn next(&mut self) -> Result<Arc<str>, RecvError> {
        loop {
            let live = self.receiver.recv().await?;
            if live.order_id.is_none() || live.order_id == self.order_id {
                return Ok(live.json.clone());
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(order_id) = &self.order_id else {
            return;
        };
        let mut watched = self
            .events
            .watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = watched.get_mut(order_id) {
            *count -= 1;
            if *count == 0 {
                watched.remove(order_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn an_order_s_events_reach_only_its_watchers_and_snapshots_reach_all() {
        let events = Events::default();
        let mut anonymous = events.subscribe(None).expect("a place");
        let mut watcher = events.subscribe(Some("a")).expect("a place");
        let mut built = 0;
        events.publish_for_order("b", || {
            built += 1;
            json!({"order_id": "b"})
        });
        assert_eq!(built, 0, "nobody watches b: nothing is built");
        events.publish_for_order("a", || json!({"order_id": "a"}));
        events.publish_to_all(&json!({"type": "snapshot"}));
        assert_eq!(&*watcher.next().await.expect("an event"), r#"{"order_id":"a"}"#);
        assert_eq!(&*watcher.next().await.expect("an event"), r#"{"type":"snapshot"}"#);
        assert_eq!(&*anonymous.next().await.expect("an event"), r#"{"type":"snapshot"}"#);
        drop(watcher);
        assert!(events.watched.lock().expect("not poisoned").is_empty());
    }

    #[test]
    fn subscribers_beyond_the_cap_are_refused() {
        let events = Events::default();
        let held: Vec<_> = (0..MAX_SUBSCRIBERS)
            .map(|_| events.subscribe(None).expect("a place"))
            .collect();
        assert!(events.subscribe(Some("a")).is_none());
        drop(held);
        assert!(events.subscribe(None).is_some());
    }
}
