//! What the black-box tests share: the real stage components (built once per test binary, so
//! a test never runs a stale `.wasm`), a pipeline on unique topics, a running host, a few
//! direct Kafka helpers, and waiting on a condition with a deadline.

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pizza_host::RunningHost;
use pizza_host::config::Pipeline;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

mod customers;
mod process;
#[allow(unused_imports)] // not every test binary uses them
pub use customers::*;
#[allow(unused_imports)] // not every test binary runs processes
pub use process::*;

/// The stages of the demo, in pipeline order.
pub const STAGES: [&str; 4] = ["sauce", "cheese", "meats", "veggies"];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Builds the stage components (a no-op when they are fresh) and returns their folder.
pub fn components() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = workspace_root();
        let status = std::process::Command::new(root.join("dev/build-stages.sh"))
            .arg("--quiet")
            .status()
            .expect("run dev/build-stages.sh");
        assert!(status.success(), "building the stage components failed");
        root.join("target/wasm32-wasip1/release")
    })
}

pub fn component(stage: &str) -> PathBuf {
    components().join(format!("pizza_stage_{stage}.wasm"))
}

/// The topics of one test's pipeline, unique to it so tests never see each other's records.
#[derive(Debug, Clone)]
pub struct Topics {
    pub suffix: String,
    /// `pizza`, `pizza-with-sauce`, …, `pizza-with-veggies`, suffixed.
    pub chain: Vec<String>,
}

impl Topics {
    pub fn unique(test: &str) -> Self {
        let suffix = format!("{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut chain = vec![format!("pizza-{suffix}")];
        for stage in STAGES {
            chain.push(format!("pizza-with-{stage}-{suffix}"));
        }
        Self { suffix, chain }
    }
    pub fn orders(&self) -> &str {
        &self.chain[0]
    }
    pub fn completed(&self) -> &str {
        &self.chain[4]
    }
    /// Where the host publishes order records (id and count), as `pipeline_toml` sets it.
    pub fn order_records(&self) -> String {
        format!("pizza-orders-{}", self.suffix)
    }
}

/// The folder of the tests' order stores: one store per group prefix and instance id, as the
/// host lays them out, so hosts of different tests never share one.
pub fn test_stores() -> PathBuf {
    std::env::temp_dir().join("pizza-host-test-stores")
}

/// The demo pipeline on `topics`, listening on a free port, its order store under
/// [`test_stores`].
pub fn pipeline_toml(topics: &Topics) -> String {
    let mut toml = format!(
        r#"
group_prefix = "test-{suffix}"
[kafka]
"bootstrap.servers" = "{bootstrap}"
[http]
listen = "127.0.0.1:0"
[orders]
topic = "{orders}"
completed_topic = "{completed}"
orders_topic = "{order_records}"
dropped_topic = "pizza-dropped-{suffix}"
[storage]
dir = "{stores}"
"#,
        stores = test_stores().display(),
        suffix = topics.suffix,
        bootstrap = bootstrap(),
        orders = topics.orders(),
        completed = topics.completed(),
        order_records = topics.order_records(),
    );
    for (i, stage) in STAGES.iter().enumerate() {
        toml.push_str(&format!(
            "[[stage]]\nname = \"{stage}\"\ncomponent = \"{}\"\ninput = \"{}\"\noutput = \"{}\"\n",
            component(stage).display(),
            topics.chain[i],
            topics.chain[i + 1],
        ));
    }
    toml
}

/// The demo pipeline with the sauce stage replaced by the hostile test component, named
/// `chaos` (it passes an event through unless its `act` field says how to misbehave), with
/// a call time limit of `timeout_ms` and 16 MiB of memory.
pub fn hostile_pipeline(topics: &Topics, timeout_ms: u64) -> String {
    pipeline_toml(topics).replacen(
        &format!(
            "name = \"sauce\"\ncomponent = \"{}\"",
            component("sauce").display()
        ),
        &format!(
            "name = \"chaos\"\ncomponent = \"{}\"\ntimeout_ms = {timeout_ms}\nmemory_mib = 16",
            test_component("hostile").display()
        ),
        1,
    )
}

/// The demo pipeline on `topics` and the cluster at `bootstrap`, for hosts run as processes,
/// in a fresh folder: orders of up to 1,000, and the broker's shortest consumer session, so
/// that the group members of a killed host (or of consumers cut off by an outage) time out
/// soon and their partitions move on.
pub fn process_pipeline(test: &str, topics: &Topics, bootstrap: &str) -> PathBuf {
    let pipeline = temp_dir(test).join("pipeline.toml");
    let toml = pipeline_toml(topics)
        .replace(&self::bootstrap(), bootstrap)
        .replace("[http]\n", "[http]\nmax_order_count = 1000\n")
        .replace("[kafka]\n", "[kafka]\n\"session.timeout.ms\" = 6000\n");
    std::fs::write(&pipeline, toml).unwrap();
    pipeline
}

/// Switches the pipeline file at `path` to `guarantee = "at-least-once"`.
pub fn switch_to_at_least_once(path: &Path) {
    let toml = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("guarantee = \"at-least-once\"\n{toml}")).unwrap();
}

