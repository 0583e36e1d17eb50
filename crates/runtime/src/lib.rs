//! The WebAssembly side of pizza-host, and the only crate that knows wasmtime: one
//! [`Engine`], the sandbox every component runs in, loading (with a compile cache) and calling.
//! It knows nothing of pizzas or Kafka: what a component is smoke-called on and what its
//! output must keep come in with its [`Settings`].
//!
//! A [`StageComponent`] is a loaded, validated stage that can be called with one [`Event`]:
//! a `pizza:stage/topping@0.1.0` (one JSON value in, one out) or a
//! `pizza:stage/processor@0.2.0` (a whole record in, any number of [`Output`] records out);
//! a [`ReportComponent`] folds events into a state. Calls come from
//! a pre-instantiated component; an instance serves further calls only while it behaves (see
//! [`StageComponent::call`]). Each call runs under a memory limit and an epoch deadline; one
//! ticker thread per engine advances the epoch.
//!
//! The sandbox grants what the `pizza:stage` world grants and nothing else. The standard
//! WASI 0.2 interfaces are linked so that components made by any language's toolchain
//! instantiate, but through them a component sees no preopened directories, no environment
//! variables, no arguments, no sockets and a clock frozen at the Unix epoch. What it writes to
//! stderr (a Rust panic message, say) is captured and reported with the error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

mod cache;
mod sandbox;

use sandbox::{Callee, StageState};

use cache::CompileCache;
pub use cache::{DEFAULT_MAX_DISK_BYTES as DEFAULT_MAX_CACHE_BYTES, Origin};

mod output;
mod record;
mod report;

pub use output::OutputRule;
use output::{check_output, check_outputs};
pub use record::{Event, Output};

pub use report::ReportComponent;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "topping",
        with: { "wasi:random": wasmtime_wasi::p2::bindings::random },
    });
}

mod bindings_v2 {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.2",
        world: "processor",
        with: { "wasi:random": wasmtime_wasi::p2::bindings::random },
    });
}

use bindings::ToppingPre;
use bindings_v2::ProcessorPre;

/// The world a topping stage exports (contract 0.1.0).
pub const TOPPING_WORLD: &str = "pizza:stage/topping@0.1.0";
/// The world a processor stage exports (contract 0.2.0).
pub const PROCESSOR_WORLD: &str = "pizza:stage/processor@0.2.0";

/// How often the epoch advances; the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// How much of a stage's stderr is kept for an error message.
const STDERR_CAPTURE_BYTES: usize = 4096;

/// The resources one stage call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall time for one call, instantiation included.
    pub timeout: Duration,
    /// Linear memory one instance of the component may grow to, in bytes: the memories of all
    /// the core instances it is made of count together. Beside it, fixed caps hold for the
    /// instance as a whole: 100,000 table elements over all its tables, 100 core instances, 16
    /// memories and 16 tables (a Rust or JavaScript stage has 4 core instances, 1 memory and 2
    /// tables; a Python one 14, 1 and 2).
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            memory_bytes: 64 << 20,
        }
    }
}

/// What every call of one stage or report gets: its limits, the `config` table it reads
/// through the `pizza:stage/config` import, whether instances are reused, the event a load is
/// smoke-called on, and what an output must keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The resources one call may use.
    pub limits: Limits,
    /// The component's settings.
    pub config: Arc<BTreeMap<String, String>>,
    /// Whether a stage's instance serves several calls (until it fails, and at most
    /// [`MAX_CALLS_PER_INSTANCE`]), rather than one fresh instance per call. Ignored under a
    /// seed (reproducible runs take a fresh instance per call) and by reports.
    pub reuse_instances: bool,
    /// The event a new component is smoke-called on before it may replace a running one: the
    /// caller knows what its events look like, the runtime does not.
    pub sample: Arc<str>,
    /// What a stage's output must keep of its input (see [`OutputRule`]).
    pub output_rule: OutputRule,
}

impl Default for Settings {
    /// Default limits, no config, a fresh instance per call, smoke-called on `{}`, any JSON
    /// object accepted as output.
    fn default() -> Self {
        Self::new(1_000, 64, &BTreeMap::new())
    }
}

