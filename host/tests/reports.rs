//! Reports against the real broker and the real components: the cheese reporter counts every
//! cheese exactly once, across a crash of the host, a swap of its component, and the removal of
//! the stage that feeds it.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const WITHIN: Duration = Duration::from_secs(120);

/// Counts by cheese of `pizzas`.
fn cheese_counts<'a>(pizzas: impl IntoIterator<Item = &'a Value>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for pizza in pizzas {
        *counts
            .entry(pizza["cheese"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

async fn report(url: &str, name: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{url}/report/{name}")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Waits until the report at `url` has counted `total` events; returns its counts.
async fn report_with_total(url: &str, total: u64) -> BTreeMap<String, u64> {
    wait_for(WITHIN, &format!("the report to count {total}"), || async {
        let (status, body) = report(url, "cheese").await;
        let counts: BTreeMap<String, u64> = serde_json::from_value(body).ok()?;
        (status == 200 && counts.values().sum::<u64>() == total).then_some(counts)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cheese_report_matches_the_orders_survives_a_swap_and_outlives_its_stage() {
    let topics = Topics::unique("report");
    let dir = temp_dir("report");
    let path = dir.join("pipeline.toml");
    let toml = pipeline_toml(&topics).replace("[http]\n", "[http]\nmax_order_count = 1000\n");
    std::fs::write(&path, with_cheese_report(&toml, &topics)).unwrap();
    let host = TestHost::start_watching(&path).await;

    let id = host.order(1_000).await;
    let order = host.wait_complete(&id, 1_000, WITHIN).await;
    let expected = cheese_counts(order["pizzas"].as_array().unwrap());
    assert_eq!(report_with_total(&host.url, 1_000).await, expected);
    let listed: Value = reqwest::get(format!("{}/report", host.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["reports"][0]["name"], "cheese");
    assert_eq!(listed["reports"][0]["events"], 1_000);

    // Swap the report's component: the counts carry over to the new version.
    let report_file = dir.join("cheese-report.wasm");
    std::fs::copy(components().join("pizza_report_cheese.wasm"), &report_file).unwrap();
    let toml = with_cheese_report(&toml, &topics).replace(
        &components()
            .join("pizza_report_cheese.wasm")
            .display()
            .to_string(),
        &report_file.display().to_string(),
    );
    replace_file(&path, toml.as_bytes());
    wait_for(WITHIN, "the report to follow the edit", || async {
        let files = reqwest::get(format!("{}/report", host.url)).await.ok()?;
        let listed: Value = files.json().await.ok()?;
        (listed["reports"][0]["component"] == report_file.display().to_string()).then_some(())
    })
    .await;
    replace_file(
        &report_file,
        &std::fs::read(test_component("report-v2")).unwrap(),
    );
    let swapped = wait_for(WITHIN, "version 2 of the report", || async {
        let (_, body) = report(&host.url, "cheese").await;
        (body["version"] == 2).then_some(body)
    })
    .await;
    let kept: BTreeMap<String, u64> = serde_json::from_value(swapped["cheeses"].clone()).unwrap();
    assert_eq!(kept, expected, "the swap kept the state");

    // Remove the cheese stage: the report keeps answering with its last counts.
    let without_cheese = toml.replace(
        &format!(
            "[[stage]]\nname = \"cheese\"\ncomponent = \"{}\"\ninput = \"{}\"\noutput = \"{}\"\n",
            component("cheese").display(),
            topics.chain[1],
            topics.chain[2],
        ),
        "",
    );
    assert_ne!(without_cheese, toml);
    replace_file(&path, without_cheese.as_bytes());
    wait_for(WITHIN, "the cheese stage to stop", || async {
        host.stage("cheese").await.is_none().then_some(())
    })
    .await;
    host.order(10).await;
    let (status, body) = report(&host.url, "cheese").await;
    assert_eq!(status, 200);
    let counts: BTreeMap<String, u64> = serde_json::from_value(body["cheeses"].clone()).unwrap();
    assert_eq!(counts, expected, "the last counts, while the stage is gone");

    let (status, body) = report(&host.url, "no-such-report").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_host_mid_run_neither_loses_nor_double_counts_a_cheese() {
    kill_mid_run("report-crash", "").await;
}

/// The same with the state keyed by cheese: each cheese's count is folded and saved on its
/// own (a record per cheese on the changelog), and a kill between saving the keys and saving
/// the position still counts each pizza once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_keyed_by_cheese_survives_a_kill_and_saves_each_cheese_on_its_own() {
    let topics = kill_mid_run("report-keyed", "state_key = \"cheese\"\n").await;
    let changelog = format!("test-{}-report-cheese", topics.suffix);
    let saved = record_count(&changelog) as usize;
    let keys: std::collections::BTreeSet<String> = read_records(&changelog, saved, WITHIN)
        .iter()
        .filter_map(|record| record.key.clone())
        .filter_map(|key| key.strip_prefix("report-keyed/state/").map(str::to_owned))
        .collect();
    assert!(
        keys.len() >= 2,
        "a changelog record per cheese, found keys for {keys:?}"
    );
}

/// Kills a host whose cheese report (with `extra` added to its table) is counting, restarts
/// it, and checks the report against the report's topic read directly.
async fn kill_mid_run(test: &str, extra: &str) -> Topics {
    let topics = Topics::unique(test);
    let pipeline = process_pipeline(test, &topics, &bootstrap());
    let toml = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(
        &pipeline,
        format!("{}{extra}", with_cheese_report(&toml, &topics)),
    )
    .unwrap();

    let host = HostProcess::start_named(&pipeline, test).await;
    let orders = host.orders(5, 1_000).await;
    // Kill it while the report is counting.
    wait_for(WITHIN, "the report to be counting", || async {
        let (_, body) = report(&host.url, "cheese").await;
        let counts: BTreeMap<String, u64> = serde_json::from_value(body).ok()?;
        let total: u64 = counts.values().sum();
        (total > 0).then_some(())
    })
    .await;
    host.kill();
    let host = HostProcess::start_named(&pipeline, test).await;
    host.wait_complete(&orders, 1_000, WITHIN).await;

    // The truth: the cheese of every pizza on the report's topic, read directly.
    let records = read_records(&topics.chain[2], 5_000, WITHIN);
    assert_eq!(records.len(), 5_000);
    let pizzas: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect();
    assert_eq!(
        report_with_total(&host.url, 5_000).await,
        cheese_counts(&pizzas)
    );
    topics
}

/// A report skips an event its component cannot fold, counts it as `failed` and goes on; it
/// keeps answering with its last counts while the stage feeding it fails every event; and
/// every host keeps its own copy. The feeding stage here is the hostile component, which
/// passes an event through unchanged or fails as its `act` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_skips_what_it_cannot_fold_outlasts_a_failing_feeder_and_every_host_has_it() {
    let topics = Topics::unique("report-edges");
    let toml = with_cheese_report(&pipeline_toml(&topics), &topics).replacen(
        &format!(
            "name = \"cheese\"\ncomponent = \"{}\"",
            component("cheese").display()
        ),
        &format!(
            "name = \"cheese\"\ncomponent = \"{}\"\ntimeout_ms = 300",
            test_component("hostile").display()
        ),
        1,
    );
    let hosts = [
        TestHost::start_toml(&toml).await,
        TestHost::start_toml(&toml).await,
    ];
    let feeder = topics.chain[1].clone();
    let feed = |n: u32, event: Value| {
        let feeder = feeder.clone();
        async move {
            let key = format!("report-{n}");
            produce(&feeder, Some(&key), event.to_string().as_bytes()).await;
        }
    };
    let goat = |n: u32| json!({"order_id": format!("report-{n}"), "cheese": "goat"});
    for n in 0..3 {
        feed(n, goat(n)).await;
    }
    let goats = |count: u64| BTreeMap::from([("goat".to_owned(), count)]);
    for host in &hosts {
        assert_eq!(report_with_total(&host.url, 3).await, goats(3));
    }

    // The feeding stage fails every event it takes: they go to its dead-letter topic, and
    // the report answers with its last counts meanwhile.
    for n in 3..6 {
        feed(
            n,
            json!({"order_id": format!("report-{n}"), "act": "panic"}),
        )
        .await;
    }
    wait_for(WITHIN, "the failed events dead-lettered", || async {
        (record_count(&format!("{}.dlq", topics.chain[1])) == 3).then_some(())
    })
    .await;
    for host in &hosts {
        let (status, body) = report(&host.url, "cheese").await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_value::<BTreeMap<String, u64>>(body).unwrap(),
            goats(3)
        );
    }

    // Events the report cannot fold: one without a cheese, through the stage, and one that
    // is not JSON, straight onto the report's topic. Both are skipped and counted; the goat
    // after them is counted.
    feed(6, json!({"order_id": "report-6"})).await;
    produce(&topics.chain[2], Some("report-7"), b"not json").await;
    feed(8, goat(8)).await;
    for host in &hosts {
        let cheese = wait_for(WITHIN, "two events skipped and four folded", || async {
            let listed: Value = reqwest::get(format!("{}/report", host.url))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let cheese = listed["reports"][0].clone();
            (cheese["events"] == 4 && cheese["failed"] == 2).then_some(cheese)
        })
        .await;
        assert!(cheese["last_error"].is_object(), "{cheese}");
        assert_eq!(report_with_total(&host.url, 4).await, goats(4));
    }
}
