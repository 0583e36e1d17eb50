//! Hosts and brokers as separate processes: a `pizza-host run` that a test can kill, and a
//! broker of the test's own that it can stop and start.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use super::*;

/// A `pizza-host run` process on `pipeline`, killed with SIGKILL when dropped.
pub struct HostProcess {
    child: std::process::Child,
    pub url: String,
    /// Where its log (stderr) goes.
    pub log: PathBuf,
}

impl HostProcess {
    pub async fn start(pipeline: &std::path::Path) -> Self {
        Self::start_with(pipeline, None, &[]).await
    }

    /// A host whose instance id (and so its transactional ids) is `name`, as several hosts
    /// of one pipeline need.
    pub async fn start_named(pipeline: &std::path::Path, name: &str) -> Self {
        Self::start_with(pipeline, Some(name), &[]).await
    }

    /// A host named `name` with `env` added to its environment.
    pub async fn start_with_env(
        pipeline: &std::path::Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_with(pipeline, Some(name), env).await
    }

    async fn start_with(
        pipeline: &std::path::Path,
        name: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let log_path = pipeline.with_extension(format!("{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"));
        if let Some(name) = name {
            command.env("HOSTNAME", name);
        }
        command.envs(env.iter().copied());
        let child = command
            .args([
                "run",
                "--no-watch",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg(pipeline)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        wait_for(Duration::from_secs(90), "the host to answer", || async {
            reqwest::get(format!("{url}/order/none"))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            child,
            url,
            log: log_path,
        }
    }

    /// The process id, to read its memory use from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; returns its exit code.
    pub fn terminate(self, limit: Duration) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(limit)
    }

    /// Sends the signal named `name` (`TERM`, `INT`, …) without waiting.
    pub fn signal(&self, name: &str) {
        let sent = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                panic!(
                    "no exit within {limit:?}; the last lines of its log ({}):\n{}",
                    self.log.display(),
                    log_tail(&self.log, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub async fn order(&self, count: u32) -> String {
        place_order(&self.url, count).await
    }

    /// Places `orders` orders of `count` pizzas, one after another.
    pub async fn orders(&self, orders: usize, count: u32) -> Vec<String> {
        let mut placed = Vec::with_capacity(orders);
        for _ in 0..orders {
            placed.push(self.order(count).await);
        }
        placed
    }

    /// Waits until each of `orders` holds `count` pizzas.
    pub async fn wait_complete(&self, orders: &[String], count: usize, limit: Duration) {
        for id in orders {
            wait_for(
                limit,
                &format!("order {id} complete on {}", self.url),
                || async { (self.pizzas(id).await == count).then_some(()) },
            )
            .await;
        }
    }

    /// How many partitions of its input each of its stages holds, by stage name, as `/readyz`
    /// says.
    pub async fn partitions_by_stage(&self) -> std::collections::BTreeMap<String, usize> {
        let Ok(response) = reqwest::get(format!("{}/readyz", self.url)).await else {
            return Default::default();
        };
        let ready: serde_json::Value = response.json().await.unwrap_or_default();
        ready["stages"]
            .as_array()
            .map_or(Default::default(), |stages| {
                stages
                    .iter()
                    .map(|s| {
                        let held = s["partitions"].as_array().map_or(0, Vec::len);
                        (s["name"].as_str().unwrap_or_default().to_owned(), held)
                    })
                    .collect()
            })
    }

    /// How many partitions of its input each of its stages holds, in the order of `/readyz`.
    pub async fn partitions_per_stage(&self) -> Vec<usize> {
        self.partitions_by_stage().await.into_values().collect()
    }

    /// How many of its stages hold partitions of their input.
    pub async fn stages_holding_partitions(&self) -> usize {
        let held = self.partitions_per_stage().await;
        held.iter().filter(|&&n| n > 0).count()
    }

    pub async fn pizzas(&self, id: &str) -> usize {
        let Ok(response) = reqwest::get(format!("{}/order/{id}", self.url)).await else {
            return 0;
        };
        let order: serde_json::Value = response.json().await.unwrap_or_default();
        order["pizzas"].as_array().map(Vec::len).unwrap_or_default()
    }
}

/// Two hosts of `pipeline`, named `names`, returned once each holds partitions of every stage:
/// every stage's group has rebalanced over both.
pub async fn start_pair(pipeline: &Path, names: [&str; 2]) -> (HostProcess, HostProcess) {
    let first = HostProcess::start_named(pipeline, names[0]).await;
    let second = HostProcess::start_named(pipeline, names[1]).await;
    wait_for(
        Duration::from_secs(90),
        "both hosts to hold partitions",
        || async {
            (first.stages_holding_partitions().await == STAGES.len()
                && second.stages_holding_partitions().await == STAGES.len())
            .then_some(())
        },
    )
    .await;
    (first, second)
}

/// Runs `pizza-host run` on `pipeline` as a host named `name` that is expected to refuse to
/// start; returns its exit status and log. Panics (killing it) if it is still running after
/// `limit`.
pub async fn run_refused(
    pipeline: &Path,
    name: &str,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let log = pipeline.with_extension(format!("{name}-refused.log"));
    let mut host = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .env("HOSTNAME", name)
        .env("NO_COLOR", "1")
        .args(["run", "--no-watch", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg(pipeline)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = host.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            host.kill().unwrap();
            panic!("the host started; it should have refused to");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (status, std::fs::read_to_string(&log).unwrap())
}

/// Kills the host named `name` on `pipeline` mid-run `kills` times, restarting it each time,
/// and returns the host running after the last kill and every order placed. Each round orders
/// `per_round` orders of 1,000 pizzas and kills the host as soon as its `sauce` stage has taken
/// some of them. A kill counts only if `in_flight` (the work a restart has to redo, measured
/// right after the kill) is above zero; one that came after everything was committed does
/// not, and the round is tried again (up to three times as many rounds as kills).
pub async fn kill_while_in_flight(
    mut host: HostProcess,
    pipeline: &Path,
    name: &str,
    kills: usize,
    per_round: usize,
    in_flight: impl Fn() -> i64,
) -> (HostProcess, Vec<String>) {
    let mut orders = Vec::new();
    let mut landed = 0;
    for attempt in 1..=3 * kills {
        let taken = stage_records_in(&host.url, "sauce").await;
        orders.extend(host.orders(per_round, 1_000).await);
        wait_for(
            Duration::from_secs(90),
            "progress before the kill",
            || async { (stage_records_in(&host.url, "sauce").await > taken).then_some(()) },
        )
        .await;
        host.kill();
        let left = in_flight();
        println!("kill {attempt}: {left} records to redo");
        landed += usize::from(left > 0);
        host = HostProcess::start_named(pipeline, name).await;
        if landed == kills {
            return (host, orders);
        }
    }
    panic!("only {landed} of {kills} kills found records in flight");
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A single-node broker of one test's own, beside the shared one (`dev/kafka.sh` with its own
/// ports and folder), so a test can stop and restart it without disturbing other tests.
/// Stopped when dropped.
pub struct OwnBroker {
    state: PathBuf,
    port: u16,
    controller_port: u16,
    /// `user:password …` for a SASL listener; empty for a plaintext one.
    sasl_users: String,
}

impl OwnBroker {
    pub fn start(test: &str) -> Self {
        Self::start_with_users(test, &[])
    }

    /// A broker whose client listener takes SASL/PLAIN logins of `users` (name, password).
    pub fn start_with_users(test: &str, users: &[(&str, &str)]) -> Self {
        let broker = Self {
            state: temp_dir(&format!("{test}-broker")),
            port: free_port(),
            controller_port: free_port(),
            sasl_users: users
                .iter()
                .map(|(u, p)| format!("{u}:{p}"))
                .collect::<Vec<_>>()
                .join(" "),
        };
        broker.restart();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker gracefully (its data stays for the next start).
    pub fn stop(&self) {
        assert!(self.run("stop"), "dev/kafka.sh stop failed");
    }

    /// Starts it again on the same data; returns once it is ready.
    pub fn restart(&self) {
        assert!(self.run("start"), "dev/kafka.sh start failed");
    }

    /// Freezes the broker (SIGSTOP): its connections stay open but it answers nothing, as a
    /// hung broker would. [`OwnBroker::thaw`] lets it go on.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = std::fs::read_to_string(self.state.join("broker.pid")).unwrap();
        let sent = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.trim().to_owned()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} the broker");
    }

    fn run(&self, command: &str) -> bool {
        std::process::Command::new(workspace_root().join("dev/kafka.sh"))
            .arg(command)
            .env_remove("KAFKA_BOOTSTRAP")
            .env("KAFKA_STATE", &self.state)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_SASL_USERS", &self.sasl_users)
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.run("stop");
        // Its data and logs: a broker's worth of files per run otherwise.
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A three-broker cluster of one test's own (`dev/kafka.sh --brokers 3` on free ports, in a
/// folder of its own), whose nodes a test can kill, stop and start. Stopped when dropped.
pub struct OwnCluster {
    state: PathBuf,
    ports: Vec<u16>,
    controller_ports: Vec<u16>,
}

impl OwnCluster {
    pub fn start(test: &str) -> Self {
        let cluster = Self {
            state: temp_dir(&format!("{test}-cluster")),
            ports: (0..3).map(|_| free_port()).collect(),
            controller_ports: (0..3).map(|_| free_port()).collect(),
        };
        cluster.run(&["start"]);
        cluster
    }

    pub fn bootstrap(&self) -> String {
        let addresses: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        addresses.join(",")
    }

    /// `kill -9` of node `node` (1 to 3).
    pub fn kill_node(&self, node: i32) {
        self.run(&["kill-node", &node.to_string()]);
    }

    /// Stops node `node` gracefully.
    pub fn stop_node(&self, node: i32) {
        self.run(&["stop-node", &node.to_string()]);
    }

    /// Starts node `node` again on its data; returns once it is ready.
    pub fn start_node(&self, node: i32) {
        self.run(&["start-node", &node.to_string()]);
    }

    /// The node leading `partition` of `topic` now.
    pub fn leader(&self, topic: &str, partition: i32) -> i32 {
        let (_, partitions) = partitions_at(&self.bootstrap(), topic);
        partitions
            .iter()
            .find(|&&(id, _)| id == partition)
            .map(|&(_, leader)| leader)
            .unwrap_or_else(|| panic!("{topic} has no partition {partition}"))
    }

    /// How many partitions of the cluster (internal topics included) have a replica out of
    /// sync: a broker just started is still catching up on them.
    pub fn under_replicated(&self) -> usize {
        let consumer: BaseConsumer = client_config(&self.bootstrap()).create().unwrap();
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap();
        metadata
            .topics()
            .iter()
            .flat_map(|topic| topic.partitions())
            .filter(|partition| partition.isr().len() < partition.replicas().len())
            .count()
    }

    /// The end offset of each partition of `topic`, in partition order.
    pub fn high_watermarks(&self, topic: &str) -> Vec<i64> {
        watermarks_at(&self.bootstrap(), topic)
            .iter()
            .map(|&(_, high)| high)
            .collect()
    }

    /// The node coordinating the transactions of `transactional_id`.
    pub fn transaction_coordinator(&self, transactional_id: &str) -> i32 {
        self.leader(
            "__transaction_state",
            coordinator_partition(transactional_id),
        )
    }

    /// The node coordinating the consumer group `group`.
    pub fn group_coordinator(&self, group: &str) -> i32 {
        self.leader("__consumer_offsets", coordinator_partition(group))
    }

    fn run(&self, args: &[&str]) {
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let status = std::process::Command::new(workspace_root().join("dev/kafka.sh"))
            .args(args)
            .args(["--brokers", "3"])
            .env_remove("KAFKA_BOOTSTRAP")
            .env("KAFKA_STATE", &self.state)
            .env("KAFKA_PORTS", list(&self.ports))
            .env("KAFKA_CONTROLLER_PORTS", list(&self.controller_ports))
            .status()
            .unwrap();
        assert!(status.success(), "dev/kafka.sh {args:?} --brokers 3 failed");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        // Killed, not stopped: its data goes anyway, and a graceful stop of the last nodes
        // waits for a quorum that has left.
        for node in ["1", "2", "3"] {
            let _ = std::process::Command::new(workspace_root().join("dev/kafka.sh"))
                .args(["kill-node", node, "--brokers", "3"])
                .env("KAFKA_STATE", &self.state)
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// The partition of `__consumer_offsets` or `__transaction_state` that coordinates `key` (a
/// group or a transactional id), as the broker picks it: Java's `String.hashCode`, made
/// positive, modulo the 3 partitions `dev/kafka.sh` gives both topics.
fn coordinator_partition(key: &str) -> i32 {
    let hash = key.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    (hash & 0x7fff_ffff) % 3
}

/// The last `lines` lines of the log at `path` (or why it cannot be read), for a failure
/// message: CI keeps the test's output, not the temporary folder the log is in.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(log) => {
            let all: Vec<&str> = log.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read it: {err})"),
    }
}
