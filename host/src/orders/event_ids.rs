//! The ids a pizza event carries (`order_id`, `pizza_id`), read without building the rest of
//! the document: the stage output check and the order view read them for every record.

use serde::Deserialize;
use serde_json::Value;

/// An event's ids, as whatever JSON values hold them; the rest of the text is only validated.
#[derive(Debug, Deserialize)]
pub(crate) struct EventIds {
    #[serde(default)]
    pub order_id: Option<Value>,
    #[serde(default)]
    pub pizza_id: Option<Value>,
}

impl EventIds {
    /// `text`'s ids, if `text` is a JSON object (a struct would also accept an array).
    pub fn of(text: &str) -> Option<Self> {
        if !text.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(text).ok()
    }
}
