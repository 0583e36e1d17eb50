//! The cheese stage: sets the pizza's `cheese` field and keeps everything else as it was.
//!
//! Built as a WebAssembly component with `cargo component build --release`; the host calls
//! [`transform`](Guest::transform) once per event on the `pizza:stage/topping` world.

// wit-bindgen's generated ABI glue is the only unsafe and undocumented code here.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "../../wit", world: "topping", generate_all });

/// The choices for `cheese`. The original service's list; repeats weigh a choice more.
pub const CHOICES: [&str; 7] = [
    "extra",
    "none",
    "three cheese",
    "goat cheese",
    "extra",
    "three cheese",
    "goat cheese",
];

struct Cheese;

impl Guest for Cheese {
    fn transform(event: String) -> Result<String, StageError> {
        let choice = pizza_stage_kit::pick_one(&CHOICES, &mut pizza_stage_kit::wasi_rng());
        pizza_stage_kit::enrich(&event, "cheese", choice).map_err(|err| StageError {
            message: err.to_string(),
            retryable: false,
        })
    }
}

export!(Cheese);

#[cfg(test)]
mod tests {
    #[test]
    fn choices_are_the_original_demos() {
        let distinct: std::collections::BTreeSet<&str> = super::CHOICES.into_iter().collect();
        assert_eq!(
            distinct,
            ["extra", "goat cheese", "none", "three cheese"].into()
        );
    }
}
