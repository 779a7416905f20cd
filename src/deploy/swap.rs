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

use super::outcome::ms;
use super::plan::Attempt;
use super::run::Run;
use crate::health::Failure;

/// The settle while nginx runs a site of an earlier zdd, whose switch
/// picks the slot per request head: the earlier default.
pub(super) const HEAD_TIME_SETTLE: Duration = Duration::from_secs(1);

/// What [`Run::record_live`] replaced in the state.
#[derive(Clone, Copy)]
pub(super) struct Recorded {
    active: Option<Slot>,
    next_deploy: Slot,
    old_status: SlotStatus,
}

impl Run<'_> {
    /// Step 8: steer nginx to the new slot — flip the switch and confirm,
    /// or wait for round-robin failover — recording it live. From here on
    /// zdd finishes the swap even if signalled.
    pub(super) fn steer(
        &mut self,
        attempt: &Attempt,
        started: &mut Started,
        must_route: bool,
    ) -> Result<()> {
        self.lock
            .at_step(&format!("swapping to slot {}", attempt.slot));
        match self.mode {
            NginxMode::Switch => self.flip_to(attempt, started, must_route),
            NginxMode::RoundRobin => self.await_failover(attempt, started, must_route),
        }
    }

    /// Record `target` as live and `next_deploy` as the other slot. The
    /// state leads reality: written before the flip, so that a zdd killed
    /// from here on leaves a state whose live slot the next run makes the
    /// switch point at. Returns what it replaced, for [`Run::unrecord_live`].
    pub(super) fn record_live(&mut self, target: Slot, started: &mut Started) -> Result<Recorded> {
        let old = target.other();
        let before = Recorded {
            active: self.state.active,
            next_deploy: self.state.next_deploy,
            old_status: self.state.slot(old).status,
        };
        self.state.slot_mut(target).status = SlotStatus::Live;
        if self.state.slot(old).status == SlotStatus::Live {
            self.state.slot_mut(old).status = SlotStatus::Standby;
        }
        self.state.active = Some(target);
        self.state.next_deploy = old;
        self.save_or_stop(started)?;
        Ok(before)
    }

    /// Undo [`Run::record_live`] and save: the old slot is live again and
    /// the new one, still recorded, a leftover. Saved before the switch is
    /// pointed back and the new slot stopped, so that a zdd killed meanwhile
    /// leaves the next run to finish the back-out, not the swap.
    pub(super) fn unrecord_live(&mut self, target: Slot, before: Recorded) -> Result<()> {
        self.state.active = before.active;
        self.state.next_deploy = before.next_deploy;
        self.state.slot_mut(target.other()).status = before.old_status;
        self.state.slot_mut(target).status = SlotStatus::Starting;
        self.save()
    }

    /// Step 8 with the switch: record, flip, confirm through nginx. A signal
    /// before the flip, or an nginx that never shows the new slot, puts
    /// everything back: switch, state, the new slot stopped.
    pub(super) fn flip_to(
        &mut self,
        attempt: &Attempt,
        started: &mut Started,
        must_route: bool,
    ) -> Result<()> {
        let (target, config) = (attempt.slot, self.config);
        let root = &config.root;
        let before = self.record_live(target, started)?;
        signals::fault_point("recorded");
        if let Some(sig) = signals::pending() {
            self.unrecord_live(target, before)?;
            return Err(self.abort_with(attempt, Failure::Interrupted(sig), Some(started)));
        }
        let t = Instant::now();
        if let Err(e) = switch::flip(root, self.position(target)) {
            self.unrecord_live(target, before)?;
            let reason = format!(
                "cannot flip the switch {}: {e}",
                switch::link(root).display()
            );
            return Err(self.abort_env(attempt, reason, Some(started)));
        }
        signals::fault_point("flipped");
        match steer::confirm(config, NginxMode::Switch, target, must_route) {
            Ok(routed) => {
                self.phases.route_ms = ms(t.elapsed());
                self.note_routing(routed);
                log::info!("nginx routes to slot {target} after {}", fmt(t.elapsed()));
                Ok(())
            }
            Err(steer::NotRouted {
                reason, answered, ..
            }) if must_route => {
                self.nginx_silent |= !answered;
                self.unrecord_live(target, before)?;
                signals::fault_point("backing-out");
                let was = target.other();
                if let Err(e) = switch::flip(root, self.position(was)) {
                    return Err(Error::NeedsAttention(format!(
                        "{reason}; and pointing the switch back at slot {was} failed: {e}; both slots still run and slot {was} is recorded as live again: fix {} and run zdd again, which points the switch at slot {was} and stops slot {target}",
                        switch::link(root).display()
                    )));
                }
                let reason = format!("{reason}; the switch points at slot {was} again");
                Err(self.abort_env(attempt, reason, Some(started)))
            }
            // A first deploy that nginx answers but routes elsewhere is
            // not a success: nothing would reach it.
            Err(not) if not.answered => {
                self.unrecord_live(target, before)?;
                Err(self.abort_env(attempt, not.reason, Some(started)))
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
    pub(super) fn await_failover(
        &mut self,
        attempt: &Attempt,
        started: &mut Started,
        must_route: bool,
    ) -> Result<()> {
        let target = attempt.slot;
        let t = Instant::now();
        match steer::confirm(self.config, NginxMode::RoundRobin, target, must_route) {
            Ok(Routed::Waited) => self.phases.route_ms = ms(t.elapsed()),
            Ok(_) => {
                self.phases.route_ms = ms(t.elapsed());
                log::info!("nginx routes to slot {target} after {}", fmt(t.elapsed()));
            }
            Err(not) if must_route => {
                self.nginx_silent |= !not.answered;
                return Err(self.abort_env(attempt, not.reason, Some(started)));
            }
            // Nothing else serves, so there is nothing to protect: go on.
            Err(not) => log::warn!("{}", not.reason),
        }
        // Recorded as live before the old slot is signalled: if zdd dies
        // during the drain, the next run must find the serving slot live
        // and the draining one as the leftover to stop.
        self.record_live(target, started).map(|_| ())
    }

    /// Before a new slot listens in switch mode: nginx's probe must show the
    /// switch routing to the live slot `live`. A switch nginx cannot resolve
    /// (a folder it cannot search), a server block with a root of its own,
    /// a config without the switch: the new slot would get requests before
    /// it is verified, or never. Nothing is started then.
    pub(super) fn check_routing(&mut self, attempt: &Attempt, live: Slot) -> Result<()> {
        if self.mode != NginxMode::Switch {
            return Ok(());
        }
        match steer::confirm(self.config, NginxMode::Switch, live, true) {
            Ok(routed) => {
                self.note_routing(routed);
                Ok(())
            }
            Err(not) => {
                self.nginx_silent |= !not.answered;
                let reason = format!(
                    "before slot {} was started, nginx did not show its switch routing to the live slot {live}: {}",
                    attempt.slot, not.reason
                );
                Err(self.abort_env(attempt, reason, None))
            }
        }
    }

    /// Remember how nginx picks the slot: a site rendered by an earlier
    /// zdd picks it per request head, and needs the old settle.
    pub(super) fn note_routing(&mut self, routed: Routed) {
        if routed == Routed::AtHead && !self.head_time {
            log::warn!(
                "nginx runs a site rendered by an earlier zdd, whose switch (`if (-f {}/b)`) picks the slot when a request's head arrives: run `zdd nginx --write --reload` to pick it when nginx connects; until then the old slot serves on for at least {} after a flip, and an upload that outlasts that may fail",
                switch::head_time_dir(&self.config.root).display(),
                humantime::format_duration(HEAD_TIME_SETTLE)
            );
            self.head_time = true;
        }
    }

    /// How long the old slot serves on after the flip: `stop.settle`, at
    /// least [`HEAD_TIME_SETTLE`] while nginx picks slots per request head.
    fn settle(&self) -> Duration {
        match self.head_time {
            true => self.config.stop.settle.max(HEAD_TIME_SETTLE),
            false => self.config.stop.settle,
        }
    }

    /// Before a slot nginx no longer picks is signalled: let it serve for
    /// the settle (none by default), then wait, bounded, until nothing has
    /// waited on its port (queued or unread) for `steer::QUIET`.
    pub(super) fn settle_and_drain(&self, slot: Slot) {
        std::thread::sleep(self.settle());
        let port = self.config.port(slot);
        match steer::drain_queue(port, self.config.nginx.route_timeout) {
            steer::Queue::Empty(d) => log::debug!("slot {slot}: nothing waits on port {port} after {}", fmt(d)),
            steer::Queue::NotListening => log::debug!("slot {slot}: nothing listens on port {port}"),
            steer::Queue::Unknown => {
                // Blind: give what nginx sent before the flip the earlier guard.
                let guard = HEAD_TIME_SETTLE.saturating_sub(self.settle());
                log::warn!(
                    "slot {slot}: cannot read the queues of port {port} (no sock_diag here); stopping it after {} more",
                    humantime::format_duration(guard)
                );
                std::thread::sleep(guard);
            }
            steer::Queue::Busy { queued, unread } => log::warn!(
                "slot {slot}: {queued} connection(s) still queued and {unread} byte(s) unread on port {port} after {}; stopping it anyway",
                humantime::format_duration(self.config.nginx.route_timeout)
            ),
        }
    }

    /// The rest of step 8: the old slot, which nginx no longer picks,
    /// serves on until its accept queue is empty, then gets its stop
    /// signal; whatever still reached it after is said.
    pub(super) fn stop_old(&mut self, old: Slot, old_id: &ProcessId) {
        let config = self.config;
        self.lock.at_step(&format!("stopping slot {old}"));
        signals::fault_point("confirmed");
        let old_port = config.port(old);
        if self.mode == NginxMode::Switch {
            let t = Instant::now();
            self.settle_and_drain(old);
            self.phases.settle_ms = ms(t.elapsed());
        }
        let t = Instant::now();
        let signal = config.stop.signal;
        // Anything queued for the old slot after its stop signal: nginx
        // connected there after the flip. (In round-robin mode nginx may
        // still pick it: nothing to say.)
        let switch_mode = self.mode == NginxMode::Switch;
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
        if late > 0 && self.head_time {
            log::warn!(
                "slot {old}: {late} connection(s) reached port {old_port} after its stop signal: uploads whose heads nginx routed there before the flip and that took longer than {} to arrive; if the server had stopped accepting, nginx answered them 502 (run `zdd nginx --write --reload`)",
                humantime::format_duration(self.settle())
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
        self.phases.drain_ms = ms(t.elapsed());
    }
}
