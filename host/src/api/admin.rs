//! The admin API, on its own listener (localhost by default) and only when a token is
//! configured: `GET /admin/stages` lists the stages, and
//! `GET /admin/stages/{name}/logs[?follow=true]` gives a stage's recent log lines, then with
//! `follow` each new one as it is logged, until the host shuts down (`pizza-host logs`). Logs
//! are behind the token: a stage may log what its events carry.
//!
//! What the others change is deployed to the whole pipeline, every host
//! ([`crate::fleet::deployments`]); each answers once this host has applied it:
//! `PUT /admin/stages/{name}` deploys the uploaded component (checked first; `pizza-host
//! deploy`), `GET …/versions` lists the deployed versions, `POST …/rollback[?to=DIGEST|file]`
//! goes back to one, and `POST …/pause` and `…/resume` pause the stage and resume it. The
//! `X-Deployed-By` header names who asks; the record carries it and this host's name.
//!
//! Every request must carry `Authorization: Bearer <token>`; the token is compared in
//! constant time.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use axum::body::Body;
use axum::extract::Query;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::api::types::{ApiError, StageInfo};
use crate::fleet::deployments::{CommandError, Deployments, VersionInfo};
use crate::pipeline::stages::{Stages, SwapReport, UnknownStage};
use crate::telemetry::stage_logs;

/// Largest component upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

#[derive(Clone)]
struct AdminState {
    stages: Arc<Stages>,
    deployments: Arc<Deployments>,
    token: Arc<str>,
    /// Ends the log streams once the stages have stopped (so a follower sees them stop) and
    /// before the server's graceful shutdown waits for its connections.
    servers_stop: CancellationToken,
}

/// The header that names who deploys, pauses or resumes.
pub const BY_HEADER: &str = "x-deployed-by";

/// The admin routes, guarded by `token`; streams end at `servers_stop`.
pub fn router(
    stages: Arc<Stages>,
    deployments: Arc<Deployments>,
    token: String,
    servers_stop: CancellationToken,
) -> Router {
    let state = AdminState {
        stages,
        deployments,
        token: token.into(),
        servers_stop,
    };
    Router::new()
        .route("/admin/stages", get(list))
        .route("/admin/stages/{name}", axum::routing::put(deploy))
        .route("/admin/stages/{name}/logs", get(logs))
        .route("/admin/stages/{name}/versions", get(versions))
        .route("/admin/stages/{name}/rollback", post(rollback))
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
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SwapReport>, ApiError> {
    let deployed = state
        .deployments
        .deploy(&name, body.to_vec(), by(&headers))
        .await;
    deployed.map(Json).map_err(|err| refused(&name, err))
}

async fn versions(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionInfo>>, ApiError> {
    let versions = state.deployments.versions(&name).await;
    versions.map(Json).map_err(|err| refused(&name, err))
}

/// Where a rollback goes: a digest (or its start), or `file`; by default the version before.
#[derive(Debug, serde::Deserialize)]
struct RollbackQuery {
    to: Option<String>,
}

async fn rollback(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<RollbackQuery>,
    headers: HeaderMap,
) -> Result<Json<SwapReport>, ApiError> {
    let rolled = state
        .deployments
        .rollback(&name, query.to.as_deref(), by(&headers))
        .await;
    rolled.map(Json).map_err(|err| refused(&name, err))
}

/// Who asks, as the `X-Deployed-By` header says.
fn by(headers: &HeaderMap) -> Option<String> {
    headers
        .get(BY_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.chars().take(100).collect())
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
    headers: HeaderMap,
) -> Result<Json<PauseReport>, ApiError> {
    pause_or_resume(state, name, true, &headers).await
}

async fn resume(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<PauseReport>, ApiError> {
    pause_or_resume(state, name, false, &headers).await
}

async fn pause_or_resume(
    state: AdminState,
    name: String,
    paused: bool,
    headers: &HeaderMap,
) -> Result<Json<PauseReport>, ApiError> {
    let changed = state
        .deployments
        .pause(&name, paused, by(headers))
        .await
        .map_err(|err| refused(&name, err))?;
    Ok(Json(PauseReport {
        stage: name,
        paused,
        changed,
    }))
}

/// The answer to a refused or failed command; a refused component is logged.
fn refused(stage: &str, err: CommandError) -> ApiError {
    let status = match &err {
        CommandError::Unknown(_) | CommandError::NoSuchVersion { .. } => StatusCode::NOT_FOUND,
        CommandError::Refused(_) => StatusCode::BAD_REQUEST,
        CommandError::ShuttingDown | CommandError::NotWritten { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        CommandError::NotApplied(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status != StatusCode::NOT_FOUND {
        tracing::error!(stage, "admin command failed: {err}");
    }
    ApiError::new(status, err.to_string())
}

fn not_found(err: UnknownStage) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, err.to_string())
}
