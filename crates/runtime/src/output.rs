//! The rule a stage's output is held to before it is sent on: a JSON object that keeps the
//! input fields its [`OutputRule`] names. Anything else goes to the dead-letter topic as
//! `invalid-output`.

use std::sync::Arc;

use crate::CallError;

/// What a stage's output must be besides a JSON object: which top-level fields of the input
/// it must keep unchanged (the pizza demo keeps `order_id`, which routes and counts every
/// pizza). An input without such a field needs nothing kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputRule {
    /// Fields of the input the output must carry with the same value.
    pub keep_fields: Arc<[String]>,
}

/// The stage's output must be a JSON object keeping the fields `rule` names, with their
/// input values. Only the top level is read (as borrowed text), and only kept fields are
/// parsed, so the check costs little beside the call.
pub(crate) fn check_output(
    rule: &OutputRule,
    input: &str,
    output: String,
) -> Result<String, CallError> {
    let invalid = CallError::InvalidOutput;
    let Some(out) = top_level(&output) else {
        return Err(invalid("stage output is not a JSON object".into()));
    };
    if rule.keep_fields.is_empty() {
        return Ok(output);
    }
    let Some(inp) = top_level(input) else {
        return Ok(output);
    };
    for field in rule.keep_fields.iter() {
        let Some(expected) = inp.get(field.as_str()) else {
            continue;
        };
        let same = out.get(field.as_str()).is_some_and(|kept| {
            serde_json::from_str::<serde_json::Value>(kept.get()).ok()
                == serde_json::from_str::<serde_json::Value>(expected.get()).ok()
        });
        if !same {
            return Err(invalid(format!(
                "stage output changed or dropped {field} (was {})",
                expected.get()
            )));
        }
    }
    Ok(output)
}

/// The top-level fields of a JSON object, their values as unparsed text; `None` if `text` is
/// not a JSON object.
fn top_level(text: &str) -> Option<std::collections::HashMap<&str, &serde_json::value::RawValue>> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keeps_order_id() -> OutputRule {
        OutputRule {
            keep_fields: Arc::from(vec!["order_id".to_owned()]),
        }
    }

    proptest::proptest! {
        /// Whatever a stage got and returned, checking its output never panics.
        #[test]
        fn checking_any_output_never_panics(input in "\\PC{0,200}", output in "\\PC{0,200}") {
            let _ = check_output(&keeps_order_id(), &input, output);
        }
    }

    #[test]
    fn output_must_be_an_object_keeping_the_rule_fields() {
        let rule = keeps_order_id();
        let input = r#"{"order_id":"7","sauce":""}"#;
        assert!(check_output(&rule, input, r#"{"order_id":"7","sauce":"bbq"}"#.into()).is_ok());
        assert!(check_output(&rule, input, r#"{"order_id": "7"}"#.into()).is_ok());
        for bad in [
            "[1]",
            "not json",
            r#"{"sauce":"bbq"}"#,
            r#"{"order_id":"8"}"#,
            r#"{"order_id":7}"#,
        ] {
            let err = check_output(&rule, input, bad.into())
                .err()
                .map(|e| e.kind());
            assert_eq!(err, Some("invalid-output"), "{bad}");
        }
        // An input without the field (not a pizza) only needs an object back.
        assert!(check_output(&rule, r#"{"x":1}"#, r#"{"x":2}"#.into()).is_ok());
        // Without a rule, any object will do.
        let none = OutputRule::default();
        assert!(check_output(&none, input, r#"{"user":"a"}"#.into()).is_ok());
        assert!(check_output(&none, input, "[1]".into()).is_err());
    }
}
