//! A real three-broker cluster under failure (`dev/kafka.sh --brokers 3`, one per test,
//! replication 3, `min.insync.replicas` 2), under exactly-once with customers ordering: the
//! leader of the first topic's partition, a stage's transaction coordinator and its group
//! coordinator are killed with `kill -9` and started again; the brokers, then the hosts, are
//! restarted one after another; a host is frozen past its session and woken; the first topic
//! gains partitions. Each test ends with every order answered 200 complete and every pizza
//! exactly once in every topic (`read_committed`), and prints how long after the fault the
//! pipeline completed a new order (`RECOVERY …`, the README's "Reliability on a cluster").
//!
//! Three brokers, the hosts and the customers share two cores, so the tests take turns.
//!
//! Orders that do not complete in time fail the test with where each stage stands (end
//! offsets, `read_committed` ends, committed offsets) and the host's last log lines. To look
//! closer before the cluster goes, set `PIZZA_TEST_ON_STALL` to a command: it runs first, with
//! the cluster's bootstrap address and the pipeline's topics as arguments (for Kafka's
//! `kafka-transactions.sh find-hanging`, say).

#![allow(clippy::unwrap_used)] // a test fails loudly on any unexpected error

mod support;

use std::time::{Duration, Instant};

use support::*;

const WITHIN: Duration = Duration::from_secs(180);
/// Pizzas per customer order.
const PIZZAS: u32 = 10;

/// One cluster at a time on this machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a test placed itself, beside its customers' orders.
#[derive(Default)]
struct Placed {
    orders: Vec<String>,
    /// Of its refused orders, those cut off in a transaction (see [`is_cut_off`]).
    cut_off: usize,
}

impl Placed {
    /// Orders 3 pizzas from `host` until it accepts (a fault may make it refuse for a while),
    /// then follows the order to its last pizza; prints and returns the time since `fault`.
    async fn recovery(
        &mut self,
        (host, cluster, topics): (&HostProcess, &OwnCluster, &Topics),
        fault: Instant,
        what: &str,
    ) -> Duration {
        let client = reqwest::Client::new();
        let cut_off = std::sync::atomic::AtomicUsize::new(0);
        let id = wait_for(WITHIN, &format!("an order accepted after {what}"), || {
            let (client, cut_off) = (&client, &cut_off);
            async move {
                let response = client
                    .post(format!("{}/order/3", host.url))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .ok()?;
                let body: serde_json::Value = response.json().await.ok()?;
                if let Some(error) = body["error"].as_str()
                    && is_cut_off(error)
                {
                    cut_off.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                body["order_id"].as_str().map(str::to_owned)
            }
        })
        .await;
        self.cut_off += cut_off.into_inner();
        complete_or_report(host, std::slice::from_ref(&id), 3, cluster, topics).await;
        self.orders.push(id);
        let took = fault.elapsed();
        println!("RECOVERY {what}: {:.1} s", took.as_secs_f64());
        took
    }
}

/// Waits until each of `orders` holds `count` pizzas on `host`. Past [`WITHIN`] it fails with
/// where each stage stands on the cluster and the host's last log lines, which tell a stalled
/// stage, a transaction left open and a slow run apart.
async fn complete_or_report(
    host: &HostProcess,
    orders: &[String],
    count: usize,
    cluster: &OwnCluster,
    topics: &Topics,
) {
    let waited = tokio::time::timeout(WITHIN, host.wait_complete(orders, count, 2 * WITHIN));
    if waited.await.is_ok() {
        return;
    }
    let state = tokio::task::block_in_place(|| pipeline_state(&cluster.bootstrap(), topics));
    if let Ok(command) = std::env::var("PIZZA_TEST_ON_STALL") {
        println!("{state}");
        std::process::Command::new(command)
            .arg(cluster.bootstrap())
            .args(&topics.chain)
            .arg(topics.order_records())
            .status()
            .ok();
    }
    let ready = match reqwest::get(format!("{}/readyz", host.url)).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(err) => format!("({err})"),
    };
    panic!(
        "orders not complete within {WITHIN:?}\n{state}host /readyz: {ready}\n\
         the last lines of its log ({}):\n{}",
        host.log.display(),
        log_tail(&host.log, 80)
    );
}

