//! The HTTP API, shaped like the original pizza service's:
//! `POST /order/{count}` → `{"order_id": …}` and `GET /order/{id}` → `{"id", "count", "pizzas"}`
//! (`?detail=true` adds each pizza's stage visits), the reports (`GET /report` lists them,
//! `GET /report/{name}` renders one, like the original cheese reporter's `GET /report`), plus
//! what operators scrape and probe:
//! `GET /metrics` (Prometheus), `GET /healthz` (the process answers) and `GET /readyz` (Kafka
//! answers and every stage has joined its group; the body is the stage table).
//!
//! The web page (`/`) and its live stream (`/events`) are in [`crate::web`].
//!
//! Handlers are thin: they check the request and call into [`crate::order_publisher`] and
//! [`crate::orders`]. Every error is a JSON body `{"error": …}` with a fitting status; nothing a
//! client sends causes a 500.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cluster_health::ClusterHealth;
use crate::events::Events;
use crate::metrics::{HttpLabels, Metrics};
use crate::order_publisher::{self, Publisher};
use crate::orders::OrderBook;
use crate::report::Reports;
use crate::stages::Stages;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The order view.
    pub book: OrderBook,
    /// Publishes new orders.
    pub publisher: Publisher,
    /// Where new orders and their pizzas go.
    pub topics: order_publisher::OrderTopics,
    /// Whether Kafka answers; orders are refused at once while it does not.
    pub health: ClusterHealth,
    /// Largest accepted `count`.
    pub max_order_count: u32,
    /// The running stages, for readiness and metrics.
    pub stages: Arc<Stages>,
    /// The running reports.
    pub reports: Arc<Reports>,
    /// The host's metrics.
    pub metrics: Arc<Metrics>,
    /// Live events for the web page.
    pub events: Events,
    /// Cancelled when the host shuts down: new orders are refused from then on.
    pub shutdown: CancellationToken,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(crate::web::page))
        .route("/events", get(crate::web::events))
        .route("/order/{param}", post(place_order).get(get_order))
        .route("/report", get(list_reports))
        .route("/report/{name}", get(get_report))
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route".into(),
            )
        })
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            count_request,
        ))
        .with_state(state)
}

/// A JSON error response: `{"error": message}`.
pub(crate) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Counts every request by its declared route (never the raw path: ids would make a series
/// per order), method and status.
async fn count_request(
    State(metrics): State<Arc<Metrics>>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let route = route.map_or("unmatched".to_owned(), |r| r.as_str().to_owned());
    let response = next.run(request).await;
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn place_order(State(state): State<AppState>, Path(count): Path<String>) -> Response {
    let max = state.max_order_count;
    let count = match count.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => n,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("count must be a whole number from 1 to {max}, got {count:?}"),
            );
        }
    };
    if state.shutdown.is_cancelled() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "order not placed: the host is shutting down".into(),
        );
    }
    if let Some(cause) = state.health.unreachable() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("order not placed: Kafka is unreachable ({cause}); try again shortly"),
        );
    }
    let order_id = order_publisher::new_order_id();
    match order_publisher::place(
        &state.book,
        &state.publisher,
        &state.topics,
        &order_id,
        count,
    )
    .await
    {
        Ok(()) => {
            state.metrics.orders_placed.inc();
            tracing::info!(order_id, count, "order placed");
            Json(json!({ "order_id": order_id })).into_response()
        }
        Err(err) => {
            tracing::error!(order_id, "order not placed: {err:#}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("order not placed: {err:#}"),
            )
        }
    }
}

async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let detail = match query.get("detail").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("detail must be true or false, got {other:?}"),
            );
        }
    };
    match state.book.get(&id, detail) {
        Some(order) => Json(order).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no order with id {id:?}")),
    }
}

async fn list_reports(State(state): State<AppState>) -> Response {
    Json(json!({ "reports": state.reports.list().await })).into_response()
}

/// The report's rendered JSON, as is.
async fn get_report(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.reports.render(&name).await {
        Some(Ok(rendered)) => {
            ([(header::CONTENT_TYPE, "application/json")], rendered).into_response()
        }
        Some(Err(err)) => {
            tracing::warn!(report = name, "render failed: {err}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "report {name:?} could not be rendered ({}): {err}",
                    err.kind()
                ),
            )
        }
        None => error(StatusCode::NOT_FOUND, format!("no report named {name:?}")),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let stages = state.stages.list().await;
    let text = state.metrics.render(&stages, state.book.counts());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Ready when Kafka answers and every stage's consumer has joined its group.
async fn readyz(State(state): State<AppState>) -> Response {
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
    let body = json!({ "ready": waiting.is_empty(), "waiting_for": waiting, "stages": stages });
    (status, Json(body)).into_response()
}
