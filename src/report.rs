//! `zdd status` and `zdd history`: what the state file says, checked
//! against what really runs, as text or as JSON with a `version` field.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{Config, NginxMode};
use crate::error::{Error, Result};
use crate::git;
use crate::health::Checker;
use crate::lock::{Holder, Lock};
use crate::state::{HistoryEntry, Slot, State};
use crate::text::{fmt, fmt_ms, out};
use crate::{keeper, observe};

/// The JSON schema version of `status --json` and `history --json`.
pub const JSON_VERSION: u32 = 1;

#[derive(Serialize)]
struct StatusReport {
    version: u32,
    name: String,
    active: Option<Slot>,
    next_deploy: Slot,
    /// How nginx is steered: "switch" or "round-robin".
    mode: &'static str,
    /// The slot nginx's switch points at (switch mode only).
    switch: Option<Slot>,
    /// Set while the site is closed for maintenance (`zdd maintenance on`).
    maintenance: Option<crate::state::MaintenanceState>,
    /// What `zdd rollback` would bring back, if anything.
    rollback_to: Option<String>,
    slots: Vec<SlotReport>,
    last: Option<HistoryEntry>,
    /// The zdd run that holds the lock right now (a deploy in progress).
    in_progress: Option<Holder>,
    drift: Vec<String>,
    /// What nginx's probe said just now; `None` when nothing is deployed.
    nginx: Option<NginxSeen>,
    /// The processes `zdd start` recorded.
    processes: Vec<ProcessReport>,
    /// The live slot runs, passes its health check, and nginx routes to
    /// it (exit 0); else `not_serving` says why (exit 5).
    serving: bool,
    not_serving: Option<String>,
}

/// What one probe through nginx showed.
#[derive(Serialize)]
struct NginxSeen {
    url: String,
    answered: bool,
    /// The slot nginx routes new requests to, when its probe says.
    routes_to: Option<Slot>,
    /// What is wrong, in a sentence with the fix.
    problem: Option<String>,
}

/// A process `zdd start` recorded.
#[derive(Serialize)]
struct ProcessReport {
    name: String,
    port: Option<u16>,
    dir: Option<String>,
    command: Option<String>,
    running: bool,
    pid: Option<i32>,
    started_at: Option<String>,
    uptime_s: Option<u64>,
    healthy: Option<bool>,
    health: Option<String>,
    supervised: bool,
    restarts: u32,
    last_exit: Option<String>,
    /// Its record cannot be read (the sentence why).
    problem: Option<String>,
}

#[derive(Serialize)]
struct SlotReport {
    slot: Slot,
    port: u16,
    status: &'static str,
    commit: Option<String>,
    subject: Option<String>,
    running: bool,
    pid: Option<i32>,
    started_at: Option<String>,
    uptime_s: Option<u64>,
    healthy: Option<bool>,
    health: Option<String>,
    /// Who listens on the slot's port when zdd's process does not.
    held_by: Option<String>,
    /// Under a keeper that starts it again when it exits on its own.
    supervised: bool,
    /// How often its keeper started it again since it went live.
    restarts: u32,
    /// Its last exit on its own: "exit status: 1", "signal: 9 (SIGKILL)".
    last_exit: Option<String>,
    last_exit_at: Option<String>,
    /// While its keeper waits to start it again: how long.
    backoff_ms: Option<u64>,
    /// Why its keeper asked for a rollback, and how that went, if it did.
    auto_rollback: Option<String>,
}

/// One health check of what listens on `port`, with a short timeout:
/// whether it passed, and what to show.
fn health_now(config: &Config, port: u16) -> (Option<bool>, Option<String>) {
    let t = std::time::Instant::now();
    // The configured timeout: a slow health check is not a site down.
    match Checker::new(&config.health, port).check() {
        Ok(()) => (Some(true), Some(format!("healthy ({})", fmt(t.elapsed())))),
        Err(e) => (Some(false), Some(format!("unhealthy: {e}"))),
    }
}

