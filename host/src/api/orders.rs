//! `POST /order/{count}` → `{"order_id": …}` and `GET /order/{id}` → `{"id", "count",
//! "pizzas"}` (`?detail=true` adds each pizza's stage visits), shaped like the original pizza
//! service's.
//!
//! Thin: they check the request and call into [`crate::orders::publisher`] and
//! [`crate::orders::book`].

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use crate::api::AppState;
use crate::api::types::{ApiError, ErrorBody, OrderPlaced, OrderView};
use crate::orders::book::Lookup;
use crate::orders::publisher;

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
) -> Result<Json<OrderPlaced>, ApiError> {
    let max = state.max_order_count;
    let count = match count.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => n,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("count must be a whole number from 1 to {max}, got {count:?}"),
            ));
        }
    };
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "order not placed: the host is shutting down",
        ));
    }
    if let Some(cause) = state.health.unreachable() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("order not placed: Kafka is unreachable ({cause}); try again shortly"),
        ));
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
            Ok(Json(OrderPlaced { order_id }))
        }
        Err(err) => {
            tracing::error!(order_id, "order not placed: {err:#}");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("order not placed: {err:#}"),
            ))
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
        (status = 500, description = "The order store cannot be read", body = ErrorBody),
        (status = 503, description = "Not known yet: the order view is still reading the history, or the id was made in the last minute and the order may come from another host (`Retry-After` says when to ask again)", body = ErrorBody),
    ))]
pub(crate) async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<OrderView>, ApiError> {
    let detail = match query.get("detail").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("detail must be true or false, got {other:?}"),
            ));
        }
    };
    let lookup = state.book.get(&id, detail).map_err(|err| {
        tracing::error!(id, "cannot read the order store: {err:#}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the order store: {err:#}"),
        )
    })?;
    match lookup {
        Lookup::Found(order) => Ok(Json(order)),
        Lookup::NotYet(rebuild) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            if rebuild.state == "ready" {
                format!(
                    "order {id:?} is not known yet: it is new, and may have been placed on another host moments ago"
                )
            } else {
                format!(
                    "order {id:?} is not known yet: the order view is rebuilding ({} of {} records read)",
                    rebuild.applied, rebuild.total
                )
            },
        )
        .retry_after(1)),
        Lookup::Unknown => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no order with id {id:?}"),
        )),
    }
}
