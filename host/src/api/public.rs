//! The HTTP API, shaped like the original pizza service's:
//! `POST /order/{count}` → `{"order_id": …}` and `GET /order/{id}` → `{"id", "count", "pizzas"}`
//! (`?detail=true` adds each pizza's stage visits), the reports (`GET /report` lists them,
//! `GET /report/{name}` renders one, like the original cheese reporter's `GET /report`), plus
//! what operators scrape and probe:
//! `GET /metrics` (Prometheus), `GET /healthz` (the process answers) and `GET /readyz` (Kafka
//! answers and every stage has joined its group; the body is the stage table).
//!
//! The web page (`/`) and its live stream (`/events`) are in [`crate::api::web`].
//!
//! Handlers are thin: they check the request and call into [`crate::orders::publisher`] and
//! [`crate::orders::book`]. Every error is a JSON body `{"error": …}` with a fitting status; nothing a
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

#[allow(unused_imports)] // named by the OpenAPI annotations
use crate::api::openapi::{ErrorBody, Health, OrderPlaced, Readiness, ReportList};
use crate::kafka::health::ClusterHealth;
use crate::orders::book::OrderBook;
#[allow(unused_imports)]
use crate::orders::book::OrderView;
use crate::orders::publisher::{self, Publisher};
use crate::pipeline::report::Reports;
use crate::pipeline::stages::Stages;
use crate::telemetry::events::Events;
use crate::telemetry::metrics::{HttpLabels, Metrics};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The order view.
    pub book: OrderBook,
    /// Publishes new orders.
    pub publisher: Publisher,
    /// Where new orders and their pizzas go.
    pub topics: publisher::OrderTopics,
    /// Hands out new order ids.
    pub order_ids: Arc<publisher::OrderIds>,
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
        .route("/", get(crate::api::web::page))
        .route("/events", get(crate::api::web::events))
        .route("/order/{param}", post(place_order).get(get_order))
        .route("/report", get(list_reports))
        .route("/report/{name}", get(get_report))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(crate::api::openapi::document))
        .route("/readyz", get(readyz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route".into(),
            )
        })
        .layer(middleware::from_fn_with_state(
            Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS)),
            guard,
        ))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            count_request,
        ))
        .with_state(state)
}

/// Largest request body accepted: no public route takes one.
pub const MAX_BODY_BYTES: u64 = 1024;
/// Longest request path (with query) accepted.
pub const MAX_PATH_BYTES: usize = 512;
/// Requests handled at once; more are refused with 503 rather than queued without bound.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;

/// Refuses, with a JSON error, what no route needs: a body, a very long path, or a request
/// beyond the concurrency limit.
async fn guard(
    State(in_flight): State<Arc<tokio::sync::Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    let declared_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // An undeclared (chunked) body is never read by any route, so it costs nothing.
    if declared_body.is_some_and(|bytes| bytes > MAX_BODY_BYTES) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        );
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if path > MAX_PATH_BYTES {
        return error(
            StatusCode::URI_TOO_LONG,
            format!("paths are limited to {MAX_PATH_BYTES} bytes"),
        );
    }
    let Ok(_permit) = in_flight.try_acquire() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight; try again shortly".into(),
        );
    };
    next.run(request).await
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

/// Orders `count` random pizzas.
#[utoipa::path(post, path = "/order/{param}", tag = "orders",
    params(("param" = u32, Path, minimum = 1, maximum = 100,
        description = "How many pizzas: from 1 to the host's `http.max_order_count` (100 by default)")),
    responses(
        (status = 200, description = "The order was placed", body = OrderPlaced),
        (status = 400, description = "The count is not a whole number in range", body = ErrorBody),
        (status = 404, description = "No count in the path (no such route)", body = ErrorBody),
        (status = 414, description = "The path is longer than 512 bytes", body = ErrorBody),
        (status = 503, description = "Kafka is unreachable, or the host is shutting down", body = ErrorBody),
    ))]
pub(crate) async fn place_order(
    State(state): State<AppState>,
    Path(count): Path<String>,
) -> Response {
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
    let order_id = state.order_ids.next();
    match publisher::place(
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

/// The order as it stands.
#[utoipa::path(get, path = "/order/{param}", tag = "orders",
    params(
        ("param" = String, Path, description = "The order id"),
        ("detail" = Option<bool>, Query, description = "Add each pizza's stage visits"),
    ),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "detail is neither true nor false", body = ErrorBody),
        (status = 414, description = "The path is longer than 512 bytes", body = ErrorBody),
        (status = 404, description = "No order with this id", body = ErrorBody),
    ))]
pub(crate) async fn get_order(
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

/// The running reports.
#[utoipa::path(get, path = "/report", tag = "reports",
    responses((status = 200, description = "The reports", body = ReportList)))]
pub(crate) async fn list_reports(State(state): State<AppState>) -> Response {
    Json(json!({ "reports": state.reports.list().await })).into_response()
}

/// The report's rendered JSON, as its component renders it (the cheese report:
/// `{"<cheese>": <count>, …}`).
#[utoipa::path(get, path = "/report/{name}", tag = "reports",
    params(("name" = String, Path, description = "The report's name")),
    responses(
        (status = 200, description = "The rendered report", body = Object),
        (status = 404, description = "No report with this name", body = ErrorBody),
        (status = 414, description = "The path is longer than 512 bytes", body = ErrorBody),
        (status = 503, description = "The report's component could not render it", body = ErrorBody),
    ))]
pub(crate) async fn get_report(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Response {
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

/// Metrics in Prometheus's text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "The metrics", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
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

/// Answers while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = Health)))]
pub(crate) async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready when Kafka answers and every stage's consumer has joined its group.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: `waiting_for` says why", body = Readiness),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
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
