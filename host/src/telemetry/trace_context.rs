//! W3C trace context on pizza records: `POST /order` starts a trace (one trace id per order,
//! in a `traceparent` header on every record of it), and each stage passes it on as a child
//! span, so any tracing backend that reads Kafka headers can follow one order across stages.
//!
//! Format (W3C Trace Context, version 00): `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.

/// The record header that carries the trace context.
pub const HEADER: &str = "traceparent";

/// A new trace: random trace id and span id, sampled.
pub fn new_trace() -> String {
    format!("00-{}-{}-01", random_hex_128(), span_id())
}

/// The context to send on with a record derived from one carrying `parent`: the same trace
/// and flags, a new span id. `None` if `parent` is not a valid version-00 `traceparent`.
pub fn child_of(parent: &str) -> Option<String> {
    let (trace_id, flags) = parse(parent)?;
    Some(format!("00-{trace_id}-{}-{flags}", span_id()))
}

/// The trace id of a valid `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    parse(traceparent).map(|(trace_id, _)| trace_id)
}

/// The trace id and flags of a valid version-00 `traceparent`.
fn parse(traceparent: &str) -> Option<(&str, &str)> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let all_zero = |s: &str| s.bytes().all(|b| b == b'0');
    let valid = parts.next().is_none()
        && version == "00"
        && hex(trace_id, 32)
        && !all_zero(trace_id)
        && hex(parent_id, 16)
        && !all_zero(parent_id)
        && hex(flags, 2);
    valid.then_some((trace_id, flags))
}

fn random_hex_128() -> String {
    format!("{:032x}", uuid::Uuid::new_v4().as_u128())
}

/// A random non-zero 64-bit span id. Every stage makes one per record, so it comes from the
/// thread's generator rather than a system call each time.
fn span_id() -> String {
    use rand::RngExt as _;
    format!("{:016x}", rand::rng().random_range(1..=u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A `traceparent` header is written by whoever produced the record: any value is
        /// either continued or left alone, never a panic.
        #[test]
        fn any_header_value_is_continued_or_ignored(value in "\\PC{0,80}") {
            if let Some(child) = child_of(&value) {
                proptest::prop_assert_eq!(trace_id(&child), trace_id(&value));
            }
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let root = new_trace();
        let child = child_of(&root).expect("valid");
        assert_eq!(trace_id(&root), trace_id(&child));
        assert_ne!(root, child);
        assert!(child.ends_with("-01"), "{child}");
        assert_eq!(child.len(), 55);
    }

    #[test]
    fn malformed_contexts_are_not_continued() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(child_of(bad), None, "{bad}");
        }
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(good), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }
}
