//! A router (contract 0.2): sends an event whose JSON field `field` (config; default `amount`)
//! is a number no larger than `max` (config; default 100) to the stage's first output, and
//! any other event to the output named by `rejected` (config; default `rejected`), with a
//! `reason` header saying why. Nothing is dead-lettered: a bad event is a rejected one.

use pizza_stage_sdk::{Event, Output, Stage, StageError, config};
use serde_json::Value;

struct Router;

impl Stage for Router {
    fn process(event: Event) -> Result<Vec<Output>, StageError> {
        let field = config::get("field").unwrap_or_else(|| "amount".into());
        let rejected = config::get("rejected").unwrap_or_else(|| "rejected".into());
        let max: f64 = match config::get("max") {
            None => 100.0,
            Some(max) => max
                .parse()
                .map_err(|_| StageError::refused(format!("config max: {max:?} is not a number")))?,
        };
        let reject = |reason: String| {
            let record = Output::new(event.value.clone()).to(&rejected);
            Ok(vec![record.header("reason", reason)])
        };
        let Some(text) = event.text() else {
            return reject("the value is not text".into());
        };
        let amount = match serde_json::from_str::<Value>(text) {
            Ok(document) => document.get(&field).and_then(Value::as_f64),
            Err(_) => return reject("the value is not JSON".into()),
        };
        match amount {
            Some(amount) if amount <= max => Ok(vec![Output::new(text)]),
            Some(amount) => reject(format!("{field} {amount} is over {max}")),
            None => reject(format!("no number in {field}")),
        }
    }
}

pizza_stage_sdk::export!(Router);
