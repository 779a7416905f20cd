//! Named processes: `zdd start NAME DIR PORT [-- CMD...]` starts and
//! checks one and records it in `root/run/NAME.toml`; `zdd stop NAME`
//! stops it (or slot `a`/`b`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Stop};
use crate::error::{Error, Result};
use crate::health::Failure;
use crate::lock::{Lock, LockWait};
use crate::process::{self, ProcessId, Stopped};
use crate::state::{Slot, State};
use crate::text::{fmt_ms, out};
use crate::{fsutil, keeper, root};

/// What `run/NAME.toml` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub command: String,
    pub process: ProcessId,
    pub started_at: String,
}

/// Where records live: the config's root, or without a config file
/// `$ZDD_ROOT`, `$XDG_STATE_HOME/zdd`, `~/.local/state/zdd`.
pub(crate) fn root_of(config: Option<&Config>) -> Result<PathBuf> {
    if let Some(c) = config {
        return Ok(c.root.clone());
    }
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(root) = var("ZDD_ROOT") {
        return Ok(root);
    }
    if let Some(state) = var("XDG_STATE_HOME") {
        return Ok(state.join("zdd"));
    }
    var("HOME")
        .map(|h| h.join(".local/state/zdd"))
        .ok_or_else(|| Error::Usage("no config file and neither ZDD_ROOT nor HOME is set: cannot tell where to keep records".into()))
}

/// The stop of named processes: the config's, or the default one.
fn stop_of(config: Option<&Config>) -> Stop {
    config.map(|c| c.stop.clone()).unwrap_or_default()
}

/// Nothing listens on `port`, else why `name` was not started there.
fn port_free(port: u16, name: &str) -> Result<()> {
    match crate::ports::listeners(port, &[]).into_iter().next() {
        None => Ok(()),
        Some(listener) => Err(Error::Failed(format!(
            "port {port} is taken by {listener}; {name} was not started"
        ))),
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::Usage(format!(
            "invalid name {name:?}: use letters, digits, '_' and '-'"
        )));
    }
    Ok(())
}

fn record_path(root: &Path, name: &str) -> PathBuf {
    root.join("run").join(format!("{name}.toml"))
}

fn read_record(path: &Path) -> Result<Option<Record>> {
    match root::read_nofollow(path)? {
        Some(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| Error::StateCorrupt {
                path: path.to_path_buf(),
                reason: crate::config::toml_error(&text, &e),
            }),
        None => Ok(None),
    }
}

