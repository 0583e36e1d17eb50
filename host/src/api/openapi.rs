//! The OpenAPI document of the public HTTP API, served at `GET /openapi.json`.
//!
//! It is generated from the handlers' own annotations (utoipa) and the types they return, so
//! it cannot drift from the code; the test suite fuzzes the API from it (schemathesis) and
//! checks that every answer conforms.

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::api::public as http;
use crate::orders::book::{FailedPizza, OrderView, Status};
use crate::pipeline::report::ReportInfo;
use crate::pipeline::stages::{ErrorInfo, PartitionInfo, StageInfo};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pizza-host",
        description = "Order random pizzas made by WebAssembly stages between Kafka topics, \
                       read reports, and watch the host. Every error is JSON `{\"error\": …}`."
    ),
    paths(
        http::place_order,
        http::get_order,
        http::list_reports,
        http::get_report,
        http::metrics,
        http::healthz,
        http::readyz,
        crate::api::web::page,
        crate::api::web::events,
        document,
    ),
    components(schemas(
        ErrorBody,
        OrderPlaced,
        OrderView,
        Status,
        FailedPizza,
        ReportList,
        ReportInfo,
        Health,
        Readiness,
        StageInfo,
        PartitionInfo,
        ErrorInfo
    ))
)]
pub struct ApiDoc;

/// Every error the API answers.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words.
    pub error: String,
}

/// The answer to `POST /order/{count}`, as the original service gives it.
#[derive(Serialize, ToSchema)]
pub struct OrderPlaced {
    /// The new order's id (a 128-bit random number in decimal).
    pub order_id: String,
}

/// The answer to `GET /report`.
#[derive(Serialize, ToSchema)]
pub struct ReportList {
    /// The running reports.
    pub reports: Vec<ReportInfo>,
}

/// The answer to `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    pub status: String,
}

/// The answer to `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// Kafka answers and every stage has joined its consumer group.
    pub ready: bool,
    /// What readiness waits for.
    pub waiting_for: Vec<String>,
    /// The stage table.
    pub stages: Vec<StageInfo>,
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn document(
    axum::extract::State(state): axum::extract::State<http::AppState>,
) -> axum::Json<serde_json::Value> {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    // The largest order is configured; say the configured number.
    let count = &mut document["paths"]["/order/{param}"]["post"]["parameters"][0]["schema"];
    if count.is_object() {
        count["maximum"] = state.max_order_count.into();
    }
    axum::Json(document)
}
