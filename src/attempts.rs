//! The output of every deploy, rollback and restart attempt, failed ones
//! included, one file each in `ROOT/logs/deploys/`: zdd's marker lines for
//! each step, the output of the checkout's hooks, the build and the verify
//! and `after_swap` hooks (through a pipe zdd reads), the app's output from
//! its start until it was verified or stopped (copied from its slot's log),
//! and one line that says how the attempt ended. It owns writing them,
//! capping a step's output as it comes ([`StepOutput`]), cutting one that
//! outgrew [`FILE_CAP`] to its head and tail when the attempt ends, keeping
//! the newest [`KEPT`], and `zdd logs --deploy [COMMIT]`.
//!
//! The folder is root's (`root::DEPLOY_LOGS`, mode 0700) and every file in
//! it is opened without following a symlink. The app's user never writes
//! into an attempt's file: its build's output comes through a pipe.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::state::{Action, Slot};
use crate::{git, root, text};

/// How many attempts' files are kept: the newest, whatever their outcome.
pub const KEPT: usize = 30;
/// The most an attempt's file keeps once the attempt ended: its first
/// [`HEAD_KEPT`] bytes and its last ones, the middle cut out (a build that
/// wrote more).
const FILE_CAP: u64 = 4 * 1024 * 1024;
const HEAD_KEPT: u64 = 64 * 1024;
/// The most of one build's or hook's output that an attempt's file takes
/// once it holds [`FILE_CAP`]: the step's last bytes.
const STEP_TAIL_KEPT: usize = 1024 * 1024;
/// The most of an app's start output copied into an attempt's file: its
/// last bytes (the rest stays in the slot's log while that keeps it).
const START_OUTPUT_CAP: u64 = 256 * 1024;

/// The file of one attempt, open for appending.
pub struct AttemptLog {
    path: PathBuf,
    file: File,
    /// [`AttemptLog::end`] wrote how it ended.
    ended: std::cell::Cell<bool>,
}

