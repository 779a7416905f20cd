//! Step 8, the swap: record the new slot live, flip the switch (or wait
//! for round-robin failover), confirm through nginx, put everything back if
//! nginx does not follow; then drain the old slot and stop it.

use std::time::{Duration, Instant};

use crate::config::NginxMode;
use crate::error::{Error, Result};
use crate::process::{self, ProcessId, Started, Stopped};
use crate::state::{Slot, SlotStatus};
use crate::steer::{self, Routed};
use crate::text::fmt;
use crate::{signals, switch};

use super::outcome::{self, ms};
use super::plan::Attempt;
use super::run::Run;
use crate::health::Failure;

/// The settle while nginx runs a site of an earlier zdd, whose switch
/// picks the slot per request head: the earlier default.
pub(super) const HEAD_TIME_SETTLE: Duration = Duration::from_secs(1);

/// What [`record_live`] replaced in the state.
#[derive(Clone, Copy)]
struct Recorded {
    active: Option<Slot>,
    next_deploy: Slot,
    old_status: SlotStatus,
}

/// Step 8: steer nginx to the new slot — flip the switch and confirm,
/// or wait for round-robin failover — recording it live. From here on
/// zdd finishes the swap even if signalled.
pub(super) fn steer(
    run: &mut Run,
    attempt: &Attempt,
    started: &mut Started,
    must_route: bool,
) -> Result<()> {
    run.lock
        .at_step(&format!("swapping to slot {}", attempt.slot));
    match run.mode {
        NginxMode::Switch => flip_to(run, attempt, started, must_route),
        NginxMode::RoundRobin => await_failover(run, attempt, started, must_route),
    }
}

/// Record `target` as live and `next_deploy` as the other slot. The
/// state leads reality: written before the flip, so that a zdd killed
/// from here on leaves a state whose live slot the next run makes the
/// switch point at. Returns what it replaced, for [`unrecord_live`].
fn record_live(run: &mut Run, target: Slot, started: &mut Started) -> Result<Recorded> {
    let old = target.other();
    let before = Recorded {
        active: run.state.active,
        next_deploy: run.state.next_deploy,
        old_status: run.state.slot(old).status,
    };
    run.state.slot_mut(target).status = SlotStatus::Live;
    if run.state.slot(old).status == SlotStatus::Live {
        run.state.slot_mut(old).status = SlotStatus::Standby;
    }
    run.state.active = Some(target);
    run.state.next_deploy = old;
    run.save_or_stop(started)?;
    Ok(before)
}

/// Undo [`record_live`] and save: the old slot is live again and
/// the new one, still recorded, a leftover. Saved before the switch is
/// pointed back and the new slot stopped, so that a zdd killed meanwhile
/// leaves the next run to finish the back-out, not the swap.
fn unrecord_live(run: &mut Run, target: Slot, before: Recorded) -> Result<()> {
    run.state.active = before.active;
    run.state.next_deploy = before.next_deploy;
    run.state.slot_mut(target.other()).status = before.old_status;
    run.state.slot_mut(target).status = SlotStatus::Starting;
    run.save()
}