impl Settings {
    /// A call limited to `timeout_ms` and `memory_mib`, reading `config`, with a fresh instance
    /// per call.
    pub fn new(timeout_ms: u64, memory_mib: usize, config: &BTreeMap<String, String>) -> Self {
        Self {
            limits: Limits {
                timeout: Duration::from_millis(timeout_ms),
                memory_bytes: memory_mib << 20,
            },
            config: Arc::new(config.clone()),
            reuse_instances: false,
            sample: Arc::from("{}"),
            output_rule: OutputRule::default(),
        }
    }
}

/// Most calls one instance serves before it is replaced, so a stage that leaks memory, or
/// keeps something it should not, is reset regularly even if it never fails.
pub const MAX_CALLS_PER_INSTANCE: u32 = 10_000;
/// Most idle instances a stage keeps: one per thread calling it at once is plenty.
const MAX_IDLE_INSTANCES: usize = 4;

/// Why a component file could not be used as a stage.
#[derive(Debug, thiserror::Error)]
#[error("stage `{stage}`: component {path}: {cause:#}")]
pub struct LoadError {
    /// The stage's name.
    pub stage: String,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub cause: anyhow::Error,
}

/// Why a call did not return an enriched event.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// The stage returned `stage-error`.
    #[error("stage returned an error: {message}")]
    Returned {
        /// The stage's message.
        message: String,
        /// Whether the stage said retrying may help.
        retryable: bool,
    },
    /// The stage trapped (a panic, `unreachable`, an out-of-bounds access, …).
    #[error("stage trapped: {0}")]
    Trap(String),
    /// The call ran past its deadline and was interrupted.
    #[error("stage ran past its time limit of {0:?}")]
    Timeout(Duration),
    /// The stage tried to grow its memory past the limit.
    #[error("stage exceeded its memory limit of {0} bytes")]
    Memory(usize),
    /// The stage returned something its [`OutputRule`] refuses.
    #[error("{0}")]
    InvalidOutput(String),
    /// The record cannot be given to the stage (a topping takes UTF-8 text only).
    #[error("{0}")]
    InvalidInput(String),
}

impl CallError {
    /// A short, stable name for the kind of failure, for logs and record headers.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Returned { .. } => "returned-error",
            CallError::Trap(_) => "trap",
            CallError::Timeout(_) => "timeout",
            CallError::Memory(_) => "memory-limit",
            CallError::InvalidOutput(_) => "invalid-output",
            CallError::InvalidInput(_) => "invalid-input",
        }
    }
}

/// The engine and linker shared by every stage of one host, and the components it compiled.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<StageState>>,
    cache: Arc<CompileCache>,
    seed: Option<u64>,
}

