//! The keeper process (`zdd keep`): start the app, wait for signals
//! without polling, start it again when it exits on its own (backing off)
//! while it is still wanted, pass a stop on, and ask for a rollback when it
//! crash-loops once armed.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::libc;

use super::reap;
use super::sigwait::{block, unblock_all, wait, watched_signals};
use super::status::{status_path, KeeperStatus};
use super::{arm_signal, KeepArgs};
use crate::fsutil;
use crate::process::{fence, Spec};
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

/// How long a keeper may wait for zdd to record it (zdd records a keeper
/// right after it starts it, within milliseconds) before it takes a
/// missing record for one that is gone.
const RECORD_GRACE: Duration = Duration::from_secs(10);

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
    // Orphans among the app's descendants become the keeper's children:
    // it sees, reaps and stops all of them.
    if let Err(e) = fence::become_subreaper() {
        say(&format!(
            "cannot become the subreaper of the app's processes: {e}"
        ));
    }
    let watched = watched_signals(args.stop_signal);
    block(&watched);
    let me = std::process::id() as i32;
    let mut keeper = Keeper {
        status: KeeperStatus {
            keeper_pid: me,
            keeper_start_time: crate::process::read_stat(me).map_or(0, |st| st.start_time),
            boot_id: crate::process::boot_id(),
            ..KeeperStatus::default()
        },
        armed_at: None,
        exits_in_window: 0,
        rollback_pid: None,
        run_as,
        born: Instant::now(),
        record_seen: false,
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
    rollback_pid: Option<i32>,
    /// When the keeper started, and whether it has seen zdd's record of it.
    born: Instant,
    record_seen: bool,
}

impl Keeper {
    fn arm(&mut self) {
        self.armed_at = Some(Instant::now());
        self.status.armed_at = Some(now());
        self.save();
    }

