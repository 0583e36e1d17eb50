//! `GET /report` lists the running reports and `GET /report/{name}` renders one, like the
//! original cheese reporter's `GET /report`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::api::AppState;
use crate::api::types::{ApiError, ErrorBody, RenderedReport, ReportList};

/// The running reports.
#[utoipa::path(get, path = "/report", tag = "reports",
    responses((status = 200, description = "The reports", body = ReportList)))]
pub(crate) async fn list_reports(State(state): State<AppState>) -> Json<ReportList> {
    Json(ReportList {
        reports: state.reports.list().await,
    })
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
) -> Result<RenderedReport, ApiError> {
    match state.reports.render(&name).await {
        Some(Ok(rendered)) => Ok(RenderedReport(rendered)),
        Some(Err(err)) => {
            tracing::warn!(report = name, "render failed: {err}");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "report {name:?} could not be rendered ({}): {err}",
                    err.kind()
                ),
            ))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no report named {name:?}"),
        )),
    }
}
