//! Topics and offsets: creating missing topics, reading a partition to its end, handing
//! committed offsets from one group to another, and the metadata queries that wait for a new
//! topic to be usable.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::{ADMIN_TIMEOUT, KafkaSettings};

impl KafkaSettings {
    /// Creates each of `topics` that does not exist yet, with the topic-level `settings`
    /// (`cleanup.policy`, …); existing topics are left as they are. `replication` unset means
    /// as many replicas as the cluster has brokers, up to 3; with 3 or more, an acknowledged
    /// record must be on 2 of them (`min.insync.replicas`), so one broker's loss loses nothing.
    pub async fn ensure_topics(
        &self,
        topics: &[&str],
        partitions: i32,
        replication: Option<i32>,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        // librdkafka crashes on a request that names a topic twice, and has nothing to do
        // for an empty one.
        let topics: std::collections::BTreeSet<&str> = topics.iter().copied().collect();
        if topics.is_empty() {
            return Ok(());
        }
        let admin = self.admin()?;
        let replication = match replication {
            Some(replication) => replication,
            None => {
                let any = topics.first().copied().unwrap_or_default();
                tokio::task::block_in_place(|| brokers(admin.inner(), any))?.min(3)
            }
        };
        let mut settings = settings.to_vec();
        if replication >= 3 {
            settings.push(("min.insync.replicas", "2"));
        }
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

    /// Makes group `group` start reading `topic` at `from`, by committing that position for
    /// it, if it has no committed position on `topic` yet (a new stage); otherwise it changes
    /// nothing. A group that another host already joined keeps what that host set.
    pub async fn start_group_at(
        &self,
        group: &str,
        topic: &str,
        from: crate::config::StartFrom,
    ) -> anyhow::Result<()> {
        let settings = self.clone();
        let (group, topic) = (group.to_owned(), topic.to_owned());
        tokio::task::spawn_blocking(move || settings.start_group_at_blocking(&group, &topic, from))
            .await?
    }

    fn start_group_at_blocking(
        &self,
        group: &str,
        topic: &str,
        from: crate::config::StartFrom,
    ) -> anyhow::Result<()> {
        use crate::config::StartFrom;
        let client = self.group_client(group)?;
        let partitions = every_partition(&client, topic)?;
        let committed = client.committed_offsets(partitions.clone(), ADMIN_TIMEOUT)?;
        if committed
            .elements()
            .iter()
            .any(|element| matches!(element.offset(), Offset::Offset(_)))
        {
            return Ok(());
        }
        let mut start = TopicPartitionList::new();
        let at_time = match from {
            StartFrom::Time(time) => {
                let ms = time
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let mut query = TopicPartitionList::new();
                for element in partitions.elements() {
                    query.add_partition_offset(topic, element.partition(), Offset::Offset(ms))?;
                }
                Some(client.offsets_for_times(query, ADMIN_TIMEOUT)?)
            }
            StartFrom::Earliest | StartFrom::Latest => None,
        };
        for element in partitions.elements() {
            let partition = element.partition();
            let (low, high) = client.fetch_watermarks(topic, partition, ADMIN_TIMEOUT)?;
            let offset = match (&from, &at_time) {
                (StartFrom::Earliest, _) => low,
                (StartFrom::Latest, _) => high,
                // No record at or after the time: from the end.
                (StartFrom::Time(_), Some(found)) => {
                    match found.find_partition(topic, partition).map(|e| e.offset()) {
                        Some(Offset::Offset(offset)) => offset,
                        _ => high,
                    }
                }
                (StartFrom::Time(_), None) => high,
            };
            start.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        match client.commit(&start, CommitMode::Sync) {
            Ok(()) => {
                tracing::info!(group, topic, from = %String::from(from), "new consumer group starts at its `from`");
                Ok(())
            }
            // Another host's member joined the group first: the position is its to set.
            Err(err) => {
                tracing::warn!(
                    group,
                    topic,
                    "the start position was not set ({err}); another host's member started the group first"
                );
                Ok(())
            }
        }
    }

    /// A client acting for consumer group `group` without joining it: it reads and commits
    /// the group's positions.
    fn group_client(&self, group: &str) -> anyhow::Result<BaseConsumer> {
        let mut config = self.base();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        Ok(config.create()?)
    }

    fn copy_committed_offsets_blocking(
        &self,
        from: &str,
        to: &str,
        topic: &str,
    ) -> anyhow::Result<()> {
        let source = self.group_client(from)?;
        let partitions = every_partition(&source, topic)?;
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
            self.group_client(to)?
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

/// How many brokers the cluster has. Every metadata answer lists them, so it asks about one
/// `topic` (existing or not) rather than for every topic of a cluster that may hold thousands.
fn brokers<C: ClientContext>(client: &Client<C>, topic: &str) -> anyhow::Result<i32> {
    let metadata = client
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .context("cannot ask the Kafka cluster how many brokers it has")?;
    Ok(i32::try_from(metadata.brokers().len()).unwrap_or(i32::MAX))
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

/// Every partition of `topic`, without offsets.
fn every_partition(client: &BaseConsumer, topic: &str) -> anyhow::Result<TopicPartitionList> {
    let mut partitions = TopicPartitionList::new();
    for partition in self::partitions(client.client(), topic)? {
        partitions.add_partition(topic, partition);
    }
    Ok(partitions)
}
