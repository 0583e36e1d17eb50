//! A filter (contract 0.2): passes on the events whose JSON field `field` has the value
//! `equals`, and drops the rest. Both come from the stage's config (defaults: `keep`, `true`);
//! a string field is compared by its text, any other by its JSON.

use pizza_stage_sdk::{Event, Output, Stage, StageError, config};
use serde_json::Value;

struct Filter;

impl Stage for Filter {
    fn process(event: Event) -> Result<Vec<Output>, StageError> {
        let field = config::get("field").unwrap_or_else(|| "keep".into());
        let wanted = config::get("equals").unwrap_or_else(|| "true".into());
        let text = event
            .text()
            .ok_or_else(|| StageError::refused("the value is not text"))?;
        let document: Value = serde_json::from_str(text)
            .map_err(|err| StageError::refused(format!("the value is not JSON: {err}")))?;
        let keep = match document.get(&field) {
            Some(Value::String(value)) => *value == wanted,
            Some(value) => serde_json::to_string(value).is_ok_and(|json| json == wanted),
            None => false,
        };
        // Passed on as it came: the same value, key and headers.
        Ok(if keep {
            vec![Output::new(text)]
        } else {
            Vec::new()
        })
    }
}

pizza_stage_sdk::export!(Filter);
