//! Swapping stages and editing the pipeline while the host runs and orders flow, against the
//! real broker and real components: nothing lost, nothing doubled, bad changes rejected.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::task::JoinHandle;

const WITHIN: Duration = Duration::from_secs(90);
const SWAP_WITHIN: Duration = Duration::from_secs(15);
const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The demo pipeline on `topics` with the sauce component at `sauce` and an admin token file,
/// written to `dir/pipeline.toml`.
fn write_pipeline(dir: &Path, topics: &Topics, sauce: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    let toml = pipeline_toml(topics)
        .replace(
            &component("sauce").display().to_string(),
            &sauce.display().to_string(),
        )
        .replace("[http]\n", "[http]\nmax_order_count = 1000\n")
        .replace(
            "[orders]\n",
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[orders]\n",
        );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Places orders of `size` pizzas back to back until `stop`; returns (order id, count) pairs.
fn keep_ordering(
    url: String,
    size: u32,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<(String, usize)>> {
    tokio::spawn(async move {
        let mut placed = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            placed.push((place_order(&url, size).await, size as usize));
        }
        placed
    })
}

/// Places an order of `count` pizzas and returns its id and pizzas once complete.
async fn order_and_wait(host: &TestHost, count: usize) -> (String, Vec<Value>) {
    let id = host.order(count as u32).await;
    let order = host.wait_complete(&id, count, WITHIN).await;
    (id, order["pizzas"].as_array().unwrap().clone())
}

async fn processed(host: &TestHost, stage: &str) -> u64 {
    host.stage(stage)
        .await
        .map(|s| s.processed)
        .unwrap_or_default()
}

/// Every order holds exactly its pizzas, and the completed topic holds each pizza exactly once.
async fn assert_all_complete_exactly_once(
    host: &TestHost,
    topics: &Topics,
    orders: &[(String, usize)],
) -> usize {
    let total: usize = orders.iter().map(|(_, n)| n).sum();
    for (id, count) in orders {
        host.wait_complete(id, *count, WITHIN).await;
    }
    let completed = read_records(topics.completed(), total, WITHIN);
    let ids: HashSet<String> = completed
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.value).unwrap()["pizza_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), total, "every pizza reached the end");
    assert_eq!(
        record_count(topics.completed()) as usize,
        total,
        "no pizza reached the end twice"
    );
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewriting_a_component_under_load_swaps_it_at_a_record_boundary_losing_and_doubling_nothing()
 {
    let dir = temp_dir("swap-load");
    let topics = Topics::unique("swap-load");
    let sauce = dir.join("sauce.wasm");
    std::fs::copy(component("sauce"), &sauce).unwrap();
    let host = TestHost::start_watching(&write_pipeline(&dir, &topics, &sauce)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ordering = keep_ordering(host.url.clone(), 100, stop.clone());
    wait_for(WITHIN, "sauce to process 500 pizzas", || async {
        (processed(&host, "sauce").await >= 500).then_some(())
    })
    .await;

    // Rebuilt in place, as `cargo component build` writes it.
    std::fs::write(&sauce, std::fs::read(test_component("sauce-v2")).unwrap()).unwrap();
    let swapped_at = wait_for(SWAP_WITHIN, "the swap", || async {
        let stage = host.stage("sauce").await?;
        (stage.swaps == 1).then_some(stage.processed)
    })
    .await;
    wait_for(
        WITHIN,
        "500 pizzas after the swap, 2,000 in all",
        || async {
            (processed(&host, "sauce").await >= (swapped_at + 500).max(2_000)).then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let orders = ordering.await.unwrap();
    let total = assert_all_complete_exactly_once(&host, &topics, &orders).await;
    assert!(total >= 2_000, "{total} pizzas");

    // Per partition, the sauce stage's output is old versions first, then the new one only.
    let sauced = read_records(&topics.chain[1], total, WITHIN);
    let mut by_partition: BTreeMap<i32, Vec<(i64, i64, bool)>> = BTreeMap::new();
    for record in &sauced {
        let pizza: Value = serde_json::from_slice(&record.value).unwrap();
        let v2 = pizza["sauce"] == "v2-marinara";
        by_partition.entry(record.partition).or_default().push((
            record.offset,
            record.timestamp,
            v2,
        ));
    }
    let (mut old, mut new, mut gaps) = (0, 0, Vec::new());
    for (partition, mut records) in by_partition {
        records.sort();
        let first_new = records.iter().position(|r| r.2).unwrap_or(records.len());
        assert!(
            records[first_new..].iter().all(|r| r.2),
            "partition {partition}: an old sauce after a new one"
        );
        old += first_new;
        new += records.len() - first_new;
        if first_new > 0 && first_new < records.len() {
            gaps.push(records[first_new].1 - records[first_new - 1].1);
        }
    }
    assert!(old > 0 && new > 0, "old {old}, new {new}");
    // A measurement for the notes, not an assertion: the broker timestamps around the swap.
    println!(
        "swap: {old} pizzas before, {new} after; gap per partition at the swap (ms): {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_swaps_are_rejected_with_the_cause_and_the_old_version_keeps_serving() {
    let dir = temp_dir("bad-swaps");
    let topics = Topics::unique("bad-swaps");
    let sauce = dir.join("sauce.wasm");
    std::fs::copy(component("sauce"), &sauce).unwrap();
    let host = TestHost::start_watching(&write_pipeline(&dir, &topics, &sauce)).await;
    let digest = host.stage("sauce").await.unwrap().digest;
    let client = reqwest::Client::new();

    let v2 = std::fs::read(test_component("sauce-v2")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "a text file",
            b"not wasm at all".to_vec(),
            "not a WebAssembly file",
        ),
        (
            "a component of another world",
            std::fs::read(test_component("wrong-world")).unwrap(),
            "exports neither `pizza:stage/topping@0.1.0` nor `pizza:stage/processor@0.2.0`",
        ),
        (
            "a component that traps on the smoke call",
            std::fs::read(test_component("always-panics")).unwrap(),
            "smoke call",
        ),
        (
            "a truncated component",
            v2[..v2.len() / 2].to_vec(),
            "not a valid WebAssembly component",
        ),
    ];
    for (what, bytes, cause) in cases {
        let response = client
            .put(format!("{}/admin/stages/sauce", host.admin_url()))
            .bearer_auth(ADMIN_TOKEN)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{what} through the admin API");
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("stage `sauce`") && error.contains(cause),
            "{what}: {error}"
        );

        std::fs::write(&sauce, &bytes).unwrap();
        let seen = wait_for(
            SWAP_WITHIN,
            &format!("{what} rejected from the file"),
            || async {
                let message = host.stage("sauce").await?.last_swap_error?.message;
                (message.contains(&sauce.display().to_string()) && message.contains(cause))
                    .then_some(message)
            },
        )
        .await;
        assert!(seen.contains("stage `sauce`"), "{seen}");
        assert_eq!(
            host.stage("sauce").await.unwrap().digest,
            digest,
            "{what}: old version still running"
        );
    }

    // The old version still serves orders...
    let (_, pizzas) = order_and_wait(&host, 3).await;
    assert!(
        pizzas.iter().all(|p| p["sauce"] != "v2-marinara"),
        "{pizzas:?}"
    );
    // ...and the next valid write is picked up.
    replace_file(&sauce, &v2);
    wait_for(SWAP_WITHIN, "the valid swap", || async {
        (host.stage("sauce").await?.digest != digest).then_some(())
    })
    .await;
    let (_, pizzas) = order_and_wait(&host, 2).await;
    assert!(
        pizzas.iter().all(|p| p["sauce"] == "v2-marinara"),
        "{pizzas:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_api_needs_its_token_and_deploys_from_the_cli() {
    // Without a token the admin API does not exist.
    let plain = TestHost::start(&Topics::unique("no-admin")).await;
    assert!(plain.running().admin_addr.is_none());
    let response = reqwest::get(format!("{}/admin/stages", plain.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    drop(plain);

    let dir = temp_dir("admin");
    let topics = Topics::unique("admin");
    let host = TestHost::start_watching(&write_pipeline(&dir, &topics, &component("sauce"))).await;
    let client = reqwest::Client::new();
    let stages_url = format!("{}/admin/stages", host.admin_url());

    assert_eq!(client.get(&stages_url).send().await.unwrap().status(), 401);
    let wrong = client
        .get(&stages_url)
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let listed: Value = client
        .get(&stages_url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cheese", "meats", "sauce", "veggies"]);
    assert!(listed[0]["digest"].as_str().unwrap().starts_with("sha256:"));

    // An upload over the limit is refused before it is read whole, and changes nothing.
    let oversized = client
        .put(format!("{stages_url}/sauce"))
        .bearer_auth(ADMIN_TOKEN)
        .body(vec![0u8; pizza_host::api::admin::MAX_UPLOAD_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert_eq!(host.stage("sauce").await.unwrap().swaps, 0);

    let unknown = client
        .put(format!("{stages_url}/oregano"))
        .bearer_auth(ADMIN_TOKEN)
        .body(vec![0u8])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args(["deploy", "sauce"])
        .arg(test_component("sauce-v2"))
        .args(["--host", &host.admin_url()])
        .env("PIZZA_HOST_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("stage sauce: swapped sha256:"), "{stdout}");

    let sauce = host.stage("sauce").await.unwrap();
    assert_eq!(
        sauce.source,
        pizza_host::pipeline::stages::Source::Deployment
    );
    assert_eq!(sauce.swaps, 1);
    let (_, pizzas) = order_and_wait(&host, 2).await;
    assert!(
        pizzas.iter().all(|p| p["sauce"] == "v2-marinara"),
        "{pizzas:?}"
    );

    // The CLI says why it failed, with a non-zero exit.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
        .args(["deploy", "sauce"])
        .arg(test_component("sauce-v2"))
        .args(["--host", &host.admin_url()])
        .env("PIZZA_HOST_ADMIN_TOKEN", "wrong-token-wrong-token")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipeline_edits_add_and_remove_a_stage_while_orders_flow() {
    let dir = temp_dir("edits");
    let topics = Topics::unique("edits");
    let path = write_pipeline(&dir, &topics, &component("sauce"));
    let original = std::fs::read_to_string(&path).unwrap();
    let host = TestHost::start_watching(&path).await;
    let digests: Vec<String> = host
        .running()
        .stages
        .list()
        .await
        .into_iter()
        .map(|s| s.digest)
        .collect();

    // An invalid edit is rejected whole, with the reason: a typo, and a new stage whose
    // component is missing next to a valid change (sauce's memory limit).
    replace_file(&path, format!("{original}\nbogus = 1\n").as_bytes());
    wait_for(SWAP_WITHIN, "the typo rejected", || async {
        host.running()
            .stages
            .last_edit_error()
            .await
            .filter(|e| e.message.contains("bogus"))
    })
    .await;
    let with_missing = format!(
        "{}[[stage]]\nname = \"ghost\"\ncomponent = \"{}\"\ninput = \"x-{s}\"\noutput = \"y-{s}\"\n",
        original.replace("name = \"sauce\"", "name = \"sauce\"\nmemory_mib = 32"),
        dir.join("missing.wasm").display(),
        s = topics.suffix
    );
    replace_file(&path, with_missing.as_bytes());
    wait_for(SWAP_WITHIN, "the missing component rejected", || async {
        host.running()
            .stages
            .last_edit_error()
            .await
            .filter(|e| e.message.contains("missing.wasm"))
    })
    .await;
    assert!(host.stage("ghost").await.is_none());
    assert_eq!(
        host.stage("sauce").await.unwrap().swaps,
        0,
        "the valid part of a rejected edit is not applied"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ordering = keep_ordering(host.url.clone(), 20, stop.clone());

    // Add oregano between sauce and cheese.
    let oregano_topic = format!("pizza-with-oregano-{}", topics.suffix);
    let cheese_input = format!(
        "input = \"{}\"\noutput = \"{}\"",
        topics.chain[1], topics.chain[2]
    );
    let with_oregano = original.replace(
        &cheese_input,
        &format!(
            "input = \"{oregano_topic}\"\noutput = \"{}\"",
            topics.chain[2]
        ),
    ) + &format!(
        "[[stage]]\nname = \"oregano\"\ncomponent = \"{}\"\ninput = \"{}\"\noutput = \"{oregano_topic}\"\n",
        test_component("oregano").display(),
        topics.chain[1]
    );
    replace_file(&path, with_oregano.as_bytes());
    wait_for(WITHIN, "oregano in the pipeline", || async {
        let cheese = host.stage("cheese").await?;
        (host.stage("oregano").await.is_some() && cheese.input == oregano_topic).then_some(())
    })
    .await;
    // The rejected edits before it changed nothing: the same four stages ran until now.
    assert!(host.stage("ghost").await.is_none());
    for stage in ["sauce", "meats", "veggies"] {
        assert!(digests.contains(&host.stage(stage).await.unwrap().digest));
    }
    let (with_oregano_id, pizzas) = order_and_wait(&host, 5).await;
    assert!(
        pizzas.iter().all(|p| p["oregano"] == "sprinkled"),
        "{pizzas:?}"
    );

    // And remove it again.
    replace_file(&path, original.as_bytes());
    wait_for(WITHIN, "oregano gone", || async {
        let cheese = host.stage("cheese").await?;
        (host.stage("oregano").await.is_none() && cheese.input == topics.chain[1]).then_some(())
    })
    .await;
    let (id, pizzas) = order_and_wait(&host, 5).await;
    assert!(
        pizzas.iter().all(|p| p.get("oregano").is_none()),
        "{pizzas:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let mut orders = ordering.await.unwrap();
    assert!(!orders.is_empty());
    orders.extend([(with_oregano_id, 5), (id, 5)]);
    assert_all_complete_exactly_once(&host, &topics, &orders).await;
}

/// `pizza-host logs STAGE` prints a stage's recent log lines from a running host (its own
/// lines and the component's), `--follow` goes on with each new one and only that stage's,
/// an unknown stage is an error, and a follower ends when the host shuts down instead of
/// holding it up. Run against the real binary: the lines are kept by its log subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_logs_command_prints_and_follows_one_stages_lines() {
    use std::io::BufRead as _;
    use std::sync::Mutex;

    let dir = temp_dir("logs");
    let topics = Topics::unique("logs");
    let pipeline = write_pipeline(&dir, &topics, &component("sauce"));
    // The components log each topping at debug level.
    let host =
        HostProcess::start_with_env(&pipeline, "logs", &[("RUST_LOG", "info,stage=debug")]).await;
    wait_for(WITHIN, "every stage to hold partitions", || async {
        (host.stages_holding_partitions().await == STAGES.len()).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&host.log).unwrap();
    let admin = log
        .lines()
        .find_map(|line| line.split("admin API listening on ").nth(1))
        .unwrap_or_else(|| panic!("no admin address in the log:\n{log}"))
        .trim()
        .to_owned();
    let logs = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"));
        command
            .arg("logs")
            .args(args)
            .args(["--host", &admin])
            .env("PIZZA_HOST_ADMIN_TOKEN", ADMIN_TOKEN);
        command
    };

    let recent = logs(&["sauce"]).output().unwrap();
    let recent_text = String::from_utf8_lossy(&recent.stdout);
    assert!(recent.status.success(), "{recent:?}");
    assert!(
        recent_text.contains("INFO stage started"),
        "the host's own line about the stage: {recent_text}"
    );

    let unknown = logs(&["oregano"]).output().unwrap();
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no stage named \"oregano\""),
        "{unknown:?}"
    );

    let mut follower = logs(&["sauce", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let (stdout, followed) = (follower.stdout.take().unwrap(), followed.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                followed.lock().unwrap().push(line.unwrap());
            }
        })
    };
    // The recent lines come first: once they are here, the follower is subscribed.
    wait_for(WITHIN, "the follower's recent lines", || async {
        let followed = followed.lock().unwrap();
        followed
            .iter()
            .any(|line| line.contains("stage started"))
            .then_some(())
    })
    .await;
    let order = host.order(3).await;
    host.wait_complete(std::slice::from_ref(&order), 3, WITHIN)
        .await;
    wait_for(WITHIN, "the component's three lines followed", || async {
        let followed = followed.lock().unwrap();
        (followed
            .iter()
            .filter(|line| line.contains("DEBUG sauce: "))
            .count()
            >= 3)
            .then_some(())
    })
    .await;
    {
        let followed = followed.lock().unwrap();
        assert!(
            !followed.iter().any(|line| line.contains("cheese: ")),
            "another stage's line: {followed:?}"
        );
    }

    assert_eq!(
        host.terminate(WITHIN),
        Some(0),
        "a follower holds nothing up"
    );
    let status = follower.wait().unwrap();
    assert!(
        status.success(),
        "the follower ends with the host: {status:?}"
    );
    reader.join().unwrap();
}

/// `pizza-host pause STAGE` stops a stage on a host, committed, without making the host
/// unready; orders wait at its input; `resume` goes on from its committed offsets and every
/// pizza is made exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_stage_holds_orders_and_resumes_them_exactly_once() {
    let dir = temp_dir("pause");
    let topics = Topics::unique("pause");
    let host = TestHost::start_watching(&write_pipeline(&dir, &topics, &component("sauce"))).await;
    let first = host.order(2).await;
    host.wait_complete(&first, 2, WITHIN).await;
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_pizza-host"))
            .args(args)
            .args(["--host", &host.admin_url()])
            .env("PIZZA_HOST_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };

    assert_eq!(
        cli(&["pause", "sauce"]),
        (true, "stage sauce: paused\n".into())
    );
    assert_eq!(
        cli(&["pause", "sauce"]),
        (true, "stage sauce: already paused\n".into())
    );
    let sauce = host.stage("sauce").await.unwrap();
    assert!(sauce.paused && sauce.partitions.is_empty(), "{sauce:?}");
    let ready = reqwest::get(format!("{}/readyz", host.url)).await.unwrap();
    assert_eq!(ready.status(), 200, "a paused stage leaves the host ready");
    let (ok, said) = cli(&["pause", "oregano"]);
    assert!(!ok && said.contains("no stage named \"oregano\""), "{said}");

    let held = host.order(5).await;
    let sauce_group = format!("test-{}-sauce", topics.suffix);
    wait_for(
        WITHIN,
        "the order's pizzas waiting at the paused stage",
        || async { (records_after_commit(&sauce_group, topics.orders()) == 5).then_some(()) },
    )
    .await;
    assert_eq!(
        record_count(&topics.chain[1]),
        2,
        "nothing passed the paused stage"
    );

    assert_eq!(
        cli(&["resume", "sauce"]),
        (true, "stage sauce: resumed\n".into())
    );
    host.wait_complete(&held, 5, WITHIN).await;
    assert_every_pizza_exactly_once(&bootstrap(), &topics, 7);
}
