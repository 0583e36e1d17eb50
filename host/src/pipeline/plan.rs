//! The planner: from a [`Pipeline`], everything that should run and every topic it needs —
//! each stage's, report's and join's route (topics, group and transactional ids, dead-letter
//! topic), and the topics the order view reads.
//!
//! It is the only place these are derived, and it is used both at startup and for every live
//! edit, so the two cannot disagree: a stage an edit adds or moves has its dead-letter topic
//! created and read by the order view exactly as if the host had started with it.
//!
//! Which settings an edit applies live is decided here too ([`LIVE_SETTINGS`], [`applied`]);
//! every other setting is reported as needing a restart ([`restart_only_changes`]), found by
//! comparing the two files' settings, so a setting added later is covered without a list to
//! keep.

use std::collections::BTreeSet;

use crate::config::{Guarantee, JoinConfig, Pipeline, ReportConfig, StageConfig, StartFrom};
use crate::kafka::KafkaSettings;

/// The transactional id of the producer of consumer group (or owner) `group` on host
/// `instance`. The '.' keeps apart what no other separator could: names (letters, digits,
/// '-', '_') never hold one, so two hosts of a fleet never share an id. With '-', stage
/// `sauce-1` on host `x` and stage `sauce` on host `1-x` were both `…-sauce-1-x`, and each
/// fenced the other.
pub fn transactional_id(group: &str, instance: &str) -> String {
    format!("{group}.{instance}")
}

/// The transactional id of `pipeline`'s order door on this host. Its owner is named `orders`,
/// which is why no stage may take that name.
pub fn order_door_transactional_id(pipeline: &Pipeline) -> String {
    transactional_id(
        &format!("{}-orders", pipeline.group_prefix),
        &pipeline.instance_id,
    )
}

/// Where a stage reads from and writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRoute {
    /// The stage's name.
    pub name: String,
    /// Consumer group id.
    pub group_id: String,
    /// Under exactly-once, the stage's transactional id (stable per stage and host instance).
    pub transactional_id: Option<String>,
    /// Input topic.
    pub input: String,
    /// Output topics by name, the default first.
    pub outputs: Vec<(String, String)>,
    /// Topic for records the stage could not process.
    pub dead_letter: String,
    /// Retries of a call whose error the stage marked retryable.
    pub retries: u32,
    /// Whether the input is another stage's output, so the trail it carries was written by
    /// the pipeline (else `pizza-host.` headers on the input are dropped).
    pub trusts_trail: bool,
    /// The largest output record the stage sends; a larger one is dead-lettered as
    /// `too-large` (a send the producer refuses for its size would stall the partition).
    pub max_output_bytes: usize,
    /// Where the stage starts reading while its group has no committed position.
    pub from: StartFrom,
    /// Where it notes the pizzas it drops, when pizzas pass through it (`[orders]
    /// dropped_topic`), so the order view can count them.
    pub drop_notices: Option<String>,
}

impl StageRoute {
    /// Whether the stage writes to `topic`.
    pub fn feeds(&self, topic: &str) -> bool {
        self.outputs.iter().any(|(_, output)| output == topic)
    }

    /// The topic of the output named `name`, or of the first output for `None`.
    pub fn output_topic(&self, name: Option<&str>) -> Option<&str> {
        match name {
            None => self.outputs.first(),
            Some(name) => self.outputs.iter().find(|(declared, _)| declared == name),
        }
        .map(|(_, topic)| topic.as_str())
    }
}

/// The topics pizzas pass through: the orders' topic, and every output of a stage or join
/// that reads one of them.
fn order_path(
    orders: &str,
    stages: &[(StageConfig, StageRoute)],
    joins: &[JoinRoute],
) -> BTreeSet<String> {
    let mut path = BTreeSet::from([orders.to_owned()]);
    loop {
        let before = path.len();
        for (_, route) in stages {
            if path.contains(&route.input) {
                path.extend(route.outputs.iter().map(|(_, topic)| topic.clone()));
            }
        }
        for join in joins {
            if join.config.inputs.iter().any(|input| path.contains(input)) {
                path.insert(join.config.output.clone());
            }
        }
        if path.len() == before {
            return path;
        }
    }
}

/// What librdkafka's producers send at most unless `message.max.bytes` says otherwise.
const PRODUCER_MAX_BYTES: usize = 1_000_000;

/// Where a report reads from and saves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRoute {
    /// The report's name.
    pub name: String,
    /// The topic it folds.
    pub input: String,
    /// Its compacted changelog topic.
    pub changelog: String,
    /// This host's key on the changelog (its instance id).
    pub key: String,
    /// The event field that keys the state, if it is keyed.
    pub state_key: Option<String>,
}

