//! Write a pizza-host stage in Rust against the `pizza:stage/processor@0.2.0` world: one Kafka
//! record in, zero or more records out. The crate carries the contract's WIT (`wit/`, the
//! same files as the host's `wit/v0.2`), so a stage crate anywhere depends on this crate alone
//! (by path or git) and builds with `cargo component build --release`:
//!
//! ```ignore
//! use pizza_stage_sdk::{Event, Output, Stage, StageError};
//!
//! struct Shout;
//!
//! impl Stage for Shout {
//!     fn process(event: Event) -> Result<Vec<Output>, StageError> {
//!         let text = event.text().ok_or_else(|| StageError::refused("not text"))?;
//!         Ok(vec![Output::new(text.to_uppercase())])
//!     }
//! }
//!
//! pizza_stage_sdk::export!(Shout);
//! ```
//!
//! Return an empty list to drop the event (a filter), several records to split it, and
//! [`Output::to`] to send one to another of the stage's declared outputs (a router). The
//! guarantees the host gives (once per event, order, failures) are in the WIT's docs.
//!
//! The stage crate is a `cdylib` (`[lib] crate-type = ["cdylib"]`).

// wit-bindgen's generated ABI glue is the only unsafe and undocumented code here.
#![allow(unsafe_code, missing_docs)]

// The generated code names its runtime through this crate, so a stage needs no
// `wit-bindgen` dependency of its own.
extern crate self as pizza_stage_sdk;

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen::rt;
}

/// The generated bindings of the world (the `export!` macro names them by this path).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "processor",
        pub_export_macro: true,
        default_bindings_module: "pizza_stage_sdk::bindings",
        runtime_path: "pizza_stage_sdk::__private::rt",
        generate_all,
    });
}

/// What a stage implements: `process`, called once per event.
pub use Guest as Stage;
pub use bindings::pizza::stage::types::{Data, Event, Header, Output, StageError};
pub use bindings::pizza::stage::{config, log};
pub use bindings::{Guest, export};

impl Data {
    /// The data as text, if it is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Data::Text(text) => Some(text),
            Data::Bytes(_) => None,
        }
    }

    /// The data's bytes, whatever its kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Data::Text(text) => text.as_bytes(),
            Data::Bytes(bytes) => bytes,
        }
    }
}

impl From<String> for Data {
    fn from(text: String) -> Self {
        Data::Text(text)
    }
}

impl From<&str> for Data {
    fn from(text: &str) -> Self {
        Data::Text(text.to_owned())
    }
}

impl From<Vec<u8>> for Data {
    fn from(bytes: Vec<u8>) -> Self {
        Data::Bytes(bytes)
    }
}

impl Event {
    /// The value as text, if it is valid UTF-8.
    pub fn text(&self) -> Option<&str> {
        self.value.as_text()
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let header = self.headers.iter().find(|header| header.name == name)?;
        Some(&header.value)
    }
}

impl Output {
    /// A record with this value, for the stage's first output, keyed as the input.
    pub fn new(value: impl Into<Data>) -> Self {
        Self {
            value: value.into(),
            key: None,
            headers: Vec::new(),
            to: None,
        }
    }

    /// The same record, for the output named `output` (declared in `pipeline.toml`).
    pub fn to(mut self, output: &str) -> Self {
        self.to = Some(output.to_owned());
        self
    }

    /// The same record, with this key instead of the input's.
    pub fn key(mut self, key: impl Into<Data>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The same record, with one more header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header {
            name: name.to_owned(),
            value: value.into(),
        });
        self
    }
}

impl StageError {
    /// An error in the event itself (or the stage's settings): retrying cannot help, so the
    /// event goes to the dead-letter topic at once.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// A passing condition: the host calls again with backoff, up to the stage's `retries`.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

/// Writes a line to the host's log under the stage's name.
pub fn log(level: log::Level, message: &str) {
    log::log(level, message);
}
