//! A second version of the sauce stage with a value no real sauce has, so a test can tell
//! which version processed each pizza.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "../../../../wit", world: "topping", generate_all });

struct SauceV2;

impl Guest for SauceV2 {
    fn transform(event: String) -> Result<String, StageError> {
        pizza_stage_kit::enrich(&event, "sauce", "v2-marinara".into()).map_err(|err| StageError {
            message: err.to_string(),
            retryable: false,
        })
    }
}

export!(SauceV2);
