//! Steps 6 and 7: start the new slot under its keeper (after a rehearsal
//! on a private port in round-robin mode), record it at once, verify it
//! (health, verify hook, the answer from the right process), then arm its
//! keeper. `start_app` is the one way a slot's app is started, `zdd up`'s
//! too.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::NginxMode;
use crate::error::Result;
use crate::launch;
use crate::process::{self, Started};
use crate::state::{Slot, SlotStatus};
use crate::text::fmt;
use crate::{git, signals};

use super::outcome;
use super::outcome::ms;
use super::plan::Attempt;
use super::run::Run;
use super::step::{self, Step};
use crate::health::Failure;
use crate::text::now;

/// How an app is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Launch {
    /// On its slot's port, under its keeper.
    Start,
    /// Round-robin mode: first on a private port, alone, stopped after.
    Rehearsal,
    /// `zdd up`: the live slot again, where it is.
    Up,
}

impl Launch {
    /// As the log's marker lines and the test fault points name it.
    fn label(self) -> &'static str {
        match self {
            Launch::Start => "start",
            Launch::Rehearsal => "rehearsal",
            Launch::Up => "up",
        }
    }
}

/// Before `attempt.slot` starts: it holds the attempt's release, and
/// `route/SLOT/app` names its folder. The state is saved with the
/// process that starts next (`save_or_stop`); a zdd killed before then
/// leaves a link the next run points back at what the state says.
pub(super) fn hold_release(run: &mut Run, attempt: &Attempt) -> Result<()> {
    let (slot, sha) = (attempt.slot, attempt.sha.as_str());
    let subject = run.state.release(sha).and_then(|r| r.subject.clone());
    let s = run.state.slot_mut(slot);
    if s.commit.as_deref() != Some(sha) {
        s.commit = Some(sha.to_string());
        s.subject = subject;
    }
    run.point_apps();
    Ok(())
}

/// Steps 6 and 7: start the new slot under its keeper, record it at
/// once, verify it. In round-robin mode a new commit first runs a
/// rehearsal on a private port: there nginx sends requests to a slot
/// port as soon as anything listens on it, so a version that listens but
/// answers errors must never listen there. With the switch the new slot
/// is only a backup until the flip, so it is verified where it will
/// serve. `fresh`: a commit that never served from this slot (verify
/// hook, rehearsal).
pub(super) fn start_new(run: &mut Run, attempt: &Attempt, fresh: bool) -> Result<Started> {
    let (target, config) = (attempt.slot, run.config);
    let port = config.port(target);
    run.lock.at_step(&format!(
        "starting {} in slot {target}",
        git::short(&attempt.sha)
    ));
    let t = Instant::now();
    let rehearse = fresh && run.mode == NginxMode::RoundRobin && config.health.rehearse;
    if rehearse {
        let private = match free_port(&config.ports) {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("cannot find a free port for the rehearsal: {e}");
                return Err(outcome::abort_env(run, attempt, reason, None));
            }
        };
        let mut rehearsal = start_verified(run, attempt, private, Launch::Rehearsal, true)?;
        process::stop_group(
            &rehearsal.id,
            config.stop.with(),
            Some(&mut rehearsal.child),
        );
        log::info!(
            "slot {target}: rehearsal on private port {private} passed in {}",
            fmt(t.elapsed())
        );
    }
    let verify_here = fresh && !rehearse;
    let started = start_verified(run, attempt, port, Launch::Start, verify_here)?;
    run.phases.ready_ms = ms(t.elapsed());
    run.copy_start_output();
    let text = format!(
        "slot {target}: pid {} healthy on port {port} after {}",
        started.id.pid,
        fmt(t.elapsed())
    );
    log::info!("{text}");
    run.note(&text);
    Ok(started)
}

/// Start the app of `target` on `port` — under its keeper, or alone for
/// a rehearsal — and record it in the state (not yet saved).
pub(super) fn start_app(
    run: &mut Run,
    target: Slot,
    sha: &str,
    port: u16,
    how: Launch,
    rollback: Option<(u32, Duration, &Path)>,
) -> std::io::Result<Started> {
    // What an earlier start of this attempt wrote (a rehearsal's).
    run.copy_start_output();
    let app = run.app(target, sha, port);
    let marker = format!(
        "{} of {} in slot {target} on port {port}: {}",
        how.label(),
        git::short(sha),
        app.command
    );
    run.note(&format!("{marker} (its output: {})", app.log().display()));
    let log_start = app.mark(&marker);
    // What stays up runs under its keeper; a rehearsal does not stay.
    let started = match how {
        Launch::Rehearsal => app.alone(&run.env_file)?,
        Launch::Start => app.keep(false, rollback)?,
        Launch::Up => app.keep(true, None)?,
    };
    run.start_output = Some((target, log_start));
    let s = run.state.slot_mut(target);
    s.status = SlotStatus::Starting;
    s.process = Some(started.id.clone());
    s.started_at = Some(now());
    s.log_start = log_start;
    s.restarts_recorded = 0;
    Ok(started)
}

/// Start `attempt`'s app on `port` (`start_app`), save the state that
/// records it, and verify it: the health check, then (if `verify`) the
/// verify hook. On failure the new process is stopped and the attempt
/// recorded; the error says why.
fn start_verified(
    run: &mut Run,
    attempt: &Attempt,
    port: u16,
    how: Launch,
    verify: bool,
) -> Result<Started> {
    let label = how.label();
    let (target, sha) = (attempt.slot, attempt.sha.as_str());
    let config = run.config;
    let rollback = attempt.crash_rollback.then_some((
        config.keeper.rollback_after,
        config.keeper.rollback_within,
        config.path.as_path(),
    ));
    let mut started = match start_app(run, target, sha, port, how, rollback) {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("cannot start `{}`: {e}", config.start);
            return Err(outcome::abort_env(run, attempt, reason, None));
        }
    };
    run.save_or_stop(&mut started)?;
    signals::fault_point(label);

    let hook = config.hooks.verify.as_deref().filter(|_| verify);
    let rehearsal = how == Launch::Rehearsal;
    let kept = (!rehearsal).then_some((config.root.as_path(), target.name()));
    let verified = launch::verify(&config.health, port, &mut started, kept, !rehearsal, || {
        hook.map_or(Ok(()), |hook| {
            step::run_step(run, target, sha, port, Step::Verify, hook)
        })
    });
    let why = match verified {
        Ok(()) => return Ok(started),
        Err(Failure::Commit(reason)) if rehearsal => Failure::Commit(format!(
            "{reason} (in the rehearsal on private port {port})"
        )),
        Err(why) => why,
    };
    Err(outcome::abort_with(run, attempt, why, Some(&mut started)))
}

/// A loopback port nothing listens on right now, for a rehearsal; never
/// one of the slot ports, which the kernel may hand out too.
fn free_port(slot_ports: &[u16; 2]) -> std::io::Result<u16> {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !slot_ports.contains(&port) {
            return Ok(port);
        }
    }
}
