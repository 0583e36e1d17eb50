//! `pipeline.toml`: the types the host is configured with, how they are read, and the checks
//! that make a bad file fail at startup with a message naming the key, instead of at the first
//! event.
//!
//! Every table rejects unknown keys, so a typo is an error. The `[kafka]` table is the one
//! exception by design: it is passed through to librdkafka as is (any client property works,
//! `security.protocol = "SASL_SSL"` included), and its values may reference environment
//! variables as `${NAME}` or `${NAME:-default}` so secrets stay out of the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod defaults;
mod load;

use defaults::*;

/// Why `pipeline.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The file is not valid TOML, or does not fit the schema (the message has line and key).
    #[error("{path}: {cause}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error, with line and column.
        cause: Box<toml::de::Error>,
    },
    /// The file parsed but says something the host cannot do.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// Where compiled components are cached unless `compile_cache` says otherwise: shared by
/// `run`, `check`, `invoke` and `add`, so a component is compiled once per user. A per-user
/// folder (`$XDG_CACHE_HOME/pizza-host`, else `~/.cache/pizza-host`), never a shared one: the
/// cache's entries are loaded as native code.
pub fn default_compile_cache() -> PathBuf {
    per_user_dir("XDG_CACHE_HOME", ".cache")
}

/// Where the hosts of this user keep their stores unless `[storage] dir` says otherwise
/// (`$XDG_DATA_HOME/pizza-host`, else `~/.local/share/pizza-host`).
pub fn default_storage_dir() -> PathBuf {
    per_user_dir("XDG_DATA_HOME", ".local/share")
}

/// `$<xdg>/pizza-host`, else `~/<under_home>/pizza-host`, else a folder of this user's in the
/// temporary folder.
fn per_user_dir(xdg: &str, under_home: &str) -> PathBuf {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from_env(xdg)
        .or_else(|| from_env("HOME").map(|home| home.join(under_home)))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("pizza-host-{}", whoami())))
        .join("pizza-host")
}

/// Something that tells this user apart, for a cache folder when there is no home.
fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "user".into())
}

/// The event a stage or report is smoke-called on unless its `sample` names another: a pizza
/// of the demo as an order makes it, before any stage ran.
pub const DEMO_SAMPLE: &str = r#"{"order_id":"smoke-test","pizza_id":"smoke-test-0","sauce":"","cheese":"","meats":"","veggies":""}"#;

/// The settings a stage gets with only its `config` table written in `pipeline.toml` (what
/// `check`, `invoke` and `add` try a component with).
pub fn default_stage_settings(config: BTreeMap<String, String>) -> crate::runtime::Settings {
    StageConfig {
        name: String::new(),
        component: PathBuf::new(),
        input: String::new(),
        output: String::new(),
        outputs: Vec::new(),
        timeout_ms: default_timeout_ms(),
        memory_mib: default_memory_mib(),
        retries: default_retries(),
        dead_letter: None,
        from: StartFrom::Earliest,
        max_output_bytes: None,
        config,
        reuse_instances: true,
        sample: None,
        keep_fields: None,
        sample_event: Arc::from(DEMO_SAMPLE),
    }
    .settings()
}

/// What the command line (or the environment) sets over the file: it wins at startup and over
/// every later edit.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `run --listen`.
    pub listen: Option<SocketAddr>,
    /// `run --admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `run --seed`.
    pub seed: Option<u64>,
    /// `run --instance-id`.
    pub instance_id: Option<String>,
    /// `run --guarantee`.
    pub guarantee: Option<Guarantee>,
    /// `run --group-prefix`.
    pub group_prefix: Option<String>,
    /// `run --compile-cache` (relative to the working folder).
    pub compile_cache: Option<PathBuf>,
    /// `run --compile-cache-max-mib`.
    pub compile_cache_max_mib: Option<u64>,
    /// `run --storage-dir` (relative to the working folder).
    pub storage_dir: Option<PathBuf>,
}

