//! The fence around an app: every process it starts, wherever it moves.
//! A process group is not one (`setsid` or `setpgid` leaves it). Where the
//! system offers cgroup v2 and zdd runs as root, each slot's and named
//! process's app runs in a cgroup of its own, `CGROUP2/zdd/ID/NAME`, which
//! only root can move a process into or out of; `cgroup.kill` ends all of
//! it at once. Everywhere, its keeper is a child subreaper: a descendant
//! whose parent dies is handed to the keeper, so the keeper's descendants
//! by parent links are all of the app while the keeper lives. Signals to
//! single processes go through a pidfd opened and checked against the
//! start time first, so a pid reused meanwhile is never signalled.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::libc;

/// The cgroup the app `name` under `root` runs in, created if need be;
/// `None` where the system offers none (no cgroup v2 mounted, no
/// `cgroup.kill`, zdd not root): then the keeper's subreaper fence alone.
pub fn app_cgroup(root: &Path, name: &str) -> Option<PathBuf> {
    let dir = app_cgroup_path(root, name)?;
    if let Err(e) = std::fs::create_dir_all(&dir) {
        log::debug!("no cgroup for {name}: cannot create {}: {e}", dir.display());
        return None;
    }
    // cgroup.kill came with Linux 5.14; without it, the keeper's fence.
    dir.join("cgroup.kill").exists().then_some(dir)
}

/// Where [`app_cgroup`] is or would be, without creating it: `None` where
/// the system offers no cgroup v2 to zdd.
pub fn app_cgroup_path(root: &Path, name: &str) -> Option<PathBuf> {
    if cfg!(debug_assertions) && std::env::var_os("ZDD_TEST_NO_CGROUP").is_some() {
        return None;
    }
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    Some(cgroup2_mount()?.join("zdd").join(app_id(root)).join(name))
}

/// `NAME-HASH` for a root: readable, and different for every root on the
/// machine (two apps may share a name, never a root).
fn app_id(root: &Path) -> String {
    // FNV-1a: stable across builds and runs, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in root.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let base: String = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{base}-{:08x}", hash as u32)
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a unified system, its
/// `unified` folder on a hybrid one.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect();
    let preferred = Path::new("/sys/fs/cgroup");
    mounts
        .iter()
        .find(|m| m.as_path() == preferred)
        .or(mounts.first())
        .cloned()
}

/// The processes in `cgroup` (and any cgroup below it).
pub fn cgroup_members(cgroup: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(children) = std::fs::read_dir(cgroup) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_members(&child.path()));
            }
        }
    }
    pids
}

/// SIGKILL to everything in `cgroup` at once (`cgroup.kill`: no fork can
/// outrun it).
pub fn kill_cgroup(cgroup: &Path) {
    if let Err(e) = std::fs::write(cgroup.join("cgroup.kill"), "1") {
        log::debug!("cannot kill the cgroup {}: {e}", cgroup.display());
    }
}

/// Remove `cgroup` once nothing runs in it, and its app's folder once it
/// holds no other (the kernel refuses while anything is in them).
pub fn remove_cgroup(cgroup: &Path) {
    if std::fs::remove_dir(cgroup).is_ok() {
        if let Some(app) = cgroup.parent() {
            let _ = std::fs::remove_dir(app);
        }
    }
}

/// The descriptor the child writes to join `cgroup` (`cgroup.procs`),
/// opened before the fork: the write itself is one async-signal-safe
/// system call in the child.
pub fn cgroup_procs(cgroup: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
}

/// In a child between fork and exec: move itself into the cgroup whose
/// `cgroup.procs` is open as `procs`. Only async-signal-safe calls.
pub fn join_cgroup(procs: libc::c_int) -> std::io::Result<()> {
    // SAFETY: write(2) of a two-byte buffer on an open descriptor.
    if unsafe { libc::write(procs, b"0\n".as_ptr().cast(), 2) } == 2 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A program to start in a cgroup: everything the child needs, made
/// before the fork, so that the child only makes system calls.
pub struct Exec {
    pub program: CString,
    pub argv: Vec<CString>,
    /// `KEY=VALUE` entries: the whole environment.
    pub envp: Vec<CString>,
    pub dir: CString,
    /// Descriptors for its stdin, stdout and stderr.
    pub stdio: [libc::c_int; 3],
    /// Groups, gid and uid to switch to.
    pub user: Option<(Vec<libc::gid_t>, libc::gid_t, libc::uid_t)>,
    /// Its parent-death signal, and the parent that must still be there.
    pub death_signal: libc::c_int,
    pub parent: libc::pid_t,
}

/// The kernel's `struct clone_args` (up to `cgroup`, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Start `exec` as a child created inside `cgroup` (`clone3` with
/// `CLONE_INTO_CGROUP`): no migration afterwards, which would cost a
/// grace period of the kernel's RCU (measured: 7 ms on an idle machine,
/// 15 ms under load) on every start. Its signal mask is emptied. Returns
/// its pid, or `None` where the kernel lacks that (before 5.7): then join
/// the cgroup from the child instead ([`join_cgroup`]).
pub fn spawn_in_cgroup(cgroup: &Path, exec: &Exec) -> std::io::Result<Option<i32>> {
    use std::os::fd::AsRawFd;
    // The tests take the older kernels' way too (debug builds only).
    if cfg!(debug_assertions) && std::env::var_os("ZDD_TEST_NO_CLONE3").is_some() {
        return Ok(None);
    }
    let dir = std::fs::File::open(cgroup)?;
    let mut argv: Vec<*const libc::c_char> = exec.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = exec.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut pipe = [0; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [report, tell] = pipe;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of
    // this (single-threaded) process and runs only system calls on memory
    // made before it, then execs or exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: in the child; see above. `_exit` never returns.
        unsafe {
            let errno = child(exec, &argv, &envp);
            libc::write(tell, (&errno as *const libc::c_int).cast(), 4);
            libc::_exit(127);
        }
    }
    // SAFETY: the parent's copy of the child's end.
    unsafe { libc::close(tell) };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: our end of the pipe.
        unsafe { libc::close(report) };
        return match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG) => Ok(None),
            _ => Err(e),
        };
    }
    // The child's end closes at its exec: nothing read means it ran.
    let mut errno: libc::c_int = 0;
    let n = loop {
        // SAFETY: read(2) of at most 4 bytes into `errno`.
        let n = unsafe { libc::read(report, (&mut errno as *mut libc::c_int).cast(), 4) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break n;
        }
    };
    // SAFETY: our end of the pipe.
    unsafe { libc::close(report) };
    if n == 4 {
        let mut status = 0;
        // SAFETY: reap the child that failed before its exec.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        return Err(std::io::Error::from_raw_os_error(errno));
    }
    Ok(Some(pid as i32))
}

