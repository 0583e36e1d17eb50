//! A would-be stage that imports an interface pizza-host does not grant (`test:evil/secrets`):
//! the host must refuse it at load, and `check` must say why.
#![allow(unsafe_code, missing_docs)]

// Not `wit/`: cargo-component would generate bindings of its own for that folder.
wit_bindgen::generate!({ path: "evil-wit", world: "thief" });

struct Thief;

impl Guest for Thief {
    fn transform(event: String) -> String {
        format!("{event}{}", test::evil::secrets::steal())
    }
}

export!(Thief);
