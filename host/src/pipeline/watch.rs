//! Watching `pipeline.toml` and the component files it names, and applying what changed.
//!
//! Folders are watched rather than files, so a file replaced by rename (as editors and
//! `cp` over a file do) is seen like one rewritten in place. Events are debounced: a change is
//! acted on once the file has been quiet for [`QUIET`], so a half-written file is not loaded;
//! if one is anyway (a very slow writer), it fails validation, the old version keeps running,
//! and the next write is picked up.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Overrides, Pipeline};
use crate::pipeline::Running;
use crate::pipeline::plan::{applied, restart_only_changes};
use crate::pipeline::stages::same_file;

/// Every component file in use, with the stage or report that uses it.
async fn component_files(running: &Running) -> Vec<(Kind, String, PathBuf)> {
    let stages = running.stages.component_files().await.into_iter();
    let reports = running.reports.component_files().await.into_iter();
    stages
        .map(|(name, file)| (Kind::Stage, name, file))
        .chain(reports.map(|(name, file)| (Kind::Report, name, file)))
        .collect()
}

#[derive(Clone, Copy)]
enum Kind {
    Stage,
    Report,
}

/// How long a file must be left alone before it is read.
pub const QUIET: Duration = Duration::from_millis(300);

/// Starts watching `pipeline_path` and the running stages' component files, and returns the
/// task that applies pipeline edits and swaps rebuilt components until `shutdown`. Changes made
/// after this returns are seen. `current` is the pipeline now running; `overrides` are applied
/// to every edit.
pub async fn watch(
    pipeline_path: PathBuf,
    overrides: Overrides,
    current: Pipeline,
    running: Running,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = ()> + use<>> {
    let pipeline_path = std::path::absolute(&pipeline_path)?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut debouncer = new_debouncer(QUIET, move |result: DebounceEventResult| match result {
        Ok(events) => {
            let _ = events_tx.send(events.into_iter().map(|e| e.path).collect());
        }
        Err(err) => tracing::warn!("file watcher: {err}"),
    })
    .context("cannot start the file watcher")?;

    let mut watched = BTreeSet::new();
    watch_folders(&mut debouncer, &mut watched, &pipeline_path, &running).await;
    Ok(async move {
        let mut current = current;
        loop {
            if let Err(err) = changes(
                &pipeline_path,
                &overrides,
                &mut current,
                &running,
                &mut events,
                &shutdown,
            )
            .await
            {
                tracing::info!("file watching stopped: {err}");
                return;
            }
            watch_folders(&mut debouncer, &mut watched, &pipeline_path, &running).await;
        }
    })
}

/// Watches every folder that holds the pipeline file or a component file (once each).
async fn watch_folders(
    debouncer: &mut notify_debouncer_mini::Debouncer<
        notify_debouncer_mini::notify::RecommendedWatcher,
    >,
    watched: &mut BTreeSet<PathBuf>,
    pipeline_path: &Path,
    running: &Running,
) {
    let mut folders = BTreeSet::from([parent(pipeline_path)]);
    for (_, _, file) in component_files(running).await {
        folders.insert(parent(&std::path::absolute(&file).unwrap_or(file)));
    }
    for folder in folders.difference(watched) {
        if let Err(err) = debouncer
            .watcher()
            .watch(folder, RecursiveMode::NonRecursive)
        {
            tracing::warn!(folder = %folder.display(), "cannot watch: {err}");
        }
    }
    *watched = folders;
}

/// Waits for the next batch of file changes and applies it. Errs when watching is over.
async fn changes(
    pipeline_path: &Path,
    overrides: &Overrides,
    current: &mut Pipeline,
    running: &Running,
    events: &mut mpsc::UnboundedReceiver<Vec<PathBuf>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let changed = tokio::select! {
        _ = shutdown.cancelled() => anyhow::bail!("shutting down"),
        changed = events.recv() => changed.context("the watcher stopped")?,
    };
    if changed.iter().any(|path| same_file(path, pipeline_path)) {
        *current = apply_pipeline_edit(pipeline_path, overrides, current.clone(), running).await;
    }
    for (kind, name, file) in component_files(running).await {
        if !changed.iter().any(|path| same_file(path, &file)) {
            continue;
        }
        // A swap logs itself; unchanged content needs nothing.
        let reloaded = match kind {
            Kind::Stage => running.stages.reload_file(&name).await.map(drop),
            Kind::Report => running.reports.reload_file(&name).await,
        };
        if let Err(err) = reloaded {
            tracing::error!(name, "swap rejected, old version keeps running: {err:#}");
        }
    }
    Ok(())
}

/// Applies an edited pipeline file: its live settings (see [`applied`]); every other setting
/// that differs is logged as needing a restart. On any error the running pipeline stays as it
/// was. Returns the pipeline that runs afterwards.
async fn apply_pipeline_edit(
    path: &Path,
    overrides: &Overrides,
    current: Pipeline,
    running: &Running,
) -> Pipeline {
    let stages = &running.stages;
    let edited = match Pipeline::load(path) {
        Ok(edited) => overrides.apply(edited),
        Err(err) => {
            tracing::error!("pipeline edit rejected, nothing changed: {err}");
            stages.edit_rejected(err.to_string()).await;
            return current;
        }
    };
    if edited == current {
        return current;
    }
    let needs_restart = restart_only_changes(&current, &edited);
    if !needs_restart.is_empty() {
        tracing::warn!(
            settings = ?needs_restart,
            "pipeline edit changes {} — these apply at the next restart",
            needs_restart.join(", ")
        );
    }
    let next = applied(&current, &edited);
    if next == current {
        return current;
    }
    match running.apply(&next).await {
        Ok(_) => {
            tracing::info!(file = %path.display(), "pipeline edit applied");
            next
        }
        Err(err) => {
            tracing::error!("pipeline edit rejected, nothing changed: {err:#}");
            stages.edit_rejected(format!("{err:#}")).await;
            current
        }
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"))
}
