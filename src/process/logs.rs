//! App and step logs: opened for appending (never through a symlink),
//! start markers, and the last lines quoted in failure messages.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Open a log for appending (and reading: whether it ends a line, see
/// [`ends_line`]), never through a symlink.
pub fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Where a line begins in a log file: the file (device, inode) and the
/// byte offset. Recorded by zdd, never read from the log itself, so no
/// line the app prints can pass for it. In the state as TOML integers,
/// which are signed: each number's 64 bits as they are (an inode above
/// 2^63, which some network filesystems hand out, reads back the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpot {
    #[serde(with = "as_i64")]
    pub dev: u64,
    #[serde(with = "as_i64")]
    pub inode: u64,
    #[serde(with = "as_i64")]
    pub offset: u64,
}

/// A `u64` as the `i64` of the same bits.
mod as_i64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(*n as i64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        i64::deserialize(d).map(|n| n as u64)
    }
}

impl LogSpot {
    /// Whether `file` is the file this spot is in, and zdd's marker line
    /// begins there still (an inode number is reused once its file is
    /// gone: a file that merely has it proves nothing).
    pub fn is_in(&self, file: &File) -> bool {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let Ok(meta) = file.metadata() else {
            return false;
        };
        let mut head = [0u8; MARK.len()];
        (meta.dev(), meta.ino()) == (self.dev, self.inode)
            && file.read_exact_at(&mut head, self.offset).is_ok()
            && head == *MARK
    }
}

/// How every marker line of zdd's begins.
const MARK: &[u8; 8] = b"=== zdd ";

/// Append a marker line to a log, so each start can be found in it.
pub fn log_marker(path: &Path, text: &str) {
    log_marker_at(path, text);
}

/// [`log_marker`], saying where the marker line begins: one write, on a
/// line of its own (the keeper appends to the same file), its offset
/// taken after it. When the write fails (a full disk), where it would
/// have begun: what follows is still the start's.
pub fn log_marker_at(path: &Path, text: &str) -> Option<LogSpot> {
    use std::os::unix::fs::MetadataExt;
    let mut f = open_log(path).ok()?;
    let meta = f.metadata().ok()?;
    let mid_line = !ends_line(&f, meta.len());
    let line = format!(
        "{}=== zdd {}: {text}\n",
        if mid_line { "\n" } else { "" },
        crate::text::now()
    );
    let offset = match f
        .write_all(line.as_bytes())
        .and_then(|()| f.stream_position())
    {
        Ok(end) => end - line.len() as u64 + u64::from(mid_line),
        Err(_) => meta.len(),
    };
    Some(LogSpot {
        dev: meta.dev(),
        inode: meta.ino(),
        offset,
    })
}

/// Whether `file`, `len` bytes long, ends a line (an empty one does; one
/// that cannot be read is taken to).
pub fn ends_line(file: &File, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    len == 0
        || file
            .read_exact_at(&mut last, len - 1)
            .map_or(true, |()| last[0] == b'\n')
}

/// Where the first line that begins at or after `from` (within `scan`
/// bytes of it) begins: `from` itself at the file's start, else just
/// after the next newline; `None` when none comes within `scan`.
pub fn next_line_start(file: &File, from: u64, scan: usize) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    if from == 0 {
        return Some(0);
    }
    let mut window = vec![0u8; scan];
    let n = file.read_at(&mut window, from - 1).ok()?;
    window[..n]
        .iter()
        .position(|&b| b == b'\n')
        .map(|nl| from - 1 + nl as u64 + 1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_starts_a_line_of_its_own_and_its_spot_finds_it() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("a.log");
        std::fs::write(&path, "a prompt without its end").unwrap();
        let spot = log_marker_at(&path, "start of x").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("a prompt without its end\n=== zdd "),
            "{text}"
        );
        assert!(text.ends_with(": start of x\n"), "{text}");
        assert_eq!(spot.offset, "a prompt without its end\n".len() as u64);
        assert!(spot.is_in(&File::open(&path).unwrap()));
        // The file rewritten (its inode kept): no marker there now.
        std::fs::write(&path, "something else entirely, and longer\n").unwrap();
        assert!(!spot.is_in(&File::open(&path).unwrap()));
    }

    #[test]
    fn a_spot_of_any_inode_reads_back_from_the_state_as_it_was() {
        // TOML's integers are signed; some filesystems' inodes are not.
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Holder {
            spot: LogSpot,
        }
        let spot = LogSpot {
            dev: 42,
            inode: u64::MAX - 5,
            offset: 7,
        };
        let text = toml::to_string(&Holder { spot }).unwrap();
        assert_eq!(toml::from_str::<Holder>(&text).unwrap().spot, spot);
    }
}