/// Quote one argument for `sh`.
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `zdd start NAME DIR PORT [-- CMD...]`.
pub fn start(
    config: Option<&Config>,
    name: &str,
    dir: &Path,
    port: u16,
    cmd: &[String],
    wait: LockWait,
) -> Result<()> {
    check_name(name)?;
    if Slot::parse(name).is_some() {
        return Err(Error::Usage(format!(
            "{name:?} is a slot name; slots are started by `zdd deploy` and `zdd rollback`"
        )));
    }
    let command = if cmd.is_empty() {
        config.map(|c| c.start.clone()).ok_or_else(|| {
            Error::Usage(
                "no command: pass one after `--`, or run with a config file whose `start` to use"
                    .into(),
            )
        })?
    } else {
        cmd.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if port == 0 {
        return Err(Error::Usage("port 0 is not a usable port".into()));
    }
    if let Some(c) = config {
        if let Some(slot) = Slot::BOTH.into_iter().find(|&s| c.port(s) == port) {
            return Err(Error::Usage(format!(
                "port {port} is slot {slot}'s port in {}: nginx sends it the site's requests, and deploys start slot {slot} there; give {name} another port",
                c.path.display()
            )));
        }
    }
    let dir = std::path::absolute(dir).map_err(Error::io("cannot resolve", dir))?;
    if !dir.is_dir() {
        return Err(Error::Usage(format!("{} is not a folder", dir.display())));
    }
    let root = root_of(config)?;
    root::prepare(&root, &[root::RUN, root::LOGS])?;
    let path = record_path(&root, name);
    root::check_file(&path)?;
    root::check_file(&process::log_path(&root, name))?;
    let _lock = Lock::acquire(&root, wait, &format!("zdd start {name}"))?;
    let old = read_record(&path)?;
    if let Some(old) = &old {
        if old.process.group_is_ours() {
            return Err(Error::Failed(format!(
                "{name} is already running (pid {}, port {}); stop it first with `zdd stop {name}`",
                old.process.pid, old.port
            )));
        }
    }
    let recorded = old.map(|r| r.process.pid);
    crate::launch::stop_leftovers(&root, name, recorded, stop_of(config).with());
    port_free(port, name)?;

    let mut started = start_kept(config, &root, name, &dir, port, &command, false)?;
    let t = Instant::now();
    // Verified, its keeper is armed: from now on it starts the app again if
    // it exits on its own (an app that exited just before still failed).
    match verify(config, (&root, name), port, &mut started, true) {
        Ok(()) => {
            log::info!(
                "{name}: pid {} healthy on port {port} after {}",
                started.id.pid,
                fmt_ms(t.elapsed().as_millis() as u64)
            );
            out!("started {name} (pid {}) on port {port}", started.id.pid);
            Ok(())
        }
        Err(failure) => {
            let stop = stop_of(config);
            process::stop_group(&started.id, stop.with(), Some(&mut started.child));
            let _ = std::fs::remove_file(&path);
            Err(Error::Failed(format!(
                "{name} failed to start: {failure}; it was stopped{}",
                process::tail_note(&process::log_path(&root, name))
            )))
        }
    }
}

/// Start `command` as `name` under its keeper (`armed`: supervised from the
/// start) and record it in `run/NAME.toml`; a process that cannot be
/// recorded is stopped at once.
fn start_kept(
    config: Option<&Config>,
    root: &Path,
    name: &str,
    dir: &Path,
    port: u16,
    command: &str,
    armed: bool,
) -> Result<process::Started> {
    // A bad line is exit 2 naming file:line, not a failed start: checked
    // here, read by the keeper at every start.
    if let Some(path) = config.and_then(|c| c.env_file.as_deref()) {
        crate::config::read_env_file(path)?;
    }
    let app = crate::launch::App {
        root,
        name,
        dir: dir.to_path_buf(),
        port,
        command,
        commit: None,
        config,
    };
    let marker = format!(
        "start {name} in {} on port {port}: {command}",
        dir.display()
    );
    app.mark(&marker);
    let mut started = app
        .keep(armed, None)
        .map_err(|e| Error::Failed(format!("cannot start `{command}`: {e}")))?;
    let record = Record {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        port,
        command: command.to_string(),
        process: started.id.clone(),
        started_at: crate::text::now(),
    };
    let path = record_path(root, name);
    let text = toml::to_string(&record).expect("record serializes");
    if let Err(e) = fsutil::write_atomic(&path, text.as_bytes(), 0o600) {
        // A process without a record must not outlive zdd.
        process::stop_group(
            &started.id,
            process::StopWith::KILL,
            Some(&mut started.child),
        );
        return Err(Error::io("cannot write", &path)(e));
    }
    Ok(started)
}

/// The health check of a named process just started: `Err` says why not.
/// (`launch::verify`, with the config's health check or the default one.)
fn verify(
    config: Option<&Config>,
    (root, name): (&Path, &str),
    port: u16,
    started: &mut process::Started,
    arm: bool,
) -> std::result::Result<(), String> {
    let health = config.map(|c| c.health.clone()).unwrap_or_default();
    match crate::launch::verify(&health, port, started, Some((root, name)), arm, || Ok(())) {
        Ok(()) => Ok(()),
        Err(Failure::Commit(reason) | Failure::Environment(reason)) => Err(reason),
        Err(Failure::Interrupted(sig)) => Err(format!("interrupted by {}", sig.as_str())),
    }
}

/// The names recorded under `root/run/`, sorted.
fn recorded_names(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.join("run")) else {
        return Vec::new(); // nothing was ever started here
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".toml")?.to_string();
            check_name(&name).ok().map(|()| name)
        })
        .collect();
    names.sort();
    names
}

/// Every process recorded by `zdd start` under `root`, by name (what
/// `zdd status` lists); a record zdd cannot read is an `Err`.
pub fn records(root: &Path) -> Vec<(String, Result<Record>)> {
    recorded_names(root)
        .into_iter()
        .filter_map(|name| match read_record(&record_path(root, &name)) {
            Ok(None) => None,
            Ok(Some(r)) => Some((name, Ok(r))),
            Err(e) => Some((name, Err(e))),
        })
        .collect()
}

/// `zdd up` for named processes: each one recorded under root that does not
/// run is started again as recorded, under a keeper that supervises it at
/// once, and verified. Returns what failed.
pub fn up(config: Option<&Config>, wait: LockWait) -> Vec<Error> {
    let root = match root_of(config) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let names = recorded_names(&root);
    if names.is_empty() {
        return Vec::new();
    }
    let _lock = match root::prepare(&root, &[root::RUN, root::LOGS])
        .and_then(|()| Lock::acquire(&root, wait, "zdd up"))
    {
        Ok(l) => l,
        Err(e) => return vec![e],
    };
    names
        .iter()
        .filter_map(|name| up_one(config, &root, name).err())
        .collect()
}