impl AttemptLog {
    /// Create the file of a new attempt (`TIME-ACTION-SHA.log`), after
    /// removing the oldest files beyond [`KEPT`], and write its first line.
    pub fn create(root: &Path, action: Action, sha: &str, slot: Slot) -> Result<AttemptLog> {
        root::prepare(root, &[root::LOGS, root::DEPLOY_LOGS])?;
        let dir = root.join(root::DEPLOY_LOGS.0);
        prune(&dir, KEPT - 1);
        let stamp = file_stamp(SystemTime::now());
        let mut n = 1;
        loop {
            let name = match n {
                1 => format!("{stamp}-{}-{sha}.log", action.as_str()),
                n => format!("{stamp}.{n:02}-{}-{sha}.log", action.as_str()),
            };
            let path = dir.join(name);
            match create_new(&path) {
                Ok(file) => {
                    let log = AttemptLog {
                        path,
                        file,
                        ended: std::cell::Cell::new(false),
                    };
                    log.marker(&format!("{} of {sha} to slot {slot}", action.as_str()));
                    return Ok(log);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(Error::io("cannot create", &path)(e)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append "=== zdd TIME: TEXT". A write that fails (a full disk) is
    /// let go: the attempt does not fail for its own log.
    pub fn marker(&self, text: &str) {
        let _ = writeln!(&self.file, "=== zdd {}: {text}", text::now());
    }

    /// The last line: how the attempt ended.
    pub fn end(&self, text: &str) {
        self.marker(text);
        self.ended.set(true);
        if let Err(e) = self.trim() {
            log::warn!("cannot trim {}: {e}", self.path.display());
        }
    }

    /// Cut a file longer than [`FILE_CAP`] down to its head and tail, with
    /// a line that says so between them: written aside, then renamed over.
    fn trim(&self) -> std::io::Result<()> {
        let len = self.file.metadata()?.len();
        if len <= FILE_CAP {
            return Ok(());
        }
        let mut src = crate::fsutil::open_nofollow(&self.path)?;
        let mut head = Vec::new();
        (&mut src).take(HEAD_KEPT).read_to_end(&mut head)?;
        let tail_from = len - (FILE_CAP - HEAD_KEPT);
        src.seek(SeekFrom::Start(tail_from))?;
        let mut tail = Vec::new();
        src.read_to_end(&mut tail)?;
        let mut text = head;
        if !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(
            format!(
                "=== zdd: {} bytes cut out here (an attempt's file keeps its first {} KiB and its last {} KiB)\n",
                tail_from - HEAD_KEPT,
                HEAD_KEPT / 1024,
                (FILE_CAP - HEAD_KEPT) / 1024
            )
            .as_bytes(),
        );
        text.extend_from_slice(&tail);
        crate::fsutil::write_atomic(&self.path, &text, 0o600)
    }

    /// Copy the app's output since `start` — where zdd's start marker
    /// begins in `slot_log` (its last [`START_OUTPUT_CAP`] bytes) — under a
    /// marker line naming where it comes from. A log rotated since holds the
    /// rest: the start is in `SLOT.log.1` (that file, by its inode), else
    /// further back, and the current file is all newer.
    pub fn copy_output(&self, slot_log: &Path, start: Option<crate::process::LogSpot>) {
        let open = |path: &Path| {
            let file = crate::fsutil::open_nofollow(path).ok()?;
            let meta = file.metadata().ok()?;
            Some((file, meta.len(), path.to_path_buf()))
        };
        let Some((file, len, path)) = open(slot_log) else {
            return;
        };
        // (file, from, to, path), oldest first.
        let mut parts = Vec::new();
        let mut earlier = "";
        match start {
            Some(s) if s.is_in(&file) => {
                let from = after_marker(&file, s.offset, len);
                parts.push((file, from, len, path))
            }
            Some(s) => {
                let rotated = crate::keeper::rotated_path(slot_log, 1);
                match open(&rotated) {
                    Some((f, rlen, rpath)) if s.is_in(&f) => {
                        let from = after_marker(&f, s.offset, rlen);
                        parts.push((f, from, rlen, rpath))
                    }
                    _ => earlier = "; its earlier part is in the log's older rotated files",
                }
                parts.push((file, 0, len, path));
            }
            None => parts.push((file, 0, len, path)),
        }
        let total: u64 = parts.iter().map(|(_, from, to, _)| to - from).sum();
        if total == 0 {
            return;
        }
        let mut skip = total.saturating_sub(START_OUTPUT_CAP);
        let left_out = match skip {
            0 => String::new(),
            n => format!("; its first {n} bytes are left out here"),
        };
        let names: Vec<String> = parts
            .iter()
            .map(|(_, _, _, p)| p.display().to_string())
            .collect();
        self.marker(&format!(
            "the app's output, from {}{left_out}{earlier}:",
            names.join(" and ")
        ));
        let mut buf = Vec::new();
        for (mut f, from, to, _) in parts {
            let skipped = skip.min(to - from);
            skip -= skipped;
            let from = from + skipped;
            if f.seek(SeekFrom::Start(from)).is_err()
                || f.take(to - from).read_to_end(&mut buf).is_err()
            {
                return;
            }
        }
        let mut out = &self.file;
        let _ = out.write_all(&buf);
        if !buf.ends_with(b"\n") {
            let _ = out.write_all(b"\n");
        }
    }
}

/// Where the line after zdd's marker at `offset` begins: the attempt's
/// file has that marker already, as the start it says.
fn after_marker(file: &File, offset: u64, len: u64) -> u64 {
    crate::process::next_line_start(file, offset + 1, 4096)
        .unwrap_or(offset)
        .min(len)
}

/// A build's or hook's output on its way into the attempt's file (or the
/// slot's log, without one), capped while the step runs: written as it
/// comes until the file holds [`FILE_CAP`], then only the step's last
/// [`STEP_TAIL_KEPT`] bytes kept, written when it ends after a line that
/// says how much was cut. So a build that writes without end fills no
/// disk; the end of its output, where its error is, stays.
pub struct StepOutput {
    file: File,
    /// What the file may still take before the cap.
    room: u64,
    /// The last byte written to the file ended a line.
    at_line_start: bool,
    /// The step's output beyond the cap: its last bytes.
    tail: std::collections::VecDeque<u8>,
    /// Bytes dropped from the front of `tail`.
    cut: u64,
    label: &'static str,
}

impl StepOutput {
    /// Append to `path` (opened without following a symlink) the output of
    /// the step `label` names.
    pub fn open(path: &Path, label: &'static str) -> std::io::Result<StepOutput> {
        let file = crate::process::open_log(path)?;
        let len = file.metadata()?.len();
        Ok(StepOutput {
            file,
            room: FILE_CAP.saturating_sub(len),
            at_line_start: true,
            tail: std::collections::VecDeque::new(),
            cut: 0,
            label,
        })
    }

    /// Take the next `bytes` of the step's output. A write that fails (a
    /// full disk) is let go: the step does not fail for its log.
    pub fn write(&mut self, mut bytes: &[u8]) {
        if self.tail.is_empty() && self.room > 0 {
            let n = bytes
                .len()
                .min(usize::try_from(self.room).unwrap_or(usize::MAX));
            if n > 0 {
                let _ = (&self.file).write_all(&bytes[..n]);
                self.room -= n as u64;
                self.at_line_start = bytes[n - 1] == b'\n';
                bytes = &bytes[n..];
            }
        }
        if bytes.is_empty() {
            return;
        }
        self.tail.extend(bytes);
        let over = self.tail.len().saturating_sub(STEP_TAIL_KEPT);
        if over > 0 {
            self.tail.drain(..over);
            self.cut += over as u64;
        }
    }

    /// The step ended: write the tail kept beyond the cap, if any, after a
    /// line that says how much was cut before it.
    pub fn finish(self) {
        if self.tail.is_empty() {
            return;
        }
        let mut text = Vec::with_capacity(self.tail.len() + 200);
        if self.cut > 0 {
            if !self.at_line_start {
                text.push(b'\n');
            }
            text.extend_from_slice(
                format!(
                    "=== zdd: {} bytes of the {}'s output cut out here (an attempt's file takes {} MiB as it runs, then each step's last {} KiB)\n",
                    self.cut,
                    self.label,
                    FILE_CAP / (1024 * 1024),
                    STEP_TAIL_KEPT / 1024
                )
                .as_bytes(),
            );
        }
        let (a, b) = self.tail.as_slices();
        text.extend_from_slice(a);
        text.extend_from_slice(b);
        let _ = (&self.file).write_all(&text);
    }
}

impl Drop for AttemptLog {
    /// An attempt that ended on an error of zdd's own (its state could not
    /// be written) still gets a last line.
    fn drop(&mut self) {
        if !self.ended.get() {
            self.marker("the attempt ended here, on an error of zdd's own: its message, and `zdd history`, say which");
        }
    }
}

/// `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600.
fn create_new(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// `2026-12-03T103755.123Z`: RFC 3339 in UTC with milliseconds, without
/// the colons; names sort as their times do.
fn file_stamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at)
        .to_string()
        .replace(':', "")
}

/// One attempt's file, as its name says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    /// When it began, as in the name.
    stamp: String,
    action: String,
    sha: String,
}

impl Entry {
    /// `TIME-ACTION-SHA.log`, or `None` for a file zdd did not write.
    fn parse(name: &str) -> Option<Entry> {
        let base = name.strip_suffix(".log")?;
        let (rest, sha) = base.rsplit_once('-')?;
        let (stamp, action) = rest.rsplit_once('-')?;
        let known = ["deploy", "rollback", "restart"].contains(&action);
        let hex = sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit());
        (known && hex && !stamp.is_empty()).then(|| Entry {
            name: name.to_string(),
            stamp: stamp.to_string(),
            action: action.to_string(),
            sha: sha.to_string(),
        })
    }

    /// "deploy of 5145c65a3ef0 at 2026-12-03T10:37:55Z", its time as
    /// `zdd history` writes times.
    fn described(&self) -> String {
        let s = &self.stamp;
        let at = match (s.get(..11), s.get(11..13), s.get(13..15), s.get(15..17)) {
            (Some(day), Some(h), Some(m), Some(sec)) if day.ends_with('T') => {
                format!("{day}{h}:{m}:{sec}Z")
            }
            _ => s.clone(),
        };
        format!("{} of {} at {at}", self.action, git::short(&self.sha))
    }
}

/// The attempts' files in `dir`, oldest first; none when it is missing.
/// `dir` must be a folder, not a symlink.
fn entries(dir: &Path) -> Result<Vec<Entry>> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(root::refused(dir, nix::errno::Errno::ELOOP.into())),
        Err(_) => return Ok(Vec::new()),
    }
    let read = std::fs::read_dir(dir).map_err(Error::io("cannot read", dir))?;
    let mut found: Vec<Entry> = read
        .flatten()
        .filter_map(|e| Entry::parse(&e.file_name().to_string_lossy()))
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Remove the oldest attempts' files beyond the newest `keep`.
fn prune(dir: &Path, keep: usize) {
    let Ok(all) = entries(dir) else { return };
    let excess = all.len().saturating_sub(keep);
    for e in &all[..excess] {
        if let Err(err) = std::fs::remove_file(dir.join(&e.name)) {
            log::warn!("cannot remove {}: {err}", dir.join(&e.name).display());
        }
    }
}

/// `zdd logs --deploy [COMMIT]`: print the file of the last attempt, or of
/// COMMIT's last one (a sha or its prefix, else a tag or branch resolved in
/// zdd's repository), its last `lines` lines if given; control characters
/// escaped, as for the app's logs. An attempt not kept is exit 2, naming
/// the ones that are.
pub fn show(root: &Path, commit: Option<&str>, lines: Option<usize>) -> Result<()> {
    let dir = root.join(root::DEPLOY_LOGS.0);
    let all = entries(&dir)?;
    if all.is_empty() {
        return Err(Error::Usage(format!(
            "no deploy attempt's output is kept in {} yet",
            dir.display()
        )));
    }
    let entry = match commit {
        None => all.last().expect("not empty"),
        Some(rev) => find(root, &all, rev)?,
    };
    let path = dir.join(&entry.name);
    let mut bytes = Vec::new();
    crate::fsutil::open_nofollow(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| root::refused(&path, e))?;
    let shown = match lines {
        Some(n) => last_lines(&bytes, n),
        None => &bytes[..],
    };
    let mut out = Vec::with_capacity(shown.len() + 64);
    text::printable_bytes(shown, false, &mut out);
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    text::write_stdout(&out).map_err(Error::io("cannot write", Path::new("stdout")))
}

/// The last attempt of the commit `rev` names.
fn find<'a>(root: &Path, all: &'a [Entry], rev: &str) -> Result<&'a Entry> {
    let lower = rev.to_ascii_lowercase();
    let hex = (4..=40).contains(&rev.len()) && rev.bytes().all(|b| b.is_ascii_hexdigit());
    let by_prefix = |sha: &str| all.iter().rev().find(|e| e.sha.starts_with(sha));
    if let Some(e) = by_prefix(&lower).filter(|_| hex) {
        return Ok(e);
    }
    let resolved = git::Rev::parse(rev)
        .ok()
        .and_then(|r| git::Repo::new(root).resolve(&r));
    if let Some(e) = resolved.as_ref().and_then(|c| by_prefix(&c.sha)) {
        return Ok(e);
    }
    let what = match &resolved {
        Some(c) if !c.sha.starts_with(&lower) => format!("{rev:?} ({})", git::short(&c.sha)),
        _ => format!("{rev:?}"),
    };
    let newest: Vec<String> = all.iter().rev().take(5).map(Entry::described).collect();
    Err(Error::Usage(format!(
        "no output of an attempt to deploy {what} is kept; the newest kept: {}{}",
        newest.join(", "),
        match all.len() > 5 {
            true => format!(" (and {} older)", all.len() - 5),
            false => String::new(),
        }
    )))
}

