//! App processes: spawn in their own process group with output to a log,
//! prove ownership by `/proc/PID/stat` start time, stop a whole group with
//! grace then SIGKILL, and find who listens on a port.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::user::RunAs;

/// A process as zdd recorded it: pid plus what makes it unique over time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessId {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when it started.
    pub boot_id: String,
    /// `KEY=VALUE` entries of its environment that mark it as zdd's
    /// (`ZDD_ROOT`, `ZDD_SLOT`): what proves a group whose leader is gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<String>,
}

/// The fields of `/proc/PID/stat` zdd needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub pgrp: i32,
    pub start_time: u64,
}

/// Parse `/proc/PID/stat` text (the command name may hold spaces and ')').
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm)": state is field 3, pgrp 5, starttime 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn read_stat(pid: i32) -> Option<Stat> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl ProcessId {
    /// Identify a running process now.
    pub fn of(pid: i32) -> Option<ProcessId> {
        read_stat(pid).map(|st| ProcessId {
            pid,
            start_time: st.start_time,
            boot_id: boot_id(),
            marks: Vec::new(),
        })
    }

    /// Does the process group zdd started still exist, provably the same?
    ///
    /// The leader counts only if its start time and boot match. A group whose
    /// leader is gone counts only if a member started no earlier than the
    /// leader and carries zdd's marks in its environment: after the whole
    /// group died, its number may name someone else's group.
    pub fn group_is_ours(&self) -> bool {
        if self.pid <= 1 || self.boot_id != boot_id() {
            return false;
        }
        match read_stat(self.pid) {
            Some(st) if st.start_time == self.start_time && st.pgrp == self.pid => {
                // A zombie leader only counts while living members remain.
                st.state != 'Z' || group_has_members(self.pid)
            }
            Some(_) => false,
            None => !self.marks.is_empty() && self.marked_members().next().is_some(),
        }
    }

    /// Living members of the group that carry this process's marks.
    fn marked_members(&self) -> impl Iterator<Item = i32> + '_ {
        group_members(self.pid).filter(move |&pid| {
            read_stat(pid).is_some_and(|st| st.start_time >= self.start_time)
                && environ(pid).is_some_and(|env| {
                    self.marks
                        .iter()
                        .all(|m| env.iter().any(|v| v == m.as_bytes()))
                })
        })
    }

    /// Is the leader itself alive (not a zombie) and ours?
    pub fn leader_alive(&self) -> bool {
        self.boot_id == boot_id()
            && read_stat(self.pid)
                .is_some_and(|st| st.start_time == self.start_time && st.state != 'Z')
    }
}

/// Any process (zombies aside) left in process group `pgid`?
pub fn group_has_members(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    match killpg(Pid::from_raw(pgid), None) {
        Err(Errno::ESRCH) => false,
        // Members exist (or are not ours to probe); look for a living one.
        _ => group_members(pgid).next().is_some(),
    }
}

/// Pids of the non-zombie processes in group `pgid`.
pub fn group_members(pgid: i32) -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(move |&pid| read_stat(pid).is_some_and(|st| st.pgrp == pgid && st.state != 'Z'))
}

/// The signal zdd sends a keeper (alone) just before it sends the stop
/// signal to its group: whatever signal that is, the keeper then knows its
/// app's exit is no crash (see `keeper`).
pub fn stop_notice_signal() -> nix::libc::c_int {
    nix::libc::SIGRTMIN() + 1
}

/// Tell the keeper `pid` that its group is about to be stopped.
fn notify_stop(pid: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a real-time signal number to one process.
    if unsafe { nix::libc::kill(pid, stop_notice_signal()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Is `pid` a keeper (`zdd keep ...`)?
pub fn is_keeper(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"keep".as_slice()))
}

/// The environment of `pid` as `KEY=VALUE` byte strings.
fn environ(pid: i32) -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(raw.split(|&b| b == 0).map(<[u8]>::to_vec).collect())
}

/// The environment entries that mark a process zdd started for `name`
/// (a slot or a named process) under `root`.
pub fn marks(root: &Path, name: &str) -> Vec<String> {
    vec![
        format!("ZDD_ROOT={}", root.display()),
        format!("ZDD_SLOT={name}"),
    ]
}

/// If `pid` was started by zdd for `name` under `root` (its environment
/// says so), its process group: a leftover of an interrupted run.
pub fn leftover_group(pid: i32, root: &Path, name: &str) -> Option<ProcessId> {
    let marks = marks(root, name);
    let env = environ(pid)?;
    if !marks.iter().all(|m| env.iter().any(|v| v == m.as_bytes())) {
        return None;
    }
    let member = read_stat(pid)?;
    if member.pgrp <= 1 {
        return None;
    }
    Some(match ProcessId::of(member.pgrp) {
        Some(leader) => leader,
        // The leader is gone: the group is proven by this member.
        None => ProcessId {
            pid: member.pgrp,
            start_time: member.start_time,
            boot_id: boot_id(),
            marks,
        },
    })
}

/// What to run and where: shared by the app, the build and hooks.
pub struct Spec<'a> {
    pub command: &'a str,
    pub dir: &'a Path,
    pub env: &'a [(String, String)],
    pub log: &'a Path,
    pub run_as: Option<&'a RunAs>,
}