/// Under a keeper that starts it again when it exits on its own.
fn supervised(kept: Option<&keeper::KeeperStatus>) -> bool {
    kept.is_some_and(|k| k.armed_at.is_some() && !k.stopping)
}

/// Seconds since `started` (RFC 3339), while it runs.
fn uptime(started: Option<&str>, running: bool) -> Option<u64> {
    started
        .filter(|_| running)
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs())
}

/// The `zdd start` processes under the config's root, each looked at now.
fn processes(config: &Config) -> Vec<ProcessReport> {
    crate::named::records(&config.root)
        .into_iter()
        .map(|(name, record)| match record {
            Err(e) => ProcessReport {
                name,
                port: None,
                dir: None,
                command: None,
                running: false,
                pid: None,
                started_at: None,
                uptime_s: None,
                healthy: None,
                health: None,
                supervised: false,
                restarts: 0,
                last_exit: None,
                problem: Some(e.to_string()),
            },
            Ok(r) => {
                let running = r.process.group_is_ours();
                let kept = running
                    .then(|| keeper::read_status(&config.root, &name, r.process.pid))
                    .flatten();
                let (healthy, health) = match running {
                    true => health_now(config, r.port),
                    false => (None, None),
                };
                let app_started = kept
                    .as_ref()
                    .and_then(|k| k.app_started_at.clone())
                    .or_else(|| Some(r.started_at.clone()));
                ProcessReport {
                    port: Some(r.port),
                    dir: Some(r.dir.display().to_string()),
                    command: Some(r.command.clone()),
                    running,
                    pid: running.then_some(r.process.pid),
                    started_at: running.then(|| r.started_at.clone()),
                    uptime_s: uptime(app_started.as_deref(), running),
                    healthy,
                    health,
                    supervised: supervised(kept.as_ref()),
                    restarts: kept.as_ref().map_or(0, |k| k.restarts),
                    last_exit: kept.as_ref().and_then(|k| k.last_exit.clone()),
                    problem: None,
                    name,
                }
            }
        })
        .collect()
}

/// Ask nginx, once, whether it routes to the live slot `live`.
fn nginx_now(config: &Config, mode: NginxMode, live: Slot) -> NginxSeen {
    use crate::steer::{look, Verdict};
    let (verdict, url) = look(config, mode, live);
    let (answered, routes_to, problem) = match verdict {
        Verdict::Routed(_) => (true, Some(live), None),
        // A custom round-robin template without the probe: nothing to tell.
        Verdict::NoProbe(_) => (true, None, None),
        Verdict::Elsewhere { said, picked } => (
            true,
            picked,
            Some(format!("nginx does not route to the live slot {live}: {said}")),
        ),
        Verdict::Wrong(why) => (true, None, Some(why)),
        Verdict::Unanswered(e) => (
            false,
            None,
            Some(format!(
                "nginx does not answer at {url} ({e}), so nothing reaches the app: is nginx running (on nginx.listen = {:?}), with the config from `zdd nginx`?",
                config.nginx.listen
            )),
        ),
    };
    NginxSeen {
        url,
        answered,
        routes_to,
        problem,
    }
}

/// Why the site does not serve, if it does not (`None`: it serves).
fn not_serving(r: &StatusReport) -> Option<String> {
    let Some(live) = r.active else {
        return Some("nothing is deployed yet; `zdd deploy` deploys the tip".into());
    };
    let s = r.slots.iter().find(|s| s.slot == live)?;
    if !s.running {
        return Some(format!(
            "slot {live}, the live slot, does not run; `zdd up` starts it again (so does the next `zdd deploy`)"
        ));
    }
    if s.healthy == Some(false) {
        return Some(format!(
            "slot {live}, the live slot, fails its health check ({})",
            s.health.as_deref().unwrap_or("?")
        ));
    }
    // Mid-deploy, nginx may route to the other slot for a moment (the
    // state records the new slot as live just before the flip).
    let nginx = r.nginx.as_ref()?;
    if r.in_progress.is_some() && nginx.answered {
        return None;
    }
    nginx.problem.clone()
}

