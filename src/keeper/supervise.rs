//! The keeper process (`zdd keep`): start the app, wait for signals
//! without polling, start it again when it exits on its own (backing off),
//! pass a stop on, and ask for a rollback when it crash-loops once armed.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::Signal;

use super::sigwait::{block, unblock_all, wait, watched_signals};
use super::status::{status_path, KeeperStatus};
use super::{arm_signal, KeepArgs};
use crate::fsutil;
use crate::process::Spec;
use crate::text::fmt_ms;
use crate::text::now;
use crate::user::RunAs;

/// The delay before the next start after an exit: 0 for the first, then
/// 100 ms doubling to 30 s; `reset` (10 s up) starts the series again.
pub fn next_delay(previous: Option<Duration>, reset: bool) -> Duration {
    match previous {
        _ if reset => Duration::ZERO,
        None => Duration::ZERO,
        Some(d) if d.is_zero() => Duration::from_millis(100),
        Some(d) => (d * 2).min(Duration::from_secs(30)),
    }
}

/// How long an app must run for the delay to start over.
const RESET_AFTER: Duration = Duration::from_secs(10);

/// `zdd keep ARGS...`: keep the app running; returns the exit code.
pub fn run(args: &[OsString]) -> i32 {
    let args = match KeepArgs::from_args(args) {
        Ok(a) => a,
        Err(e) => {
            say(&format!("zdd keep: {e} (zdd starts keepers itself)"));
            return 2;
        }
    };
    let run_as = match args.run_as.as_deref().map(crate::user::resolve_user) {
        None => None,
        Some(Ok(u)) => Some(u),
        Some(Err(e)) => {
            say(&format!("cannot run the app as {e}"));
            return 1;
        }
    };
    let watched = watched_signals(args.stop_signal);
    block(&watched);
    let mut keeper = Keeper {
        status: KeeperStatus {
            keeper_pid: std::process::id() as i32,
            ..KeeperStatus::default()
        },
        armed_at: None,
        exits_in_window: 0,
        rollback_child: None,
        run_as,
        args,
    };
    if keeper.args.armed {
        keeper.arm();
    }
    keeper.supervise(&watched)
}

struct Keeper {
    args: KeepArgs,
    run_as: Option<RunAs>,
    status: KeeperStatus,
    armed_at: Option<Instant>,
    /// How often the app exited on its own within the rollback window
    /// after arming.
    exits_in_window: u32,
    /// The `zdd rollback` it started, until reaped.
    rollback_child: Option<Child>,
}

impl Keeper {
    fn arm(&mut self) {
        self.armed_at = Some(Instant::now());
        self.status.armed_at = Some(now());
        self.save();
    }

