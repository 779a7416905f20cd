//! The keeper process (`zdd keep`): the effects around the pure
//! `machine`. It waits for signals and the app's output without polling,
//! copies the output to the log (`logfile`), feeds what it sees to the
//! machine as events and carries out the actions it gets back: start the
//! app, stop what it left, pass a stop on, ask for a rollback, write the
//! status file, end.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::libc;

use super::logfile::LogFile;
use super::machine::{Action, End, Event, Machine, RollbackPolicy};
use super::reap;
use super::sigwait::{block, unblock_all, watched_signals, Signals, Woke};
use super::status::{status_path, KeeperStatus};
use super::KeepArgs;
use crate::fsutil;
use crate::process::protocol::{arm_signal, stop_notice_signal};
use crate::process::{fence, Spec};
use crate::text::now;
use crate::user::RunAs;

/// How long a keeper may wait for zdd to record it (zdd records a keeper
/// right after it starts it, within milliseconds) before it takes a
/// missing record for one that is gone.
const RECORD_GRACE: Duration = Duration::from_secs(10);

/// How much the keeper reads from the pipe at a time, and at most per
/// wake-up while the app runs (then it looks at its signals again).
/// (Small reads keep its memory small: 10 MB/s is 640 reads a second.)
const CHUNK: usize = 16 * 1024;
const READS_PER_WAKE: usize = 64;
/// The most chunks one drain reads when all that waits in the pipe must be
/// written first (the app exited, the keeper stops or ends): 4 MiB, four
/// times the biggest pipe an unprivileged app can make (`pipe-max-size`),
/// so it gets everything that was in the pipe, and a process left writing
/// faster than the disk takes cannot hold the keeper in the loop.
const READS_TO_EMPTY: usize = 256;

/// `zdd keep ARGS...`: keep the app running; returns the exit code.
pub fn run(args: &[OsString]) -> i32 {
    let args = match KeepArgs::from_args(args) {
        Ok(a) => a,
        Err(e) => {
            say_early(&format!("zdd keep: {e} (zdd starts keepers itself)"));
            return 2;
        }
    };
    let run_as = match args.run_as.as_deref().map(crate::user::resolve_user) {
        None => None,
        Some(Ok(u)) => Some(u),
        Some(Err(e)) => {
            say_early(&format!("cannot run the app as {e}"));
            return 1;
        }
    };
    let watched = watched_signals(args.stop_signal);
    block(&watched);
    let (signals, (pipe_read, pipe_write)) =
        match Signals::new(&watched).and_then(|s| Ok((s, log_pipe()?))) {
            Ok(both) => both,
            Err(e) => {
                say_early(&format!("cannot set up the keeper: {e}"));
                return 1;
            }
        };
    let mut log = LogFile::new(&args.log, args.log_policy);
    // From now on the keeper writes only through `log`: its own stdout and
    // stderr (the log file as zdd opened it) would hold a rotated file open.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 2);
    }
    // Orphans among the app's descendants become the keeper's children:
    // it sees, reaps and stops all of them.
    if let Err(e) = fence::become_subreaper() {
        log.say(&line(&format!(
            "cannot become the subreaper of the app's processes: {e}"
        )));
    }
    let me = std::process::id() as i32;
    let status = KeeperStatus {
        keeper_pid: me,
        keeper_start_time: crate::process::read_stat(me).map_or(0, |st| st.start_time),
        boot_id: crate::process::boot_id(),
        ..KeeperStatus::default()
    };
    let rollback = args
        .rollback
        .as_ref()
        .map(|(after, within, _)| RollbackPolicy {
            after: *after,
            within: *within,
        });
    let mut keeper = Keeper {
        machine: Machine::new(status, rollback, args.stop_timeout),
        rollback_pid: None,
        run_as,
        born: Instant::now(),
        record_seen: false,
        log,
        pipe_read,
        pipe_write,
        env_file_vars: None,
        args,
    };
    if keeper.args.armed {
        if let Some(code) = keeper.feed(Event::Arm) {
            return code;
        }
    }
    keeper.supervise(&signals)
}

/// The app's stdout and stderr: a pipe the keeper reads (nonblocking) and
/// writes to the log. Both ends close on exec; the app gets its copies as
/// descriptors 1 and 2. A bigger buffer (1 MiB where the system allows)
/// rides out a slow disk.
fn log_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        read.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    Ok((read, write))
}

struct Keeper {
    args: KeepArgs,
    run_as: Option<RunAs>,
    machine: Machine,
    /// The `zdd rollback` it started, until reaped.
    rollback_pid: Option<i32>,
    /// When the keeper started, and whether it has seen zdd's record of it.
    born: Instant,
    record_seen: bool,
    log: LogFile,
    pipe_read: OwnedFd,
    /// Kept open, so that the app's writes never fail while the keeper
    /// lives (and never block: the keeper reads all the time).
    pipe_write: OwnedFd,
    /// The env file's variables as read at the app's last start.
    env_file_vars: Option<Vec<(String, String)>>,
}

