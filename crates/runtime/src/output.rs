//! The rule a stage's output is held to before it is sent on: a JSON object that keeps the
//! input fields its [`OutputRule`] names. Anything else goes to the dead-letter topic as
//! `invalid-output`.

use std::sync::Arc;

use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

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
/// input values. Each document is scanned once, at its top level: only the kept fields'
/// values are taken (as borrowed text), and they are parsed only if their text differs.
pub(crate) fn check_output(
    rule: &OutputRule,
    input: &str,
    output: String,
) -> Result<String, CallError> {
    let invalid = CallError::InvalidOutput;
    let Some(kept) = fields_of(&output, &rule.keep_fields) else {
        return Err(invalid("stage output is not a JSON object".into()));
    };
    if rule.keep_fields.is_empty() {
        return Ok(output);
    }
    let Some(expected) = fields_of(input, &rule.keep_fields) else {
        return Ok(output);
    };
    for ((field, expected), kept) in rule.keep_fields.iter().zip(expected).zip(kept) {
        let Some(expected) = expected else {
            continue;
        };
        let same = kept.is_some_and(|kept| {
            kept.get() == expected.get()
                || serde_json::from_str::<serde_json::Value>(kept.get()).ok()
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

/// The values of `fields` in the JSON object `text`, as unparsed text (the last one where a
/// name repeats), in one pass that skips every other value; `None` if `text` is not a JSON
/// object.
fn fields_of<'t>(text: &'t str, fields: &[String]) -> Option<Vec<Option<&'t RawValue>>> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let values = (&mut deserializer)
        .deserialize_map(FieldsVisitor { fields })
        .ok()?;
    deserializer.end().ok()?;
    Some(values)
}

/// Takes the values of `fields` from a JSON object, skipping the rest.
struct FieldsVisitor<'f> {
    fields: &'f [String],
}

impl<'de> Visitor<'de> for FieldsVisitor<'_> {
    type Value = Vec<Option<&'de RawValue>>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = vec![None; self.fields.len()];
        while let Some(field) = map.next_key_seed(FieldName(self.fields))? {
            match field {
                Some(at) => values[at] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

/// A key of the object: which of the fields it names, if any (compared without a copy).
struct FieldName<'f>(&'f [String]);

impl<'de> DeserializeSeed<'de> for FieldName<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldName<'_> {
    type Value = Option<usize>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a field name")
    }

    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|field| field == name))
    }
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
        // Read as JSON, not as text: spacing, escapes, nesting and the last of repeated names.
        for good in [
            r#" { "x" : {"order_id":"8","y":[1,{"z":null}]} , "order_id" : "7" } "#,
            r#"{"order\u005fid":"\u0037"}"#,
            r#"{"order_id":"8","order_id":"7"}"#,
        ] {
            assert!(check_output(&rule, input, good.into()).is_ok(), "{good}");
        }
        for bad in [
            "[1]",
            "not json",
            r#"{"sauce":"bbq"}"#,
            r#"{"order_id":"8"}"#,
            r#"{"order_id":7}"#,
            r#"{"order_id":"7","order_id":"8"}"#,
            r#"{"order_id":"7"} trailing"#,
            r#"{"order_id":"7""#,
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
