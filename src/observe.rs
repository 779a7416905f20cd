//! What really runs, looked at once and held against the state file: for
//! each slot, whether its recorded process group runs and is provably
//! zdd's, who else listens on its port, what its keeper says; and where
//! nginx's switch points. `zdd status` reports the differences (drift); a
//! deploy corrects them (`deploy::plan::reconcile`).

use crate::config::Config;
use crate::keeper::{self, KeeperStatus};
use crate::ports::{self, Listener};
use crate::process::{self, ProcessId};
use crate::state::{Slot, SlotStatus, State};
use crate::switch;

/// One slot as it really is.
#[derive(Debug, Clone, Default)]
pub struct SlotSeen {
    /// Its recorded process group runs, provably zdd's.
    pub running: bool,
    /// Who listens on its port and is not provably of it, described.
    pub strangers: Vec<String>,
    /// What its keeper says, if the recorded process is a keeper.
    pub keeper: Option<KeeperStatus>,
    /// A keeper of it that runs unrecorded (zdd was killed just after
    /// starting it).
    pub unrecorded: Option<i32>,
    /// Processes left in its app's cgroup that no keeper vouches for.
    pub remnants: Vec<String>,
}

/// Both slots and the switch as they really are.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub slots: [SlotSeen; 2],
    /// Where nginx's switch points (switch mode only).
    pub switch: Option<Slot>,
}

/// Which slots' recorded process groups run, provably zdd's (a, then b):
/// all a deploy needs to reconcile (`deploy::plan::reconcile`).
pub fn alive(state: &State) -> [bool; 2] {
    Slot::BOTH.map(|slot| {
        let s = state.slot(slot);
        s.process.as_ref().is_some_and(|id| id.group_is_ours())
    })
}

/// Look at what runs for `state` (and at the switch, in switch mode).
pub fn observe(config: &Config, state: &State, switch_mode: bool) -> Seen {
    let alive = alive(state);
    let root = &config.root;
    let slots = Slot::BOTH.map(|slot| {
        let s = state.slot(slot);
        let running = alive[slot.index()];
        let id = s.process.as_ref().filter(|_| running);
        let pgid = id.map(|id| id.pid);
        let strangers = ports::listeners(config.port(slot), &pgid.into_iter().collect::<Vec<_>>())
            .into_iter()
            .filter(|l: &Listener| !l.pid.is_some_and(|pid| id.is_some_and(|id| id.owns(pid))))
            .map(|l| l.described(root, slot.name()))
            .collect();
        let keeper = pgid.and_then(|pid| keeper::read_status(root, slot.name(), pid));
        // The status file that names the running keeper names no other.
        let recorded = s.process.as_ref().map(|id| id.pid);
        let unrecorded = match keeper {
            Some(_) => None,
            None => keeper::unrecorded(root, slot.name(), recorded).map(|id| id.pid),
        };
        let remnants = match running {
            true => Vec::new(),
            false => ProcessId::remnants(root, slot.name())
                .map(|(_, left)| process::fence::describe(&left))
                .unwrap_or_default(),
        };
        SlotSeen {
            running,
            strangers,
            keeper,
            unrecorded,
            remnants,
        }
    });
    let switch = switch_mode
        .then(|| switch::read(&config.root).ok())
        .flatten()
        .flatten()
        .map(|p| p.slot);
    Seen { slots, switch }
}

impl Seen {
    pub fn slot(&self, slot: Slot) -> &SlotSeen {
        &self.slots[slot.index()]
    }

    /// Where the state file and reality differ, one sentence each, saying
    /// what the next deploy does about it.
    pub fn drift(&self, state: &State) -> Vec<String> {
        let mut drift = Vec::new();
        let live_runs = state.active.is_some_and(|a| self.slot(a).running);
        for slot in Slot::BOTH {
            let (s, seen) = (state.slot(slot), self.slot(slot));
            if let (Some(id), false) = (&s.process, seen.running) {
                drift.push(format!(
                    "slot {slot}: recorded pid {} is not running",
                    id.pid
                ));
            }
            for l in &seen.strangers {
                drift.push(format!(
                    "slot {slot}: port {} is held by {l}, which zdd cannot prove it started",
                    s.port
                ));
            }
            if let Some(pid) = seen.unrecorded {
                drift.push(format!(
                    "slot {slot}: keeper pid {pid} from an interrupted run still runs, not in the state; the next `zdd deploy` stops it"
                ));
            }
            if !seen.remnants.is_empty() {
                drift.push(format!(
                    "slot {slot}: {} process(es) of a stopped app still run in its cgroup ({}); the next `zdd deploy` stops them",
                    seen.remnants.len(),
                    seen.remnants.join(", ")
                ));
            }
            if state.active == Some(slot) && !seen.running {
                drift.push(format!("slot {slot} is live but not running"));
            }
            if seen.running && state.active != Some(slot) && s.status != SlotStatus::Live {
                drift.push(format!(
                    "slot {slot}: pid {} from an interrupted deploy still runs; the next `zdd deploy` {}",
                    s.process.as_ref().map_or(0, |id| id.pid),
                    if live_runs { "stops it" } else { "records it as live" }
                ));
            }
        }
        if let (Some(points), Some(live)) = (self.switch, state.active) {
            if points != live && live_runs {
                drift.push(format!(
                    "nginx's switch points at slot {points}, not at the live slot {live}; the next `zdd deploy` or `zdd rollback` points it at {live}"
                ));
            }
        }
        drift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_lines() {
        let mut state = State::fresh([3001, 3002]);
        state.active = Some(Slot::B);
        state.next_deploy = Slot::A;
        let id = |pid| ProcessId {
            pid,
            start_time: 1,
            boot_id: "boot".into(),
            cgroup: None,
            marks: Vec::new(),
        };
        state.slot_mut(Slot::A).status = SlotStatus::Standby;
        state.slot_mut(Slot::B).status = SlotStatus::Live;
        state.slot_mut(Slot::B).process = Some(id(4339));
        let seen = Seen {
            slots: [
                SlotSeen {
                    running: false,
                    strangers: vec!["pid 812 (user bob: python3 -m http.server 3001)".into()],
                    keeper: None,
                    unrecorded: Some(5120),
                    remnants: vec!["pid 901 (python3 helper.py)".into()],
                },
                SlotSeen {
                    running: true,
                    ..SlotSeen::default()
                },
            ],
            switch: Some(Slot::A),
        };
        insta::assert_snapshot!(seen.drift(&state).join("\n"));
    }
}
