//! `pizza-host invoke`: runs a stage on events without Kafka, printing what each became on
//! standard output and each failure, with its kind, on standard error.
//!
//! A topping's result is printed as its value. A processor's records are printed one JSON
//! object per line, `{"to": …, "value": …}` with `key` and `headers` where it set them; an
//! event it dropped prints nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Map, Value};

use crate::config::{DEMO_SAMPLE, default_compile_cache, default_stage_settings};
use crate::runtime::{Event, Output, PROCESSOR_WORLD, Runtime, Settings};

/// `invoke`: runs the stage and fails when any event failed.
pub fn run(path: &Path, how: &Invocation) -> anyhow::Result<()> {
    match invoke(path, how)? {
        0 => Ok(()),
        failed => Err(anyhow::anyhow!("{failed} event(s) failed")),
    }
}

/// How `invoke` runs a stage.
#[derive(Debug, Default)]
pub struct Invocation {
    /// A file holding one JSON document, a `.jsonl` file or `-` for one per line of standard
    /// input, or `None` for the sample pizza. Each is a value or a whole record (see
    /// [`InputRecord::parse`]).
    pub input: Option<PathBuf>,
    /// The stage's name: what its log lines are attributed to, and (with a seed) part of what
    /// seeds its randomness, so `--stage sauce --seed 7` repeats what `run --seed 7` gave the
    /// `sauce` stage for the same event.
    pub stage: String,
    /// Makes the stage's randomness reproducible.
    pub seed: Option<u64>,
    /// The stage's `config` table.
    pub config: BTreeMap<String, String>,
    /// A file holding the event the stage is smoke-called on when loaded (a stage's `sample`
    /// in pipeline.toml); `None` for the sample pizza.
    pub sample: Option<PathBuf>,
}

/// Runs the stage in `path` on each event of the invocation's input, printing what each
/// became on standard output and each error, with its kind, on standard error. Returns how
/// many events failed.
pub fn invoke(path: &Path, how: &Invocation) -> anyhow::Result<usize> {
    let lines: Vec<String> = match &how.input {
        None => vec![DEMO_SAMPLE.to_owned()],
        Some(p) if p == Path::new("-") => {
            non_empty_lines(std::io::stdin().lock()).context("cannot read standard input")?
        }
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            if p.extension().is_some_and(|ext| ext == "jsonl") {
                non_empty_lines(text.as_bytes())?
            } else {
                vec![text]
            }
        }
    };
    let records = lines
        .iter()
        .enumerate()
        .map(|(at, line)| {
            InputRecord::parse(line).with_context(|| format!("input line {}", at + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = Runtime::new(Some(default_compile_cache()))?.with_seed(how.seed);
    let sample = match &how.sample {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the sample {}", file.display()))?,
        None => DEMO_SAMPLE.to_owned(),
    };
    let settings = Settings {
        reuse_instances: false,
        sample: sample.trim().into(),
        ..default_stage_settings(how.config.clone())
    };
    let stage = runtime
        .load(&how.stage, path, &settings)
        .map_err(anyhow::Error::from)?;
    let processor = stage.world() == PROCESSOR_WORLD;
    let mut failed = 0;
    for record in &records {
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        let event = Event {
            value: record.value.as_bytes(),
            key: record.key.as_deref().map(str::as_bytes),
            headers: &headers,
            timestamp: record.timestamp,
            topic: "invoke",
            ..Event::default()
        };
        match stage.call(&event) {
            Ok(outputs) if processor => {
                for output in &outputs {
                    println!("{}", describe(output));
                }
            }
            Ok(outputs) => {
                for output in &outputs {
                    println!("{}", String::from_utf8_lossy(&output.value));
                }
            }
            Err(err) => {
                failed += 1;
                eprintln!("error ({}): {err}", err.kind());
            }
        }
    }
    Ok(failed)
}

/// The lines of `input` that hold something.
fn non_empty_lines(input: impl std::io::BufRead) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for line in input.lines() {
        let line = line?;
        if !line.trim().is_empty() {
            lines.push(line);
        }
    }
    Ok(lines)
}

/// One event of `invoke`'s input.
#[derive(Debug, PartialEq, Eq)]
struct InputRecord {
    value: String,
    key: Option<String>,
    headers: Vec<(String, String)>,
    timestamp: Option<i64>,
}

/// The fields a line may give when it is a whole record.
const RECORD_FIELDS: [&str; 4] = ["value", "key", "headers", "timestamp"];

impl InputRecord {
    /// A line is a whole record when it is a JSON object with a `value` and no field besides
    /// `value`, `key`, `headers` (an object of strings) and `timestamp` (milliseconds);
    /// anything else is a value. A record's `value` is used as text when it is a JSON string,
    /// else as the JSON it is.
    fn parse(line: &str) -> anyhow::Result<Self> {
        let as_value = || Self {
            value: line.trim().to_owned(),
            key: None,
            headers: Vec::new(),
            timestamp: None,
        };
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
            return Ok(as_value());
        };
        let is_record = fields.contains_key("value")
            && fields
                .keys()
                .all(|field| RECORD_FIELDS.contains(&field.as_str()));
        if !is_record {
            return Ok(as_value());
        }
        let text = |value: &Value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let headers = match fields.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(headers)) => headers
                .iter()
                .map(|(name, value)| (name.clone(), text(value)))
                .collect(),
            Some(_) => anyhow::bail!("`headers` must be an object of names and values"),
        };
        let timestamp = match fields.get("timestamp") {
            None | Some(Value::Null) => None,
            Some(stamp) => Some(
                stamp
                    .as_i64()
                    .context("`timestamp` must be milliseconds since the Unix epoch")?,
            ),
        };
        Ok(Self {
            value: text(&fields["value"]),
            key: fields.get("key").filter(|key| !key.is_null()).map(text),
            headers,
            timestamp,
        })
    }
}

/// A processor's record as one JSON line: its value as JSON where it is JSON, else as text.
fn describe(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.value);
    let value = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()));
    let mut line = Map::new();
    line.insert(
        "to".into(),
        output.to.clone().map_or(Value::Null, Value::String),
    );
    line.insert("value".into(), value);
    if let Some(key) = &output.key {
        line.insert(
            "key".into(),
            Value::String(String::from_utf8_lossy(key).into_owned()),
        );
    }
    if !output.headers.is_empty() {
        let headers = output.headers.iter().map(|(name, value)| {
            let value = Value::String(String::from_utf8_lossy(value).into_owned());
            (name.clone(), value)
        });
        line.insert("headers".into(), Value::Object(headers.collect()));
    }
    Value::Object(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_a_whole_record_only_when_it_says_so() {
        let record = InputRecord::parse(
            r#"{"value": {"user": "a"}, "key": "k1", "headers": {"h": "v"}, "timestamp": 5}"#,
        )
        .expect("parses");
        assert_eq!(record.value, r#"{"user":"a"}"#);
        assert_eq!(record.key.as_deref(), Some("k1"));
        assert_eq!(record.headers, [("h".to_owned(), "v".to_owned())]);
        assert_eq!(record.timestamp, Some(5));
        let text = InputRecord::parse(r#"{"value": "plain"}"#).expect("parses");
        assert_eq!(text.value, "plain");
        // A pizza, or an object with other fields beside `value`, is a value.
        for value in [
            r#"{"order_id": "1"}"#,
            r#"{"value": 1, "order_id": "1"}"#,
            "not json",
        ] {
            assert_eq!(InputRecord::parse(value).expect("parses").value, value);
        }
        assert!(InputRecord::parse(r#"{"value": 1, "headers": [1]}"#).is_err());
    }
}