/// Where a join reads from and writes to.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinRoute {
    /// Its consumer group.
    pub group: String,
    /// Its transactional id (stable per join and host instance).
    pub transactional_id: String,
    /// The join as configured.
    pub config: JoinConfig,
    /// Where given-up and unreadable parts go.
    pub dead_letter: String,
}

/// A topic the pipeline needs, as it is created when missing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopicSpec {
    /// The topic.
    pub name: String,
    /// Its partitions.
    pub partitions: i32,
    /// Compacted (a changelog: the latest record per key is what counts).
    pub compacted: bool,
}

/// The topics the order view reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewTopics {
    /// Order records.
    pub orders: String,
    /// Completed pizzas.
    pub completed: String,
    /// Pizzas a stage dropped.
    pub dropped: String,
    /// Every stage's and join's dead-letter topic, once each.
    pub dead_letters: BTreeSet<String>,
}

/// Everything a pipeline runs, and the topics it needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The stages, each with its configuration and route.
    pub stages: Vec<(StageConfig, StageRoute)>,
    /// The reports, each with its configuration and route.
    pub reports: Vec<(ReportConfig, ReportRoute)>,
    /// The joins.
    pub joins: Vec<JoinRoute>,
    /// What the order view reads.
    pub view: ViewTopics,
    /// Every topic above, to create when missing.
    pub topics: BTreeSet<TopicSpec>,
    /// `[topics] replication_factor`: `None` leaves it to the cluster's size.
    replication: Option<i32>,
}

impl Plan {
    /// What `pipeline` runs.
    pub fn of(pipeline: &Pipeline) -> Self {
        let prefix = &pipeline.group_prefix;
        let instance = &pipeline.instance_id;
        let exactly_once = pipeline.guarantee == Guarantee::ExactlyOnce;
        let producer_max = pipeline
            .kafka_properties()
            .ok()
            .and_then(|props| props.get("message.max.bytes")?.parse().ok())
            .unwrap_or(PRODUCER_MAX_BYTES);
        let stages: Vec<(StageConfig, StageRoute)> = pipeline
            .stages
            .iter()
            .map(|config| {
                let group_id = format!("{prefix}-{}", config.name);
                let route = StageRoute {
                    name: config.name.clone(),
                    transactional_id: exactly_once.then(|| transactional_id(&group_id, instance)),
                    group_id,
                    input: config.input.clone(),
                    outputs: config.outputs.clone(),
                    dead_letter: config.dead_letter_topic(),
                    retries: config.retries,
                    trusts_trail: pipeline
                        .stages
                        .iter()
                        .any(|other| other.outputs.iter().any(|(_, t)| *t == config.input)),
                    max_output_bytes: config
                        .max_output_bytes
                        .map_or(producer_max, |max| max.min(producer_max)),
                    from: config.from,
                    drop_notices: None,
                };
                (config.clone(), route)
            })
            .collect();
        let reports: Vec<(ReportConfig, ReportRoute)> = pipeline
            .reports
            .iter()
            .map(|config| {
                let route = ReportRoute {
                    name: config.name.clone(),
                    input: config.input.clone(),
                    changelog: config.changelog_topic().to_owned(),
                    key: instance.clone(),
                    state_key: config.state_key.clone(),
                };
                (config.clone(), route)
            })
            .collect();
        let joins: Vec<JoinRoute> = pipeline
            .joins
            .iter()
            .map(|config| {
                let group = format!("{prefix}-join-{}", config.name);
                JoinRoute {
                    transactional_id: transactional_id(&group, instance),
                    group,
                    dead_letter: config.dead_letter_topic(),
                    config: config.clone(),
                }
            })
            .collect();
        // Only the dead letters of what pizzas pass through are failed pizzas: a stage on
        // other events (a processor of payments, say) has its own, which are no order's.
        let on_path = order_path(&pipeline.orders.topic, &stages, &joins);
        let mut stages = stages;
        for (_, route) in &mut stages {
            if on_path.contains(&route.input) {
                route.drop_notices = Some(pipeline.orders.dropped_topic.clone());
            }
        }
        let view = ViewTopics {
            orders: pipeline.orders.orders_topic.clone(),
            completed: pipeline.orders.completed_topic.clone(),
            dropped: pipeline.orders.dropped_topic.clone(),
            dead_letters: stages
                .iter()
                .map(|(_, route)| route)
                .filter(|route| on_path.contains(&route.input))
                .map(|route| route.dead_letter.clone())
                .chain(
                    joins
                        .iter()
                        .filter(|join| join.config.inputs.iter().any(|i| on_path.contains(i)))
                        .map(|join| join.dead_letter.clone()),
                )
                .collect(),
        };

        let partitions = pipeline.topics.partitions;
        let plain = |name: &str| TopicSpec {
            name: name.to_owned(),
            partitions,
            compacted: false,
        };
        let mut topics = BTreeSet::new();
        topics.insert(plain(&pipeline.orders.topic));
        topics.insert(plain(&pipeline.orders.completed_topic));
        topics.insert(plain(&pipeline.orders.dropped_topic));
        // One record per order, keyed by its id: compaction keeps every order and nothing else.
        topics.insert(TopicSpec {
            compacted: true,
            ..plain(&pipeline.orders.orders_topic)
        });
        for (_, route) in &stages {
            let outputs = route.outputs.iter().map(|(_, topic)| topic);
            for topic in [&route.input, &route.dead_letter]
                .into_iter()
                .chain(outputs)
            {
                topics.insert(plain(topic));
            }
        }
        for (_, route) in &reports {
            topics.insert(plain(&route.input));
            // One partition: a report's saved states are few and small, and its history is
            // read whole at every start.
            topics.insert(TopicSpec {
                name: route.changelog.clone(),
                partitions: 1,
                compacted: true,
            });
        }
        for join in &joins {
            for topic in join
                .config
                .inputs
                .iter()
                .chain([&join.config.output, &join.dead_letter])
            {
                topics.insert(plain(topic));
            }
            // Partitioned like the inputs: partition p holds what waits in input partition p.
            topics.insert(TopicSpec {
                compacted: true,
                ..plain(join.config.changelog_topic())
            });
        }
        // A topic named twice (a stage's output that is the completed topic) is created once,
        // plain unless something needs it compacted.
        let mut seen = BTreeSet::new();
        let topics = topics
            .into_iter()
            .rev()
            .filter(|spec| seen.insert(spec.name.clone()))
            .collect();
        Self {
            stages,
            reports,
            joins,
            view,
            topics,
            replication: pipeline.topics.replication_factor,
        }
    }

