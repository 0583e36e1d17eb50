//! `pipeline.toml` read as users write it: defaults, the shipped files, typos and bad values.
use std::collections::HashSet;
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
    assert_eq!(p.guarantee, crate::config::Guarantee::ExactlyOnce);
    assert_eq!(p.compile_cache_max_mib, 1024);
    let stage = &p.stages[0];
    assert_eq!((stage.timeout_ms, stage.memory_mib), (1_000, 64));
    assert_eq!(stage.keep_fields, None);
    assert_eq!(&*stage.settings().output_rule.keep_fields, ["order_id"]);
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
        (
            MINIMAL.replace("\"sauce\"", "\"orders\""),
            "would be those of the order door",
        ),
        (
            format!(
                "{}\n[[join]]\nname = \"paid\"\ninputs = [\"a\", \"b\"]\noutput = \"c\"\n",
                MINIMAL.replace("\"sauce\"", "\"join-paid\"")
            ),
            "would be those of join \"paid\"",
        ),
    ];
    for (text, says) in cases {
        let err = Pipeline::parse(&text, Path::new("."))
            .expect_err(says)
            .to_string();
        assert!(err.contains(says), "{says}: {err}");
    }
}

/// The admin API listens on localhost by default, is off without a token, and refuses a
/// token shorter than 16 characters (surrounding whitespace, as a file's newline, not
/// counted).
#[test]
fn the_admin_api_is_local_by_default_off_without_a_token_and_refuses_short_tokens() {
    let p = Pipeline::parse(MINIMAL, Path::new("/etc/pizza")).expect("valid");
    assert_eq!(p.admin.listen, "127.0.0.1:5001".parse().expect("addr"));
    if std::env::var(ADMIN_TOKEN_ENV).is_err() {
        assert_eq!(p.admin.token().expect("no token is no error"), None);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    for (token, accepted) in [
        ("0123456789abcde", false),
        ("  0123456789abcde\n", false),
        ("0123456789abcdef", true),
        ("0123456789abcdef\n", true),
    ] {
        let file = dir.path().join("token");
        std::fs::write(&file, token).expect("write");
        let admin = AdminConfig {
            token_file: Some(file),
            ..AdminConfig::default()
        };
        match admin.token() {
            Ok(got) => {
                assert!(accepted, "{token:?} accepted");
                assert_eq!(got.as_deref(), Some(token.trim()));
            }
            Err(err) => {
                assert!(!accepted, "{token:?} refused: {err:#}");
                assert!(format!("{err:#}").contains("16 characters"), "{err:#}");
            }
        }
    }
}

/// A pipeline built from parts, some of them wrong: what the generator wrote and whether the
/// rules of `pipeline.toml` accept it, worked out independently of the parser.
#[derive(Debug, Clone)]
struct Generated {
    text: String,
    valid: bool,
}

/// Topics to pick from: the last one is not a legal topic name.
const TOPIC_POOL: [&str; 5] = ["pizza", "pizza-with-sauce", "out", "side.b", "bad topic!"];

fn generated_pipeline() -> impl proptest::strategy::Strategy<Value = Generated> {
    use proptest::prelude::*;
    let topic = proptest::sample::select(&TOPIC_POOL[..]);
    let stage = (
        proptest::sample::select(&["sauce", "cheese", "bad name", "orders", "join-j1"][..]),
        topic.clone(),
        topic.clone(),
        proptest::sample::select(&[0u64, 1, 1_000][..]),
        proptest::sample::select(&[0usize, 64][..]),
        0u32..12,
    );
    let join = (
        proptest::sample::select(&["j1", "j2"][..]),
        proptest::collection::vec(topic.clone(), 0..4),
        topic,
        proptest::sample::select(&[0u64, 60_000][..]),
    );
    (
        -1i32..4,
        proptest::collection::vec(stage, 0..5),
        proptest::collection::vec(join, 0..3),
    )
        .prop_map(|(partitions, stages, joins)| {
            let legal = |topic: &str| topic != "bad topic!";
            let mut text = format!(
                "[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n[topics]\npartitions = {partitions}\n"
            );
            let mut valid = partitions >= 1;
            let mut names = HashSet::new();
            for (name, input, output, timeout_ms, memory_mib, retries) in stages {
                text.push_str(&format!(
                    "[[stage]]\nname = {name:?}\ncomponent = \"s.wasm\"\ninput = {input:?}\n\
                     output = {output:?}\ntimeout_ms = {timeout_ms}\nmemory_mib = {memory_mib}\n\
                     retries = {retries}\n"
                ));
                valid &= name != "bad name"
                    && name != "orders"
                    && names.insert(name)
                    && input != output
                    && timeout_ms > 0
                    && memory_mib > 0
                    && retries <= 10
                    && legal(input)
                    && legal(output);
            }
            let mut join_names = HashSet::new();
            for (name, inputs, output, expire_after_ms) in joins {
                text.push_str(&format!(
                    "[[join]]\nname = {name:?}\ninputs = {inputs:?}\noutput = {output:?}\n\
                     expire_after_ms = {expire_after_ms}\n"
                ));
                let distinct: HashSet<&str> = inputs.iter().copied().collect();
                valid &= join_names.insert(name)
                    && distinct.len() >= 2
                    && distinct.len() == inputs.len()
                    && !inputs.contains(&output)
                    && expire_after_ms > 0
                    && inputs.iter().all(|t| legal(t))
                    && legal(output);
            }
            // A stage named after a join takes that join's ids.
            valid &= !(names.contains("join-j1") && join_names.contains("j1"));
            Generated { text, valid }
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

    /// Pipelines made of stages and joins, right and wrong in every way the rules name: the
    /// parser accepts exactly the valid ones, and its error for the others says what is wrong.
    #[test]
    fn structured_pipelines_are_accepted_exactly_when_valid(generated in generated_pipeline()) {
        let parsed = Pipeline::parse(&generated.text, Path::new("/p"));
        match parsed {
            Ok(_) => proptest::prop_assert!(generated.valid, "accepted:\n{}", generated.text),
            Err(err) => {
                proptest::prop_assert!(!generated.valid, "refused ({err}):\n{}", generated.text);
                proptest::prop_assert!(!err.to_string().is_empty());
            }
        }
    }
}

#[test]
fn a_stage_starts_from_earliest_unless_from_says_latest_or_a_time() {
    let p = Pipeline::parse(MINIMAL, Path::new("/")).expect("valid");
    assert_eq!(p.stages[0].from, StartFrom::Earliest);
    let with = |from: &str| {
        Pipeline::parse(
            &MINIMAL.replace(
                "output = \"pizza-with-sauce\"",
                &format!("output = \"pizza-with-sauce\"\nfrom = \"{from}\""),
            ),
            Path::new("/"),
        )
    };
    assert_eq!(
        with("latest").expect("valid").stages[0].from,
        StartFrom::Latest
    );
    let at = with("2026-12-01T10:00:00.250Z").expect("valid").stages[0].from;
    assert_eq!(
        String::from(at),
        "2026-12-01T10:00:00.250Z",
        "a time round-trips"
    );
    let err = with("yesterday").expect_err("not a position").to_string();
    assert!(
        err.contains("earliest") && err.contains("yesterday"),
        "{err}"
    );
}

#[test]
fn the_store_defaults_to_a_per_user_data_folder_and_a_week_of_orders() {
    let p = Pipeline::parse(MINIMAL, Path::new("/")).expect("valid");
    assert_eq!(p.storage.dir, Some(default_storage_dir()));
    assert_eq!(p.storage.retention_days, 7);
    let p = Pipeline::parse(
        &format!("[storage]\ndir = \"stores\"\nretention_days = 0\n{MINIMAL}"),
        Path::new("/srv/pizza"),
    )
    .expect("valid");
    assert_eq!(
        p.storage.dir.as_deref(),
        Some(Path::new("/srv/pizza/stores"))
    );
    assert_eq!(p.storage.retention_days, 0);
}
