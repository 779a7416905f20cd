//! App processes: spawn in their own process group with output to a log;
//! `step` runs builds and hooks to completion. `identity` proves which groups are
//! zdd's, `fence` keeps an app's processes where zdd can find them (cgroup,
//! subreaper, pidfd), `stop` stops one, `protocol` is the two signals zdd
//! sends a keeper, `logs` owns the log files.

pub mod fence;
mod identity;
mod logs;
pub mod protocol;
mod step;
mod stop;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::user::RunAs;

pub use fence::command_of;
pub use identity::{boot_id, claims, is_keeper, read_stat, user_of, ProcessId, Stat, Table};
pub use logs::{
    ends_line, log_marker, log_marker_at, log_path, log_size, next_line_start, open_log, tail_note,
    tail_note_since, LogSpot,
};
pub use step::{spawn_step, wait_step, RunningStep, StepEnd};
pub use stop::{stop_group, stop_group_watched, StopReport, StopWith, Stopped};

/// What to run and where: shared by the app, the build and hooks.
pub struct Spec<'a> {
    pub command: &'a str,
    pub dir: &'a Path,
    pub env: &'a [(String, String)],
    pub log: &'a Path,
    pub run_as: Option<&'a RunAs>,
}

impl Spec<'_> {
    /// `sh -c COMMAND` in a session of its own, stdin from /dev/null,
    /// stdout and stderr appended to the log.
    fn command(&self, script: &str) -> std::io::Result<Command> {
        self.command_in_group(script, true)
    }

    /// `sh -c COMMAND`, in a session (and process group) of its own or
    /// (`own_group` false, for the keeper's app) in the caller's.
    pub fn command_in_group(&self, script: &str, own_group: bool) -> std::io::Result<Command> {
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c").arg(script);
        let mut cmd = self.around(sh, own_group)?;
        if let Some(user) = self.run_as {
            become_user(&mut cmd, user);
        }
        Ok(cmd)
    }

    /// `cmd` in the spec's folder and environment, stdin from /dev/null,
    /// stdout and stderr appended to the log, in a session of its own if
    /// `own_group` (the user switch is [`Spec::command_in_group`]'s). With
    /// `user` set, the environment is the user's, not zdd's: see
    /// [`user_env`].
    pub fn around(&self, cmd: Command, own_group: bool) -> std::io::Result<Command> {
        let log = open_log(self.log)?;
        let mut cmd = self.placed(cmd, own_group);
        cmd.stdout(log.try_clone()?).stderr(log);
        Ok(cmd)
    }

    /// [`Spec::around`] but for the output, which is the caller's to set
    /// (the log is not opened).
    pub fn placed(&self, mut cmd: Command, own_group: bool) -> Command {
        cmd.current_dir(self.dir).stdin(Stdio::null());
        if own_group {
            new_session(&mut cmd);
        }
        if let Some(user) = self.run_as {
            user_env(&mut cmd, user);
        }
        for (k, v) in self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// Start `cmd` in a session of its own (`setsid`): a new session and
/// process group, no controlling terminal. Nothing it runs can reach the
/// terminal zdd was started from (TIOCSTI into the operator's shell), and
/// no process outside the session can join its group (`setpgid` stays
/// within a session), so every member of the group is a descendant.
pub fn new_session(cmd: &mut Command) {
    // SAFETY: setsid is an async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
}

/// Run `cmd` as `user`: its groups, gid and uid (set in the child, after
/// every other step that needs root).
pub fn become_user(cmd: &mut Command, user: &RunAs) {
    // std can set uid and gid but not supplementary groups (it drops them
    // all), so all three are set here, in the child, in the order that
    // works: groups, gid, uid. Only syscalls run here.
    let groups: Vec<nix::unistd::Gid> = user
        .groups
        .iter()
        .map(|&g| nix::unistd::Gid::from_raw(g))
        .collect();
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(user.uid),
        nix::unistd::Gid::from_raw(user.gid),
    );
    // SAFETY: setgroups, setgid and setuid are async-signal-safe system
    // calls; `groups` was allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            Ok(())
        });
    }
}

