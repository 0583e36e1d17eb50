//! `pipeline.toml` read as users write it: defaults, the shipped files, typos and bad values.
use std::path::Path;

use super::*;

const MINIMAL: &str = r#"
    [kafka]
    "bootstrap.servers" = "127.0.0.1:9092"

    [[stage]]
    name = "sauce"
    component = "sauce.wasm"
    input = "pizza"
    output = "pizza-with-sauce"
"#;

#[test]
fn defaults_match_the_original_demo() {
    let p = Pipeline::parse(MINIMAL, Path::new("/etc/pizza")).expect("valid");
    assert_eq!(p.http.listen, "127.0.0.1:5000".parse().expect("addr"));
    assert_eq!(p.http.max_order_count, 100);
    assert_eq!(p.topics.partitions, 3);
    assert_eq!(p.orders.topic, "pizza");
    assert_eq!(p.orders.completed_topic, "pizza-with-veggies");
    assert_eq!(p.stages[0].component, Path::new("/etc/pizza/sauce.wasm"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

    /// Whatever the file holds, parsing answers Ok or an error, never a panic.
    #[test]
    fn any_text_parses_or_fails_cleanly(text in "\\PC{0,400}") {
        let _ = Pipeline::parse(&text, Path::new("/p"));
    }

    /// Values of any shape in every slot of a stage: Ok or an error, never a panic.
    #[test]
    fn any_values_in_a_stage_parse_or_fail_cleanly(
        name in "\\PC{0,20}",
        topic in "\\PC{0,30}",
        number in proptest::num::i64::ANY,
        bootstrap in "\\PC{0,40}",
    ) {
        let text = format!(
            "[kafka]\n\"bootstrap.servers\" = {bootstrap:?}\n[[stage]]\nname = {name:?}\n\
             component = \"s.wasm\"\ninput = {topic:?}\noutput = \"out\"\ntimeout_ms = {number}\n\
             [[join]]\nname = {name:?}\ninputs = [{topic:?}, \"b\"]\noutput = \"o\"\n"
        );
        let _ = Pipeline::parse(&text, Path::new("/p"));
    }
}

#[test]
fn the_shipped_pipelines_are_valid() {
    let chain = Pipeline::parse(include_str!("../../../pipeline.toml"), Path::new("/p"));
    let chain = chain.expect("pipeline.toml");
    assert_eq!(chain.stages.len(), 4);
    assert_eq!(
        chain.reports[0].changelog.as_deref(),
        Some("pizza-host-report-cheese")
    );
    let fanout = Pipeline::parse(
        include_str!("../../../pipeline-fanout.toml"),
        Path::new("/p"),
    );
    let fanout = fanout.expect("pipeline-fanout.toml");
    assert!(fanout.stages.iter().all(|s| s.input == "pizza"));
    assert_eq!(fanout.joins[0].inputs.len(), 4);
    assert_eq!(
        fanout.joins[0].dead_letter_topic(),
        "pizza-with-veggies.dlq"
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let text = MINIMAL.replace("input =", "inptu = \"x\"\ninput =");
    let err = Pipeline::parse(&text, Path::new("."))
        .expect_err("typo")
        .to_string();
    assert!(err.contains("inptu"), "{err}");
    let err = Pipeline::parse("[htp]\nlisten = \"1.2.3.4:5\"", Path::new("."))
        .expect_err("typo")
        .to_string();
    assert!(err.contains("htp"), "{err}");
}

#[test]
fn kafka_values_expand_environment_variables() {
    let text = r#"
        [kafka]
        "bootstrap.servers" = "${PIZZA_TEST_UNSET_BOOTSTRAP:-localhost:1234}"
        "linger.ms" = 5
        "enable.idempotence" = true
    "#;
    let p = Pipeline::parse(text, Path::new(".")).expect("valid");
    let props = p.kafka_properties().expect("expands");
    assert_eq!(props["bootstrap.servers"], "localhost:1234");
    assert_eq!(props["linger.ms"], "5");
    assert_eq!(props["enable.idempotence"], "true");

    let text = "[kafka]\n\"sasl.password\" = \"${PIZZA_TEST_UNSET_SECRET}\"";
    let err = Pipeline::parse(text, Path::new("."))
        .expect_err("unset")
        .to_string();
    assert!(
        err.contains("sasl.password") && err.contains("PIZZA_TEST_UNSET_SECRET"),
        "{err}"
    );
}

#[test]
fn invalid_stages_are_rejected_with_the_reason() {
    let cases = [
        (MINIMAL.replace("pizza-with-sauce", "pizza"), "same topic"),
        (
            MINIMAL.replace("\"pizza\"", "\"bad topic\""),
            "not a valid topic name",
        ),
        (MINIMAL.replace("\"sauce\"", "\"\""), "name must be"),
        (
            format!(
                "{MINIMAL}\n{}",
                &MINIMAL[MINIMAL.find("[[stage]]").unwrap_or(0)..]
            ),
            "same name",
        ),
    ];
    for (text, says) in cases {
        let err = Pipeline::parse(&text, Path::new("."))
            .expect_err(says)
            .to_string();
        assert!(err.contains(says), "{says}: {err}");
    }
}
