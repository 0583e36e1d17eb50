//! Kafka clients as the host needs them: the settings every consumer and producer gets, and
//! the creation of missing topics.
//!
//! The user's `[kafka]` properties come first, so anything librdkafka understands works
//! (SASL_SSL to a hosted cluster included). A few settings are then forced because the
//! delivery guarantee depends on them: consumers store offsets only when the host says so
//! (after the output is acknowledged), and producers are idempotent so a retried send can
//! neither duplicate nor reorder records.

pub mod health;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer as _};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// How long admin requests and metadata queries may take before the host gives up.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How much a consumer fetches ahead, in KiB (librdkafka's default is 64 MiB per consumer: with
/// six consumers behind a burst, that alone is most of the host's memory). 8 MiB still keeps a
/// stage busy between fetches.
const CONSUMER_QUEUE_KIB: &str = "4096";
/// How much a producer may hold unsent, in KiB (librdkafka's default is 1 GiB); a full queue
/// makes a stage wait (see `send_blocking`), which is the back-pressure wanted.
const PRODUCER_QUEUE_KIB: &str = "8192";

/// librdkafka settings shared by every client of one host.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// Settings from the `[kafka]` table (already expanded).
    pub fn new(properties: BTreeMap<String, String>) -> Self {
        Self { properties }
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// A consumer in `group_id` that reads committed records, from the earliest offset when
    /// the group is new, and commits only the offsets the host stores. It reports its
    /// assignment and lag to `state`.
    pub fn consumer(
        &self,
        group_id: &str,
        state: Arc<GroupState>,
    ) -> anyhow::Result<GroupConsumer> {
        self.group_consumer(group_id, true, state)
    }

    /// A consumer whose offsets are committed by a producer's transactions, never by itself.
    pub fn transactional_consumer(
        &self,
        group_id: &str,
        state: Arc<GroupState>,
    ) -> anyhow::Result<GroupConsumer> {
        self.group_consumer(group_id, false, state)
    }

    /// A transactional consumer of several co-partitioned topics (same partition count, same
    /// keys) that gets partition `p` of all of them together: the range assignor, whatever
    /// the `[kafka]` table says, since a join must see every part of a key in one place.
    pub fn co_partitioned_consumer(
        &self,
        group_id: &str,
        state: Arc<GroupState>,
    ) -> anyhow::Result<GroupConsumer> {
        let mut settings = self.clone();
        settings
            .properties
            .insert("partition.assignment.strategy".into(), "range".into());
        settings.group_consumer(group_id, false, state)
    }

    fn group_consumer(
        &self,
        group_id: &str,
        commits_itself: bool,
        state: Arc<GroupState>,
    ) -> anyhow::Result<GroupConsumer> {
        state.reset();
        let mut config = self.base();
        config
            .set_if_absent("statistics.interval.ms", "1000")
            .set("group.id", group_id)
            .set_if_absent("auto.offset.reset", "earliest")
            .set_if_absent("isolation.level", "read_committed")
            .set("enable.auto.commit", commits_itself.to_string())
            .set("enable.auto.offset.store", "false")
            .set_if_absent("queued.max.messages.kbytes", CONSUMER_QUEUE_KIB);
        if !commits_itself {
            // Exactly-once downstream of a transactional stage needs committed reads only.
            config.set("isolation.level", "read_committed");
        }
        config
            .create_with_context(GroupContext {
                group: group_id.to_owned(),
                state,
            })
            .with_context(|| format!("cannot create a Kafka consumer for group {group_id}"))
    }

    /// A transactional producer. A crashed owner's open transaction blocks `read_committed`
    /// readers until it times out, so the timeout is kept short unless the user set one.
    pub fn transactional_producer(&self, transactional_id: &str) -> anyhow::Result<FutureProducer> {
        let mut config = self.producer_config();
        config
            .set("transactional.id", transactional_id)
            .set_if_absent("transaction.timeout.ms", "10000")
            // A transaction that begins right after a commit is answered "concurrent
            // transactions" until the commit markers are written; retry soon, not in 100 ms.
            .set_if_absent("retry.backoff.ms", "5");
        config
            .create()
            .with_context(|| format!("cannot create the transactional producer {transactional_id}"))
    }

    /// A consumer with no group (`StreamConsumer` or `BaseConsumer`), for reading partitions
    /// the caller assigns itself.
    pub fn reader<T: rdkafka::config::FromClientConfig>(&self, name: &str) -> anyhow::Result<T> {
        let mut config = self.base();
        config
            .set("group.id", name)
            .set_if_absent("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set_if_absent("queued.max.messages.kbytes", CONSUMER_QUEUE_KIB);
        config
            .create()
            .with_context(|| format!("cannot create the Kafka reader {name}"))
    }

    /// An idempotent producer that batches briefly.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        self.producer_config()
            .create()
            .context("cannot create a Kafka producer")
    }

    /// Settings every producer gets: idempotent, so a retried send neither duplicates nor
    /// reorders, and briefly batched.
    fn producer_config(&self) -> ClientConfig {
        let mut config = self.base();
        config
            .set("enable.idempotence", "true")
            .set_if_absent("linger.ms", "5")
            .set_if_absent("compression.type", "lz4")
            .set_if_absent("queue.buffering.max.kbytes", PRODUCER_QUEUE_KIB);
        config
    }

    /// An admin client (topic creation, metadata queries).
    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        self.base()
            .create()
            .context("cannot create a Kafka admin client")
    }

    /// A producer for records a caller waits on (a customer's order): like [`Self::producer`],
    /// but a record the broker has not acknowledged within `timeout` fails instead of being
    /// retried for librdkafka's default five minutes.
    pub fn producer_with_timeout(&self, timeout: Duration) -> anyhow::Result<FutureProducer> {
        let mut config = self.producer_config();
        config.set_if_absent("message.timeout.ms", &timeout.as_millis().to_string());
        config.create().context("cannot create a Kafka producer")
    }

    /// Creates each of `topics` that does not exist yet, with the topic-level `settings`
    /// (`cleanup.policy`, …); existing topics are left as they are.
    pub async fn ensure_topics(
        &self,
        topics: &[&str],
        partitions: i32,
        replication: i32,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        // librdkafka crashes on a request that names a topic twice, and has nothing to do
        // for an empty one.
        let topics: std::collections::BTreeSet<&str> = topics.iter().copied().collect();
        if topics.is_empty() {
            return Ok(());
        }
        let admin = self.admin()?;
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|topic| {
                settings.iter().fold(
                    NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .context("cannot reach the Kafka cluster to create topics")?;
        let mut created = Vec::new();
        for result in results {
            match result {
                Ok(topic) => created.push(topic),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
            }
        }
        // Usable only once every partition has a leader: readers start right after this.
        for topic in created {
            tokio::task::block_in_place(|| self::partitions(admin.inner(), &topic))?;
            tracing::info!(topic, partitions, "created topic");
        }
        Ok(())
    }
}

impl KafkaSettings {
    /// Makes `to` start reading `topic` where `from` stopped, by committing `from`'s committed
    /// offsets for `to`. Both groups must have no running member on `topic`.
    pub async fn copy_committed_offsets(
        &self,
        from: &str,
        to: &str,
        topic: &str,
    ) -> anyhow::Result<()> {
        let settings = self.clone();
        let (from, to, topic) = (from.to_owned(), to.to_owned(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            settings.copy_committed_offsets_blocking(&from, &to, &topic)
        })
        .await?
    }

    fn copy_committed_offsets_blocking(
        &self,
        from: &str,
        to: &str,
        topic: &str,
    ) -> anyhow::Result<()> {
        let group_client = |group: &str| -> anyhow::Result<BaseConsumer> {
            let mut config = self.base();
            config
                .set("group.id", group)
                .set("enable.auto.commit", "false");
            Ok(config.create()?)
        };
        let source = group_client(from)?;
        let mut partitions = TopicPartitionList::new();
        for partition in self::partitions(source.client(), topic)? {
            partitions.add_partition(topic, partition);
        }
        let committed = source.committed_offsets(partitions, ADMIN_TIMEOUT)?;
        let mut handover = TopicPartitionList::new();
        for element in committed.elements() {
            if let Offset::Offset(offset) = element.offset() {
                handover.add_partition_offset(
                    topic,
                    element.partition(),
                    Offset::Offset(offset),
                )?;
            }
        }
        if handover.count() > 0 {
            group_client(to)?
                .commit(&handover, CommitMode::Sync)
                .with_context(|| format!("cannot commit offsets of {topic} for group {to}"))?;
        }
        Ok(())
    }
}

impl KafkaSettings {
    /// Blocking: reads partition `only` of `topic` (every partition when `None`) from its
    /// beginning to where it ended when asked, as a `read_committed` reader named `reader`,
    /// handing each record to `each`. Done when the position passes each end (transaction
    /// markers take offsets too, so counting records would not do); fails after
    /// [`ADMIN_TIMEOUT`].
    pub fn read_to_end(
        &self,
        reader: &str,
        topic: &str,
        only: Option<i32>,
        mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
    ) -> anyhow::Result<()> {
        let consumer: BaseConsumer = self.reader(reader)?;
        let chosen = match only {
            Some(partition) => vec![partition],
            None => partitions(consumer.client(), topic)?,
        };
        let mut ends = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in chosen {
            let (low, high) = watermarks(&consumer, topic, partition)?;
            if high > low {
                ends.insert(partition, high);
                assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
            }
        }
        if ends.is_empty() {
            return Ok(());
        }
        consumer.assign(&assignment)?;
        let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
        while !ends.is_empty() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "cannot read {topic} to its end in {ADMIN_TIMEOUT:?}"
            );
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                each(&message?);
            }
            let positions = consumer.position()?;
            ends.retain(|&partition, &mut end| {
                !matches!(
                    positions.find_partition(topic, partition).map(|e| e.offset()),
                    Some(Offset::Offset(at)) if at >= end
                )
            });
        }
        Ok(())
    }
}

