//! Starting an app so that it stays up, the one way that a deploy, a
//! rollback, `zdd restart`, `zdd start` and `zdd up` all do it ([`App`]):
//! what earlier runs left of it stopped first, then under its keeper (see
//! `keeper::spawn`), recorded at once by the caller, then verified —
//! healthy, answered by its own processes, the caller's own check (the
//! verify hook) — and only then its keeper armed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, Health};
use crate::health::{self, Checker, Failure, Verified};
use crate::keeper;
use crate::process::{self, ProcessId, Spec, Started, StopWith};

/// One app to start: a slot's release, or a named process (`zdd start`).
pub struct App<'a> {
    pub root: &'a Path,
    /// The slot or the named process: `ZDD_SLOT`, its log, its keeper.
    pub name: &'a str,
    /// Where it runs.
    pub dir: PathBuf,
    pub port: u16,
    /// The `start` command.
    pub command: &'a str,
    /// `ZDD_COMMIT`, for a slot's release.
    pub commit: Option<&'a str>,
    /// Its `[env]`, `env_file`, user, stop and log policy; without a
    /// config (a named process) the defaults.
    pub config: Option<&'a Config>,
}

impl App<'_> {
    /// The app's environment (and its build's and hooks'), with the env
    /// file's variables `from_file` as read: see [`app_env`]; `[env]` wins
    /// over the env file.
    pub fn env(&self, from_file: &[(String, String)]) -> Vec<(String, String)> {
        let config_env = self
            .config
            .into_iter()
            .flat_map(|c| &c.env)
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let extra = self
            .commit
            .map(|sha| ("ZDD_COMMIT", sha))
            .into_iter()
            .chain(from_file.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .chain(config_env);
        app_env(self.root, self.name, self.port, extra)
    }

    /// Start it under its keeper (`armed`: supervised from the start; a
    /// crash loop after arming rolls back as `rollback` says), after
    /// [`App::mark`] wrote the line before its output in its log. The keeper reads
    /// the env file itself at every start of the app, its own restarts
    /// included; `[env]` still wins over it.
    pub fn keep(
        &self,
        armed: bool,
        rollback: Option<(u32, Duration, &Path)>,
    ) -> std::io::Result<Started> {
        let log = self.log();
        let env = self.env(&[]);
        let keep = keeper::Keep {
            name: self.name,
            root: self.root,
            stop: self
                .config
                .map(|c| c.stop.clone())
                .unwrap_or_default()
                .with(),
            armed,
            rollback,
            log_policy: self.config.map_or(keeper::LogPolicy::DEFAULT, |c| c.logs),
            env_file: self.config.and_then(|c| c.env_file.as_deref()),
            env_fixed: self
                .config
                .map(|c| c.env.keys().map(String::as_str).collect())
                .unwrap_or_default(),
        };
        keeper::spawn(&self.spec(&env, &log), &keep)
    }

    /// Start it alone, in a process group of its own and with no keeper
    /// (a rehearsal, stopped after), its env file's variables `from_file`.
    pub fn alone(&self, from_file: &[(String, String)]) -> std::io::Result<Started> {
        let log = self.log();
        let env = self.env(from_file);
        process::spawn_app(&self.spec(&env, &log))
    }

    /// Write `marker` into its log, the line before the output of the
    /// start that follows; where that line begins, as zdd saw it.
    pub fn mark(&self, marker: &str) -> Option<process::LogSpot> {
        process::log_marker_at(&self.log(), marker)
    }

    /// Its log, which its keeper writes.
    pub fn log(&self) -> PathBuf {
        process::log_path(self.root, self.name)
    }

    fn spec<'s>(&'s self, env: &'s [(String, String)], log: &'s Path) -> Spec<'s> {
        Spec {
            command: self.command,
            dir: &self.dir,
            env,
            log,
            run_as: self.config.and_then(|c| c.user.as_ref()),
        }
    }
}

/// The environment of an app (and of a slot's build and hooks): `PORT`,
/// `ZDD_ROOT`, `ZDD_SLOT` (the slot or the name of a `zdd start` process;
/// for the app only, never proof of anything), then `extra` (`ZDD_COMMIT`
/// for a slot, the env file's variables, the config's `[env]`: a later
/// name wins).
pub fn app_env<'a>(
    root: &Path,
    name: &str,
    port: u16,
    extra: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("PORT".to_string(), port.to_string()),
        ("ZDD_ROOT".to_string(), root.display().to_string()),
        ("ZDD_SLOT".to_string(), name.to_string()),
    ];
    env.extend(
        extra
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env
}

