//! A fifth stage for pipeline-edit tests: sprinkles oregano.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "../../../../wit", world: "topping", generate_all });

struct Oregano;

impl Guest for Oregano {
    fn transform(event: String) -> Result<String, StageError> {
        pizza_stage_kit::enrich(&event, "oregano", "sprinkled".into()).map_err(|err| StageError {
            message: err.to_string(),
            retryable: false,
        })
    }
}

export!(Oregano);
