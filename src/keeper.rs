//! The keeper: one small process per running slot or named process — zdd
//! itself, re-executed as `zdd keep` (hidden) — that outlives the zdd run.
//! It leads the app's process group, starts the app in it, and waits for
//! it without polling (`sigtimedwait` on blocked signals). When the app
//! exits on its own it starts it again: at once, then after a delay that
//! doubles from 100 ms to 30 s, reset after 10 s up (Docker's rule). The
//! group's stop signal (a deploy, a rollback, `zdd stop`) reaches the app as
//! before and ends the keeper too; nothing is restarted then.
//!
//! Until zdd arms it (a real-time signal to the keeper alone, once the app
//! is verified), an app that exits ends the keeper with the app's status,
//! so that a start-up failure is seen at once. Once armed it may roll back
//! a release that crash-loops after its swap, by running `zdd rollback`.
//! If the keeper is killed, the app gets its stop signal
//! (`PR_SET_PDEATHSIG`) and goes down with it; the next zdd run (`zdd up`,
//! a deploy) starts it again. What `status` shows is written, atomically,
//! to `ROOT/run/NAME.keeper`.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::libc;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::process::{Spec, Started};
use crate::state::{Action, HistoryEntry, Outcome, Phases, Slot, State};
use crate::text::fmt_ms;
use crate::user::RunAs;

/// How the keeper is started: the hidden `zdd keep` command line, written
/// by zdd ([`KeepArgs::to_args`]) and read back by the keeper without clap
/// ([`KeepArgs::from_args`]), which keeps the keeper's memory small.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepArgs {
    /// The slot or named process this keeper keeps.
    pub name: String,
    /// zdd's root (for the status file).
    pub root: PathBuf,
    /// The app's log (the keeper's marker lines go there too).
    pub log: PathBuf,
    /// The app's stop signal.
    pub stop_signal: Signal,
    /// How long the app has to stop (a stop sent to the keeper alone is
    /// passed on to the app after it).
    pub stop_timeout: Duration,
    /// Supervise from the start (else once zdd arms it).
    pub armed: bool,
    /// Run the app as this user.
    pub run_as: Option<String>,
    /// Roll back after this many exits within `.1` of arming, running
    /// `zdd rollback` with the config file `.2`.
    pub rollback: Option<(u32, Duration, PathBuf)>,
    /// The app's `sh -c` script.
    pub script: String,
}

