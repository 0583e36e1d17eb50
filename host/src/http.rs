//! The HTTP API, shaped like the original pizza service's:
//! `POST /order/{count}` → `{"order_id": …}` and `GET /order/{id}` → `{"id", "count", "pizzas"}`.
//!
//! Handlers are thin: they check the request and call into [`crate::orders`]. Every error is a
//! JSON body `{"error": …}` with a fitting status; nothing a client sends causes a 500.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::orders::{self, OrderBook};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The order view.
    pub book: OrderBook,
    /// Publishes new orders.
    pub publisher: orders::Publisher,
    /// Where new orders and their pizzas go.
    pub topics: orders::OrderTopics,
    /// Largest accepted `count`.
    pub max_order_count: u32,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/order/{param}", post(place_order).get(get_order))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .with_state(state)
}

/// A JSON error response: `{"error": message}`.
pub(crate) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
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
    let order_id = orders::new_order_id();
    match orders::place(
        &state.book,
        &state.publisher,
        &state.topics,
        &order_id,
        count,
    )
    .await
    {
        Ok(()) => {
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

async fn get_order(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.book.get(&id) {
        Some(order) => Json(order).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no order with id {id:?}")),
    }
}
