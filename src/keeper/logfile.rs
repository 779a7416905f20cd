//! The app's log as its keeper writes it: what comes through the pipe goes
//! to `ROOT/logs/NAME.log`, which is rotated by rename at a line boundary
//! when it would pass `logs.max_size` (`NAME.log.1` is the newest of
//! `logs.keep` rotated files, as with logrotate), each line optionally
//! stamped with an RFC 3339 time. Beside each file a times index
//! (`NAME.log.times`, lines `SECS OFFSET`: where the first byte written in
//! that second or later starts, or the line it continues) lets `zdd logs
//! --since` start in the right place, at a line's start. Nothing here ever blocks the app: a write that fails (a full disk)
//! drops its lines, counts them, and one line says how many once a write
//! works again.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::config::LogPolicy;

/// How long the end of a line the app has not finished yet is held back
/// (a line written in pieces lands whole in one file, across a rotation);
/// a prompt or a progress bar without a newline reaches the file after it.
pub const HOLD: Duration = Duration::from_millis(100);
/// The most of an unfinished line held back.
const HOLD_MAX: usize = 64 * 1024;

/// The times index beside a log file.
pub fn times_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".times");
    PathBuf::from(name)
}

/// The `n`th rotated file of `log` (`NAME.log.1` is the newest).
pub fn rotated_path(log: &Path, n: u32) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The log being written.
pub struct LogFile {
    path: PathBuf,
    policy: LogPolicy,
    file: Option<File>,
    times: Option<File>,
    /// The file's size when the chunk being written began, plus what the
    /// keeper wrote since.
    size: u64,
    /// The last byte buffered ended a line.
    at_line_start: bool,
    /// The last byte written to the file ended a line.
    file_ends_line: bool,
    /// How much of the line being written is in the file already (an app
    /// that writes a line in pieces): where an index entry made mid-line
    /// points back to.
    partial: u64,
    /// The second of the last index entry.
    indexed_second: Option<u64>,
    /// Since when the end of `buf`, a line not finished yet, is held back.
    held_since: Option<Instant>,
    /// Lines dropped since the last write that worked, and why.
    lost: u64,
    lost_why: String,
    buf: Vec<u8>,
}

