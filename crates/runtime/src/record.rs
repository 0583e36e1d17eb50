//! The record a stage is called with and the records it returns, as the host sees them: a
//! `topping` (0.1.0) gets the value and returns one new value; a `processor` (0.2.0) gets the
//! whole record and returns any number of records, each for one of the stage's outputs.

use crate::bindings_v2::pizza::stage::types as wit;

/// One Kafka record, borrowed from wherever the host holds it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Event<'a> {
    /// The record's value.
    pub value: &'a [u8],
    /// Its key, if it has one.
    pub key: Option<&'a [u8]>,
    /// Its headers, in order.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Milliseconds since the Unix epoch, if it carries a timestamp.
    pub timestamp: Option<i64>,
    /// Where it was read: topic, partition, offset.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

impl<'a> Event<'a> {
    /// A record with this value and nothing else (for tools and smoke calls).
    pub fn of_value(value: &'a str) -> Self {
        Self {
            value: value.as_bytes(),
            ..Self::default()
        }
    }

    /// The value as text, for a `topping` (which takes JSON text only).
    pub(crate) fn text(&self) -> Result<&'a str, crate::CallError> {
        std::str::from_utf8(self.value)
            .map_err(|err| crate::CallError::InvalidInput(format!("value is not UTF-8: {err}")))
    }

    /// The record as the `processor` world takes it.
    pub(crate) fn to_wit(self) -> wit::Event {
        wit::Event {
            value: data(self.value),
            key: self.key.map(data),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| wit::Header {
                    name: (*name).to_owned(),
                    value: value.to_vec(),
                })
                .collect(),
            timestamp: self.timestamp,
            topic: self.topic.to_owned(),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// Bytes as text when they are UTF-8.
fn data(bytes: &[u8]) -> wit::Data {
    match std::str::from_utf8(bytes) {
        Ok(text) => wit::Data::Text(text.to_owned()),
        Err(_) => wit::Data::Bytes(bytes.to_vec()),
    }
}

/// One record a call returned, checked against the stage's [`OutputRule`](crate::OutputRule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Its value.
    pub value: Vec<u8>,
    /// Its key; `None` keeps the input's.
    pub key: Option<Vec<u8>>,
    /// Headers to add to the input's.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The declared output it goes to; `None` for the first.
    pub to: Option<String>,
}

impl Output {
    /// A new value for the input's record, as a `topping` returns.
    pub(crate) fn value(value: String) -> Self {
        Self {
            value: value.into_bytes(),
            key: None,
            headers: Vec::new(),
            to: None,
        }
    }

    /// The value as text, if it is UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

impl From<wit::Output> for Output {
    fn from(output: wit::Output) -> Self {
        Self {
            value: bytes(output.value),
            key: output.key.map(bytes),
            headers: output
                .headers
                .into_iter()
                .map(|header| (header.name, header.value))
                .collect(),
            to: output.to,
        }
    }
}

fn bytes(data: wit::Data) -> Vec<u8> {
    match data {
        wit::Data::Text(text) => text.into_bytes(),
        wit::Data::Bytes(bytes) => bytes,
    }
}
