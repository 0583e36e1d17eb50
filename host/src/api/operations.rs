//! What operators scrape and probe: `GET /metrics` (Prometheus), `GET /healthz` (the process
//! answers) and `GET /readyz` (Kafka answers, every stage has joined its group and the order
//! view has caught up; the body is the stage table and the view's rebuild, also when not
//! ready).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode, header};

use crate::api::AppState;
use crate::api::types::{Health, Readiness};

/// Metrics in Prometheus's text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "The metrics", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(
    State(state): State<AppState>,
) -> ([(HeaderName, &'static str); 1], String) {
    let stages = state.stages.list().await;
    // A store that cannot be read shows no order counts rather than no metrics.
    let counts = state.book.counts().unwrap_or_else(|err| {
        tracing::warn!("metrics: cannot count the orders: {err:#}");
        Default::default()
    });
    let text = state.metrics.render(&stages, counts);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Answers while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// Ready when Kafka answers, every stage's consumer has joined its group and the order view
/// has read the history it found at startup.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: `waiting_for` says why", body = Readiness),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let stages = state.stages.list().await;
    let mut waiting: Vec<String> = stages
        .iter()
        .filter(|s| !s.joined && !s.paused)
        .map(|s| format!("stage {} has not joined its consumer group yet", s.name))
        .collect();
    let order_view = state.book.rebuild().state();
    if !state.book.rebuild().is_ready() {
        waiting.insert(
            0,
            format!(
                "the order view is rebuilding: {} of {} records read",
                order_view.applied, order_view.total
            ),
        );
    }
    if let Some(cause) = state.health.unreachable() {
        waiting.insert(0, format!("Kafka is unreachable: {cause}"));
    }
    if state.shutdown.is_cancelled() {
        waiting.insert(0, "the host is shutting down".into());
    }
    let status = if waiting.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready: waiting.is_empty(),
        waiting_for: waiting,
        stages,
        order_view,
    };
    (status, Json(body))
}