impl LogFile {
    /// The log at `path`, appended to (opened now, or at the next write
    /// if it cannot be opened now).
    pub fn new(path: &Path, policy: LogPolicy) -> LogFile {
        let mut log = LogFile {
            path: path.to_path_buf(),
            policy,
            file: None,
            times: None,
            size: 0,
            at_line_start: true,
            file_ends_line: true,
            partial: 0,
            held_since: None,
            indexed_second: None,
            lost: 0,
            lost_why: String::new(),
            buf: Vec::with_capacity(32 * 1024),
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        match crate::process::open_log(&self.path) {
            Ok(f) => {
                self.size = f.metadata().map_or(0, |m| m.len());
                self.partial = 0;
                self.file_ends_line = crate::process::ends_line(&f, self.size);
                self.file = Some(f);
                self.times = crate::process::open_log(&times_path(&self.path)).ok();
                self.indexed_second = None;
            }
            Err(e) => {
                self.file = None;
                self.lost_why = e.to_string();
            }
        }
    }

    /// One of the keeper's own lines.
    pub fn say(&mut self, line: &str) {
        let mut text = Vec::with_capacity(line.len() + 2);
        if !self.at_line_start {
            text.push(b'\n');
        }
        text.extend_from_slice(line.as_bytes());
        text.push(b'\n');
        self.write(&text);
    }

    /// What the app wrote (any bytes; lines may come in pieces).
    pub fn write(&mut self, data: &[u8]) {
        self.write_at(data, SystemTime::now());
    }

    /// [`LogFile::write`] at the time `now`.
    fn write_at(&mut self, mut data: &[u8], now: SystemTime) {
        if data.is_empty() {
            return;
        }
        match &self.file {
            None => self.reopen(),
            // zdd's own marker lines are appended beside the keeper's: the
            // cap counts them too.
            Some(f) => {
                if let Ok(m) = f.metadata() {
                    self.size = m.len();
                }
            }
        }
        if self.lost > 0 && self.file.is_some() && !self.note_lost() {
            // Still failing: the new lines are lost too, and counted.
            self.drop_lines(data);
            return;
        }
        let stamp = if self.policy.timestamps {
            format!("{} ", humantime::format_rfc3339_micros(now))
        } else {
            String::new()
        };
        self.index(now);
        let max = self.policy.max_size;
        while !data.is_empty() {
            let end = data
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| i + 1);
            let ends_line = data[end - 1] == b'\n';
            let prefix = if self.at_line_start { stamp.len() } else { 0 };
            let pending = self.size + self.buf.len() as u64;
            // Room for the piece, and for a newline if it ends mid-line.
            let needs = (prefix + end + usize::from(!ends_line)) as u64;
            if pending + needs > max && pending > 0 && !self.at_line_start {
                // A line that would cross the cap. Held back whole (none
                // of it in the file yet), it goes on in the next file if
                // it fits in one; else it ends here.
                let start = self.unfinished_from();
                let whole = start.is_some() || self.file_ends_line;
                let start = start.unwrap_or(0);
                if whole && (self.buf.len() - start) as u64 + needs <= max {
                    let line = self.buf.split_off(start);
                    if self.rotate().is_err() {
                        self.drop_lines(data);
                        return;
                    }
                    self.buf.extend_from_slice(&line);
                    self.index(now);
                    continue;
                }
                self.buf.push(b'\n');
                self.at_line_start = true;
            }
            if pending + needs > max && pending > 0 {
                if self.rotate().is_err() {
                    self.drop_lines(data);
                    return;
                }
                self.index(now);
                continue;
            }
            // A line longer than a whole file is cut at the cap.
            let take = if pending + needs > max {
                ((max - pending) as usize)
                    .saturating_sub(prefix + 1)
                    .clamp(1, end)
            } else {
                end
            };
            if self.at_line_start {
                self.buf.extend_from_slice(stamp.as_bytes());
            }
            self.buf.extend_from_slice(&data[..take]);
            self.at_line_start = data[take - 1] == b'\n';
            data = &data[take..];
        }
        let _ = self.flush_lines();
    }

    /// Before anything more reaches the file after lines were lost: the
    /// line that says how many (a line held back goes after it, whole).
    /// `false` while it cannot be written: the count stands.
    fn note_lost(&mut self) -> bool {
        let held_since = self.held_since;
        let start = self.unfinished_from().unwrap_or(0);
        let held = match held_since {
            Some(_) => self.buf.split_off(start),
            None => Vec::new(),
        };
        if !held.is_empty() {
            self.at_line_start = start > 0 || self.file_ends_line;
        }
        self.own_line(&format!(
            "=== zdd {}: keeper {}: {} line(s) lost: could not write the log ({})",
            crate::text::now(),
            std::process::id(),
            self.lost,
            self.lost_why
        ));
        // The note is no app line: a failed one adds nothing to the count.
        let lost = self.lost;
        let flushed = self.flush();
        if !held.is_empty() {
            self.buf.extend_from_slice(&held);
            self.at_line_start = false;
            self.held_since = held_since;
        }
        self.lost = match flushed {
            Ok(()) => 0,
            Err(_) => lost,
        };
        flushed.is_ok()
    }

    /// Where in `buf` the line not finished yet begins: after its last
    /// newline; `None` when `buf` holds none (the line began before it).
    fn unfinished_from(&self) -> Option<usize> {
        self.buf.iter().rposition(|&b| b == b'\n').map(|nl| nl + 1)
    }

