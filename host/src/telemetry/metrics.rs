//! What the host counts, in Prometheus's terms, and the text `GET /metrics` serves.
//!
//! Events are counted where they happen: the stage loop counts records, calls, failures and
//! dead letters, the HTTP layer counts requests, placing an order counts it. What is state
//! rather than an event (each stage's consumer lag and running component, the orders by
//! status) is read when scraped, so it is never stale and never left behind by a stage that
//! stopped.
//!
//! Under exactly-once a batch whose transaction aborts is processed again: the stage
//! counters count processing, so they can run ahead of what was committed (never behind).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pipeline::stages::StageInfo;

/// Labels of a per-stage series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// The stage's name.
    pub stage: String,
}

/// Labels of a per-stage series split by failure kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The stage's name.
    pub stage: String,
    /// `trap`, `timeout`, `memory-limit`, `returned-error`, `invalid-output`, `invalid-input`.
    pub kind: String,
}

/// Labels of a stage's input partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The stage's name.
    pub stage: String,
    /// Its input topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// Labels of the component a stage runs.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    /// The stage's name.
    pub stage: String,
    /// The component's content digest.
    pub digest: String,
}

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route as declared (`/order/{param}`), or `unmatched`.
    pub route: String,
    /// The request method.
    pub method: String,
    /// The response status.
    pub status: u16,
}

/// Labels of the orders gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrderLabels {
    /// `in_progress`, `complete` or `failed`.
    pub status: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of one host.
pub struct Metrics {
    registry: Registry,
    records_in: Family<StageLabels, Counter>,
    records_out: Family<StageLabels, Counter>,
    records_dropped: Family<StageLabels, Counter>,
    call_errors: Family<FailureLabels, Counter>,
    dead_letters: Family<FailureLabels, Counter>,
    call_seconds: HistogramFamily<StageLabels>,
    swaps: Family<StageLabels, Counter>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    component: Family<ComponentLabels, Gauge>,
    /// HTTP requests by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Orders this host accepted.
    pub orders_placed: Counter,
    orders: Family<OrderLabels, Gauge>,
}

/// Buckets of the call-duration histogram: 10 µs to about 2.6 s, doubling.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 2.0, 19))
}

impl Metrics {
    /// Every metric, registered under the `pizza_host_` prefix.
    pub fn new() -> Arc<Self> {
        let mut metrics = Self {
            records_in: Family::default(),
            records_out: Family::default(),
            records_dropped: Family::default(),
            call_errors: Family::default(),
            dead_letters: Family::default(),
            call_seconds: Family::new_with_constructor(call_histogram),
            swaps: Family::default(),
            consumer_lag: Family::default(),
            component: Family::default(),
            http_requests: Family::default(),
            orders_placed: Counter::default(),
            orders: Family::default(),
            registry: Registry::with_prefix("pizza_host"),
        };
        let r = &mut metrics.registry;
        r.register(
            "stage_records_in",
            "Records a stage took from its input topic",
            metrics.records_in.clone(),
        );
        r.register(
            "stage_records_out",
            "Results a stage sent to its output topic",
            metrics.records_out.clone(),
        );
        r.register(
            "stage_records_dropped",
            "Records a stage dropped: it returned no record for them (a filter), not a failure",
            metrics.records_dropped.clone(),
        );
        r.register(
            "stage_call_errors",
            "Stage calls that failed, by kind (retried calls count each time)",
            metrics.call_errors.clone(),
        );
        r.register(
            "stage_dead_letters",
            "Records a stage sent to its dead-letter topic, by kind",
            metrics.dead_letters.clone(),
        );
        r.register(
            "stage_call_duration_seconds",
            "Time of one stage call, instantiation included",
            metrics.call_seconds.clone(),
        );
        r.register(
            "stage_swaps",
            "Component swaps of a stage",
            metrics.swaps.clone(),
        );
        r.register(
            "stage_consumer_lag",
            "Records of a stage's input partition not yet read by it",
            metrics.consumer_lag.clone(),
        );
        r.register(
            "stage_component_info",
            "The component a stage runs (always 1)",
            metrics.component.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by route, method and status",
            metrics.http_requests.clone(),
        );
        r.register(
            "orders_placed",
            "Orders this host accepted",
            metrics.orders_placed.clone(),
        );
        r.register(
            "orders",
            "Orders in this host's order view, by status",
            metrics.orders.clone(),
        );
        Arc::new(metrics)
    }

    /// The counters of stage `stage`, bound to its name.
    pub fn stage(self: &Arc<Self>, stage: &str) -> StageMetrics {
        let labels = StageLabels {
            stage: stage.to_owned(),
        };
        StageMetrics {
            records_in: self.records_in.get_or_create_owned(&labels),
            records_out: self.records_out.get_or_create_owned(&labels),
            records_dropped: self.records_dropped.get_or_create_owned(&labels),
            call_seconds: self.call_seconds.get_or_create_owned(&labels),
            swaps: self.swaps.get_or_create_owned(&labels),
            metrics: self.clone(),
            stage: stage.to_owned(),
        }
    }