/// Blocking: hands `record` to the producer, waiting while its queue is full. Its delivery is
/// settled later: the returned future says how (see [`commit_transaction`]).
pub fn send_blocking<K, P>(
    producer: &FutureProducer,
    mut record: rdkafka::producer::FutureRecord<'_, K, P>,
) -> anyhow::Result<DeliveryFuture>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    use rdkafka::error::KafkaError;
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((err, _)) => return Err(err).context("cannot hand a record to the producer"),
        }
    }
}

/// Blocking: commits `producer`'s open transaction once every record sent in it (`sent`) is
/// acknowledged; fails, committing nothing, if one was not delivered.
///
/// rust-rdkafka's `commit_transaction` flushes first, and while anything is unacknowledged it
/// waits in polls of 100 ms that run to their end: every commit took 100 ms, a tenth of a
/// second per transactional hop. Here the acknowledgements are awaited, then the last
/// bookkeeping (a message is counted out just after its acknowledgement) in polls of 1 ms, so
/// the flush finds nothing left.
pub fn commit_transaction(
    producer: &FutureProducer,
    sent: Vec<DeliveryFuture>,
    timeout: Duration,
) -> anyhow::Result<()> {
    for delivery in sent {
        match futures::executor::block_on(delivery) {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => {
                return Err(err).context("a record of the transaction was not delivered");
            }
            Err(_) => anyhow::bail!("the producer dropped a record of the transaction"),
        }
    }
    let deadline = std::time::Instant::now() + timeout;
    while producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
        producer.poll(Duration::from_millis(1));
    }
    producer
        .commit_transaction(timeout)
        .context("cannot commit the transaction")
}

