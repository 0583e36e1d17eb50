//! What operators scrape and probe: `GET /metrics` (Prometheus), `GET /healthz` (the process
//! answers) and `GET /readyz` (Kafka answers and every stage has joined its group; the body
//! is the stage table, also when not ready).

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
    let text = state.metrics.render(&stages, state.book.counts());
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

/// Ready when Kafka answers and every stage's consumer has joined its group.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: `waiting_for` says why", body = Readiness),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let stages = state.stages.list().await;
    let mut waiting: Vec<String> = stages
        .iter()
        .filter(|s| !s.joined)
        .map(|s| format!("stage {} has not joined its consumer group yet", s.name))
        .collect();
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
    };
    (status, Json(body))
}
