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
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

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

    /// A consumer in `group_id` that reads from the earliest offset when the group is new and
    /// commits only the offsets the host stores.
    pub fn consumer(&self, group_id: &str) -> anyhow::Result<StreamConsumer> {
        let mut config = self.base();
        config
            .set("group.id", group_id)
            .set_if_absent("auto.offset.reset", "earliest")
            .set_if_absent("isolation.level", "read_committed")
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false");
        config
            .create()
            .with_context(|| format!("cannot create a Kafka consumer for group {group_id}"))
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
        let mut config = self.base();
        config
            .set("enable.idempotence", "true")
            .set_if_absent("linger.ms", "5")
            .set_if_absent("compression.type", "lz4");
        config.create().context("cannot create a Kafka producer")
    }

    /// Creates each of `topics` that does not exist yet; existing topics are left as they are.
    pub async fn ensure_topics(
        &self,
        topics: &[&str],
        partitions: i32,
        replication: i32,
    ) -> anyhow::Result<()> {
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
        for result in results {
            match result {
                Ok(topic) => tracing::info!(topic, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
            }
        }
        Ok(())
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
