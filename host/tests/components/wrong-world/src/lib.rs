//! A valid component of another world, which the host must refuse as a stage.
#![allow(unsafe_code, missing_docs)]

// Not `wit/`: cargo-component would generate bindings of its own for that folder.
wit_bindgen::generate!({ path: "greeter-wit", world: "greeter" });

struct Greeter;

impl Guest for Greeter {
    fn hello() -> String {
        "hello".into()
    }
}

export!(Greeter);
