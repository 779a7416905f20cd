//! `zdd up` for the live slot: at boot, start it again where it is, built,
//! under a keeper that supervises it from the start; or, if it runs, make
//! sure a keeper watches it.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::git;
use crate::health::{Checker, Failure};
use crate::process;
use crate::state::{Action, HistoryEntry, Outcome, Phases, Slot, SlotStatus};
use crate::text::{fmt, out};
use crate::{keeper, launch};

use super::outcome::ms;
use super::run::Run;
use super::start::{self, Launch};
use super::{clear, reconcile};
use crate::text::now;

/// `zdd up` for the live slot: start it again where it is, built, under
/// an armed keeper, if it does not run.
pub(super) fn up_live(run: &mut Run) -> Result<()> {
    let Some(live) = run.state.active else {
        out!("nothing deployed yet; nothing to start");
        return Ok(());
    };
    let s = run.state.slot(live).clone();
    let sha = s.commit.clone().unwrap_or_default();
    let short = git::short(&sha).to_string();
    if let Some(id) = &s.process {
        return up_running(run, live, &short, id.pid);
    }
    if !run.tree(live).is_dir() {
        return Err(Error::NeedsAttention(format!(
            "slot {live} holds {short}, the live release, but its folder {} is gone: deploy it again (`zdd deploy {short}`)",
            run.tree(live).display()
        )));
    }
    clear::clear_port(run, live)?;
    run.lock
        .at_step(&format!("starting {short} in slot {live}"));
    let port = run.config.port(live);
    let t = Instant::now();
    let mut started = start::start_app(run, live, &sha, port, Launch::Up, None)
        .map_err(|e| Error::Failed(format!("cannot start `{}`: {e}", run.config.start)))?;
    run.state.slot_mut(live).status = SlotStatus::Live;
    run.save_or_stop(&mut started)?;
    // Its keeper supervises it from the start: nothing to arm.
    let verdict = launch::verify(
        &run.config.health,
        port,
        &mut started,
        Some((run.config.root.as_path(), live.name())),
        false,
        || Ok(()),
    );
    // Running under its keeper either way: nginx sends it requests once
    // it answers; until then its keeper keeps it trying.
    reconcile::reconcile_switch(run)?;
    run.point_current(live);
    let (outcome, reason) = match &verdict {
        Ok(()) => (Outcome::Ok, "started by zdd up".to_string()),
        Err(Failure::Commit(r)) => (Outcome::Failed, r.clone()),
        Err(Failure::Environment(r)) => (Outcome::Error, r.clone()),
        Err(Failure::Interrupted(sig)) => (
            Outcome::Interrupted,
            format!("zdd up interrupted by {}", sig.as_str()),
        ),
    };
    run.state.push_history(HistoryEntry {
        at: now(),
        action: Action::Restart,
        outcome,
        commit: sha.clone(),
        slot: live,
        previous: None,
        reason: Some(reason.clone()),
        restarts: None,
        config: None,
        phases: Phases {
            ready_ms: ms(t.elapsed()),
            total_ms: ms(run.started.elapsed()),
            ..Phases::default()
        },
    });
    run.save()?;
    match verdict {
        Ok(()) => {
            out!(
                "started {short} in slot {live} (port {port}), healthy after {}",
                fmt(t.elapsed())
            );
            Ok(())
        }
        _ => Err(Error::Failed(format!(
            "slot {live} ({short}) is not healthy yet: {reason}; it stays under its keeper, which keeps starting it again (`zdd status` shows its last exit){}",
            process::tail_note(&run.log_path(live))
        ))),
    }
}

/// `zdd up` for a live slot that runs: under an armed keeper, nothing to
/// do; under a keeper never armed (zdd was killed while it checked it),
/// arm it if it is healthy; with no keeper (started by an older zdd),
/// say how to put it under one.
fn up_running(run: &Run, live: Slot, short: &str, pid: i32) -> Result<()> {
    let kept = keeper::read_status(&run.config.root, live.name(), pid);
    match kept {
        Some(k) if k.armed_at.is_some() => {
            out!("slot {live} runs {short} already (pid {pid})");
            Ok(())
        }
        Some(_) => {
            let port = run.config.port(live);
            Checker::new(&run.config.health, port)
                .check()
                .map_err(|why| {
                    Error::Failed(format!(
                        "slot {live} runs {short} under a keeper zdd never armed, and it is not healthy ({why}): `zdd stop {live}`, then `zdd up`"
                    ))
                })?;
            keeper::arm(pid).map_err(|e| {
                Error::Failed(format!("cannot arm slot {live}'s keeper (pid {pid}): {e}"))
            })?;
            out!("slot {live} runs {short} (pid {pid}); its keeper now restarts it if it exits");
            Ok(())
        }
        None => Err(Error::Failed(format!(
            "slot {live} runs {short} (pid {pid}) without a keeper (an older zdd started it), so nothing restarts it if it dies: `zdd stop {live}`, then `zdd up`"
        ))),
    }
}