impl KeepArgs {
    /// The arguments after `zdd keep`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--name".into(),
            self.name.clone().into(),
            "--root".into(),
            self.root.clone().into(),
            "--log".into(),
            self.log.clone().into(),
            "--stop-signal".into(),
            self.stop_signal.as_str().into(),
            "--stop-timeout-ms".into(),
            self.stop_timeout.as_millis().to_string().into(),
        ];
        if self.armed {
            a.push("--armed".into());
        }
        if let Some(user) = &self.run_as {
            a.extend(["--run-as".into(), user.into()]);
        }
        if let Some((after, within, config)) = &self.rollback {
            a.extend([
                "--rollback-after".into(),
                after.to_string().into(),
                "--rollback-within-ms".into(),
                within.as_millis().to_string().into(),
                "--rollback-config".into(),
                config.clone().into(),
            ]);
        }
        a.extend(["--".into(), self.script.clone().into()]);
        a
    }

    /// Read what [`KeepArgs::to_args`] wrote.
    pub fn from_args(args: &[OsString]) -> Result<KeepArgs, String> {
        let mut it = args.iter();
        let (mut name, mut root, mut log, mut stop) = (None, None, None, None);
        let mut stop_timeout = None;
        let (mut armed, mut run_as, mut after, mut within, mut config) =
            (false, None, None, None, None);
        let mut script = None;
        while let Some(arg) = it.next() {
            let arg = arg.to_str().ok_or("arguments must be UTF-8")?;
            if arg == "--" {
                script = it.next().and_then(|s| s.to_str()).map(str::to_string);
                break;
            }
            if arg == "--armed" {
                armed = true;
                continue;
            }
            let value = it.next().ok_or(format!("{arg} needs a value"))?;
            let text = || {
                value
                    .to_str()
                    .map(str::to_string)
                    .ok_or("arguments must be UTF-8")
            };
            match arg {
                "--name" => name = Some(text()?),
                "--root" => root = Some(PathBuf::from(value)),
                "--log" => log = Some(PathBuf::from(value)),
                "--stop-signal" => stop = Some(crate::signals::parse_signal(&text()?)?),
                "--stop-timeout-ms" => {
                    stop_timeout = Some(Duration::from_millis(
                        text()?.parse().map_err(|_| "bad duration")?,
                    ))
                }
                "--run-as" => run_as = Some(text()?),
                "--rollback-after" => after = Some(text()?.parse().map_err(|_| "bad count")?),
                "--rollback-within-ms" => {
                    within = Some(Duration::from_millis(
                        text()?.parse().map_err(|_| "bad duration")?,
                    ))
                }
                "--rollback-config" => config = Some(PathBuf::from(value)),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let missing = |what: &str| format!("{what} is missing");
        Ok(KeepArgs {
            name: name.ok_or_else(|| missing("--name"))?,
            root: root.ok_or_else(|| missing("--root"))?,
            log: log.ok_or_else(|| missing("--log"))?,
            stop_signal: stop.ok_or_else(|| missing("--stop-signal"))?,
            stop_timeout: stop_timeout.ok_or_else(|| missing("--stop-timeout-ms"))?,
            armed,
            run_as,
            rollback: match (after, within, config) {
                (Some(a), Some(w), Some(c)) => Some((a, w, c)),
                _ => None,
            },
            script: script.ok_or_else(|| missing("the script after --"))?,
        })
    }
}

/// How a keeper keeps the app it starts (see `keeper`).
pub struct Keep<'a> {
    /// The slot or named process.
    pub name: &'a str,
    pub root: &'a Path,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// Supervise from the start (`zdd up`), not only once armed.
    pub armed: bool,
    /// Roll back after this many exits within this long of arming, with
    /// this config file.
    pub rollback: Option<(u32, Duration, &'a Path)>,
}

/// Start the app under its keeper (`zdd keep`, zdd itself): the keeper
/// leads a new process group and starts the app in it, with the same
/// folder, environment and log. The id is the keeper's, the group's.
pub fn spawn(spec: &Spec, keep: &Keep) -> std::io::Result<Started> {
    let exe = std::env::current_exe()?;
    let log = crate::process::open_log(spec.log)?;
    let args = KeepArgs {
        name: keep.name.to_string(),
        root: keep.root.to_path_buf(),
        log: spec.log.to_path_buf(),
        stop_signal: keep.stop_signal,
        stop_timeout: keep.stop_timeout,
        armed: keep.armed,
        run_as: spec.run_as.map(|u| u.name.clone()),
        rollback: keep
            .rollback
            .map(|(after, within, config)| (after, within, config.to_path_buf())),
        script: crate::process::app_script(spec),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("keep")
        .args(args.to_args())
        .current_dir(spec.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    for (k, v) in spec.env {
        cmd.env(k, v);
    }
    crate::process::identify(spec, cmd.spawn()?)
}

/// What the keeper says about itself, for `status` (`ROOT/run/NAME.keeper`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeeperStatus {
    pub keeper_pid: i32,
    /// The app running now, if one is, and since when.
    pub app_pid: Option<i32>,
    pub app_started_at: Option<String>,
    /// Told to stop: it no longer starts the app again.
    #[serde(default)]
    pub stopping: bool,
    /// When zdd armed it (restarts counted from then).
    pub armed_at: Option<String>,
    /// Restarts since arming.
    pub restarts: u32,
    /// The last exit on its own: "exit status: 1", "signal: 9 (SIGKILL)".
    pub last_exit: Option<String>,
    pub last_exit_at: Option<String>,
    /// While waiting to start the app again: how long the wait is.
    pub backoff_ms: Option<u64>,
    /// Why it asked for a rollback, if it did, and how that `zdd rollback`
    /// ended.
    pub rollback: Option<String>,
    pub rollback_exit: Option<String>,
}

/// Where the keeper of `name` writes its status.
pub fn status_path(root: &Path, name: &str) -> PathBuf {
    root.join("run").join(format!("{name}.keeper"))
}

/// Read a keeper's status file, if there is one.
pub fn read_status(root: &Path, name: &str) -> Option<KeeperStatus> {
    let text = crate::root::read_nofollow(&status_path(root, name)).ok()??;
    toml::from_str(&text).ok()
}

/// Put the restarts the slots' keepers made since the last look into the
/// history, one entry per slot and look (a crash loop is one line, not one
/// per crash). Returns whether the state changed.
pub fn fold_restarts(state: &mut State, root: &Path) -> bool {
    let mut changed = false;
    for slot in Slot::BOTH {
        let s = state.slot(slot);
        let (Some(id), Some(commit)) = (s.process.clone(), s.commit.clone()) else {
            continue;
        };
        let Some(k) = read_status(root, slot.name()).filter(|k| k.keeper_pid == id.pid) else {
            continue;
        };
        let new = k.restarts.saturating_sub(s.restarts_recorded);
        if new == 0 {
            continue;
        }
        let last = k.last_exit.as_deref().unwrap_or("unknown");
        let at = k.last_exit_at.clone().unwrap_or_else(now);
        // One entry per live period: the same release, again, adds to it.
        let merged = state.history.last_mut().filter(|h| {
            h.action == Action::Restart
                && h.slot == slot
                && h.commit == commit
                && h.restarts.is_some()
        });
        let total = new + merged.as_ref().and_then(|h| h.restarts).unwrap_or(0);
        let reason = format!(
            "its keeper started it again {total} time{} after it exited on its own (last: {last} at {at})",
            if total == 1 { "" } else { "s" },
        );
        match merged {
            Some(h) => {
                h.at = at;
                h.restarts = Some(total);
                h.reason = Some(reason);
            }
            None => state.push_history(HistoryEntry {
                at,
                action: Action::Restart,
                outcome: Outcome::Ok,
                commit,
                slot,
                previous: None,
                reason: Some(reason),
                restarts: Some(total),
                phases: Phases::default(),
            }),
        }
        state.slot_mut(slot).restarts_recorded = k.restarts;
        changed = true;
    }
    changed
}

/// The signal zdd sends the keeper (alone, never the group) to arm it.
pub fn arm_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Arm the keeper `pid`: from now on it restarts the app.
pub fn arm(pid: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a real-time signal number to one process.
    if unsafe { libc::kill(pid, arm_signal()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

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
        exits: Vec::new(),
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
    /// When the app exited on its own, since arming.
    exits: Vec<Instant>,
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
                    say(&format!("the app stopped ({})", describe(status)));
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
            let what = describe(status);
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
        let what = describe(status);
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
        let now = Instant::now();
        // Only exits inside the window count, and only until it asked once.
        if let (Some((_, within, _)), Some(armed), None) =
            (&self.args.rollback, self.armed_at, &self.status.rollback)
        {
            if now.duration_since(armed) <= *within {
                self.exits.push(now);
            }
        }
        if let (Some((after, within, _)), Some(armed), None) = (
            self.args.rollback.clone(),
            self.armed_at,
            &self.status.rollback,
        ) {
            let recent = self
                .exits
                .iter()
                .filter(|&&t| t.duration_since(armed) <= within)
                .count() as u32;
            if after > 0 && recent >= after {
                let reason = format!(
                    "exited {recent} times in {} after its swap; last: {what}",
                    humantime::format_duration(Duration::from_secs(
                        now.duration_since(armed).as_secs()
                    ))
                );
                self.roll_back(&reason);
            }
        }
        self.save();
    }

    /// Ask for the rollback, once: `zdd rollback --wait`, in its own group
    /// (it stops this keeper's group), output to the log.
    fn roll_back(&mut self, reason: &str) {
        self.status.rollback = Some(reason.to_string());
        let Some((_, _, config)) = &self.args.rollback else {
            return;
        };
        say(&format!("rolling back: the release {reason}"));
        let exe = zdd_exe();
        let log = crate::process::open_log(&self.args.log);
        let mut cmd = Command::new(exe);
        cmd.arg("--config")
            .arg(config)
            .arg("rollback")
            // Bounded: past the window the crash loop is old news.
            .arg(format!("--wait={}ms", within_ms(&self.args)))
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

fn within_ms(args: &KeepArgs) -> u128 {
    args.rollback.as_ref().map_or(0, |(_, w, _)| w.as_millis())
}

/// Every signal the keeper handles itself, synchronously: all but those
/// that cannot be caught or come from its own faults, and the arm signal.
fn watched_signals(stop: Signal) -> libc::sigset_t {
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
fn unblock_all() {
    // SAFETY: sigemptyset and sigprocmask on a local set.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

fn block(set: &libc::sigset_t) {
    // SAFETY: the keeper is single-threaded; blocking its signals makes
    // them wait for `wait` (sigtimedwait) instead of interrupting anything.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut());
    }
}

/// The next signal from `set`, or `None` when `timeout` passed.
fn wait(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<libc::c_int> {
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

/// "exit status: 1", "signal: 9 (SIGKILL)".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status: {c}"),
        (None, Some(s)) => match Signal::try_from(s) {
            Ok(sig) => format!("signal: {s} ({})", sig.as_str()),
            Err(_) => format!("signal: {s}"),
        },
        _ => status.to_string(),
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
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

    #[test]
    fn what_zdd_writes_the_keeper_reads() {
        let args = KeepArgs {
            name: "a".into(),
            root: "/srv/zdd root".into(),
            log: "/srv/zdd root/logs/a.log".into(),
            stop_signal: Signal::SIGQUIT,
            stop_timeout: Duration::from_secs(30),
            armed: true,
            run_as: Some("www-data".into()),
            rollback: Some((3, Duration::from_secs(300), "/etc/zdd/zdd.toml".into())),
            script: "exec node server.js --port \"$PORT\"".into(),
        };
        assert_eq!(KeepArgs::from_args(&args.to_args()).unwrap(), args);
        let plain = KeepArgs {
            armed: false,
            run_as: None,
            rollback: None,
            ..args
        };
        assert_eq!(KeepArgs::from_args(&plain.to_args()).unwrap(), plain);
        assert!(KeepArgs::from_args(&["--name".into()]).is_err());
    }

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exit status: 1");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal: 9 (SIGKILL)");
    }
}