/// `zdd status [--json]`: the report on stdout; exit 5 (with the reason
/// on stderr) when the site is not serving.
pub fn status(config: &Config, json: bool) -> Result<()> {
    let mut state = State::load(&config.state_path(), config.ports)?;
    // Restarts the keepers made since zdd last looked, as history would say.
    keeper::fold_restarts(&mut state, &config.root);
    let in_progress = Lock::holder(&config.root);
    // A template that cannot be rendered is for `zdd nginx` to report;
    // status still tells what runs.
    let mode = crate::nginx::mode(config).ok();
    let seen = observe::observe(config, &state, mode == Some(NginxMode::Switch));
    let drift = seen.drift(&state);
    let switch = seen.switch;
    let mut slots = Vec::new();
    for slot in Slot::BOTH {
        let s = state.slot(slot);
        let port = config.port(slot);
        let seen_slot = seen.slot(slot);
        let running = seen_slot.running;
        let held_by = seen_slot
            .strangers
            .first()
            .filter(|_| !running)
            .map(ToString::to_string);
        let kept = seen_slot.keeper.clone();
        let (healthy, health) = match running {
            true => health_now(config, port),
            false => (None, None),
        };
        // The app's own start: its keeper may have restarted it since.
        let app_started = kept
            .as_ref()
            .and_then(|k| k.app_started_at.clone())
            .or_else(|| s.started_at.clone());
        let uptime_s = uptime(app_started.as_deref(), running);
        slots.push(SlotReport {
            slot,
            port,
            status: s.status.as_str(),
            commit: s.commit.clone(),
            subject: s.subject.clone(),
            running,
            pid: s.process.as_ref().filter(|_| running).map(|p| p.pid),
            started_at: s.started_at.clone().filter(|_| running),
            uptime_s,
            healthy,
            health,
            held_by,
            supervised: supervised(kept.as_ref()),
            restarts: kept.as_ref().map_or(0, |k| k.restarts),
            last_exit: kept.as_ref().and_then(|k| k.last_exit.clone()),
            last_exit_at: kept.as_ref().and_then(|k| k.last_exit_at.clone()),
            backoff_ms: kept.as_ref().and_then(|k| k.backoff_ms),
            auto_rollback: kept.as_ref().and_then(|k| {
                let why = k.rollback.as_ref()?;
                Some(match &k.rollback_exit {
                    Some(exit) => format!("it {why}; zdd rollback ended with {exit}"),
                    None => format!("it {why}; zdd rollback runs or waits for the lock"),
                })
            }),
        });
    }
    let rollback_to = crate::deploy::rollback_target(&state)
        .ok()
        .map(|(_, sha)| sha);
    let nginx = match (mode, state.active) {
        (Some(mode), Some(live)) => Some(nginx_now(config, mode, live)),
        _ => None,
    };
    let mut report = StatusReport {
        version: JSON_VERSION,
        name: config.name.clone(),
        active: state.active,
        next_deploy: state.next_deploy,
        mode: mode.map_or("unknown (the nginx template does not render)", |m| {
            m.as_str()
        }),
        switch,
        maintenance: state.maintenance.clone(),
        rollback_to,
        slots,
        last: state.history.last().cloned(),
        // Mid-deploy the state and the processes are moving: no drift then.
        drift: if in_progress.is_some() {
            Vec::new()
        } else {
            drift
        },
        in_progress,
        nginx,
        processes: processes(config),
        serving: false,
        not_serving: None,
    };
    report.not_serving = not_serving(&report);
    report.serving = report.not_serving.is_none();
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).expect("status serializes")
        );
    } else {
        crate::text::write_stdout(crate::text::printable(&status_text(&report)).as_bytes())
            .map_err(Error::io("cannot write the status to", "stdout"))?;
    }
    match report.not_serving {
        // The report said why; stderr says it once more, for cron's mail.
        Some(why) => Err(Error::NotServing(why)),
        None => Ok(()),
    }
}

