//! The keeper's signal plumbing: it blocks every signal it handles and
//! reads them from a signalfd, polled together with the app's log pipe, so
//! a stop, the arm signal and the app's exit (SIGCHLD) never interrupt it
//! half-way, and it never polls on a timer.

use std::time::Duration;

use nix::libc;
use nix::sys::signal::Signal;

use crate::process::protocol::{arm_signal, stop_notice_signal};

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
        libc::sigaddset(&mut set, stop_notice_signal());
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

/// The keeper's signals as a descriptor (nonblocking): readable while one
/// waits.
pub(super) struct Signals(std::os::fd::OwnedFd);

/// What woke the keeper.
pub(super) struct Woke {
    /// Every signal that waited, lowest number first per read.
    pub signals: Vec<libc::c_int>,
    /// The log pipe has something (or its writers are gone).
    pub pipe: bool,
}

impl Signals {
    /// A signalfd for `set` (which must be blocked).
    pub fn new(set: &libc::sigset_t) -> std::io::Result<Signals> {
        use std::os::fd::FromRawFd;
        // SAFETY: a new descriptor for a valid set.
        let fd = unsafe { libc::signalfd(-1, set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just made and is owned by nothing else.
        Ok(Signals(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Wait for a signal or for `pipe` to be readable, at most `timeout`
    /// (forever if `None`); then take every signal that waits.
    pub fn wait(&self, pipe: Option<libc::c_int>, timeout: Option<Duration>) -> Woke {
        use std::os::fd::AsRawFd;
        let mut fds = vec![libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(fd) = pipe {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ms = timeout.map_or(-1, |t| {
            // Rounded up: a deadline is never woken for early.
            t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
        });
        // SAFETY: `fds` is a valid array of its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        let pipe = n > 0 && fds.get(1).is_some_and(|f| f.revents != 0);
        Woke {
            signals: self.take(),
            pipe,
        }
    }

    /// Every signal that waits now.
    fn take(&self) -> Vec<libc::c_int> {
        use std::os::fd::AsRawFd;
        let mut out = Vec::new();
        loop {
            // SAFETY: reading whole signalfd_siginfo records into a buffer
            // of that type.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let n = unsafe {
                libc::read(
                    self.0.as_raw_fd(),
                    &mut info as *mut _ as *mut libc::c_void,
                    size,
                )
            };
            if n as usize == size {
                out.push(info.ssi_signo as libc::c_int);
                continue;
            }
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return out;
        }
    }
}
