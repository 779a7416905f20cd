//! Stopping a group, the one way zdd does it: prove it is zdd's, tell its
//! keeper, signal the whole group, wait with a timeout, then SIGKILL.

use std::process::Child;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{group_has_members, is_keeper, poll_interval, ProcessId};

/// The signal zdd sends a keeper (alone) just before it sends the stop
/// signal to its group: whatever signal that is, the keeper then knows its
/// app's exit is no crash (see `keeper`).
pub fn stop_notice_signal() -> nix::libc::c_int {
    nix::libc::SIGRTMIN() + 1
}

/// Tell the keeper `pid` that its group is about to be stopped.
fn notify_stop(pid: i32) -> std::io::Result<()> {
    crate::signals::send_number(pid, stop_notice_signal())
}

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

/// How stopping a group went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running (or not provably ours): nothing was signalled.
    NotRunning,
    /// It exited after the stop signal.
    Exited(Duration),
    /// It outlived the timeout and was killed with SIGKILL.
    Killed(Duration),
}

/// The one way zdd stops a group: prove it is zdd's, tell its keeper if it
/// has one, send the stop signal to the whole group, wait up to the
/// timeout for every member to exit, then SIGKILL the group. `child` reaps
/// the leader if zdd spawned it.
pub fn stop_group(id: &ProcessId, with: StopWith, child: Option<&mut Child>) -> Stopped {
    stop_group_watched(id, with, child, &mut || {})
}

/// [`stop_group`], calling `watch` after the signal and then between
/// looks at the group until it is gone.
pub fn stop_group_watched(
    id: &ProcessId,
    with: StopWith,
    mut child: Option<&mut Child>,
    watch: &mut dyn FnMut(),
) -> Stopped {
    let StopWith { signal, timeout } = with;
    if !id.group_is_ours() {
        return Stopped::NotRunning;
    }
    let pgid = Pid::from_raw(id.pid);
    let started = Instant::now();
    // A keeper leads the group: tell it first, so that it takes the app's
    // exit for the stop it is, whatever the signal (config may have changed
    // since it started).
    if id.leader_alive() && is_keeper(id.pid) {
        let _ = notify_stop(id.pid);
    }
    if killpg(pgid, signal) == Err(Errno::ESRCH) {
        return Stopped::NotRunning;
    }
    let mut gone = || {
        watch();
        if let Some(c) = child.as_deref_mut() {
            let _ = c.try_wait();
        }
        !group_has_members(id.pid)
    };
    while started.elapsed() < timeout {
        if gone() {
            return Stopped::Exited(started.elapsed());
        }
        std::thread::sleep(poll_interval(started.elapsed()));
    }
    if gone() {
        return Stopped::Exited(started.elapsed());
    }
    log::warn!(
        "process group {} did not exit within {} of {signal}; sending SIGKILL",
        id.pid,
        humantime::format_duration(timeout)
    );
    let _ = killpg(pgid, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    Stopped::Killed(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{group_members, spawn_app, Spec};

    #[test]
    fn stop_group_kills_children_that_ignore_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let spec = Spec {
            command: "sh -c \"trap '' TERM; sleep 30 & sleep 30\"",
            dir: dir.path(),
            env: &[],
            log: &log,
            run_as: None,
        };
        let mut started = spawn_app(&spec).unwrap();
        let id = started.id.clone();
        std::thread::sleep(Duration::from_millis(100));
        assert!(group_members(id.pid).count() >= 2);
        let with = StopWith {
            signal: Signal::SIGTERM,
            timeout: Duration::from_millis(200),
        };
        let r = stop_group(&id, with, Some(&mut started.child));
        assert!(matches!(r, Stopped::Killed(_)), "{r:?}");
        assert!(!group_has_members(id.pid));
        assert_eq!(stop_group(&id, with, None), Stopped::NotRunning);
    }
}