    /// When the line held back is due in the file, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        self.held_since.map(|since| since + HOLD)
    }

    /// Write the line held back once [`HOLD`] has passed.
    pub fn flush_due(&mut self, now: Instant) {
        if self.deadline().is_some_and(|due| due <= now) {
            // After a loss, the note first; while it cannot be written,
            // the line held back is lost too (never held on: no spin).
            if self.lost == 0 || self.note_lost() {
                let _ = self.flush();
            } else {
                let held = std::mem::take(&mut self.buf);
                self.drop_lines(&held);
                self.buf = held;
                self.buf.clear();
                self.held_since = None;
                self.at_line_start = self.file_ends_line;
            }
        }
    }

    /// Write what is buffered up to its last line's end; hold back a line
    /// not finished yet (at most [`HOLD_MAX`] of it).
    fn flush_lines(&mut self) -> std::io::Result<()> {
        let end = self.unfinished_from().unwrap_or(0);
        let held = self.buf.len() - end;
        if held == 0 || held > HOLD_MAX {
            return self.flush();
        }
        let since = self.held_since.take().unwrap_or_else(Instant::now);
        let line = self.buf.split_off(end);
        let result = self.flush();
        self.buf.extend_from_slice(&line);
        self.at_line_start = false;
        self.held_since = Some(since);
        result
    }

    /// A line of the keeper's own, whatever the cap (it is short).
    fn own_line(&mut self, line: &str) {
        if !self.at_line_start {
            self.buf.push(b'\n');
        }
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.at_line_start = true;
    }

    /// The index entry for the second `now`, once per second: where the
    /// line being written starts (the next one, at a line's start).
    fn index(&mut self, now: SystemTime) {
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.indexed_second == Some(second) {
            return;
        }
        let offset = match (self.at_line_start, self.unfinished_from()) {
            (true, _) => self.size + self.buf.len() as u64,
            (false, Some(start)) => self.size + start as u64,
            (false, None) => self.size.saturating_sub(self.partial),
        };
        if let Some(times) = &mut self.times {
            if times
                .write_all(format!("{second} {offset}\n").as_bytes())
                .is_ok()
            {
                self.indexed_second = Some(second);
            }
        }
    }

    /// Write all that is buffered; what cannot be written is counted as
    /// lost.
    fn flush(&mut self) -> std::io::Result<()> {
        self.held_since = None;
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let mut written = 0;
        let result = match &mut self.file {
            None => Err(std::io::Error::other(self.lost_why.clone())),
            Some(f) => loop {
                if written == buf.len() {
                    break Ok(());
                }
                match f.write(&buf[written..]) {
                    Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            },
        };
        self.size += written as u64;
        if written > 0 {
            self.file_ends_line = buf[written - 1] == b'\n';
            self.partial = match buf[..written].iter().rposition(|&b| b == b'\n') {
                Some(nl) => (written - nl - 1) as u64,
                None => self.partial + written as u64,
            };
        }
        // A write that works does not end a loss: only the note that says
        // so does (`note_lost`).
        if let Err(e) = &result {
            self.lost_why = e.to_string();
            self.drop_lines(&buf[written..]);
            // What follows starts where the file ends.
            self.at_line_start = self.file_ends_line;
        }
        // The allocation is kept for the next chunk.
        self.buf = buf;
        self.buf.clear();
        result
    }

    /// Count the lines in `data` as lost.
    fn drop_lines(&mut self, data: &[u8]) {
        let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        self.lost += lines.max(1);
    }

    /// `NAME.log` becomes `NAME.log.1`, `.1` becomes `.2`, … up to
    /// `keep` (the oldest is replaced), index files with them; a new
    /// `NAME.log` is started.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.flush()?;
        let keep = self.policy.keep.max(1);
        let both = |p: &Path| [p.to_path_buf(), times_path(p)];
        for n in (1..keep).rev() {
            for (from, to) in both(&rotated_path(&self.path, n))
                .into_iter()
                .zip(both(&rotated_path(&self.path, n + 1)))
            {
                rename_if_there(&from, &to)?;
            }
        }
        for (from, to) in both(&self.path)
            .into_iter()
            .zip(both(&rotated_path(&self.path, 1)))
        {
            rename_if_there(&from, &to)?;
        }
        // Files beyond `keep`, left by a larger `logs.keep` before.
        for n in keep + 1.. {
            let older = rotated_path(&self.path, n);
            if std::fs::symlink_metadata(&older).is_err() {
                break;
            }
            for path in both(&older) {
                let _ = std::fs::remove_file(path);
            }
        }
        self.reopen();
        match self.file {
            Some(_) => Ok(()),
            None => Err(std::io::Error::other(self.lost_why.clone())),
        }
    }

    /// Write out anything buffered (before the keeper ends).
    pub fn finish(&mut self) {
        let _ = self.flush();
    }

    #[cfg(test)]
    fn set_file(&mut self, file: File) {
        self.file = Some(file);
    }
}