impl Overrides {
    /// `pipeline` with these settings in place of the file's.
    pub fn apply(&self, mut pipeline: Pipeline) -> Pipeline {
        let absolute = |path: &PathBuf| std::path::absolute(path).unwrap_or_else(|_| path.clone());
        if let Some(listen) = self.listen {
            pipeline.http.listen = listen;
        }
        if let Some(listen) = self.admin_listen {
            pipeline.admin.listen = listen;
        }
        if self.seed.is_some() {
            pipeline.seed = self.seed;
        }
        if let Some(instance_id) = &self.instance_id {
            pipeline.instance_id = instance_id.clone();
        }
        if let Some(guarantee) = self.guarantee {
            pipeline.guarantee = guarantee;
        }
        if let Some(prefix) = &self.group_prefix {
            pipeline.group_prefix = prefix.clone();
        }
        if let Some(cache) = &self.compile_cache {
            pipeline.compile_cache = Some(absolute(cache));
        }
        if let Some(max) = self.compile_cache_max_mib {
            pipeline.compile_cache_max_mib = max;
        }
        if let Some(dir) = &self.storage_dir {
            pipeline.storage.dir = Some(absolute(dir));
        }
        pipeline
    }
}

/// The whole pipeline: Kafka client settings, HTTP, topics and the stages.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Prefix of every consumer group id the host creates (`<prefix>-<stage>`), so several
    /// pipelines can share a cluster without sharing offsets.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// Delivery guarantee of every stage and of `POST /order`.
    #[serde(default)]
    pub guarantee: Guarantee,
    /// This host's name among the hosts running the same pipeline; part of every
    /// transactional id, so it must be stable across restarts and unique among live hosts
    /// (default: the `HOSTNAME` environment variable, else `pizza-host`).
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
    /// Folder where compiled components are cached, so a restart does not recompile them
    /// (relative to this file; default: `~/.cache/pizza-host`, see [`default_compile_cache`]).
    /// It must belong to this user and be writable by no one else: entries are native code.
    #[serde(default)]
    pub compile_cache: Option<PathBuf>,
    /// The most the compile cache keeps on disk, in MiB (default 1024): beyond it, the
    /// compiled components used longest ago are deleted (the newest is always kept).
    #[serde(default = "default_compile_cache_max_mib")]
    pub compile_cache_max_mib: u64,
    /// Makes every stage's randomness and every new order id reproducible: the same seed and
    /// the same orders give the same pizzas. For tests and demos only (two runs with one seed
    /// hand out the same order ids); without it randomness is secure. `run --seed` sets it too.
    #[serde(default)]
    pub seed: Option<u64>,
    /// librdkafka client properties, passed through to every consumer, producer and admin
    /// client (`bootstrap.servers`, `security.protocol`, `sasl.username`, …).
    #[serde(default)]
    pub kafka: BTreeMap<String, toml::Value>,
    /// The HTTP API.
    #[serde(default)]
    pub http: HttpConfig,
    /// The admin API (stage table, deploys); off unless a token is configured.
    #[serde(default)]
    pub admin: AdminConfig,
    /// How missing topics are created.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Where orders enter the pipeline and where completed pizzas come out.
    #[serde(default)]
    pub orders: OrdersConfig,
    /// The host's local, durable state.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The stages, in pipeline order (`[[stage]]` tables).
    #[serde(default, rename = "stage")]
    pub stages: Vec<StageConfig>,
    /// The reports (`[[report]]` tables).
    #[serde(default, rename = "report")]
    pub reports: Vec<ReportConfig>,
    /// The joins (`[[join]]` tables); read at startup.
    #[serde(default, rename = "join")]
    pub joins: Vec<JoinConfig>,
}

/// Where a new consumer group starts reading a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum StartFrom {
    /// Everything the topic holds.
    #[default]
    Earliest,
    /// Only what arrives from now on.
    Latest,
    /// The first record written at or after this time.
    Time(std::time::SystemTime),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            time => humantime::parse_rfc3339_weak(time)
                .map(Self::Time)
                .map_err(|err| {
                    format!(
                        "from must be \"earliest\", \"latest\" or a time like \"2026-12-01T00:00:00Z\", got {time:?} ({err})"
                    )
                }),
        }
    }
}

