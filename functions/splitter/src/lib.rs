//! A splitter (contract 0.2): an event whose JSON field `field` (config; default `items`) is an
//! array becomes one record per element, `{…the event's other fields, "item": element,
//! "index": i}`, on the output named by `to` (config; default `items`), and one summary record,
//! the event without the array plus `"count": n`, on the stage's first output. An event
//! without such an array passes on unchanged.

use pizza_stage_sdk::{Event, Output, Stage, StageError, config};
use serde_json::{Map, Value};

struct Splitter;

impl Stage for Splitter {
    fn process(event: Event) -> Result<Vec<Output>, StageError> {
        let field = config::get("field").unwrap_or_else(|| "items".into());
        let to = config::get("to").unwrap_or_else(|| "items".into());
        let text = event
            .text()
            .ok_or_else(|| StageError::refused("the value is not text"))?;
        let mut document: Map<String, Value> = serde_json::from_str(text)
            .map_err(|err| StageError::refused(format!("not a JSON object: {err}")))?;
        let Some(Value::Array(items)) = document.remove(&field) else {
            return Ok(vec![Output::new(text)]);
        };
        let mut records = Vec::with_capacity(items.len() + 1);
        for (index, item) in items.into_iter().enumerate() {
            let mut part = document.clone();
            part.insert("item".into(), item);
            part.insert("index".into(), index.into());
            records.push(Output::new(Value::Object(part).to_string()).to(&to));
        }
        document.insert("count".into(), records.len().into());
        records.insert(0, Output::new(Value::Object(document).to_string()));
        Ok(records)
    }
}

pizza_stage_sdk::export!(Splitter);