impl Runtime {
    /// Creates the engine, links the sandboxed WASI interfaces, and starts the epoch ticker.
    /// Compiled components are cached under `cache_dir` if given, up to
    /// [`DEFAULT_MAX_CACHE_BYTES`] there.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::with_cache_limit(cache_dir, DEFAULT_MAX_CACHE_BYTES)
    }

    /// [`Runtime::new`] whose disk cache holds at most `max_cache_bytes`.
    pub fn with_cache_limit(
        cache_dir: Option<PathBuf>,
        max_cache_bytes: u64,
    ) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        // Stages are called synchronously, one event at a time. Concurrency support (the
        // component model's async) sets up per-store machinery that made every such call
        // 50-100 times slower when it was on; `tests/engine.rs` keeps it off.
        config.concurrency_support(false);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::pizza::stage::config::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        bindings::pizza::stage::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        bindings_v2::pizza::stage::config::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        bindings_v2::pizza::stage::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        spawn_epoch_ticker(&engine)?;
        Ok(Self {
            cache: Arc::new(CompileCache::new(&engine, cache_dir, max_cache_bytes)?),
            engine,
            linker: Arc::new(linker),
            seed: None,
        })
    }

    /// Makes every component's randomness reproducible: each call draws from a generator
    /// seeded by `seed`, the component's name and the call's arguments. `None` keeps it secure.
    pub fn with_seed(mut self, seed: Option<u64>) -> Self {
        self.seed = seed;
        self
    }

    /// Who a component loaded as `name` with `settings` is, for its calls.
    fn callee(&self, name: &str, settings: &Settings) -> Callee {
        Callee {
            name: name.into(),
            limits: settings.limits,
            config: settings.config.clone(),
            seed: self.seed,
            sample: settings.sample.clone(),
            output_rule: settings.output_rule.clone(),
            // A seeded call's randomness is derived from its event, which a reused instance
            // (an interpreter seeded once, say) would not honour.
            reuse: settings.reuse_instances && self.seed.is_none(),
        }
    }

    /// Reads, compiles and validates the component at `path` as the stage `stage`.
    ///
    /// Blocking, and it runs the component: call it on a thread with a few MiB of stack to
    /// spare (a `spawn_blocking` thread), not deep inside an async task.
    pub fn load(
        &self,
        stage: &str,
        path: &Path,
        settings: &Settings,
    ) -> Result<StageComponent, LoadError> {
        let bytes = std::fs::read(path).context("cannot read the file");
        let bytes = bytes.map_err(|cause| LoadError::new(stage, path, cause))?;
        self.load_bytes(stage, &bytes, settings)
            .map_err(|cause| LoadError::new(stage, path, cause))
    }

    /// The names of what the component in `bytes` imports and exports, without checking that
    /// it fits a stage.
    pub fn describe(&self, bytes: &[u8]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let (component, _) = self.compile(bytes)?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        Ok((imports, exports))
    }

    /// Compiles `bytes` as the stage `stage` (or reuses the compilation of identical bytes),
    /// checks that it exports one of the stage worlds, and makes a smoke call on the settings'
    /// sample (as a record's value).
    pub fn load_bytes(
        &self,
        stage: &str,
        bytes: &[u8],
        settings: &Settings,
    ) -> anyhow::Result<StageComponent> {
        let (component, origin) = self.compile(bytes)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the component needs imports that stages are not granted")?;
        let pre = match ToppingPre::new(instance_pre.clone()) {
            Ok(topping) => World::Topping(topping),
            Err(as_topping) => {
                World::Processor(ProcessorPre::new(instance_pre).map_err(|as_processor| {
                    anyhow::anyhow!(
                        "the component exports neither `{TOPPING_WORLD}` nor `{PROCESSOR_WORLD}` \
                         (as a topping: {as_topping:#}; as a processor: {as_processor:#})"
                    )
                })?)
            }
        };
        let loaded = StageComponent {
            callee: self.callee(stage, settings),
            digest: digest(bytes),
            origin,
            engine: self.engine.clone(),
            pre,
            idle: Mutex::default(),
        };
        loaded
            .call(&Event::of_value(&loaded.callee.sample))
            .context("the smoke call on the sample event failed")?;
        Ok(loaded)
    }
}

impl Runtime {
    /// Compiles `bytes`, or takes the compilation of identical bytes from the cache.
    fn compile(&self, bytes: &[u8]) -> anyhow::Result<(Component, Origin)> {
        self.cache.get_or_compile(&self.engine, &digest(bytes), || {
            check_header(bytes)?;
            Component::from_binary(&self.engine, bytes)
                .map_err(anyhow::Error::from)
                .context("not a valid WebAssembly component")
        })
    }
}

/// The content digest pizza-host names component versions by: `sha256:<hex>`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

impl LoadError {
    /// `cause` of failing to load stage `stage` from `path`.
    pub fn new(stage: &str, path: &Path, cause: anyhow::Error) -> Self {
        Self {
            stage: stage.to_owned(),
            path: path.to_owned(),
            cause,
        }
    }
}

/// Tells a core module or a file that is not WebAssembly from a component, in plain words,
/// before the parser reports it as a bad byte.
fn check_header(bytes: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if !bytes.starts_with(MAGIC) {
        anyhow::bail!("not a WebAssembly file (it does not start with the \\0asm header)");
    }
    if bytes.get(4..8) == Some(&CORE_MODULE_VERSION[..]) {
        anyhow::bail!(
            "a core WebAssembly module, not a component: build stages with `cargo component build` \
             (or wrap a module with `wasm-tools component new`)"
        );
    }
    Ok(())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .context("cannot start the epoch ticker thread")?;
    Ok(())
}