    /// Creates every topic of the plan that does not exist yet; existing ones are left alone.
    /// One admin request per kind of topic (partitions, compaction), not one per topic: this
    /// runs at startup and on every edit.
    pub async fn ensure_topics(&self, kafka: &KafkaSettings) -> anyhow::Result<()> {
        let mut kinds: std::collections::BTreeMap<(i32, bool), Vec<&str>> = Default::default();
        for spec in &self.topics {
            kinds
                .entry((spec.partitions, spec.compacted))
                .or_default()
                .push(&spec.name);
        }
        for ((partitions, compacted), names) in kinds {
            let settings: &[(&str, &str)] = if compacted {
                &[("cleanup.policy", "compact")]
            } else {
                &[]
            };
            kafka
                .ensure_topics(&names, partitions, self.replication, settings)
                .await?;
        }
        Ok(())
    }
}

/// The settings a live edit applies (top-level keys of `pipeline.toml`); every other setting
/// is read at startup only.
pub const LIVE_SETTINGS: &[&str] = &["stage", "report"];

/// What runs after `edited` replaces `current`: the live settings from `edited`, everything
/// else as it runs now (see [`LIVE_SETTINGS`]; a test keeps the two in step).
pub fn applied(current: &Pipeline, edited: &Pipeline) -> Pipeline {
    Pipeline {
        stages: edited.stages.clone(),
        reports: edited.reports.clone(),
        ..current.clone()
    }
}

/// The settings (as dotted keys, e.g. `storage.retention_days`) that differ between
/// `current` and `edited` and that an edit does not apply: they take effect at the next
/// restart.
pub fn restart_only_changes(current: &Pipeline, edited: &Pipeline) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(current), serde_json::to_value(edited)) else {
        return vec!["(settings that cannot be compared)".into()];
    };
    let mut changed = Vec::new();
    differing_keys("", &a, &b, &mut changed);
    changed
        .into_iter()
        .filter(|key| {
            let top = key.split(['.', '[']).next().unwrap_or_default();
            !LIVE_SETTINGS.contains(&top)
        })
        .collect()
}

