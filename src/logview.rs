//! `zdd logs`: the read side of the app logs the keepers write in
//! `ROOT/logs/` (`keeper::logfile` writes and rotates them). It owns
//! finding a log (a slot, the live slot, a `zdd start` process), printing
//! its last lines across the current file and the rotated ones (newest
//! file first, each read backwards from its end only as far as needed),
//! `--since` through each file's times index, and `-f`: what is appended,
//! across rotations and, for the live slot, across swaps.
//!
//! It never writes, locks or follows a symlink: the logs folder is opened
//! once with `O_NOFOLLOW`, and every file in it by `openat` with
//! `O_NOFOLLOW` (a symlink is refused, exit 2). What the app wrote is
//! printed as it is, in big chunks, except that its control characters
//! are escaped (`text::printable_bytes`): the app's user must not reach
//! root's terminal.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::slot::Slot;
use crate::state::State;
use crate::{git, keeper, named, process, root, signals, text};

/// How many lines `zdd logs` shows when neither `-n` nor `--since` is given.
pub const DEFAULT_LINES: usize = 50;
/// How often `-f` looks for more.
const POLL: Duration = Duration::from_millis(150);
/// What is read, and written to stdout, at a time.
const CHUNK: usize = 64 * 1024;
/// The most `-f` prints of one file before it looks at signals again.
const BURST: u64 = 16 * CHUNK as u64;
/// The most of a new live slot's log printed when its start marker was
/// rotated away since: the end of the file that is there now.
const ROTATED_WINDOW: u64 = 64 * 1024;

/// What `zdd logs` was asked.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `a`, `b` or a name given to `zdd start`; `None`: the live slot.
    pub target: Option<&'a str>,
    /// `-n`: at most this many of the last lines. `None`: [`DEFAULT_LINES`],
    /// or every line since then with `--since`.
    pub lines: Option<usize>,
    /// `-f`: then print what is appended, until interrupted.
    pub follow: bool,
    /// `--since`: only what was written this long ago or later.
    pub since: Option<Duration>,
}

/// Whose log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A slot named on the command line: its log, and no other.
    Slot(Slot),
    /// No TARGET: the live slot, followed across swaps with `-f`.
    Live(Slot),
    /// A process started with `zdd start`.
    Named(String),
}

impl Target {
    /// The log's name: `ROOT/logs/NAME.log`.
    fn name(&self) -> &str {
        match self {
            Target::Slot(s) | Target::Live(s) => s.name(),
            Target::Named(n) => n,
        }
    }

    /// As messages name it.
    fn described(&self) -> String {
        match self {
            Target::Slot(s) | Target::Live(s) => format!("slot {s}"),
            Target::Named(n) => n.clone(),
        }
    }
}

/// `zdd logs [TARGET] [-n N] [-f] [--since DURATION]`. A closed stdout
/// (`zdd logs -f | head`) and, with `-f`, SIGINT, SIGTERM or SIGHUP (the
/// handlers are installed by `run`) end it quietly, exit 0.
pub fn run(config: Option<&Config>, req: &Request) -> Result<()> {
    let root = named::root_of(config)?;
    let logs = root.join(root::LOGS.0);
    let dir = LogDir::open(&logs)?;
    // Before the state is read: a change from here on is seen by `-f`.
    let state_stamp = config.map(|c| stamp(&c.state_path()));
    let target = resolve(config, &root, dir.as_ref(), req.target)?;
    let live = match (&target, config) {
        (Target::Live(slot), Some(c)) => Some(Live {
            path: c.state_path(),
            ports: c.ports,
            stamp: state_stamp.flatten(),
            slot: *slot,
        }),
        _ => None,
    };
    let limit = match (req.lines, req.since) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_LINES),
    };
    let since = req
        .since
        .map(|d| SystemTime::now().checked_sub(d).unwrap_or(UNIX_EPOCH));
    let mut out = Out::new(io::stdout().lock());
    let shown = show(
        &logs, dir, &target, limit, since, req.follow, live, &mut out,
    );
    match shown {
        Ok(()) | Err(Halt::Closed) => Ok(()),
        Err(Halt::Failed(e)) => Err(e),
    }
}

/// Print the last lines of `target`'s log, then follow it if asked.
#[allow(clippy::too_many_arguments)]
fn show<W: Write>(
    logs: &Path,
    dir: Option<LogDir>,
    target: &Target,
    limit: Option<usize>,
    since: Option<SystemTime>,
    follow: bool,
    live: Option<Live>,
    out: &mut Out<W>,
) -> Flow<()> {
    let name = target.name();
    let last = match &dir {
        Some(d) => last_lines(d, name, limit, since)?,
        None => Last::default(),
    };
    if !last.found {
        log::info!(
            "{} has no log yet ({}){}",
            target.described(),
            logs.join(current_name(name)).display(),
            if follow { "; waiting for one" } else { "" }
        );
    }
    print_pieces(&last.pieces, out)?;
    if !follow {
        return out.finish();
    }
    out.flush()?;
    let tail = last
        .tail
        .unwrap_or_else(|| Tail::waiting(current_name(name), logs));
    follow_log(logs, dir, tail, live, out)
}

/// `-f`: print what is appended, every [`POLL`], until a signal comes or
/// stdout is closed. Following the live slot, a swap to the other slot
/// is a marker line, and its log goes on from its app's start.
fn follow_log<W: Write>(
    logs: &Path,
    mut dir: Option<LogDir>,
    mut tail: Tail,
    mut live: Option<Live>,
    out: &mut Out<W>,
) -> Flow<()> {
    loop {
        if signals::pending().is_some() || stdout_gone() {
            return out.flush();
        }
        if dir.is_none() {
            dir = LogDir::open(logs)?;
        }
        let mut busy = match &dir {
            Some(d) => tail.poll(d, out)?,
            None => false,
        };
        if let Some((slot, commit, start)) = live.as_mut().and_then(Live::moved) {
            // The old slot's last lines first.
            if let Some(d) = &dir {
                while tail.poll(d, out)? {}
            }
            out.line(&swap_marker(slot, commit.as_deref()))?;
            tail = match &dir {
                Some(d) => Tail::from_start(d, slot.name(), start)?,
                None => Tail::waiting(current_name(slot.name()), logs),
            };
            if let Some(d) = &dir {
                tail.poll(d, out)?;
            }
            busy = true;
        }
        out.flush()?;
        if !busy {
            std::thread::sleep(POLL);
        }
    }
}

