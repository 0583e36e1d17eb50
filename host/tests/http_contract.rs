//! The public HTTP API against its OpenAPI document: the document names every route, and
//! schemathesis (PyPI) fuzzes the running API from it, checking that no request causes a
//! server error and that every answer has a documented status and shape.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_answers_as_its_openapi_document_says_under_fuzzing() {
    let topics = Topics::unique("contract");
    let host = TestHost::start_toml(&with_cheese_report(&pipeline_toml(&topics), &topics)).await;
    let document: Value = reqwest::get(format!("{}/openapi.json", host.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: BTreeSet<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let routes = [
        "/",
        "/events",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/order/{param}",
        "/readyz",
        "/report",
        "/report/{name}",
    ];
    assert_eq!(paths, routes.into_iter().collect());

    // Fuzz a ready host (a host still joining its groups answers /readyz with 503).
    wait_for(Duration::from_secs(60), "the host to be ready", || async {
        let response = reqwest::get(format!("{}/readyz", host.url)).await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let url = host.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(workspace_root().join("dev/schemathesis.sh"))
            .arg(&url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}
