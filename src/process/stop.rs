//! Stopping what zdd started, the one way zdd does it: prove each process
//! zdd's (`identity`), tell its keeper, send the stop signal to every one
//! of them — the whole group at once when it holds only zdd's, and each
//! process outside it (its app's escaped descendants) by pidfd — wait with
//! a timeout, then SIGKILL all of it, the app's cgroup included.

use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::identity::{is_keeper, Table};
use super::protocol::notify_stop;
use super::{fence, poll_interval, ProcessId};

/// How a group is stopped: `signal` to the whole group, then SIGKILL to
/// it when `timeout` passes. Apps get the configured `stop.signal` and
/// `stop.timeout` (`config::Stop::with`); two fixed ones are deliberate:
/// [`StopWith::KILL`] for a process zdd could not record (it must not
/// outlive zdd), and [`StopWith::STEP`] for a build or hook cut short by a
/// signal to zdd (`stop.signal` is the app's, not the build tools').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopWith {
    pub signal: Signal,
    pub timeout: Duration,
}

impl StopWith {
    /// SIGKILL at once.
    pub const KILL: StopWith = StopWith {
        signal: Signal::SIGKILL,
        timeout: Duration::ZERO,
    };
    /// SIGTERM, then SIGKILL after 5 s.
    pub const STEP: StopWith = StopWith {
        signal: Signal::SIGTERM,
        timeout: Duration::from_secs(5),
    };
}

impl crate::config::Stop {
    /// How an app's group is stopped, as `[stop]` says. (Here, not in
    /// `config`: the config is plain data that knows nothing of processes.)
    pub fn with(&self) -> StopWith {
        StopWith {
            signal: self.signal,
            timeout: self.timeout,
        }
    }
}

/// How stopping a group went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing of it ran (or nothing provably zdd's): nothing was signalled.
    NotRunning,
    /// It exited after the stop signal.
    Exited(Duration),
    /// It outlived the timeout and was killed with SIGKILL.
    Killed(Duration),
}

/// How a stop went, and what it found outside the process group: the
/// app's descendants that had left it (`setsid`), stopped with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    pub how: Stopped,
    /// `pid N (command)` of each, escaped.
    pub outside: Vec<String>,
}

/// The one way zdd stops what it started: prove it, tell its keeper if it
/// has one, send the stop signal to all of it, wait up to the timeout for
/// every process of it to exit, then SIGKILL what is left. `child` reaps
/// the leader if zdd spawned it.
pub fn stop_group(id: &ProcessId, with: StopWith, child: Option<&mut Child>) -> Stopped {
    stop_group_watched(id, with, child, &mut || {}).how
}