/// Step 8 with the switch: record, flip, confirm through nginx. A signal
/// before the flip, or an nginx that never shows the new slot, puts
/// everything back: switch, state, the new slot stopped.
fn flip_to(
    run: &mut Run,
    attempt: &Attempt,
    started: &mut Started,
    must_route: bool,
) -> Result<()> {
    let (target, config) = (attempt.slot, run.config);
    let root = &config.root;
    let before = record_live(run, target, started)?;
    signals::fault_point("recorded");
    if let Some(sig) = signals::pending() {
        unrecord_live(run, target, before)?;
        return Err(outcome::abort_with(
            run,
            attempt,
            Failure::Interrupted(sig),
            Some(started),
        ));
    }
    let t = Instant::now();
    if let Err(e) = switch::flip(root, run.position(target)) {
        unrecord_live(run, target, before)?;
        let reason = format!(
            "cannot flip the switch {}: {e}",
            switch::link(root).display()
        );
        return Err(outcome::abort_env(run, attempt, reason, Some(started)));
    }
    signals::fault_point("flipped");
    match steer::confirm(config, NginxMode::Switch, target, must_route) {
        Ok(routed) => {
            run.phases.route_ms = ms(t.elapsed());
            note_routing(run, routed);
            log::info!("nginx routes to slot {target} after {}", fmt(t.elapsed()));
            Ok(())
        }
        Err(steer::NotRouted {
            reason, answered, ..
        }) if must_route => {
            run.nginx_silent |= !answered;
            unrecord_live(run, target, before)?;
            signals::fault_point("backing-out");
            let was = target.other();
            if let Err(e) = switch::flip(root, run.position(was)) {
                return Err(Error::NeedsAttention(format!(
                    "{reason}; and pointing the switch back at slot {was} failed: {e}; both slots still run and slot {was} is recorded as live again: fix {} and run zdd again, which points the switch at slot {was} and stops slot {target}",
                    switch::link(root).display()
                )));
            }
            let reason = format!("{reason}; the switch points at slot {was} again");
            Err(outcome::abort_env(run, attempt, reason, Some(started)))
        }
        // A first deploy that nginx answers but routes elsewhere is
        // not a success: nothing would reach it.
        Err(not) if not.answered => {
            unrecord_live(run, target, before)?;
            Err(outcome::abort_env(run, attempt, not.reason, Some(started)))
        }
        // nginx is not up yet and nothing else serves: go on.
        Err(not) => {
            log::warn!("{}", not.reason);
            Ok(())
        }
    }
}

/// Step 8 in round-robin mode: wait until nginx's failover routes to
/// the new slot, then record it as live.
fn await_failover(
    run: &mut Run,
    attempt: &Attempt,
    started: &mut Started,
    must_route: bool,
) -> Result<()> {
    let target = attempt.slot;
    let t = Instant::now();
    match steer::confirm(run.config, NginxMode::RoundRobin, target, must_route) {
        Ok(Routed::Waited) => run.phases.route_ms = ms(t.elapsed()),
        Ok(_) => {
            run.phases.route_ms = ms(t.elapsed());
            log::info!("nginx routes to slot {target} after {}", fmt(t.elapsed()));
        }
        Err(not) if must_route => {
            run.nginx_silent |= !not.answered;
            return Err(outcome::abort_env(run, attempt, not.reason, Some(started)));
        }
        // Nothing else serves, so there is nothing to protect: go on.
        Err(not) => log::warn!("{}", not.reason),
    }
    // Recorded as live before the old slot is signalled: if zdd dies
    // during the drain, the next run must find the serving slot live
    // and the draining one as the leftover to stop.
    record_live(run, target, started).map(|_| ())
}

/// Before a new slot listens in switch mode: nginx's probe must show the
/// switch routing to the live slot `live`. A switch nginx cannot resolve
/// (a folder it cannot search), a server block with a root of its own,
/// a config without the switch: the new slot would get requests before
/// it is verified, or never. Nothing is started then.
pub(super) fn check_routing(run: &mut Run, attempt: &Attempt, live: Slot) -> Result<()> {
    if run.mode != NginxMode::Switch {
        return Ok(());
    }
    match steer::confirm(run.config, NginxMode::Switch, live, true) {
        Ok(routed) => {
            note_routing(run, routed);
            Ok(())
        }
        Err(not) => {
            run.nginx_silent |= !not.answered;
            let reason = format!(
                "before slot {} was started, nginx did not show its switch routing to the live slot {live}: {}",
                attempt.slot, not.reason
            );
            Err(outcome::abort_env(run, attempt, reason, None))
        }
    }
}

/// Remember how nginx picks the slot: a site rendered by an earlier
/// zdd picks it per request head, and needs the old settle.
pub(super) fn note_routing(run: &mut Run, routed: Routed) {
    if routed == Routed::AtHead && !run.head_time {
        log::warn!(
            "nginx runs a site rendered by an earlier zdd, whose switch (`if (-f {}/b)`) picks the slot when a request's head arrives: run `zdd nginx --write --reload` to pick it when nginx connects; until then the old slot serves on for at least {} after a flip, and an upload that outlasts that may fail",
            switch::head_time_dir(&run.config.root).display(),
            humantime::format_duration(HEAD_TIME_SETTLE)
        );
        run.head_time = true;
    }
}