    fn supervise(&mut self, watched: &libc::sigset_t) -> i32 {
        let mut app: Option<(i32, Instant)> = None;
        let mut restart_at = Some(Instant::now());
        let mut delay: Option<Duration> = None;
        // Since when it stops, and whether it passed the stop on itself.
        let mut stopping: Option<Instant> = None;
        let mut forwarded = false;
        loop {
            if stopping.is_none() && restart_at.is_some_and(|at| at <= Instant::now()) {
                restart_at = None;
                // A restart, not the first start: is the app still wanted?
                if let Some(why) = delay.and_then(|_| self.unwanted()) {
                    say(&format!("{why}; not starting the app again"));
                    self.save();
                    return 0;
                }
                match self.start() {
                    Ok(pid) => {
                        self.status.app_pid = Some(pid);
                        self.status.app_started_at = Some(now());
                        self.status.backoff_ms = None;
                        self.save();
                        app = Some((pid, Instant::now()));
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
            let mut exited = None;
            if child_event {
                for child in reap::reap_all() {
                    match app {
                        Some((pid, started)) if pid == child.pid => {
                            exited = Some((child.status, started.elapsed()));
                        }
                        _ if Some(child.pid) == self.rollback_pid => {
                            self.rollback_ended(child.status)
                        }
                        _ => {} // an orphan handed to the keeper, reaped
                    }
                }
            }
            if let Some((status, up)) = exited {
                app = None;
                self.status.app_pid = None;
                if let Some(since) = stopping {
                    return self.end_stop(Some(status), since);
                }
                if self.armed_at.is_none() {
                    // Probation: zdd is watching; it decides. Nothing the
                    // app started outlives it.
                    self.clear_remnants();
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
                    return self.end_stop(None, since);
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
                    for (pid, start) in reap::descendants(self.rollback_pid) {
                        if crate::process::read_stat(pid)
                            .is_some_and(|st| st.pgrp != nix::unistd::getpgrp().as_raw())
                        {
                            fence::signal_exact(pid, start, self.args.stop_signal as i32);
                        }
                    }
                }
            }
        }
    }

    /// The stop is done once the app and everything it started are gone:
    /// wait for what outlived it until the stop timeout, then kill it; say
    /// what there was, and end.
    fn end_stop(&mut self, status: Option<ExitStatus>, since: Instant) -> i32 {
        let deadline = since + self.args.stop_timeout;
        let cgroup = self.args.cgroup.clone();
        let mut reaped = Vec::new();
        let left = reap::outlived(self.rollback_pid, cgroup.as_deref(), deadline, &mut |r| {
            reaped.push(r)
        });
        self.reaped_meanwhile(reaped);
        match status {
            Some(status) => say(&format!("the app stopped ({status})")),
            None => say("stopped while the app was not running"),
        }
        if !left.is_empty() {
            say(&format!(
                "the app left {} process(es) running, stopped with it: {}",
                left.len(),
                left.join(", ")
            ));
            self.status.outlived = left;
        }
        self.save();
        0
    }

    /// Is the app still wanted? Not when its root is gone (deleted) or
    /// zdd's record no longer names this keeper (a state or record that
    /// was replaced, or never written by a zdd killed just after starting
    /// it). `Some` says why not.
    fn unwanted(&mut self) -> Option<String> {
        let root = &self.args.root;
        if !root.is_dir() {
            return Some(format!("its root {} is gone", root.display()));
        }
        match self.recorded() {
            Some(true) => {
                self.record_seen = true;
                None
            }
            Some(false) if self.record_seen || self.born.elapsed() >= RECORD_GRACE => {
                Some(format!(
                    "zdd's record of {} ({}) does not name this keeper (pid {}): it was stopped or replaced behind its back",
                    self.what(),
                    self.record_path().display(),
                    self.status.keeper_pid
                ))
            }
            // Not recorded yet, or unreadable for now: go on.
            _ => None,
        }
    }

    /// "slot a" or "web".
    fn what(&self) -> String {
        match crate::slot::Slot::parse(&self.args.name) {
            Some(slot) => format!("slot {slot}"),
            None => self.args.name.clone(),
        }
    }

    /// Where zdd records this keeper: the state file for a slot,
    /// `run/NAME.toml` for a named process.
    fn record_path(&self) -> PathBuf {
        match crate::slot::Slot::parse(&self.args.name) {
            Some(_) => self.args.root.join("state.toml"),
            None => self
                .args
                .root
                .join("run")
                .join(format!("{}.toml", self.args.name)),
        }
    }

    /// Does zdd's record name this keeper? `None` when it cannot tell.
    fn recorded(&self) -> Option<bool> {
        let text = match crate::root::read_nofollow(&self.record_path()) {
            Ok(Some(t)) => t,
            Ok(None) => return Some(false),
            Err(_) => return None,
        };
        let value: toml::Table = toml::from_str(&text).ok()?;
        let process = match crate::slot::Slot::parse(&self.args.name) {
            Some(slot) => value
                .get("slots")?
                .get(slot.name())?
                .get("process")
                .cloned(),
            None => value.get("process").cloned(),
        };
        let pid = process.and_then(|p| p.get("pid")?.as_integer());
        Some(pid == Some(i64::from(self.status.keeper_pid)))
    }

    /// The app's main process is gone; anything it left (a worker holding
    /// its port, a daemon it started) would make the next start fail or
    /// outlive it: kill it all.
    fn clear_remnants(&mut self) {
        let mut reaped = Vec::new();
        let left = reap::kill_descendants(
            self.rollback_pid,
            self.args.cgroup.as_deref(),
            Duration::from_secs(2),
            &mut |r| reaped.push(r),
        );
        self.reaped_meanwhile(reaped);
        if !left.is_empty() {
            say(&format!(
                "the app left {} process(es) ({}); killed them",
                left.len(),
                left.join(", ")
            ));
        }
    }

    /// Children reaped while it stopped the app's leftovers: the rollback
    /// it started may be among them (the app was dealt with already).
    fn reaped_meanwhile(&mut self, reaped: Vec<reap::Reaped>) {
        for child in reaped {
            if Some(child.pid) == self.rollback_pid {
                self.rollback_ended(child.status);
            }
        }
    }

    /// The `zdd rollback` it started ended: say how.
    fn rollback_ended(&mut self, status: ExitStatus) {
        self.rollback_pid = None;
        let what = status.to_string();
        if !status.success() {
            say(&format!(
                "zdd rollback ended with {what}; see the lines above"
            ));
        }
        self.status.rollback_exit = Some(what);
        self.save();
    }

    /// Start the app in the keeper's group (and the app's cgroup), as its
    /// user, with its stop signal as the parent-death signal. Returns its
    /// pid; it is reaped with the keeper's other children.
    fn start(&self) -> std::io::Result<i32> {
        if let Some(cgroup) = &self.args.cgroup {
            // Created inside its cgroup where the kernel can (5.7).
            // (`_open` stays open until the child has its own copies.)
            let (exec, _open) = self.exec()?;
            if let Some(pid) = fence::spawn_in_cgroup(cgroup, &exec)? {
                return Ok(pid);
            }
        }
        let dir = std::env::current_dir()?;
        // zdd gave the keeper exactly the app's environment: pass it on.
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let spec = Spec {
            command: &self.args.script,
            dir: &dir,
            env: &env,
            log: &self.args.log,
            run_as: self.run_as.as_ref(),
        };
        let procs = match &self.args.cgroup {
            Some(cg) => Some(fence::cgroup_procs(cg).map_err(|e| {
                std::io::Error::other(format!("cannot join the cgroup {}: {e}", cg.display()))
            })?),
            None => None,
        };
        let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c").arg(&self.args.script);
        // SAFETY: sigprocmask and write(2) are async-signal-safe. The app
        // must not inherit the keeper's blocked signals (std does not reset
        // the mask); it joins its cgroup while still root.
        unsafe {
            sh.pre_exec(move || {
                unblock_all();
                match procs_fd {
                    Some(fd) => fence::join_cgroup(fd),
                    None => Ok(()),
                }
            });
        }
        let mut cmd = spec.around(sh, false)?;
        if let Some(user) = self.run_as.as_ref() {
            crate::process::become_user(&mut cmd, user);
        }
        let parent = std::process::id() as libc::pid_t;
        let death = self.args.stop_signal as libc::c_int;
        // SAFETY: prctl and getppid are async-signal-safe system calls. The
        // parent-death signal is set after the uid change (which clears
        // it), and checked against a keeper that died before it was set.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The keeper is gone (no allocation here, after the fork).
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(procs);
        Ok(child.id() as i32)
    }

    /// The app as [`fence::spawn_in_cgroup`] starts it: `sh -c SCRIPT` in
    /// the keeper's folder with the keeper's environment (zdd gave it the
    /// app's), stdin from /dev/null, output to the log, as its user; with
    /// the files it names by descriptor.
    fn exec(&self) -> std::io::Result<(fence::Exec, [std::fs::File; 2])> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |b: &[u8]| CString::new(b).map_err(|_| std::io::Error::other("a NUL byte"));
        let null = std::fs::File::open("/dev/null")?;
        let log = crate::process::open_log(&self.args.log)?;
        let exec = fence::Exec {
            program: c(b"/bin/sh")?,
            argv: vec![c(b"/bin/sh")?, c(b"-c")?, c(self.args.script.as_bytes())?],
            envp: std::env::vars_os()
                .filter_map(|(k, v)| {
                    let mut kv = k.as_bytes().to_vec();
                    kv.push(b'=');
                    kv.extend_from_slice(v.as_bytes());
                    CString::new(kv).ok()
                })
                .collect(),
            dir: c(std::env::current_dir()?.as_os_str().as_bytes())?,
            stdio: [null.as_raw_fd(), log.as_raw_fd(), log.as_raw_fd()],
            user: self
                .run_as
                .as_ref()
                .map(|u| (u.groups.clone(), u.gid, u.uid)),
            death_signal: self.args.stop_signal as libc::c_int,
            parent: std::process::id() as libc::pid_t,
        };
        Ok((exec, [null, log]))
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
            // have replaced it before the rollback got the lock. (A deploy
            // that stops this keeper stops a rollback still waiting for the
            // lock too: it is in the keeper's session.)
            .arg(format!(
                "--if-live={}:{}",
                self.args.name, self.status.keeper_pid
            ));
        cmd.stdin(Stdio::null()).process_group(0);
        // It runs as root: none of the app's environment (the keeper holds
        // the app's, its user's `HOME` among it), only what zdd needs.
        crate::process::plain_env(&mut cmd);
        if let Ok(Some(me)) = nix::unistd::User::from_uid(nix::unistd::geteuid()) {
            cmd.env("HOME", me.dir)
                .env("USER", &me.name)
                .env("LOGNAME", me.name);
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
            Ok(child) => self.rollback_pid = Some(child.id() as i32),
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