/// The partitions of `topic`, once every one has a leader. A topic created moments ago may
/// not be in the cluster's metadata yet, or have partitions without a leader (queries then
/// fail with "not leader"): ask again until it is ready, up to [`ADMIN_TIMEOUT`].
pub fn partitions<C: ClientContext>(client: &Client<C>, topic: &str) -> anyhow::Result<Vec<i32>> {
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let metadata = client
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .with_context(|| format!("cannot read the partitions of {topic}"))?;
        let ready =
            |p: &rdkafka::metadata::MetadataPartition| p.leader() >= 0 && p.error().is_none();
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && t.partitions().iter().all(ready))
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !partitions.is_empty() {
            return Ok(partitions);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("topic {topic} has no partitions with a leader after {ADMIN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The low and high watermarks of `topic`/`partition`, asking again while the partition's
/// leader is still being settled (a topic created moments ago), up to [`ADMIN_TIMEOUT`].
pub fn watermarks<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
) -> anyhow::Result<(i64, i64)> {
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        match consumer.fetch_watermarks(topic, partition, ADMIN_TIMEOUT) {
            Ok(marks) => return Ok(marks),
            Err(err) if std::time::Instant::now() < deadline => {
                tracing::debug!(topic, partition, "watermarks not available yet: {err}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot read the offsets of {topic}/{partition}"));
            }
        }
    }
}