/// Collects the dotted paths under which `a` and `b` differ, down to the first level where
/// one is not a table.
fn differing_keys(at: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                let missing = Value::Null;
                differing_keys(
                    &path,
                    a.get(key).unwrap_or(&missing),
                    b.get(key).unwrap_or(&missing),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(at.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn chain() -> Pipeline {
        Pipeline::parse(include_str!("../../../pipeline.toml"), Path::new("/p")).expect("valid")
    }

    #[test]
    fn the_plan_names_every_topic_and_dead_letter() {
        let plan = Plan::of(&chain());
        let names: BTreeSet<&str> = plan.topics.iter().map(|t| t.name.as_str()).collect();
        for topic in [
            "pizza",
            "pizza-with-sauce",
            "pizza.dlq",
            "pizza-with-meats.dlq",
            "pizza-orders",
        ] {
            assert!(names.contains(topic), "{topic} in {names:?}");
        }
        assert!(plan.view.dead_letters.contains("pizza-with-cheese.dlq"));
        let orders = plan
            .topics
            .iter()
            .find(|t| t.name == "pizza-orders")
            .expect("orders");
        assert!(orders.compacted);
        let id = plan.stages[0]
            .1
            .transactional_id
            .as_deref()
            .unwrap_or_default();
        assert!(id.starts_with("pizza-host-sauce."), "{id}");
    }

    /// Names and instance ids may both hold '-', so with '-' between them two hosts could
    /// share a transactional id and fence each other; the ids of different (owner, host)
    /// pairs always differ.
    #[test]
    fn no_two_hosts_share_a_transactional_id() {
        let owners = [
            "sauce", "sauce-1", "orders", "orders-a", "join-x", "join-x-1",
        ];
        let hosts = ["x", "1-x", "a-x", "1", "host.example.com", "x-1"];
        let mut seen = std::collections::HashMap::new();
        for owner in owners {
            for host in hosts {
                let id = transactional_id(&format!("pizza-host-{owner}"), host);
                if let Some(other) = seen.insert(id.clone(), (owner, host)) {
                    panic!("{id}: both {other:?} and {:?}", (owner, host));
                }
            }
        }
    }

    #[test]
    fn a_moved_stage_moves_its_dead_letters_in_the_view() {
        let mut edited = chain();
        let mut oregano = edited.stages[2].clone();
        oregano.name = "oregano".into();
        oregano.input = "pizza-with-meats".into();
        oregano.outputs = vec![("main".into(), "pizza-with-oregano".into())];
        edited.stages[3].input = "pizza-with-oregano".into();
        edited.stages.push(oregano);
        let plan = Plan::of(&edited);
        assert!(plan.view.dead_letters.contains("pizza-with-oregano.dlq"));
        assert!(
            plan.topics
                .iter()
                .any(|t| t.name == "pizza-with-oregano.dlq")
        );
    }

    #[test]
    fn the_view_follows_the_dead_letters_of_what_pizzas_pass_through_only() {
        let mut pipeline = chain();
        let mut payments = pipeline.stages[0].clone();
        payments.name = "payments".into();
        payments.input = "payments".into();
        payments.outputs = vec![("main".into(), "payments-accepted".into())];
        pipeline.stages.push(payments);
        let plan = Plan::of(&pipeline);
        assert!(plan.view.dead_letters.contains("pizza.dlq"));
        assert!(plan.view.dead_letters.contains("pizza-with-meats.dlq"));
        assert!(!plan.view.dead_letters.contains("payments.dlq"));
        let notes = |name: &str| {
            let (_, route) = plan
                .stages
                .iter()
                .find(|(c, _)| c.name == name)
                .expect("stage");
            route.drop_notices.clone()
        };
        assert_eq!(notes("meats").as_deref(), Some("pizza-dropped"));
        assert_eq!(notes("payments"), None);
        assert!(plan.topics.iter().any(|t| t.name == "payments.dlq"));
    }

    /// Every setting an edit can change is either applied or reported, and `applied` takes
    /// exactly the [`LIVE_SETTINGS`] from the edit.
    #[test]
    fn applied_and_reported_settings_come_from_one_list() {
        let current = chain();
        let mut edited = chain();
        edited.guarantee = Guarantee::AtLeastOnce;
        edited.instance_id = "other".into();
        edited.compile_cache = Some("/elsewhere".into());
        edited.storage.retention_days = 30;
        edited.stages[0].retries = 9;
        edited.stages[1].dead_letter = Some("bad-cheese".into());
        edited.reports.clear();
        let changes = restart_only_changes(&current, &edited);
        assert_eq!(
            changes,
            [
                "compile_cache",
                "guarantee",
                "instance_id",
                "storage.retention_days"
            ]
        );
        let after = applied(&current, &edited);
        let (after, edited, current) = (
            serde_json::to_value(&after).expect("json"),
            serde_json::to_value(&edited).expect("json"),
            serde_json::to_value(&current).expect("json"),
        );
        for (key, value) in after.as_object().expect("object") {
            let from = if LIVE_SETTINGS.contains(&key.as_str()) {
                &edited
            } else {
                &current
            };
            assert_eq!(value, &from[key], "{key}");
        }
    }
}
