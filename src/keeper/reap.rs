//! The keeper's descendants: it is their child subreaper, so every process
//! its app starts stays below it by parent links, whatever group or session
//! it moves to; it reaps all of them, and stops all of them (in the app's
//! cgroup at once, where there is one) before it starts the app again or
//! ends.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::libc;

use crate::process::{fence, Table};

/// A child that exited, reaped.
pub(super) struct Reaped {
    pub pid: i32,
    pub status: ExitStatus,
}

/// Reap every child that has exited: the app, the rollback it started, and
/// the orphans handed to it as their subreaper.
pub(super) fn reap_all() -> Vec<Reaped> {
    let mut reaped = Vec::new();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid(2) for any child, without blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return reaped;
        }
        reaped.push(Reaped {
            pid,
            status: ExitStatus::from_raw(status),
        });
    }
}

/// The keeper's living descendants, leaving out the `zdd rollback` it
/// started (which is zdd's to run, and stops this keeper's slot).
pub(super) fn descendants(rollback: Option<i32>) -> Vec<(i32, u64)> {
    // As their subreaper, the keeper has a descendant only if it has a
    // child: ask the kernel before looking at every process.
    if rollback.is_none() && !has_children() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    let skip: Vec<i32> = rollback.into_iter().collect();
    let table = Table::now();
    // Everything in its own group but itself is below it too; and in the
    // app's cgroup (the keeper is not in it).
    table.descendants(me, &skip)
}

/// Has the keeper any child left, exited or not? (`waitid` answers ECHILD
/// when none; WNOWAIT leaves an exited one to be reaped.)
fn has_children() -> bool {
    // SAFETY: waitid(2) fills `info`; with WNOHANG and WNOWAIT it neither
    // blocks nor reaps.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        ) == 0
    }
}

/// SIGKILL to every descendant (and the app's cgroup), until none is left
/// or `limit` passes; what it reaps meanwhile goes to `reaped`. Returns
/// what it found, described.
pub(super) fn kill_descendants(
    rollback: Option<i32>,
    cgroup: Option<&Path>,
    limit: Duration,
    reaped: &mut dyn FnMut(Reaped),
) -> Vec<String> {
    let found = descendants(rollback);
    let said = fence::describe(&found);
    let t = Instant::now();
    let mut left = found;
    while !left.is_empty() && t.elapsed() < limit {
        if let Some(cg) = cgroup {
            fence::kill_cgroup(cg);
        }
        for &(pid, start) in &left {
            fence::signal_exact(pid, start, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
        reap_all().into_iter().for_each(&mut *reaped);
        left = descendants(rollback);
    }
    said
}

/// After the app's main process ended in a stop: wait for what it left
/// (it got the stop signal too) until `deadline`, then SIGKILL it; what it
/// reaps meanwhile goes to `reaped`. Returns what outlived the app,
/// described.
pub(super) fn outlived(
    rollback: Option<i32>,
    cgroup: Option<&Path>,
    deadline: Instant,
    reaped: &mut dyn FnMut(Reaped),
) -> Vec<String> {
    let found = descendants(rollback);
    if found.is_empty() {
        return Vec::new();
    }
    let said = fence::describe(&found);
    while Instant::now() < deadline {
        reap_all().into_iter().for_each(&mut *reaped);
        if descendants(rollback).is_empty() {
            return said;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_descendants(rollback, cgroup, Duration::from_secs(2), reaped);
    said
}
