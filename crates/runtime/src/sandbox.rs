//! What one call's [`Store`](wasmtime::Store) holds, and the host side of every import a
//! component is granted: the sandboxed WASI context (seeded randomness, a frozen clock, captured
//! stderr), the limiter of memory, tables and instances, the `pizza:stage/config` table and the
//! `pizza:stage/log` lines.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use sha2::{Digest as _, Sha256};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use super::Limits;
use super::bindings::pizza::stage::{config, log};
use super::bindings_v2::pizza::stage::{config as config_v2, log as log_v2};

/// Most lines one call may log; more would let a stage flood the host's log.
const MAX_LOG_LINES_PER_CALL: u32 = 100;
/// Longest logged line, in bytes; the rest is cut.
const MAX_LOG_LINE_BYTES: usize = 4096;
/// Most table elements all the tables of one store may hold together; far above what any
/// stage needs (a JavaScript stage has about 7,700).
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Most core instances one store may create (a Rust stage has 4, a Python one 14).
const MAX_INSTANCES: usize = 100;
/// Most linear memories one store may create (Rust, JavaScript and Python stages have 1).
const MAX_MEMORIES: usize = 16;
/// Most tables one store may create (Rust, JavaScript and Python stages have 2).
const MAX_TABLES: usize = 16;

/// Who is being called and with what: the same for every call of one loaded component.
#[derive(Clone)]
pub(super) struct Callee {
    /// The stage's or report's name, for its log lines and its seeded randomness.
    pub name: Arc<str>,
    pub limits: Limits,
    pub config: Arc<BTreeMap<String, String>>,
    /// The run's seed, if randomness is to be reproducible.
    pub seed: Option<u64>,
    /// Whether an instance serves several calls.
    pub reuse: bool,
    /// The event a load is smoke-called on.
    pub sample: Arc<str>,
    /// What a stage's output must keep of its input.
    pub output_rule: super::OutputRule,
}

/// One call's store data.
pub(super) struct StageState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: StoreLimiter,
    config: Arc<BTreeMap<String, String>>,
    pub log: StageLog,
}

impl StageState {
    /// The state of a call of `callee` on `inputs` (the arguments, which seed its randomness
    /// when the run has a seed).
    pub fn new(callee: &Callee, inputs: &[&str], stderr: MemoryOutputPipe) -> Self {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock);
        if let Some(seed) = callee.seed {
            let derive = |purpose: &str| derive_seed(seed, &callee.name, inputs, purpose);
            let insecure_seed = derive("insecure-seed");
            wasi.secure_random(StdRng::from_seed(derive("random")))
                .insecure_random(StdRng::from_seed(derive("insecure")))
                .insecure_random_seed(u128::from_le_bytes(
                    insecure_seed[..16].try_into().unwrap_or_default(),
                ));
        }
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: StoreLimiter::new(callee.limits.memory_bytes),
            config: callee.config.clone(),
            log: StageLog {
                stage: callee.name.clone(),
                written: 0,
                dropped: 0,
            },
        }
    }
}

/// A call's generator seed: a hash of the run's seed, the component's name, the call's
/// arguments and what the generator is for. Hashing the arguments (rather than drawing from one
/// stream) keeps a run reproducible whatever order partitions and threads take records in.
fn derive_seed(seed: u64, name: &str, inputs: &[&str], purpose: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(seed.to_le_bytes());
    for part in [purpose, name].iter().chain(inputs) {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().into()
}

/// The stage's log lines during one call, and how many were over the limit.
pub(super) struct StageLog {
    stage: Arc<str>,
    written: u32,
    pub dropped: u32,
}

impl log::Host for StageState {
    fn log(&mut self, level: log::Level, message: String) {
        let log = &mut self.log;
        if log.written >= MAX_LOG_LINES_PER_CALL {
            log.dropped += 1;
            return;
        }
        log.written += 1;
        let mut line = message;
        if line.len() > MAX_LOG_LINE_BYTES {
            let mut end = MAX_LOG_LINE_BYTES;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str(" [cut]");
        }
        let stage = &*log.stage;
        // `tracing` needs the level at compile time, hence one macro per level.
        match level {
            log::Level::Trace => tracing::trace!(target: "stage", stage, "{line}"),
            log::Level::Debug => tracing::debug!(target: "stage", stage, "{line}"),
            log::Level::Info => tracing::info!(target: "stage", stage, "{line}"),
            log::Level::Warn => tracing::warn!(target: "stage", stage, "{line}"),
            log::Level::Error => tracing::error!(target: "stage", stage, "{line}"),
        }
    }
}

impl StageLog {
    /// A new call's allowance.
    pub fn reset(&mut self) {
        self.written = 0;
        self.dropped = 0;
    }

    /// Says, once per call, how many lines were over the limit.
    pub fn report_dropped(&self) {
        if self.dropped > 0 {
            tracing::warn!(
                target: "stage",
                stage = &*self.stage,
                dropped = self.dropped,
                "stage logged more than {MAX_LOG_LINES_PER_CALL} lines in one call; the rest were dropped"
            );
        }
    }
}

impl config::Host for StageState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }
}