/// A validated stage, ready to be called. Cheap to call from several threads.
pub struct StageComponent {
    callee: Callee,
    digest: String,
    origin: Origin,
    engine: Engine,
    pre: World,
    /// Instances waiting for their next call, when instances are reused.
    idle: Mutex<Vec<Warm>>,
}

/// The world a stage exports, ready to instantiate.
enum World {
    Topping(ToppingPre<StageState>),
    Processor(ProcessorPre<StageState>),
}

/// An instance of a stage.
enum Instance {
    Topping(bindings::Topping),
    Processor(bindings_v2::Processor),
}

/// What one call is given, in the form its world takes.
enum Input<'a> {
    Value(&'a str),
    Record(bindings_v2::pizza::stage::types::Event),
}

impl World {
    fn instantiate(&self, store: &mut Store<StageState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            World::Topping(pre) => Instance::Topping(pre.instantiate(store)?),
            World::Processor(pre) => Instance::Processor(pre.instantiate(store)?),
        })
    }

    /// `event` as this world takes it.
    fn input<'a>(&self, event: &Event<'a>) -> Result<Input<'a>, CallError> {
        Ok(match self {
            World::Topping(_) => Input::Value(event.text()?),
            World::Processor(_) => Input::Record(event.to_wit()),
        })
    }
}

impl Instance {
    /// Calls the stage's export; the outer error is a trap, the inner what the stage returned.
    fn call(
        &self,
        store: &mut Store<StageState>,
        input: &Input<'_>,
    ) -> wasmtime::Result<Result<Vec<Output>, CallError>> {
        let returned = |message, retryable| CallError::Returned { message, retryable };
        Ok(match (self, input) {
            (Instance::Topping(stage), Input::Value(value)) => stage
                .call_transform(store, value)?
                .map(|value| vec![Output::value(value)])
                .map_err(|err| returned(err.message, err.retryable)),
            (Instance::Processor(stage), Input::Record(event)) => stage
                .call_process(store, event)?
                .map(|outputs| outputs.into_iter().map(Output::from).collect())
                .map_err(|err| returned(err.message, err.retryable)),
            _ => unreachable!("an input is made for the instance's own world"),
        })
    }
}

/// An instance kept for another call, and how many it has served.
struct Warm {
    call: Call,
    stage: Instance,
    calls: u32,
}

