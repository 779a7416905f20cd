//! zdd's own SIGINT, SIGTERM and SIGHUP: the handlers only record the
//! signal (signal-hook); the deploy checks [`pending`] between and inside
//! its steps and decides whether to abort or to finish the swap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use nix::sys::signal::Signal;

static RECEIVED: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Install the handlers. Call once, early, before any thread is spawned.
/// A signal that zdd was started with ignored stays ignored (`nohup zdd
/// deploy &` must survive the logout).
pub fn install() -> std::io::Result<()> {
    let flag = RECEIVED.get_or_init(|| Arc::new(AtomicUsize::new(0)));
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        if is_ignored(sig) {
            continue;
        }
        signal_hook::flag::register_usize(sig as i32, Arc::clone(flag), sig as usize)?;
    }
    Ok(())
}

/// Is `sig` set to be ignored right now?
fn is_ignored(sig: Signal) -> bool {
    use nix::libc;
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `old`.
    let rc = unsafe { libc::sigaction(sig as libc::c_int, std::ptr::null(), &mut old) };
    rc == 0 && old.sa_sigaction == libc::SIG_IGN
}

/// The last signal received, if any.
pub fn pending() -> Option<Signal> {
    let n = RECEIVED.get()?.load(Ordering::SeqCst);
    if n == 0 {
        None
    } else {
        Signal::try_from(n as i32).ok()
    }
}