// Contract 0.2.0 repeats 0.1.0's `config` and `log`: the same host side serves both.
impl config_v2::Host for StageState {
    fn get(&mut self, key: String) -> Option<String> {
        config::Host::get(self, key)
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        config::Host::get_all(self)
    }
}

impl log_v2::Host for StageState {
    fn log(&mut self, level: log_v2::Level, message: String) {
        let level = match level {
            log_v2::Level::Trace => log::Level::Trace,
            log_v2::Level::Debug => log::Level::Debug,
            log_v2::Level::Info => log::Level::Info,
            log_v2::Level::Warn => log::Level::Warn,
            log_v2::Level::Error => log::Level::Error,
        };
        log::Host::log(self, level, message);
    }
}

/// Caps what one store may take, summed over every core instance in it: a component is
/// made of several core instances (4 for a Rust stage, 14 for a Python one), each with its own
/// memories and tables, so a cap per memory or per table would let it take many times the
/// limit. Remembers a refusal of memory, so the trap it causes is reported as a memory limit
/// rather than as whatever the guest did when its allocation failed.
pub(super) struct StoreLimiter {
    max_bytes: usize,
    pub refused: bool,
    /// Linear memory granted so far, over all the store's memories: memories never shrink and
    /// live as long as the store, so the sum of their growths is their size.
    grown_to: usize,
    /// Table elements granted so far, over all the store's tables.
    table_elements: usize,
}

impl StoreLimiter {
    /// A limiter granting `max_bytes` of linear memory in all.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            refused: false,
            grown_to: 0,
            table_elements: 0,
        }
    }

    /// Whether the instance's memory has grown past half its limit: an instance whose
    /// memory only ever grows (a leak, or a runtime that never gives memory back) is retired
    /// before a call runs out of memory in it.
    pub fn past_half(&self) -> bool {
        self.grown_to > self.max_bytes / 2
    }
}

// `memory_grow_failed` keeps the default (nothing un-counted): wasmtime also calls it for
// growths `memory_growing` never saw (past what the memory type can address), so un-counting
// the last growth there would let a guest take memory off the count. What stays counted is a
// growth the operating system could not back, which leaves the store near its end anyway.
impl ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past its own maximum wasmtime fails the growth after asking: it must not count.
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        let total = self
            .grown_to
            .saturating_add(desired.saturating_sub(current));
        if total > self.max_bytes {
            self.refused = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes reached",
                self.max_bytes
            )));
        }
        self.grown_to = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        let total = self
            .table_elements
            .saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A clock that always reads the Unix epoch: stages are not granted the time.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_seed_name_input_and_purpose() {
        let base = derive_seed(7, "sauce", &["{}"], "random");
        assert_eq!(base, derive_seed(7, "sauce", &["{}"], "random"));
        for other in [
            derive_seed(8, "sauce", &["{}"], "random"),
            derive_seed(7, "cheese", &["{}"], "random"),
            derive_seed(7, "sauce", &["{ }"], "random"),
            derive_seed(7, "sauce", &["{}"], "insecure"),
            // Length prefixes keep ("ab","c") apart from ("a","bc").
            derive_seed(7, "sauc", &["e{}"], "random"),
        ] {
            assert_ne!(base, other);
        }
    }
}
