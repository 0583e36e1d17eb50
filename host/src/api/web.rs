//! The web page at `/` (one HTML file built into the binary: no build step, nothing to
//! install) and the live stream it listens to, `GET /events` (server-sent events).
//!
//! The stream carries, every second, a `snapshot` of the stages (topics, digest, counts, lag)
//! and the rendered reports, and for the order it names (`?order=<id>`) the events of
//! [`crate::telemetry::events`] (`stage`: a pizza as a stage made it; `complete` and `failed`:
//! as the order view learned it). It ends when the host shuts down, so an open page never
//! holds up a shutdown.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::Stream;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::api::AppState;
use crate::api::types::{ApiError, ErrorBody};
use crate::telemetry::events::MAX_SUBSCRIBERS;

/// How often the stream carries a snapshot of the stages and reports.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// The web page: order pizzas and watch them move through the stages.
#[utoipa::path(get, path = "/", tag = "web",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub async fn page() -> Response {
    Html(include_str!("web/index.html")).into_response()
}

/// Which live events a stream carries.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// An order whose pizzas to follow (its id, as `POST /order` answered it). Without it the
    /// stream carries only the snapshots: an order's events go only to who knows its id.
    order: Option<String>,
}

/// The live stream: snapshots of the stages and reports, and the pizzas of one order at each
/// stage, completed and failed.
#[utoipa::path(get, path = "/events", tag = "web", params(EventsQuery),
    responses(
        (status = 200, description = "Server-sent events, one JSON object each", content_type = "text/event-stream", body = String),
        (status = 503, description = "As many streams are open as the host serves at once", body = ErrorBody),
    ))]
pub async fn events(
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Some(subscription) = state.events.subscribe(query.order.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_SUBSCRIBERS} live streams are open, the most this host serves; try again later"
            ),
        ));
    };
    let stream = futures::stream::unfold(
        (subscription, state.shutdown.clone()),
        |(mut subscription, shutdown)| async move {
            let data = tokio::select! {
                _ = shutdown.cancelled() => return None,
                received = subscription.next() => match received {
                    Ok(event) => event.to_string(),
                    Err(RecvError::Lagged(missed)) => json!({"type": "lagged", "missed": missed}).to_string(),
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((Ok(Event::default().data(data)), (subscription, shutdown)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Publishes a snapshot every [`SNAPSHOT_EVERY`] while anyone listens: rendered once for all
/// streams, however many are open. Runs until the host shuts down.
pub async fn publish_snapshots(state: AppState) {
    let mut ticks = tokio::time::interval(SNAPSHOT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if state.events.has_subscribers() {
            state.events.publish_to_all(&snapshot(&state).await);
        }
    }
}

/// The stages and the rendered reports, as the page shows them.
async fn snapshot(state: &AppState) -> Value {
    let mut reports = Map::new();
    for report in state.reports.list().await {
        if let Some(Ok(rendered)) = state.reports.render(&report.name).await
            && let Ok(value) = serde_json::from_str(&rendered)
        {
            reports.insert(report.name, value);
        }
    }
    json!({
        "type": "snapshot",
        "stages": state.stages.list().await,
        "reports": reports,
    })
}
