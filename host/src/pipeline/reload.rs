//! Reading a component file again, for stages and reports alike: the content's digest tells a
//! change from a touch (watch events come for reads and touches too), and loading (compiling
//! and smoke-calling) runs on a blocking thread, off the async workers.

use std::path::Path;

use anyhow::Context as _;

/// What a component file holds now.
pub enum Reread {
    /// The content that was read last time (its digest).
    Unchanged(String),
    /// New content.
    Changed {
        /// The file's bytes.
        bytes: Vec<u8>,
        /// Their digest.
        digest: String,
    },
}

/// Reads `path` and compares its content with the digest `seen`.
pub async fn reread(path: &Path, seen: &str) -> anyhow::Result<Reread> {
    let bytes = tokio::fs::read(path)
        .await
        .context("cannot read the file")?;
    let digest = crate::runtime::digest(&bytes);
    Ok(if digest == seen {
        Reread::Unchanged(digest)
    } else {
        Reread::Changed { bytes, digest }
    })
}

/// Runs `load` on a blocking thread: compiling takes tens of milliseconds of CPU, and a load
/// runs the component, which wants a thread with stack to spare.
pub async fn off_thread<T: Send + 'static>(
    load: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(load)
        .await
        .context("loading the component panicked")?
}
