//! pizza-host: runs WebAssembly stage components between Kafka topics, and serves the
//! pizza-ordering HTTP API of Confluent's event-driven microservices demo.
//!
//! A pipeline (`pipeline.toml`) names the stages; each stage is a component that exports the
//! `pizza:stage/topping` world (see `wit/stage.wit`). For every stage the host runs one
//! consumer (its own group) and one producer: consume from the input topic, call the
//! component, produce the result to the output topic with the same key, commit — in Kafka
//! transactions by default (exactly once), or committing after acknowledgement (at least once).
//!
//! # Layout
//! One folder per concern; each module's `//!` says what it owns.
//! - [`config`]: `pipeline.toml` types and validation.
//! - [`runtime`] (the `pizza-host-runtime` crate, the only one that knows wasmtime): engine,
//!   sandbox and limits, loading, the compile cache, calls. It knows nothing of pizzas.
//! - [`kafka`]: client settings, topics, group state, the one send path, transactions, the
//!   `pizza-host.*` header names, and whether the cluster answers.
//! - [`pipeline`]: what should run and keeping it running: the planner, the supervisor, the
//!   stage, report and join workers, live edits and file watching.
//! - [`fleet`]: the hosts that run one pipeline together: each host's presence, the rule
//!   that two live hosts never share an `instance_id`, and the deployments every host applies.
//! - [`orders`]: the order book, the view that fills it from Kafka, and placing orders.
//! - [`api`]: the public HTTP API, its response types and OpenAPI document, the web page, the
//!   admin API, and the typed client the CLI uses.
//! - [`telemetry`]: metrics, live events, trace context.
//! - [`cli`]: one file per subcommand; all printing lives there.
//!
//! [`start`] wires them together ([`app`]); `main.rs` only parses, sets up logging and dispatches.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod kafka;
pub mod orders;
pub mod pipeline;
pub mod telemetry;

pub use app::{RunningHost, start};
pub use pizza_host_runtime as runtime;

/// The data behind `mutex`, also after a holder panicked: what the host keeps under these
/// locks is changed in single steps (an insert, a remove, a replace), never left half-done.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
