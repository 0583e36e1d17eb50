//! What the machine spent: CPU seconds of this process (the host and the bench's own hops),
//! of the stage processes and of the local broker's JVM, and peak resident memory, all read
//! from /proc.

/// CPU seconds used so far by this process and the local broker, apart, so a run's CPU per
/// pizza covers the whole machine (the broker does a share of every hop's work).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// This process, plus any stage processes given.
    pub pipeline: f64,
    /// The broker on this machine (0 where it runs elsewhere).
    pub broker: f64,
}

impl Cpu {
    /// The CPU used so far by this process, `others` (stage processes) and the broker.
    pub fn now(others: &[u32]) -> Self {
        let others: f64 = others
            .iter()
            .map(|pid| cpu_seconds_of(&format!("/proc/{pid}/stat")))
            .sum();
        Self {
            pipeline: cpu_seconds_of("/proc/self/stat") + others,
            broker: broker_pid().map_or(0.0, |pid| cpu_seconds_of(&format!("/proc/{pid}/stat"))),
        }
    }

    /// What was used between `earlier` and `self`.
    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            pipeline: self.pipeline - earlier.pipeline,
            broker: self.broker - earlier.broker,
        }
    }
}

/// The local Kafka broker's process (`kafka.Kafka`, as `dev/kafka.sh` starts it), if one runs
/// on this machine.
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == b"kafka.Kafka")
                .then_some(pid)
        })
}

/// CPU seconds (user + system) of the process whose /proc stat file is `path`.
pub fn cpu_seconds_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The process's peak resident set, from /proc.
pub fn peak_rss_mib() -> f64 {
    vm_hwm_mib(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

/// The peak resident set (`VmHWM`) a /proc status text gives, in MiB.
pub fn vm_hwm_mib(status: &str) -> f64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}