fn status_text(r: &StatusReport) -> String {
    let mut out = String::new();
    let live = r.active.and_then(|a| r.slots.iter().find(|s| s.slot == a));
    match live {
        Some(s) => out.push_str(&format!(
            "{}: live slot {} on port {}, commit {}{}\n",
            r.name,
            s.slot,
            s.port,
            s.commit.as_deref().map(git::short).unwrap_or("?"),
            s.subject
                .as_deref()
                .map(|x| format!(" {x:?}"))
                .unwrap_or_default()
        )),
        None => out.push_str(&format!("{}: nothing deployed yet\n", r.name)),
    }
    for s in &r.slots {
        let mut line = format!("  slot {}  {:<8}  port {}", s.slot, s.status, s.port);
        if let Some(c) = &s.commit {
            line.push_str(&format!("  {}", git::short(c)));
        }
        line.push_str(&running_note(s.pid, s.uptime_s).unwrap_or_else(|| "  not running".into()));
        if let Some(h) = &s.health {
            line.push_str(&format!("  {h}"));
        }
        if let Some(holder) = &s.held_by {
            line.push_str(&format!("; port {} held by {holder}", s.port));
        }
        if s.pid.is_some() && !s.supervised {
            line.push_str("  (not under a keeper)");
        }
        if let Some(ms) = s.backoff_ms {
            line.push_str(&format!(
                "  down, its keeper starts it again in {}",
                fmt_ms(ms)
            ));
        }
        if let Some(why) = &s.auto_rollback {
            line.push_str(&format!("  rollback asked: {why}"));
        }
        line.push_str(&restarts_note(
            s.restarts,
            s.last_exit.as_deref(),
            s.last_exit_at.as_deref(),
        ));
        out.push_str(&line);
        out.push('\n');
    }
    for p in &r.processes {
        out.push_str(&process_line(p));
        out.push('\n');
    }
    let problem = r.nginx.as_ref().and_then(|n| n.problem.as_deref());
    match (r.switch, problem) {
        (Some(s), None) => out.push_str(&format!(
            "nginx: switch mode, new requests go to slot {s}\n"
        )),
        (Some(s), Some(p)) => out.push_str(&format!(
            "nginx: switch mode, the switch points at slot {s}, but {p}\n"
        )),
        (None, None) => out.push_str(&format!("nginx: {} mode\n", r.mode)),
        (None, Some(p)) => out.push_str(&format!("nginx: {} mode, but {p}\n", r.mode)),
    }
    if let Some(m) = &r.maintenance {
        out.push_str(&format!(
            "maintenance: on since {}, nginx answers the public with its page (503): \"{}\"; `zdd maintenance off` opens the site\n",
            m.since,
            crate::text::escape(&m.message)
        ));
    }
    out.push_str(&format!("next deploy goes to slot {}", r.next_deploy));
    match &r.rollback_to {
        Some(c) => out.push_str(&format!("; `zdd rollback` brings back {}\n", git::short(c))),
        None if r.active.is_some() => out.push_str(
            "; nothing older than the live release to roll back to (`zdd releases` lists the kept ones)\n",
        ),
        None => out.push_str("; nothing to roll back to\n"),
    }
    if let Some(h) = &r.last {
        out.push_str(&format!("last: {}\n", history_line(h)));
    }
    if let Some(h) = &r.in_progress {
        out.push_str(&format!("in progress: {h}; the state is changing\n"));
    } else if r.drift.is_empty() {
        out.push_str("state matches the running processes\n");
    } else {
        for d in &r.drift {
            out.push_str(&format!("drift: {d}\n"));
        }
    }
    if let Some(why) = &r.not_serving {
        let nginx_said = r.nginx.as_ref().and_then(|n| n.problem.as_ref()) == Some(why);
        match nginx_said {
            true => out.push_str("NOT SERVING: nginx does not send requests to the live slot (the nginx line says why)\n"),
            false => out.push_str(&format!("NOT SERVING: {why}\n")),
        }
    }
    out
}

