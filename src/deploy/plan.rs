//! What a deploy or rollback does, decided from plain data — the state,
//! its history, the live slot's health, the resolved commit — with no
//! process, file or network in sight, so that every decision has a test;
//! and the plain data of one attempt (`Attempt`, `Resolved`).

use crate::state::{Action, HistoryEntry, Outcome, Slot, SlotStatus, State};

/// One deploy or rollback: which commit goes to which slot.
pub(super) struct Attempt {
    pub(super) action: Action,
    pub(super) slot: Slot,
    pub(super) sha: String,
    /// The commit that was live before, if any.
    pub(super) previous: Option<String>,
    /// The branch whose tip `sha` is, if it is (what cron deploys).
    pub(super) tip_of: Option<String>,
    /// Why it happens, if zdd was told (a keeper's automatic rollback).
    pub(super) because: Option<String>,
    /// Its keeper may roll it back if it crash-loops after the swap (a new
    /// release, with the previous one standing by).
    pub(super) crash_rollback: bool,
    /// A kept release deployed again: no checkout, no build.
    pub(super) reused: bool,
}

impl Attempt {
    pub(super) fn new(action: Action, slot: Slot, sha: &str, previous: Option<String>) -> Attempt {
        Attempt {
            action,
            slot,
            sha: sha.to_string(),
            previous,
            tip_of: None,
            because: None,
            crash_rollback: false,
            reused: false,
        }
    }

    pub(super) fn what(&self) -> &'static str {
        self.action.as_str()
    }
}

/// The commit step 3 resolved.
pub(super) struct Resolved {
    pub(super) sha: String,
    pub(super) subject: String,
    /// The `git fetch` and the resolution.
    pub(super) fetch_time: std::time::Duration,
}

/// What a deploy does with the commit it resolved (step 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It is live and healthy: nothing to do. `say`: a person named it
    /// (cron stays silent).
    AlreadyLive { slot: Slot, say: bool },
    /// The branch's tip is live and runs, but fails its health check: cron
    /// does not rebuild it over the previous release (a person may).
    UnhealthyTip { slot: Slot, why: String },
    /// Cron leaves this commit alone until the branch moves; `warn` when
    /// nothing healthy serves.
    CronSkip { why: String, warn: bool },
    /// The live commit `sha` does not run (a reboot, a killed keeper, `zdd
    /// stop`): start it again where it is, built. Also what cron does when
    /// it leaves the tip alone (`skipped` says why): the site must not stay
    /// down.
    RestartInPlace {
        slot: Slot,
        sha: String,
        skipped: Option<String>,
    },
    /// Check it out, build it and bring it up in the idle slot.
    Deploy { target: Slot },
}

/// What [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub state: &'a State,
    /// The commit resolved.
    pub sha: &'a str,
    /// A person named it (`zdd deploy COMMIT`), rather than cron's tip.
    pub named: bool,
    /// The live slot's health right now: `None` when nothing live runs.
    pub live_health: Option<Result<(), String>>,
    /// The commit checked out in the live slot's work tree, if any.
    pub live_head: Option<String>,
    /// The config's `Config::fingerprint` now.
    pub config: &'a str,
}

/// Step 3's decision.
pub fn decide(f: &Facts) -> Decision {
    let state = f.state;
    if let Some(slot) = state.active.filter(|_| state.live_commit() == Some(f.sha)) {
        match (&f.live_health, f.named) {
            (Some(Ok(())), named) => return Decision::AlreadyLive { slot, say: named },
            (Some(Err(why)), false) => {
                return Decision::UnhealthyTip {
                    slot,
                    why: why.clone(),
                }
            }
            _ => {}
        }
    }
    // The live commit, if it does not run but is there to start again.
    let dead_live = state.active.and_then(|live| {
        let s = state.slot(live);
        let commit = s.commit.as_deref()?;
        (s.process.is_none() && f.live_head.as_deref() == Some(commit))
            .then(|| (live, commit.to_string()))
    });
    if !f.named {
        if let Some(why) = cron_skip(&state.history, f.sha, f.config) {
            if let Some((slot, sha)) = dead_live {
                return Decision::RestartInPlace {
                    slot,
                    sha,
                    skipped: Some(why),
                };
            }
            let warn = !matches!(f.live_health, Some(Ok(())));
            return Decision::CronSkip { why, warn };
        }
    }
    if let Some((slot, sha)) = dead_live.filter(|(_, sha)| sha == f.sha) {
        return Decision::RestartInPlace {
            slot,
            sha,
            skipped: None,
        };
    }
    Decision::Deploy {
        target: state.next_deploy,
    }
}

