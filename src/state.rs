//! The state under `root`: the model saved in `state.toml`, its atomic
//! save, and the `zdd.lock` flock that serializes zdd runs.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::process::ProcessId;
pub use crate::slot::Slot;

/// The state file's format version.
pub const STATE_VERSION: u32 = 1;
/// How many history entries are kept (newest last).
pub const HISTORY_LIMIT: usize = 100;

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotStatus {
    /// Nothing deployed here yet.
    #[default]
    Empty,
    /// Checked out and possibly built, process started, not yet verified.
    Starting,
    /// Serving: the live slot.
    Live,
    /// Stopped, holding a release that served before: the rollback target.
    Standby,
    /// Holds a checkout that failed to build, start or verify.
    Failed,
}

impl SlotStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotStatus::Empty => "empty",
            SlotStatus::Starting => "starting",
            SlotStatus::Live => "live",
            SlotStatus::Standby => "standby",
            SlotStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotState {
    pub port: u16,
    pub status: SlotStatus,
    /// The commit checked out in the slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The commit's subject line, for status output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The running process group leader, if zdd started one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessId>,
    /// When that process was started (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// How many of its keeper's restarts are in the history already.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts_recorded: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Milliseconds spent in each phase of a deploy or rollback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phases {
    pub fetch_ms: u64,
    pub build_ms: u64,
    pub ready_ms: u64,
    pub route_ms: u64,
    /// Switch mode: the old slot serving on after the flip (`stop.settle`)
    /// and the wait for its empty accept queue. Absent in older files.
    #[serde(default)]
    pub settle_ms: u64,
    /// The old slot's stop: signal to exit.
    pub drain_ms: u64,
    pub total_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Deploy,
    Rollback,
    /// The live app started again: by its keeper after it exited on its
    /// own (counted, one entry per zdd run that saw them), or by `zdd up`.
    Restart,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Rollback => "rollback",
            Action::Restart => "restart",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// The commit failed: its build, a hook, its health check.
    Failed,
    /// Something else failed: checkout, nginx, a port, the system.
    Error,
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    /// When it finished (RFC 3339, UTC).
    pub at: String,
    pub action: Action,
    pub outcome: Outcome,
    pub commit: String,
    pub slot: Slot,
    /// The commit that was live before, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Restarts by its keeper that this entry stands for (one entry per
    /// live period, however long the crash loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    pub phases: Phases,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// The live slot, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<Slot>,
    /// The slot the next deploy goes to (and a rollback brings back).
    pub next_deploy: Slot,
    pub slots: Slots,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slots {
    pub a: SlotState,
    pub b: SlotState,
}

impl State {
    /// The state of a fresh install.
    pub fn fresh(ports: [u16; 2]) -> State {
        let slot = |port| SlotState {
            port,
            ..SlotState::default()
        };
        State {
            version: STATE_VERSION,
            active: None,
            next_deploy: Slot::A,
            slots: Slots {
                a: slot(ports[0]),
                b: slot(ports[1]),
            },
            history: Vec::new(),
        }
    }

    pub fn slot(&self, s: Slot) -> &SlotState {
        match s {
            Slot::A => &self.slots.a,
            Slot::B => &self.slots.b,
        }
    }

    pub fn slot_mut(&mut self, s: Slot) -> &mut SlotState {
        match s {
            Slot::A => &mut self.slots.a,
            Slot::B => &mut self.slots.b,
        }
    }

    /// The commit that is live, if any.
    pub fn live_commit(&self) -> Option<&str> {
        self.active.and_then(|s| self.slot(s).commit.as_deref())
    }

    pub fn push_history(&mut self, entry: HistoryEntry) {
        self.history.push(entry);
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }

    /// Load `path`; a missing file is a fresh install. Anything else that
    /// cannot be read or parsed is an error naming the file.
    pub fn load(path: &Path, ports: [u16; 2]) -> Result<State> {
        let text = match crate::root::read_nofollow(path)? {
            Some(t) => t,
            None => return Ok(State::fresh(ports)),
        };
        let mut state: State = toml::from_str(&text).map_err(|e| Error::StateCorrupt {
            path: path.to_path_buf(),
            reason: crate::config::toml_error(&text, &e),
        })?;
        if state.version != STATE_VERSION {
            return Err(Error::StateCorrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "format version {} is not the {} this zdd understands",
                    state.version, STATE_VERSION
                ),
            });
        }
        // The config's ports are the truth; the file records them for readers.
        state.slots.a.port = ports[0];
        state.slots.b.port = ports[1];
        Ok(state)
    }

    /// Replace the state file atomically (temp, fsync, rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).expect("state serializes to TOML");
        fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(|source| {
            Error::NeedsAttention(format!(
                "cannot write the state file {}: {source}; the previous state file is intact, but it may no longer match the running processes (run `zdd status`)",
                path.display()
            ))
        })
    }
}