/// "  pid N  up 1h 2m" of a process that runs; `None` when it does not.
fn running_note(pid: Option<i32>, uptime_s: Option<u64>) -> Option<String> {
    let pid = pid?;
    Some(match uptime_s {
        Some(up) => format!(
            "  pid {pid}  up {}",
            humantime::format_duration(Duration::from_secs(up))
        ),
        None => format!("  pid {pid}"),
    })
}

/// "  restarted N times by its keeper (last exit: …)", or nothing.
fn restarts_note(restarts: u32, last_exit: Option<&str>, at: Option<&str>) -> String {
    if restarts == 0 {
        return String::new();
    }
    format!(
        "  restarted {restarts} time{} by its keeper (last exit: {}{})",
        if restarts == 1 { "" } else { "s" },
        last_exit.unwrap_or("?"),
        at.map(|t| format!(" at {t}")).unwrap_or_default()
    )
}

/// One `zdd start` process in `status`.
fn process_line(p: &ProcessReport) -> String {
    let mut line = format!("  process {}", p.name);
    if let Some(port) = p.port {
        line.push_str(&format!("  port {port}"));
    }
    match running_note(p.pid, p.uptime_s) {
        Some(note) => line.push_str(&note),
        None if p.problem.is_none() => line.push_str("  not running (`zdd up` starts it again)"),
        None => {}
    }
    if let Some(h) = &p.health {
        line.push_str(&format!("  {h}"));
    }
    line.push_str(&restarts_note(p.restarts, p.last_exit.as_deref(), None));
    if let Some(why) = &p.problem {
        line.push_str(&format!("  {why}"));
    }
    if let (Some(dir), Some(command)) = (&p.dir, &p.command) {
        line.push_str(&format!("  (`{}` in {dir})", crate::text::escape(command)));
    }
    line
}

fn history_line(h: &HistoryEntry) -> String {
    let action = h.action.as_str();
    let outcome = match h.outcome {
        crate::state::Outcome::Ok => "ok",
        crate::state::Outcome::Failed => "FAILED",
        crate::state::Outcome::Error => "error",
        crate::state::Outcome::Interrupted => "interrupted",
    };
    let p = &h.phases;
    let mut line = format!(
        "{}  {action:<8}  {outcome:<11}  {}  slot {}",
        h.at,
        git::short(&h.commit),
        h.slot,
    );
    // A keeper's restarts took no zdd run: no time to tell.
    let timed = h.action != crate::state::Action::Restart || p.total_ms > 0;
    if timed {
        line.push_str(&format!("  total {}", fmt_ms(p.total_ms)));
    }
    if h.outcome == crate::state::Outcome::Ok && h.action != crate::state::Action::Restart {
        line.push_str(&format!(
            " (fetch+checkout {}, build {}, ready {}, nginx {}, settle {}, drain {})",
            fmt_ms(p.fetch_ms),
            fmt_ms(p.build_ms),
            fmt_ms(p.ready_ms),
            fmt_ms(p.route_ms),
            fmt_ms(p.settle_ms),
            fmt_ms(p.drain_ms)
        ));
    }
    if let Some(r) = &h.reason {
        let first = r.lines().next().unwrap_or(r);
        line.push_str(&format!("  {first}"));
    }
    line
}

/// One kept release, for `zdd releases`.
#[derive(Serialize)]
struct ReleaseReport {
    commit: String,
    subject: Option<String>,
    built_at: String,
    deployed_at: Option<String>,
    size_bytes: Option<u64>,
    /// "live", "standby" (the other slot holds it), "kept", or "failed"
    /// (built, never went live, its last attempt failed).
    status: &'static str,
    slot: Option<Slot>,
    /// What `zdd rollback` brings back.
    rollback: bool,
}