impl TryFrom<String> for StartFrom {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<StartFrom> for String {
    fn from(from: StartFrom) -> String {
        match from {
            StartFrom::Earliest => "earliest".into(),
            StartFrom::Latest => "latest".into(),
            StartFrom::Time(time) => humantime::format_rfc3339_millis(time).to_string(),
        }
    }
}

/// How often each event is processed and published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// Kafka transactions: each stage's results and input offsets are committed together,
    /// and an order's record and pizzas are published all or none.
    #[default]
    ExactlyOnce,
    /// Offsets are committed after the results are acknowledged: nothing is lost, but a
    /// crash can make a stage process a record again (the order view counts it once).
    AtLeastOnce,
}

/// The HTTP API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest `count` accepted by `POST /order/{count}`.
    #[serde(default = "default_max_order_count")]
    pub max_order_count: u32,
}

/// The admin API: listing stages and deploying components without a file system.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on. Keep it on localhost unless something in front guards it.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// A file holding the token callers must send (`Authorization: Bearer <token>`), relative
    /// to this file. The environment variable `PIZZA_HOST_ADMIN_TOKEN` works too; with
    /// neither, the admin API is off.
    pub token_file: Option<PathBuf>,
}

/// The environment variable that may hold the admin token.
pub const ADMIN_TOKEN_ENV: &str = "PIZZA_HOST_ADMIN_TOKEN";

impl AdminConfig {
    /// The admin token, if one is configured: the token file first, then the environment.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        use anyhow::Context as _;
        let token = match &self.token_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read admin.token_file {}", file.display()))?,
            ),
            None => std::env::var(ADMIN_TOKEN_ENV).ok(),
        };
        let token = token.map(|t| t.trim().to_owned());
        if let Some(t) = &token
            && t.len() < 16
        {
            anyhow::bail!("the admin token must be at least 16 characters");
        }
        Ok(token)
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_file: None,
        }
    }
}

/// How the host creates the topics it needs when they are missing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Partitions of each topic the host creates. Existing topics are left as they are.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of each topic the host creates; unset, as many brokers as the
    /// cluster has, up to 3. At 3 or more the host also sets `min.insync.replicas` = 2 on
    /// them, so an acknowledged record is on two brokers.
    #[serde(default)]
    pub replication_factor: Option<i32>,
}

/// Where orders enter the pipeline and where completed pizzas come out.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrdersConfig {
    /// Topic that `POST /order` publishes new pizzas to (the original demo's `pizza`).
    #[serde(default = "default_order_topic")]
    pub topic: String,
    /// Topic of completed pizzas, read to build the order view (`pizza-with-veggies`).
    #[serde(default = "default_completed_topic")]
    pub completed_topic: String,
    /// Topic of order records (id and count), from which every host rebuilds its order view.
    #[serde(default = "default_orders_topic")]
    pub orders_topic: String,
    /// Topic where a stage on the pizzas' way notes each pizza it dropped (a filter returned
    /// no record for it), so the order view counts it as dropped, not as missing.
    #[serde(default = "default_dropped_topic")]
    pub dropped_topic: String,
}

/// The host's local, durable state: the order view's store.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Folder of the stores (relative to this file; default: `~/.local/share/pizza-host`, see
    /// [`default_storage_dir`]). A host keeps its order view in
    /// `<dir>/<group_prefix>/<instance_id>/orders.redb`; deleting it makes the host rebuild it
    /// from Kafka.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Orders first seen longer ago than this are dropped from the order view (`GET` then
    /// answers 404; Kafka may still hold them). 0 keeps them as long as the store lives.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
}