/// The line `-f` prints when the live slot changed under it.
fn swap_marker(slot: Slot, commit: Option<&str>) -> String {
    match commit {
        Some(sha) => format!(
            "=== zdd: now following slot {slot} (commit {}, live since the swap)",
            git::short(sha)
        ),
        None => format!("=== zdd: now following slot {slot} (live since the swap)"),
    }
}

/// Is the reader of stdout gone (a pipe whose reader exited)? Then `-f`
/// ends even while nothing is appended to print.
fn stdout_gone() -> bool {
    use nix::libc;
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd that lives on the stack, without waiting.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

// --- Which log -----------------------------------------------------------

/// The log TARGET names, or the live slot's; anything else is exit 2
/// with one sentence naming the logs there are.
fn resolve(
    config: Option<&Config>,
    root: &Path,
    dir: Option<&LogDir>,
    target: Option<&str>,
) -> Result<Target> {
    let named = named_logs(root, dir);
    let here = |named: &[String]| match named.is_empty() {
        true => "none here".to_string(),
        false => format!("here: {}", named.join(", ")),
    };
    match (target, config) {
        (Some(t), _) if named.iter().any(|n| n == t) => Ok(Target::Named(t.to_string())),
        (Some(t), Some(_)) => match Slot::parse(t) {
            Some(slot) => Ok(Target::Slot(slot)),
            None => Err(Error::Usage(format!(
                "no slot or process named {t:?}: TARGET is a slot (a, b) or a process started with `zdd start` ({})",
                here(&named)
            ))),
        },
        (Some(t), None) => Err(Error::Usage(match Slot::parse(t) {
            Some(slot) => format!(
                "slot {slot}'s log needs the config file (zdd.toml or --config)"
            ),
            None => format!(
                "no process named {t:?} was started in {}: TARGET is a process started with `zdd start` ({}), or with a config file a slot (a, b)",
                root.display(),
                here(&named)
            ),
        })),
        (None, None) => Err(Error::Usage(format!(
            "no config file (zdd.toml or --config), so there is no live slot to show: name a process started with `zdd start` ({})",
            here(&named)
        ))),
        (None, Some(config)) => {
            let state = State::load(&config.state_path(), config.ports)?;
            match state.active {
                Some(slot) => Ok(Target::Live(slot)),
                None => {
                    let mut logs: Vec<String> = Slot::BOTH
                        .iter()
                        .filter(|s| dir.is_some_and(|d| !files_of(d, s.name()).is_empty()))
                        .map(|s| s.name().to_string())
                        .collect();
                    logs.extend(named);
                    Err(Error::Usage(match logs.is_empty() {
                        true => "nothing is deployed yet, so there is no live slot to show, and there are no logs yet".into(),
                        false => format!(
                            "nothing is deployed yet, so there is no live slot to show; the logs there are: {} (`zdd logs TARGET`)",
                            logs.join(", ")
                        ),
                    }))
                }
            }
        }
    }
}

/// The processes started with `zdd start` that have a log to show: those
/// recorded in `run/`, and those stopped since whose log is still there.
fn named_logs(root: &Path, dir: Option<&LogDir>) -> Vec<String> {
    let mut names: Vec<String> = named::records(root).into_iter().map(|(n, _)| n).collect();
    if let Some(dir) = dir {
        names.extend(dir.names().into_iter().filter_map(|file| log_of(&file)));
    }
    names.retain(|n| Slot::parse(n).is_none() && valid_name(n));
    names.sort();
    names.dedup();
    names
}

/// The name whose log `file` is a part of (`NAME.log`, `NAME.log.N`).
fn log_of(file: &str) -> Option<String> {
    if let Some(name) = file.strip_suffix(".log") {
        return Some(name.to_string());
    }
    let (name, n) = file.rsplit_once(".log.")?;
    let n: u32 = n.parse().ok()?;
    (rotated_name(&current_name(name), n) == file).then(|| name.to_string())
}

/// A name `zdd start` takes: letters, digits, `_` and `-`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

// --- The files of a log --------------------------------------------------

/// The current file of log `name` (`NAME.log`), as `process::log_path`
/// names it.
fn current_name(name: &str) -> String {
    file_name(&process::log_path(Path::new(""), name))
}

/// Rotated file `n` of the current file `current` (`NAME.log.N`).
fn rotated_name(current: &str, n: u32) -> String {
    file_name(&keeper::rotated_path(Path::new(current), n))
}

/// The times index of the log file `file` (`NAME.log.times`, `NAME.log.1.times`).
fn times_name(file: &str) -> String {
    file_name(&keeper::times_path(Path::new(file)))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The files of log `name` there are, newest first: `NAME.log`, then
/// `NAME.log.1`, `NAME.log.2`, … (any may be missing; a gap is no end).
fn files_of(dir: &LogDir, name: &str) -> Vec<String> {
    let current = current_name(name);
    let prefix = format!("{current}.");
    let mut rotated: Vec<u32> = dir
        .names()
        .iter()
        .filter_map(|file| {
            let n: u32 = file.strip_prefix(&prefix)?.parse().ok()?;
            (n >= 1 && rotated_name(&current, n) == *file).then_some(n)
        })
        .collect();
    rotated.sort_unstable();
    let mut files = Vec::new();
    if dir.stat(&current).is_some() {
        files.push(current.clone());
    }
    files.extend(rotated.into_iter().map(|n| rotated_name(&current, n)));
    files
}

/// The logs folder, open: every file in it is opened relative to it,
/// never through a symlink.
struct LogDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl LogDir {
    /// Open `path` (not through a symlink); `None` when it is not there
    /// (nothing ever ran under this root).
    fn open(path: &Path) -> Result<Option<LogDir>> {
        let name = cstring(path.as_os_str().as_bytes())?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(None, name.as_c_str(), flags, Mode::empty()) {
            // SAFETY: openat just returned this descriptor; nothing else owns it.
            Ok(fd) => Ok(Some(LogDir {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                path: path.to_path_buf(),
            })),
            Err(Errno::ENOENT) => Ok(None),
            // O_DIRECTORY says a symlink is no folder before O_NOFOLLOW
            // can say it is one.
            Err(Errno::ENOTDIR) => match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => Err(refused(path, Errno::ELOOP)),
                _ => Err(Error::Usage(format!(
                    "{} is not a folder; zdd keeps its logs there: remove it",
                    path.display()
                ))),
            },
            Err(e) => Err(refused(path, e)),
        }
    }

    /// Open the file `name` in it for reading; `None` when it is not
    /// there. A symlink, or anything but a regular file, is refused.
    fn open_file(&self, name: &str) -> Result<Option<File>> {
        let path = self.path.join(name);
        let cname = cstring(name.as_bytes())?;
        // O_NONBLOCK: a FIFO planted here cannot hang the reader.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(
            Some(self.fd.as_raw_fd()),
            cname.as_c_str(),
            flags,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(refused(&path, e)),
        };
        // SAFETY: openat just returned this descriptor; nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let meta = file
            .metadata()
            .map_err(Error::io("cannot look at", &path))?;
        if !meta.is_file() {
            return Err(Error::Usage(format!(
                "{} is not a regular file; zdd keeps its logs there as plain files: remove it",
                path.display()
            )));
        }
        Ok(Some(file))
    }

    /// Device, inode and size of what is named `name` in it (a symlink
    /// itself, not what it points at: [`LogDir::open_file`] refuses it),
    /// if anything is.
    fn stat(&self, name: &str) -> Option<(u64, u64, u64)> {
        let cname = cstring(name.as_bytes()).ok()?;
        let st = fstatat(
            Some(self.fd.as_raw_fd()),
            cname.as_c_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()?;
        Some((st.st_dev as u64, st.st_ino as u64, st.st_size as u64))
    }

    /// The names in it (those that are UTF-8).
    fn names(&self) -> Vec<String> {
        // Dir takes its descriptor: give it a close-on-exec copy.
        let Ok(copy) = nix::fcntl::fcntl(
            self.fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0),
        ) else {
            return Vec::new();
        };
        let Ok(mut listing) = nix::dir::Dir::from_fd(copy) else {
            return Vec::new();
        };
        listing
            .iter()
            .flatten()
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
            .filter(|n| n != "." && n != "..")
            .collect()
    }
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::Usage("a path with a NUL byte".into()))
}

