//! A processor (contract 0.2) that says what it was given: its one record's value is a JSON
//! object with the input's value, key, headers, timestamp, topic, partition and offset; its
//! key is `echo-` and the input's key, and it adds the header `echoed: yes` (and tries to
//! add `pizza-host.stage`, which is the host's).

use pizza_stage_sdk::{Event, Output, Stage, StageError};
use serde_json::{Map, Value, json};

struct Echo;

impl Stage for Echo {
    fn process(event: Event) -> Result<Vec<Output>, StageError> {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let headers: Map<String, Value> = event
            .headers
            .iter()
            .map(|header| (header.name.clone(), Value::String(text(&header.value))))
            .collect();
        let key = event.key.as_ref().map(|key| text(key.as_bytes()));
        let echo = json!({
            "value": text(event.value.as_bytes()),
            "key": key,
            "headers": headers,
            "timestamp": event.timestamp,
            "topic": event.topic,
            "partition": event.partition,
            "offset": event.offset,
        });
        // The second header is the host's: a stage may not write it, and the host drops it.
        let record = Output::new(echo.to_string())
            .header("echoed", "yes")
            .header("pizza-host.stage", "forged");
        Ok(vec![match key {
            Some(key) => record.key(format!("echo-{key}")),
            None => record,
        }])
    }
}

pizza_stage_sdk::export!(Echo);
