//! Compiled components, kept so that a component is compiled once per content: in memory for
//! swaps back to a known version, and on disk (wasmtime's serialized form) for restarts.
//!
//! Entries are keyed by the component's SHA-256 and, on disk, by the engine's compatibility
//! hash too, so a host built with another wasmtime or other settings never loads an entry it
//! cannot use. A cache entry that fails to load is recompiled and rewritten. The disk cache is
//! trimmed to its size ([`DEFAULT_MAX_DISK_BYTES`] unless set) whenever an entry is written,
//! the entries used longest ago first (a load marks an entry used); the entry just written is
//! always kept.
//!
//! Entries are loaded as native code without being verified, so whoever can write the folder
//! can run code in the host: the folder must belong to this user and be writable by nobody
//! else. A new folder is created so (0700); one owned by another user, or writable by a group
//! or by others, is refused with an error saying so.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiled components kept in memory (swapping back to a known version does not recompile).
const MAX_IN_MEMORY: usize = 32;
/// The most the disk cache holds unless set otherwise, all engines' entries together: beyond
/// it, the entries used longest ago are deleted (a compiled component is a few MiB; every
/// rebuild adds one).
pub const DEFAULT_MAX_DISK_BYTES: u64 = 1 << 30;

/// Where a component came from when it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now.
    Compiled,
    /// Taken from memory.
    Memory,
    /// Read from the disk cache.
    Disk,
}

/// The compile cache of one engine.
pub struct CompileCache {
    memory: Mutex<HashMap<String, Component>>,
    /// `<cache dir>/<engine compatibility hash>`, if the disk cache is on.
    dir: Option<PathBuf>,
    /// The most the disk cache holds.
    max_disk_bytes: u64,
}

impl CompileCache {
    /// A cache for `engine`, persisting under `dir` if given, up to `max_disk_bytes` there;
    /// fails if `dir` cannot be created or is not safe to load code from (see the module
    /// docs).
    pub fn new(engine: &Engine, dir: Option<PathBuf>, max_disk_bytes: u64) -> anyhow::Result<Self> {
        if let Some(dir) = &dir {
            prepare(dir)?;
        }
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = dir.map(|dir| dir.join(format!("{:016x}", hasher.finish())));
        Ok(Self {
            memory: Mutex::default(),
            dir,
            max_disk_bytes,
        })
    }

    /// The compiled form of `bytes`, whose digest is `digest`, from the cache or from `compile`.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        compile: impl FnOnce() -> anyhow::Result<Component>,
    ) -> anyhow::Result<(Component, Origin)> {
        if let Some(component) = self.lock().get(digest).cloned() {
            return Ok((component, Origin::Memory));
        }
        let file = self
            .dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.cwasm", digest.replace(':', "-"))));
        let from_disk = file.as_ref().filter(|f| f.exists()).and_then(|f| match deserialize(engine, f) {
            Ok(component) => {
                mark_used(f);
                Some(component)
            }
            Err(err) => {
                tracing::warn!(file = %f.display(), "compile cache entry unusable, recompiling: {err:#}");
                None
            }
        });
        let (component, origin) = match from_disk {
            Some(component) => (component, Origin::Disk),
            None => {
                let component = compile()?;
                if let Some(file) = &file {
                    if let Err(err) = persist(&component, file) {
                        tracing::warn!(file = %file.display(), "cannot write the compile cache: {err:#}");
                    } else if let Some(root) = file.parent().and_then(|dir| dir.parent()) {
                        match trim(root, file, self.max_disk_bytes) {
                            Ok(0) => {}
                            Ok(deleted) => {
                                tracing::info!(deleted, "compile cache trimmed to its size")
                            }
                            Err(err) => tracing::warn!("cannot trim the compile cache: {err:#}"),
                        }
                    }
                }
                (component, Origin::Compiled)
            }
        };
        let mut memory = self.lock();
        // Versions pile up only through swaps; start over rather than grow without bound.
        if memory.len() >= MAX_IN_MEMORY {
            memory.clear();
        }
        memory.insert(digest.to_owned(), component.clone());
        Ok((component, origin))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Component>> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Creates `dir` (0700) if missing, and checks that it belongs to this user and that no one
/// else may write to it.
fn prepare(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the compile cache {}", dir.display()))?;
    let metadata = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the compile cache {}", dir.display()))?;
    let me = rustix::process::getuid().as_raw();
    if metadata.uid() != me {
        anyhow::bail!(
            "the compile cache {} belongs to user {}, not to this user ({me}): its entries are \
             loaded as native code, so another user could run code in the host; use a folder of \
             your own (compile_cache in pipeline.toml)",
            dir.display(),
            metadata.uid()
        );
    }
    if metadata.mode() & 0o022 != 0 {
        anyhow::bail!(
            "the compile cache {} is writable by its group or by others (mode {:o}): its entries \
             are loaded as native code; make it writable only by its owner (chmod 700)",
            dir.display(),
            metadata.mode() & 0o777
        );
    }
    Ok(())
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &std::path::Path) -> anyhow::Result<Component> {
    // Read into memory rather than mapped: a mapped file that someone truncates later would
    // crash the host with SIGBUS.
    let bytes = std::fs::read(file)?;
    // SAFETY: wasmtime runs deserialized code without verifying it, so the bytes must come
    // from `Component::serialize` of a compatible engine. They do: only `persist` writes this
    // folder (owner-only), entries are named by the component's content hash and kept apart
    // by the engine's compatibility hash, and wasmtime itself checks the header and version.
    // Whoever can write this folder can also replace the component files it caches.
    unsafe { Component::deserialize(engine, &bytes) }.map_err(anyhow::Error::from)
}

fn persist(component: &Component, file: &std::path::Path) -> anyhow::Result<()> {
    let dir = file.parent().context("cache file without a folder")?;
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(anyhow::Error::from)?;
    // Written beside and renamed over: another host sharing the cache never reads half.
    let mut temporary = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temporary, &bytes)?;
    temporary.persist(file)?;
    Ok(())
}