    /// The text exposition, with the scrape-time state filled in first.
    pub fn render(&self, stages: &[StageInfo], orders: OrderCounts) -> String {
        self.consumer_lag.clear();
        self.component.clear();
        for stage in stages {
            self.component
                .get_or_create(&ComponentLabels {
                    stage: stage.name.clone(),
                    digest: stage.digest.clone(),
                })
                .set(1);
            for partition in &stage.partitions {
                let Some(lag) = partition.lag else { continue };
                self.consumer_lag
                    .get_or_create(&PartitionLabels {
                        stage: stage.name.clone(),
                        topic: stage.input.clone(),
                        partition: partition.partition,
                    })
                    .set(lag);
            }
        }
        for (status, count) in [
            ("in_progress", orders.in_progress),
            ("complete", orders.complete),
            ("failed", orders.failed),
        ] {
            self.orders
                .get_or_create(&OrderLabels {
                    status: status.to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Orders in the view by status, read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrderCounts {
    /// Some pizzas still on their way.
    pub in_progress: usize,
    /// Every pizza completed.
    pub complete: usize,
    /// Every pizza accounted for, some failed.
    pub failed: usize,
}

/// One stage's counters.
#[derive(Clone)]
pub struct StageMetrics {
    records_in: Counter,
    records_out: Counter,
    records_dropped: Counter,
    call_seconds: Histogram,
    swaps: Counter,
    metrics: Arc<Metrics>,
    stage: String,
}

impl StageMetrics {
    /// A record was taken from the input.
    pub fn record_in(&self) {
        self.records_in.inc();
    }

    /// `count` records made of one input were sent to the outputs.
    pub fn records_out(&self, count: usize) {
        self.records_out.inc_by(count as u64);
    }

    /// The stage returned no record for an input.
    pub fn dropped(&self) {
        self.records_dropped.inc();
    }

    /// A call took `elapsed`; `failure` is its kind if it failed.
    pub fn call(&self, elapsed: Duration, failure: Option<&str>) {
        self.call_seconds.observe(elapsed.as_secs_f64());
        if let Some(kind) = failure {
            self.metrics
                .call_errors
                .get_or_create(&self.failure(kind))
                .inc();
        }
    }

    /// A record went to the dead-letter topic for a failure of `kind`.
    pub fn dead_letter(&self, kind: &str) {
        self.metrics
            .dead_letters
            .get_or_create(&self.failure(kind))
            .inc();
    }

    /// The stage's component was swapped.
    pub fn swapped(&self) {
        self.swaps.inc();
    }

    fn failure(&self, kind: &str) -> FailureLabels {
        FailureLabels {
            stage: self.stage.clone(),
            kind: kind.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::stages::PartitionInfo;

    #[test]
    fn stage_counters_and_scrape_state_appear_in_the_exposition() {
        let metrics = Metrics::new();
        let sauce = metrics.stage("sauce");
        sauce.record_in();
        sauce.record_in();
        sauce.records_out(1);
        sauce.call(Duration::from_micros(50), None);
        sauce.call(Duration::from_millis(2), Some("trap"));
        sauce.dead_letter("trap");
        let stage = StageInfo {
            name: "sauce".into(),
            input: "pizza".into(),
            output: "pizza-with-sauce".into(),
            outputs: Vec::new(),
            world: "pizza:stage/topping@0.1.0".into(),
            dead_letter: "pizza.dlq".into(),
            retries: 3,
            source: crate::pipeline::stages::Source::Deployment,
            digest: "sha256:ab".into(),
            loaded_at: String::new(),
            swaps: 0,
            processed: 1,
            dead_lettered: 1,
            dropped: 0,
            last_error: None,
            last_swap_error: None,
            paused: false,
            joined: true,
            partitions: vec![PartitionInfo {
                partition: 0,
                lag: Some(7),
            }],
            activity: None,
            client_view: None,
        };
        let orders = OrderCounts {
            in_progress: 1,
            complete: 2,
            failed: 0,
        };
        let text = metrics.render(&[stage], orders);
        for line in [
            r#"pizza_host_stage_records_in_total{stage="sauce"} 2"#,
            r#"pizza_host_stage_records_out_total{stage="sauce"} 1"#,
            r#"pizza_host_stage_call_errors_total{stage="sauce",kind="trap"} 1"#,
            r#"pizza_host_stage_dead_letters_total{stage="sauce",kind="trap"} 1"#,
            r#"pizza_host_stage_call_duration_seconds_count{stage="sauce"} 2"#,
            r#"pizza_host_stage_consumer_lag{stage="sauce",topic="pizza",partition="0"} 7"#,
            r#"pizza_host_stage_component_info{stage="sauce",digest="sha256:ab"} 1"#,
            r#"pizza_host_orders{status="complete"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }
}
