//! Helpers shared by the topping stages, kept free of WebAssembly bindings so the choice
//! rules are unit-tested natively with a seeded generator.
//!
//! A stage is three steps: parse the event, set its one field, serialize it with every other
//! field untouched. [`enrich`] does the JSON part; [`pick_one`] and [`pick_some`] are the
//! original demo's two ways of choosing a topping; [`wasi_rng`] is the random source, which on
//! a WebAssembly target reads `wasi:random`, the host-controlled generator.

pub mod menu;

use rand::seq::IndexedRandom;
use rand::{Rng, TryRngCore};
use serde_json::{Map, Value};

/// The random source a stage should use. Inside a component it draws from `wasi:random`, so
/// the host decides where the randomness comes from (and can seed it for reproducible runs).
pub fn wasi_rng() -> impl Rng {
    rand::rngs::OsRng.unwrap_err()
}

/// Why an event could not be enriched: the input is not a JSON object.
#[derive(Debug, PartialEq, Eq)]
pub struct NotAnObject(pub String);

impl std::fmt::Display for NotAnObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `event` as a JSON object, sets `field` to `value`, and returns the serialized object
/// with every other field as it was (in its original order).
pub fn enrich(event: &str, field: &str, value: String) -> Result<String, NotAnObject> {
    let mut pizza: Map<String, Value> = match serde_json::from_str(event) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Err(NotAnObject(format!(
                "expected a JSON object, got {}",
                json_kind(&other)
            )));
        }
        Err(err) => return Err(NotAnObject(format!("input is not valid JSON: {err}"))),
    };
    pizza.insert(field.to_owned(), Value::String(value));
    Ok(Value::Object(pizza).to_string())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The options a stage draws from: the list its `choices` setting gives (comma-separated, as
/// set in `pipeline.toml`), or `defaults` when the setting is absent. A setting that names no
/// option is an error rather than a silent fallback, so a typo in the pipeline is noticed.
pub fn options<'a>(
    configured: Option<&'a str>,
    defaults: &[&'a str],
) -> Result<Vec<&'a str>, String> {
    let Some(list) = configured else {
        return Ok(defaults.to_vec());
    };
    let options: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|option| !option.is_empty())
        .collect();
    if options.is_empty() {
        return Err(format!("config `choices` names no option: {list:?}"));
    }
    Ok(options)
}

/// One option, drawn uniformly. A repeated entry in `options` weighs that choice more, as in
/// the original services' lists.
pub fn pick_one(options: &[&str], rng: &mut impl Rng) -> String {
    options.choose(rng).copied().unwrap_or("none").to_owned()
}

/// The original meats/veggies rule: draw `n` uniformly in `0..=4`; `n = 0` gives `"none"`,
/// otherwise draw `n` times from `options` and join the distinct picks with `" & "`, in the
/// order they were first drawn.
pub fn pick_some(options: &[&str], rng: &mut impl Rng) -> String {
    let draws = rng.random_range(0..=4);
    let mut picked: Vec<&str> = Vec::with_capacity(draws);
    for _ in 0..draws {
        if let Some(&item) = options.choose(rng)
            && !picked.contains(&item)
        {
            picked.push(item);
        }
    }
    if picked.is_empty() {
        "none".to_owned()
    } else {
        picked.join(" & ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const ITEMS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

    #[test]
    fn enrich_sets_the_field_and_keeps_the_rest_in_order() {
        let event = "{\n    \"order_id\": \"42\",\n    \"sauce\": \"\",\n    \"extra\": [1, 2]\n}";
        let out = enrich(event, "sauce", "bbq".into()).expect("object");
        assert_eq!(out, r#"{"order_id":"42","sauce":"bbq","extra":[1,2]}"#);
    }

    #[test]
    fn enrich_adds_a_missing_field_at_the_end() {
        let out = enrich(r#"{"order_id":"1"}"#, "cheese", "extra".into()).expect("object");
        assert_eq!(out, r#"{"order_id":"1","cheese":"extra"}"#);
    }

    #[test]
    fn enrich_rejects_what_is_not_an_object() {
        for (input, says) in [
            ("[1]", "an array"),
            ("\"x\"", "a string"),
            ("7", "a number"),
            ("null", "null"),
            ("{", "not valid JSON"),
            ("", "not valid JSON"),
        ] {
            let err = enrich(input, "sauce", "bbq".into()).expect_err(input);
            assert!(err.0.contains(says), "{input:?} -> {err}");
        }
    }

    #[test]
    fn options_come_from_the_setting_or_the_defaults() {
        let defaults = ["a", "b"];
        assert_eq!(options(None, &defaults), Ok(vec!["a", "b"]));
        assert_eq!(
            options(Some(" x, y ,,z"), &defaults),
            Ok(vec!["x", "y", "z"])
        );
        assert!(options(Some(" , "), &defaults).is_err());
    }

    #[test]
    fn pick_one_stays_in_the_set_and_reaches_every_option() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1_000 {
            let choice = pick_one(&ITEMS, &mut rng);
            assert!(ITEMS.contains(&choice.as_str()), "{choice}");
            seen.insert(choice);
        }
        assert_eq!(seen.len(), ITEMS.len());
    }

    #[test]
    fn pick_some_never_repeats_and_says_none_for_zero_draws() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut sizes = [0usize; 5];
        for _ in 0..5_000 {
            let choice = pick_some(&ITEMS, &mut rng);
            if choice == "none" {
                sizes[0] += 1;
                continue;
            }
            let parts: Vec<&str> = choice.split(" & ").collect();
            let distinct: std::collections::BTreeSet<_> = parts.iter().collect();
            assert_eq!(distinct.len(), parts.len(), "repeated item in {choice}");
            assert!(parts.iter().all(|p| ITEMS.contains(p)), "{choice}");
            assert!(parts.len() <= 4, "{choice}");
            sizes[parts.len()] += 1;
        }
        // n = 0 is drawn one time in five; every size from none to four items occurs.
        assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");
        assert!((800..1_200).contains(&sizes[0]), "{sizes:?}");
    }
}
