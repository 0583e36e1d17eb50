//! Every record header the host reads or writes, by name, in one place.
//!
//! Headers under `pizza-host.` are the host's own: it writes them on results and dead letters,
//! and the order view reads them back. Whoever writes to the pipeline's first topic could write
//! them too (a forged trail, a replayed dead letter's old stage), so a stage passes on only the
//! trail a stage of the same pipeline wrote, and drops every other `pizza-host.` header before
//! adding its own.

/// The prefix of the host's own headers.
pub const PREFIX: &str = "pizza-host.";

/// On each result: one stage visit, `{"stage", "digest", "at"}` (JSON). A record gathers one
/// per stage, so the last topic's records say when each stage processed the event, with which
/// component.
pub const TRAIL: &str = "pizza-host.trail";
/// On a dead letter: the stage (or join) that gave up on the record.
pub const STAGE: &str = "pizza-host.stage";
/// On a dead letter: the digest of the component that failed it.
pub const DIGEST: &str = "pizza-host.digest";
/// On a dead letter: the kind of failure (`trap`, `timeout`, `invalid-output`, …).
pub const ERROR_KIND: &str = "pizza-host.error-kind";
/// On a dead letter: what went wrong, in words.
pub const ERROR: &str = "pizza-host.error";
/// On a dead letter: where the record was read (topic, partition, offset).
pub const TOPIC: &str = "pizza-host.topic";
/// See [`TOPIC`].
pub const PARTITION: &str = "pizza-host.partition";
/// See [`TOPIC`].
pub const OFFSET: &str = "pizza-host.offset";
/// On a dead letter: how many calls were made (1 plus the retries).
pub const ATTEMPTS: &str = "pizza-host.attempts";

/// `headers` with each `(name, value)` of `fields` appended.
pub fn append(
    headers: rdkafka::message::OwnedHeaders,
    fields: &[(&str, &str)],
) -> rdkafka::message::OwnedHeaders {
    fields.iter().fold(headers, |headers, (key, value)| {
        headers.insert(rdkafka::message::Header {
            key,
            value: Some(value.as_bytes()),
        })
    })
}

/// Whether a stage passes the input header `key` on: any header but the host's own, and the
/// trail only when `trusts_trail` (the input is another stage's output).
pub fn pass_on(key: &str, trusts_trail: bool) -> bool {
    !key.starts_with(PREFIX) || (trusts_trail && key == TRAIL)
}
