//! Which processes are zdd's: a recorded id (pid, `/proc/PID/stat` start
//! time, boot) proves a group is the one zdd started, never a reused pid;
//! the marks in a process's environment find leftovers of a run that died.

use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process as zdd recorded it: pid plus what makes it unique over time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessId {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when it started.
    pub boot_id: String,
    /// `KEY=VALUE` entries of its environment that mark it as zdd's
    /// (`ZDD_ROOT`, `ZDD_SLOT`): what proves a group whose leader is gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<String>,
}

/// The fields of `/proc/PID/stat` zdd needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub pgrp: i32,
    pub start_time: u64,
}

/// Parse `/proc/PID/stat` text (the command name may hold spaces and ')').
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm)": state is field 3, pgrp 5, starttime 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn read_stat(pid: i32) -> Option<Stat> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl ProcessId {
    /// Identify a running process now.
    pub fn of(pid: i32) -> Option<ProcessId> {
        read_stat(pid).map(|st| ProcessId {
            pid,
            start_time: st.start_time,
            boot_id: boot_id(),
            marks: Vec::new(),
        })
    }

    /// Does the process group zdd started still exist, provably the same?
    ///
    /// The leader counts only if its start time and boot match. A group whose
    /// leader is gone counts only if a member started no earlier than the
    /// leader and carries zdd's marks in its environment: after the whole
    /// group died, its number may name someone else's group.
    pub fn group_is_ours(&self) -> bool {
        if self.pid <= 1 || self.boot_id != boot_id() {
            return false;
        }
        match read_stat(self.pid) {
            Some(st) if st.start_time == self.start_time && st.pgrp == self.pid => {
                // A zombie leader only counts while living members remain.
                st.state != 'Z' || group_has_members(self.pid)
            }
            Some(_) => false,
            None => !self.marks.is_empty() && self.marked_members().next().is_some(),
        }
    }

    /// Living members of the group that carry this process's marks.
    fn marked_members(&self) -> impl Iterator<Item = i32> + '_ {
        group_members(self.pid).filter(move |&pid| {
            read_stat(pid).is_some_and(|st| st.start_time >= self.start_time)
                && environ(pid).is_some_and(|env| {
                    self.marks
                        .iter()
                        .all(|m| env.iter().any(|v| v == m.as_bytes()))
                })
        })
    }

    /// Is the leader itself alive (not a zombie) and ours?
    pub fn leader_alive(&self) -> bool {
        self.boot_id == boot_id()
            && read_stat(self.pid)
                .is_some_and(|st| st.start_time == self.start_time && st.state != 'Z')
    }
}

/// Any process (zombies aside) left in process group `pgid`?
pub fn group_has_members(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    match killpg(Pid::from_raw(pgid), None) {
        Err(Errno::ESRCH) => false,
        // Members exist (or are not ours to probe); look for a living one.
        _ => group_members(pgid).next().is_some(),
    }
}

/// Pids of the non-zombie processes in group `pgid`.
pub fn group_members(pgid: i32) -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(move |&pid| read_stat(pid).is_some_and(|st| st.pgrp == pgid && st.state != 'Z'))
}

/// Is `pid` a keeper (`zdd keep ...`)?
pub fn is_keeper(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"keep".as_slice()))
}

/// The environment of `pid` as `KEY=VALUE` byte strings.
fn environ(pid: i32) -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(raw.split(|&b| b == 0).map(<[u8]>::to_vec).collect())
}

/// The environment variables that mark a process zdd starts for `name`
/// (a slot or a named process) under `root`: every app, build and hook
/// gets them, and they tell zdd its own leftovers.
pub fn mark_env(root: &Path, name: &str) -> [(String, String); 2] {
    [
        ("ZDD_ROOT".to_string(), root.display().to_string()),
        ("ZDD_SLOT".to_string(), name.to_string()),
    ]
}

/// [`mark_env`] as `KEY=VALUE` entries, as `/proc/PID/environ` has them.
pub fn marks(root: &Path, name: &str) -> Vec<String> {
    mark_env(root, name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// If `pid` was started by zdd for `name` under `root` (its environment
/// says so), its process group: a leftover of an interrupted run.
pub fn leftover_group(pid: i32, root: &Path, name: &str) -> Option<ProcessId> {
    let marks = marks(root, name);
    let env = environ(pid)?;
    if !marks.iter().all(|m| env.iter().any(|v| v == m.as_bytes())) {
        return None;
    }
    let member = read_stat(pid)?;
    if member.pgrp <= 1 {
        return None;
    }
    Some(match ProcessId::of(member.pgrp) {
        Some(leader) => leader,
        // The leader is gone: the group is proven by this member.
        None => ProcessId {
            pid: member.pgrp,
            start_time: member.start_time,
            boot_id: boot_id(),
            marks,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_handles_odd_names() {
        let text = "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.pgrp, 1234);
        assert_eq!(st.start_time, 987654);
    }

    #[test]
    fn own_process_is_identified_and_a_changed_start_time_is_not() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.leader_alive());
        let reused = ProcessId {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!reused.leader_alive());
        assert!(!reused.group_is_ours());
        let init = ProcessId { pid: 1, ..me };
        assert!(!init.group_is_ours(), "pid 1 is never ours");
    }
}
