//! The keeper: one small process per running slot or named process — zdd
//! itself, re-executed as `zdd keep` (hidden) — that outlives the zdd run.
//! It leads the app's process group, starts the app in it, and waits for
//! it without polling (a signalfd of blocked signals, polled with the
//! app's output). The app's stdout and stderr are a pipe that the keeper
//! writes to `ROOT/logs/NAME.log`, rotated by rename at `logs.max_size`
//! (`logfile`; daemontools' multilog, runit's svlogd). When the app
//! exits on its own it starts it again: at once, then after a delay that
//! doubles from 100 ms to 30 s, reset after 10 s up (Docker's rule). The
//! group's stop signal (a deploy, a rollback, `zdd stop`) reaches the app as
//! before and ends the keeper too; nothing is restarted then.
//! The keeper reads the `env_file` at every start of the app, so that a
//! restart gets the file as it is then.
//!
//! Until zdd arms it (a real-time signal to the keeper alone, once the app
//! is verified), an app that exits ends the keeper with the app's status,
//! so that a start-up failure is seen at once. Once armed it may roll back
//! a release that crash-loops after its swap, by running `zdd rollback`.
//! If the keeper is killed, the app gets its stop signal
//! (`PR_SET_PDEATHSIG`) and goes down with it; the next zdd run (`zdd up`,
//! a deploy) starts it again. What `status` shows is written, atomically,
//! to `ROOT/run/NAME.keeper`.
//!
//! `mod.rs` holds what zdd calls (the command line it writes, [`spawn`],
//! [`arm`]); the two signals zdd sends a keeper are `process::protocol`'s,
//! since stopping a group tells its keeper first; `machine` the keeper as
//! a pure state machine,
//! `supervise` the process that runs it, `sigwait` its signal plumbing,
//! `logfile` the log it writes, `status` the file it writes and what zdd
//! makes of it.

mod logfile;
mod machine;
mod reap;
mod sigwait;
mod status;
mod supervise;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::{Spec, Started, StopWith};

pub use crate::process::protocol::arm;
pub use logfile::{rotated_path, times_path, LogPolicy};
pub use status::{fold_restarts, read_status, unrecorded, KeeperStatus};
pub use supervise::run;

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
    /// How the keeper caps and stamps it.
    pub log_policy: LogPolicy,
    /// The app's stop signal.
    pub stop_signal: Signal,
    /// How long the app has to stop (a stop sent to the keeper alone is
    /// passed on to the app after it).
    pub stop_timeout: Duration,
    /// Supervise from the start (else once zdd arms it).
    pub armed: bool,
    /// Run the app as this user.
    pub run_as: Option<String>,
    /// Run the app in this cgroup (`process::fence`).
    pub cgroup: Option<PathBuf>,
    /// Roll back after this many exits within `.1` of arming, running
    /// `zdd rollback` with the config file `.2`.
    pub rollback: Option<(u32, Duration, PathBuf)>,
    /// The env file the keeper reads at every start of the app, and the
    /// names in it that it leaves alone (the config's `[env]` sets them).
    pub env_file: Option<PathBuf>,
    pub env_fixed: Vec<String>,
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
            "--log-max-size".into(),
            self.log_policy.max_size.to_string().into(),
            "--log-keep".into(),
            self.log_policy.keep.to_string().into(),
            "--stop-signal".into(),
            self.stop_signal.as_str().into(),
            "--stop-timeout-ms".into(),
            self.stop_timeout.as_millis().to_string().into(),
        ];
        if self.armed {
            a.push("--armed".into());
        }
        if self.log_policy.timestamps {
            a.push("--log-timestamps".into());
        }
        if let Some(user) = &self.run_as {
            a.extend(["--run-as".into(), user.into()]);
        }
        if let Some(cgroup) = &self.cgroup {
            a.extend(["--cgroup".into(), cgroup.into()]);
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
        if let Some(path) = &self.env_file {
            a.extend(["--env-file".into(), path.into()]);
        }
        for name in &self.env_fixed {
            a.extend(["--env-fixed".into(), name.into()]);
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
        let (mut cgroup, mut env_file, mut env_fixed) = (None, None, Vec::new());
        let mut script = None;
        // A keeper started by an earlier zdd has no log flags: the defaults.
        let mut log_policy = LogPolicy::DEFAULT;
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
            if arg == "--log-timestamps" {
                log_policy.timestamps = true;
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
                "--log-max-size" => {
                    log_policy.max_size = text()?.parse().map_err(|_| "bad size")?
                }
                "--log-keep" => log_policy.keep = text()?.parse().map_err(|_| "bad count")?,
                "--stop-signal" => stop = Some(crate::signals::parse_signal(&text()?)?),
                "--stop-timeout-ms" => {
                    stop_timeout = Some(Duration::from_millis(
                        text()?.parse().map_err(|_| "bad duration")?,
                    ))
                }
                "--run-as" => run_as = Some(text()?),
                "--cgroup" => cgroup = Some(PathBuf::from(value)),
                "--rollback-after" => after = Some(text()?.parse().map_err(|_| "bad count")?),
                "--rollback-within-ms" => {
                    within = Some(Duration::from_millis(
                        text()?.parse().map_err(|_| "bad duration")?,
                    ))
                }
                "--rollback-config" => config = Some(PathBuf::from(value)),
                "--env-file" => env_file = Some(PathBuf::from(value)),
                "--env-fixed" => env_fixed.push(text()?),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let missing = |what: &str| format!("{what} is missing");
        let name: String = name.ok_or_else(|| missing("--name"))?;
        // It names files in ROOT/run: a slot or a `zdd start` name, no path.
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "--name {name:?} is not a slot or process name ([A-Za-z0-9_-]+)"
            ));
        }
        let root: PathBuf = root.ok_or_else(|| missing("--root"))?;
        if !root.is_absolute() {
            return Err(format!("--root {} is not an absolute path", root.display()));
        }
        Ok(KeepArgs {
            name,
            root,
            log: log.ok_or_else(|| missing("--log"))?,
            log_policy,
            stop_signal: stop.ok_or_else(|| missing("--stop-signal"))?,
            stop_timeout: stop_timeout.ok_or_else(|| missing("--stop-timeout-ms"))?,
            armed,
            run_as,
            cgroup,
            rollback: match (after, within, config) {
                (Some(a), Some(w), Some(c)) => Some((a, w, c)),
                _ => None,
            },
            env_file,
            env_fixed,
            script: script.ok_or_else(|| missing("the script after --"))?,
        })
    }
}