/// An error opening `path`: a symlink (ELOOP) or a file the running user
/// may not read is exit 2 with the fix, as everywhere in zdd.
fn refused(path: &Path, e: Errno) -> Error {
    root::refused(path, io::Error::from(e))
}

// --- The last lines --------------------------------------------------------

/// Bytes `start..end` of one log file, to print.
struct Piece {
    file: File,
    path: PathBuf,
    start: u64,
    end: u64,
}

/// What [`last_lines`] found.
#[derive(Default)]
struct Last {
    /// What to print, oldest first.
    pieces: Vec<Piece>,
    /// The current file, to follow from where the pieces end.
    tail: Option<Tail>,
    /// Any file of the log was there.
    found: bool,
}

/// The last `limit` lines of log `name` (all with `None`) written since
/// `since`, across its files: the newest file first, each read from its
/// end only as far as needed, so a 10 MiB log is not read whole.
fn last_lines(
    dir: &LogDir,
    name: &str,
    limit: Option<usize>,
    since: Option<SystemTime>,
) -> Result<Last> {
    let current = current_name(name);
    let mut last = Last::default();
    let mut pieces = Vec::new();
    let mut opened = std::collections::HashSet::new();
    for file_name in files_of(dir, name) {
        let Some(file) = dir.open_file(&file_name)? else {
            continue; // rotated away meanwhile
        };
        last.found = true;
        let path = dir.path.join(&file_name);
        let meta = file
            .metadata()
            .map_err(Error::io("cannot look at", &path))?;
        // A rotation between the listing and this open renamed a file
        // already read to this name: never the same lines twice.
        if !opened.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let end = meta.len();
        if file_name == current {
            let dup = file.try_clone().map_err(Error::io("cannot read", &path))?;
            last.tail = Some(Tail::at(&current, dup, &meta, end, &dir.path));
        }
        // With --since: where its lines start in this file; `None`, all of
        // it is new, and the file before it may hold new lines too.
        let start = match since {
            None => None,
            Some(t) => since_start(dir, &file_name, &meta, t)?,
        };
        pieces.push(Piece {
            file,
            path,
            start: start.unwrap_or(0),
            end,
        });
        if start.is_some() {
            break;
        }
    }
    if let Some(n) = limit {
        let mut need = n;
        let mut kept = Vec::new();
        for mut piece in pieces {
            if need == 0 {
                break;
            }
            let (start, found) = count_back(&piece.file, piece.start, piece.end, need)
                .map_err(Error::io("cannot read", &piece.path))?;
            piece.start = start;
            need -= found;
            kept.push(piece);
        }
        pieces = kept;
    }
    pieces.reverse();
    last.pieces = pieces;
    Ok(last)
}

/// Where the last `need` lines of bytes `lower..end` of `file` start, and
/// how many lines that is (fewer when the range holds fewer): read
/// backwards in chunks from `end`. A last line without its newline counts.
fn count_back(file: &File, lower: u64, end: u64, need: usize) -> io::Result<(u64, usize)> {
    if need == 0 || end <= lower {
        return Ok((end, 0));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut pos = end;
    let mut newlines = 0;
    while pos > lower {
        let from = pos.saturating_sub(CHUNK as u64).max(lower);
        let chunk = &mut buf[..(pos - from) as usize];
        file.read_exact_at(chunk, from)?;
        for (i, &b) in chunk.iter().enumerate().rev() {
            let at = from + i as u64;
            // The newline that ends the last line starts no line.
            if b == b'\n' && at + 1 < end {
                newlines += 1;
                if newlines == need {
                    return Ok((at + 1, need));
                }
            }
        }
        pos = from;
    }
    Ok((lower, newlines + 1))
}

/// Print `pieces` in order, a line break between files whose last line
/// has none.
fn print_pieces<W: Write>(pieces: &[Piece], out: &mut Out<W>) -> Flow<()> {
    let mut buf = vec![0u8; CHUNK];
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            out.end_file();
        }
        let mut pos = piece.start;
        while pos < piece.end {
            let want = ((piece.end - pos) as usize).min(CHUNK);
            let n = piece
                .file
                .read_at(&mut buf[..want], pos)
                .map_err(Error::io("cannot read", &piece.path))?;
            if n == 0 {
                break;
            }
            out.bytes(&buf[..n])?;
            pos += n as u64;
        }
    }
    Ok(())
}