/// The end of `bytes` that holds its last `n` lines.
fn last_lines(bytes: &[u8], n: usize) -> &[u8] {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if n == 0 {
        return &[];
    }
    let mut seen = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return &bytes[i + 1..];
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "5145c65a3ef0d1b2c3d4e5f60718293a4b5c6d7e";

    #[test]
    fn names_parse_back() {
        let name = format!("2026-12-03T103755.123Z-deploy-{SHA}.log");
        let e = Entry::parse(&name).unwrap();
        assert_eq!(e.stamp, "2026-12-03T103755.123Z");
        assert_eq!(e.action, "deploy");
        assert_eq!(e.sha, SHA);
        let again = format!("2026-12-03T103755.123Z.02-rollback-{SHA}.log");
        assert_eq!(Entry::parse(&again).unwrap().action, "rollback");
        assert_eq!(
            e.described(),
            "deploy of 5145c65a3ef0 at 2026-12-03T10:37:55Z",
            "as zdd history writes times"
        );
        for bad in [
            "a.log".to_string(),
            format!("2026-12-03T103755.123Z-build-{SHA}.log"),
            format!("2026-12-03T103755.123Z-deploy-{}.log", &SHA[..12]),
            format!("-deploy-{SHA}.log"),
            format!("2026-12-03T103755.123Z-deploy-{SHA}.txt"),
        ] {
            assert_eq!(Entry::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn stamps_sort_as_times() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_000_000_123);
        let later = t + std::time::Duration::from_millis(1);
        let (a, b) = (file_stamp(t), file_stamp(later));
        assert!(!a.contains(':'), "{a}");
        assert!(a < b, "{a} {b}");
        assert!(a.ends_with(".123Z"), "{a}");
    }

    #[test]
    fn last_lines_of_a_file() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
    }

    #[test]
    fn keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let mut made = Vec::new();
        for _ in 0..KEPT + 3 {
            let log = AttemptLog::create(&root, Action::Deploy, SHA, Slot::B).unwrap();
            made.push(log.path().to_path_buf());
        }
        let dir = root.join(root::DEPLOY_LOGS.0);
        let left: Vec<PathBuf> = entries(&dir)
            .unwrap()
            .into_iter()
            .map(|e| dir.join(e.name))
            .collect();
        assert_eq!(left, made[3..], "the newest {KEPT}, in order");
        let text = std::fs::read_to_string(&made[KEPT + 2]).unwrap();
        assert!(
            text.contains(&format!("deploy of {SHA} to slot b")),
            "{text}"
        );
    }

    #[test]
    fn a_file_that_outgrew_its_cap_keeps_its_head_and_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let log =
            AttemptLog::create(&tmp.path().join("root"), Action::Deploy, SHA, Slot::A).unwrap();
        let build: String = (0..300_000)
            .map(|i| format!("build line {i:06}\n"))
            .collect();
        (&log.file).write_all(build.as_bytes()).unwrap();
        log.end("the deploy failed: the build failed");
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.len() as u64 <= FILE_CAP + 200, "{}", text.len());
        assert!(
            text.lines().next().unwrap().contains("deploy of"),
            "the head"
        );
        assert!(text.contains("build line 000000\n"));
        assert!(text.contains("bytes cut out here"));
        assert!(text.contains("build line 299999\n"));
        assert!(text.ends_with("the deploy failed: the build failed\n"));
        // A file under the cap is left as it is.
        let small =
            AttemptLog::create(&tmp.path().join("root"), Action::Deploy, SHA, Slot::A).unwrap();
        small.end("done");
        let text = std::fs::read_to_string(small.path()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn a_steps_output_is_capped_as_it_comes_keeping_its_end() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("attempt.log");
        std::fs::write(&path, "=== zdd: build of 5145c65a3ef0 in slot a: make\n").unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        // 7 MiB in 64 KiB chunks (as the pipe gives them), cut mid-line.
        let build: Vec<u8> = (0..400_000)
            .flat_map(|i| format!("build line {i:06}\n").into_bytes())
            .collect();
        let mut out = StepOutput::open(&path, "build").unwrap();
        for chunk in build.chunks(65_536) {
            out.write(chunk);
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len <= FILE_CAP, "never past the cap while it runs: {len}");
        }
        out.finish();
        let text = std::fs::read(&path).unwrap();
        let head = (FILE_CAP - before) as usize;
        let cut = build.len() - head - STEP_TAIL_KEPT;
        let marker = format!(
            "=== zdd: {cut} bytes of the build's output cut out here (an attempt's file takes 4 MiB as it runs, then each step's last 1024 KiB)\n"
        );
        let mut want = std::fs::read(&path).unwrap()[..before as usize].to_vec();
        want.extend_from_slice(&build[..head]);
        want.push(b'\n'); // the head ended mid-line
        want.extend_from_slice(marker.as_bytes());
        want.extend_from_slice(&build[build.len() - STEP_TAIL_KEPT..]);
        assert!(text == want, "head, one line on the cut, the last 1 MiB");
        assert!(
            text.ends_with(b"build line 399999\n"),
            "its end, where the error is"
        );

        // Past the cap by less than the tail kept: nothing cut, nothing lost.
        let path = tmp.path().join("small.log");
        std::fs::write(&path, vec![b'x'; FILE_CAP as usize - 10]).unwrap();
        let mut out = StepOutput::open(&path, "build").unwrap();
        out.write(b"0123456789abcdef\n");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_CAP);
        out.write(b"more\n");
        out.finish();
        let text = std::fs::read(&path).unwrap();
        assert!(text.ends_with(b"xx0123456789abcdef\nmore\n"));
        assert_eq!(text.len() as u64, FILE_CAP + 12);
    }

    #[test]
    fn copies_what_the_app_wrote_since() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let log = AttemptLog::create(&root, Action::Deploy, SHA, Slot::A).unwrap();
        let slot_log = tmp.path().join("a.log");
        std::fs::write(&slot_log, "before\n=== zdd T: start\nlistening\nfailed").unwrap();
        let spot = |path: &Path, offset: u64| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(path).unwrap();
            Some(crate::process::LogSpot {
                dev: m.dev(),
                inode: m.ino(),
                offset,
            })
        };
        let start = spot(&slot_log, 7);
        log.copy_output(&slot_log, start);
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(!text.contains("before"), "{text}");
        assert!(
            // From the line after zdd's marker: the attempt's file has its own.
            text.ends_with("/a.log:\nlistening\nfailed\n"),
            "{text}"
        );
        // An inode reused by another file is no start of this one.
        std::fs::write(&slot_log, "before\nanother file, the same inode\n").unwrap();
        log.copy_output(&slot_log, start);
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(
            text.ends_with(":\nbefore\nanother file, the same inode\n"),
            "{text}"
        );
        std::fs::write(&slot_log, "before\n=== zdd T: start\nlistening\nfailed").unwrap();
        // Rotated since: the start is in a.log.1, the rest in a.log.
        let rotated = crate::keeper::rotated_path(&slot_log, 1);
        std::fs::rename(&slot_log, &rotated).unwrap();
        std::fs::write(&slot_log, "after the rotation\n").unwrap();
        log.copy_output(&slot_log, start);
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(
            text.ends_with(&format!(
                "the app's output, from {} and {}:\nlistening\nfailedafter the rotation\n",
                rotated.display(),
                slot_log.display()
            )),
            "{text}"
        );
        // More than the cap across both: the last bytes of the two.
        let (old, new) = ("o".repeat(200 * 1024), "n".repeat(100 * 1024 - 1) + "\n");
        std::fs::write(&rotated, format!("x\n=== zdd T: start\n{old}")).unwrap();
        let start2 = spot(&rotated, 2);
        std::fs::write(&slot_log, &new).unwrap();
        log.copy_output(&slot_log, start2);
        let text = std::fs::read_to_string(log.path()).unwrap();
        let skipped = old.len() + new.len() - START_OUTPUT_CAP as usize;
        let copied = format!("{}{new}", &old[skipped..]);
        assert!(text.ends_with(&format!(
            "its first {skipped} bytes are left out here:\n{copied}"
        )));
        // Further back than a.log.1: the current file, said so.
        std::fs::remove_file(&rotated).unwrap();
        std::fs::write(&slot_log, "after the rotation\n").unwrap();
        log.copy_output(&slot_log, start);
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(
            text.ends_with("older rotated files:\nafter the rotation\n"),
            "{text}"
        );
    }
}
