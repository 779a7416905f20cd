//! The keeper's status file (`ROOT/run/NAME.keeper`), written by the
//! keeper, read by `status`, and the restarts it counts folded into the
//! state's history by zdd.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::process::ProcessId;
use crate::state::{Action, HistoryEntry, Outcome, Phases, Slot, State};
use crate::text::now;

/// What the keeper says about itself, for `status` (`ROOT/run/NAME.keeper`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeeperStatus {
    pub keeper_pid: i32,
    /// The keeper's start time and boot (`/proc/PID/stat`): with the pid,
    /// what proves a keeper that zdd never recorded (zdd was killed just
    /// after it started it) is zdd's.
    #[serde(default)]
    pub keeper_start_time: u64,
    #[serde(default)]
    pub boot_id: String,
    /// The app running now, if one is, and since when.
    pub app_pid: Option<i32>,
    pub app_started_at: Option<String>,
    /// Told to stop: it no longer starts the app again.
    #[serde(default)]
    pub stopping: bool,
    /// When zdd armed it (restarts counted from then).
    pub armed_at: Option<String>,
    /// Restarts since arming.
    pub restarts: u32,
    /// The last exit on its own: "exit status: 1", "signal: 9 (SIGKILL)".
    pub last_exit: Option<String>,
    pub last_exit_at: Option<String>,
    /// Why the keeper could not start the app at all, its last try (the
    /// env file, its cgroup, exec): its own failure, not the app's exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_failed: Option<String>,
    /// While waiting to start the app again: how long the wait is.
    pub backoff_ms: Option<u64>,
    /// Why it asked for a rollback, if it did, and how that `zdd rollback`
    /// ended.
    pub rollback: Option<String>,
    pub rollback_exit: Option<String>,
    /// What its app left running when it stopped (`pid N (command)`),
    /// stopped with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlived: Vec<String>,
}

/// Where the keeper of `name` writes its status.
pub(super) fn status_path(root: &Path, name: &str) -> PathBuf {
    root.join("run").join(format!("{name}.keeper"))
}

/// What the keeper `keeper_pid` of `name` says, if its status file is
/// there and is that keeper's (not a stale one of an earlier keeper).
pub fn read_status(root: &Path, name: &str, keeper_pid: i32) -> Option<KeeperStatus> {
    let text = crate::root::read_nofollow(&status_path(root, name)).ok()??;
    toml::from_str::<KeeperStatus>(&text)
        .ok()
        .filter(|k| k.keeper_pid == keeper_pid)
}

/// A keeper of `name` that still runs but is not `recorded` — zdd was
/// killed after it started it and before it recorded it — as its status
/// file proves it: that file is the keeper's own (root's, in `run/`),
/// and names its pid, start time and boot.
pub fn unrecorded(root: &Path, name: &str, recorded: Option<i32>) -> Option<ProcessId> {
    let text = crate::root::read_nofollow(&status_path(root, name)).ok()??;
    let k: KeeperStatus = toml::from_str(&text).ok()?;
    let id = ProcessId {
        pid: k.keeper_pid,
        start_time: k.keeper_start_time,
        boot_id: k.boot_id,
        cgroup: None,
        marks: Vec::new(),
    };
    (Some(id.pid) != recorded && k.keeper_start_time > 0 && id.leader_alive()).then_some(id)
}

/// Put the restarts the slots' keepers made since the last look into the
/// history, one entry per slot and look (a crash loop is one line, not one
/// per crash). Returns whether the state changed.
pub fn fold_restarts(state: &mut State, root: &Path) -> bool {
    let mut changed = false;
    for slot in Slot::BOTH {
        let s = state.slot(slot);
        let (Some(id), Some(commit)) = (s.process.clone(), s.commit.clone()) else {
            continue;
        };
        let Some(k) = read_status(root, slot.name(), id.pid) else {
            continue;
        };
        let new = k.restarts.saturating_sub(s.restarts_recorded);
        if new == 0 {
            continue;
        }
        let last = k.last_exit.as_deref().unwrap_or("unknown");
        let at = k.last_exit_at.clone().unwrap_or_else(now);
        // One entry per live period: the same release, again, adds to it.
        let merged = state.history.last_mut().filter(|h| {
            h.action == Action::Restart
                && h.slot == slot
                && h.commit == commit
                && h.restarts.is_some()
        });
        let total = new + merged.as_ref().and_then(|h| h.restarts).unwrap_or(0);
        let reason = format!(
            "its keeper started it again {total} time{} after it exited on its own (last: {last} at {at})",
            if total == 1 { "" } else { "s" },
        );
        match merged {
            Some(h) => {
                h.at = at;
                h.restarts = Some(total);
                h.reason = Some(reason);
            }
            None => state.push_history(HistoryEntry {
                at,
                action: Action::Restart,
                outcome: Outcome::Ok,
                commit,
                slot,
                previous: None,
                reason: Some(reason),
                restarts: Some(total),
                config: None,
                phases: Phases::default(),
            }),
        }
        state.slot_mut(slot).restarts_recorded = k.restarts;
        changed = true;
    }
    changed
}
