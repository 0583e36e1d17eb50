//! Every route of the served OpenAPI document, called on a running host against the real
//! broker: each answer's status must be documented for its route, and its JSON body must
//! validate against the schema the document gives for that route and status (non-JSON
//! routes: the documented content type). Since the document is generated from the types the
//! handlers return, this is what catches a body that stops matching its type's schema.

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::*;

/// One request: the document's route template it exercises, and the concrete path.
struct Call {
    method: Method,
    route: &'static str,
    path: String,
    status: u16,
}

fn call(method: Method, route: &'static str, path: impl Into<String>, status: u16) -> Call {
    Call {
        method,
        route,
        path: path.into(),
        status,
    }
}

/// The schema the document gives for `route`, `method`, `status` and `content_type`, made
/// self-contained: its `$ref`s point into `#/components`, so the document's components go
/// along at the root.
fn response_schema(document: &Value, call: &Call, content_type: &str) -> Option<Value> {
    let method = call.method.as_str().to_lowercase();
    let response = &document["paths"][call.route][method]["responses"][call.status.to_string()];
    assert!(
        response.is_object(),
        "{} {} answered {}, which the document does not list for {}",
        call.method,
        call.path,
        call.status,
        call.route
    );
    let schema = response["content"][content_type].get("schema")?;
    Some(json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document["components"],
        "allOf": [schema],
    }))
}

/// Makes `call` and checks its status and body against the document.
async fn check(client: &reqwest::Client, url: &str, document: &Value, call: &Call) {
    let response = client
        .request(call.method.clone(), format!("{url}{}", call.path))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(status, call.status, "{} {}", call.method, call.path);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let documented: Vec<String> = document["paths"][call.route]
        [call.method.as_str().to_lowercase()]["responses"][status.to_string()]["content"]
        .as_object()
        .map(|content| content.keys().cloned().collect())
        .unwrap_or_default();
    let media = documented
        .iter()
        .find(|media| content_type.starts_with(media.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "{} {} answered {content_type:?}; the document says {documented:?}",
                call.method, call.path
            )
        });
    if media != "application/json" {
        // The page, the event stream and the metrics: the content type is the contract.
        return;
    }
    let body: Value = response.json().await.unwrap();
    let schema = response_schema(document, call, media)
        .unwrap_or_else(|| panic!("no schema for {} {} {status}", call.method, call.route));
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|err| panic!("the schema for {} {status} is not valid: {err}", call.route));
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|err| format!("{} at {}", err, err.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{} {} → {status}: the body does not match its schema:\n{}\nbody: {body:#}",
        call.method,
        call.path,
        errors.join("\n")
    );
}

/// Records the first stage (`chaos`) has taken, from the metrics.
async fn records_in(url: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("pizza_host_stage_records_in_total{")
                && line.contains("stage=\"chaos\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_answers_with_the_body_its_openapi_schema_describes() {
    let topics = Topics::unique("conformance");
    // The sauce stage is the hostile component (it passes pizzas through), so that a record it
    // spins on for 3 s keeps a stopping host answering while it is not ready.
    let toml = with_cheese_report(&hostile_pipeline(&topics, 3_000), &topics);
    let host = TestHost::start_toml(&toml).await;
    let client = reqwest::Client::new();
    let served = reqwest::get(format!("{}/openapi.json", host.url)).await;
    let document: Value = served.unwrap().json().await.unwrap();
    wait_for(Duration::from_secs(60), "the host to be ready", || async {
        let response = reqwest::get(format!("{}/readyz", host.url)).await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    let order = host.order(3).await;
    host.wait_complete(&order, 3, Duration::from_secs(60)).await;
    // The cheese report has folded the order's pizzas by the time they are complete, or soon.
    wait_for(Duration::from_secs(30), "the cheese report", || async {
        let response = reqwest::get(format!("{}/report/cheese", host.url))
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    let long = "9".repeat(600);
    let calls = [
        call(Method::GET, "/", "/", 200),
        call(Method::GET, "/events", "/events", 200),
        call(Method::GET, "/metrics", "/metrics", 200),
        call(Method::GET, "/healthz", "/healthz", 200),
        call(Method::GET, "/readyz", "/readyz", 200),
        call(Method::GET, "/openapi.json", "/openapi.json", 200),
        call(Method::POST, "/order/{param}", "/order/2", 200),
        call(Method::POST, "/order/{param}", "/order/0", 400),
        call(Method::POST, "/order/{param}", "/order/many", 400),
        call(
            Method::POST,
            "/order/{param}",
            format!("/order/{long}"),
            414,
        ),
        call(
            Method::GET,
            "/order/{param}",
            format!("/order/{order}"),
            200,
        ),
        call(
            Method::GET,
            "/order/{param}",
            format!("/order/{order}?detail=true"),
            200,
        ),
        call(
            Method::GET,
            "/order/{param}",
            format!("/order/{order}?detail=maybe"),
            400,
        ),
        call(Method::GET, "/order/{param}", "/order/unknown", 404),
        call(Method::GET, "/report", "/report", 200),
        call(Method::GET, "/report/{name}", "/report/cheese", 200),
        call(Method::GET, "/report/{name}", "/report/nope", 404),
    ];

    // Every operation of the document is called, and every one that documents an error
    // status is called into one.
    let operations: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(route, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (route.clone(), method.clone()))
        })
        .collect();
    // Called while the host stops, finishing a record its first stage spins on.
    let stopping = [
        call(Method::GET, "/readyz", "/readyz", 503),
        call(Method::POST, "/order/{param}", "/order/1", 503),
    ];
    // Called while the most live streams the host serves are open.
    let streams_full = [call(Method::GET, "/events", "/events", 503)];
    let called: BTreeSet<(String, String)> = calls
        .iter()
        .chain(&stopping)
        .chain(&streams_full)
        .map(|c| (c.route.to_owned(), c.method.as_str().to_lowercase()))
        .collect();
    assert_eq!(
        called, operations,
        "calls and the document's operations differ"
    );
    for (route, method) in &operations {
        let documents_errors = document["paths"][route][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .any(|status| status.starts_with('4') || status.starts_with('5'));
        let errs = calls.iter().chain(&stopping).chain(&streams_full).any(|c| {
            c.route == route && c.method.as_str().to_lowercase() == *method && c.status >= 400
        });
        assert!(
            !documents_errors || errs,
            "{method} {route} documents errors but none is called"
        );
    }

    for call in &calls {
        check(&client, &host.url, &document, call).await;
    }
    let mut open = Vec::new();
    for _ in 0..pizza_host::telemetry::events::MAX_SUBSCRIBERS {
        let stream = client
            .get(format!("{}/events", host.url))
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        open.push(stream);
    }
    for call in &streams_full {
        check(&client, &host.url, &document, call).await;
    }
    drop(open);

    let taken = records_in(&host.url).await;
    let spin = json!({"order_id": "spin", "act": "loop"}).to_string();
    produce(topics.orders(), Some("spin"), spin.as_bytes()).await;
    wait_for(
        Duration::from_secs(30),
        "the stage to take the record",
        || async { (records_in(&host.url).await > taken).then_some(()) },
    )
    .await;
    host.shutdown.cancel();
    for call in &stopping {
        check(&client, &host.url, &document, call).await;
    }
    host.stop(Duration::from_secs(30)).await;
}
