//! Kafka clients as the host needs them: the settings every consumer and producer gets, and
//! the creation of missing topics.
//!
//! The user's `[kafka]` properties come first, so anything librdkafka understands works
//! (SASL_SSL to a hosted cluster included). A few settings are then forced because the
//! delivery guarantee depends on them: consumers store offsets only when the host says so
//! (after the output is acknowledged), and producers are idempotent so a retried send can
//! neither duplicate nor reorder records.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// How long admin requests and metadata queries may take before the host gives up.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// the group is new, and commits only the offsets the host stores.
    pub fn consumer(&self, group_id: &str) -> anyhow::Result<StreamConsumer> {
        self.group_consumer(group_id, true)
    }

    /// A consumer whose offsets are committed by a producer's transactions, never by itself.
    pub fn transactional_consumer(&self, group_id: &str) -> anyhow::Result<StreamConsumer> {
        self.group_consumer(group_id, false)
    }

    fn group_consumer(
        &self,
        group_id: &str,
        commits_itself: bool,
    ) -> anyhow::Result<StreamConsumer> {
        let mut config = self.base();
        config
            .set("group.id", group_id)
            .set_if_absent("auto.offset.reset", "earliest")
            .set_if_absent("isolation.level", "read_committed")
            .set("enable.auto.commit", commits_itself.to_string())
            .set("enable.auto.offset.store", "false");
        if !commits_itself {
            // Exactly-once downstream of a transactional stage needs committed reads only.
            config.set("isolation.level", "read_committed");
        }
        config
            .create()
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

    /// A consumer with no group, for reading partitions the caller assigns itself.
    pub fn reader(&self, name: &str) -> anyhow::Result<StreamConsumer> {
        let mut config = self.base();
        config
            .set("group.id", name)
            .set_if_absent("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
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
            .set_if_absent("compression.type", "lz4");
        config
    }

    /// Creates each of `topics` that does not exist yet; existing topics are left as they are.
    pub async fn ensure_topics(
        &self,
        topics: &[&str],
        partitions: i32,
        replication: i32,
    ) -> anyhow::Result<()> {
        // librdkafka crashes on a request that names a topic twice, and has nothing to do
        // for an empty one.
        let topics: std::collections::BTreeSet<&str> = topics.iter().copied().collect();
        if topics.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self
            .base()
            .create()
            .context("cannot create a Kafka admin client")?;
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|topic| NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)))
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