/// `zdd releases [--json]`: the kept releases, newest first.
pub fn releases(config: &Config, json: bool) -> Result<()> {
    let state = State::load(&config.state_path(), config.ports)?;
    let target = crate::deploy::rollback_target(&state)
        .ok()
        .map(|(_, sha)| sha);
    let list: Vec<ReleaseReport> = state
        .releases
        .iter()
        .rev()
        .map(|r| {
            // The live slot first: after `zdd restart` both hold it.
            let mut order = Slot::BOTH;
            order.sort_by_key(|&s| state.active != Some(s));
            let slot = order
                .into_iter()
                .find(|&s| state.slot(s).commit.as_deref() == Some(r.commit.as_str()));
            let last = state.history.iter().rev().find(|h| h.commit == r.commit);
            let status = match slot {
                Some(s) if state.active == Some(s) => "live",
                Some(s) if state.slot(s).status == crate::state::SlotStatus::Standby => "standby",
                _ if !r.good() && last.is_some_and(|h| h.outcome != crate::state::Outcome::Ok) => {
                    "failed"
                }
                _ => "kept",
            };
            ReleaseReport {
                commit: r.commit.clone(),
                subject: r.subject.clone(),
                built_at: r.built_at.clone(),
                deployed_at: r.deployed_at.clone(),
                size_bytes: crate::tree::size(&config.root.join(&r.dir)).ok(),
                status,
                slot,
                rollback: target.as_deref() == Some(r.commit.as_str()),
            }
        })
        .collect();
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&list).expect("releases serialize")
        );
        return Ok(());
    }
    let mut text = format!(
        "{}: {} release(s) kept, newest first (releases.keep = {} good ones)\n",
        config.name,
        list.len(),
        config.releases.keep
    );
    for r in &list {
        text.push_str(&release_line(r));
        text.push('\n');
    }
    crate::text::write_stdout(crate::text::printable(&text).as_bytes())
        .map_err(Error::io("cannot write the releases to", "stdout"))
}

fn release_line(r: &ReleaseReport) -> String {
    let mut line = format!(
        "  {}  {:<7}  {}",
        git::short(&r.commit),
        r.status,
        r.slot.map_or("      ".to_string(), |s| format!("slot {s}"))
    );
    line.push_str(&format!("  built {}", r.built_at));
    if let Some(at) = &r.deployed_at {
        line.push_str(&format!("  deployed {at}"));
    }
    if let Some(n) = r.size_bytes {
        line.push_str(&format!("  {:.1} MiB", n as f64 / (1024.0 * 1024.0)));
    }
    if let Some(s) = &r.subject {
        line.push_str(&format!("  {s:?}"));
    }
    if r.rollback {
        line.push_str("  <- `zdd rollback` brings it back");
    }
    line
}

#[derive(Serialize)]
struct HistoryReport<'a> {
    version: u32,
    name: &'a str,
    history: &'a [HistoryEntry],
}