/// An exclusive flock on `root/zdd.lock`, released when dropped or when
/// the process dies. The file says who holds it, since when and at which
/// step (`pid`, `since`, `step` lines), so that `status` can tell a deploy
/// in progress without taking the lock.
pub struct Lock {
    file: Flock<File>,
    since: String,
    command: String,
}

/// What the lock file says about the zdd that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: String,
    /// When it took the lock (RFC 3339), if it said.
    pub since: Option<String>,
    /// What it runs (`zdd deploy`, `zdd stop web`), if it said.
    pub command: Option<String>,
    /// The step it is at, if it said.
    pub step: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}",
            self.command.as_deref().unwrap_or("zdd"),
            self.pid
        )?;
        if let Some(since) = &self.since {
            write!(f, " since {since}")?;
        }
        f.write_str(")")?;
        if let Some(step) = &self.step {
            write!(f, ": {step}")?;
        }
        Ok(())
    }
}

impl Lock {
    /// Take the lock. `wait`: `None` fails at once when held (exit 3);
    /// `Some(None)` waits forever; `Some(Some(d))` waits up to `d`.
    /// `command` (`zdd deploy`) is what the lock file says it is held for.
    pub fn acquire(root: &Path, wait: Option<Option<Duration>>, command: &str) -> Result<Lock> {
        let path = root.join("zdd.lock");
        let started = Instant::now();
        let mut said = false;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| crate::root::refused(&path, e))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => {
                    let since =
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                    let lock = Lock {
                        file: locked,
                        since,
                        command: command.to_string(),
                    };
                    lock.at_step("starting");
                    return Ok(lock);
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    let holder = read_holder(&path).pid;
                    match wait {
                        None => return Err(Error::Locked { path, holder }),
                        Some(Some(limit)) if started.elapsed() >= limit => {
                            return Err(Error::LockTimeout {
                                path,
                                holder,
                                waited: humantime::format_duration(limit).to_string(),
                            })
                        }
                        Some(_) => {
                            if !said {
                                // Said at the default level only to a person:
                                // cron mails whatever reaches stderr.
                                use std::io::IsTerminal;
                                let level = if std::io::stderr().is_terminal() {
                                    log::Level::Info
                                } else {
                                    log::Level::Debug
                                };
                                log::log!(level, "waiting for the lock held by pid {holder}");
                                said = true;
                            }
                            if let Some(sig) = crate::signals::pending() {
                                return Err(Error::Interrupted {
                                    signal: sig.as_str(),
                                    number: sig as i32,
                                    what: "stopped waiting for the lock; nothing was changed"
                                        .into(),
                                });
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                Err((_, errno)) => {
                    return Err(Error::io("cannot lock", &path)(std::io::Error::from(errno)))
                }
            }
        }
    }

    /// Say in the lock file which step this zdd is at (for `status`). One
    /// positioned write; a reader may see an older step, never a wrong pid.
    pub fn at_step(&self, step: &str) {
        use std::os::unix::fs::FileExt;
        let text = format!(
            "{}\nsince {}\ncommand {}\nstep {step}\n",
            std::process::id(),
            self.since,
            self.command
        );
        let _ = self.file.write_all_at(text.as_bytes(), 0);
        let _ = self.file.set_len(text.len() as u64);
    }

    /// The zdd that holds the lock under `root` right now, if one does.
    /// Read from `/proc/locks`, so that asking never takes the lock itself
    /// (a deploy starting meanwhile must not find it held by `status`).
    pub fn holder(root: &Path) -> Option<Holder> {
        use std::os::unix::fs::MetadataExt;
        let path = root.join("zdd.lock");
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let dev = meta.dev();
        let id = format!(
            "{:02x}:{:02x}:{}",
            nix::sys::stat::major(dev),
            nix::sys::stat::minor(dev),
            meta.ino()
        );
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        let held = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF"
            f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&id.as_str())
        });
        held.then(|| read_holder(&path))
    }
}