/// One stage: a component between an input and an output topic.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Unique name, used in logs, metrics and the consumer group id.
    pub name: String,
    /// The component file (`.wasm`), relative to `pipeline.toml`'s folder.
    pub component: PathBuf,
    /// Topic the stage consumes.
    pub input: String,
    /// Topic the stage produces its results to, with the input record's key: the stage's one
    /// output, named `main`. (After parsing, always the topic of the first output.)
    #[serde(default)]
    pub output: String,
    /// The stage's named outputs instead of one `output`, in order (the first is where a
    /// record goes unless the stage names another): `outputs = { main = "…", rejected = "…" }`.
    /// A `pizza:stage/processor@0.2.0` stage may send each record to any of them. (After
    /// parsing, always every output, `main` alone for a stage that set `output`.)
    #[serde(default, deserialize_with = "named_outputs")]
    pub outputs: Vec<(String, String)>,
    /// Wall-time limit of one call, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Memory limit of one instance, in MiB: all its linear memories together.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: usize,
    /// How many times a call is retried (with backoff) when the stage says its error may pass.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Where records the stage cannot process go (default `<input>.dlq`).
    pub dead_letter: Option<String>,
    /// Where a new stage starts reading its input: `"earliest"` (the default: everything the
    /// topic holds), `"latest"` (only what arrives from now on) or a time (RFC 3339, e.g.
    /// `"2026-12-01T00:00:00Z"`: the first record written at or after it). It applies only
    /// while the stage's consumer group has no committed position; after that the stage goes
    /// on from where it stopped.
    #[serde(default)]
    pub from: StartFrom,
    /// The largest output record (value, key and headers) the stage may send; a larger result
    /// goes to the dead-letter topic as `too-large` (default, and upper bound: what the
    /// producer may send, `[kafka] message.max.bytes`, 1,000,000 unless set).
    pub max_output_bytes: Option<usize>,
    /// Settings the component reads through the `pizza:stage/config` import; an edit is
    /// applied live, like a swap.
    #[serde(default, deserialize_with = "component_config")]
    pub config: BTreeMap<String, String>,
    /// Whether an instance serves several events (the default: a call then costs a few
    /// microseconds instead of tens) or each event gets a fresh one (`false`: nothing a call
    /// leaves in memory can reach the next event). Either way an instance that traps, runs
    /// out of time or memory is dropped.
    #[serde(default = "default_true")]
    pub reuse_instances: bool,
    /// A file holding the JSON event a new component is smoke-called on before it runs or
    /// replaces the running one (relative to this file; default: a demo pizza).
    pub sample: Option<PathBuf>,
    /// Top-level fields of the input that the output must keep with the same value (an
    /// output that drops or changes one goes to the dead-letter topic as `invalid-output`).
    /// Unset, a topping (contract 0.1.0, whose outputs are pizzas) keeps `order_id`, by which
    /// pizzas are keyed and counted, and a processor (0.2.0) keeps nothing; set, it holds for
    /// both (a processor's records where the input holds the field).
    #[serde(default)]
    pub keep_fields: Option<Vec<String>>,
    /// The sample event's text, read from `sample` when the file is parsed.
    #[serde(skip)]
    pub sample_event: Arc<str>,
}

/// One report: a component that folds every event of a topic into a state, served as JSON at
/// `GET /report/{name}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Unique name among the reports: the `{name}` of `GET /report/{name}`.
    pub name: String,
    /// The component file (`.wasm`, world `pizza:stage/report`), relative to this file.
    pub component: PathBuf,
    /// Topic the report reads, from its beginning.
    pub input: String,
    /// Wall-time limit of one call, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Memory limit of one instance, in MiB: all its linear memories together.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: usize,
    /// Compacted topic where the state is saved together with the position in `input`
    /// (default `<group_prefix>-report-<name>`).
    pub changelog: Option<String>,
    /// The event field whose value keys the state (e.g. `cheese`): the component folds each
    /// event into the state of its key only, so an event costs the same however many keys
    /// there are, and each key's state is saved as a record of its own. `render` gets the
    /// states of all keys merged into one object. Unset, one state holds everything. Changing
    /// it starts the report over from the beginning of its input.
    pub state_key: Option<String>,
    /// Settings the component reads through the `pizza:stage/config` import.
    #[serde(default, deserialize_with = "component_config")]
    pub config: BTreeMap<String, String>,
    /// A file holding the JSON event a new component's `update` is smoke-called on (relative
    /// to this file; default: a demo pizza).
    pub sample: Option<PathBuf>,
    /// The sample event's text, read from `sample` when the file is parsed.
    #[serde(skip)]
    pub sample_event: Arc<str>,
}

