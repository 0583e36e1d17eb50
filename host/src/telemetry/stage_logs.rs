//! Each stage's recent log lines, for `GET /admin/stages/{name}/logs` and `pizza-host logs`:
//! a [`tracing`] layer ([`StageLogLayer`]) keeps every event that names a stage (the lines a
//! component logs through `pizza:stage/log`, and the host's own lines about the stage) in a
//! bounded buffer per stage, and hands new ones to whoever follows.
//!
//! The layer sits behind the same filter as the host's log, so `logs` shows what the log
//! shows (`RUST_LOG=info,stage=debug` adds the components' debug lines to both). A follower
//! that falls behind loses the oldest lines and is told how many; it never slows a stage.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// Lines kept per stage for a reader who asks for the recent ones.
pub const RECENT_LINES: usize = 1_000;
/// Lines kept for followers that are behind, all stages together.
const FOLLOW_BACKLOG: usize = 4_096;

/// One stage's log line, as a follower receives it.
#[derive(Debug, Clone)]
pub struct Line {
    /// The stage it names.
    pub stage: Arc<str>,
    /// When, how severe, the message and the other fields, on one line.
    pub text: Arc<str>,
}

/// The stages' recent lines and the channel new ones go out on.
pub struct StageLogs {
    recent: Mutex<HashMap<Arc<str>, VecDeque<Arc<str>>>>,
    new_lines: broadcast::Sender<Line>,
}

/// The one buffer of this process: a `tracing` subscriber is process-wide too.
pub fn global() -> &'static StageLogs {
    static LOGS: OnceLock<StageLogs> = OnceLock::new();
    LOGS.get_or_init(|| StageLogs {
        recent: Mutex::default(),
        new_lines: broadcast::channel(FOLLOW_BACKLOG).0,
    })
}

impl StageLogs {
    /// The last [`RECENT_LINES`] lines of `stage`, and every line of every stage logged after
    /// them: none missed or repeated between the two.
    pub fn recent_and_follow(&self, stage: &str) -> (Vec<Arc<str>>, broadcast::Receiver<Line>) {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let lines = recent
            .get(stage)
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default();
        (lines, self.new_lines.subscribe())
    }

    fn push(&self, stage: &str, text: String) {
        let line = Line {
            stage: stage.into(),
            text: text.into(),
        };
        // Sent under the lock, so that `recent_and_follow` sees each line exactly once.
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let lines = recent.entry(line.stage.clone()).or_default();
        if lines.len() == RECENT_LINES {
            lines.pop_front();
        }
        lines.push_back(line.text.clone());
        // No follower is no error.
        let _ = self.new_lines.send(line);
    }
}

/// The layer that feeds [`global`]: events with a `stage` field.
pub struct StageLogLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StageLogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(stage) = fields.stage else {
            return;
        };
        let mut text = format!(
            "{} {:>5} {}",
            humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            event.metadata().level(),
            fields.message
        );
        if !fields.rest.is_empty() {
            let _ = write!(text, " {}", fields.rest.trim_start());
        }
        global().push(&stage, text);
    }
}

/// An event's fields: its stage, its message, and the others as `name=value`.
#[derive(Default)]
struct Fields {
    stage: Option<String>,
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "stage" => self.stage = Some(value.to_owned()),
            "message" => self.message = value.to_owned(),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "stage" => self.stage = Some(format!("{value:?}").trim_matches('"').to_owned()),
            "message" => self.message = format!("{value:?}"),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[test]
    fn lines_that_name_a_stage_are_kept_per_stage_and_sent_to_followers() {
        let subscriber = tracing_subscriber::registry().with(StageLogLayer);
        let (_, mut following) = global().recent_and_follow("layer-test-a");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(stage = "layer-test-a", digest = "sha256:1", "stage started");
            tracing::warn!(target: "stage", stage = "layer-test-b", "{}", "from the component");
            tracing::info!("no stage: not kept");
        });
        let (a, _) = global().recent_and_follow("layer-test-a");
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].contains(" INFO stage started digest=\"sha256:1\""),
            "{}",
            a[0]
        );
        let (b, _) = global().recent_and_follow("layer-test-b");
        assert!(b[0].contains(" WARN from the component"), "{b:?}");
        // Other tests log into the same buffer at the same time: only this test's stages.
        let followed: Vec<Line> = std::iter::from_fn(|| following.try_recv().ok())
            .filter(|line| matches!(&*line.stage, "layer-test-a" | "layer-test-b"))
            .collect();
        assert_eq!(followed.len(), 2, "{followed:?}");
        assert_eq!(
            (&*followed[0].stage, &*followed[0].text),
            ("layer-test-a", &*a[0])
        );
        assert_eq!(&*followed[1].stage, "layer-test-b");
    }

    #[test]
    fn a_stage_keeps_only_its_most_recent_lines() {
        let subscriber = tracing_subscriber::registry().with(StageLogLayer);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..RECENT_LINES + 5 {
                tracing::info!(stage = "layer-test-bound", "line {i}");
            }
        });
        let (lines, _) = global().recent_and_follow("layer-test-bound");
        assert_eq!(lines.len(), RECENT_LINES);
        assert!(lines[0].ends_with(" line 5"), "{}", lines[0]);
    }
}