/// [`stop_group`], calling `watch` after the signal and then between
/// looks until nothing of it is left, and saying what it found outside the
/// process group.
pub fn stop_group_watched(
    id: &ProcessId,
    with: StopWith,
    mut child: Option<&mut Child>,
    watch: &mut dyn FnMut(),
) -> StopReport {
    let StopWith { signal, timeout } = with;
    let table = Table::now();
    let mut known = Known(id.members(&table));
    if known.0.is_empty() {
        return StopReport {
            how: Stopped::NotRunning,
            outside: Vec::new(),
        };
    }
    // Described now: once stopped, their command lines are gone.
    let outside: Vec<(i32, u64)> = known
        .0
        .iter()
        .copied()
        .filter(|&(pid, _)| table.get(pid).is_none_or(|st| st.pgrp != id.pid))
        .collect();
    let outside = fence::describe(&outside);
    let started = Instant::now();
    // A keeper leads the group: tell it first, so that it takes the app's
    // exit for the stop it is, whatever the signal (config may have changed
    // since it started).
    if id.leader_alive() && is_keeper(id.pid) {
        let _ = notify_stop(id.pid);
    }
    signal_all(id, &table, &known.0, signal);
    let signalled = started.elapsed();
    let mut gone = |known: &mut Known| {
        watch();
        if let Some(c) = child.as_deref_mut() {
            let _ = c.try_wait();
        }
        known.all_gone(id)
    };
    let finish = |how| {
        // Nothing of it runs any more: its cgroup goes too (if empty).
        if let Some(cgroup) = &id.cgroup {
            fence::remove_cgroup(cgroup);
        }
        StopReport {
            how,
            outside: outside.clone(),
        }
    };
    let mut looks = 0;
    while started.elapsed() < timeout {
        looks += 1;
        if gone(&mut known) {
            log::debug!(
                "process group {}: signalled in {:?}, gone after {:?} and {looks} looks",
                id.pid,
                signalled,
                started.elapsed()
            );
            return finish(Stopped::Exited(started.elapsed()));
        }
        std::thread::sleep(poll_interval(started.elapsed()));
    }
    if gone(&mut known) {
        return finish(Stopped::Exited(started.elapsed()));
    }
    log::warn!(
        "process group {} did not exit within {} of {signal}; sending SIGKILL",
        id.pid,
        humantime::format_duration(timeout)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(cgroup) = &id.cgroup {
            fence::kill_cgroup(cgroup);
        }
        signal_all(id, &Table::now(), &known.0, Signal::SIGKILL);
        if gone(&mut known) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    finish(Stopped::Killed(started.elapsed()))
}

/// The processes of a stop, once proven: what [`ProcessId::members`] finds,
/// plus what it found before and the descendants of those (a leader
/// reaped mid-stop no longer vouches for its group, but what it vouched
/// for is still zdd's), each still the same process (pid, start time).
struct Known(Vec<(i32, u64)>);

impl Known {
    /// Is everything of `id` gone? Looks at the processes it knows first
    /// (a stat each, cheap enough to ask every millisecond); only once
    /// those are gone at every process and its cgroup, for any that came
    /// meanwhile.
    fn all_gone(&mut self, id: &ProcessId) -> bool {
        self.0.retain(|&(pid, start)| {
            super::read_stat(pid).is_some_and(|st| st.start_time == start && !st.is_zombie())
        });
        if !self.0.is_empty() {
            return false;
        }
        self.refresh(id);
        self.0.is_empty()
    }

    /// Look at every process for what is of `id`.
    fn refresh(&mut self, id: &ProcessId) {
        let table = Table::now();
        let alive = |&(pid, start): &(i32, u64)| {
            table
                .get(pid)
                .is_some_and(|st| st.start_time == start && !st.is_zombie())
        };
        self.0.retain(alive);
        let mut more = id.members(&table);
        // A leader still there vouches for all below it; once it is gone,
        // what it vouched for still does for its own children.
        if !id.leader_alive() {
            let me = std::process::id() as i32;
            for &(pid, _) in &self.0 {
                more.extend(table.descendants(pid, &[me]));
            }
        }
        for m in more {
            if !self.0.iter().any(|&(p, _)| p == m.0) {
                self.0.push(m);
            }
        }
    }
}

/// `signal` to every process of `id`: the process group at once if it
/// holds only zdd's processes (always, for a session of zdd's), and each
/// process outside it through a pidfd. A group that holds a process zdd
/// cannot prove its own is never signalled as a whole.
fn signal_all(id: &ProcessId, table: &Table, members: &[(i32, u64)], signal: Signal) {
    let whole = id.whole_group(table, members);
    if whole {
        let _ = killpg(Pid::from_raw(id.pid), signal);
    } else if id.leader_alive() {
        let strangers: Vec<(i32, u64)> = table
            .group(id.pid)
            .filter(|pid| !members.iter().any(|&(p, _)| p == *pid))
            .map(|pid| (pid, 0))
            .collect();
        if !strangers.is_empty() {
            log::warn!(
                "process group {} holds {}, which zdd cannot prove its own; signalling zdd's processes one at a time",
                id.pid,
                fence::describe(&strangers).join(", ")
            );
        }
    }
    for &(pid, start) in members {
        let in_group = table.get(pid).is_some_and(|st| st.pgrp == id.pid);
        if !(whole && in_group) {
            fence::signal_exact(pid, start, signal as i32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{spawn_app, Spec};

    fn spec<'a>(command: &'a str, dir: &'a std::path::Path, log: &'a std::path::Path) -> Spec<'a> {
        Spec {
            command,
            dir,
            env: &[],
            log,
            run_as: None,
        }
    }

    #[test]
    fn stop_group_kills_children_that_ignore_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let command = "sh -c \"trap '' TERM; sleep 30 & sleep 30\"";
        let mut started = spawn_app(&spec(command, dir.path(), &log)).unwrap();
        let id = started.id.clone();
        std::thread::sleep(Duration::from_millis(100));
        assert!(Table::now().group(id.pid).count() >= 2);
        let with = StopWith {
            signal: Signal::SIGTERM,
            timeout: Duration::from_millis(200),
        };
        let r = stop_group(&id, with, Some(&mut started.child));
        assert!(matches!(r, Stopped::Killed(_)), "{r:?}");
        assert_eq!(Table::now().group(id.pid).count(), 0);
        assert_eq!(stop_group(&id, with, None), Stopped::NotRunning);
    }

    #[test]
    fn a_descendant_that_left_the_group_is_stopped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let command = "setsid sleep 31 & exec sleep 30";
        let mut started = spawn_app(&spec(command, dir.path(), &log)).unwrap();
        let id = started.id.clone();
        let escaped = || {
            let table = Table::now();
            id.members(&table)
                .into_iter()
                .filter(|&(p, _)| table.get(p).is_some_and(|st| st.pgrp != id.pid))
                .count()
        };
        let t = Instant::now();
        while escaped() == 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let with = StopWith {
            signal: Signal::SIGTERM,
            timeout: Duration::from_secs(5),
        };
        let r = stop_group_watched(&id, with, Some(&mut started.child), &mut || {});
        assert!(matches!(r.how, Stopped::Exited(_)), "{r:?}");
        assert_eq!(r.outside.len(), 1, "{r:?}");
        assert!(r.outside[0].contains("sleep 31"), "{r:?}");
        assert!(
            id.members(&Table::now()).is_empty(),
            "nothing of it is left"
        );
    }
}
