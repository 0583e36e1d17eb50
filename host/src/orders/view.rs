//! Fills the [`OrderBook`] from Kafka, so orders survive a restart and any host can answer for
//! an order placed on another: order records from the orders topic, completed pizzas from the
//! completed topic, failed ones from the stages' dead-letter topics.
//!
//! Every topic is read from its beginning. [`start`] returns once the view has caught up with
//! what the topics held when it began, so `GET /order/{id}` never answers from half a history.
//! The view follows the pipeline: a dead-letter topic that a live edit adds (a stage added or
//! moved) is read from its beginning as soon as the edit is applied.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::kafka::{self, headers};
use crate::orders::book::{CompletedPizza, FailedPizza, OrderBook, Outcome};
use crate::pipeline::plan::ViewTopics;
use crate::telemetry::events::Events;

/// How often catching up looks at the consumer's position when no record arrives.
const POSITION_CHECK: Duration = Duration::from_millis(100);
/// How long startup may spend reading the history before serving with what it has.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// Reads the history of `topics` into `book`, then returns the task that keeps reading until
/// `shutdown`.
pub async fn start(
    book: OrderBook,
    consumer: StreamConsumer,
    mut follow: watch::Receiver<ViewTopics>,
    events: Events,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = ()> + use<>> {
    let mut topics = follow.borrow_and_update().clone();
    let mut assignment = TopicPartitionList::new();
    // Where each partition ended when we began: caught up once every one is reached.
    let mut behind: HashMap<(String, i32), i64> = HashMap::new();
    let all = [&topics.orders, &topics.completed]
        .into_iter()
        .chain(&topics.dead_letters);
    for topic in all {
        for id in tokio::task::block_in_place(|| kafka::partitions(consumer.client(), topic))? {
            let (low, high) =
                tokio::task::block_in_place(|| kafka::watermarks(&consumer, topic, id))?;
            if high > low {
                behind.insert((topic.clone(), id), high);
            }
            assignment.add_partition_offset(topic, id, Offset::Beginning)?;
        }
    }
    consumer
        .assign(&assignment)
        .context("cannot read the order topics")?;

    let started = Instant::now();
    let total: i64 = behind.values().sum();
    // Caught up when the consumer's position passed each end: counting records would not
    // do, since transaction markers take offsets too.
    while !behind.is_empty() {
        if started.elapsed() > CATCH_UP_LIMIT {
            tracing::warn!(
                partitions = behind.len(),
                "order view: history not read in {CATCH_UP_LIMIT:?}; serving what is read so far"
            );
            break;
        }
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            received = tokio::time::timeout(POSITION_CHECK, consumer.recv()) => received,
        };
        match received {
            Ok(Ok(message)) => apply(&book, &topics, &events, &message),
            Ok(Err(err)) => tracing::warn!("order view: consumer error: {err}"),
            Err(_) => {} // quiet: look at the positions
        }
        let positions = consumer
            .position()
            .context("cannot read the order view's position")?;
        behind.retain(|(topic, partition), end| {
            let at = positions
                .find_partition(topic, *partition)
                .map(|e| e.offset());
            !matches!(at, Some(Offset::Offset(at)) if at >= *end)
        });
    }
    tracing::info!(
        records = total,
        ms = started.elapsed().as_millis() as u64,
        "order view rebuilt from Kafka"
    );

    Ok(async move {
        let mut errors = kafka::ConsumerErrors::default();
        // Until the pipeline can no longer change: a host that does not watch its file drops
        // the sender once started, and a closed channel answers `changed` at once, every time.
        let mut following = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                received = consumer.recv() => match received {
                    Ok(message) => apply(&book, &topics, &events, &message),
                    Err(err) => errors.log("order view", &err),
                },
                changed = follow.changed(), if following => {
                    if changed.is_err() {
                        following = false;
                        continue;
                    }
                    let next = follow.borrow_and_update().clone();
                    if let Err(err) = read_new_topics(&consumer, &topics, &next) {
                        tracing::error!("order view: cannot read the pipeline's new dead-letter topics: {err:#}");
                    }
                    topics = next;
                }
            }
        }
    })
}

/// Adds the dead-letter topics that `next` has and `current` has not to what `consumer`
/// reads, from their beginning; the partitions it reads already keep their positions.
fn read_new_topics(
    consumer: &StreamConsumer,
    current: &ViewTopics,
    next: &ViewTopics,
) -> anyhow::Result<()> {
    let added: Vec<&String> = next
        .dead_letters
        .difference(&current.dead_letters)
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    for topic in added {
        for id in tokio::task::block_in_place(|| kafka::partitions(consumer.client(), topic))? {
            assignment.add_partition_offset(topic, id, Offset::Beginning)?;
        }
        tracing::info!(topic, "order view: reading a new dead-letter topic");
    }
    consumer
        .incremental_assign(&assignment)
        .context("cannot add the new dead-letter topics")?;
    Ok(())
}

/// Applies one record of any of the view's topics to the book.
fn apply(book: &OrderBook, topics: &ViewTopics, events: &Events, message: &BorrowedMessage<'_>) {
    let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
    if message.topic() == topics.completed {
        let visits = message
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .filter(|h| h.key == headers::TRAIL)
            .filter_map(|h| h.value);
        let Some(pizza) = message
            .payload()
            .and_then(|p| CompletedPizza::parse(p, visits))
        else {
            tracing::warn!(
                topic = message.topic(),
                offset = message.offset(),
                "order view: completed record is not a JSON object"
            );
            return;
        };
        let Some(order_id) = key.or(pizza.order_id()).map(str::to_owned) else {
            no_order_id(message);
            return;
        };
        events.publish_for_order(&order_id, || {
            json!({"type": "complete", "pizza": pizza.to_value()})
        });
        book.record(&order_id, Outcome::Completed(pizza));
        return;
    }
    let json: Option<Map<String, Value>> = message
        .payload()
        .and_then(|p| serde_json::from_slice(p).ok());
    let order_id = key
        .map(str::to_owned)
        .or_else(|| json.as_ref()?.get("order_id")?.as_str().map(str::to_owned));
    let Some(order_id) = order_id else {
        no_order_id(message);
        return;
    };
    if message.topic() == topics.orders {
        let count = json
            .as_ref()
            .and_then(|j| j.get("count")?.as_u64())
            .and_then(|c| u32::try_from(c).ok());
        match count {
            Some(count) => book.open(&order_id, count),
            None => tracing::warn!(order_id, "order view: order record without a count"),
        }
    } else {
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let failed = FailedPizza {
            pizza_id: json
                .as_ref()
                .and_then(|j| j.get("pizza_id")?.as_str().map(str::to_owned)),
            stage: header(headers::STAGE),
            kind: header(headers::ERROR_KIND),
            error: header(headers::ERROR),
        };
        events.publish_for_order(&order_id, || {
            json!({"type": "failed", "order_id": order_id, "failure": failed})
        });
        book.record(&order_id, Outcome::Failed(failed));
    }
}

fn no_order_id(message: &BorrowedMessage<'_>) {
    tracing::debug!(
        topic = message.topic(),
        offset = message.offset(),
        "order view: record without an order id"
    );
}
