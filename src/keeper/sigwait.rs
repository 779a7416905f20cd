//! The keeper's signal plumbing: it blocks every signal it handles and
//! takes them one at a time with `sigtimedwait`, so a stop, the arm
//! signal and the app's exit (SIGCHLD) never interrupt it half-way.

use std::time::Duration;

use nix::libc;
use nix::sys::signal::Signal;

use super::arm_signal;

/// Every signal the keeper handles itself, synchronously: all but those
/// that cannot be caught or come from its own faults, and the arm signal.
pub(super) fn watched_signals(stop: Signal) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only fill the set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in 1..32 {
            if [
                libc::SIGKILL,
                libc::SIGSTOP,
                libc::SIGSEGV,
                libc::SIGBUS,
                libc::SIGILL,
                libc::SIGFPE,
                libc::SIGABRT,
                libc::SIGTRAP,
                libc::SIGSYS,
            ]
            .contains(&sig)
            {
                continue;
            }
            libc::sigaddset(&mut set, sig);
        }
        libc::sigaddset(&mut set, stop as libc::c_int);
        libc::sigaddset(&mut set, arm_signal());
        libc::sigaddset(&mut set, crate::process::stop_notice_signal());
        set
    }
}

/// In a child between fork and exec: block nothing (std keeps the
/// parent's mask, and the keeper blocks everything it waits for). Only
/// async-signal-safe calls.
pub(super) fn unblock_all() {
    // SAFETY: sigemptyset and sigprocmask on a local set.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

pub(super) fn block(set: &libc::sigset_t) {
    // SAFETY: the keeper is single-threaded; blocking its signals makes
    // them wait for `wait` (sigtimedwait) instead of interrupting anything.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut());
    }
}

/// The next signal from `set`, or `None` when `timeout` passed.
pub(super) fn wait(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<libc::c_int> {
    loop {
        // SAFETY: `set` is a valid, blocked set; siginfo is written by the kernel.
        let sig = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            match timeout {
                None => libc::sigwaitinfo(set, &mut info),
                Some(t) => {
                    let ts = libc::timespec {
                        tv_sec: t.as_secs() as libc::time_t,
                        tv_nsec: t.subsec_nanos() as libc::c_long,
                    };
                    libc::sigtimedwait(set, &mut info, &ts)
                }
            }
        };
        if sig >= 0 {
            return Some(sig);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            _ => return None, // EAGAIN: the timeout passed
        }
    }
}
