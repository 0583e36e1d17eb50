//! The rule a stage's output is held to before it is sent on. A `topping` (0.1.0) returns a
//! JSON object that keeps the input fields its [`OutputRule`] names. A `processor` (0.2.0)
//! returns records for the outputs the stage declares, and where its input is a JSON object
//! holding a kept field, each record's value is a JSON object keeping it. Anything else goes to
//! the dead-letter topic as `invalid-output`.

use std::sync::Arc;

use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::{CallError, Output};

/// What a stage's output must be besides a JSON object: which top-level fields of the input
/// it must keep unchanged (the pizza demo keeps `order_id`, which routes and counts every
/// pizza). An input without such a field needs nothing kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputRule {
    /// Fields of the input the output must carry with the same value.
    pub keep_fields: Arc<[String]>,
    /// Whether `keep_fields` holds for a processor's records too (else only for a topping's
    /// output: contract 0.1.0 promises the fields a pizza is routed by are kept; 0.2.0 promises
    /// nothing of the kind unless the stage's settings ask for it).
    pub binds_processors: bool,
    /// The names of the outputs the stage declares, the default first: a `processor`'s record
    /// for any other is refused. Empty accepts any name (tools that run a stage alone).
    pub outputs: Arc<[String]>,
}

/// The stage's output must be a JSON object keeping the fields `rule` names, with their
/// input values. Each document is scanned once, at its top level: only the kept fields'
/// values are taken (as borrowed text), and they are parsed only if their text differs.
pub(crate) fn check_output(
    rule: &OutputRule,
    input: &str,
    output: String,
) -> Result<String, CallError> {
    let Some(kept) = fields_of(&output, &rule.keep_fields) else {
        return Err(CallError::InvalidOutput(
            "stage output is not a JSON object".into(),
        ));
    };
    if rule.keep_fields.is_empty() {
        return Ok(output);
    }
    let Some(expected) = fields_of(input, &rule.keep_fields) else {
        return Ok(output);
    };
    check_kept(rule, &expected, &kept)?;
    Ok(output)
}

/// A `processor`'s records must each go to a declared output; where the rule binds processors
/// and the input is a JSON object holding a field it keeps, each record's value must be a JSON
/// object keeping it (an
/// input that holds none, or is not JSON, needs nothing kept: the stage may turn it into
/// anything).
pub(crate) fn check_outputs(
    rule: &OutputRule,
    input: &[u8],
    outputs: Vec<Output>,
) -> Result<Vec<Output>, CallError> {
    let invalid = CallError::InvalidOutput;
    if !rule.outputs.is_empty() {
        let undeclared = outputs
            .iter()
            .filter_map(|output| output.to.as_deref())
            .find(|to| !rule.outputs.iter().any(|declared| declared == to));
        if let Some(to) = undeclared {
            return Err(invalid(format!(
                "stage returned a record for output `{to}`, which it does not declare (it declares: {})",
                rule.outputs.join(", ")
            )));
        }
    }
    let expected = std::str::from_utf8(input)
        .ok()
        .filter(|_| rule.binds_processors)
        .and_then(|input| fields_of(input, &rule.keep_fields))
        .filter(|expected| expected.iter().any(Option::is_some));
    if let Some(expected) = expected {
        for output in &outputs {
            let kept = output
                .text()
                .and_then(|value| fields_of(value, &rule.keep_fields));
            let Some(kept) = kept else {
                return Err(invalid(format!(
                    "stage output is not a JSON object keeping {}",
                    rule.keep_fields.join(", ")
                )));
            };
            check_kept(rule, &expected, &kept)?;
        }
    }
    Ok(outputs)
}

/// Each field the input holds (`expected`) is in the output (`kept`) with the same value.
fn check_kept(
    rule: &OutputRule,
    expected: &[Option<&RawValue>],
    kept: &[Option<&RawValue>],
) -> Result<(), CallError> {
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
            return Err(CallError::InvalidOutput(format!(
                "stage output changed or dropped {field} (was {})",
                expected.get()
            )));
        }
    }
    Ok(())
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
            binds_processors: true,
            outputs: Arc::from(vec!["main".to_owned(), "rejected".to_owned()]),
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

    #[test]
    fn a_processors_records_go_to_declared_outputs_and_keep_what_a_pizza_keeps() {
        let rule = keeps_order_id();
        let record = |value: &str, to: Option<&str>| Output {
            value: value.as_bytes().to_vec(),
            key: None,
            headers: Vec::new(),
            to: to.map(str::to_owned),
        };
        let pizza = br#"{"order_id":"7"}"#;
        let split = vec![
            record(r#"{"order_id":"7","half":1}"#, None),
            record(r#"{"order_id":"7","half":2}"#, Some("rejected")),
        ];
        assert_eq!(check_outputs(&rule, pizza, split.clone()), Ok(split));
        assert_eq!(check_outputs(&rule, pizza, Vec::new()), Ok(Vec::new()));
        for bad in [
            vec![record(r#"{"order_id":"7"}"#, Some("elsewhere"))],
            vec![record(r#"{"order_id":"8"}"#, None)],
            vec![
                record(r#"{"order_id":"7"}"#, None),
                record("plain text", None),
            ],
        ] {
            let err = check_outputs(&rule, pizza, bad.clone()).err();
            assert_eq!(err.map(|e| e.kind()), Some("invalid-output"), "{bad:?}");
        }
        // Not a pizza (or not JSON at all): any value, to a declared output.
        let anything = vec![record("plain text", Some("main")), record("\u{1}", None)];
        assert!(check_outputs(&rule, br#"{"user":"a"}"#, anything.clone()).is_ok());
        assert!(check_outputs(&rule, &[0xff, 0xfe], anything).is_ok());
        // No declared outputs: any name goes (a stage run alone); a rule that binds toppings
        // alone leaves a processor free.
        let alone = OutputRule {
            binds_processors: false,
            outputs: Arc::from(Vec::new()),
            ..rule
        };
        assert!(check_outputs(&alone, pizza, vec![record("x", Some("any"))]).is_ok());
    }
}