/// A cluster, the demo pipeline on it and a host named `name` running it.
async fn cluster_host(name: &str) -> (OwnCluster, Topics, std::path::PathBuf, HostProcess) {
    let cluster = OwnCluster::start(name);
    let topics = Topics::unique(name);
    let pipeline = process_pipeline(name, &topics, &cluster.bootstrap());
    let host = HostProcess::start_named(&pipeline, name).await;
    (cluster, topics, pipeline, host)
}

/// Stops the customers and checks the run: every order answered 200 complete, and every
/// pizza exactly once.
async fn settle(
    customers: Customers,
    placed: Placed,
    host: &HostProcess,
    cluster: &OwnCluster,
    topics: &Topics,
) {
    let answers = customers.stop().await;
    complete_or_report(host, &answers.placed, PIZZAS as usize, cluster, topics).await;
    let all: Vec<String> = answers
        .placed
        .iter()
        .chain(&placed.orders)
        .cloned()
        .collect();
    let cut_off = answers.cut_off().len() + placed.cut_off;
    let pizzas = assert_orders_exactly_once(&cluster.bootstrap(), topics, &all, cut_off);
    println!(
        "{} orders placed, {} refused ({cut_off} cut off in a transaction), {pizzas} pizzas, \
         each exactly once",
        all.len(),
        answers.refused.len(),
    );
}

