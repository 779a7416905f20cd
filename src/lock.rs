//! `root/zdd.lock`: the flock that serializes zdd runs, and what the file
//! says about its holder (pid, since, command, step) for `status`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::error::{Error, Result};

/// How to take a lock that another zdd holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Not at all: exit 3 at once.
    No,
    /// As long as it takes.
    Forever,
    /// At most this long, then exit 3.
    AtMost(Duration),
}

/// An exclusive flock on `root/zdd.lock`, released when dropped or when
/// the process dies. The file says who holds it, since when and at which
/// step (`pid`, `since`, `step` lines), so that `status` can tell a deploy
/// in progress without taking the lock.
pub struct Lock {
    file: Flock<File>,
    since: String,
    command: String,
}

/// What the lock file says about the zdd that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: String,
    /// When it took the lock (RFC 3339), if it said.
    pub since: Option<String>,
    /// What it runs (`zdd deploy`, `zdd stop web`), if it said.
    pub command: Option<String>,
    /// The step it is at, if it said.
    pub step: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}",
            self.command.as_deref().unwrap_or("zdd"),
            self.pid
        )?;
        if let Some(since) = &self.since {
            write!(f, " since {since}")?;
        }
        f.write_str(")")?;
        if let Some(step) = &self.step {
            write!(f, ": {step}")?;
        }
        Ok(())
    }
}

impl Lock {
    /// Take the lock, or wait for it as `wait` says (held: exit 3).
    /// `command` (`zdd deploy`) is what the lock file says it is held for.
    pub fn acquire(root: &Path, wait: LockWait, command: &str) -> Result<Lock> {
        let path = root.join("zdd.lock");
        let started = Instant::now();
        let mut said = false;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| crate::root::refused(&path, e))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => {
                    let since = crate::text::now();
                    let lock = Lock {
                        file: locked,
                        since,
                        command: command.to_string(),
                    };
                    lock.at_step("starting");
                    return Ok(lock);
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    let holder = read_holder(&path).pid;
                    match wait {
                        LockWait::No => return Err(Error::Locked { path, holder }),
                        LockWait::AtMost(limit) if started.elapsed() >= limit => {
                            return Err(Error::LockTimeout {
                                path,
                                holder,
                                waited: humantime::format_duration(limit).to_string(),
                            })
                        }
                        LockWait::Forever | LockWait::AtMost(_) => {
                            if !said {
                                // Said at the default level only to a person:
                                // cron mails whatever reaches stderr.
                                use std::io::IsTerminal;
                                let level = if std::io::stderr().is_terminal() {
                                    log::Level::Info
                                } else {
                                    log::Level::Debug
                                };
                                log::log!(level, "waiting for the lock held by pid {holder}");
                                said = true;
                            }
                            if let Some(sig) = crate::signals::pending() {
                                return Err(Error::interrupted(
                                    sig,
                                    "stopped waiting for the lock; nothing was changed",
                                ));
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                Err((_, errno)) => {
                    return Err(Error::io("cannot lock", &path)(std::io::Error::from(errno)))
                }
            }
        }
    }

    /// Say in the lock file which step this zdd is at (for `status`). One
    /// positioned write; a reader may see an older step, never a wrong pid.
    pub fn at_step(&self, step: &str) {
        use std::os::unix::fs::FileExt;
        let text = format!(
            "{}\nsince {}\ncommand {}\nstep {step}\n",
            std::process::id(),
            self.since,
            self.command
        );
        let _ = self.file.write_all_at(text.as_bytes(), 0);
        let _ = self.file.set_len(text.len() as u64);
    }

    /// The zdd that holds the lock under `root` right now, if one does.
    /// Read from `/proc/locks`, so that asking never takes the lock itself
    /// (a deploy starting meanwhile must not find it held by `status`).
    pub fn holder(root: &Path) -> Option<Holder> {
        use std::os::unix::fs::MetadataExt;
        let path = root.join("zdd.lock");
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let dev = meta.dev();
        let id = format!(
            "{:02x}:{:02x}:{}",
            nix::sys::stat::major(dev),
            nix::sys::stat::minor(dev),
            meta.ino()
        );
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        let held = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF"
            f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&id.as_str())
        });
        held.then(|| read_holder(&path))
    }
}

fn read_holder(path: &Path) -> Holder {
    let s = crate::root::read_nofollow(path)
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut lines = s.lines();
    let pid = match lines.next().map(str::trim) {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => "unknown".into(),
    };
    let mut holder = Holder {
        pid,
        since: None,
        command: None,
        step: None,
    };
    for line in lines {
        if let Some(v) = line.strip_prefix("since ") {
            holder.since = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("command ") {
            holder.command = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("step ") {
            holder.step = Some(v.trim().to_string());
        }
    }
    holder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_says_who_since_when_and_where() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Lock::holder(dir.path()), None, "no lock file");
        let lock = Lock::acquire(dir.path(), LockWait::No, "zdd deploy").unwrap();
        lock.at_step("building slot b");
        let h = Lock::holder(dir.path()).expect("held");
        assert_eq!(h.pid, std::process::id().to_string());
        assert_eq!(h.step.as_deref(), Some("building slot b"));
        assert_eq!(h.command.as_deref(), Some("zdd deploy"));
        assert!(
            h.to_string()
                .starts_with(&format!("zdd deploy (pid {} since ", h.pid)),
            "{h}"
        );
        assert!(h.to_string().ends_with("): building slot b"), "{h}");
        assert!(h.since.is_some());
        lock.at_step("swap");
        assert_eq!(
            Lock::holder(dir.path()).unwrap().step.as_deref(),
            Some("swap")
        );
        drop(lock);
        assert_eq!(Lock::holder(dir.path()), None, "released");
    }

    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("zdd.lock")).unwrap();
        let e = Lock::acquire(dir.path(), LockWait::No, "zdd deploy")
            .err()
            .unwrap();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn second_lock_is_refused_with_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Lock::acquire(dir.path(), LockWait::No, "zdd deploy").unwrap();
        // flock locks belong to the open file description, so a second open
        // in the same process conflicts like another process would.
        let e = Lock::acquire(dir.path(), LockWait::No, "zdd deploy")
            .err()
            .unwrap();
        assert_eq!(e.code(), crate::error::exit::LOCKED);
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        let e = Lock::acquire(
            dir.path(),
            LockWait::AtMost(Duration::from_millis(120)),
            "zdd deploy",
        )
        .err()
        .unwrap();
        assert_eq!(e.code(), crate::error::exit::LOCKED);
    }
}