/// Logs the errors a consumer hands out, without repeating itself.
///
/// Consumer errors are librdkafka saying what it is retrying on its own (a broker went away, a
/// rebalance failed), so they are logged and never waited on: waiting after each would leave
/// the errors that pile up during an outage to be drained one per wait, long after the broker
/// is back, with the records queued behind them. The same message is logged at most once per
/// [`ConsumerErrors::EVERY`].
#[derive(Debug, Default)]
pub struct ConsumerErrors {
    last: Option<(String, std::time::Instant)>,
}

impl ConsumerErrors {
    /// How often one message is logged while it repeats.
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Logs `err` (from the consumer of `what`) unless it was just logged.
    pub fn log(&mut self, what: &str, err: &rdkafka::error::KafkaError) {
        let message = err.to_string();
        let repeated = matches!(&self.last, Some((last, at)) if *last == message && at.elapsed() < Self::EVERY);
        if !repeated {
            tracing::warn!("{what}: consumer error: {message}");
            self.last = Some((message, std::time::Instant::now()));
        }
    }
}

/// A stage's consumer: it reports to a [`GroupState`].
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// What a stage's consumer knows of its place in the group: whether it joined, which
/// partitions it holds, and how far behind it is on each. Outlives the consumer (a restarted
/// stage gets a new one), so the host's readiness and metrics always find it.
#[derive(Debug, Default)]
pub struct GroupState {
    joined: AtomicBool,
    /// Counts assignments and revocations, so a consumer's owner can tell that its partitions
    /// changed hands (and any state it keeps per partition may be stale) since it last looked.
    assignments: std::sync::atomic::AtomicU64,
    /// Assigned partition → records not yet read (`None` until librdkafka reports it).
    partitions: Mutex<BTreeMap<i32, Option<i64>>>,
}

impl GroupState {
    /// True once the consumer has joined its group and received an assignment (possibly of
    /// no partitions, when the group has more members than the topic has partitions).
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// How many times the consumer's partitions have changed (assigned or revoked) so far.
    pub fn assignments(&self) -> u64 {
        self.assignments.load(Ordering::Acquire)
    }

    /// The assigned partitions with their lag, when known.
    pub fn partitions(&self) -> BTreeMap<i32, Option<i64>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Option<i64>>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn reset(&self) {
        self.joined.store(false, Ordering::Release);
        self.lock().clear();
    }
}

/// The librdkafka callbacks of a stage's consumer, kept in its [`GroupState`].
pub struct GroupContext {
    group: String,
    state: Arc<GroupState>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let mut partitions = self.state.lock();
        for topic in statistics.topics.values() {
            for (id, stats) in &topic.partitions {
                let Some(lag) = partitions.get_mut(id) else {
                    continue; // not ours (or librdkafka's internal partition -1)
                };
                // Records not yet read: from the position when there is one; right after an
                // assignment, from the committed offset.
                *lag = if stats.app_offset >= 0 && stats.ls_offset >= 0 {
                    Some((stats.ls_offset - stats.app_offset).max(0))
                } else if stats.consumer_lag >= 0 {
                    Some(stats.consumer_lag)
                } else {
                    *lag
                };
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                let ids: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(group = self.group, partitions = ?ids, "partitions assigned");
                *self.state.lock() = ids.into_iter().map(|id| (id, None)).collect();
                self.state.joined.store(true, Ordering::Release);
                self.state.assignments.fetch_add(1, Ordering::AcqRel);
            }
            Rebalance::Revoke(revoked) => {
                let ids: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(group = self.group, partitions = ?ids, "partitions revoked");
                self.state.lock().clear();
                self.state.assignments.fetch_add(1, Ordering::AcqRel);
            }
            Rebalance::Error(err) => tracing::warn!(group = self.group, "rebalance failed: {err}"),
        }
    }
}

/// `set` unless the user already chose a value.
trait SetIfAbsent {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self;
}

impl SetIfAbsent for ClientConfig {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }
}
