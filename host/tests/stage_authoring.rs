//! What a stage author relies on, against the real broker and the real stages: a seeded run
//! repeats itself, and a stage's settings in `pipeline.toml` change its output live.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{HostProcess, Topics, process_pipeline, wait_for};

/// Runs a host with `PIZZA_HOST_SEED=seed` on topics of its own, orders 20 pizzas and returns
/// the order id and the pizzas, sorted by pizza id.
async fn seeded_run(seed: &str) -> (String, Vec<Value>) {
    let topics = Topics::unique("seeded");
    let pipeline = process_pipeline("seeded", &topics, &support::bootstrap());
    let host = HostProcess::start_with_env(&pipeline, "seeded", &[("PIZZA_HOST_SEED", seed)]).await;
    let id = host.order(20).await;
    host.wait_complete(std::slice::from_ref(&id), 20, Duration::from_secs(60))
        .await;
    let order: Value = reqwest::get(format!("{}/order/{id}", host.url))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let mut pizzas = order["pizzas"].as_array().expect("pizzas").clone();
    pizzas.sort_by_key(|p| p["pizza_id"].as_str().map(str::to_owned));
    (id, pizzas)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_seed_and_the_same_orders_give_the_same_pizzas() {
    let (id, pizzas) = seeded_run("42").await;
    let (id_again, pizzas_again) = seeded_run("42").await;
    assert_eq!(id, id_again, "the same seed hands out the same order ids");
    assert_eq!(pizzas, pizzas_again);
    for pizza in &pizzas {
        for field in ["sauce", "cheese", "meats", "veggies"] {
            assert!(
                !pizza[field].as_str().unwrap_or_default().is_empty(),
                "{pizza}"
            );
        }
    }
    let (other_id, other_pizzas) = seeded_run("43").await;
    assert_ne!(id, other_id);
    let toppings = |pizzas: &[Value]| -> Vec<Value> {
        pizzas
            .iter()
            .map(|p| serde_json::json!([p["sauce"], p["cheese"], p["meats"], p["veggies"]]))
            .collect()
    };
    assert_ne!(toppings(&pizzas), toppings(&other_pizzas));
}

/// The sauces of a new order of `count` pizzas, once complete.
async fn sauces(host: &support::TestHost, count: u32) -> Vec<String> {
    let id = host.order(count).await;
    let order = host
        .wait_complete(&id, count as usize, Duration::from_secs(60))
        .await;
    order["pizzas"]
        .as_array()
        .expect("pizzas")
        .iter()
        .map(|p| p["sauce"].as_str().expect("sauce").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_edit_in_pipeline_toml_changes_the_stage_live_and_a_bad_one_changes_nothing() {
    let topics = Topics::unique("config-edit");
    let path = support::temp_dir("config-edit").join("pipeline.toml");
    let toml = support::pipeline_toml(&topics);
    std::fs::write(&path, &toml).expect("write");
    let host = support::TestHost::start_watching(&path).await;
    let defaults = sauces(&host, 20).await;
    assert!(defaults.iter().all(|s| s != "pesto"), "{defaults:?}");

    let sauce_entry = format!(
        "name = \"sauce\"\ncomponent = \"{}\"",
        support::component("sauce").display()
    );
    let with_config = |choices: &str| {
        toml.replacen(
            &sauce_entry,
            &format!("{sauce_entry}\nconfig = {{ choices = \"{choices}\" }}"),
            1,
        )
    };
    support::replace_file(&path, with_config("pesto").as_bytes());
    wait_for(
        Duration::from_secs(30),
        "the sauce stage to read its new config",
        || async { (sauces(&host, 1).await == ["pesto"]).then_some(()) },
    )
    .await;
    assert!(sauces(&host, 20).await.iter().all(|s| s == "pesto"));

    // A setting the stage refuses fails its smoke call: the edit is rejected as a whole.
    support::replace_file(&path, with_config(" , ").as_bytes());
    let rejected = wait_for(
        Duration::from_secs(30),
        "the bad edit to be rejected",
        || async { host.running().stages.last_edit_error().await },
    )
    .await;
    assert!(
        rejected
            .message
            .contains("config `choices` names no option"),
        "{}",
        rejected.message
    );
    assert!(sauces(&host, 20).await.iter().all(|s| s == "pesto"));
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_stages_swap_in_for_the_rust_ones_under_load() {
    let topics = Topics::unique("polyglot");
    let path = support::temp_dir("polyglot").join("pipeline.toml");
    let toml = support::pipeline_toml(&topics);
    std::fs::write(&path, &toml).expect("write");
    let host = support::TestHost::start_watching(&path).await;
    let before: Vec<String> = place_orders(&host, 5, 20).await;

    // cheese → Python, sauce → JavaScript, in one edit, while those orders are in flight.
    let edited = toml
        .replace(
            &support::component("cheese").display().to_string(),
            &support::components()
                .join("pizza_stage_cheese_py.wasm")
                .display()
                .to_string(),
        )
        .replace(
            &support::component("sauce").display().to_string(),
            &support::components()
                .join("pizza_stage_sauce_js.wasm")
                .display()
                .to_string(),
        );
    support::replace_file(&path, edited.as_bytes());
    wait_for(Duration::from_secs(120), "both swaps", || async {
        let swapped = |info: Option<pizza_host::pipeline::stages::StageInfo>| {
            info.is_some_and(|i| i.swaps == 1)
        };
        (swapped(host.stage("cheese").await) && swapped(host.stage("sauce").await)).then_some(())
    })
    .await;
    let after = place_orders(&host, 5, 20).await;

    let sauces = ["regular", "light", "extra", "none", "alfredo", "bbq"];
    let cheeses = ["extra", "none", "three cheese", "goat cheese"];
    for id in before.iter().chain(&after) {
        let order = host.wait_complete(id, 20, Duration::from_secs(120)).await;
        for pizza in order["pizzas"].as_array().expect("pizzas") {
            assert!(
                sauces.contains(&pizza["sauce"].as_str().unwrap_or_default()),
                "{pizza}"
            );
            assert!(
                cheeses.contains(&pizza["cheese"].as_str().unwrap_or_default()),
                "{pizza}"
            );
            assert_eq!(pizza["order_id"], id.as_str());
        }
    }
    support::assert_every_pizza_exactly_once(&support::bootstrap(), &topics, 200);
}

/// Places `orders` orders of `count` pizzas; returns their ids.
async fn place_orders(host: &support::TestHost, orders: usize, count: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..orders {
        ids.push(host.order(count).await);
    }
    ids
}
