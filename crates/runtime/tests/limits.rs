//! A stage's limits hold for the component as a whole, however many core instances it is made
//! of: linear memory and table elements are summed over all of them, and how many core
//! instances, memories and tables one instance of the component may create is capped.
//!
//! The components are written in WAT here, so each test has exactly the core instances it
//! needs: `copies` instances of one small module, each asked to grow by the same amount.

use pizza_host_runtime::{CallError, Runtime, Settings, StageComponent};

const MIB: usize = 1 << 20;
/// Most elements all the tables of one instance may hold together.
const MAX_TABLE_ELEMENTS: u32 = 100_000;
/// An event longer than the smoke call's `{}`: the test components grow only on such events,
/// so loading succeeds and the call is what meets a limit.
const GROW: &str = r#"{"grow":true}"#;

/// A core module whose `grow` adds that many 64 KiB pages to its own memory.
const MEMORY: &str = r#"(memory 0)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))"#;
/// A core module whose `grow` adds that many elements to its own table.
const TABLE: &str = r#"(table 0 funcref)
  (func (export "grow") (param i32) (result i32) (table.grow (ref.null func) (local.get 0)))"#;
/// A core module with neither memory nor table; its `grow` does nothing.
const BARE: &str = r#"(func (export "grow") (param i32) (result i32) (local.get 0))"#;

/// A stage component made of `copies` core instances of the module with the fields `module`
/// and one main instance (with one memory, for the canonical ABI, and no table). Its
/// `transform` returns the event unchanged, after calling `grow(amount)` in every copy when the
/// event is longer than `{}`; a growth that fails (`-1`) traps.
fn stage(module: &str, copies: usize, amount: u32) -> Vec<u8> {
    let each = |line: &dyn Fn(usize) -> String| (0..copies).map(line).collect::<String>();
    let instances = each(&|i| format!("(core instance $copy{i} (instantiate $module))\n"));
    let imports = each(&|i| {
        format!("(import \"copy{i}\" \"grow\" (func $grow{i} (param i32) (result i32)))\n")
    });
    let grows = each(&|i| {
        format!(
            "(if (i32.eq (call $grow{i} (i32.const {amount})) (i32.const -1)) (then unreachable))\n"
        )
    });
    let with = each(&|i| format!("(with \"copy{i}\" (instance $copy{i}))\n"));
    let text = format!(
        r#"(component
  (core module $module {module})
  {instances}
  (core module $main
    {imports}
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 1024))
    ;; Where the host copies the event: a bump allocator, enough for one call.
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (global.get $heap)
      (global.set $heap (i32.add (global.get $heap) (local.get 3))))
    ;; `ok(event)`, returned in memory: the case at 0, the string's address and length at 4, 8.
    (func (export "transform") (param $event i32) (param $len i32) (result i32)
      (if (i32.gt_u (local.get $len) (i32.const 2)) (then {grows}))
      (i32.store8 (i32.const 0) (i32.const 0))
      (i32.store (i32.const 4) (local.get $event))
      (i32.store (i32.const 8) (local.get $len))
      (i32.const 0)))
  (core instance $main (instantiate $main {with}))
  (type $error (record (field "message" string) (field "retryable" bool)))
  (export $stage-error "stage-error" (type $error))
  (func (export "transform") (param "event" string) (result (result string (error $stage-error)))
    (canon lift (core func $main "transform") (memory $main "memory")
      (realloc (func $main "realloc")))))"#
    );
    wat::parse_str(text).expect("the test component is valid WAT")
}

/// Loads `component` as a stage limited to `memory_mib`.
fn load(component: &[u8], memory_mib: usize) -> anyhow::Result<StageComponent> {
    let runtime = Runtime::new(None).expect("the runtime starts");
    let settings = Settings::new(10_000, memory_mib, &Default::default());
    runtime.load_bytes("limits", component, &settings)
}

#[test]
fn memories_of_all_core_instances_count_against_one_limit() {
    // Eight core instances that grow by 8 MiB each: 64 MiB in all, though no memory passes 8.
    let component = stage(MEMORY, 8, 128);
    let limited = load(&component, 16).expect("the smoke call grows nothing");
    assert_eq!(limited.call_text(GROW), Err(CallError::Memory(16 * MIB)));

    let roomy = load(&component, 80).expect("loads");
    assert_eq!(roomy.call_text(GROW).as_deref(), Ok(GROW));
}

#[test]
fn table_elements_of_all_core_instances_count_against_one_limit() {
    // Eight tables of 12,500 elements are the limit exactly; one element more each is over it,
    // though no table alone comes near it.
    let per_table = MAX_TABLE_ELEMENTS / 8;
    let at_limit = load(&stage(TABLE, 8, per_table), 64).expect("loads");
    assert_eq!(at_limit.call_text(GROW).as_deref(), Ok(GROW));

    let over = load(&stage(TABLE, 8, per_table + 1), 64).expect("loads");
    let refused = over.call_text(GROW);
    assert!(
        matches!(refused, Err(CallError::Trap(_))),
        "the last table's growth fails: {refused:?}"
    );
}

#[test]
fn core_instances_memories_and_tables_are_counted() {
    // The main instance is one more core instance and one more memory than the copies.
    for (what, module, allowed, counted) in [
        ("instance", BARE, 100 - 1, "instance count"),
        ("memory", MEMORY, 16 - 1, "memory count"),
        ("table", TABLE, 16, "table count"),
    ] {
        let at_limit = load(&stage(module, allowed, 1), 64);
        let at_limit = at_limit.unwrap_or_else(|err| panic!("{what}: {allowed} copies: {err:#}"));
        assert_eq!(at_limit.call_text(GROW).as_deref(), Ok(GROW), "{what}");

        let Err(over) = load(&stage(module, allowed + 1, 1), 64) else {
            panic!("{what}: {} copies load", allowed + 1);
        };
        assert!(
            format!("{over:#}").contains(counted),
            "{what}: refused for another reason: {over:#}"
        );
    }
}