/// How long the old slot serves on after the flip: `stop.settle`, at
/// least [`HEAD_TIME_SETTLE`] while nginx picks slots per request head.
fn settle(run: &Run) -> Duration {
    match run.head_time {
        true => run.config.stop.settle.max(HEAD_TIME_SETTLE),
        false => run.config.stop.settle,
    }
}

/// Before a slot nginx no longer picks is signalled: let it serve for
/// the settle (none by default), then wait, bounded, until nothing has
/// waited on its port (queued or unread) for `steer::QUIET`.
pub(super) fn settle_and_drain(run: &Run, slot: Slot) {
    std::thread::sleep(settle(run));
    let port = run.config.port(slot);
    match steer::drain_queue(port, run.config.nginx.route_timeout) {
        steer::Queue::Empty(d) => log::debug!("slot {slot}: nothing waits on port {port} after {}", fmt(d)),
        steer::Queue::NotListening => log::debug!("slot {slot}: nothing listens on port {port}"),
        steer::Queue::Unknown => {
            // Blind: give what nginx sent before the flip the earlier guard.
            let guard = HEAD_TIME_SETTLE.saturating_sub(settle(run));
            log::warn!(
                "slot {slot}: cannot read the queues of port {port} (no sock_diag here); stopping it after {} more",
                humantime::format_duration(guard)
            );
            std::thread::sleep(guard);
        }
        steer::Queue::Busy { queued, unread } => log::warn!(
            "slot {slot}: {queued} connection(s) still queued and {unread} byte(s) unread on port {port} after {}; stopping it anyway",
            humantime::format_duration(run.config.nginx.route_timeout)
        ),
    }
}

/// The rest of step 8: the old slot, which nginx no longer picks,
/// serves on until its accept queue is empty, then gets its stop
/// signal; whatever still reached it after is said.
pub(super) fn stop_old(run: &mut Run, old: Slot, old_id: &ProcessId) {
    let config = run.config;
    run.lock.at_step(&format!("stopping slot {old}"));
    signals::fault_point("confirmed");
    let old_port = config.port(old);
    if run.mode == NginxMode::Switch {
        let t = Instant::now();
        settle_and_drain(run, old);
        run.phases.settle_ms = ms(t.elapsed());
    }
    let t = Instant::now();
    let signal = config.stop.signal;
    // Anything queued for the old slot after its stop signal: nginx
    // connected there after the flip. (In round-robin mode nginx may
    // still pick it: nothing to say.)
    let switch_mode = run.mode == NginxMode::Switch;
    let mut late = 0;
    let mut watch = || {
        if switch_mode {
            if let Ok(Some(n)) = crate::ports::accept_queue(old_port) {
                late = late.max(n);
            }
        }
        signals::fault_point("stopping");
    };
    let stopped = process::stop_group_watched(old_id, config.stop.with(), None, &mut watch);
    if late > 0 && run.head_time {
        log::warn!(
            "slot {old}: {late} connection(s) reached port {old_port} after its stop signal: uploads whose heads nginx routed there before the flip and that took longer than {} to arrive; if the server had stopped accepting, nginx answered them 502 (run `zdd nginx --write --reload`)",
            humantime::format_duration(settle(run))
        );
    } else if late > 0 {
        log::warn!(
            "slot {old}: {late} connection(s) reached port {old_port} after its stop signal: nginx connected there after the flip, which it does when slot {} refuses a connection",
            old.other()
        );
    }
    if !stopped.outside.is_empty() {
        log::info!(
            "slot {old}: its app had left {} process(es) outside its process group, stopped with it: {}",
            stopped.outside.len(),
            stopped.outside.join(", ")
        );
    }
    match stopped.how {
        Stopped::Exited(d) => log::info!("slot {old}: pid {} exited {} after {signal}", old_id.pid, fmt(d)),
        Stopped::Killed(d) => log::warn!(
            "slot {old}: pid {} did not exit within {} of {signal}; killed its process group ({} in all)",
            old_id.pid,
            humantime::format_duration(config.stop.timeout),
            fmt(d)
        ),
        Stopped::NotRunning => log::info!("slot {old}: already stopped"),
    }
    run.phases.drain_ms = ms(t.elapsed());
}