/// Why cron (a deploy without COMMIT) leaves `sha` alone, if it does: its
/// last deploy failed because of the commit itself, under the same config
/// (`config`, a fingerprint; entries of older zdds have none and count as
/// the same), or an operator (or its keeper) rolled back away from it since
/// it was last deployed.
pub fn cron_skip(history: &[HistoryEntry], sha: &str, config: &str) -> Option<String> {
    history
        .iter()
        .rev()
        .find_map(|h| match (h.action, h.outcome) {
            (Action::Deploy, Outcome::Failed)
                if h.commit == sha && h.config.as_deref().is_none_or(|c| c == config) =>
            {
                Some(Some(format!("failed to deploy at {}", h.at)))
            }
            (Action::Deploy, _) if h.commit == sha => Some(None),
            (Action::Rollback, Outcome::Ok) if h.previous.as_deref() == Some(sha) => {
                Some(Some(format!("was rolled back at {}", h.at)))
            }
            _ => None,
        })?
}

/// What `zdd rollback` brings back, and to which slot: the newest good
/// release older than the live one (releases are kept oldest first, a
/// deploy moving its release to the end; a rollback reorders nothing, so
/// rolling back again steps further back), started in the idle slot.
pub fn rollback_target(state: &State) -> Result<(Slot, String), String> {
    let target = match state.active {
        Some(live) => live.other(),
        None => state.next_deploy,
    };
    let live = state.live_commit();
    let older = match live.and_then(|c| state.releases.iter().position(|r| r.commit == c)) {
        Some(at) => &state.releases[..at],
        None => &state.releases[..],
    };
    match older
        .iter()
        .rev()
        .find(|r| r.good() && Some(r.commit.as_str()) != live)
    {
        Some(r) => Ok((target, r.commit.clone())),
        None => Err(format!(
            "nothing to roll back to: {}",
            match state.releases.iter().filter(|r| r.good()).count() {
                0 => "no release has gone live yet".to_string(),
                _ => format!(
                    "no good release is older than the live one ({}); `zdd releases` lists the kept ones",
                    live.map(crate::git::short).unwrap_or("none")
                ),
            }
        )),
    }
}

/// What a keeper's rollback of a crash-looping release brings back: the
/// release that was live before its deploy, if it is kept and good (after
/// an operator's rollback that is not the newest older one).
pub fn crash_rollback_target(state: &State) -> Option<(Slot, String)> {
    let live_slot = state.active?;
    let live = state.live_commit()?;
    let before = state
        .history
        .iter()
        .rev()
        .find(|h| h.action == Action::Deploy && h.outcome == Outcome::Ok && h.commit == live)?
        .previous
        .clone()?;
    let kept = state.release(&before).is_some_and(|r| r.good()) && before != live;
    kept.then(|| (live_slot.other(), before))
}

/// The releases to remove after a swap: good ones beyond the newest
/// `keep`, and ones that never went live; never one a slot holds (the
/// live one, the one standing by) nor the rollback target.
pub fn to_prune(state: &State, keep: u32) -> Vec<String> {
    let target = rollback_target(state).ok().map(|(_, sha)| sha);
    let held = |sha: &str| {
        Slot::BOTH
            .iter()
            .any(|&s| state.slot(s).commit.as_deref() == Some(sha))
            || target.as_deref() == Some(sha)
    };
    let mut good_seen = 0;
    let mut prune = Vec::new();
    // Newest first.
    for r in state.releases.iter().rev() {
        let keep_it = match r.good() {
            true => {
                good_seen += 1;
                good_seen <= keep
            }
            false => false,
        };
        if !keep_it && !held(&r.commit) {
            prune.push(r.commit.clone());
        }
    }
    prune
}

