//! Placing an order: its id, its records (the order record on the orders topic, then one
//! pizza per count on the first stage's input, all keyed by the order id), and publishing
//! them under the pipeline's guarantee.
//!
//! Under exactly-once the order goes out in one transaction: all or none. Concurrent orders
//! share transactions (group commit, see [`TransactionalPublisher`]), so the front door is
//! not one commit per order behind one lock. A failure that
//! leaves the transactional producer in an unknown state (the broker went away mid-commit, a
//! fatal error) retires that producer; the next order starts a new one with the same
//! transactional id, which fences the old one and aborts whatever it left open. So an outage
//! costs the orders placed during it a 503, never the publisher itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::json;

use crate::kafka::send::acknowledged;
use crate::kafka::{KafkaSettings, Nudge};
use crate::orders::book::OrderBook;
use crate::telemetry::trace_context;

/// How long `POST /order` waits for the broker to take the order.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Hands out new order ids: the decimal form of a 128-bit UUID, like the original service's.
/// A version 7 UUID (its first 48 bits are the time it was made, the rest random), so a host
/// that has not read an order yet can tell a new id from one that never was (see
/// [`placed_recently`]); with a seed, a reproducible sequence of random ones.
pub struct OrderIds(Option<std::sync::Mutex<StdRng>>);

impl OrderIds {
    /// Random ids, or with `seed` a reproducible sequence.
    pub fn new(seed: Option<u64>) -> Self {
        Self(seed.map(|seed| std::sync::Mutex::new(StdRng::seed_from_u64(seed))))
    }

    /// The next order's id.
    pub fn next(&self) -> String {
        let uuid = match &self.0 {
            None => uuid::Uuid::now_v7(),
            Some(rng) => {
                let mut rng = rng
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                uuid::Builder::from_random_bytes(rng.random()).into_uuid()
            }
        };
        uuid.as_u128().to_string()
    }
}

/// Whether `id` is an order id made within `window` of now (give or take `window` of clock
/// difference between hosts): one another host may have placed that this host has not read
/// yet.
pub fn placed_recently(id: &str, window: Duration) -> bool {
    let Ok(bits) = id.parse::<u128>() else {
        return false;
    };
    let uuid = uuid::Uuid::from_u128(bits);
    let Some(made) = uuid.get_timestamp().filter(|_| uuid.get_version_num() == 7) else {
        return false;
    };
    let (seconds, nanos) = made.to_unix();
    let made = std::time::UNIX_EPOCH + Duration::new(seconds, nanos);
    let now = std::time::SystemTime::now();
    let apart = now
        .duration_since(made)
        .unwrap_or_else(|early| early.duration());
    apart <= window
}

/// The pizza events of a new order, in the original demo's shape (every topping empty) plus
/// a `pizza_id` that lets the view count a redelivered pizza once.
pub fn new_pizzas(order_id: &str, count: u32) -> Vec<String> {
    (0..count)
        .map(|n| {
            json!({
                "order_id": order_id,
                "pizza_id": format!("{order_id}-{n}"),
                "sauce": "",
                "cheese": "",
                "meats": "",
                "veggies": "",
            })
            .to_string()
        })
        .collect()
}

/// The record of an order on the orders topic, from which every host's view learns about it.
pub fn order_record(order_id: &str, count: u32) -> String {
    json!({ "order_id": order_id, "count": count }).to_string()
}

/// An order's records, all keyed by its id and carrying its trace context.
struct OrderRecords {
    key: String,
    headers: OwnedHeaders,
    /// (topic, value): the order record first, then the pizzas.
    values: Vec<(String, String)>,
}

impl OrderRecords {
    fn record<'a>(&'a self, (topic, value): &'a (String, String)) -> FutureRecord<'a, str, str> {
        FutureRecord::to(topic)
            .key(self.key.as_str())
            .payload(value.as_str())
            .headers(self.headers.clone())
    }
}

/// Where a new order is published.
#[derive(Debug, Clone)]
pub struct OrderTopics {
    /// Order records (id and count), read back by every host's order view.
    pub orders: String,
    /// The first stage's input, where the pizzas go.
    pub pizzas: String,
}

