//! The state under `root`: the model saved in `state.toml` and its atomic
//! save (the flock that serializes zdd runs is in `lock`).

use std::path::Path;

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
    /// Where zdd's marker line of that start begins in the slot's log: where
    /// `zdd logs -f` picks the slot up when it becomes live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_start: Option<crate::process::LogSpot>,
    /// How many of its keeper's restarts are in the history already.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts_recorded: u32,
}

impl SlotState {
    /// The slot's process is gone or stopped: forget it and its start
    /// time (callers fold its keeper's restarts into the history first,
    /// `keeper::fold_restarts`, which matches them by this process).
    pub fn forget_process(&mut self) {
        self.process = None;
        self.started_at = None;
        self.log_start = None;
    }
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

#[cfg(test)]
impl Phases {
    /// The phases of a typical switch-mode deploy, for tests of what users
    /// read; `total_ms` as given.
    pub fn example(total_ms: u64) -> Phases {
        Phases {
            fetch_ms: 92,
            build_ms: 8,
            ready_ms: 11,
            route_ms: 1,
            settle_ms: 6,
            drain_ms: 3,
            total_ms,
        }
    }
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
    /// A deploy's `Config::fingerprint`: what the build and the app ran
    /// with. A failure under another config is a new attempt for cron.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
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
    /// Set while `zdd maintenance on`: nginx shows its page to the public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceState>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// The releases on disk, each built once; the slots run some of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<Release>,
}

/// The folder a new release of `sha` gets, relative to root.
pub fn release_dir(sha: &str) -> String {
    format!("releases/{sha}")
}

/// A commit checked out and built once in a folder of its own, kept for
/// deploys and rollbacks that need no build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Its folder, relative to `root`: `releases/SHA`, or the `slots/X`
    /// work tree an earlier zdd built it in (moved to `releases/` once
    /// nothing runs from it).
    pub dir: String,
    /// When its build finished (RFC 3339).
    pub built_at: String,
    /// When it last went live by a deploy (rollbacks leave it): its age
    /// for `zdd rollback`. `None`: it never went live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_at: Option<String>,
}

impl Release {
    /// It went live once: a good release, counted by `releases.keep`.
    pub fn good(&self) -> bool {
        self.deployed_at.is_some()
    }
}

/// Maintenance mode, as `zdd maintenance on` left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceState {
    /// When it was turned on (RFC 3339).
    pub since: String,
    /// The message on the page, as given (escaped when rendered).
    pub message: String,
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
            maintenance: None,
            history: Vec::new(),
            releases: Vec::new(),
        }
    }

    /// The folder of `sha`'s release, relative to root: where its record
    /// says (an earlier zdd's slot tree), else `releases/SHA`.
    pub fn release_dir(&self, sha: &str) -> String {
        self.release(sha)
            .map_or_else(|| release_dir(sha), |r| r.dir.clone())
    }

    /// The kept release of `sha`, if there is one.
    pub fn release(&self, sha: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.commit == sha)
    }

    pub fn release_mut(&mut self, sha: &str) -> Option<&mut Release> {
        self.releases.iter_mut().find(|r| r.commit == sha)
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
            cgroup: Some("/sys/fs/cgroup/zdd/shop-1a2b3c4d/b".into()),
            marks: Vec::new(),
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
                config: None,
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
    fn a_state_file_of_an_earlier_zdd_with_marks_still_loads() {
        // Earlier versions of zdd recorded environment marks, and trusted them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        std::fs::write(
            &path,
            "version = 1\nactive = \"a\"\nnext_deploy = \"b\"\n\n[slots.a]\nport = 3001\nstatus = \"live\"\n\n[slots.a.process]\npid = 42\nstart_time = 7\nboot_id = \"x\"\nmarks = [\"ZDD_ROOT=/srv\", \"ZDD_SLOT=a\"]\n\n[slots.b]\nport = 3002\nstatus = \"empty\"\n",
        )
        .unwrap();
        let s = State::load(&path, [3001, 3002]).unwrap();
        assert_eq!(s.slots.a.process.as_ref().unwrap().pid, 42);
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("marks"), "never written again: {text}");
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
}