/// A join (fan-in): assembles the parts of one pizza, each made by a stage on its own topic,
/// into one record on the output topic, exactly once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// Unique name among the joins; names its consumer group and transactional id.
    pub name: String,
    /// The topics whose records are the parts (at least two). They must be partitioned alike:
    /// the same partition count, the order id as the record key.
    pub inputs: Vec<String>,
    /// Where an assembled record goes, with the parts' record key.
    pub output: String,
    /// The field that names the whole a part belongs to.
    #[serde(default = "default_join_key")]
    pub key: String,
    /// A whole whose parts have not all arrived this long after the first one is given up
    /// on: what arrived goes to the dead-letter topic.
    #[serde(default = "default_expire_after_ms")]
    pub expire_after_ms: u64,
    /// Where given-up and unreadable parts go (default `<output>.dlq`).
    pub dead_letter: Option<String>,
    /// Compacted topic holding the parts that wait for their siblings, partitioned like the
    /// inputs (default `<group_prefix>-join-<name>`).
    pub changelog: Option<String>,
}

impl JoinConfig {
    /// The compacted topic of the waiting parts (`Pipeline::parse` fills in the default).
    pub fn changelog_topic(&self) -> &str {
        self.changelog.as_deref().unwrap_or_default()
    }

    /// The topic for parts the join gives up on.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.output))
    }
}

fn default_join_key() -> String {
    "pizza_id".into()
}
fn default_expire_after_ms() -> u64 {
    60_000
}

impl ReportConfig {
    /// The compacted topic of the saved state (`Pipeline::parse` fills in the default).
    pub fn changelog_topic(&self) -> &str {
        self.changelog.as_deref().unwrap_or_default()
    }

    /// What every call of this report gets: its limits and its `config` table.
    pub fn settings(&self) -> crate::runtime::Settings {
        crate::runtime::Settings {
            sample: self.sample_event.clone(),
            ..crate::runtime::Settings::new(self.timeout_ms, self.memory_mib, &self.config)
        }
    }
}

impl StageConfig {
    /// The topic for records this stage cannot process.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.input))
    }

    /// What every call of this stage gets: its limits, its `config` table, and whether
    /// instances are reused.
    pub fn settings(&self) -> crate::runtime::Settings {
        crate::runtime::Settings {
            reuse_instances: self.reuse_instances,
            sample: self.sample_event.clone(),
            output_rule: crate::runtime::OutputRule {
                keep_fields: self
                    .keep_fields
                    .clone()
                    .unwrap_or_else(default_keep_fields)
                    .into(),
                binds_processors: self.keep_fields.is_some(),
                outputs: self.outputs.iter().map(|(name, _)| name.clone()).collect(),
            },
            ..crate::runtime::Settings::new(self.timeout_ms, self.memory_mib, &self.config)
        }
    }
}

/// A stage's `outputs` table, in the order written (`toml`'s `preserve_order` keeps it).
fn named_outputs<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(String, String)>, D::Error> {
    let table = toml::Table::deserialize(deserializer)?;
    table
        .into_iter()
        .map(|(name, topic)| match topic {
            toml::Value::String(topic) => Ok((name, topic)),
            other => Err(serde::de::Error::custom(format!(
                "output {name:?}: expected a topic name (a string), got {}",
                other.type_str()
            ))),
        })
        .collect()
}

/// A component's `config` table: strings, or numbers and booleans taken as their text. A
/// nested table or an array is refused with the key named, rather than flattened in some
/// way the component would have to guess.
fn component_config<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let table = BTreeMap::<String, toml::Value>::deserialize(deserializer)?;
    table
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    value.to_string()
                }
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "config value `{key}` is {}: values are strings, numbers or booleans \
                         (write a list as one string, e.g. \"a,b,c\")",
                        other.type_str()
                    )));
                }
            };
            Ok((key, text))
        })
        .collect()
}

#[cfg(test)]
mod tests;