/// How a keeper keeps the app it starts (see `keeper`).
pub struct Keep<'a> {
    /// The slot or named process.
    pub name: &'a str,
    pub root: &'a Path,
    /// The app's stop (a stop sent to the keeper alone is passed on to the
    /// app after its timeout).
    pub stop: StopWith,
    /// Supervise from the start (`zdd up`), not only once armed.
    pub armed: bool,
    /// Roll back after this many exits within this long of arming, with
    /// this config file.
    pub rollback: Option<(u32, Duration, &'a Path)>,
    /// How the keeper caps and stamps the app's log.
    pub log_policy: LogPolicy,
    /// The env file, read by the keeper at every start of the app, and the
    /// names it may not set (`[env]` wins over it).
    pub env_file: Option<&'a Path>,
    pub env_fixed: Vec<&'a str>,
}

/// Start the app under its keeper (`zdd keep`, zdd itself): the keeper
/// leads a new session and process group and starts the app in it (and in
/// the app's cgroup, where the system offers one), with the same folder,
/// environment (plus the env file's variables, which the keeper reads at
/// each start of the app) and log. The id is the keeper's, the group's,
/// with the cgroup.
pub fn spawn(spec: &Spec, keep: &Keep) -> std::io::Result<Started> {
    let exe = std::env::current_exe()?;
    let cgroup = crate::process::fence::app_cgroup(keep.root, keep.name);
    let args = KeepArgs {
        name: keep.name.to_string(),
        root: keep.root.to_path_buf(),
        log: spec.log.to_path_buf(),
        log_policy: keep.log_policy,
        stop_signal: keep.stop.signal,
        stop_timeout: keep.stop.timeout,
        armed: keep.armed,
        run_as: spec.run_as.map(|u| u.name.clone()),
        cgroup: cgroup.clone(),
        rollback: keep
            .rollback
            .map(|(after, within, config)| (after, within, config.to_path_buf())),
        env_file: keep.env_file.map(Path::to_path_buf),
        env_fixed: keep.env_fixed.iter().map(|n| n.to_string()).collect(),
        script: crate::process::app_script(spec),
    };
    let mut keep = Command::new(exe);
    keep.arg("keep").args(args.to_args());
    // The keeper runs as zdd's user; it switches its app's (`--run-as`).
    let mut cmd = spec.around(keep, true)?;
    crate::process::identify(cmd.spawn()?, cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn what_zdd_writes_the_keeper_reads() {
        let args = KeepArgs {
            name: "a".into(),
            root: "/srv/zdd root".into(),
            log: "/srv/zdd root/logs/a.log".into(),
            log_policy: LogPolicy {
                max_size: 1 << 20,
                keep: 2,
                timestamps: true,
            },
            stop_signal: Signal::SIGQUIT,
            stop_timeout: Duration::from_secs(30),
            armed: true,
            run_as: Some("www-data".into()),
            cgroup: Some("/sys/fs/cgroup/zdd/shop-1a2b3c4d/a".into()),
            rollback: Some((3, Duration::from_secs(300), "/etc/zdd/zdd.toml".into())),
            env_file: Some("/etc/shop/shop.env".into()),
            env_fixed: vec!["APP_MODE".into(), "GREETING".into()],
            script: "exec node server.js --port \"$PORT\"".into(),
        };
        assert_eq!(KeepArgs::from_args(&args.to_args()).unwrap(), args);
        let plain = KeepArgs {
            armed: false,
            log_policy: LogPolicy::DEFAULT,
            run_as: None,
            cgroup: None,
            rollback: None,
            env_file: None,
            env_fixed: Vec::new(),
            ..args
        };
        assert_eq!(KeepArgs::from_args(&plain.to_args()).unwrap(), plain);
        assert!(KeepArgs::from_args(&["--name".into()]).is_err());
        // A name is never a path: it names the keeper's file in ROOT/run.
        for bad in ["../../x", "a/b", "", "."] {
            let mut args = plain.to_args();
            args[1] = bad.into();
            let e = KeepArgs::from_args(&args).unwrap_err();
            assert!(e.contains("is not a slot or process name"), "{bad}: {e}");
        }
    }

    #[test]
    fn exit_statuses_read_well() {
        // std writes exit statuses the way the keeper's log lines quote them.
        assert_eq!(ExitStatus::from_raw(1 << 8).to_string(), "exit status: 1");
        assert_eq!(ExitStatus::from_raw(9).to_string(), "signal: 9 (SIGKILL)");
    }
}