/// How new orders reach Kafka.
#[derive(Clone)]
pub enum Publisher {
    /// Each record is acknowledged on its own; a failure midway leaves part of the order.
    AtLeastOnce(FutureProducer, Arc<Nudge>),
    /// The order record and its pizzas go in one transaction: all or none.
    ExactlyOnce(Arc<TransactionalPublisher>),
}

impl Publisher {
    /// An at-least-once publisher whose sends fail after [`PUBLISH_TIMEOUT`].
    pub fn at_least_once(kafka: &KafkaSettings) -> anyhow::Result<Self> {
        Ok(Self::AtLeastOnce(
            kafka.producer_with_timeout(PUBLISH_TIMEOUT)?,
            Arc::new(Nudge::new(kafka.linger())),
        ))
    }

    /// A transactional publisher with id `transactional_id`, ready to use.
    pub fn transactional(kafka: &KafkaSettings, transactional_id: &str) -> anyhow::Result<Self> {
        let publisher = TransactionalPublisher {
            kafka: kafka.clone(),
            transactional_id: transactional_id.to_owned(),
            queue: Mutex::default(),
            arrived: Condvar::new(),
            last_group: AtomicUsize::new(0),
            producer: Mutex::new(None),
        };
        let producer = tokio::task::block_in_place(|| publisher.start())?;
        publisher.put_back(producer);
        Ok(Self::ExactlyOnce(Arc::new(publisher)))
    }
}

/// Most orders in one transaction, and most records: a group stays a quick commit.
const MAX_GROUP_ORDERS: usize = 256;
const MAX_GROUP_RECORDS: usize = 10_000;
/// How long a group may wait for as many orders as the last group held (see
/// [`TransactionalPublisher::next_group`]).
const GATHER_WAIT: Duration = Duration::from_millis(1);

/// What a publishing order is told: `Err` with the reason its transaction failed.
type Answer = Result<(), String>;

/// The transactional producer of orders, committing them in groups: orders that arrive while
/// a transaction commits wait in a queue, and the next transaction takes them all (gathering
/// for a moment under load, see [`Self::next_group`]; up to
/// [`MAX_GROUP_ORDERS`] orders or [`MAX_GROUP_RECORDS`] records). An order is never split
/// across transactions, each is answered once its transaction committed, and a failed commit
/// fails exactly the orders in it.
pub struct TransactionalPublisher {
    kafka: KafkaSettings,
    transactional_id: String,
    /// Orders waiting for a transaction, each with where its answer goes.
    queue: Mutex<VecDeque<(OrderRecords, std::sync::mpsc::Sender<Answer>)>>,
    /// Told when an order joins the queue.
    arrived: Condvar,
    /// How many orders the last transaction held.
    last_group: AtomicUsize,
    /// Held by the thread that runs the current transaction. Empty after a failure that left
    /// the producer's state unknown: the next transaction starts a new producer.
    producer: Mutex<Option<FutureProducer>>,
}

impl TransactionalPublisher {
    /// A new producer, its transactions initialised (fencing any earlier one with our id).
    fn start(&self) -> anyhow::Result<FutureProducer> {
        let producer = self.kafka.transactional_producer(&self.transactional_id)?;
        producer
            .init_transactions(PUBLISH_TIMEOUT)
            .with_context(|| format!("cannot start transactions as {}", self.transactional_id))?;
        Ok(producer)
    }

    fn put_back(&self, producer: FutureProducer) {
        *self.producer.lock().unwrap_or_else(PoisonError::into_inner) = Some(producer);
    }

