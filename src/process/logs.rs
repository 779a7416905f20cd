//! App and step logs: opened for appending (never through a symlink),
//! start markers, and the last lines quoted in failure messages.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Open a log for appending, never through a symlink.
pub fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Where a line begins in a log file: the file (device, inode) and the
/// byte offset. Recorded by zdd, never read from the log itself, so no
/// line the app prints can pass for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpot {
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
}

/// Append a marker line to a log, so each start can be found in it.
pub fn log_marker(path: &Path, text: &str) {
    log_marker_at(path, text);
}

/// [`log_marker`], saying where the marker line begins.
pub fn log_marker_at(path: &Path, text: &str) -> Option<LogSpot> {
    use std::os::unix::fs::MetadataExt;
    let mut f = open_log(path).ok()?;
    let meta = f.metadata().ok()?;
    writeln!(f, "=== zdd {}: {text}", crate::text::now()).ok()?;
    Some(LogSpot {
        dev: meta.dev(),
        inode: meta.ino(),
        offset: meta.len(),
    })
}

/// How long a log is now: where what is written from now on starts.
pub fn log_size(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |m| m.len())
}

/// The last `n` lines of a log file written from byte `since` on (reads
/// at most its last 64 KiB).
fn tail(path: &Path, n: usize, since: u64) -> Vec<String> {
    let Ok(mut f) = crate::fsutil::open_nofollow(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // A log shorter than `since` was replaced: all of it is new.
    let since = if since > len { 0 } else { since };
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024).max(since)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// "\nlast lines of LOG:\n  ..." to end a failure message, or nothing;
/// each line escaped (the app wrote it).
pub fn tail_note(path: &Path) -> String {
    tail_note_since(path, 0)
}

/// [`tail_note`] of what was written from byte `since` on (see
/// [`log_size`]): a failure quotes its own output, not an earlier run's.
pub fn tail_note_since(path: &Path, since: u64) -> String {
    let lines = tail(path, 15, since);
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\nlast lines of {}:\n{}",
        path.display(),
        lines
            .iter()
            .map(|l| format!("  {}", crate::text::escape(l)))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Where a slot's or named process's log lives.
pub fn log_path(root: &Path, name: &str) -> PathBuf {
    root.join("logs").join(format!("{name}.log"))
}
