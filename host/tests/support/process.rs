//! Hosts and brokers as separate processes: a `pizza-host run` that a test can kill, and a
//! broker of the test's own that it can stop and start.

use std::path::PathBuf;
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
            assert!(Instant::now() < deadline, "no exit within {limit:?}");
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

    pub async fn pizzas(&self, id: &str) -> usize {
        let Ok(response) = reqwest::get(format!("{}/order/{id}", self.url)).await else {
            return 0;
        };
        let order: serde_json::Value = response.json().await.unwrap_or_default();
        order["pizzas"].as_array().map(Vec::len).unwrap_or_default()
    }
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