/// Make the state match which slots' processes really run (`alive`,
/// a then b); returns what it corrected, one sentence each.
pub fn reconcile(state: &mut State, alive: [bool; 2]) -> Vec<String> {
    let mut said = Vec::new();
    for slot in Slot::BOTH {
        let s = state.slot_mut(slot);
        if let Some(id) = &s.process {
            if !alive[slot.index()] {
                said.push(format!("slot {slot}: recorded pid {} is gone", id.pid));
                s.forget_process();
            }
        }
    }
    // The live slot is never the one a deploy overwrites.
    if state.active == Some(state.next_deploy) {
        let live = state.next_deploy;
        said.push(format!(
            "state names slot {live} both live and next to deploy; the next deploy goes to slot {}",
            live.other()
        ));
        state.next_deploy = live.other();
    }
    // zdd was killed mid-swap and the slot recorded as live does not run
    // (the old one was stopped before the record, or the new one died
    // after it): the app that runs in the other slot is what serves, so it
    // is the live one. (A build or hook is recorded without a start time,
    // and never counts.)
    if let Some(live) = state.active {
        let other = live.other();
        let o = state.slot(other);
        if state.slot(live).process.is_none() && o.process.is_some() && o.started_at.is_some() {
            said.push(format!(
                "slot {other} runs and slot {live} does not: an earlier zdd was interrupted mid-swap; slot {other} is live"
            ));
            state.slot_mut(live).status = SlotStatus::Standby;
            state.slot_mut(other).status = SlotStatus::Live;
            state.active = Some(other);
            state.next_deploy = live;
        }
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessId;
    use crate::state::Phases;

    const V1: &str = "1111111111111111111111111111111111111111";
    const V2: &str = "2222222222222222222222222222222222222222";

    fn pid(n: i32) -> Option<ProcessId> {
        Some(ProcessId {
            pid: n,
            start_time: 1,
            boot_id: "boot".into(),
            cgroup: None,
            marks: Vec::new(),
        })
    }

    /// v1 live in slot a (running), v2 standing by in slot b.
    fn live_v1() -> State {
        let mut s = State::fresh([3001, 3002]);
        s.active = Some(Slot::A);
        s.next_deploy = Slot::B;
        s.slots.a.status = SlotStatus::Live;
        s.slots.a.commit = Some(V1.into());
        s.slots.a.process = pid(10);
        s.slots.a.started_at = Some("t".into());
        s.slots.b.status = SlotStatus::Standby;
        s.slots.b.commit = Some(V2.into());
        s
    }

    fn entry(
        action: Action,
        outcome: Outcome,
        commit: &str,
        previous: Option<&str>,
    ) -> HistoryEntry {
        HistoryEntry {
            at: "2026-11-30T10:00:00Z".into(),
            action,
            outcome,
            commit: commit.into(),
            slot: Slot::A,
            previous: previous.map(str::to_string),
            reason: None,
            restarts: None,
            config: None,
            phases: Phases::default(),
        }
    }

    fn facts<'a>(state: &'a State, sha: &'a str, named: bool) -> Facts<'a> {
        Facts {
            state,
            sha,
            named,
            live_health: Some(Ok(())),
            live_head: Some(V1.into()),
            config: "c0",
        }
    }

    #[test]
    fn the_live_commit_again_is_nothing_to_do_and_cron_says_nothing() {
        let s = live_v1();
        let said = |named| decide(&facts(&s, V1, named));
        assert_eq!(
            said(true),
            Decision::AlreadyLive {
                slot: Slot::A,
                say: true
            }
        );
        assert_eq!(
            said(false),
            Decision::AlreadyLive {
                slot: Slot::A,
                say: false
            }
        );
    }

    #[test]
    fn an_unhealthy_live_tip_is_not_rebuilt_by_cron_but_by_a_person() {
        let s = live_v1();
        let mut f = facts(&s, V1, false);
        f.live_health = Some(Err("HTTP 500".into()));
        assert_eq!(
            decide(&f),
            Decision::UnhealthyTip {
                slot: Slot::A,
                why: "HTTP 500".into()
            }
        );
        f.named = true;
        assert_eq!(decide(&f), Decision::Deploy { target: Slot::B });
    }

    #[test]
    fn cron_skips_a_failed_or_rolled_back_tip_until_the_branch_moves() {
        let mut s = live_v1();
        s.history
            .push(entry(Action::Deploy, Outcome::Failed, V2, Some(V1)));
        match decide(&facts(&s, V2, false)) {
            Decision::CronSkip { why, warn } => {
                assert_eq!(why, "failed to deploy at 2026-11-30T10:00:00Z");
                assert!(!warn, "the live slot is healthy");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&facts(&s, V2, true)),
            Decision::Deploy { target: Slot::B },
            "a person may"
        );
        // A later successful deploy of it clears the skip...
        s.history
            .push(entry(Action::Deploy, Outcome::Ok, V2, Some(V1)));
        assert_eq!(cron_skip(&s.history, V2, "c0"), None);
        // ...and a rollback away from it sets it again.
        s.history
            .push(entry(Action::Rollback, Outcome::Ok, V1, Some(V2)));
        assert_eq!(
            cron_skip(&s.history, V2, "c0").as_deref(),
            Some("was rolled back at 2026-11-30T10:00:00Z")
        );
        // Environment errors are retried.
        let mut e = live_v1();
        e.history
            .push(entry(Action::Deploy, Outcome::Error, V2, Some(V1)));
        assert_eq!(cron_skip(&e.history, V2, "c0"), None);
    }

    #[test]
    fn a_live_commit_that_does_not_run_starts_again_where_it_is() {
        let mut s = live_v1();
        s.slots.a.process = None;
        let mut f = facts(&s, V1, false);
        f.live_health = None;
        assert_eq!(
            decide(&f),
            Decision::RestartInPlace {
                slot: Slot::A,
                sha: V1.into(),
                skipped: None
            }
        );
        f.live_head = Some(V2.into());
        assert_eq!(
            decide(&f),
            Decision::Deploy { target: Slot::B },
            "its checkout differs: build it anew"
        );
    }

    #[test]
    fn a_failure_under_another_config_is_a_new_attempt() {
        let mut s = live_v1();
        let mut failed = entry(Action::Deploy, Outcome::Failed, V2, Some(V1));
        failed.config = Some("c0".into());
        s.history.push(failed);
        assert!(cron_skip(&s.history, V2, "c0").is_some(), "the same config");
        assert_eq!(cron_skip(&s.history, V2, "c1"), None, "zdd.toml changed");
        s.history.last_mut().unwrap().config = None;
        assert!(
            cron_skip(&s.history, V2, "c1").is_some(),
            "an older zdd's entry counts as the same"
        );
    }

    #[test]
    fn cron_that_leaves_the_tip_alone_still_starts_a_dead_live_slot() {
        let mut s = live_v1();
        s.history
            .push(entry(Action::Deploy, Outcome::Failed, V2, Some(V1)));
        s.slots.a.process = None;
        let mut f = facts(&s, V2, false);
        f.live_health = None;
        assert_eq!(
            decide(&f),
            Decision::RestartInPlace {
                slot: Slot::A,
                sha: V1.into(),
                skipped: Some("failed to deploy at 2026-11-30T10:00:00Z".into())
            }
        );
        f.live_head = None;
        assert!(
            matches!(decide(&f), Decision::CronSkip { warn: true, .. }),
            "its checkout is gone: nothing to start, say so"
        );
    }

    fn release(commit: &str, deployed: bool) -> crate::state::Release {
        crate::state::Release {
            commit: commit.into(),
            subject: None,
            dir: crate::state::release_dir(commit),
            built_at: "t".into(),
            deployed_at: deployed.then(|| "t".into()),
        }
    }

    #[test]
    fn pruning_keeps_the_newest_good_releases_and_what_slots_hold() {
        let mut s = live_v1();
        let sha = |i: u8| format!("{:040}", i);
        // Oldest first: r0..r5 good, r6 never live, then v2 (standby), v1 (live).
        s.releases = (0..6).map(|i| release(&sha(i), true)).collect();
        s.releases.push(release(&sha(6), false));
        s.releases.push(release(V2, true));
        s.releases.push(release(V1, true));
        // keep 3: v1, v2 and r5; r6 never went live.
        assert_eq!(
            to_prune(&s, 3),
            [sha(6), sha(4), sha(3), sha(2), sha(1), sha(0)]
        );
        // keep 1: only v1 counts, but v2 is held by slot b and is the target.
        assert!(!to_prune(&s, 1).contains(&V2.to_string()));
        assert!(to_prune(&s, 1).contains(&sha(5)));
    }

    #[test]
    fn a_keepers_rollback_goes_back_to_what_served_before() {
        const V3: &str = "cccccccccccccccccccccccccccccccccccccccc";
        const V4: &str = "dddddddddddddddddddddddddddddddddddddddd";
        let mut s = live_v1();
        // v2, v3 deployed; rolled back to v2; then v4 deployed over v2.
        s.releases = vec![release(V2, true), release(V3, true), release(V4, true)];
        s.slots.a.commit = Some(V4.into());
        s.history
            .push(entry(Action::Deploy, Outcome::Ok, V4, Some(V2)));
        assert_eq!(
            rollback_target(&s),
            Ok((Slot::B, V3.into())),
            "the newest older"
        );
        assert_eq!(
            crash_rollback_target(&s),
            Some((Slot::B, V2.into())),
            "what served"
        );
        s.releases.retain(|r| r.commit != V2);
        assert_eq!(crash_rollback_target(&s), None, "pruned: the plain rule");
    }

    #[test]
    fn rollback_steps_back_through_good_releases() {
        const V3: &str = "cccccccccccccccccccccccccccccccccccccccc";
        const BAD: &str = "dddddddddddddddddddddddddddddddddddddddd";
        let mut s = live_v1();
        // Oldest first: v2, a release that never went live, v3; v1 live.
        s.releases = vec![
            release(V2, true),
            release(BAD, false),
            release(V3, true),
            release(V1, true),
        ];
        assert_eq!(rollback_target(&s), Ok((Slot::B, V3.into())));
        // Rolled back to v3 (no reordering): the next one is v2.
        s.slots.a.commit = Some(V3.into());
        assert_eq!(rollback_target(&s), Ok((Slot::B, V2.into())));
        s.slots.a.commit = Some(V2.into());
        assert!(rollback_target(&s).unwrap_err().starts_with(
            "nothing to roll back to: no good release is older than the live one (222222222222)"
        ));
        let fresh = State::fresh([1, 2]);
        assert_eq!(
            rollback_target(&fresh).unwrap_err(),
            "nothing to roll back to: no release has gone live yet"
        );
    }

    #[test]
    fn reconcile_follows_what_runs() {
        // The recorded live pid is gone; the other slot's app runs: it is live.
        let mut s = live_v1();
        s.slots.b.process = pid(20);
        s.slots.b.started_at = Some("t".into());
        s.slots.b.status = SlotStatus::Starting;
        let said = reconcile(&mut s, [false, true]);
        assert_eq!(said.len(), 2, "{said:?}");
        assert_eq!(s.active, Some(Slot::B));
        assert_eq!(s.next_deploy, Slot::A);
        assert_eq!(s.slots.b.status, SlotStatus::Live);
        assert_eq!(s.slots.a.status, SlotStatus::Standby);
        // A build (no start time) never becomes live.
        let mut s = live_v1();
        s.slots.a.process = None;
        s.slots.b.process = pid(20);
        let said = reconcile(&mut s, [false, true]);
        assert!(said.is_empty(), "{said:?}");
        assert_eq!(s.active, Some(Slot::A));
        // Live and next the same: the next deploy goes elsewhere.
        let mut s = live_v1();
        s.next_deploy = Slot::A;
        reconcile(&mut s, [true, false]);
        assert_eq!(s.next_deploy, Slot::B);
    }
}