fn rename_if_there(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_size: u64, keep: u32) -> LogPolicy {
        LogPolicy {
            max_size,
            keep,
            timestamps: false,
        }
    }

    /// /dev/full: every write fails with ENOSPC, at once (never blocks).
    fn full_disk() -> File {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    }

    /// Every file of the log, oldest first.
    fn files(log: &Path, keep: u32) -> Vec<String> {
        let mut all: Vec<PathBuf> = (1..=keep).rev().map(|n| rotated_path(log, n)).collect();
        all.push(log.to_path_buf());
        all.iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }

    #[test]
    fn lines_arrive_whole_and_in_order_across_rotations_and_the_cap_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::new(&path, policy(4096, 3));
        // Lines in pieces of awkward sizes, as a pipe hands them out.
        let text: String = (0..2000)
            .map(|i| format!("line {i:05} {}\n", "x".repeat(i % 50)))
            .collect();
        for piece in text.as_bytes().chunks(777) {
            log.write(piece);
        }
        log.finish();
        let kept = files(&path, 3);
        assert_eq!(kept.len(), 4, "the current file and 3 rotated ones");
        for f in &kept {
            assert!(f.len() <= 4096, "a file of {} bytes", f.len());
            assert!(f.ends_with('\n') || f.is_empty());
        }
        let joined = kept.concat();
        assert!(
            text.ends_with(&joined),
            "the newest lines, in order, unbroken"
        );
        assert!(
            joined.len() > 3 * 4096 - 200,
            "rotated near the cap: {}",
            joined.len()
        );
        assert!(!path.with_extension("log.4").exists());
    }

    #[test]
    fn a_line_written_in_pieces_lands_whole_in_the_next_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::new(&path, policy(100, 2));
        let first = format!("{}\n", "x".repeat(80));
        log.write(first.as_bytes());
        log.write(b"abc");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            first,
            "the unfinished line is held back"
        );
        assert!(log.deadline().is_some());
        log.write(b"defghijklmnopqrstuvwxyz\n");
        log.finish();
        assert_eq!(
            files(&path, 2),
            [first, "abcdefghijklmnopqrstuvwxyz\n".into()]
        );
    }

    #[test]
    fn an_unfinished_line_reaches_the_file_once_held_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::new(&path, LogPolicy::DEFAULT);
        log.write(b"done\nprompt> ");
        let due = log.deadline().expect("held back");
        log.flush_due(due - Duration::from_millis(1));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "done\n");
        log.flush_due(due);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "done\nprompt> ");
        assert_eq!(log.deadline(), None);
        // Its end comes later: the same line.
        log.write(b"yes\n");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "done\nprompt> yes\n"
        );
        // More than HOLD_MAX without a newline is not held back.
        log.write(&vec![b'z'; HOLD_MAX + 1]);
        assert_eq!(log.deadline(), None);
        assert!(std::fs::metadata(&path).unwrap().len() as usize > HOLD_MAX);
    }

    #[test]
    fn a_lowered_keep_removes_the_files_beyond_it_at_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::new(&path, policy(1000, 4));
        for i in 0..300 {
            log.write(format!("line {i:05} of the first run\n").as_bytes());
        }
        log.finish();
        assert!(rotated_path(&path, 4).exists());
        let mut log = LogFile::new(&path, policy(1000, 2));
        for i in 0..40 {
            log.write(format!("line {i:05} of the second\n").as_bytes());
        }
        log.finish();
        assert!(rotated_path(&path, 2).exists());
        for n in [3, 4] {
            assert!(!rotated_path(&path, n).exists(), "a.log.{n}");
            assert!(
                !times_path(&rotated_path(&path, n)).exists(),
                "a.log.{n}.times"
            );
        }
    }

    #[test]
    fn a_line_longer_than_a_file_is_cut_and_still_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::new(&path, policy(1000, 2));
        let long = "y".repeat(2500);
        log.write(long.as_bytes());
        log.write(b"\nnext\n");
        log.finish();
        let kept = files(&path, 2);
        assert!(kept.iter().all(|f| f.len() <= 1000), "{kept:?}");
        assert!(kept.last().unwrap().ends_with("next\n"));
    }

    #[test]
    fn timestamps_start_each_line_and_the_index_points_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::new(
            &path,
            LogPolicy {
                timestamps: true,
                ..LogPolicy::DEFAULT
            },
        );
        log.write(b"one\ntw");
        log.write(b"o\nthree\n");
        log.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for (line, want) in lines.iter().zip(["one", "two", "three"]) {
            let (stamp, rest) = line.split_once(' ').unwrap();
            assert_eq!(rest, want);
            humantime::parse_rfc3339(stamp).expect("an RFC 3339 time");
        }
        let index = std::fs::read_to_string(times_path(&path)).unwrap();
        let (secs, offset) = index.lines().next().unwrap().split_once(' ').unwrap();
        assert_eq!(offset, "0");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now - secs.parse::<u64>().unwrap() < 60);
    }

    #[test]
    fn an_index_entry_made_mid_line_points_at_the_lines_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::new(&path, LogPolicy::DEFAULT);
        let at = |s: u64| UNIX_EPOCH + std::time::Duration::from_secs(s);
        log.write_at(b"one\ntw", at(100));
        log.write_at(b"o\nthr", at(101)); // "two" began in second 100
        log.write_at(b"ee\n", at(102)); // "three" began in second 101
        log.write_at(b"four\n", at(103));
        log.finish();
        let index = std::fs::read_to_string(times_path(&path)).unwrap();
        assert_eq!(index, "100 0\n101 4\n102 8\n103 14\n");
        let text = std::fs::read_to_string(&path).unwrap();
        for (offset, line) in [(4, "two"), (8, "three"), (14, "four")] {
            assert!(text[offset..].starts_with(line), "{offset}: {text:?}");
        }
    }

    #[test]
    fn a_line_held_back_through_a_loss_comes_after_the_note() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::new(&path, LogPolicy::DEFAULT);
        log.write(b"before\nhalf");
        log.set_file(full_disk());
        log.write(b" a line\nthe next"); // the first is lost, the next held
        assert_eq!(log.lost, 1);
        log.set_file(crate::process::open_log(&path).unwrap());
        // Space again, and the held line is due before anything else comes:
        // the note still goes first.
        let due = log.deadline().expect("held");
        log.flush_due(due);
        log.write(b" one\n");
        log.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "before", "{text}");
        assert!(lines[1].contains("1 line(s) lost"), "{text}");
        assert_eq!(lines[2], "the next one", "{text}");
        assert_eq!(lines.len(), 3, "{text}");
    }

    #[test]
    fn a_full_disk_drops_lines_counts_them_and_says_so_once_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::new(&path, LogPolicy::DEFAULT);
        log.write(b"before\n");
        log.set_file(full_disk());
        log.write(b"lost 1\nlost 2\n");
        log.write(b"lost 3\n");
        assert_eq!(log.lost, 3);
        // Space again.
        log.set_file(crate::process::open_log(&path).unwrap());
        log.write(b"after\n");
        log.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "before");
        assert!(
            lines[1].contains("3 line(s) lost: could not write the log (No space left on device"),
            "{text}"
        );
        assert_eq!(lines[2], "after");
        assert_eq!(lines.len(), 3);

        // A line held back while the disk was full stays whole, after the
        // note.
        log.write(b"half a li");
        log.set_file(full_disk());
        log.write(b"ne\nthe next li");
        log.set_file(crate::process::open_log(&path).unwrap());
        log.write(b"ne\n");
        log.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[3].contains("1 line(s) lost"), "{text}");
        assert_eq!(lines[4], "the next line", "{text}");
        assert_eq!(lines.len(), 5, "{text}");
    }
}