/// Marks a cache entry as used now, so trimming keeps it over entries used longer ago.
fn mark_used(file: &std::path::Path) {
    if let Ok(entry) = std::fs::File::options().append(true).open(file) {
        let _ = entry.set_modified(std::time::SystemTime::now());
    }
}

/// Deletes the entries (`*.cwasm`) under `root`'s engine folders used longest ago until they
/// hold at most `max` bytes, never `keep`; returns how many it deleted.
fn trim(root: &std::path::Path, keep: &std::path::Path, max: u64) -> anyhow::Result<usize> {
    let mut entries = Vec::new();
    let mut total = 0;
    for engine in std::fs::read_dir(root)? {
        let engine = engine?.path();
        if !engine.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&engine)? {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "cwasm") {
                continue;
            }
            let metadata = std::fs::metadata(&path)?;
            total += metadata.len();
            entries.push((metadata.modified()?, metadata.len(), path));
        }
    }
    entries.sort();
    let mut deleted = 0;
    for (_, size, path) in entries {
        if total <= max {
            break;
        }
        if path == keep {
            continue;
        }
        std::fs::remove_file(&path)?;
        total -= size;
        deleted += 1;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn trimming_deletes_the_entries_used_longest_ago_never_the_new_one() {
        let root = tempfile::tempdir().expect("dir");
        let (this, other) = (root.path().join("aaaa"), root.path().join("bbbb"));
        std::fs::create_dir_all(&this).expect("dir");
        std::fs::create_dir_all(&other).expect("dir");
        let now = SystemTime::now();
        let entry = |dir: &std::path::Path, name: &str, age_s: u64| {
            let path = dir.join(name);
            std::fs::write(&path, vec![0u8; 100]).expect("write");
            let file = std::fs::File::options()
                .append(true)
                .open(&path)
                .expect("open");
            file.set_modified(now - Duration::from_secs(age_s))
                .expect("mtime");
            path
        };
        let oldest = entry(&other, "old-engine.cwasm", 300);
        let old = entry(&this, "old.cwasm", 200);
        let used = entry(&this, "used.cwasm", 100);
        let new = entry(&this, "new.cwasm", 400); // just written, its time notwithstanding
        std::fs::write(this.join("notes.txt"), vec![0u8; 1000]).expect("write");
        mark_used(&used);

        assert_eq!(trim(root.path(), &new, 250).expect("trim"), 2);
        assert!(
            !oldest.exists() && !old.exists(),
            "the two used longest ago went"
        );
        assert!(used.exists() && new.exists());
        assert!(
            this.join("notes.txt").exists(),
            "only entries are counted and deleted"
        );
        assert_eq!(trim(root.path(), &new, 250).expect("trim"), 0);
    }
}
