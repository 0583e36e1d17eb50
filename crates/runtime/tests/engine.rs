//! How the engine is configured, where getting it wrong costs every call.

use pizza_host_runtime::Runtime;

/// The component model's concurrency support is off: stages are called synchronously, and
/// with it on (a wasmtime feature or a config default away) every call paid for machinery it
/// never used, 50-100 times the call's cost. A component using an async built-in is therefore
/// refused; if it compiles, concurrency was turned on.
#[test]
fn concurrency_support_is_off() {
    let uses_async =
        wat::parse_str("(component (core func (canon backpressure.inc)))").expect("valid WAT");
    let runtime = Runtime::new(None).expect("the runtime starts");
    let refused = runtime
        .describe(&uses_async)
        .expect_err("an async built-in compiled: concurrency support is on");
    assert!(
        format!("{refused:#}").contains("async"),
        "refused for another reason: {refused:#}"
    );
}
