//! The admin API, on its own listener (localhost by default) and only when a token is
//! configured: `GET /admin/stages` lists the stages, `PUT /admin/stages/{name}` swaps a stage to
//! the uploaded component (validated and smoke-called first; `pizza-host deploy` uses it).
//!
//! Every request must carry `Authorization: Bearer <token>`; the token is compared in
//! constant time.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::api::types::{ApiError, StageInfo};
use crate::pipeline::stages::{Stages, SwapReport, UnknownStage};

/// Largest component upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

#[derive(Clone)]
struct AdminState {
    stages: Arc<Stages>,
    token: Arc<str>,
}

/// The admin routes, guarded by `token`.
pub fn router(stages: Arc<Stages>, token: String) -> Router {
    let state = AdminState {
        stages,
        token: token.into(),
    };
    Router::new()
        .route("/admin/stages", get(list))
        .route("/admin/stages/{name}", axum::routing::put(deploy))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq::constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        next.run(request).await
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong admin token").into_response()
    }
}

async fn list(State(state): State<AdminState>) -> Json<Vec<StageInfo>> {
    Json(state.stages.list().await)
}

async fn deploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<SwapReport>, ApiError> {
    match state.stages.deploy(&name, body.to_vec()).await {
        Ok(report) => Ok(Json(report)),
        Err(err) if err.is::<UnknownStage>() => {
            Err(ApiError::new(StatusCode::NOT_FOUND, err.to_string()))
        }
        Err(err) => {
            tracing::error!(
                stage = name,
                "deploy rejected, old version keeps running: {err:#}"
            );
            Err(ApiError::new(StatusCode::BAD_REQUEST, format!("{err:#}")))
        }
    }
}
