//! The public API's router and what every request passes through: the routes, the limits on
//! what a request may be (body, path, requests in flight), counting requests by route, and
//! serving a router until shutdown.
//!
//! The handlers are by area: [`crate::api::orders`], [`crate::api::reports`],
//! [`crate::api::operations`], [`crate::api::web`] and [`crate::api::openapi`]. Every error is
//! a JSON body `{"error": …}` ([`ApiError`]) with a fitting status; nothing a client sends
//! causes a 500.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::types::ApiError;
use crate::api::{openapi, operations, orders, reports, web};
use crate::kafka::health::ClusterHealth;
use crate::orders::book::OrderBook;
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
        .route("/", get(web::page))
        .route("/events", get(web::events))
        .route(
            "/order/{param}",
            post(orders::place_order).get(orders::get_order),
        )
        .route("/report", get(reports::list_reports))
        .route("/report/{name}", get(reports::get_report))
        .route("/metrics", get(operations::metrics))
        .route("/healthz", get(operations::healthz))
        .route("/openapi.json", get(openapi::document))
        .route("/readyz", get(operations::readyz))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
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
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )
        .into_response();
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if path > MAX_PATH_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("paths are limited to {MAX_PATH_BYTES} bytes"),
        )
        .into_response();
    }
    let Ok(_permit) = in_flight.try_acquire() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight; try again shortly",
        )
        .into_response();
    };
    next.run(request).await
}

/// Counts every request by its declared route (never the raw path: ids would make a series
/// per order), method and status.
async fn count_request(
    State(metrics): State<Arc<Metrics>>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    // Methods a client makes up would each make a new series: they count as `other`.
    let method = match request.method().as_str() {
        known @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => known,
        _ => "other",
    }
    .to_owned();
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

/// Serves `app` on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    what: &str,
    addr: SocketAddr,
    app: Router,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let stop = shutdown.clone().cancelled_owned();
    let what = what.to_owned();
    tracing::info!("{what} listening on http://{bound}");
    tasks.spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("{what} failed: {err}");
        }
    });
    Ok(bound)
}