/// Kills the node `victim` names under load, measures the recovery, starts the node again
/// and checks the run.
async fn kill_under_load(name: &str, victim: impl Fn(&OwnCluster, &Topics) -> i32) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (cluster, topics, _pipeline, host) = cluster_host(name).await;
    let customers = Customers::start(&host.url, 4, PIZZAS);
    customers.wait_placed(20, WITHIN).await;
    let node = victim(&cluster, &topics);
    println!("killing node {node}");
    cluster.kill_node(node);
    let mut placed = Placed::default();
    placed
        .recovery((&host, &cluster, &topics), Instant::now(), name)
        .await;
    customers.wait_placed(20, WITHIN).await;
    cluster.start_node(node);
    customers.wait_placed(20, WITHIN).await;
    settle(customers, placed, &host, &cluster, &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_of_the_first_topic_loses_and_doubles_nothing() {
    kill_under_load("leader-killed", |cluster, topics| {
        cluster.leader(topics.orders(), 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_stage_s_transaction_coordinator_loses_and_doubles_nothing() {
    kill_under_load("txn-coordinator-killed", |cluster, topics| {
        // The host is named after the test.
        cluster.transaction_coordinator(&pizza_host::pipeline::plan::transactional_id(
            &format!("test-{}-sauce", topics.suffix),
            "txn-coordinator-killed",
        ))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_stage_s_group_coordinator_loses_and_doubles_nothing() {
    kill_under_load("group-coordinator-killed", |cluster, topics| {
        cluster.group_coordinator(&format!("test-{}-sauce", topics.suffix))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_the_brokers_one_after_another_loses_and_doubles_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (cluster, topics, _pipeline, host) = cluster_host("rolling-brokers").await;
    let customers = Customers::start(&host.url, 4, PIZZAS);
    customers.wait_placed(20, WITHIN).await;
    let mut placed = Placed::default();
    for node in 1..=3 {
        cluster.stop_node(node);
        placed
            .recovery(
                (&host, &cluster, &topics),
                Instant::now(),
                &format!("broker {node} stopped"),
            )
            .await;
        cluster.start_node(node);
        // As an operator rolls a cluster: the next broker stops once every replica is in
        // sync again, or partitions whose other replicas are the restarted one's fall below
        // `min.insync.replicas` and refuse writes.
        wait_for(WITHIN, "every partition's replicas in sync", || async {
            (tokio::task::block_in_place(|| cluster.under_replicated()) == 0).then_some(())
        })
        .await;
        customers.wait_placed(20, WITHIN).await;
    }
    settle(customers, placed, &host, &cluster, &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_three_hosts_one_after_another_loses_and_doubles_nothing() {
    const NAMES: [&str; 3] = ["rolling-a", "rolling-b", "rolling-c"];
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = OwnCluster::start("rolling-hosts");
    let topics = Topics::unique("rolling-hosts");
    let pipeline = process_pipeline("rolling-hosts", &topics, &cluster.bootstrap());
    let mut hosts = Vec::new();
    for name in NAMES {
        hosts.push(Some(HostProcess::start_named(&pipeline, name).await));
    }
    let mut placed = Placed::default();
    for restarted in 0..3 {
        // Load placed on a host that stays, then this one stopped (SIGTERM) and started again.
        let staying = hosts[(restarted + 1) % 3].as_ref().unwrap();
        placed.orders.extend(staying.orders(3, 1_000).await);
        let stopping = hosts[restarted].take().unwrap();
        let stopped = Instant::now();
        assert_eq!(stopping.terminate(Duration::from_secs(60)), Some(0));
        let staying = hosts[(restarted + 1) % 3].as_ref().unwrap();
        placed
            .recovery(
                (staying, &cluster, &topics),
                stopped,
                &format!("host {} stopped", NAMES[restarted]),
            )
            .await;
        hosts[restarted] = Some(HostProcess::start_named(&pipeline, NAMES[restarted]).await);
    }
    let host = hosts[0].as_ref().unwrap();
    for id in &placed.orders {
        wait_for(WITHIN, &format!("order {id} complete"), || async {
            let pizzas = host.pizzas(id).await;
            (pizzas == 1_000 || pizzas == 3).then_some(())
        })
        .await;
    }
    let pizzas = assert_orders_exactly_once(
        &cluster.bootstrap(),
        &topics,
        &placed.orders,
        placed.cut_off,
    );
    println!("{pizzas} pizzas through three rolling host restarts, each exactly once");
}

/// A host frozen (SIGSTOP) past its session is a zombie: the other host takes its partitions,
/// and when it wakes, what it then writes from the batch it held is fenced (its transaction
/// commits offsets under a generation the group has left behind), so nothing is doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_frozen_past_its_session_is_fenced_when_it_wakes_and_doubles_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = OwnCluster::start("zombie");
    let topics = Topics::unique("zombie");
    let pipeline = process_pipeline("zombie", &topics, &cluster.bootstrap());
    let (awake, zombie) = start_pair(&pipeline, ["zombie-awake", "zombie-frozen"]).await;
    let customers = Customers::start(&awake.url, 4, PIZZAS);
    wait_for(WITHIN, "the host to be frozen to work", || async {
        (stage_records_in(&zombie.url, "sauce").await > 0.0).then_some(())
    })
    .await;
    zombie.signal("STOP");
    let frozen = Instant::now();
    wait_for(WITHIN, "the awake host to take every partition", || async {
        (awake.partitions_per_stage().await == [3; 4]).then_some(())
    })
    .await;
    println!("partitions moved {:?} after the freeze", frozen.elapsed());
    let mut placed = Placed::default();
    placed
        .recovery((&awake, &cluster, &topics), frozen, "zombie")
        .await;
    zombie.signal("CONT");
    wait_for(WITHIN, "the woken host to rejoin", || async {
        (zombie.stages_holding_partitions().await == STAGES.len()).then_some(())
    })
    .await;
    customers.wait_placed(20, WITHIN).await;
    settle(customers, placed, &awake, &cluster, &topics).await;
}

/// Partitions added to the first topic while the host runs (to spread a stage over more
/// hosts, as the README suggests) are found and consumed: orders whose pizzas land on them
/// complete like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_added_to_the_first_topic_are_consumed() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;

    let _turn = ONE_AT_A_TIME.lock().await;
    let (cluster, topics, _pipeline, host) = cluster_host("more-partitions").await;
    let customers = Customers::start(&host.url, 4, PIZZAS);
    customers.wait_placed(20, WITHIN).await;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    let added = admin
        .create_partitions(
            &[NewPartitions::new(topics.orders(), 6)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(added.iter().all(Result::is_ok), "{added:?}");
    let grown = Instant::now();
    wait_for(
        WITHIN,
        "the first stage to take the new partitions",
        || async { (host.partitions_by_stage().await.get("sauce") == Some(&6)).then_some(()) },
    )
    .await;
    let mut placed = Placed::default();
    placed
        .recovery((&host, &cluster, &topics), grown, "partitions added")
        .await;
    // The order publisher finds them too: pizzas land on them.
    wait_for(WITHIN, "pizzas on the new partitions", || async {
        let landed = cluster.high_watermarks(topics.orders())[3..]
            .iter()
            .sum::<i64>();
        (landed > 0).then_some(())
    })
    .await;
    customers.wait_placed(40, WITHIN).await;
    settle(customers, placed, &host, &cluster, &topics).await;
}