impl StageComponent {
    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.callee.name
    }

    /// Whether loading compiled the component or found it in the compile cache.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The SHA-256 of the component file, to tell versions apart in logs.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The world the component exports: [`TOPPING_WORLD`] or [`PROCESSOR_WORLD`].
    pub fn world(&self) -> &'static str {
        match self.pre {
            World::Topping(_) => TOPPING_WORLD,
            World::Processor(_) => PROCESSOR_WORLD,
        }
    }

    /// The longest one [`call`](Self::call) can take: its timeout, twice when a call that
    /// failed in a reused instance is tried again in a fresh one.
    pub fn longest_call(&self) -> Duration {
        if self.callee.reuse {
            self.callee.limits.timeout * 2
        } else {
            self.callee.limits.timeout
        }
    }

    /// Calls the stage with one event and returns the records it becomes (a topping's: one,
    /// its new value): in an instance that served earlier calls without failing, when
    /// instances are reused and one is idle; else in a fresh one. An instance that trapped, ran
    /// out of time or memory, or wrote to stderr is never used again, and an event whose call
    /// failed so in a reused instance is called once more in a fresh one: what earlier calls
    /// left behind must not decide its fate.
    pub fn call(&self, event: &Event<'_>) -> Result<Vec<Output>, CallError> {
        let input = self.pre.input(event)?;
        let reused = if self.callee.reuse {
            self.idle().pop()
        } else {
            None
        };
        let reused_instance = reused.is_some();
        let outputs = match self.call_in(reused, event, &input) {
            Err(CallError::Trap(_) | CallError::Timeout(_) | CallError::Memory(_))
                if reused_instance =>
            {
                self.call_in(None, event, &input)
            }
            outcome => outcome,
        }?;
        match input {
            Input::Value(value) => {
                let output = outputs
                    .into_iter()
                    .next()
                    .and_then(|o| String::from_utf8(o.value).ok());
                let output =
                    check_output(&self.callee.output_rule, value, output.unwrap_or_default())?;
                Ok(vec![Output::value(output)])
            }
            Input::Record(_) => check_outputs(&self.callee.output_rule, event.value, outputs),
        }
    }

    /// [`call`](Self::call) on a record holding only `value`; the first record's value as
    /// text (a topping's new value). For tools and tests.
    pub fn call_text(&self, value: &str) -> Result<String, CallError> {
        let outputs = self.call(&Event::of_value(value))?;
        let first = outputs.into_iter().next().map(|output| output.value);
        Ok(String::from_utf8_lossy(&first.unwrap_or_default()).into_owned())
    }

    /// Calls the stage in `instance`, or in a fresh one, and keeps the instance for another
    /// call when it may serve one.
    fn call_in(
        &self,
        instance: Option<Warm>,
        event: &Event<'_>,
        input: &Input<'_>,
    ) -> Result<Vec<Output>, CallError> {
        // A seeded call's randomness is derived from the value (as text, for a processor's bytes).
        let seeded_by = String::from_utf8_lossy(event.value);
        let (mut call, ready, served) = match instance {
            Some(Warm {
                mut call,
                stage,
                calls,
            }) => {
                call.arm();
                (call, Some(stage), calls)
            }
            None => (
                Call::new(&self.engine, &self.callee, &[&seeded_by]),
                None,
                0,
            ),
        };
        let outcome = match ready {
            Some(stage) => Ok(stage),
            None => self.pre.instantiate(&mut call.store),
        }
        .and_then(|stage| {
            let returned = stage.call(&mut call.store, input)?;
            Ok((stage, returned))
        });
        let (stage, returned) = call.finish(outcome)?;
        let calls = served + 1;
        if self.callee.reuse
            && calls < MAX_CALLS_PER_INSTANCE
            && call.stderr.contents().is_empty()
            && !call.store.data().limiter.past_half()
        {
            let mut idle = self.idle();
            if idle.len() < MAX_IDLE_INSTANCES {
                idle.push(Warm { call, stage, calls });
            }
        }
        returned
    }
}

impl StageComponent {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One call's fresh store, under the call's limits, with the stage's stderr captured.
struct Call {
    store: Store<StageState>,
    stderr: MemoryOutputPipe,
    limits: Limits,
}

impl Call {
    /// A call of `callee` on `inputs`.
    fn new(engine: &Engine, callee: &Callee, inputs: &[&str]) -> Self {
        let limits = callee.limits;
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        let mut store = Store::new(engine, StageState::new(callee, inputs, stderr.clone()));
        store.limiter(|state| &mut state.limiter);
        let mut call = Self {
            store,
            stderr,
            limits,
        };
        call.arm();
        call
    }

    /// Starts the call's clock and log allowance (again, for a reused instance).
    fn arm(&mut self) {
        let ticks = self
            .limits
            .timeout
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis())
            .max(1);
        self.store
            .set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        self.store.data_mut().log.reset();
    }

    /// What the call returned, or why it did not return (a trap, the time or memory limit).
    fn finish<T>(&self, outcome: wasmtime::Result<T>) -> Result<T, CallError> {
        self.store.data().log.report_dropped();
        let trap = match outcome {
            Ok(returned) => return Ok(returned),
            Err(trap) => trap,
        };
        if trap.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return Err(CallError::Timeout(self.limits.timeout));
        }
        if self.store.data().limiter.refused {
            return Err(CallError::Memory(self.limits.memory_bytes));
        }
        let said = String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_owned();
        let cause = format!("{trap:#}");
        Err(CallError::Trap(if said.is_empty() {
            cause
        } else {
            format!("{said} ({cause})")
        }))
    }
}
