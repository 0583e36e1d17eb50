//! Every body the public API answers with, in one place: the handlers build these, the OpenAPI
//! document describes them (utoipa collects them from the handlers' `body = …`), and the
//! typed [`crate::api::client`] reads them back. One set of types is what keeps the three
//! from disagreeing.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::orders::book::{DroppedPizza, FailedPizza, OrderView, RebuildState, Status};
pub use crate::pipeline::report::ReportInfo;
pub use crate::pipeline::stages::{Activity, ErrorInfo, PartitionInfo, StageInfo};

/// Every error the API answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words.
    pub error: String,
}

/// An error answer: a status and `{"error": …}`.
#[derive(Debug)]
pub struct ApiError {
    /// The status it is answered with.
    pub status: StatusCode,
    /// The body.
    pub body: ErrorBody,
    /// Seconds after which the request may succeed (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with `status` saying `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: message.into(),
            },
            retry_after: None,
        }
    }

    /// The same error, saying the request may succeed in `seconds`.
    pub fn retry_after(self, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..self
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// The answer to `POST /order/{count}`, as the original service gives it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderPlaced {
    /// The new order's id (a 128-bit random number in decimal).
    pub order_id: String,
}

/// The answer to `GET /report`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReportList {
    /// The running reports.
    pub reports: Vec<ReportInfo>,
}

/// A report as its component rendered it: JSON text the host passes on without reparsing.
#[derive(Debug)]
pub struct RenderedReport(pub String);

impl IntoResponse for RenderedReport {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

/// The answer to `GET /healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    pub status: String,
}

/// The answer to `GET /readyz`, with 200 when ready and 503 when not.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// Kafka answers and every stage has joined its consumer group.
    pub ready: bool,
    /// What readiness waits for.
    pub waiting_for: Vec<String>,
    /// The stage table.
    pub stages: Vec<StageInfo>,
    /// How far the order view has read the history it found at startup.
    #[serde(default)]
    pub order_view: RebuildState,
}
