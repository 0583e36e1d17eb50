//! Kafka as the host uses it: the client factory (the settings every consumer and producer
//! gets) here, and beside it topics and offsets ([`topics`]), a consumer's place in its group
//! ([`group`]), the one send path ([`send`]), transactions ([`transaction`]), the host's
//! record headers ([`headers`]) and whether the cluster answers ([`health`]).
//!
//! The user's `[kafka]` properties come first, so anything librdkafka understands works
//! (SASL_SSL to a hosted cluster included). A few settings are then forced because the
//! delivery guarantee depends on them: consumers store offsets only when the host says so
//! (after the output is acknowledged), and producers are idempotent so a retried send can
//! neither duplicate nor reorder records.

pub mod group;
pub mod headers;
pub mod health;
pub mod send;
pub mod topics;
pub mod transaction;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;

/// How long admin requests and metadata queries may take before the host gives up.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How much a consumer fetches ahead, in KiB (librdkafka's default is 64 MiB per consumer: with
/// six consumers behind a burst, that alone is most of the host's memory). 8 MiB still keeps a
/// stage busy between fetches.
const CONSUMER_QUEUE_KIB: &str = "4096";
/// How long a transaction may stay open unless `[kafka]` says otherwise: a crashed owner's
/// open transaction blocks `read_committed` readers until then, so it is kept short.
const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long producers hold records back to batch them unless `[kafka]` says otherwise: on
/// loopback 1 ms took a fifth off full-load throughput, 5 ms costs a lone record 5 ms per hop
/// (which [`send::Nudge`] gives back). See BENCHMARKS.md.
const DEFAULT_LINGER: Duration = Duration::from_millis(5);
/// How much a producer may hold unsent, in KiB (librdkafka's default is 1 GiB); a full queue
/// makes a stage wait (see [`send::send`]), which is the back-pressure wanted.
const PRODUCER_QUEUE_KIB: &str = "8192";

/// librdkafka settings shared by every client of one host.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    properties: BTreeMap<String, String>,
    instance_id: Option<String>,
}

impl KafkaSettings {
    /// Settings from the `[kafka]` table (already expanded).
    pub fn new(properties: BTreeMap<String, String>) -> Self {
        Self {
            properties,
            instance_id: None,
        }
    }

    /// Makes every group consumer a static member (`group.instance.id`) named `instance_id`:
    /// a crashed host restarted under the same name gets its partitions back at once, where a
    /// dynamic member's partitions would wait for the dead member's session to time out. A
    /// consumer that stops on purpose leaves its group all the same ([`group::leave`]).
    pub fn with_instance_id(mut self, instance_id: &str) -> Self {
        self.instance_id = Some(instance_id.to_owned());
        self
    }

    pub(crate) fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        // Partitions added to a topic (to spread a stage over more hosts) are found at the next
        // metadata refresh, by the stage consuming it and by whoever produces to it: within
        // seconds, not librdkafka's default 5 minutes.
        config.set_if_absent("topic.metadata.refresh.interval.ms", "10000");
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
        if let Some(instance_id) = &self.instance_id {
            config.set_if_absent("group.instance.id", instance_id);
        }
        if !commits_itself {
            // Exactly-once downstream of a transactional stage needs committed reads only.
            config.set("isolation.level", "read_committed");
        }
        config
            .create_with_context(GroupContext::new(group_id, state))
            .with_context(|| format!("cannot create a Kafka consumer for group {group_id}"))
    }

    /// A transactional producer. A crashed owner's open transaction blocks `read_committed`
    /// readers until it times out, so the timeout is kept short unless the user set one.
    pub fn transactional_producer(&self, transactional_id: &str) -> anyhow::Result<FutureProducer> {
        self.transactional_config(transactional_id)
            .create()
            .with_context(|| format!("cannot create the transactional producer {transactional_id}"))
    }

    fn transactional_config(&self, transactional_id: &str) -> ClientConfig {
        let mut config = self.producer_config();
        config
            .set("transactional.id", transactional_id)
            .set_if_absent(
                "transaction.timeout.ms",
                &DEFAULT_TRANSACTION_TIMEOUT.as_millis().to_string(),
            )
            // A transaction that begins right after a commit is answered "concurrent
            // transactions" until the commit markers are written; retry soon, not in 100 ms.
            .set_if_absent("retry.backoff.ms", "5");
        config
    }

    /// How long the broker lets a transaction of [`transactional_producer`]'s stay open
    /// (`transaction.timeout.ms`).
    ///
    /// [`transactional_producer`]: Self::transactional_producer
    pub fn transaction_timeout(&self) -> Duration {
        self.properties
            .get("transaction.timeout.ms")
            .and_then(|ms| ms.parse().ok())
            .map_or(DEFAULT_TRANSACTION_TIMEOUT, Duration::from_millis)
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
            // What idempotence implies anyway, said outright: a record counts as written
            // once every in-sync replica has it.
            .set("acks", "all")
            .set_if_absent("compression.type", "lz4")
            .set_if_absent("queue.buffering.max.kbytes", PRODUCER_QUEUE_KIB);
        // The default only when neither name is given: with both set, which one librdkafka
        // takes is arbitrary, and `linger()` (the nudge's interval) follows the given one.
        if !self.properties.contains_key("queue.buffering.max.ms") {
            config.set_if_absent("linger.ms", &DEFAULT_LINGER.as_millis().to_string());
        }
        config
    }

    /// How long producers hold records back to batch them (`linger.ms`, or its older name
    /// `queue.buffering.max.ms`; 5 ms unless `[kafka]` says otherwise).
    pub fn linger(&self) -> Duration {
        ["linger.ms", "queue.buffering.max.ms"]
            .iter()
            .find_map(|key| self.properties.get(*key))
            .and_then(|millis| millis.trim().parse::<f64>().ok())
            .filter(|millis| millis.is_finite() && *millis >= 0.0)
            .map_or(DEFAULT_LINGER, |millis| {
                Duration::from_secs_f64(millis / 1000.0)
            })
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
}

pub use group::{ConsumerErrors, GroupConsumer, GroupContext, GroupState, leave};
pub use send::{Nudge, send};
pub use topics::{partitions, watermarks};
pub use transaction::commit_transaction;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_time_out_after_10_s_unless_the_kafka_table_says_otherwise() {
        let default = KafkaSettings::new(BTreeMap::new());
        assert_eq!(default.transaction_timeout(), Duration::from_secs(10));
        let config = default.transactional_config("t");
        assert_eq!(config.get("transaction.timeout.ms"), Some("10000"));

        let set = KafkaSettings::new(BTreeMap::from([(
            "transaction.timeout.ms".to_owned(),
            "30000".to_owned(),
        )]));
        assert_eq!(set.transaction_timeout(), Duration::from_secs(30));
        let config = set.transactional_config("t");
        assert_eq!(config.get("transaction.timeout.ms"), Some("30000"));
    }
}
