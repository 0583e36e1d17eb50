//! The veggies stage: sets the pizza's `veggies` field and keeps everything else as it was.
//!
//! Built as a WebAssembly component with `cargo component build --release`; the host calls
//! [`transform`](Guest::transform) once per event on the `pizza:stage/topping` world.

// wit-bindgen's generated ABI glue is the only unsafe and undocumented code here.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "../../wit", world: "topping", generate_all });

/// The choices for `veggies`. The original service's veggies; up to four distinct ones are joined with `" & "`.
pub const CHOICES: [&str; 6] = [
    "tomato",
    "olives",
    "onions",
    "peppers",
    "pineapple",
    "mushrooms",
];

struct Veggies;

impl Guest for Veggies {
    fn transform(event: String) -> Result<String, StageError> {
        let choice = pizza_stage_kit::pick_some(&CHOICES, &mut pizza_stage_kit::wasi_rng());
        pizza_stage_kit::enrich(&event, "veggies", choice).map_err(|err| StageError {
            message: err.to_string(),
            retryable: false,
        })
    }
}

export!(Veggies);

#[cfg(test)]
mod tests {
    #[test]
    fn choices_are_the_original_demos() {
        let distinct: std::collections::BTreeSet<&str> = super::CHOICES.into_iter().collect();
        assert_eq!(
            distinct,
            [
                "mushrooms",
                "olives",
                "onions",
                "peppers",
                "pineapple",
                "tomato"
            ]
            .into()
        );
    }
}