/// `toml` with the cheese report (`GET /report/cheese`) on the cheese stage's output added.
pub fn with_cheese_report(toml: &str, topics: &Topics) -> String {
    format!(
        "{toml}\n[[report]]\nname = \"cheese\"\ncomponent = \"{}\"\ninput = \"{}\"\n",
        components().join("pizza_report_cheese.wasm").display(),
        topics.chain[2],
    )
}

/// A host running in this process, stopped when dropped.
pub struct TestHost {
    pub url: String,
    pub shutdown: CancellationToken,
    host: Option<RunningHost>,
}

impl TestHost {
    pub async fn start(topics: &Topics) -> Self {
        Self::start_toml(&pipeline_toml(topics)).await
    }

    /// Starts the host on the pipeline `toml` (not watched).
    pub async fn start_toml(toml: &str) -> Self {
        let pipeline = Pipeline::parse(toml, Path::new("/")).expect("pipeline");
        Self::start_pipeline(pipeline, None).await
    }

    /// Starts the host on the pipeline file at `path`, watching it and its components.
    pub async fn start_watching(path: &Path) -> Self {
        let pipeline = Pipeline::load(path).expect("pipeline");
        Self::start_pipeline(pipeline, Some(path.to_owned())).await
    }

    async fn start_pipeline(mut pipeline: Pipeline, watch: Option<PathBuf>) -> Self {
        // Hosts of one test must not share transactional ids, unless the test says so.
        if pipeline.instance_id
            == Pipeline::parse("", Path::new("/"))
                .expect("defaults")
                .instance_id
        {
            pipeline.instance_id = uuid::Uuid::new_v4().simple().to_string();
        }
        // The host's logs, shown for failing tests (RUST_LOG picks the level; default warn).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let shutdown = CancellationToken::new();
        let watch = watch.map(|path| (path, Default::default()));
        let host = pizza_host::start(pipeline, watch, shutdown.clone())
            .await
            .expect("host starts");
        Self {
            url: format!("http://{}", host.http_addr),
            shutdown,
            host: Some(host),
        }
    }

    pub fn running(&self) -> &RunningHost {
        self.host.as_ref().unwrap()
    }

    /// The admin API's base URL; panics if it is off.
    pub fn admin_url(&self) -> String {
        format!(
            "http://{}",
            self.running().admin_addr.expect("admin API on")
        )
    }

    /// The stage table, as the admin API would show it.
    pub async fn stage(&self, name: &str) -> Option<pizza_host::pipeline::stages::StageInfo> {
        self.running()
            .stages
            .list()
            .await
            .into_iter()
            .find(|s| s.name == name)
    }

    /// Graceful shutdown; fails the test if it takes longer than `limit`.
    pub async fn stop(mut self, limit: Duration) {
        self.shutdown.cancel();
        let host = self.host.take().unwrap();
        tokio::time::timeout(limit, host.wait())
            .await
            .expect("host stops in time");
    }

    pub async fn order(&self, count: u32) -> String {
        place_order(&self.url, count).await
    }

