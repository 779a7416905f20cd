//! zdd's own SIGINT, SIGTERM and SIGHUP: the handlers only record the
//! signal (signal-hook); the deploy checks [`pending`] between and inside
//! its steps and decides whether to abort or to finish the swap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use std::str::FromStr;

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

/// Send signal number `signo` to the process `pid` alone: for the
/// real-time signals between zdd and its keepers, which nix's `Signal`
/// does not name.
pub fn send_number(pid: i32, signo: nix::libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) with a signal number to one process.
    if unsafe { nix::libc::kill(pid, signo) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
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

/// A step the tests may interrupt: in debug builds (what `cargo test`
/// runs), `ZDD_TEST_FAULT=STEP:SIGNAL` makes zdd send SIGNAL (`KILL`,
/// `INT`, …) to itself when it reaches STEP, so that a kill or a Ctrl-C at
/// an exact point of a swap can be proven harmless. Release builds have no
/// such hook.
pub fn fault_point(step: &str) {
    #[cfg(debug_assertions)]
    if let Some((at, sig)) = std::env::var("ZDD_TEST_FAULT")
        .ok()
        .as_deref()
        .and_then(|v| v.split_once(':'))
    {
        if at == step {
            if let Ok(sig) = parse_signal(sig) {
                log::debug!("test fault at {step}: {sig}");
                let _ = nix::sys::signal::raise(sig);
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

/// Parse `SIGTERM`, `TERM` or `sigterm`.
pub fn parse_signal(name: &str) -> std::result::Result<Signal, String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full)
        .map_err(|_| format!("unknown signal {name:?}; expected a name like SIGTERM or SIGQUIT"))
}
