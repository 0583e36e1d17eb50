//! The admin API, on its own listener (localhost by default) and only when a token is
//! configured: `GET /admin/stages` lists the stages, `PUT /admin/stages/{name}` swaps a stage to
//! the uploaded component (validated and smoke-called first; `pizza-host deploy` uses it), and
//! `GET /admin/stages/{name}/logs[?follow=true]` gives the stage's recent log lines, then with
//! `follow` each new one as it is logged, until the host shuts down (`pizza-host logs`). Logs
//! are behind the token: a stage may log what its events carry. `POST
//! /admin/stages/{name}/pause` and `…/resume` pause a stage on this host and resume it
//! (`pizza-host pause|resume`).
//!
//! Every request must carry `Authorization: Bearer <token>`; the token is compared in
//! constant time.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use axum::body::Body;
use axum::extract::Query;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::api::types::{ApiError, StageInfo};
use crate::pipeline::stages::{StageCommandError, Stages, SwapReport, UnknownStage};
use crate::telemetry::stage_logs;

/// Largest component upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

#[derive(Clone)]
struct AdminState {
    stages: Arc<Stages>,
    token: Arc<str>,
    /// Ends the log streams once the stages have stopped (so a follower sees them stop) and
    /// before the server's graceful shutdown waits for its connections.
    servers_stop: CancellationToken,
}

/// The admin routes, guarded by `token`; streams end at `servers_stop`.
pub fn router(stages: Arc<Stages>, token: String, servers_stop: CancellationToken) -> Router {
    let state = AdminState {
        stages,
        token: token.into(),
        servers_stop,
    };
    Router::new()
        .route("/admin/stages", get(list))
        .route("/admin/stages/{name}", axum::routing::put(deploy))
        .route("/admin/stages/{name}/logs", get(logs))
        .route("/admin/stages/{name}/pause", post(pause))
        .route("/admin/stages/{name}/resume", post(resume))
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

/// Whether a log request follows new lines.
#[derive(Debug, serde::Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// The stage's recent log lines as text, one per line; with `follow`, the response goes on
/// with each new line until the client leaves or the host shuts down.
async fn logs(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    if !state
        .stages
        .list()
        .await
        .iter()
        .any(|stage| stage.name == name)
    {
        return Err(not_found(UnknownStage(name)));
    }
    let (recent, following) = stage_logs::global().recent_and_follow(&name);
    let mut text = String::new();
    for line in recent {
        text.push_str(&line);
        text.push('\n');
    }
    let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !query.follow {
        return Ok((plain, text).into_response());
    }
    let name: Arc<str> = name.into();
    let new_lines = futures::stream::unfold(
        (following, state.servers_stop.clone(), name),
        |(mut following, shutdown, name)| async move {
            loop {
                let text = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    received = following.recv() => match received {
                        Ok(line) if line.stage == name => format!("{}\n", line.text),
                        Ok(_) => continue,
                        Err(RecvError::Lagged(missed)) => {
                            format!("… {missed} lines of all stages missed: this reader fell behind\n")
                        }
                        Err(RecvError::Closed) => return None,
                    },
                };
                return Some((
                    Ok::<_, std::convert::Infallible>(text),
                    (following, shutdown, name),
                ));
            }
        },
    );
    let body = futures::StreamExt::chain(
        futures::stream::once(std::future::ready(Ok(text))),
        new_lines,
    );
    Ok((plain, Body::from_stream(body)).into_response())
}

/// What a pause or resume did.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PauseReport {
    /// The stage.
    pub stage: String,
    /// Whether it is paused now.
    pub paused: bool,
    /// False if it already was as asked.
    pub changed: bool,
}

async fn pause(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<PauseReport>, ApiError> {
    let changed = state.stages.pause(&name).await.map_err(refused)?;
    Ok(Json(PauseReport {
        stage: name,
        paused: true,
        changed,
    }))
}

async fn resume(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<PauseReport>, ApiError> {
    let changed = state.stages.resume(&name).await.map_err(refused)?;
    Ok(Json(PauseReport {
        stage: name,
        paused: false,
        changed,
    }))
}

fn refused(err: StageCommandError) -> ApiError {
    let status = match err {
        StageCommandError::Unknown(_) => StatusCode::NOT_FOUND,
        StageCommandError::StillStopping(_) => StatusCode::CONFLICT,
        StageCommandError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, err.to_string())
}

fn not_found(err: UnknownStage) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, err.to_string())
}
