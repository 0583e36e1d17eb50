//! The sauce stage: sets the pizza's `sauce` field and keeps everything else as it was.
//!
//! Built as a WebAssembly component with `cargo component build --release`; the host calls
//! [`transform`](Guest::transform) once per event on the `pizza:stage/topping` world.

// wit-bindgen's generated ABI glue is the only unsafe and undocumented code here.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "../../wit", world: "topping", generate_all });

/// The default choices for `sauce`: the original service's.
pub use pizza_stage_kit::menu::SAUCES as CHOICES;

struct Sauce;

impl Guest for Sauce {
    fn transform(event: String) -> Result<String, StageError> {
        let configured = pizza::stage::config::get("choices");
        let options = pizza_stage_kit::options(configured.as_deref(), &CHOICES).map_err(refused)?;
        let choice = pizza_stage_kit::pick_one(&options, &mut pizza_stage_kit::wasi_rng());
        pizza::stage::log::log(pizza::stage::log::Level::Debug, &format!("sauce: {choice}"));
        pizza_stage_kit::enrich(&event, "sauce", choice).map_err(|err| refused(err.to_string()))
    }
}

/// An error that retrying cannot fix: the event or the stage's settings are the problem.
fn refused(message: String) -> StageError {
    StageError {
        message,
        retryable: false,
    }
}

export!(Sauce);

#[cfg(test)]
mod tests {
    #[test]
    fn choices_are_the_original_demos() {
        let distinct: std::collections::BTreeSet<&str> = super::CHOICES.into_iter().collect();
        assert_eq!(
            distinct,
            ["alfredo", "bbq", "extra", "light", "none", "regular"].into()
        );
    }
}
