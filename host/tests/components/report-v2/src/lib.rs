//! A second version of the cheese reporter: it counts the same way, and renders the counts
//! inside `{"version": 2, "cheeses": …}`, so a test can tell which version is running and that
//! a swap kept the state.
#![allow(unsafe_code, missing_docs)]

use serde_json::{Map, Value, json};

wit_bindgen::generate!({ path: "../../../../wit", world: "report", generate_all });

struct ReportV2;

fn counts(state: &str) -> Map<String, Value> {
    match serde_json::from_str(state) {
        Ok(Value::Object(counts)) => counts,
        _ => Map::new(),
    }
}

impl Guest for ReportV2 {
    fn update(state: String, event: String) -> Result<String, StageError> {
        let refuse = |message: &str| StageError {
            message: message.into(),
            retryable: false,
        };
        let pizza: Value = serde_json::from_str(&event).map_err(|_| refuse("not JSON"))?;
        let cheese = pizza["cheese"]
            .as_str()
            .ok_or_else(|| refuse("no cheese"))?;
        let mut counts = counts(&state);
        let seen = counts.get(cheese).and_then(Value::as_u64).unwrap_or(0);
        counts.insert(cheese.to_owned(), (seen + 1).into());
        Ok(Value::Object(counts).to_string())
    }

    fn render(state: String) -> Result<String, StageError> {
        Ok(json!({ "version": 2, "cheeses": counts(&state) }).to_string())
    }
}

export!(ReportV2);
