//! The cheese reporter: counts how often each cheese was chosen, like the original demo's
//! cheese-reporter service, as a component of the `pizza:stage/report` world.
//!
//! The state is the report itself, `{"<cheese>": <count>, …}`: the host keeps it (durably, in
//! step with its position in the topic) and hands it to every call.

// wit-bindgen's generated ABI glue is the only unsafe and undocumented code here.
#![allow(unsafe_code, missing_docs)]

use serde_json::{Map, Value};

wit_bindgen::generate!({ path: "../../wit", world: "report", generate_all });

struct CheeseReporter;

impl Guest for CheeseReporter {
    fn update(state: String, event: String) -> Result<String, StageError> {
        count(&state, &event).map_err(|message| StageError {
            message,
            retryable: false,
        })
    }

    fn render(state: String) -> Result<String, StageError> {
        Ok(Value::Object(counts(&state).unwrap_or_default()).to_string())
    }
}

/// The counts in `state` (none yet for `null`).
fn counts(state: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(state) {
        Ok(Value::Object(counts)) => Some(counts),
        _ => None,
    }
}

/// `state` with the cheese of `event` counted once more.
pub fn count(state: &str, event: &str) -> Result<String, String> {
    let pizza: Value =
        serde_json::from_str(event).map_err(|err| format!("event is not JSON: {err}"))?;
    let cheese = pizza
        .get("cheese")
        .and_then(Value::as_str)
        .ok_or("event has no cheese")?;
    let mut counts = counts(state).unwrap_or_default();
    let seen = counts.get(cheese).and_then(Value::as_u64).unwrap_or(0);
    counts.insert(cheese.to_owned(), (seen + 1).into());
    Ok(Value::Object(counts).to_string())
}

export!(CheeseReporter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_cheese_and_rejects_events_without_one() {
        let state = count("null", r#"{"cheese":"extra"}"#).expect("valid");
        let state = count(&state, r#"{"cheese":"extra","sauce":"bbq"}"#).expect("valid");
        let state = count(&state, r#"{"cheese":"none"}"#).expect("valid");
        let counts: Value = serde_json::from_str(&state).expect("valid");
        assert_eq!(counts, serde_json::json!({"extra": 2, "none": 1}));
        assert!(count(&state, r#"{"sauce":"bbq"}"#).is_err());
        assert!(count(&state, "not json").is_err());
    }
}