/// The child of [`spawn_in_cgroup`], up to its exec; returns the errno of
/// the step that failed.
///
/// # Safety
/// Only in a child just forked; makes system calls only.
unsafe fn child(
    exec: &Exec,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> libc::c_int {
    let errno = || *libc::__errno_location();
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    // Rust ignores SIGPIPE, and an ignored signal stays ignored across
    // exec: the app gets the default back, as std's spawn gives it. (A
    // writer whose reader is gone, its keeper, must die, not spin.)
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    for (to, &from) in exec.stdio.iter().enumerate() {
        if libc::dup2(from, to as libc::c_int) < 0 {
            return errno();
        }
    }
    if libc::chdir(exec.dir.as_ptr()) != 0 {
        return errno();
    }
    if let Some((groups, gid, uid)) = &exec.user {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setgid(*gid) != 0
            || libc::setuid(*uid) != 0
        {
            return errno();
        }
    }
    // After the uid change, which clears it; and the keeper must still be
    // there to have been its parent.
    if libc::prctl(libc::PR_SET_PDEATHSIG, exec.death_signal as libc::c_ulong) != 0 {
        return errno();
    }
    if libc::getppid() != exec.parent {
        return libc::ESRCH;
    }
    libc::execve(exec.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    errno()
}

/// Send `sig` to `pid` only if it is still the process that started at
/// `start_time`: the signal goes through a pidfd opened first, so a pid
/// that exited and was reused in between is never signalled. Returns
/// whether it was sent.
pub fn signal_exact(pid: i32, start_time: u64, sig: libc::c_int) -> bool {
    // SAFETY: pidfd_open(2) takes a pid and flags, returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    let same = || super::read_stat(pid).is_some_and(|st| st.start_time == start_time);
    if fd < 0 {
        // Linux before 5.3: the start time checked just before the signal.
        // SAFETY: kill(2) of one pid.
        return same() && unsafe { libc::kill(pid, sig) } == 0;
    }
    // The pidfd names the process that had the pid when it was opened.
    // SAFETY: pidfd_send_signal(2) on the fd just opened; then close it.
    let sent = same()
        && unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        } == 0;
    unsafe { libc::close(fd) };
    sent
}

/// `pid (command)` for each process, escaped, for messages.
pub fn describe(pids: &[(i32, u64)]) -> Vec<String> {
    pids.iter()
        .map(|&(pid, _)| match command_of(pid) {
            Some(c) => format!("pid {pid} ({})", crate::text::escape(&c)),
            None => format!("pid {pid}"),
        })
        .collect()
}

/// Make the calling process a child subreaper (the keeper): orphans among
/// its descendants become its children instead of init's.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with an integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The command line of `pid`, its arguments joined by spaces (unescaped:
/// the process wrote it).
pub fn command_of(pid: i32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|c| {
            c.split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_differ_per_root_and_read_well() {
        let a = app_id(Path::new("/var/lib/zdd/shop"));
        assert!(a.starts_with("shop-") && a.len() == 13, "{a}");
        assert_ne!(a, app_id(Path::new("/srv/zdd/shop")));
        assert_eq!(a, app_id(Path::new("/var/lib/zdd/shop")), "stable");
        assert!(app_id(Path::new("/x/we ird")).starts_with("we_ird-"));
    }

    #[test]
    fn a_reused_pid_is_not_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = super::super::read_stat(pid).unwrap().start_time;
        assert!(
            !signal_exact(pid, start + 1, libc::SIGKILL),
            "another start time"
        );
        assert!(child.try_wait().unwrap().is_none());
        assert!(signal_exact(pid, start, libc::SIGKILL));
        assert!(!child.wait().unwrap().success());
    }
}