fn up_one(config: Option<&Config>, root: &Path, name: &str) -> Result<()> {
    let Some(record) = read_record(&record_path(root, name))? else {
        return Ok(());
    };
    if record.process.group_is_ours() {
        out!("{name} runs already (pid {})", record.process.pid);
        return Ok(());
    }
    if !record.dir.is_dir() {
        return Err(Error::NeedsAttention(format!(
            "{name} was started in {}, which is gone; start it again with `zdd start`",
            record.dir.display()
        )));
    }
    let with = stop_of(config).with();
    crate::launch::stop_leftovers(root, name, Some(record.process.pid), with);
    port_free(record.port, name)?;
    let mut started = start_kept(
        config,
        root,
        name,
        &record.dir,
        record.port,
        &record.command,
        true,
    )?;
    match verify(config, (root, name), record.port, &mut started, false) {
        Ok(()) => {
            out!(
                "started {name} (pid {}) on port {}",
                started.id.pid,
                record.port
            );
            Ok(())
        }
        Err(why) => Err(Error::Failed(format!(
            "{name} is not healthy yet: {why}; it stays under its keeper, which keeps starting it again{}",
            process::tail_note(&process::log_path(root, name))
        ))),
    }
}

/// `zdd stop NAME`.
pub fn stop(config: Option<&Config>, name: &str, wait: LockWait) -> Result<()> {
    check_name(name)?;
    if let Some(slot) = Slot::parse(name) {
        let config = config.ok_or_else(|| {
            Error::Usage(format!(
                "stopping slot {slot} needs the config file (zdd.toml or --config)"
            ))
        })?;
        return stop_slot(config, slot, wait);
    }
    let root = root_of(config)?;
    let path = record_path(&root, name);
    let nothing = || {
        Error::Usage(format!(
            "nothing named {name} was started here: no record {}",
            path.display()
        ))
    };
    if !root.exists() {
        // A fresh root: nothing was ever started, and nothing is created.
        return Err(nothing());
    }
    root::prepare(&root, &[root::RUN])?;
    let _lock = Lock::acquire(&root, wait, &format!("zdd stop {name}"))?;
    let record = read_record(&path)?.ok_or_else(nothing)?;
    let stop = stop_of(config);
    report_stop(name, &record.process, &stop);
    std::fs::remove_file(&path).map_err(Error::io("cannot remove", &path))?;
    Ok(())
}

fn stop_slot(config: &Config, slot: Slot, wait: LockWait) -> Result<()> {
    if !config.root.exists() {
        out!("slot {slot} was not running");
        return Ok(());
    }
    root::prepare(&config.root, &[])?;
    let _lock = Lock::acquire(&config.root, wait, &format!("zdd stop {slot}"))?;
    let state_path = config.state_path();
    let mut state = State::load(&state_path, config.ports)?;
    let before = state.clone();
    keeper::fold_restarts(&mut state, &config.root);
    match state.slot(slot).process.clone() {
        Some(id) => {
            report_stop(&format!("slot {slot}"), &id, &config.stop);
            if state.active == Some(slot) {
                log::warn!(
                    "slot {slot} is the live slot: the site is down (nginx has no app to send it to) until `zdd up` starts slot {slot} again, or the next `zdd deploy` does"
                );
            }
        }
        None => out!("slot {slot} was not running"),
    }
    state.slot_mut(slot).forget_process();
    if state != before {
        state.save(&state_path)?;
    }
    Ok(())
}

fn report_stop(what: &str, id: &ProcessId, stop: &Stop) {
    let report = process::stop_group_watched(id, stop.with(), None, &mut || {});
    if !report.outside.is_empty() {
        out!(
            "{what}: its app had left {} process(es) outside its process group, stopped with it: {}",
            report.outside.len(),
            report.outside.join(", ")
        );
    }
    match report.how {
        Stopped::NotRunning => out!("{what} was not running"),
        Stopped::Exited(d) => out!("stopped {what} (pid {}) after {}", id.pid, fmt_ms(d.as_millis() as u64)),
        Stopped::Killed(d) => out!(
            "killed {what} (pid {}): it did not exit within {} of {}, so its process group got SIGKILL ({} in all)",
            id.pid,
            humantime::format_duration(stop.timeout),
            stop.signal,
            fmt_ms(d.as_millis() as u64)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(shell_quote("python3"), "python3");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
    }
}