    pub async fn get_order(&self, id: &str) -> (u16, serde_json::Value) {
        let response = reqwest::get(format!("{}/order/{id}", self.url))
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Waits until the order holds `count` pizzas and returns it.
    pub async fn wait_complete(
        &self,
        id: &str,
        count: usize,
        limit: Duration,
    ) -> serde_json::Value {
        wait_for(
            limit,
            &format!("order {id} to hold {count} pizzas"),
            || async {
                let (status, order) = self.get_order(id).await;
                (status == 200 && order["pizzas"].as_array().map(Vec::len) == Some(count))
                    .then_some(order)
            },
        )
        .await
    }
}

impl Drop for TestHost {
    /// Stops the host and waits for it, so its stages leave their groups: a test's runtime
    /// that ends with the host's tasks still running drops their consumers, and librdkafka's
    /// close of a consumer still joining its group waits forever for a callback nobody serves.
    fn drop(&mut self) {
        self.shutdown.cancel();
        let Some(host) = self.host.take() else {
            return;
        };
        let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
            runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if multi_thread {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(tokio::time::timeout(Duration::from_secs(60), host.wait()))
            })
            .ok();
        }
    }
}

/// Orders `count` pizzas from the host at `url`; returns the order id.
pub async fn place_order(url: &str, count: u32) -> String {
    let response = reqwest::Client::new()
        .post(format!("{url}/order/{count}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["order_id"].as_str().expect("order_id").to_owned()
}

/// `GET /metrics` as series (`name{labels}`) → value.
pub async fn scrape(url: &str) -> HashMap<String, f64> {
    let response = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The sum of every series of `name` whose labels contain `label`.
pub fn sum(metrics: &HashMap<String, f64>, name: &str, label: &str) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| series.starts_with(&format!("{name}{{")) && series.contains(label))
        .map(|(_, value)| value)
        .sum()
}

/// How many records `stage` has taken from its input, as the host's metrics count them.
pub async fn stage_records_in(url: &str, stage: &str) -> f64 {
    sum(
        &scrape(url).await,
        "pizza_host_stage_records_in_total",
        &format!("stage=\"{stage}\""),
    )
}

/// Polls `check` until it yields a value; panics naming `what` after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

pub fn producer() -> FutureProducer {
    client_config(&bootstrap()).create().unwrap()
}

pub async fn produce(topic: &str, key: Option<&str>, value: &[u8]) {
    let producer = producer();
    let mut record = FutureRecord::to(topic).payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// How many records `topic` holds, as a `read_committed` reader sees them: read to the end,
/// because offsets also count transaction markers and aborted records.
pub fn record_count(topic: &str) -> i64 {
    record_count_at(&bootstrap(), topic)
}

/// [`record_count`] on the cluster at `bootstrap`.
pub fn record_count_at(bootstrap: &str, topic: &str) -> i64 {
    let group = format!("test-counter-{}", uuid::Uuid::new_v4());
    count_records(bootstrap, topic, &group, false)
}

/// The offsets `topic` spans, summed over its partitions: its records, the transaction markers
/// between them and any aborted records.
pub fn offsets_spanned(topic: &str) -> i64 {
    watermarks_at(&bootstrap(), topic)
        .iter()
        .map(|(low, high)| high - low)
        .sum()
}

/// The (low, high) watermarks of each partition of `topic` on the cluster at `bootstrap`, in
/// partition order.
pub fn watermarks_at(bootstrap: &str, topic: &str) -> Vec<(i64, i64)> {
    let (consumer, partitions) = partitions_at(bootstrap, topic);
    partitions
        .iter()
        .map(|&(partition, _)| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap()
        })
        .collect()
}

/// A client of the cluster at `bootstrap`, and each partition of `topic` with its leader's
/// node id, in partition order.
pub fn partitions_at(bootstrap: &str, topic: &str) -> (BaseConsumer, Vec<(i32, i32)>) {
    let consumer: BaseConsumer = client_config(bootstrap).create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut partitions: Vec<(i32, i32)> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| (p.id(), p.leader()))
        .collect();
    partitions.sort_unstable();
    (consumer, partitions)
}

/// How many records of `topic` lie beyond what `group` committed: what a restart would redo.
pub fn records_after_commit(group: &str, topic: &str) -> i64 {
    count_records(&bootstrap(), topic, group, true)
}

