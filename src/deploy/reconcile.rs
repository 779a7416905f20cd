//! Step 2: make the state match reality — the processes that run, the
//! trees an earlier zdd left, the switch — and stop what an interrupted
//! run left in the idle slot.

use crate::config::NginxMode;
use crate::error::{Error, Result};
use crate::process::{self, ProcessId};
use crate::state::{Slot, SlotStatus};
use crate::{keeper, observe, steer, switch};

use super::run::Run;
use super::{legacy, plan, swap};

/// Step 2: fold in the keepers' restarts, match the state to the
/// processes that run, adopt an earlier zdd's trees, point the switch at
/// the live slot (proven through nginx), and stop what an interrupted run
/// left in the idle slot.
pub(super) fn with_reality(run: &mut Run) -> Result<()> {
    let restarted = keeper::fold_restarts(&mut run.state, &run.config.root);
    let reconciled = reconcile_processes(run);
    if legacy::adopt_legacy_trees(run)? || reconciled || restarted {
        run.save()?;
    }
    run.point_apps();
    reconcile_switch(run)?;
    stop_leftover(run)?;
    if let Some(live) = run.state.active {
        run.point_current(live);
    }
    Ok(())
}

/// Make the state match the processes that really run (see
/// `observe` and `plan::reconcile`). Returns whether anything changed.
fn reconcile_processes(run: &mut Run) -> bool {
    let alive = observe::alive(&run.state);
    let said = plan::reconcile(&mut run.state, alive);
    for line in &said {
        log::warn!("{line}");
    }
    !said.is_empty()
}

/// The switch is part of reality: it must point at the live slot when
/// that runs (a zdd killed between recording and flipping leaves it
/// behind; the state, written first, says where it belongs). The flip
/// is proven through nginx before anything is stopped: if nginx does not
/// follow it while the other slot runs, the other slot is what serves,
/// and it is recorded as live instead.
pub(super) fn reconcile_switch(run: &mut Run) -> Result<()> {
    let config = run.config;
    let root = &config.root;
    let Some(live) = run.state.active else {
        return Ok(());
    };
    let runs = |slot: Slot| run.state.slot(slot).process.is_some();
    if run.mode != NginxMode::Switch || !runs(live) {
        return Ok(());
    }
    let want = run.position(live);
    let was = match switch::read(root) {
        Ok(Some(p)) if p == want => return Ok(()),
        Ok(Some(p)) if p.slot == live => {
            // Only maintenance differs (a `zdd maintenance` interrupted).
            return flip_or_attention(run, want);
        }
        Ok(Some(p)) => {
            log::warn!("nginx's switch points at slot {}, away from the live slot {live} (an earlier zdd was interrupted); pointing it at slot {live}", p.slot);
            p.slot
        }
        Ok(None) => {
            log::info!(
                "pointing the new switch {} at the live slot {live}",
                switch::link(root).display()
            );
            live.other()
        }
        Err(e) => {
            return Err(Error::NeedsAttention(format!(
                "cannot read the switch {}: {e}",
                switch::link(root).display()
            )))
        }
    };
    flip_or_attention(run, want)?;
    let other_runs = runs(was);
    match steer::confirm(config, NginxMode::Switch, live, other_runs) {
        Ok(routed) => {
            swap::note_routing(run, routed);
            Ok(())
        }
        Err(not) if other_runs && not.picked == Some(was) => {
            // nginx does not follow the switch: it serves from `was`.
            flip_or_attention(run, run.position(was))?;
            log::warn!(
                "{}; slot {was}, which nginx still uses, is live again",
                not.reason
            );
            run.state.slot_mut(was).status = SlotStatus::Live;
            run.state.slot_mut(live).status = SlotStatus::Starting;
            run.state.active = Some(was);
            run.state.next_deploy = live;
            run.save()
        }
        Err(not) => {
            log::warn!("{}", not.reason);
            Ok(())
        }
    }
}

/// Point the switch at `to`, or stop: a switch zdd cannot set needs
/// the operator.
fn flip_or_attention(run: &Run, to: switch::Position) -> Result<()> {
    let root = &run.config.root;
    switch::flip(root, to).map_err(|e| {
        Error::NeedsAttention(format!(
            "cannot point the switch {} at slot {}: {e}",
            switch::link(root).display(),
            to.slot
        ))
    })
}

/// With the live slot running, whatever runs in the other slot is a
/// leftover of an interrupted run (a build, a new slot never swapped in,
/// an old slot never stopped): nginx no longer picks it, so drain and
/// stop it, and one slot serves.
fn stop_leftover(run: &mut Run) -> Result<()> {
    let Some(live) = run.state.active else {
        return Ok(());
    };
    let idle = live.other();
    if run.state.slot(live).process.is_none() {
        return Ok(());
    }
    let Some(id) = run.state.slot(idle).process.clone() else {
        return Ok(());
    };
    stop_earlier_run(run, idle, &id)
}

/// Stop the group an earlier run recorded in `slot` (drained first
/// when nginx no longer picks the slot) and forget it in the state.
pub(super) fn stop_earlier_run(run: &mut Run, slot: Slot, id: &ProcessId) -> Result<()> {
    log::warn!(
        "slot {slot}: pid {} from an earlier run still runs; stopping it",
        id.pid
    );
    let pointed = switch::read(&run.config.root)
        .ok()
        .flatten()
        .map(|p| p.slot);
    if run.mode == NginxMode::Switch && pointed != Some(slot) {
        swap::settle_and_drain(run, slot);
    }
    keeper::fold_restarts(&mut run.state, &run.config.root);
    process::stop_group(id, run.config.stop.with(), None);
    run.state.slot_mut(slot).forget_process();
    run.save()
}
