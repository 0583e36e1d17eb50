//! The README's "Write a stage in five minutes", followed to the letter: its shell blocks are
//! read from README.md and run, in a scratch checkout, against a running host watching that
//! checkout's `pipeline.toml`; then an order's pizzas must carry each new topping's field, and
//! the new processor's header.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Topics, workspace_root};

/// The shell block that follows `<!-- guide:{name} -->` in the README.
fn guide_block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- guide:{name} -->");
    let after = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no {marker}"))..];
    let start = after.find("```sh\n").expect("a sh block after the marker") + "```sh\n".len();
    let length = after[start..].find("```").expect("the block ends");
    after[start..start + length].to_owned()
}

/// A scratch checkout: the workspace manifest (with no members) and lock file, the WIT, and
/// the real target folder (so the guide's Rust build reuses compiled dependencies).
fn scratch_checkout() -> PathBuf {
    let real = workspace_root();
    let root = support::temp_dir("guide");
    let manifest = std::fs::read_to_string(real.join("Cargo.toml")).expect("Cargo.toml");
    let start = manifest.find("members = [").expect("members");
    let end = start + manifest[start..].find(']').expect("members end") + 1;
    let manifest = format!("{}members = []{}", &manifest[..start], &manifest[end..]);
    std::fs::write(root.join("Cargo.toml"), manifest).expect("write");
    std::fs::copy(real.join("Cargo.lock"), root.join("Cargo.lock")).expect("lock");
    for file in [
        "wit/stage.wit",
        "wit/v0.2/stage.wit",
        "wit/deps/random/random.wit",
        "crates/stage-sdk/Cargo.toml",
        "crates/stage-sdk/src/lib.rs",
    ] {
        std::fs::create_dir_all(root.join(file).parent().expect("folder")).expect("mkdir");
        std::fs::copy(real.join(file), root.join(file)).expect("wit");
    }
    // As in the checkout: one copy of the WIT of 0.2.0, which the SDK carries.
    std::os::unix::fs::symlink("../deps", root.join("wit/v0.2/deps")).expect("symlink");
    std::os::unix::fs::symlink("../../wit/v0.2", root.join("crates/stage-sdk/wit"))
        .expect("symlink");
    std::os::unix::fs::symlink(real.join("target"), root.join("target")).expect("symlink");
    root
}

/// Runs `script` with bash in `dir`, with this build's `pizza-host` and the project's
/// componentize-py first on the PATH; fails the test with the output if it fails.
fn run(dir: &Path, name: &str, script: &str) {
    let host_bin = Path::new(env!("CARGO_BIN_EXE_pizza-host"))
        .parent()
        .expect("bin folder")
        .to_owned();
    let venv_bin = workspace_root().join(".local/venv/bin");
    let output = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env(
            "PIZZA_TEST_PATH",
            format!("{}:{}", host_bin.display(), venv_bin.display()),
        )
        .output()
        .expect("bash");
    assert!(
        output.status.success(),
        "guide block `{name}` failed:\n{script}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_five_minute_guide_works_as_written_in_rust_python_and_javascript() {
    support::components(); // the demo's stages and componentize-py, as dev/build-stages.sh makes them
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    let root = scratch_checkout();
    let topics = Topics::unique("guide");
    let pipeline = root.join("pipeline.toml");
    std::fs::write(&pipeline, support::pipeline_toml(&topics)).expect("pipeline");
    let host = support::TestHost::start_watching(&pipeline).await;

    // The guide's own PATH line points at a release build; this test's build goes first.
    let setup = format!(
        "{}\nexport PATH=\"$PIZZA_TEST_PATH:$PATH\"\n",
        guide_block(&readme, "setup")
    );
    let stages = [
        ("rust", "oregano"),
        ("python", "basil"),
        ("js", "chili"),
        ("processor", "tagger"),
    ];
    for (lang, stage) in stages {
        run(
            &root,
            lang,
            &format!("{setup}{}", guide_block(&readme, lang)),
        );
        support::wait_for(
            Duration::from_secs(60),
            &format!("stage {stage} to run"),
            || async { host.stage(stage).await.filter(|s| s.joined).map(drop) },
        )
        .await;
    }

    let id = host.order(10).await;
    let order = host.wait_complete(&id, 10, Duration::from_secs(90)).await;
    for pizza in order["pizzas"].as_array().expect("pizzas") {
        for field in [
            "sauce", "cheese", "meats", "veggies", "oregano", "basil", "chili",
        ] {
            let value = pizza[field].as_str().unwrap_or_default();
            assert!(!value.is_empty(), "{field} missing: {pizza}");
        }
        for field in ["oregano", "basil", "chili"] {
            let value = pizza[field].as_str().unwrap_or_default();
            assert!(
                ["light", "regular", "extra"].contains(&value),
                "{field}: {pizza}"
            );
        }
    }
    // The processor passed each pizza on, tagged with where it read it.
    let tagger_input = host.stage("tagger").await.expect("tagger").input;
    // (The guide's topics are not unique to a run: the completed topic may also hold pizzas of
    // earlier runs that waited on them, so this order's are picked by key.)
    let total = support::record_count(topics.completed());
    let completed: Vec<_> =
        support::read_records(topics.completed(), total as usize, Duration::from_secs(30))
            .into_iter()
            .filter(|record| record.key.as_deref() == Some(id.as_str()))
            .collect();
    assert_eq!(completed.len(), 10);
    for record in &completed {
        let tag = record.headers.get("tagger").map(String::as_str);
        assert!(
            tag.is_some_and(|tag| tag.starts_with(&format!("{tagger_input}/"))),
            "{tag:?} in {:?}, tagger reads {tagger_input}",
            record.headers
        );
    }
}