/// How many records the demo's stages on `topics` would redo if they started now: each
/// stage's input beyond what its group committed, summed. Above zero right after a kill, the
/// kill found work in flight.
pub fn stage_records_after_commit(topics: &Topics) -> i64 {
    STAGES
        .iter()
        .enumerate()
        .map(|(i, stage)| {
            records_after_commit(&format!("test-{}-{stage}", topics.suffix), &topics.chain[i])
        })
        .sum()
}

/// Two group-less clients of the cluster at `bootstrap`: one that sees records as written
/// (`read_uncommitted`: its end is the high watermark) and one as `read_committed` readers
/// do (its end is the last stable offset).
fn readers(bootstrap: &str) -> (BaseConsumer, BaseConsumer) {
    let reader = |isolation: &str| -> BaseConsumer {
        client_config(bootstrap)
            .set("isolation.level", isolation)
            .create()
            .unwrap()
    };
    (reader("read_uncommitted"), reader("read_committed"))
}

/// Where each demo stage on `topics` stands, for the message of a test whose orders stopped
/// completing: per input partition, its end offset, the end a `read_committed` reader sees
/// (short of it while a transaction is open there), and what the stage's group committed,
/// both as a plain reader sees it and as a `read_committed` member does (who waits while a
/// transaction holds offsets for the group: "unstable").
pub fn pipeline_state(bootstrap: &str, topics: &Topics) -> String {
    let (uncommitted, committed) = readers(bootstrap);
    let mut state = String::new();
    for (stage, topic) in STAGES.iter().zip(&topics.chain) {
        let group = format!("test-{}-{stage}", topics.suffix);
        let (_, partitions) = partitions_at(bootstrap, topic);
        let mut list = TopicPartitionList::new();
        for &(partition, _) in &partitions {
            list.add_partition(topic, partition);
        }
        let offsets_of = |isolation: &str| {
            client_config(bootstrap)
                .set("group.id", &group)
                .set("isolation.level", isolation)
                .create::<BaseConsumer>()
                .unwrap()
                .committed_offsets(list.clone(), Duration::from_secs(5))
                .map(|offsets| {
                    offsets
                        .elements()
                        .iter()
                        .map(|e| format!("{}:{:?}", e.partition(), e.offset()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|err| format!("({err})"))
        };
        let ends = |consumer| end_offsets(consumer, topic, &partitions);
        state += &format!(
            "{stage} reads {topic}\n  ends (partition@leader:end): {}\n  \
             read_committed ends: {}\n  group committed: {}\n  \
             as a read_committed member: {}\n",
            ends(&uncommitted),
            ends(&committed),
            offsets_of("read_uncommitted"),
            offsets_of("read_committed"),
        );
    }
    let completed = topics.completed();
    let (_, partitions) = partitions_at(bootstrap, completed);
    state += &format!(
        "the order view reads {completed}\n  ends: {}\n  read_committed ends: {}\n",
        end_offsets(&uncommitted, completed, &partitions),
        end_offsets(&committed, completed, &partitions),
    );
    state
}

/// `partition@leader:end` of each of `partitions` (as [`partitions_at`] lists them), as
/// `consumer` sees the ends.
fn end_offsets(consumer: &BaseConsumer, topic: &str, partitions: &[(i32, i32)]) -> String {
    partitions
        .iter()
        .map(|&(partition, leader)| {
            match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
                Ok((_, high)) => format!("{partition}@{leader}:{high}"),
                Err(err) => format!("{partition}@{leader}:({err})"),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until no transaction is open on `topic` at `bootstrap`: each partition's last stable
/// offset (the end a `read_committed` reader sees) has reached its high watermark. Only then
/// is what such a reader sees final: a committed record behind a still-open transaction is
/// not read until that transaction ends, so a count taken earlier is short. A transaction a
/// fault cut off stays open until the broker's transaction timeout; past `limit` this fails,
/// naming each partition still held open (a hanging transaction blocks every reader).
pub fn wait_transactions_closed(bootstrap: &str, topic: &str, limit: Duration) {
    let (uncommitted, committed) = readers(bootstrap);
    let (_, partitions) = partitions_at(bootstrap, topic);
    let began = Instant::now();
    let deadline = began + limit;
    let mut first_open = None;
    loop {
        let open: Vec<String> = partitions
            .iter()
            .filter_map(|&(partition, leader)| {
                let end = |consumer: &BaseConsumer| {
                    consumer
                        .fetch_watermarks(topic, partition, Duration::from_secs(10))
                        .map(|(_, high)| high)
                };
                match (end(&committed), end(&uncommitted)) {
                    (Ok(stable), Ok(high)) if stable >= high => None,
                    (stable, high) => Some(format!(
                        "partition {partition} (leader {leader}): stable to {stable:?}, \
                         written to {high:?}"
                    )),
                }
            })
            .collect();
        if open.is_empty() {
            if let Some(open) = first_open {
                // Shown with a failure's output: tells a slow marker from none.
                println!(
                    "{topic}: waited {:?} for a transaction to close ({open})",
                    began.elapsed()
                );
            }
            return;
        }
        first_open.get_or_insert_with(|| open.join("; "));
        assert!(
            Instant::now() < deadline,
            "a transaction stays open on {topic} past {limit:?}: {}",
            open.join("; ")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count_records(bootstrap: &str, topic: &str, group: &str, from_committed: bool) -> i64 {
    let mut count = 0;
    read_to_end(
        bootstrap,
        topic,
        "read_committed",
        group,
        from_committed,
        |_| count += 1,
    );
    count
}

/// Reads `topic` at `bootstrap` as member of `group` with `isolation`, from its beginning
/// (or with `from_committed` from where the group committed) to the end such a reader is
/// told at the start, handing each record to `each`; fails if that takes over a minute.
fn read_to_end(
    bootstrap: &str,
    topic: &str,
    isolation: &str,
    group: &str,
    from_committed: bool,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut ends = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
            .unwrap();
        if high > low {
            ends.push((partition.id(), high));
        }
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    if from_committed {
        // What the group committed, even while a transaction holds offsets for it: a
        // `read_committed` client would ask for stable offsets only, and wait until a killed
        // host's open transaction is fenced or times out.
        let committed = client_config(bootstrap)
            .set("group.id", group)
            .set("isolation.level", "read_uncommitted")
            .create::<BaseConsumer>()
            .unwrap()
            .committed_offsets(assignment.clone(), Duration::from_secs(10))
            .unwrap();
        for element in committed.elements() {
            if let Offset::Offset(at) = element.offset() {
                assignment
                    .set_partition_offset(topic, element.partition(), Offset::Offset(at))
                    .unwrap();
                // Already at the end: there is nothing to read, so no position to wait for.
                ends.retain(|&(p, end)| p != element.partition() || at < end);
            }
        }
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            each(&message.unwrap());
        }
        let positions = consumer.position().unwrap();
        let done = ends.iter().all(|&(p, end)| {
            matches!(positions.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(at)) if at >= end)
        });
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to its end"
        );
    }
}

/// Every file under `dir`, at any depth.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A fresh folder for one test's files.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pizza-host-{test}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces `path` atomically (write beside it, then rename), as an editor or `cp` would.
pub fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A test component's file (built with the stages, from host/tests/components).
pub fn test_component(name: &str) -> PathBuf {
    components().join(format!("pizza_test_{}.wasm", name.replace('-', "_")))
}

/// A record read back from a topic.
#[derive(Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, as the broker stamped it.
    pub timestamp: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning until it has yielded `n` records or `limit` passes.
pub fn read_records(topic: &str, n: usize, limit: Duration) -> Vec<Record> {
    read_records_at(&bootstrap(), topic, n, limit)
}

/// [`read_records`] from the cluster at `bootstrap`.
pub fn read_records_at(bootstrap: &str, topic: &str, n: usize, limit: Duration) -> Vec<Record> {
    use rdkafka::message::Headers;
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + limit;
    let mut records = Vec::new();
    while records.len() < n && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp().to_millis().unwrap_or_default(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                value: message.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    records
}

/// Where records keyed `key` were written in `topic` at `bootstrap` (partition, offset),
/// committed, aborted or still open: what a failure needs to tell a record never written
/// from one whose transaction did not commit.
fn written_at(bootstrap: &str, topic: &str, key: &str) -> Vec<(i32, i64)> {
    let group = format!("test-finder-{}", uuid::Uuid::new_v4());
    let mut found = Vec::new();
    read_to_end(
        bootstrap,
        topic,
        "read_uncommitted",
        &group,
        false,
        |message| {
            if message.key() == Some(key.as_bytes()) {
                found.push((message.partition(), message.offset()));
            }
        },
    );
    found
}

/// A TCP port nothing listens on right now, for a broker or host a test starts.
///
/// Picked below the kernel's ephemeral range (32768 and up on Linux), not by binding port 0:
/// a port from that range can be taken by any outgoing connection (a broker's, a client's)
/// between the pick and the bind of the process meant for it, and a three-broker cluster
/// makes hundreds of them. Each test process walks its own stretch of ports (from a start
/// its pid picks) and never hands one out twice.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (FIRST + (start + step) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port from {FIRST} to {}", FIRST + SPAN);
}

/// Every topic of the chain on the cluster at `bootstrap`, as `read_committed` readers see it,
/// holds each of the `total` pizzas exactly once, and no dead-letter topic holds anything.
pub fn assert_every_pizza_exactly_once(bootstrap: &str, topics: &Topics, total: usize) {
    for topic in &topics.chain[1..] {
        let records = read_records_at(bootstrap, topic, total, Duration::from_secs(90));
        let mut seen = std::collections::HashMap::new();
        for record in &records {
            let pizza: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
            *seen
                .entry(pizza["pizza_id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        assert_eq!(records.len(), total, "{topic}");
        assert_eq!(seen.len(), total, "{topic}: every pizza");
        assert_eq!(
            record_count_at(bootstrap, topic),
            total as i64,
            "{topic}: nothing beyond"
        );
    }
    for topic in &topics.chain[..4] {
        assert_eq!(
            record_count_at(bootstrap, &format!("{topic}.dlq")),
            0,
            "{topic}.dlq"
        );
    }
}

/// After a run that broke something while customers ordered, as `read_committed` readers on
/// the cluster at `bootstrap` see it: every order of `placed` (those answered 200) is in Kafka,
/// each with all its pizzas, and no pizza of another order. An order answered 503 is not in
/// Kafka, unless its commit had reached the broker before a fault cut the host's wait for the
/// answer short: at most `cut_off` such orders, and those are whole too. Then every pizza
/// went through every stage exactly once. Returns how many pizzas that is.
pub fn assert_orders_exactly_once(
    bootstrap: &str,
    topics: &Topics,
    placed: &[String],
    cut_off: usize,
) -> usize {
    let limit = Duration::from_secs(120);
    for topic in std::iter::once(&topics.order_records()).chain(&topics.chain) {
        wait_transactions_closed(bootstrap, topic, limit);
    }
    let order_records = record_count_at(bootstrap, &topics.order_records()) as usize;
    let committed: HashMap<String, i64> =
        read_records_at(bootstrap, &topics.order_records(), order_records, limit)
            .iter()
            .map(|record| {
                let order: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
                let id = order["order_id"].as_str().unwrap().to_owned();
                (id, order["count"].as_i64().unwrap())
            })
            .collect();
    assert_eq!(committed.len(), order_records, "an order record twice");
    for id in placed {
        assert!(
            committed.contains_key(id),
            "placed order {id} is not in Kafka; written (committed or not) at {:?}",
            written_at(bootstrap, &topics.order_records(), id)
        );
    }
    let placed: std::collections::HashSet<&String> = placed.iter().collect();
    let unanswered = committed.len() - placed.len();
    assert!(
        unanswered <= cut_off,
        "{unanswered} orders in Kafka whose customers were told they failed ({cut_off} cut off)"
    );
    let total: i64 = committed.values().sum();
    let pizzas = read_records_at(bootstrap, topics.orders(), total as usize, limit);
    let mut per_order: HashMap<String, i64> = HashMap::new();
    for pizza in &pizzas {
        *per_order.entry(pizza.key.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(
        per_order, committed,
        "each order's pizzas, all of them and no others"
    );
    assert_every_pizza_exactly_once(bootstrap, topics, total as usize);
    total as usize
}