/// Verify an app just started on `port`: its health check passes, the
/// answer came from its own group, then `then` (the caller's own check).
/// `kept`: the root and name of the keeper it runs under (none for a
/// rehearsal). With `arm`, its keeper is armed once all passed: from then
/// on it starts the app again if it exits on its own; an app that exited
/// just before is still a failed start (its keeper, not armed yet, ended
/// with it).
pub fn verify(
    health: &Health,
    port: u16,
    started: &mut Started,
    kept: Option<(&Path, &str)>,
    arm: bool,
    then: impl FnOnce() -> Verified,
) -> Verified {
    let checker = Checker::new(health, port);
    // An app that listens, but elsewhere, is said while zdd still waits.
    let mut said = false;
    let mut watch = |started: &mut Started, waited: Duration| {
        if !said && waited >= SAY_ELSEWHERE_AFTER {
            said = true;
            if let Some(elsewhere) = listens_elsewhere(started, port) {
                log::warn!(
                    "{elsewhere}; still waiting for its health check (at most health.timeout, {})",
                    humantime::format_duration(health.timeout)
                );
            }
        }
    };
    let verdict = match health::wait_ready(health, &checker, started, &mut watch) {
        // The answer must have come from the new app, not from something
        // else that holds the port.
        Ok(()) => match answered_by(started, port) {
            Err(reason) => Err(Failure::Environment(reason)),
            Ok(()) => then(),
        },
        Err(Failure::Commit(reason)) => match kept.and_then(|k| could_not_start(k, started)) {
            Some(why) => Err(Failure::Environment(why)),
            None => Err(Failure::Commit(match listens_elsewhere(started, port) {
                Some(elsewhere) => format!("{elsewhere}; {reason}"),
                None => reason,
            })),
        },
        other => other,
    };
    match verdict {
        Ok(()) if arm => match keeper::arm(started.id.pid).map(|()| started.exited()) {
            Ok(None) => Ok(()),
            Ok(Some(status)) => crate::health::exited_during_start_up(status),
            Err(e) => Err(Failure::Environment(format!(
                "cannot arm its keeper (pid {}): {e}",
                started.id.pid
            ))),
        },
        other => other,
    }
}

/// A keeper that ended during start-up because it could not start the app
/// at all — the env file broken since zdd read it, its cgroup, exec —
/// says why in its status: not the commit's failure.
fn could_not_start((root, name): (&Path, &str), started: &mut Started) -> Option<String> {
    started.exited()?;
    let why = keeper::read_status(root, name, started.id.pid)?.start_failed?;
    Some(format!("its keeper could not start the app: {why}"))
}

/// How long a start waits before it says that the app listens elsewhere.
const SAY_ELSEWHERE_AFTER: Duration = Duration::from_secs(2);

/// Where the app listens, said when it is not where the health check
/// looks (`127.0.0.1:$PORT`): a `start` that ignores `$PORT`, or binds
/// another address.
fn listens_elsewhere(started: &Started, port: u16) -> Option<String> {
    let table = process::Table::now();
    let pids: Vec<i32> = started
        .id
        .members(&table)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    let addrs = crate::ports::listening_addrs(&pids);
    let checked = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // An IPv6 socket may hold 127.0.0.1 as ::ffff:127.0.0.1.
    let reachable = |a: &std::net::SocketAddr| {
        let ip = a.ip().to_canonical();
        a.port() == port && (ip.is_unspecified() || ip == checked.ip())
    };
    if addrs.is_empty() || addrs.iter().any(reachable) {
        return None;
    }
    let list = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "the app listens on {list}, not on 127.0.0.1:$PORT ({port}): make `start` listen on 127.0.0.1 and the port zdd sets in $PORT"
    ))
}

/// Does the listener on `port` belong to the process group just started?
fn answered_by(started: &mut Started, port: u16) -> Result<(), String> {
    if let Some(status) = started.exited() {
        return Err(format!("the app exited during start-up ({status})"));
    }
    let pgid = started.id.pid;
    match crate::ports::listeners(port, &[pgid]).into_iter().next() {
        None => Err(format!("nothing listens on port {port} any more")),
        Some(l) if l.pid.is_some_and(|pid| started.id.owns(pid)) => Ok(()),
        Some(l) => Err(format!(
            "the health check was answered on port {port} by {l}, not by the new app (pid {pgid})"
        )),
    }
}

/// Before `name` starts again: stop what zdd's earlier runs provably left
/// of it besides its `recorded` keeper — a keeper zdd never recorded
/// (killed just after starting it; its own status file proves it), and
/// what is left in its app's cgroup with no keeper to vouch for it.
pub fn stop_leftovers(root: &Path, name: &str, recorded: Option<i32>, with: StopWith) {
    let what = match crate::slot::Slot::parse(name) {
        Some(slot) => format!("slot {slot}"),
        None => name.to_string(),
    };
    if let Some(id) = keeper::unrecorded(root, name, recorded) {
        log::warn!(
            "{what}: keeper pid {} from an interrupted run still runs (it was never recorded); stopping it",
            id.pid
        );
        process::stop_group(&id, with, None);
    }
    if let Some((remnants, left)) = ProcessId::remnants(root, name) {
        log::warn!(
            "{what}: {} process(es) of an earlier app still run in its cgroup ({}); stopping them",
            left.len(),
            process::fence::describe(&left).join(", ")
        );
        process::stop_group(&remnants, with, None);
    }
}