/// What a process run as `user` finds in its environment: not zdd's (root's
/// variables are root's, as sudo's `env_reset` has it), but `HOME`,
/// `USER`, `LOGNAME` of the user, and from zdd's own only `PATH`, the
/// locale (`LANG`, `LANGUAGE`, `LC_*`) and `TZ`. The caller adds the app's.
pub fn user_env(cmd: &mut Command, user: &RunAs) {
    plain_env(cmd);
    cmd.env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name);
}

/// Clear `cmd`'s environment but for `PATH`, the locale (`LANG`,
/// `LANGUAGE`, `LC_*`) and `TZ` of zdd's own.
pub fn plain_env(cmd: &mut Command) {
    cmd.env_clear();
    for (key, value) in std::env::vars_os() {
        let Some(name) = key.to_str() else { continue };
        let kept = matches!(name, "PATH" | "LANG" | "LANGUAGE" | "TZ")
            || name.starts_with("LC_")
            // The tests' switches reach the keeper (debug builds only).
            || (cfg!(debug_assertions) && name.starts_with("ZDD_TEST_"));
        if kept {
            cmd.env(key, value);
        }
    }
}

/// Mark every descriptor above 2 close-on-exec, first thing: whatever zdd
/// was started with (`zdd deploy 7</etc/shadow`, a wrapper's flock on fd
/// 9) stays zdd's and reaches no child — keeper, app, build, hook or git —
/// which get stdin, stdout and stderr only, as systemd and s6 give their
/// services.
pub fn seal_inherited_descriptors() {
    use nix::libc;
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Older kernels (before 5.11): one descriptor at a time.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; a closed one is EBADF.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
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
/// Leading `NAME=value` words go before the `exec` (`exec NAME=value cmd`
/// would look for a program of that name).
pub(crate) fn app_script(spec: &Spec) -> String {
    let command = spec.command.trim();
    let split = crate::config::assignments_end(command);
    let (assignments, rest) = command.split_at(split);
    if rest.starts_with("exec ") || rest == "exec" {
        command.to_string()
    } else {
        format!("{assignments}exec {rest}")
    }
}

/// Start the long-running app on its own, in its own process group (a
/// rehearsal; everything that stays up runs under a keeper: `keeper::spawn`).
pub fn spawn_app(spec: &Spec) -> std::io::Result<Started> {
    spawn(spec, &app_script(spec))
}

/// Spawn `sh -c script` for `spec` and identify it at once.
fn spawn(spec: &Spec, script: &str) -> std::io::Result<Started> {
    identify(spec.command(script)?.spawn()?, None)
}

/// The id of a process just spawned, whose app runs in `cgroup` if any.
pub(crate) fn identify(
    child: Child,
    cgroup: Option<std::path::PathBuf>,
) -> std::io::Result<Started> {
    let pid = child.id() as i32;
    let mut id = ProcessId::of(pid).unwrap_or(ProcessId {
        pid,
        start_time: 0,
        boot_id: boot_id(),
        cgroup: None,
        marks: Vec::new(),
    });
    id.cgroup = cgroup;
    Ok(Started { id, child })
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_app_replaces_the_shell_with_its_assignments_before_exec() {
        let script = |command: &str| {
            super::app_script(&super::Spec {
                command,
                dir: Path::new("/"),
                env: &[],
                log: Path::new("/dev/null"),
                run_as: None,
            })
        };
        assert_eq!(script("node server.js"), "exec node server.js");
        assert_eq!(script("exec node server.js"), "exec node server.js");
        assert_eq!(
            script("NODE_ENV=production A='x y' node server.js"),
            "NODE_ENV=production A='x y' exec node server.js"
        );
        assert_eq!(script("A=1 exec node s.js"), "A=1 exec node s.js");
    }
}