impl Keeper {
    fn supervise(&mut self, signals: &Signals) -> i32 {
        loop {
            let now = Instant::now();
            // The machine's next step, or the end of a line the app has
            // not finished, held back in the log (`logfile::HOLD`).
            let timeout = [self.machine.deadline(now), self.log.deadline()]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(now));
            let woke = match timeout {
                Some(t) if t.is_zero() => Woke {
                    signals: Vec::new(),
                    pipe: false,
                },
                _ => signals.wait(Some(self.pipe_read.as_raw_fd()), timeout),
            };
            // Every signal that waited, not only the first: a stop or an
            // arm that came with a child's exit must win over SIGCHLD (17).
            let mut events = Vec::new();
            let mut child_event = false;
            for sig in woke.signals {
                match sig {
                    libc::SIGCHLD => child_event = true,
                    s if s == arm_signal() => events.push(Event::Arm),
                    s if s == stop_notice_signal()
                        || s == self.args.stop_signal as i32
                        || s == libc::SIGTERM
                        || s == libc::SIGINT =>
                    {
                        events.push(Event::Stop)
                    }
                    _ => {} // meant for the app, which has it too
                }
            }
            // What the app wrote before it exited goes before the line
            // that says it exited.
            if woke.pipe || child_event {
                self.drain(if child_event {
                    READS_TO_EMPTY
                } else {
                    READS_PER_WAKE
                });
            }
            self.log.flush_due(Instant::now());
            if child_event {
                for child in reap::reap_all() {
                    if Some(child.pid) == self.rollback_pid {
                        self.rollback_ended(child.status);
                    } else {
                        events.push(Event::Exited {
                            pid: child.pid,
                            status: child.status,
                        });
                    }
                }
            }
            events.push(Event::Due);
            for event in events {
                if let Some(code) = self.feed(event) {
                    return code;
                }
            }
        }
    }

    /// Step the machine with `event` and carry out its actions (and those
    /// of the events they lead to); `Some` when the keeper is to end.
    fn feed(&mut self, event: Event) -> Option<i32> {
        let mut queue = std::collections::VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.machine.step(event, Instant::now(), &now()) {
                match action {
                    Action::Start { restart } => {
                        let unwanted = if restart { self.unwanted() } else { None };
                        queue.push_back(match unwanted {
                            Some(why) => Event::Unwanted { why },
                            None => match self.start() {
                                Ok(pid) => Event::Started { pid },
                                Err(e) => Event::StartFailed {
                                    error: e.to_string(),
                                },
                            },
                        });
                    }
                    Action::Say(text) => self.say(&text),
                    Action::Save => self.save(),
                    Action::ClearRemnants => self.clear_remnants(),
                    Action::ForwardStop => self.forward_stop(),
                    Action::RollBack { reason, within } => self.roll_back(&reason, within),
                    Action::Exit(end) => return Some(self.end(end)),
                }
            }
        }
        None
    }

    /// Copy what waits in the pipe to the log: at most `reads` chunks.
    fn drain(&mut self, reads: usize) {
        let mut buf = [0u8; CHUNK];
        for _ in 0..reads {
            match nix::unistd::read(self.pipe_read.as_raw_fd(), &mut buf) {
                Ok(0) => return,
                Ok(n) => self.log.write(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return, // EAGAIN: nothing more for now
            }
        }
    }

    /// The keeper ends: the way `end` says, with everything written.
    fn end(&mut self, end: End) -> i32 {
        let code = match end {
            End::Code(code) => code,
            End::Stopped { status, since } => self.end_stop(status, since),
            End::Like(status) => {
                self.drain(READS_TO_EMPTY);
                self.log.finish();
                exit_like(status)
            }
        };
        self.drain(READS_TO_EMPTY);
        self.log.finish();
        code
    }

    /// Pass a stop that came to the keeper alone on to the group, and to
    /// the app's processes that left it.
    fn forward_stop(&mut self) {
        self.say(&format!(
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

    /// The stop is done once the app and everything it started are gone:
    /// wait for what outlived it until the stop timeout, then kill it; say
    /// what there was, and end.
    fn end_stop(&mut self, status: Option<ExitStatus>, since: Instant) -> i32 {
        self.drain(READS_TO_EMPTY);
        let deadline = since + self.args.stop_timeout;
        let cgroup = self.args.cgroup.clone();
        let mut reaped = Vec::new();
        let left = reap::outlived(self.rollback_pid, cgroup.as_deref(), deadline, &mut |r| {
            reaped.push(r)
        });
        self.reaped_meanwhile(reaped);
        match status {
            Some(status) => self.say(&format!("the app stopped ({status})")),
            None => self.say("stopped while the app was not running"),
        }
        if !left.is_empty() {
            self.say(&format!(
                "the app left {} process(es) running, stopped with it: {}",
                left.len(),
                left.join(", ")
            ));
            self.machine.status.outlived = left;
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
                    self.machine.status.keeper_pid
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
        Some(pid == Some(i64::from(self.machine.status.keeper_pid)))
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
            self.say(&format!(
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
            self.say(&format!(
                "zdd rollback ended with {what}; see the lines above"
            ));
        }
        self.machine.status.rollback_exit = Some(what);
        self.save();
    }

    /// Start the app in the keeper's group (and the app's cgroup), as its
    /// user, with its stop signal as the parent-death signal. Returns its
    /// pid; it is reaped with the keeper's other children.
    fn start(&mut self) -> std::io::Result<i32> {
        let env = self.app_env()?;
        if let Some(cgroup) = &self.args.cgroup {
            // Created inside its cgroup where the kernel can (5.7).
            // (`_open` stays open until the child has its own copies.)
            let (exec, _open) = self.exec(&env)?;
            if let Some(pid) = fence::spawn_in_cgroup(cgroup, &exec)? {
                return Ok(pid);
            }
        }
        let dir = std::env::current_dir()?;
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
        let mut cmd = spec.placed(sh, false);
        // Its output goes through the keeper, which writes and rotates the
        // log.
        cmd.stdout(self.pipe_write.try_clone()?)
            .stderr(self.pipe_write.try_clone()?);
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

    /// The app's environment for this start: the keeper's own, which zdd
    /// made the app's but for the env file, and the env file's variables
    /// read now, but for the names `[env]` sets, which win. A changed file
    /// reaches a restarted app; one that cannot be read at a restart
    /// leaves the values of the last start, said in the log. At the first
    /// start there are none: the start fails (said in the keeper's status,
    /// where zdd reads it; an armed keeper tries again, backing off).
    fn app_env(&mut self) -> std::io::Result<Vec<(String, String)>> {
        let mut env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let Some(path) = self.args.env_file.clone() else {
            return Ok(env);
        };
        let vars = match crate::config::read_env_file(&path) {
            Ok(vars) => {
                self.env_file_vars = Some(vars.clone());
                vars
            }
            Err(e) => match self.env_file_vars.clone() {
                Some(last) => {
                    self.say(&format!(
                        "{e}; the app starts with the env file as it was at its last start"
                    ));
                    last
                }
                None => return Err(std::io::Error::other(e.to_string())),
            },
        };
        for (name, value) in vars {
            if !self.args.env_fixed.contains(&name) {
                env.retain(|(n, _)| *n != name);
                env.push((name, value));
            }
        }
        Ok(env)
    }

    /// The app as [`fence::spawn_in_cgroup`] starts it: `sh -c SCRIPT` in
    /// the keeper's folder with `env`, stdin from /dev/null, output to the
    /// keeper's pipe, as its user; with the file it names by descriptor.
    fn exec(&self, env: &[(String, String)]) -> std::io::Result<(fence::Exec, std::fs::File)> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |b: &[u8]| CString::new(b).map_err(|_| std::io::Error::other("a NUL byte"));
        let null = std::fs::File::open("/dev/null")?;
        let out = self.pipe_write.as_raw_fd();
        let exec = fence::Exec {
            program: c(b"/bin/sh")?,
            argv: vec![c(b"/bin/sh")?, c(b"-c")?, c(self.args.script.as_bytes())?],
            envp: env
                .iter()
                .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
                .collect(),
            dir: c(std::env::current_dir()?.as_os_str().as_bytes())?,
            stdio: [null.as_raw_fd(), out, out],
            user: self
                .run_as
                .as_ref()
                .map(|u| (u.groups.clone(), u.gid, u.uid)),
            death_signal: self.args.stop_signal as libc::c_int,
            parent: std::process::id() as libc::pid_t,
        };
        Ok((exec, null))
    }

    /// Ask for the rollback, once: `zdd rollback --wait`, in its own group
    /// (it stops this keeper's group), output to the log.
    fn roll_back(&mut self, reason: &str, within: Duration) {
        let Some((_, _, config)) = &self.args.rollback else {
            return;
        };
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
                self.args.name, self.machine.status.keeper_pid
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
            Err(e) => self.say(&format!("cannot run zdd rollback: {e}")),
        }
    }

    /// One of the keeper's lines in the log.
    fn say(&mut self, text: &str) {
        self.log.say(&line(text));
    }

    fn save(&self) {
        let text = toml::to_string(&self.machine.status).expect("keeper status serializes");
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

/// One of the keeper's marker lines.
fn line(text: &str) -> String {
    format!("=== zdd {}: keeper {}: {text}", now(), std::process::id())
}

/// A marker line before the keeper has its log: on its stderr, which zdd
/// pointed at the log.
fn say_early(text: &str) {
    let _ = writeln!(std::io::stderr(), "{}", line(text));
}