    fn supervise(&mut self, watched: &libc::sigset_t) -> i32 {
        let mut app: Option<(Child, Instant)> = None;
        let mut restart_at = Some(Instant::now());
        let mut delay: Option<Duration> = None;
        // Since when it stops, and whether it passed the stop on itself.
        let mut stopping: Option<Instant> = None;
        let mut forwarded = false;
        loop {
            if stopping.is_none() && restart_at.is_some_and(|at| at <= Instant::now()) {
                restart_at = None;
                match self.start() {
                    Ok(child) => {
                        self.status.app_pid = Some(child.id() as i32);
                        self.status.app_started_at = Some(now());
                        self.status.backoff_ms = None;
                        self.save();
                        app = Some((child, Instant::now()));
                    }
                    Err(e) if self.armed_at.is_none() => {
                        say(&format!("cannot start the app: {e}"));
                        return 1;
                    }
                    Err(e) => {
                        // As if it had exited at once: back off, never spin.
                        let wait = next_delay(delay, false).max(Duration::from_millis(100));
                        delay = Some(wait);
                        say(&format!(
                            "cannot start the app: {e}; trying again in {}",
                            fmt_ms(wait.as_millis() as u64)
                        ));
                        self.status.last_exit = Some(format!("cannot start: {e}"));
                        self.status.last_exit_at = Some(now());
                        self.status.backoff_ms = Some(wait.as_millis() as u64);
                        self.save();
                        restart_at = Some(Instant::now() + wait);
                    }
                }
            }
            // Wake for a signal, a restart that is due, or a stop to pass on.
            let forward_at = stopping
                .filter(|_| !forwarded)
                .map(|since| since + self.args.stop_timeout);
            let deadline = match (restart_at.filter(|_| stopping.is_none()), forward_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
            // Every signal that waits, not only the first: sigtimedwait hands
            // out the lowest number first, and a stop or an arm that came
            // with a child's exit must win over SIGCHLD (17).
            let mut signals: Vec<libc::c_int> = wait(watched, timeout).into_iter().collect();
            while let Some(more) = wait(watched, Some(Duration::ZERO)) {
                signals.push(more);
            }
            let mut child_event = false;
            for sig in signals {
                match sig {
                    libc::SIGCHLD => child_event = true,
                    s if s == arm_signal() && self.armed_at.is_none() => self.arm(),
                    s if stopping.is_none()
                        && (s == crate::process::stop_notice_signal()
                            || s == self.args.stop_signal as i32
                            || s == libc::SIGTERM
                            || s == libc::SIGINT) =>
                    {
                        stopping = Some(Instant::now());
                        self.status.stopping = true;
                        self.status.backoff_ms = None;
                        self.save();
                    }
                    _ => {} // meant for the app, which has it too
                }
            }
            if child_event {
                self.reap_rollback();
            }
            let exited = match app.as_mut() {
                Some((child, started)) if child_event => match child.try_wait() {
                    Ok(Some(status)) => Some((status, started.elapsed())),
                    _ => None,
                },
                _ => None,
            };
            if let Some((status, up)) = exited {
                app = None;
                self.status.app_pid = None;
                if stopping.is_some() {
                    say(&format!("the app stopped ({})", status));
                    self.save();
                    return 0;
                }
                if self.armed_at.is_none() {
                    // Probation: zdd is watching; it decides.
                    self.save();
                    exit_like(status);
                }
                self.clear_remnants();
                let wait = next_delay(delay, up >= RESET_AFTER);
                delay = Some(wait);
                self.exited(status, up, wait);
                restart_at = Some(Instant::now() + wait);
            }
            if let Some(since) = stopping {
                if app.is_none() {
                    say("stopped while the app was not running");
                    self.save();
                    return 0;
                }
                // A stop that came to the keeper alone (not to the group)
                // never reached the app: pass it on, once, after the time
                // the app would have had to finish. Sooner would stop an
                // app that got it from the group twice.
                if !forwarded && since.elapsed() >= self.args.stop_timeout {
                    forwarded = true;
                    say(&format!(
                        "the app still runs {} after the stop: sending it {}",
                        humantime::format_duration(self.args.stop_timeout),
                        self.args.stop_signal
                    ));
                    let _ = nix::sys::signal::killpg(nix::unistd::getpgrp(), self.args.stop_signal);
                }
            }
        }
    }

    /// The app's main process is gone; anything it left in the group (a
    /// worker holding its port) would make the next start fail: kill it.
    fn clear_remnants(&self) {
        let me = std::process::id() as i32;
        let pgid = nix::unistd::getpgrp().as_raw();
        let left: Vec<i32> = crate::process::group_members(pgid)
            .filter(|&pid| pid != me)
            .collect();
        if left.is_empty() {
            return;
        }
        say(&format!(
            "the app left {} process(es) in its group ({left:?}); killing them before it starts again",
            left.len()
        ));
        for pid in &left {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let t = Instant::now();
        while crate::process::group_members(pgid).any(|pid| pid != me)
            && t.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The `zdd rollback` it started, if it ended: say how.
    fn reap_rollback(&mut self) {
        let Some(child) = self.rollback_child.as_mut() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.rollback_child = None;
            let what = status.to_string();
            if !status.success() {
                say(&format!(
                    "zdd rollback ended with {what}; see the lines above"
                ));
            }
            self.status.rollback_exit = Some(what);
            self.save();
        }
    }

    /// Start the app in the keeper's group, with its stop signal as the
    /// parent-death signal.
    fn start(&self) -> std::io::Result<Child> {
        let dir = std::env::current_dir()?;
        let spec = Spec {
            command: &self.args.script,
            dir: &dir,
            env: &[],
            log: &self.args.log,
            run_as: self.run_as.as_ref(),
        };
        let mut cmd = spec.command_in_group(&self.args.script, false)?;
        let parent = std::process::id() as libc::pid_t;
        let death = self.args.stop_signal as libc::c_int;
        // SAFETY: sigprocmask, prctl and getppid are async-signal-safe system
        // calls. The app must not inherit the keeper's blocked signals (std
        // does not reset the mask). The parent-death signal is set after the
        // uid change (which clears it), and checked against a keeper that
        // died before it was set.
        unsafe {
            cmd.pre_exec(move || {
                unblock_all();
                if libc::prctl(libc::PR_SET_PDEATHSIG, death as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the keeper is gone"));
                }
                Ok(())
            });
        }
        cmd.spawn()
    }

    /// The app exited on its own: say so, count it, and maybe ask for a
    /// rollback.
    fn exited(&mut self, status: ExitStatus, up: Duration, wait: Duration) {
        let what = status.to_string();
        self.status.restarts += 1;
        self.status.last_exit = Some(what.clone());
        self.status.last_exit_at = Some(now());
        self.status.backoff_ms = Some(wait.as_millis() as u64);
        say(&format!(
            "the app exited on its own ({what}) after {} up; starting it again {}",
            fmt_ms(up.as_millis() as u64),
            if wait.is_zero() {
                "at once".to_string()
            } else {
                format!("in {}", fmt_ms(wait.as_millis() as u64))
            }
        ));
        // Only exits inside the window count, and only until it asked once.
        if let (Some((after, within, config)), Some(armed), None) = (
            self.args.rollback.clone(),
            self.armed_at,
            &self.status.rollback,
        ) {
            let since_swap = armed.elapsed();
            if since_swap <= within {
                self.exits_in_window += 1;
            }
            if after > 0 && self.exits_in_window >= after {
                let reason = format!(
                    "exited {} times in {} after its swap; last: {what}",
                    self.exits_in_window,
                    humantime::format_duration(Duration::from_secs(since_swap.as_secs()))
                );
                self.roll_back(&reason, within, &config);
            }
        }
        self.save();
    }

    /// Ask for the rollback, once: `zdd rollback --wait`, in its own group
    /// (it stops this keeper's group), output to the log.
    fn roll_back(&mut self, reason: &str, within: Duration, config: &Path) {
        self.status.rollback = Some(reason.to_string());
        say(&format!("rolling back: the release {reason}"));
        let exe = zdd_exe();
        let log = crate::process::open_log(&self.args.log);
        let mut cmd = Command::new(exe);
        cmd.arg("--config")
            .arg(config)
            .arg("rollback")
            // Bounded: past the window the crash loop is old news.
            .arg(format!("--wait={}ms", within.as_millis()))
            .arg(OsString::from(format!("--because={reason}")))
            // Only while this keeper's app is the live one: a deploy may
            // have replaced it while the rollback waited for the lock.
            .arg(format!(
                "--if-live={}:{}",
                self.args.name, self.status.keeper_pid
            ));
        cmd.stdin(Stdio::null()).process_group(0);
        for key in ["PORT", "ZDD_SLOT", "ZDD_COMMIT", "ZDD_ROOT"] {
            cmd.env_remove(key);
        }
        // Not one of the slot's processes, but zdd's all the same.
        cmd.env("ZDD_ROLLBACK_OF", &self.args.root);
        // SAFETY: only async-signal-safe calls (see `unblock_all`); the
        // rollback must get its signals.
        unsafe {
            cmd.pre_exec(|| {
                unblock_all();
                Ok(())
            });
        }
        if let Ok(log) = log {
            if let Ok(copy) = log.try_clone() {
                cmd.stdout(copy);
            }
            cmd.stderr(log);
        }
        match cmd.spawn() {
            // Not waited for here: reaped on its SIGCHLD.
            Ok(child) => self.rollback_child = Some(child),
            Err(e) => say(&format!("cannot run zdd rollback: {e}")),
        }
    }

    fn save(&self) {
        let text = toml::to_string(&self.status).expect("keeper status serializes");
        let path = status_path(&self.args.root, &self.args.name);
        let _ = fsutil::write_atomic(&path, text.as_bytes(), 0o600);
    }
}

/// The zdd binary to run for a rollback: this one, or, if it was replaced
/// since (an upgrade), the one now at its path.
fn zdd_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("zdd"));
    match exe.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    }
}

/// End the keeper the way the app ended: same code, or same signal.
fn exit_like(status: ExitStatus) -> ! {
    if let Some(sig) = status.signal() {
        // SAFETY: restore the default action, unblock, and die by it.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
    }
    std::process::exit(status.code().unwrap_or(1));
}

/// One marker line in the log (the keeper's stderr is the app's log).
fn say(text: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "=== zdd {}: keeper {}: {text}",
        now(),
        std::process::id()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays_follow_dockers_rule() {
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..12 {
            let next = next_delay(d, false);
            seen.push(next.as_millis() as u64);
            d = Some(next);
        }
        assert_eq!(
            seen,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(
            next_delay(d, true),
            Duration::ZERO,
            "10 s up: at once again"
        );
    }
}