    /// Blocking: publishes the order in a transaction, with whatever other orders are queued.
    /// Whoever holds the producer runs the next transaction for everyone queued, so a caller
    /// either finds its order answered or runs the transaction that takes it.
    fn publish(&self, records: OrderRecords) -> anyhow::Result<()> {
        let (answer, answered) = std::sync::mpsc::channel();
        self.enqueue(records, answer);
        let mut slot = self.producer.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Ok(answer) = answered.try_recv() {
                return answer.map_err(anyhow::Error::msg);
            }
            let group = self.next_group();
            let published = self.publish_group(&mut slot, &group);
            let answer: Answer = published.map_err(|err| format!("{err:#}"));
            for (_, to) in group {
                // The caller waits for it; if it went away, nobody needs the answer.
                let _ = to.send(answer.clone());
            }
        }
    }

    /// Queues an order for the next transaction.
    fn enqueue(&self, records: OrderRecords, answer: std::sync::mpsc::Sender<Answer>) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((records, answer));
        self.arrived.notify_all();
    }

    /// The queued orders the next transaction takes. Its customers, answered together when
    /// the last transaction committed, order again together: a group first waits (up to
    /// [`GATHER_WAIT`]) until as many orders are queued as the last one held. Without the
    /// wait, the first of them to come back went alone, the rest waited a whole commit for the
    /// next, and under load there were twice the transactions, each costing the broker its
    /// registration, end and markers. A lone customer's group held one order: it never waits.
    fn next_group(&self) -> Vec<(OrderRecords, std::sync::mpsc::Sender<Answer>)> {
        let want = self.last_group.load(Ordering::Relaxed);
        let group = take_group(&mut self.gathered(want, GATHER_WAIT));
        self.last_group.store(group.len(), Ordering::Relaxed);
        group
    }

    /// The queue, once it holds `want` orders or `wait` has passed.
    fn gathered(
        &self,
        want: usize,
        wait: Duration,
    ) -> MutexGuard<'_, VecDeque<(OrderRecords, std::sync::mpsc::Sender<Answer>)>> {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let want = want.min(MAX_GROUP_ORDERS);
        match self
            .arrived
            .wait_timeout_while(queue, wait, |queue| queue.len() < want)
        {
            Ok((queue, _)) => queue,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// One transaction holding every record of the orders of `group`.
    fn publish_group(
        &self,
        slot: &mut Option<FutureProducer>,
        group: &[(OrderRecords, std::sync::mpsc::Sender<Answer>)],
    ) -> anyhow::Result<()> {
        let producer = match slot.take() {
            Some(producer) => producer,
            None => self.start()?,
        };
        let orders: Vec<&OrderRecords> = group.iter().map(|(order, _)| order).collect();
        let published = send_in_transaction(&producer, &orders);
        if let Err(err) = &published {
            match producer.abort_transaction(PUBLISH_TIMEOUT) {
                Ok(()) => {}
                Err(abort) => {
                    tracing::warn!(
                        "order transaction failed ({err:#}) and could not be aborted ({abort}); \
                         the next order starts a new transactional producer"
                    );
                    return published
                        .context("the order was not published (its transaction was abandoned)");
                }
            }
        }
        *slot = Some(producer);
        published.context("the order was not published (its transaction was aborted)")
    }
}

/// The orders at the front of `queue` that one transaction takes: whole orders, at most
/// [`MAX_GROUP_ORDERS`] of them and [`MAX_GROUP_RECORDS`] records (but always the first).
fn take_group<T>(queue: &mut VecDeque<(OrderRecords, T)>) -> Vec<(OrderRecords, T)> {
    let mut group = Vec::new();
    let mut records = 0;
    while let Some((order, _)) = queue.front() {
        let size = order.values.len();
        if !group.is_empty()
            && (group.len() >= MAX_GROUP_ORDERS || records + size > MAX_GROUP_RECORDS)
        {
            break;
        }
        records += size;
        group.extend(queue.pop_front());
    }
    group
}