impl Spec<'_> {
    /// `sh -c COMMAND` in its own process group, stdin from /dev/null,
    /// stdout and stderr appended to the log.
    fn command(&self, script: &str) -> std::io::Result<Command> {
        self.command_in_group(script, true)
    }

    /// `sh -c COMMAND`, in its own process group or (`own_group` false, for
    /// the keeper's app) in the caller's.
    pub fn command_in_group(&self, script: &str, own_group: bool) -> std::io::Result<Command> {
        let log = open_log(self.log)?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if own_group {
            cmd.process_group(0);
        }
        for (k, v) in self.env {
            cmd.env(k, v);
        }
        if let Some(user) = self.run_as {
            cmd.env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
            // std can set uid and gid but not supplementary groups (it drops
            // them all), so all three are set here, in the child, in the
            // order that works: groups, gid, uid. Only syscalls run here.
            let groups: Vec<nix::unistd::Gid> = user
                .groups
                .iter()
                .map(|&g| nix::unistd::Gid::from_raw(g))
                .collect();
            let (uid, gid) = (
                nix::unistd::Uid::from_raw(user.uid),
                nix::unistd::Gid::from_raw(user.gid),
            );
            // SAFETY: setgroups, setgid and setuid are async-signal-safe
            // system calls; `groups` was allocated before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    nix::unistd::setgroups(&groups)?;
                    nix::unistd::setgid(gid)?;
                    nix::unistd::setuid(uid)?;
                    Ok(())
                });
            }
        }
        Ok(cmd)
    }
}

/// Open a log for appending, never through a symlink.
pub fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Append a marker line to a log, so each start can be found in it.
pub fn log_marker(path: &Path, text: &str) {
    if let Ok(mut f) = open_log(path) {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let _ = writeln!(f, "=== zdd {now}: {text}");
    }
}

/// The marks (`ZDD_ROOT`, `ZDD_SLOT`) a process started by `spec` carries.
fn marks_of(spec: &Spec) -> Vec<String> {
    spec.env
        .iter()
        .filter(|(k, _)| k == "ZDD_ROOT" || k == "ZDD_SLOT")
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// A process zdd started in this run: we can also reap it.
pub struct Started {
    pub id: ProcessId,
    pub child: Child,
}

impl Started {
    /// The exit status if the leader has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// The app's `sh -c` script: `exec` is prefixed so that the app replaces
/// the shell and gets signals directly; the group covers its children.
pub(crate) fn app_script(spec: &Spec) -> String {
    let command = spec.command.trim();
    if command.starts_with("exec ") {
        command.to_string()
    } else {
        format!("exec {command}")
    }
}

/// Start the long-running app on its own, in its own process group (a
/// rehearsal; everything that stays up runs under a keeper: [`spawn_kept`]).
pub fn spawn_app(spec: &Spec) -> std::io::Result<Started> {
    spawn(spec, &app_script(spec))
}

/// Spawn `sh -c script` for `spec` and identify it at once.
fn spawn(spec: &Spec, script: &str) -> std::io::Result<Started> {
    identify(spec, spec.command(script)?.spawn()?)
}

/// The id of a process just spawned for `spec`, with zdd's marks.
pub(crate) fn identify(spec: &Spec, child: Child) -> std::io::Result<Started> {
    let pid = child.id() as i32;
    let mut id = ProcessId::of(pid).unwrap_or(ProcessId {
        pid,
        start_time: 0,
        boot_id: boot_id(),
        marks: Vec::new(),
    });
    id.marks = marks_of(spec);
    Ok(Started { id, child })
}

/// How a step that runs to completion (build, hook) ended.
pub enum StepEnd {
    Exited(ExitStatus),
    /// zdd got a signal; the step's group was stopped.
    Interrupted(Signal),
}

/// Start a build or hook (`sh -c`, not `exec`) in its own process group.
pub fn spawn_step(spec: &Spec) -> std::io::Result<Started> {
    spawn(spec, spec.command)
}

/// Wait for a build or hook to finish. If zdd is signalled meanwhile and
/// the step is `interruptible`, its group is stopped and that is reported.
pub fn wait_step(step: &mut Started, interruptible: bool) -> std::io::Result<StepEnd> {
    let started = Instant::now();
    loop {
        if let Some(status) = step.child.try_wait()? {
            return Ok(StepEnd::Exited(status));
        }
        if let Some(sig) = crate::signals::pending().filter(|_| interruptible) {
            stop_group(&step.id, StopWith::STEP, Some(&mut step.child));
            let _ = step.child.wait();
            return Ok(StepEnd::Interrupted(sig));
        }
        std::thread::sleep(poll_interval(started.elapsed()));
    }
}

/// Poll fast at first (most steps are quick), then back off.
pub fn poll_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_millis(50) {
        Duration::from_millis(1)
    } else if elapsed < Duration::from_secs(1) {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(20)
    }
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

/// The last `n` lines of a log file (reads at most its last 64 KiB).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
    else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// "\nlast lines of LOG:\n  ..." to end a failure message, or nothing.
pub fn tail_note(path: &Path) -> String {
    let lines = tail(path, 15);
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\nlast lines of {}:\n{}",
        path.display(),
        lines
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Where a slot's or named process's log lives.
pub fn log_path(root: &Path, name: &str) -> PathBuf {
    root.join("logs").join(format!("{name}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_handles_odd_names() {
        let text = "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.pgrp, 1234);
        assert_eq!(st.start_time, 987654);
    }

    #[test]
    fn own_process_is_identified_and_a_changed_start_time_is_not() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.leader_alive());
        let reused = ProcessId {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!reused.leader_alive());
        assert!(!reused.group_is_ours());
        let init = ProcessId { pid: 1, ..me };
        assert!(!init.group_is_ours(), "pid 1 is never ours");
    }

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