fn read_holder(path: &Path) -> Holder {
    let mut s = String::new();
    let _ = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| f.read_to_string(&mut s));
    let mut lines = s.lines();
    let pid = match lines.next().map(str::trim) {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => "unknown".into(),
    };
    let mut holder = Holder {
        pid,
        since: None,
        command: None,
        step: None,
    };
    for line in lines {
        if let Some(v) = line.strip_prefix("since ") {
            holder.since = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("command ") {
            holder.command = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("step ") {
            holder.step = Some(v.trim().to_string());
        }
    }
    holder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_fresh_install() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::load(&dir.path().join("state.toml"), [1, 2]).unwrap();
        assert_eq!(s.next_deploy, Slot::A);
        assert_eq!(s.active, None);
    }

    #[test]
    fn round_trip_and_history_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        let mut s = State::fresh([3001, 3002]);
        s.active = Some(Slot::B);
        s.slots.b.commit = Some("abc".into());
        s.slots.b.status = SlotStatus::Live;
        s.slots.b.process = Some(ProcessId {
            pid: 42,
            start_time: 7,
            boot_id: "x".into(),
            marks: vec!["ZDD_SLOT=b".into()],
        });
        for i in 0..(HISTORY_LIMIT + 5) {
            s.push_history(HistoryEntry {
                at: format!("t{i}"),
                action: Action::Deploy,
                outcome: Outcome::Ok,
                commit: "abc".into(),
                slot: Slot::B,
                previous: None,
                reason: None,
                restarts: None,
                phases: Phases::default(),
            });
        }
        s.save(&path).unwrap();
        let loaded = State::load(&path, [3001, 3002]).unwrap();
        assert_eq!(loaded, s);
        assert_eq!(loaded.history.len(), HISTORY_LIMIT);
        assert_eq!(
            loaded.history.last().unwrap().at,
            format!("t{}", HISTORY_LIMIT + 4)
        );
    }

    #[test]
    fn corrupt_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        std::fs::write(&path, "version = \n").unwrap();
        let e = State::load(&path, [1, 2]).unwrap_err();
        assert_eq!(e.code(), crate::error::exit::NEEDS_ATTENTION);
        assert!(e.to_string().contains("state.toml is corrupt"), "{e}");
        assert!(e.to_string().contains(": line 1, column 11: "), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "version = \n");
        // Cut off in the middle: says where, and what is missing.
        std::fs::write(
            &path,
            "version = 1\nnext_deploy = \"a\"\n\n[slots.a]\nport = 3001\nstatus = \"li",
        )
        .unwrap();
        let e = State::load(&path, [1, 2]).unwrap_err().to_string();
        assert!(e.contains("line 6, column 13: invalid basic string"), "{e}");
    }

    #[test]
    fn the_holder_says_who_since_when_and_where() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Lock::holder(dir.path()), None, "no lock file");
        let lock = Lock::acquire(dir.path(), None, "zdd deploy").unwrap();
        lock.at_step("building slot b");
        let h = Lock::holder(dir.path()).expect("held");
        assert_eq!(h.pid, std::process::id().to_string());
        assert_eq!(h.step.as_deref(), Some("building slot b"));
        assert_eq!(h.command.as_deref(), Some("zdd deploy"));
        assert!(
            h.to_string()
                .starts_with(&format!("zdd deploy (pid {} since ", h.pid)),
            "{h}"
        );
        assert!(h.to_string().ends_with("): building slot b"), "{h}");
        assert!(h.since.is_some());
        lock.at_step("swap");
        assert_eq!(
            Lock::holder(dir.path()).unwrap().step.as_deref(),
            Some("swap")
        );
        drop(lock);
        assert_eq!(Lock::holder(dir.path()), None, "released");
    }

    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("zdd.lock")).unwrap();
        let e = Lock::acquire(dir.path(), None, "zdd deploy").err().unwrap();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn second_lock_is_refused_with_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Lock::acquire(dir.path(), None, "zdd deploy").unwrap();
        // flock locks belong to the open file description, so a second open
        // in the same process conflicts like another process would.
        let e = Lock::acquire(dir.path(), None, "zdd deploy").err().unwrap();
        assert_eq!(e.code(), crate::error::exit::LOCKED);
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        let e = Lock::acquire(
            dir.path(),
            Some(Some(Duration::from_millis(120))),
            "zdd deploy",
        )
        .err()
        .unwrap();
        assert_eq!(e.code(), crate::error::exit::LOCKED);
    }
}
