//! The OpenAPI document of the public HTTP API, served at `GET /openapi.json`.
//!
//! It is generated from the handlers' own annotations (utoipa), and its schemas are collected
//! from the types those annotations name as bodies, which are the types the handlers return
//! ([`crate::api::types`]), so it cannot drift from the code. `tests/openapi_conformance.rs`
//! checks every route's answers against it; the test suite also fuzzes the API from it
//! (schemathesis).

use axum::Json;
use axum::extract::State;
use utoipa::OpenApi;

use crate::api::{AppState, operations, orders, reports, web};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pizza-host",
        description = "Order random pizzas made by WebAssembly stages between Kafka topics, \
                       read reports, and watch the host. Every error is JSON `{\"error\": …}`."
    ),
    paths(
        orders::place_order,
        orders::get_order,
        reports::list_reports,
        reports::get_report,
        operations::metrics,
        operations::healthz,
        operations::readyz,
        web::page,
        web::events,
        document,
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn document(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    // The largest order is configured; say the configured number.
    let count = &mut document["paths"]["/order/{param}"]["post"]["parameters"][0]["schema"];
    if count.is_object() {
        count["maximum"] = state.max_order_count.into();
    }
    Json(document)
}
