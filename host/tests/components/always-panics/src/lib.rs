//! A stage that traps on every call, so it fails the host's smoke call.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "../../../../wit", world: "topping", generate_all });

struct AlwaysPanics;

impl Guest for AlwaysPanics {
    fn transform(event: String) -> Result<String, StageError> {
        panic!("always panics (given {} bytes)", event.len());
    }
}

export!(AlwaysPanics);