/// `zdd history [--json]`.
pub fn history(config: &Config, json: bool) -> Result<()> {
    let mut state = State::load(&config.state_path(), config.ports)?;
    keeper::fold_restarts(&mut state, &config.root);
    if json {
        let report = HistoryReport {
            version: JSON_VERSION,
            name: &config.name,
            history: &state.history,
        };
        out!(
            "{}",
            serde_json::to_string_pretty(&report).expect("history serializes")
        );
    } else if state.history.is_empty() {
        out!("no deploys recorded yet");
    } else {
        for h in &state.history {
            out!("{}", history_line(h));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Action, Outcome, Phases};

    const V1: &str = "8d0c00ea3c43aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const V2: &str = "5b5d6aec184dbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn slot(slot: Slot, status: &'static str, commit: &str) -> SlotReport {
        SlotReport {
            slot,
            port: if slot == Slot::A { 3001 } else { 3002 },
            status,
            commit: Some(commit.into()),
            subject: None,
            running: false,
            pid: None,
            started_at: None,
            uptime_s: None,
            healthy: None,
            health: None,
            held_by: None,
            supervised: false,
            restarts: 0,
            last_exit: None,
            last_exit_at: None,
            backoff_ms: None,
            auto_rollback: None,
        }
    }

    fn entry(action: Action, outcome: Outcome, reason: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            at: "2026-11-30T08:41:18Z".into(),
            action,
            outcome,
            commit: V2.into(),
            slot: Slot::B,
            previous: Some(V1.into()),
            reason: reason.map(str::to_string),
            restarts: None,
            config: None,
            phases: Phases::example(136),
        }
    }

    /// v2 live in slot b under its keeper, restarted twice; v1 standing by.
    fn report() -> StatusReport {
        let mut b = slot(Slot::B, "live", V2);
        b.subject = Some("v2: second release".into());
        b.running = true;
        b.pid = Some(4339);
        b.started_at = Some("2026-11-30T06:38:08Z".into());
        b.uptime_s = Some(7390);
        b.healthy = Some(true);
        b.health = Some("healthy (1ms)".into());
        b.supervised = true;
        b.restarts = 2;
        b.last_exit = Some("signal: 9 (SIGKILL)".into());
        b.last_exit_at = Some("2026-11-30T08:40:02Z".into());
        StatusReport {
            version: JSON_VERSION,
            name: "shop".into(),
            active: Some(Slot::B),
            next_deploy: Slot::A,
            mode: "switch",
            switch: Some(Slot::B),
            maintenance: None,
            rollback_to: Some(V1.into()),
            slots: vec![slot(Slot::A, "standby", V1), b],
            last: Some(entry(Action::Deploy, Outcome::Ok, None)),
            in_progress: None,
            drift: Vec::new(),
            nginx: Some(NginxSeen {
                url: "http://127.0.0.1:80/.zdd/upstream".into(),
                answered: true,
                routes_to: Some(Slot::B),
                problem: None,
            }),
            processes: vec![ProcessReport {
                name: "worker".into(),
                port: Some(4001),
                dir: Some("/srv/shop/worker".into()),
                command: Some("./worker --queue mail".into()),
                running: true,
                pid: Some(5120),
                started_at: Some("2026-11-30T07:41:18Z".into()),
                uptime_s: Some(3600),
                healthy: Some(true),
                health: Some("healthy (2ms)".into()),
                supervised: true,
                restarts: 0,
                last_exit: None,
                problem: None,
            }],
            serving: true,
            not_serving: None,
        }
    }

    #[test]
    fn status_text_and_json() {
        let r = report();
        insta::assert_snapshot!("status_text", status_text(&r));
        insta::assert_snapshot!("status_json", serde_json::to_string_pretty(&r).unwrap());
    }

    #[test]
    fn status_in_maintenance() {
        let mut r = report();
        r.maintenance = Some(crate::state::MaintenanceState {
            since: "2026-11-30T08:44:00Z".into(),
            message: "Migrating <b>orders</b>\u{1b}[2J; back at 9:00".into(),
        });
        insta::assert_snapshot!("status_text_maintenance", status_text(&r));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["maintenance"]["since"], "2026-11-30T08:44:00Z");
        assert_eq!(
            json["maintenance"]["message"],
            "Migrating <b>orders</b>\u{1b}[2J; back at 9:00"
        );
    }

    #[test]
    fn status_text_with_drift_and_a_deploy_in_progress() {
        let mut r = report();
        r.slots[0].held_by = Some("pid 812 (user bob: python3 -m http.server 3001)".into());
        r.drift = vec![
            "slot a: port 3001 is held by pid 812 (user bob: python3 -m http.server 3001), which zdd cannot prove it started".into(),
            "nginx's switch points at slot a, not at the live slot b; the next `zdd deploy` or `zdd rollback` points it at b".into(),
        ];
        let drifting = status_text(&r);
        r.drift.clear();
        r.in_progress = Some(Holder {
            pid: "5120".into(),
            since: Some("2026-11-30T08:45:00Z".into()),
            command: Some("zdd deploy".into()),
            step: Some("building 5b5d6aec184d in slot a".into()),
        });
        insta::assert_snapshot!(format!("{drifting}---\n{}", status_text(&r)));
    }

    #[test]
    fn status_when_the_site_does_not_serve() {
        let mut r = report();
        assert_eq!(not_serving(&r), None, "the example serves");
        let nginx_down = "nginx does not answer at http://127.0.0.1:80/.zdd/upstream (connection refused), so nothing reaches the app: is nginx running (on nginx.listen = \"80\"), with the config from `zdd nginx`?";
        r.nginx = Some(NginxSeen {
            url: "http://127.0.0.1:80/.zdd/upstream".into(),
            answered: false,
            routes_to: None,
            problem: Some(nginx_down.into()),
        });
        r.not_serving = not_serving(&r);
        assert_eq!(r.not_serving.as_deref(), Some(nginx_down));
        let down = status_text(&r);

        // The live slot's keeper was killed: the slot says so first.
        let b = &mut r.slots[1];
        (b.running, b.pid, b.uptime_s, b.healthy, b.health) = (false, None, None, None, None);
        r.drift = vec!["slot b is live but not running; `zdd up` starts it again".into()];
        r.not_serving = not_serving(&r);
        r.serving = r.not_serving.is_none();
        r.processes[0].running = false;
        (
            r.processes[0].pid,
            r.processes[0].uptime_s,
            r.processes[0].health,
        ) = (None, None, None);
        let dead = status_text(&r);
        insta::assert_snapshot!(format!("{down}---\n{dead}"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["serving"], false);
        assert_eq!(json["nginx"]["answered"], false);
        assert_eq!(json["processes"][0]["name"], "worker");
        assert_eq!(json["processes"][0]["running"], false);

        r.active = None;
        assert!(not_serving(&r)
            .unwrap()
            .starts_with("nothing is deployed yet"));
    }

    #[test]
    fn release_lines() {
        let line = |status, slot, rollback, deployed: Option<&str>| {
            release_line(&ReleaseReport {
                commit: V2.into(),
                subject: Some("v2: second release".into()),
                built_at: "2026-11-30T08:40:00Z".into(),
                deployed_at: deployed.map(str::to_string),
                size_bytes: Some(12 * 1024 * 1024 + 300 * 1024),
                status,
                slot,
                rollback,
            })
        };
        let lines = [
            line("live", Some(Slot::B), false, Some("2026-11-30T08:41:18Z")),
            line("standby", Some(Slot::A), true, Some("2026-11-29T10:00:00Z")),
            line("kept", None, false, Some("2026-11-28T10:00:00Z")),
            line("failed", None, false, None),
        ];
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn history_lines() {
        let mut restart = entry(
            Action::Restart,
            Outcome::Ok,
            Some("its keeper started it again 2 times after it exited on its own (last: signal: 9 (SIGKILL) at 2026-11-30T08:40:02Z)"),
        );
        restart.restarts = Some(2);
        restart.phases = Phases::default();
        let lines = [
            entry(Action::Deploy, Outcome::Ok, None),
            entry(
                Action::Deploy,
                Outcome::Failed,
                Some("not healthy after 30s (last check of http://127.0.0.1:3001/: HTTP 500)\nlast lines of the log"),
            ),
            entry(
                Action::Rollback,
                Outcome::Ok,
                Some("5b5d6aec184d exited 3 times in 4s after its swap; last: exit status: 3"),
            ),
            restart,
        ]
        .iter()
        .map(history_line)
        .collect::<Vec<_>>();
        insta::assert_snapshot!(lines.join("\n"));
    }
}