// --- --since ---------------------------------------------------------------

/// Where `--since` starts in a log file, by its times index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// At this byte offset.
    At(u64),
    /// Nothing was written since then.
    End,
    /// The index holds no entry: it tells nothing.
    Unindexed,
}

/// Where `--since` (Unix seconds) starts in a log file, from its times
/// index `index` (lines `SECS OFFSET`, increasing, at most one a second:
/// OFFSET is where the first byte written in second SECS or later is).
/// The first entry of second `since` or later gives the offset; when that
/// is the index's first entry, the start of the file (what precedes it,
/// zdd's marker lines and a build's output, came just before). Every entry
/// older: nothing is new. A last line without its newline (a torn write)
/// and lines that do not parse are skipped.
fn since_offset(index: &str, since: u64) -> Start {
    let whole = index.rfind('\n').map_or("", |i| &index[..=i]);
    let mut entries = 0;
    for line in whole.lines() {
        let Some((secs, offset)) = parse_entry(line) else {
            continue;
        };
        entries += 1;
        if secs >= since {
            return Start::At(if entries == 1 { 0 } else { offset });
        }
    }
    match entries {
        0 => Start::Unindexed,
        _ => Start::End,
    }
}

fn parse_entry(line: &str) -> Option<(u64, u64)> {
    let (secs, offset) = line.trim_end().split_once(' ')?;
    Some((secs.parse().ok()?, offset.parse().ok()?))
}

/// Where `--since` starts in the log file `file_name` (its metadata
/// `meta`): `None` when all of it is new. With no times index (an earlier
/// zdd wrote it), the file is all new if it was modified since then, else
/// all old.
fn since_start(
    dir: &LogDir,
    file_name: &str,
    meta: &std::fs::Metadata,
    since: SystemTime,
) -> Result<Option<u64>> {
    let end = meta.len();
    let secs = since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let index_name = times_name(file_name);
    let by_index = match dir.open_file(&index_name)? {
        Some(index) => {
            let text = read_index(&index, secs)
                .map_err(Error::io("cannot read", dir.path.join(&index_name)))?;
            since_offset(&text, secs)
        }
        None => Start::Unindexed,
    };
    Ok(match by_index {
        Start::At(0) => None,
        Start::At(offset) => Some(offset.min(end)),
        Start::End => Some(end),
        Start::Unindexed => match meta.modified().is_ok_and(|m| m >= since) {
            true => None,
            false => Some(end),
        },
    })
}

