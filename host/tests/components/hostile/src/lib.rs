//! A stage that misbehaves on purpose, as the event's `act` field says: `loop` (never
//! returns), `alloc` (allocates without bound), `panic`, `non-json`, `drop-order-id`,
//! `error` (returns a stage error), `retryable` (returns one marked retryable), `count`
//! (returns `{"order_id":…,"calls":n}`, n counting the calls this instance has served, to show
//! whether instances are reused), `leak` (as `count`, and keeps 1 MiB more each call),
//! `fail-when-reused` (as `count` in a fresh instance, a panic in one that served before),
//! `big` (returns the event's `order_id` with 1.5 MB of filler: over the broker's default
//! record size), `stderr` (as `count`, after writing a line to stderr).
//! With no `act` it behaves: the event passes unchanged.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "../../../../wit", world: "topping", generate_all });

struct Hostile;

/// Calls this instance has served (`count` reads it).
static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Guest for Hostile {
    fn transform(event: String) -> Result<String, StageError> {
        let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let act = serde_json_free_act(&event);
        match act.as_deref() {
            Some("count") => Ok(format!("{{\"order_id\":\"1\",\"calls\":{calls}}}")),
            Some("leak") => {
                std::hint::black_box(Box::leak(vec![1u8; 1 << 20].into_boxed_slice()));
                Ok(format!("{{\"order_id\":\"1\",\"calls\":{calls}}}"))
            }
            Some("stderr") => {
                eprintln!("hostile stage writes to stderr");
                Ok(format!("{{\"order_id\":\"1\",\"calls\":{calls}}}"))
            }
            Some("fail-when-reused") if calls > 1 => panic!("this instance served before"),
            Some("fail-when-reused") => Ok(format!("{{\"order_id\":\"1\",\"calls\":{calls}}}")),
            Some("loop") => loop {
                std::hint::black_box(&event);
            },
            Some("alloc") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("big") => {
                let order_id = text_field(&event, "order_id").unwrap_or_default();
                let filler = "x".repeat(1_500_000);
                Ok(format!(
                    "{{\"order_id\":\"{order_id}\",\"filler\":\"{filler}\"}}"
                ))
            }
            Some("non-json") => Ok("this is not json".into()),
            Some("drop-order-id") => Ok("{}".into()),
            Some("error") => Err(StageError {
                message: "hostile stage says no".into(),
                retryable: false,
            }),
            Some("retryable") => Err(StageError {
                message: "try again later".into(),
                retryable: true,
            }),
            Some("panic") => panic!("hostile stage panics on purpose"),
            _ => Ok(event),
        }
    }
}

/// The value of `"act":"…"` in the event, found without a JSON parser to keep this tiny.
fn serde_json_free_act(event: &str) -> Option<String> {
    text_field(event, "act")
}

/// The value of the text field `name` (`"name":"…"`, no spaces, no escapes) in the event.
fn text_field(event: &str, name: &str) -> Option<String> {
    let pattern = format!("\"{name}\":\"");
    let start = event.find(&pattern)? + pattern.len();
    let end = event[start..].find('"')? + start;
    Some(event[start..end].to_owned())
}

export!(Hostile);
