//! A host against a broker that requires SASL/PLAIN logins, as a hosted cluster would (the
//! local broker with a SASL listener): the `[kafka]` settings pass through to librdkafka, the
//! password comes from an environment variable, and it never shows in logs or answers (the
//! public API, its live stream and the admin API).

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::time::Duration;

use support::*;

const WITHIN: Duration = Duration::from_secs(90);
const SECRET: &str = "pizza-secret-7f3a9c41";
const ADMIN_TOKEN: &str = "sasl-test-admin-token-5c2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_on_a_sasl_broker_takes_its_password_from_the_environment_and_never_shows_it() {
    let broker = OwnBroker::start_with_users("sasl", &[("pizza", SECRET)]);
    let topics = Topics::unique("sasl");
    let pipeline = process_pipeline("sasl", &topics, &broker.bootstrap());
    let toml = std::fs::read_to_string(&pipeline).unwrap().replace(
        "[kafka]\n",
        "[kafka]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\
         \"sasl.username\" = \"pizza\"\n\"sasl.password\" = \"${PIZZA_TEST_SASL_PASSWORD}\"\n",
    );
    assert!(!toml.contains(SECRET), "the file holds no secret");

    // The admin API too, its token from the environment.
    let admin = format!("127.0.0.1:{}", free_port());
    let toml = format!("{toml}[admin]\nlisten = \"{admin}\"\n");
    std::fs::write(&pipeline, toml).unwrap();

    let env = [
        ("PIZZA_TEST_SASL_PASSWORD", SECRET),
        ("RUST_LOG", "debug"),
        ("PIZZA_HOST_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let host = HostProcess::start_with_env(&pipeline, "sasl", &env).await;
    let id = host.order(5).await;
    wait_for(WITHIN, "the order to complete over SASL", || async {
        (host.pizzas(&id).await == 5).then_some(())
    })
    .await;
    for path in [
        "/metrics",
        "/readyz",
        "/report",
        "/openapi.json",
        &format!("/order/{id}"),
    ] {
        let body = reqwest::get(format!("{}{path}", host.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.contains(SECRET), "{path} shows the password");
    }
    // The live stream: its first snapshot.
    let mut stream = reqwest::get(format!("{}/events", host.url)).await.unwrap();
    let mut events = String::new();
    while !events.contains("data:") {
        let chunk = tokio::time::timeout(WITHIN, stream.chunk())
            .await
            .expect("a snapshot on /events")
            .unwrap()
            .expect("the stream stays open");
        events.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!events.contains(SECRET), "/events shows the password");
    // The admin API answers with its token from the environment, and shows no secret either.
    let client = reqwest::Client::new();
    let stages = format!("http://{admin}/admin/stages");
    let refused = client.get(&stages).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let listing = client
        .get(&stages)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), 200);
    let listing = listing.text().await.unwrap();
    assert!(listing.contains("sauce"), "{listing}");
    assert!(
        !listing.contains(SECRET),
        "the admin API shows the password"
    );

    let log_path = host.log.clone();
    assert_eq!(host.terminate(Duration::from_secs(30)), Some(0));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("order placed"), "a debug log was written");
    assert!(!log.contains(SECRET), "the log shows the password");
}