/// The end of a times index from its last entry back to one older than
/// `since` (or all of it): what [`since_offset`] needs, without reading a
/// long index whole.
fn read_index(file: &File, since: u64) -> io::Result<String> {
    let mut from = file.metadata()?.len();
    let mut text: Vec<u8> = Vec::new();
    while from > 0 {
        let start = from.saturating_sub(CHUNK as u64);
        let mut chunk = vec![0u8; (from - start) as usize];
        file.read_exact_at(&mut chunk, start)?;
        chunk.extend_from_slice(&text);
        text = chunk;
        from = start;
        if from == 0 {
            break;
        }
        // Enough once the first whole entry read is older than `since`.
        if let Some(i) = text.iter().position(|&b| b == b'\n') {
            let rest = &text[i + 1..];
            let first = rest.split(|&b| b == b'\n').next().unwrap_or_default();
            let secs = std::str::from_utf8(first)
                .ok()
                .and_then(parse_entry)
                .map(|(s, _)| s);
            if secs.is_some_and(|s| s < since) && rest.contains(&b'\n') {
                text.drain(..=i);
                break;
            }
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

// --- -f ----------------------------------------------------------------------

/// The current file of a log, followed: read to its end at each poll; when
/// another file takes its name (rotated), the old one is read to its end
/// from its descriptor, then the new one from its start.
struct Tail {
    /// The current file's name (`NAME.log`).
    name: String,
    /// Its path, for messages.
    path: PathBuf,
    file: Option<File>,
    /// Device and inode of `file`.
    id: Option<(u64, u64)>,
    /// What of `file` is printed.
    pos: u64,
    buf: Vec<u8>,
}

impl Tail {
    /// Follow `file`, the current file `name`, from byte `pos`.
    fn at(name: &str, file: File, meta: &std::fs::Metadata, pos: u64, logs: &Path) -> Tail {
        Tail {
            name: name.to_string(),
            path: logs.join(name),
            file: Some(file),
            id: Some((meta.dev(), meta.ino())),
            pos,
            buf: Vec::new(),
        }
    }

    /// Wait for the current file `name` to appear, then follow it from its start.
    fn waiting(name: String, logs: &Path) -> Tail {
        Tail {
            path: logs.join(&name),
            name,
            file: None,
            id: None,
            pos: 0,
            buf: Vec::new(),
        }
    }

    /// The current file of log `name`, from where zdd's marker line of
    /// its app's start begins (`start`, which zdd recorded in the state: no
    /// line the app prints can pass for it). A file rotated since is all
    /// newer than that start: its last [`ROTATED_WINDOW`] bytes. Without a
    /// record (an older zdd's state), from its end.
    fn from_start(dir: &LogDir, name: &str, start: Option<process::LogSpot>) -> Result<Tail> {
        let current = current_name(name);
        let Some(file) = dir.open_file(&current)? else {
            return Ok(Tail::waiting(current, &dir.path));
        };
        let path = dir.path.join(&current);
        let meta = file
            .metadata()
            .map_err(Error::io("cannot look at", &path))?;
        let end = meta.len();
        let pos = match start {
            Some(s) if s.is_in(&file) => s.offset.min(end),
            // From the first line that starts in the window.
            Some(_) => {
                let from = end.saturating_sub(ROTATED_WINDOW);
                process::next_line_start(&file, from, ROTATED_WINDOW as usize).unwrap_or(from)
            }
            None => end,
        };
        Ok(Tail::at(&current, file, &meta, pos, &dir.path))
    }

    /// Print what is new; whether there was anything.
    fn poll<W: Write>(&mut self, dir: &LogDir, out: &mut Out<W>) -> Flow<bool> {
        let mut got = self.drain(out)?;
        if got {
            // More may wait: look at signals and swaps first, then go on.
            return Ok(true);
        }
        match (dir.stat(&self.name), self.id) {
            // Renamed away and not made again yet, or not made yet.
            (None, _) => {}
            (Some((dev, ino, size)), Some(id)) if (dev, ino) == id => {
                if size < self.pos {
                    // Cut short in place: from its start again.
                    self.pos = 0;
                    got = self.drain(out)?;
                }
            }
            (Some(_), _) => {
                // Another file under the name: finish the old one from
                // its descriptor, then the new one from its start.
                if self.file.is_some() {
                    while self.drain(out)? {}
                    out.end_file();
                }
                if let Some(old) = self.id {
                    self.skipped_files(dir, old, out)?;
                }
                if let Some(file) = dir.open_file(&self.name)? {
                    let meta = file
                        .metadata()
                        .map_err(Error::io("cannot look at", &self.path))?;
                    self.id = Some((meta.dev(), meta.ino()));
                    self.file = Some(file);
                    self.pos = 0;
                    self.drain(out)?;
                    got = true;
                }
            }
        }
        Ok(got)
    }

    /// After the file followed (`old`) was rotated away: the files that
    /// were made and rotated too before this look (the keeper rotated more
    /// than once meanwhile), oldest first, in full. The followed one is
    /// found among `NAME.log.N` by its inode; one rotated out of reach
    /// (beyond `logs.keep`) is said in one line.
    fn skipped_files<W: Write>(&self, dir: &LogDir, old: (u64, u64), out: &mut Out<W>) -> Flow<()> {
        let mut n = 1;
        loop {
            let rotated = rotated_name(&self.name, n);
            match dir.stat(&rotated) {
                Some((dev, ino, _)) if (dev, ino) == old => break,
                Some(_) => n += 1,
                None if n == 1 => return Ok(()),
                None => {
                    return out.line(
                        "=== zdd: the log rotated faster than it was read here: lines are missing (see the rotated files)",
                    )
                }
            }
        }
        for k in (1..n).rev() {
            let name = rotated_name(&self.name, k);
            let Some(file) = dir.open_file(&name)? else {
                continue;
            };
            let meta = file
                .metadata()
                .map_err(Error::io("cannot look at", &dir.path.join(&name)))?;
            let mut skipped = Tail::at(&name, file, &meta, 0, &dir.path);
            while skipped.drain(out)? {}
            out.end_file();
        }
        Ok(())
    }

    /// Print what the file holds beyond `pos`, at most [`BURST`] bytes;
    /// whether there was anything.
    fn drain<W: Write>(&mut self, out: &mut Out<W>) -> Flow<bool> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        self.buf.resize(CHUNK, 0);
        let mut read = 0;
        while read < BURST {
            let n = file
                .read_at(&mut self.buf, self.pos)
                .map_err(Error::io("cannot read", &self.path))?;
            if n == 0 {
                break;
            }
            out.bytes(&self.buf[..n])?;
            self.pos += n as u64;
            read += n as u64;
        }
        Ok(read > 0)
    }
}

/// The live slot as the state file says, looked at again at each poll
/// (read only, no lock: the file is replaced by rename, whole).
struct Live {
    path: PathBuf,
    ports: [u16; 2],
    /// The state file as last read.
    stamp: Option<Stamp>,
    /// The slot followed.
    slot: Slot,
}

/// Device, inode, size and change time of a file: a new state file (each
/// save is a rename) changes it.
type Stamp = (u64, u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

impl Live {
    /// The new live slot, its commit and where its app's start begins in
    /// its log, when it is another one now.
    fn moved(&mut self) -> Option<(Slot, Option<String>, Option<process::LogSpot>)> {
        let now = stamp(&self.path);
        if now == self.stamp {
            return None;
        }
        // Unreadable now (being replaced): tried again at the next poll.
        let state = State::load(&self.path, self.ports).ok()?;
        self.stamp = now;
        let live = state.active.filter(|&s| s != self.slot)?;
        self.slot = live;
        let s = state.slot(live);
        Some((live, s.commit.clone(), s.log_start))
    }
}

// --- Output ----------------------------------------------------------------

/// Why printing stopped early.
enum Halt {
    /// The reader of stdout is gone: the end, quietly.
    Closed,
    Failed(Error),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Halt {
        Halt::Failed(e)
    }
}

type Flow<T> = std::result::Result<T, Halt>;

/// Stdout, written in big chunks: what the app wrote with its control
/// characters escaped, and zdd's own lines.
struct Out<W: Write> {
    sink: W,
    buf: Vec<u8>,
    /// The start of a character cut by a read, until the rest comes.
    carry: Vec<u8>,
    /// The last byte given ended a line.
    at_line_start: bool,
}

impl<W: Write> Out<W> {
    fn new(sink: W) -> Out<W> {
        Out {
            sink,
            buf: Vec::with_capacity(2 * CHUNK),
            carry: Vec::new(),
            at_line_start: true,
        }
    }

    /// Bytes of a log, escaped.
    fn bytes(&mut self, data: &[u8]) -> Flow<()> {
        let Some(&last) = data.last() else {
            return Ok(());
        };
        if self.carry.is_empty() {
            let used = text::printable_bytes(data, true, &mut self.buf);
            self.carry.extend_from_slice(&data[used..]);
        } else {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(data);
            let used = text::printable_bytes(&joined, true, &mut self.buf);
            joined.drain(..used);
            self.carry = joined;
        }
        self.at_line_start = last == b'\n';
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    /// A file ends: a cut character is written as its bytes, and a line
    /// without its newline gets one.
    fn end_file(&mut self) {
        self.end_chars();
        if !self.at_line_start {
            self.buf.push(b'\n');
            self.at_line_start = true;
        }
    }

    fn end_chars(&mut self) {
        if !self.carry.is_empty() {
            let carry = std::mem::take(&mut self.carry);
            text::printable_bytes(&carry, false, &mut self.buf);
        }
    }

    /// One of zdd's own lines, on a line of its own.
    fn line(&mut self, line: &str) -> Flow<()> {
        self.end_file();
        self.buf.extend_from_slice(text::printable(line).as_bytes());
        self.buf.push(b'\n');
        Ok(())
    }

    /// The end of the output (without `-f`).
    fn finish(&mut self) -> Flow<()> {
        self.end_chars();
        self.flush()
    }

    fn flush(&mut self) -> Flow<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self
            .sink
            .write_all(&self.buf)
            .and_then(|()| self.sink.flush());
        self.buf.clear();
        written.map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => Halt::Closed,
            _ => Halt::Failed(Error::io("cannot write the log to", "stdout")(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn logs() -> (tempfile::TempDir, LogDir) {
        let t = tempfile::tempdir().unwrap();
        let dir = LogDir::open(t.path()).unwrap().expect("there");
        (t, dir)
    }

    fn write(dir: &LogDir, name: &str, text: &str) {
        fs::write(dir.path.join(name), text).unwrap();
    }

    fn append(dir: &LogDir, name: &str, text: &str) {
        use std::io::Write as _;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.path.join(name))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// What `zdd logs` prints of log `name` with these options.
    fn shown(dir: &LogDir, name: &str, limit: Option<usize>, since: Option<SystemTime>) -> String {
        let last = last_lines(dir, name, limit, since).unwrap();
        let mut out = Out::new(Vec::new());
        print_pieces(&last.pieces, &mut out).ok().unwrap();
        out.finish().ok().unwrap();
        String::from_utf8(out.sink).unwrap()
    }

    fn numbered(range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn a_file_renamed_under_the_reader_is_not_read_twice() {
        // As a rotation between the listing and the opens leaves it: the
        // name listed as a.log.1 is the file already read as a.log.
        let (_t, dir) = logs();
        write(&dir, "a.log", &numbered(0..5));
        fs::hard_link(dir.path.join("a.log"), dir.path.join("a.log.1")).unwrap();
        assert_eq!(shown(&dir, "a", Some(100), None), numbered(0..5));
    }

    #[test]
    fn the_last_lines_come_from_the_current_file_and_the_rotated_ones_in_order() {
        let (_t, dir) = logs();
        write(&dir, "a.log.2", &numbered(0..10));
        write(&dir, "a.log.1", &numbered(10..20));
        write(&dir, "a.log", &numbered(20..25));
        // Another log beside it, and an index, are not a's lines.
        write(&dir, "b.log", "b's line\n");
        write(&dir, "a.log.times", "1 0\n");
        assert_eq!(shown(&dir, "a", Some(3), None), numbered(22..25));
        assert_eq!(shown(&dir, "a", Some(5), None), numbered(20..25));
        assert_eq!(shown(&dir, "a", Some(7), None), numbered(18..25));
        assert_eq!(shown(&dir, "a", Some(16), None), numbered(9..25));
        assert_eq!(shown(&dir, "a", Some(100), None), numbered(0..25));
        assert_eq!(shown(&dir, "a", None, None), numbered(0..25));
        assert_eq!(shown(&dir, "a", Some(0), None), "");
        // A missing file in between is no end.
        fs::remove_file(dir.path.join("a.log.1")).unwrap();
        assert_eq!(
            shown(&dir, "a", Some(8), None),
            numbered(7..10) + &numbered(20..25)
        );
        // No current file: the rotated ones still show.
        fs::remove_file(dir.path.join("a.log")).unwrap();
        assert_eq!(shown(&dir, "a", Some(2), None), numbered(8..10));
        assert_eq!(shown(&dir, "nothing", Some(2), None), "");
    }

    #[test]
    fn a_line_without_its_newline_counts_and_files_are_not_glued() {
        let (_t, dir) = logs();
        write(&dir, "a.log.1", "old 1\nold 2");
        write(&dir, "a.log", "new 1\n\nnew 3");
        assert_eq!(shown(&dir, "a", Some(1), None), "new 3");
        assert_eq!(shown(&dir, "a", Some(2), None), "\nnew 3");
        assert_eq!(shown(&dir, "a", Some(4), None), "old 2\nnew 1\n\nnew 3");
        assert_eq!(shown(&dir, "a", None, None), "old 1\nold 2\nnew 1\n\nnew 3");
    }

    #[test]
    fn a_long_log_is_read_from_its_end_in_chunks() {
        let (_t, dir) = logs();
        // 10 MiB and more, lines crossing the chunk boundaries.
        let text = numbered(0..1_000_000);
        assert!(text.len() > 10 << 20);
        write(&dir, "a.log", &text);
        assert_eq!(
            shown(&dir, "a", Some(50), None),
            numbered(999_950..1_000_000)
        );
        let file = dir.open_file("a.log").unwrap().unwrap();
        let len = text.len() as u64;
        // The line that starts just past the first chunk's reach.
        let (start, found) = count_back(&file, 0, len, 7000).unwrap();
        assert_eq!(found, 7000);
        assert_eq!(&text[start as usize..], numbered(993_000..1_000_000));
        // Fewer lines than asked: from the lower bound.
        let (start, found) = count_back(&file, len - 24, len, 10).unwrap();
        assert_eq!(
            (start, found),
            (len - 24, 2),
            "{:?}",
            &text[(len - 24) as usize..]
        );
    }

    #[test]
    fn control_characters_from_the_app_are_escaped_even_across_reads() {
        let mut out = Out::new(Vec::new());
        let line = "évil \x1b]0;owned\x07\r\n".as_bytes();
        // Every cut, the two bytes of "é" included.
        for cut in 0..line.len() {
            let (a, b) = line.split_at(cut);
            out.bytes(a).ok().unwrap();
            out.bytes(b).ok().unwrap();
        }
        out.bytes(b"\xff\n").ok().unwrap();
        out.finish().ok().unwrap();
        let text = String::from_utf8(out.sink).unwrap();
        let want = "évil \\x1b]0;owned\\x07\\r\n";
        assert_eq!(text, want.repeat(line.len()) + "\\xff\n");
        assert!(!text.bytes().any(|b| b == 0x1b || b == 0x07 || b == b'\r'));
    }

    #[test]
    fn a_closed_stdout_halts_quietly() {
        struct Gone;
        impl Write for Gone {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Out::new(Gone);
        out.bytes(b"line\n").ok().unwrap();
        assert!(matches!(out.flush(), Err(Halt::Closed)));
    }

    #[test]
    fn since_starts_at_the_first_entry_of_that_second_or_later() {
        let index = "100 0\n105 40\n107 90\n";
        // Everything is new: the file's start (zdd's markers before the
        // first entry came just before it).
        assert_eq!(since_offset(index, 0), Start::At(0));
        assert_eq!(since_offset(index, 100), Start::At(0));
        assert_eq!(since_offset(index, 101), Start::At(40));
        assert_eq!(since_offset(index, 105), Start::At(40));
        assert_eq!(since_offset(index, 106), Start::At(90));
        assert_eq!(since_offset(index, 107), Start::At(90));
        assert_eq!(since_offset(index, 108), Start::End);
        // The first entry of a file that starts with unindexed lines.
        assert_eq!(since_offset("100 300\n105 400\n", 99), Start::At(0));
        // A torn last entry and a broken line are skipped.
        assert_eq!(since_offset("100 0\nxx\n105 40\n107 9", 106), Start::End);
        assert_eq!(since_offset("100 0\nxx\n105 40\n", 101), Start::At(40));
        assert_eq!(since_offset("", 1), Start::Unindexed);
        assert_eq!(since_offset("12", 1), Start::Unindexed);
        assert_eq!(since_offset("garbage\n", 1), Start::Unindexed);
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn since_uses_each_files_index_and_stops_at_the_file_it_starts_in() {
        let (_t, dir) = logs();
        write(&dir, "a.log.2", "very old\n");
        write(&dir, "a.log.2.times", "100 0\n");
        write(&dir, "a.log.1", "old 1\nold 2\n");
        write(&dir, "a.log.1.times", "200 0\n300 6\n");
        write(&dir, "a.log", "new 1\nnew 2\nnew 3\n");
        write(&dir, "a.log.times", "400 0\n500 6\n600 12\n");
        assert_eq!(shown(&dir, "a", None, Some(at(550))), "new 3\n");
        assert_eq!(shown(&dir, "a", None, Some(at(450))), "new 2\nnew 3\n");
        assert_eq!(
            shown(&dir, "a", None, Some(at(350))),
            "new 1\nnew 2\nnew 3\n"
        );
        assert_eq!(
            shown(&dir, "a", None, Some(at(250))),
            "old 2\nnew 1\nnew 2\nnew 3\n"
        );
        // -n applies to the lines since then.
        assert_eq!(shown(&dir, "a", Some(2), Some(at(250))), "new 2\nnew 3\n");
        assert_eq!(
            shown(&dir, "a", Some(9), Some(at(250))),
            "old 2\nnew 1\nnew 2\nnew 3\n"
        );
        assert_eq!(shown(&dir, "a", None, Some(at(601))), "");
        assert_eq!(
            shown(&dir, "a", None, Some(at(50))),
            "very old\nold 1\nold 2\nnew 1\nnew 2\nnew 3\n"
        );
    }

    #[test]
    fn a_file_with_no_index_is_all_new_or_all_old_by_its_mtime() {
        let (_t, dir) = logs();
        write(&dir, "w.log.1", "older\n");
        write(&dir, "w.log", "newer\n");
        let set_mtime = |name: &str, secs: u64| {
            let f = fs::File::options()
                .write(true)
                .open(dir.path.join(name))
                .unwrap();
            f.set_modified(at(secs)).unwrap();
        };
        set_mtime("w.log.1", 1000);
        set_mtime("w.log", 2000);
        assert_eq!(shown(&dir, "w", None, Some(at(1500))), "newer\n");
        assert_eq!(shown(&dir, "w", None, Some(at(2000))), "newer\n");
        assert_eq!(shown(&dir, "w", None, Some(at(2001))), "");
        assert_eq!(shown(&dir, "w", None, Some(at(999))), "older\nnewer\n");
    }

    #[test]
    fn a_long_index_is_read_from_its_end() {
        let (_t, dir) = logs();
        let index: String = (0..20_000u64)
            .map(|i| format!("{} {}\n", 1_000_000 + i, i * 10))
            .collect();
        write(&dir, "a.log.times", &index);
        let file = dir.open_file("a.log.times").unwrap().unwrap();
        let tail = read_index(&file, 1_019_990).unwrap();
        assert!(tail.len() < 2 * CHUNK, "{} bytes", tail.len());
        assert!(index.ends_with(&tail));
        assert_eq!(since_offset(&tail, 1_019_990), Start::At(199_900));
        // Asked for older than the whole index: all of it.
        let all = read_index(&file, 5).unwrap();
        assert_eq!(all, index);
        assert_eq!(since_offset(&all, 5), Start::At(0));
    }

    #[test]
    fn symlinks_and_other_files_are_refused() {
        let (t, dir) = logs();
        fs::write(t.path().join("secret"), "root's\n").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), dir.path.join("a.log")).unwrap();
        let e = last_lines(&dir, "a", Some(5), None).err().unwrap();
        assert_eq!(e.code(), crate::error::exit::USAGE, "{e}");
        assert!(e.to_string().contains("is a symlink"), "{e}");
        nix::unistd::mkfifo(&dir.path.join("b.log"), Mode::from_bits_truncate(0o600)).unwrap();
        let e = dir.open_file("b.log").err().unwrap();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // The folder itself.
        let link = t.path().join("logs-link");
        std::os::unix::fs::symlink(t.path(), &link).unwrap();
        let e = LogDir::open(&link).err().unwrap();
        assert_eq!(e.code(), crate::error::exit::USAGE, "{e}");
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert!(LogDir::open(&t.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn the_names_of_logs_are_found_in_the_folder() {
        assert_eq!(log_of("worker.log").as_deref(), Some("worker"));
        assert_eq!(log_of("worker.log.3").as_deref(), Some("worker"));
        assert_eq!(log_of("worker.log.times"), None);
        assert_eq!(log_of("worker.log.3.times"), None);
        assert_eq!(log_of("worker.log.03"), None);
        let (t, dir) = logs();
        for f in [
            "a.log",
            "worker.log.1",
            "mail.log",
            "mail.log.times",
            ".x.log",
            "no space.log",
        ] {
            write(&dir, f, "");
        }
        assert_eq!(named_logs(t.path(), Some(&dir)), ["mail", "worker"]);
    }

    /// What `poll` prints.
    fn polled(tail: &mut Tail, dir: &LogDir) -> String {
        let mut out = Out::new(Vec::new());
        while tail.poll(dir, &mut out).ok().unwrap() {}
        out.flush().ok().unwrap();
        String::from_utf8(out.sink).unwrap()
    }

    #[test]
    fn following_goes_on_across_a_rotation_and_a_truncation() {
        let (_t, dir) = logs();
        write(&dir, "a.log", "one\n");
        let mut tail = Tail::waiting("a.log".into(), &dir.path);
        assert_eq!(polled(&mut tail, &dir), "one\n");
        assert_eq!(polled(&mut tail, &dir), "");
        append(&dir, "a.log", "two\n");
        assert_eq!(polled(&mut tail, &dir), "two\n");
        // The keeper rotates: what was written just before the rename is
        // read from the old file, then the new file from its start.
        append(&dir, "a.log", "three\n");
        fs::rename(dir.path.join("a.log"), dir.path.join("a.log.1")).unwrap();
        assert_eq!(polled(&mut tail, &dir), "three\n");
        write(&dir, "a.log", "four\n");
        assert_eq!(polled(&mut tail, &dir), "four\n");
        // Rotated again with a line half written, and the rest after.
        append(&dir, "a.log", "fi");
        fs::rename(dir.path.join("a.log"), dir.path.join("a.log.1")).unwrap();
        write(&dir, "a.log", "six\n");
        assert_eq!(polled(&mut tail, &dir), "fi\nsix\n");
        // Cut short in place (copytruncate): from the start again.
        write(&dir, "a.log", "7\n");
        assert_eq!(polled(&mut tail, &dir), "7\n");
    }

    #[test]
    fn following_prints_a_file_rotated_between_two_looks() {
        let (_t, dir) = logs();
        let rotate = || {
            for n in (1..3).rev() {
                let _ = fs::rename(
                    dir.path.join(format!("a.log.{n}")),
                    dir.path.join(format!("a.log.{}", n + 1)),
                );
            }
            fs::rename(dir.path.join("a.log"), dir.path.join("a.log.1")).unwrap();
        };
        write(&dir, "a.log", "one\n");
        let mut tail = Tail::waiting("a.log".into(), &dir.path);
        assert_eq!(polled(&mut tail, &dir), "one\n");
        // Two rotations before the next look: the middle file too.
        append(&dir, "a.log", "two\n");
        rotate();
        write(&dir, "a.log", "three\n");
        rotate();
        write(&dir, "a.log", "four\n");
        assert_eq!(polled(&mut tail, &dir), "two\nthree\nfour\n");
        // Rotated out of reach (keep = 3): said, not guessed.
        for text in ["5\n", "6\n", "7\n", "8\n"] {
            rotate();
            write(&dir, "a.log", text);
        }
        let got = polled(&mut tail, &dir);
        assert!(
            got.contains("lines are missing") && got.ends_with("8\n"),
            "{got}"
        );
    }

    #[test]
    fn a_new_live_slot_is_followed_from_its_apps_start_as_zdd_recorded_it() {
        // The app prints a line that looks like zdd's start marker: it
        // moves nothing.
        let log = "app v1 listening\n\
                   === zdd 2026-12-02T19:15:07Z: start of 1a2b3c4d5e6f in slot b on port 3002: ./run.sh\n\
                   app v2 listening\n\
                   === zdd 2026-12-02T19:15:08Z: start of 1a2b3c4d5e6f in slot b on port 3002: forged\n\
                   app v2 serving\n";
        let at = log.find("=== zdd 2026-12-02T19:15:07Z").unwrap();
        let (_t, dir) = logs();
        write(&dir, "b.log", log);
        let meta = fs::metadata(dir.path.join("b.log")).unwrap();
        let spot = |offset: u64| process::LogSpot {
            dev: meta.dev(),
            inode: meta.ino(),
            offset,
        };
        let mut tail = Tail::from_start(&dir, "b", Some(spot(at as u64))).unwrap();
        assert_eq!(polled(&mut tail, &dir), log[at..]);
        // The same inode, but no marker of zdd's there (a file that reused
        // the number): as if rotated, from the first line of its last 64 KiB.
        let other = format!("{}\nwhole line\n", "z".repeat(70 * 1024));
        write(&dir, "b.log", &other);
        let mut tail = Tail::from_start(&dir, "b", Some(spot(at as u64))).unwrap();
        assert_eq!(polled(&mut tail, &dir), "whole line\n");
        write(&dir, "b.log", log);
        // No record (an older zdd's state): from the end.
        let mut tail = Tail::from_start(&dir, "b", None).unwrap();
        assert_eq!(polled(&mut tail, &dir), "");
        append(&dir, "b.log", "later\n");
        assert_eq!(polled(&mut tail, &dir), "later\n");
        // Rotated since the start: the file there now is all newer.
        fs::rename(dir.path.join("b.log"), dir.path.join("b.log.1")).unwrap();
        write(&dir, "b.log", "after the rotation\n");
        let mut tail = Tail::from_start(&dir, "b", Some(spot(at as u64))).unwrap();
        assert_eq!(polled(&mut tail, &dir), "after the rotation\n");
        // No file yet: from its start once there.
        let mut tail = Tail::from_start(&dir, "c", None).unwrap();
        assert_eq!(polled(&mut tail, &dir), "");
        write(&dir, "c.log", "first\n");
        assert_eq!(polled(&mut tail, &dir), "first\n");
    }

    #[test]
    fn the_swap_marker_names_the_slot_and_its_commit() {
        assert_eq!(
            swap_marker(Slot::B, Some("1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d")),
            "=== zdd: now following slot b (commit 1a2b3c4d5e6f, live since the swap)"
        );
        assert_eq!(
            swap_marker(Slot::A, None),
            "=== zdd: now following slot a (live since the swap)"
        );
    }

    #[test]
    fn the_live_slot_is_seen_to_move_in_the_state_file() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("state.toml");
        let mut state = State::fresh([3001, 3002]);
        state.active = Some(Slot::A);
        state.save(&path).unwrap();
        let mut live = Live {
            path: path.clone(),
            ports: [3001, 3002],
            stamp: stamp(&path),
            slot: Slot::A,
        };
        assert_eq!(live.moved(), None);
        state.history.clear();
        state.next_deploy = Slot::B;
        state.save(&path).unwrap();
        assert_eq!(live.moved(), None, "saved again, same live slot");
        state.active = Some(Slot::B);
        state.slot_mut(Slot::B).commit = Some("abc".into());
        let start = process::LogSpot {
            dev: 1,
            inode: 2,
            offset: 3,
        };
        state.slot_mut(Slot::B).log_start = Some(start);
        state.save(&path).unwrap();
        assert_eq!(
            live.moved(),
            Some((Slot::B, Some("abc".into()), Some(start))),
            "with where its start begins, as saved"
        );
        assert_eq!(live.moved(), None);
    }
}