fn send_in_transaction(producer: &FutureProducer, orders: &[&OrderRecords]) -> anyhow::Result<()> {
    producer
        .begin_transaction()
        .context("cannot begin a transaction")?;
    let sent = orders
        .iter()
        .flat_map(|records| records.values.iter().map(move |value| (records, value)))
        // A blocking thread of the runtime: it may wait on the one async send path.
        .map(|(records, value)| {
            tokio::runtime::Handle::current()
                .block_on(crate::kafka::send(producer, records.record(value)))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .context("cannot send the order's records")?;
    crate::kafka::commit_transaction(producer, sent, PUBLISH_TIMEOUT)
        .context("the order's transaction failed")
}

/// Opens the order in `book`, publishes its record and then its pizzas, keyed by the order
/// id; returns once the broker acknowledged everything. On failure the order is forgotten here.
pub async fn place(
    book: &OrderBook,
    publisher: &Publisher,
    topics: &OrderTopics,
    order_id: &str,
    count: u32,
) -> anyhow::Result<()> {
    // Opened first, so a pizza that completes before the last send returns finds its order.
    book.open(order_id, count);
    let traceparent = trace_context::new_trace();
    let records = OrderRecords {
        key: order_id.to_owned(),
        headers: OwnedHeaders::new().insert(Header {
            key: trace_context::HEADER,
            value: Some(traceparent.as_bytes()),
        }),
        values: std::iter::once((topics.orders.clone(), order_record(order_id, count)))
            .chain(
                new_pizzas(order_id, count)
                    .into_iter()
                    .map(|pizza| (topics.pizzas.clone(), pizza)),
            )
            .collect(),
    };
    let published = match publisher {
        Publisher::AtLeastOnce(producer, nudge) => publish_each(producer, nudge, &records).await,
        Publisher::ExactlyOnce(publisher) => {
            let publisher = publisher.clone();
            tokio::task::spawn_blocking(move || publisher.publish(records))
                .await
                .context("publishing panicked")
                .and_then(|published| published)
        }
    };
    if published.is_err() {
        book.cancel(order_id);
    }
    published
}

async fn publish_each(
    producer: &FutureProducer,
    nudge: &Nudge,
    records: &OrderRecords,
) -> anyhow::Result<()> {
    // The order record first: a view that sees a pizza knows its order.
    let mut values = records.values.iter();
    if let Some(order) = values.next() {
        let sent = handed_over(producer, records.record(order)).await?;
        nudge.nudge(producer, 1);
        acknowledged(sent)
            .await
            .context("the broker did not acknowledge the order")?;
    }
    let mut sent = Vec::with_capacity(values.len());
    for pizza in values {
        sent.push(handed_over(producer, records.record(pizza)).await?);
    }
    nudge.nudge(producer, sent.len());
    for result in futures::future::join_all(sent.into_iter().map(acknowledged)).await {
        result.context("the broker did not acknowledge all of the order's pizzas")?;
    }
    Ok(())
}

/// Hands `record` to the producer, or fails once its queue stayed full for [`PUBLISH_TIMEOUT`]:
/// a customer waits for the answer.
async fn handed_over(
    producer: &FutureProducer,
    record: FutureRecord<'_, str, str>,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    tokio::time::timeout(PUBLISH_TIMEOUT, crate::kafka::send(producer, record))
        .await
        .context("the producer's queue stayed full: the broker is not taking records")?
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use rdkafka::mocking::MockCluster;
    use serde_json::Value;

    use super::*;

    /// On a broker farther away than a nudge lasts, an order's pizzas, handed over once its
    /// record is acknowledged and so within a linger of its nudge, are nudged too (they are all
    /// the producer holds): they do not wait out the linger (20 s here; the order takes far
    /// less than 5).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_orders_pizzas_do_not_wait_out_the_linger_on_a_far_broker() -> anyhow::Result<()> {
        let cluster = MockCluster::new(1)?;
        let settings = KafkaSettings::new(BTreeMap::from([
            ("bootstrap.servers".to_owned(), cluster.bootstrap_servers()),
            ("linger.ms".to_owned(), "20000".to_owned()),
        ]));
        let producer = settings.producer()?;
        let nudge = Nudge::new(settings.linger());
        let order = |id: &str| OrderRecords {
            key: id.to_owned(),
            headers: OwnedHeaders::new(),
            values: vec![
                ("orders".to_owned(), order_record(id, 1)),
                ("pizza".to_owned(), new_pizzas(id, 1).remove(0)),
            ],
        };
        // The producer knows both topics first: a nudge hurries records that are ready to go.
        for topic in ["orders", "pizza"] {
            cluster.create_topic(topic, 1, 1)?;
        }
        let warm_up = order("1");
        let mut sent = Vec::new();
        for value in &warm_up.values {
            sent.push(crate::kafka::send(&producer, warm_up.record(value)).await?);
        }
        crate::kafka::send::hurry(&producer, SOON).await?;
        for sent in sent {
            acknowledged(sent).await?;
        }

        cluster.broker_round_trip_time(1, Duration::from_millis(50))?;
        let timed = order("2");
        let published = tokio::time::timeout(SOON, publish_each(&producer, &nudge, &timed));
        assert!(
            matches!(published.await, Ok(Ok(()))),
            "the order was not published within {SOON:?}"
        );
        Ok(())
    }

    const SOON: Duration = Duration::from_secs(5);

    #[test]
    fn a_new_order_id_is_told_apart_from_one_that_never_was() {
        let minute = Duration::from_secs(60);
        let id = OrderIds::new(None).next();
        assert!(id.parse::<u128>().is_ok(), "a decimal 128-bit number: {id}");
        assert!(placed_recently(&id, minute));
        let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_700_000_000,
            0,
        ));
        assert!(!placed_recently(&old.as_u128().to_string(), minute));
        let random = uuid::Uuid::new_v4().as_u128().to_string();
        assert!(!placed_recently(&random, minute), "no time in a v4 id");
        assert!(!placed_recently("not-an-id", minute));
    }

    #[test]
    fn a_group_takes_whole_orders_up_to_256_orders_or_10_000_records() {
        let queued = |sizes: &[usize]| -> VecDeque<(OrderRecords, usize)> {
            sizes
                .iter()
                .enumerate()
                .map(|(n, &size)| {
                    let order = OrderRecords {
                        key: n.to_string(),
                        headers: OwnedHeaders::new(),
                        values: vec![(String::new(), String::new()); size],
                    };
                    (order, n)
                })
                .collect()
        };
        let groups = |mut queue: VecDeque<(OrderRecords, usize)>| {
            let mut groups = Vec::new();
            while !queue.is_empty() {
                groups.push(take_group(&mut queue).into_iter().map(|(_, n)| n).collect());
            }
            groups
        };
        // 300 small orders: 256, then the rest.
        let small: Vec<Vec<usize>> = groups(queued(&[2; 300]));
        assert_eq!(small, [(0..256).collect::<Vec<_>>(), (256..300).collect()]);
        // Orders of 4,000 records: two fit in 10,000, a third would not.
        assert_eq!(groups(queued(&[4_000; 3])), [vec![0, 1], vec![2]]);
        // An order bigger than the bound still goes, alone.
        assert_eq!(groups(queued(&[12_000, 1])), [vec![0], vec![1]]);
    }

    #[test]
    fn a_group_waits_for_as_many_orders_as_the_last_one_held_but_no_longer() {
        let publisher = Arc::new(TransactionalPublisher {
            kafka: KafkaSettings::new(std::collections::BTreeMap::new()),
            transactional_id: "test".to_owned(),
            queue: Mutex::default(),
            arrived: Condvar::new(),
            last_group: AtomicUsize::new(0),
            producer: Mutex::new(None),
        });
        let order = |n: usize| OrderRecords {
            key: n.to_string(),
            headers: OwnedHeaders::new(),
            values: Vec::new(),
        };
        // One order queued, three wanted: the other two come from another thread meanwhile.
        publisher.enqueue(order(0), std::sync::mpsc::channel().0);
        let later = publisher.clone();
        let arriving = std::thread::spawn(move || {
            for n in 1..3 {
                later.enqueue(order(n), std::sync::mpsc::channel().0);
            }
        });
        let group = take_group(&mut publisher.gathered(3, Duration::from_secs(60)));
        let keys: Vec<&str> = group.iter().map(|(order, _)| order.key.as_str()).collect();
        assert_eq!(keys, ["0", "1", "2"]);
        assert!(arriving.join().is_ok());
        // Nobody else comes: the wait ends at its bound with what is there.
        publisher.enqueue(order(3), std::sync::mpsc::channel().0);
        assert_eq!(publisher.gathered(3, Duration::from_millis(20)).len(), 1);
    }

    #[test]
    fn seeded_order_ids_repeat_per_seed() {
        let ids = |seed| {
            let ids = OrderIds::new(seed);
            [ids.next(), ids.next()]
        };
        assert_eq!(ids(Some(1)), ids(Some(1)));
        assert_ne!(ids(Some(1)), ids(Some(2)));
        assert_ne!(ids(None), ids(None));
        let [first, second] = ids(Some(1));
        assert_ne!(first, second);
        assert!(first.parse::<u128>().is_ok(), "{first}");
    }

    #[test]
    fn new_pizzas_have_the_original_fields_and_distinct_ids() {
        let id = OrderIds::new(None).next();
        assert!(id.parse::<u128>().is_ok(), "{id}");
        let pizzas = new_pizzas(&id, 3);
        let ids: HashSet<String> = pizzas
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_str(p).expect("json");
                for field in ["sauce", "cheese", "meats", "veggies"] {
                    assert_eq!(v[field], "", "{field}");
                }
                assert_eq!(v["order_id"], id.as_str());
                v["pizza_id"].as_str().expect("pizza_id").to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 3);
    }
}
