//! The web page and its live stream, against the real broker and the real components: the
//! stream shows each pizza of the order it names at each stage in order and nothing of other
//! orders, and a person ordering three pizzas in a real (headless) browser sees them complete
//! and counted in the cheese chart.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const WITHIN: Duration = Duration::from_secs(90);

/// A stream that names an order shows each of its pizzas at each stage, in order, and the
/// snapshots; no stream carries another order's id, and one that names none carries only the
/// snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_stream_shows_each_pizza_of_its_order_at_each_stage_in_order() {
    let topics = Topics::unique("stream");
    let host = TestHost::start(&topics).await;
    // The order is written the way the host's publisher writes one, so the stream can name it
    // before any of its pizzas moves.
    let id = format!("stream-{}", topics.suffix);
    let mut watching = SseStream::open(&format!("{}/events?order={id}", host.url)).await;
    let mut anonymous = SseStream::open(&format!("{}/events", host.url)).await;
    let order = serde_json::json!({"order_id": id, "count": 2}).to_string();
    produce(&topics.order_records(), Some(&id), order.as_bytes()).await;
    for n in 0..2 {
        let pizza = serde_json::json!({"order_id": id, "pizza_id": format!("{id}-{n}"),
            "sauce": "", "cheese": "", "meats": "", "veggies": ""});
        produce(topics.orders(), Some(&id), pizza.to_string().as_bytes()).await;
    }
    // Another customer's order, at the same time.
    let other = host.order(2).await;

    // Per pizza of the order: what the stream said happened to it, in order.
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut snapshot = None;
    let deadline = Instant::now() + WITHIN;
    while seen
        .values()
        .filter(|e| e.last().map(String::as_str) == Some("complete"))
        .count()
        < 2
        || snapshot.is_none()
    {
        assert!(Instant::now() < deadline, "stream so far: {seen:?}");
        let event = watching.next().await;
        assert!(
            !event.to_string().contains(&other),
            "another order's event: {event}"
        );
        match event["type"].as_str().unwrap() {
            "snapshot" => snapshot = Some(event),
            kind @ ("stage" | "complete") => {
                assert_eq!(event["pizza"]["order_id"], id.as_str(), "{event}");
                let pizza = event["pizza"]["pizza_id"].as_str().unwrap().to_owned();
                let step = match kind {
                    "stage" => event["stage"].as_str().unwrap().to_owned(),
                    _ => "complete".to_owned(),
                };
                seen.entry(pizza).or_default().push(step);
            }
            other => panic!("unexpected event {other}"),
        }
    }
    for (pizza, steps) in &seen {
        assert_eq!(
            steps,
            &["sauce", "cheese", "meats", "veggies", "complete"],
            "{pizza}"
        );
    }
    let stages = snapshot.unwrap()["stages"].as_array().unwrap().len();
    assert_eq!(stages, 4);
    // Both orders are complete by now; the anonymous stream had only snapshots meanwhile.
    host.wait_complete(&other, 2, WITHIN).await;
    for _ in 0..2 {
        let event = anonymous.next().await;
        assert_eq!(event["type"], "snapshot", "{event}");
        let text = event.to_string();
        assert!(!text.contains(&id) && !text.contains(&other), "{text}");
    }
}

/// A server-sent event stream, read one JSON event at a time.
struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    async fn open(url: &str) -> Self {
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped).
    async fn next(&mut self) -> Value {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let message: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) = message.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(data).unwrap();
                }
            }
            let chunk = tokio::time::timeout(WITHIN, self.response.chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordering_three_pizzas_in_a_browser_shows_them_complete_and_counts_their_cheese() {
    let topics = Topics::unique("browser");
    let host = TestHost::start_toml(&with_cheese_report(&pipeline_toml(&topics), &topics)).await;
    let root = workspace_root();
    let chromium = browser();
    let screenshot = root.join("target/test-artifacts/web-page.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);
    let (url, shot) = (format!("{}/", host.url), screenshot.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(root.join("host/tests/browser/order-pizzas.mjs"))
            .args([url.as_str(), shot.to_str().unwrap(), "3"])
            .env("CHROMIUM", chromium)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser run failed: {stderr}");
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();

    let cards = seen["cards"].as_array().unwrap();
    assert_eq!(cards.len(), 3, "{seen}");
    let mut cheeses: BTreeMap<String, u64> = BTreeMap::new();
    for card in cards {
        for field in ["sauce", "cheese", "meats", "veggies"] {
            let shown = card[field].as_str().unwrap();
            assert!(!shown.is_empty() && shown != "…", "{field} in {card}");
        }
        *cheeses
            .entry(card["cheese"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let chart: BTreeMap<String, u64> = serde_json::from_value(seen["chart"].clone()).unwrap();
    assert_eq!(chart, cheeses, "the cheese chart counts the pizzas shown");
    assert_eq!(
        seen["stages"],
        serde_json::json!(["cheese", "meats", "sauce", "veggies"])
    );
    assert_eq!(seen["phone_overflow"], 0, "the page fits a phone's width");
    let size = std::fs::metadata(&screenshot).unwrap().len();
    assert!(
        size > 10_000,
        "a screenshot was saved at {}",
        screenshot.display()
    );
}

/// The headless browser's executable, installed on first use (dev/browser.sh).
fn browser() -> String {
    let output = std::process::Command::new(workspace_root().join("dev/browser.sh"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dev/browser.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
