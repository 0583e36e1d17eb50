//! Replacing a file in one rename, so that a reader (another host sharing a compile cache, a
//! host watching `pipeline.toml`) never sees half of it.

use std::path::Path;

/// Writes `bytes` beside `path` (a hidden file named after it and this process) and renames it
/// over `path`.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}
