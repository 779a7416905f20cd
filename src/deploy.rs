//! Deploy and rollback, step by step as in SPEC §6: lock, reconcile,
//! resolve, clear the idle slot's port, check out and build, start, verify,
//! confirm nginx routes to the new slot, stop the old one, record.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use crate::config::{Config, NginxMode};
use crate::error::{Error, Result};
use crate::health::{self, Checker, Verified};
use crate::lock::{Lock, LockWait};
use crate::process::{self, Spec, Started, StepEnd, StopWith, Stopped};
use crate::state::{Action, HistoryEntry, Outcome, Phases, Slot, SlotStatus, State};
use crate::steer::{self, Routed};
use crate::text::{fmt, fmt_ms, out};
use crate::{fsutil, git, keeper, nginx, root, signals, switch};

/// `zdd deploy [COMMIT]`.
pub fn deploy(config: &Config, commit: Option<&str>, wait: LockWait) -> Result<()> {
    let named = commit
        .map(git::Rev::parse)
        .transpose()
        .map_err(Error::Usage)?;
    let commit = named.as_ref();
    let repo = config.repo.clone().ok_or_else(|| {
        Error::Usage(format!(
            "{}: set `repo` to deploy from it",
            config.path.display()
        ))
    })?;
    let mut run = Run::begin(config, wait, "zdd deploy")?;
    let target = run.state.next_deploy;
    let checkout = run.checkout(target)?;
    let dir = checkout.work_tree.clone();
    run.lock
        .at_step(&format!("fetching {repo} into slot {target}"));

    // Step 3: fetch and resolve.
    let t = Instant::now();
    checkout.ensure().map_err(Error::Failed)?;
    let fetched = checkout.fetch(&repo);
    run.check_signal("nothing was deployed")?;
    fetched.map_err(|e| Error::Failed(format!("cannot fetch {repo}: {e}")))?;
    let branch = git::Rev::parse(&config.branch)
        .map_err(|e| Error::Usage(format!("{}: branch: {e}", config.path.display())))?;
    let wanted = commit.unwrap_or(&branch);
    let git::Commit { sha, subject } = checkout.resolve(wanted).ok_or_else(|| {
        Error::Usage(match commit {
            Some(c) => format!(
                "unknown commit {:?}: not a sha, tag or branch in {repo}",
                c.as_str()
            ),
            None => format!(
                "branch {:?} not found in {repo}; set `branch` in the config",
                wanted.as_str()
            ),
        })
    })?;
    let short = git::short(&sha).to_string();
    let fetch_time = t.elapsed();

    let live_health = run.live_health();
    if run.state.live_commit() == Some(sha.as_str()) {
        let slot = run.state.active.expect("a live commit has a slot");
        match (&live_health, commit) {
            (Some(Ok(())), Some(_)) => {
                out!("{short} is already live in slot {slot}; nothing to do");
                return Ok(());
            }
            (Some(Ok(())), None) => {
                log::debug!("{wanted} is {short}, already live in slot {slot}; nothing to do");
                return Ok(());
            }
            // Running but failing its health check: cron does not rebuild
            // the same commit over the previous release; a person may.
            (Some(Err(why)), None) => {
                return Err(Error::Failed(format!(
                    "slot {slot} runs {short}, the tip of {wanted}, but fails its health check ({why}); cron does not deploy the same commit again over the previous release: run `zdd deploy {short}` to do so"
                )));
            }
            _ => {}
        }
    }
    if commit.is_none() {
        if let Some(why) = run.cron_skip(&sha) {
            let text = format!(
                "{wanted} is {short}, which {why}; not deploying it until {wanted} moves (`zdd deploy {short}` deploys it now)"
            );
            match live_health {
                Some(Ok(())) => log::debug!("{text}"),
                // Nothing healthy serves: say so, whatever the level.
                _ => log::warn!("{text}; and the live slot is not healthy"),
            }
            return Ok(());
        }
    }
    log::info!(
        "fetched in {}: {wanted} is {short} {subject:?}",
        fmt(fetch_time)
    );
    let subject = Some(subject);

    // The live commit does not run (after a reboot, or `zdd stop`): start
    // it again where it is, built, instead of rebuilding it elsewhere.
    if let Some(live) = run.state.active {
        let s = run.state.slot(live);
        if s.commit.as_deref() == Some(sha.as_str())
            && s.process.is_none()
            && run.checkout(live)?.head().as_deref() == Some(sha.as_str())
        {
            log::info!(
                "slot {live} holds {short}, the live commit, but does not run; starting it again"
            );
            run.clear_port(live)?;
            let attempt = Attempt::new(Action::Deploy, live, &sha, Some(sha.clone()));
            return run.bring_up(attempt, false);
        }
    }

    // Step 4: the idle slot's port must be free, or held by our own leftover.
    run.clear_port(target)?;

    // Step 5: check out and build. From here on the slot no longer holds
    // what it held before, so say so in the state first.
    let mut attempt = Attempt::new(
        Action::Deploy,
        target,
        &sha,
        run.state.live_commit().map(str::to_string),
    );
    // Cron deploys the branch's tip: only a failure of that commit makes
    // cron wait for the branch to move.
    let is_tip = commit.is_none() || checkout.resolve(&branch).is_some_and(|tip| tip.sha == sha);
    attempt.tip_of = is_tip.then(|| config.branch.clone());
    {
        let s = run.state.slot_mut(target);
        s.status = SlotStatus::Starting;
        s.commit = Some(sha.clone());
        s.subject.clone_from(&subject);
    }
    run.save()?;
    run.lock
        .at_step(&format!("checking out {short} in slot {target}"));
    let t = Instant::now();
    if let Err(e) = checkout.checkout(&sha) {
        return Err(run.abort_env(&attempt, format!("cannot check out {short}: {e}"), None));
    }
    if let Some(user) = &config.user {
        // The build and the app run as this user and write in the slot.
        if let Err(e) = fsutil::chown_tree(&dir, user.uid, user.gid) {
            let reason = format!("cannot give {} to user {}: {e}", dir.display(), user.name);
            return Err(run.abort_env(&attempt, reason, None));
        }
    }
    run.phases.fetch_ms = ms(fetch_time + t.elapsed());
    log::info!("slot {target}: checked out {short} in {}", fmt(t.elapsed()));

    let t = Instant::now();
    run.lock
        .at_step(&format!("building {short} in slot {target}"));
    for (label, command) in [
        (
            "after_checkout hook",
            config.hooks.after_checkout.as_deref(),
        ),
        ("build", config.build.as_deref()),
        ("before_start hook", config.hooks.before_start.as_deref()),
    ] {
        let Some(command) = command else { continue };
        let step = Instant::now();
        if let Err(e) = run.step(target, &sha, config.port(target), label, command) {
            return Err(run.abort_with(&attempt, e, None));
        }
        log::info!("slot {target}: {label} done in {}", fmt(step.elapsed()));
    }
    run.phases.build_ms = ms(t.elapsed());

    run.bring_up(attempt, true)
}

/// `zdd rollback`.
/// `zdd rollback`; `because` says why in the history (a keeper's automatic
/// rollback), and `if_live` makes it roll back only while that commit is
/// the live one.
pub fn rollback(
    config: &Config,
    wait: LockWait,
    because: Option<&str>,
    if_live: Option<&str>,
) -> Result<()> {
    let mut run = Run::begin(config, wait, "zdd rollback")?;
    // A keeper's rollback names itself (SLOT:KEEPER_PID): only while the
    // app it keeps is the live one, not a release deployed since.
    if let Some(keeper) = if_live {
        let still = keeper.split_once(':').is_some_and(|(slot, pid)| {
            let live = run.state.active;
            Slot::parse(slot).is_some_and(|s| Some(s) == live)
                && live
                    .and_then(|s| run.state.slot(s).process.as_ref())
                    .is_some_and(|id| id.pid.to_string() == pid)
        });
        if !still {
            out!("the release {keeper} kept is no longer live; nothing to roll back");
            return Ok(());
        }
    }
    let target = run.state.next_deploy;
    let slot = run.state.slot(target).clone();
    let commit = match (slot.status, slot.commit) {
        (SlotStatus::Standby, Some(c)) => c,
        (status, commit) => {
            return Err(Error::Usage(format!(
                "nothing to roll back to: slot {target} holds {} ({}), not a previous release",
                commit.as_deref().map(git::short).unwrap_or("no commit"),
                status.as_str()
            )))
        }
    };
    let dir = run.slot_dir(target);
    if run.checkout(target)?.head().as_deref() != Some(commit.as_str()) {
        return Err(Error::NeedsAttention(format!(
            "slot {target} should hold {} but its checkout in {} differs; deploy a commit instead",
            git::short(&commit),
            dir.display()
        )));
    }
    run.clear_port(target)?;
    let previous = run.state.live_commit().map(str::to_string);
    let mut attempt = Attempt::new(Action::Rollback, target, &commit, previous.clone());
    attempt.because = because.map(|why| match &previous {
        Some(p) => format!("{} {why}", git::short(p)),
        None => why.to_string(),
    });
    run.bring_up(attempt, false)
}

/// `zdd up`: at boot, from what is on disk and without fetching, start the
/// live slot if it does not run, and every recorded named process that does
/// not; each under a keeper that supervises it from the start (an app that
/// cannot start yet — its database is not up — is tried again, backing
/// off), each verified. Nothing else: no fetch, no build, no swap.
pub fn up(config: Option<&Config>, wait: LockWait) -> Result<()> {
    let mut errors = Vec::new();
    if let Some(config) = config {
        // Whatever stops the live slot, the named processes still get their
        // turn; the exit code is the worst of all.
        match Run::begin(config, wait, "zdd up") {
            Ok(mut run) => errors.extend(run.up_live().err()),
            Err(e) => errors.push(e),
        }
    }
    errors.extend(crate::named::up(config, wait));
    Error::worst_of(errors)
}

/// One deploy or rollback: which commit goes to which slot.
struct Attempt {
    action: Action,
    slot: Slot,
    sha: String,
    /// The commit that was live before, if any.
    previous: Option<String>,
    /// The branch whose tip `sha` is, if it is (what cron deploys).
    tip_of: Option<String>,
    /// Why it happens, if zdd was told (a keeper's automatic rollback).
    because: Option<String>,
    /// Its keeper may roll it back if it crash-loops after the swap (a new
    /// release, with the previous one standing by).
    crash_rollback: bool,
}

impl Attempt {
    fn new(action: Action, slot: Slot, sha: &str, previous: Option<String>) -> Attempt {
        Attempt {
            action,
            slot,
            sha: sha.to_string(),
            previous,
            tip_of: None,
            because: None,
            crash_rollback: false,
        }
    }

    fn what(&self) -> &'static str {
        self.action.as_str()
    }
}

/// What [`Run::record_live`] replaced in the state.
#[derive(Clone, Copy)]
struct Recorded {
    active: Option<Slot>,
    next_deploy: Slot,
    old_status: SlotStatus,
}

/// One deploy or rollback in progress: holds the lock and the state.
struct Run<'a> {
    config: &'a Config,
    state: State,
    state_path: PathBuf,
    started: Instant,
    phases: Phases,
    /// How nginx is steered (`nginx::mode`).
    mode: NginxMode,
    lock: Lock,
}

impl<'a> Run<'a> {
    /// Steps 1 and 2: lock, load, reconcile with reality.
    fn begin(config: &'a Config, wait: LockWait, command: &str) -> Result<Run<'a>> {
        let started = Instant::now();
        root::prepare(
            &config.root,
            &[root::SLOTS, root::GIT, root::LOGS, root::RUN, root::SWITCH],
        )?;
        for slot in Slot::BOTH {
            root::check_file(&process::log_path(&config.root, slot.name()))?;
        }
        let mode = nginx::mode(config)?;
        let lock = Lock::acquire(&config.root, wait, command)?;
        let state_path = config.state_path();
        let state = State::load(&state_path, config.ports)?;
        let mut run = Run {
            config,
            state,
            state_path,
            started,
            phases: Phases::default(),
            mode,
            lock,
        };
        let restarted = keeper::fold_restarts(&mut run.state, &config.root);
        if run.reconcile() || restarted {
            run.save()?;
        }
        run.reconcile_switch()?;
        run.stop_leftover()?;
        if let Some(live) = run.state.active {
            run.point_current(live);
        }
        Ok(run)
    }

    /// Make the state match the processes that really run. Returns whether
    /// anything changed.
    fn reconcile(&mut self) -> bool {
        let before = self.state.clone();
        for slot in Slot::BOTH {
            let s = self.state.slot_mut(slot);
            if let Some(id) = &s.process {
                if !id.group_is_ours() {
                    log::warn!("slot {slot}: recorded pid {} is gone", id.pid);
                    s.process = None;
                    s.started_at = None;
                }
            }
        }
        // The live slot is never the one a deploy overwrites.
        if self.state.active == Some(self.state.next_deploy) {
            let live = self.state.next_deploy;
            log::warn!("state names slot {live} both live and next to deploy; the next deploy goes to slot {}", live.other());
            self.state.next_deploy = live.other();
        }
        // zdd was killed mid-swap and the slot recorded as live does not run
        // (the old one was stopped before the record, or the new one died
        // after it): the app that runs in the other slot is what serves, so
        // it is the live one. (A build or hook is recorded without a start
        // time, and never counts.)
        if let Some(live) = self.state.active {
            let other = live.other();
            let live_running = self.state.slot(live).process.is_some();
            let o = self.state.slot(other);
            if !live_running && o.process.is_some() && o.started_at.is_some() {
                log::warn!("slot {other} runs and slot {live} does not: an earlier zdd was interrupted mid-swap; slot {other} is live");
                self.state.slot_mut(live).status = SlotStatus::Standby;
                self.state.slot_mut(other).status = SlotStatus::Live;
                self.state.active = Some(other);
                self.state.next_deploy = live;
            }
        }
        self.state != before
    }

    /// The switch is part of reality: it must point at the live slot when
    /// that runs (a zdd killed between recording and flipping leaves it
    /// behind; the state, written first, says where it belongs). The flip
    /// is proven through nginx before anything is stopped: if nginx does not
    /// follow it while the other slot runs, the other slot is what serves,
    /// and it is recorded as live instead.
    fn reconcile_switch(&mut self) -> Result<()> {
        let config = self.config;
        let root = &config.root;
        let Some(live) = self.state.active else {
            return Ok(());
        };
        let runs = |slot: Slot| self.state.slot(slot).process.is_some();
        if self.mode != NginxMode::Switch || !runs(live) {
            return Ok(());
        }
        let was = match switch::read(root) {
            Ok(s) if s == live => return Ok(()),
            Ok(s) => s,
            Err(e) => {
                return Err(Error::NeedsAttention(format!(
                    "cannot read the switch {}: {e}",
                    switch::file(root).display()
                )))
            }
        };
        log::warn!("nginx's switch points at slot {was}, away from the live slot {live} (an earlier zdd was interrupted); pointing it at slot {live}");
        let flip = |to: Slot| {
            switch::flip(root, to).map_err(|e| {
                Error::NeedsAttention(format!(
                    "cannot point the switch {} at slot {to}: {e}",
                    switch::file(root).display()
                ))
            })
        };
        flip(live)?;
        let other_runs = runs(was);
        match steer::confirm(
            config,
            NginxMode::Switch,
            live,
            config.port(live),
            other_runs,
        ) {
            Ok(_) => Ok(()),
            Err(not) if other_runs && not.picked == Some(steer::upstream_of(config, was)) => {
                // nginx does not follow the switch: it serves from `was`.
                flip(was)?;
                log::warn!(
                    "{}; slot {was}, which nginx still uses, is live again",
                    not.reason
                );
                self.state.slot_mut(was).status = SlotStatus::Live;
                self.state.slot_mut(live).status = SlotStatus::Starting;
                self.state.active = Some(was);
                self.state.next_deploy = live;
                self.save()
            }
            Err(not) => {
                log::warn!("{}", not.reason);
                Ok(())
            }
        }
    }

    /// With the live slot running, whatever runs in the other slot is a
    /// leftover of an interrupted run (a build, a new slot never swapped in,
    /// an old slot never stopped): nginx no longer picks it, so drain and
    /// stop it, and one slot serves.
    fn stop_leftover(&mut self) -> Result<()> {
        let Some(live) = self.state.active else {
            return Ok(());
        };
        let idle = live.other();
        if self.state.slot(live).process.is_none() {
            return Ok(());
        }
        let Some(id) = self.state.slot(idle).process.clone() else {
            return Ok(());
        };
        log::warn!(
            "slot {idle}: pid {} from an earlier run still runs; stopping it",
            id.pid
        );
        if self.mode == NginxMode::Switch {
            self.settle_and_drain(idle);
        }
        keeper::fold_restarts(&mut self.state, &self.config.root);
        process::stop_group(&id, self.config.stop.with(), None);
        let s = self.state.slot_mut(idle);
        s.process = None;
        s.started_at = None;
        self.save()
    }

    fn save(&self) -> Result<()> {
        self.state.save(&self.state_path)
    }

    /// `zdd up` for the live slot: start it again where it is, built, under
    /// an armed keeper, if it does not run.
    fn up_live(&mut self) -> Result<()> {
        let Some(live) = self.state.active else {
            out!("nothing deployed yet; nothing to start");
            return Ok(());
        };
        let s = self.state.slot(live).clone();
        let sha = s.commit.clone().unwrap_or_default();
        let short = git::short(&sha).to_string();
        if let Some(id) = &s.process {
            return self.up_running(live, &short, id.pid);
        }
        if self.checkout(live)?.head().as_deref() != Some(sha.as_str())
            || !self.slot_dir(live).is_dir()
        {
            return Err(Error::NeedsAttention(format!(
                "slot {live} should hold {short}, the live release, but {} does not: deploy it again (`zdd deploy {short}`)",
                self.slot_dir(live).display()
            )));
        }
        self.clear_port(live)?;
        self.lock
            .at_step(&format!("starting {short} in slot {live}"));
        let port = self.config.port(live);
        let t = Instant::now();
        let mut started = self
            .launch(live, &sha, port, "up", true, None)
            .map_err(|e| Error::Failed(format!("cannot start `{}`: {e}", self.config.start)))?;
        self.state.slot_mut(live).status = SlotStatus::Live;
        self.save_or_stop(&mut started)?;
        let checker = Checker::new(&self.config.health, port);
        let verdict = health::wait_ready(&self.config.health, &checker, &mut started);
        // Running under its keeper either way: nginx sends it requests once
        // it answers; until then its keeper keeps it trying.
        self.reconcile_switch()?;
        self.point_current(live);
        let (outcome, reason) = match &verdict {
            Verified::Healthy => (Outcome::Ok, "started by zdd up".to_string()),
            Verified::Failed(r) | Verified::Foreign(r) => (Outcome::Failed, r.clone()),
            Verified::Interrupted(sig) => (
                Outcome::Interrupted,
                format!("zdd up interrupted by {}", sig.as_str()),
            ),
        };
        self.state.push_history(HistoryEntry {
            at: now(),
            action: Action::Restart,
            outcome,
            commit: sha.clone(),
            slot: live,
            previous: None,
            reason: Some(reason.clone()),
            restarts: None,
            phases: Phases {
                ready_ms: ms(t.elapsed()),
                total_ms: ms(self.started.elapsed()),
                ..Phases::default()
            },
        });
        self.save()?;
        match verdict {
            Verified::Healthy => {
                out!(
                    "started {short} in slot {live} (port {port}), healthy after {}",
                    fmt(t.elapsed())
                );
                Ok(())
            }
            _ => Err(Error::Failed(format!(
                "slot {live} ({short}) is not healthy yet: {reason}; it stays under its keeper, which keeps starting it again (`zdd status` shows its last exit){}",
                process::tail_note(&self.log_path(live))
            ))),
        }
    }

    /// `zdd up` for a live slot that runs: under an armed keeper, nothing to
    /// do; under a keeper never armed (zdd was killed while it checked it),
    /// arm it if it is healthy; with no keeper (started by an older zdd),
    /// say how to put it under one.
    fn up_running(&self, live: Slot, short: &str, pid: i32) -> Result<()> {
        let kept =
            keeper::read_status(&self.config.root, live.name()).filter(|k| k.keeper_pid == pid);
        match kept {
            Some(k) if k.armed_at.is_some() => {
                out!("slot {live} runs {short} already (pid {pid})");
                Ok(())
            }
            Some(_) => {
                let port = self.config.port(live);
                Checker::new(&self.config.health, port)
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

    /// Point `ROOT/current` at `slot` (atomically), unless it already does.
    fn point_current(&self, slot: Slot) {
        let current = self.config.root.join("current");
        let target = PathBuf::from("slots").join(slot.name());
        if std::fs::read_link(&current).ok().as_ref() == Some(&target) {
            return;
        }
        if let Err(e) = fsutil::symlink_atomic(&target, &current) {
            log::warn!("cannot update {}: {e}", current.display());
        }
    }

    /// Save the state that records `started`; if that fails, stop it: a
    /// process the state does not record must not outlive zdd.
    fn save_or_stop(&self, started: &mut Started) -> Result<()> {
        self.save().inspect_err(|_| {
            process::stop_group(
                &started.id,
                self.config.stop.with(),
                Some(&mut started.child),
            );
        })
    }

    fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.config.root.join("slots").join(slot.name())
    }

    /// The slot's repository and work tree, once proven not to be symlinks
    /// (git and the app would follow them out of root).
    fn checkout(&self, slot: Slot) -> Result<git::Checkout> {
        let checkout = git::Checkout::new(&self.config.root, slot.name());
        root::check_no_symlink(&checkout.git_dir)?;
        root::check_no_symlink(&checkout.work_tree)?;
        Ok(checkout)
    }

    fn log_path(&self, slot: Slot) -> PathBuf {
        process::log_path(&self.config.root, slot.name())
    }

    fn check_signal(&self, what: &str) -> Result<()> {
        match signals::pending() {
            Some(sig) => Err(interrupted(sig, what.to_string())),
            None => Ok(()),
        }
    }

    /// The live slot's health right now: `None` when nothing live runs,
    /// else the health check's verdict.
    fn live_health(&self) -> Option<std::result::Result<(), String>> {
        let live = self.state.active?;
        self.state.slot(live).process.as_ref()?;
        Some(Checker::new(&self.config.health, self.config.port(live)).check())
    }

    /// Why cron (a deploy without COMMIT) should leave `sha` alone, if it
    /// should: its last deploy failed because of the commit itself, or an
    /// operator rolled back away from it since it was last deployed.
    fn cron_skip(&self, sha: &str) -> Option<String> {
        self.state
            .history
            .iter()
            .rev()
            .find_map(|h| match (h.action, h.outcome) {
                (Action::Deploy, Outcome::Failed) if h.commit == sha => {
                    Some(Some(format!("failed to deploy at {}", h.at)))
                }
                (Action::Deploy, _) if h.commit == sha => Some(None),
                (Action::Rollback, Outcome::Ok) if h.previous.as_deref() == Some(sha) => {
                    Some(Some(format!("was rolled back at {}", h.at)))
                }
                _ => None,
            })?
    }

    /// The environment of the app, its build and hooks.
    fn env(&self, slot: Slot, sha: &str, port: u16) -> Vec<(String, String)> {
        let mut env = vec![
            ("PORT".to_string(), port.to_string()),
            ("ZDD_SLOT".to_string(), slot.name().to_string()),
            ("ZDD_COMMIT".to_string(), sha.to_string()),
            (
                "ZDD_ROOT".to_string(),
                self.config.root.display().to_string(),
            ),
        ];
        env.extend(self.config.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// Step 4: stop our own leftover in `slot`; refuse a foreign listener.
    fn clear_port(&mut self, slot: Slot) -> Result<()> {
        let port = self.config.port(slot);
        if let Some(id) = self.state.slot(slot).process.clone() {
            log::warn!(
                "slot {slot}: pid {} from an earlier run still runs; stopping it",
                id.pid
            );
            if self.mode == NginxMode::Switch && switch::read(&self.config.root).ok() != Some(slot)
            {
                self.settle_and_drain(slot);
            }
            keeper::fold_restarts(&mut self.state, &self.config.root);
            process::stop_group(&id, self.config.stop.with(), None);
            let s = self.state.slot_mut(slot);
            s.process = None;
            s.started_at = None;
            self.save()?;
        }
        for listener in crate::ports::listeners(port, &[]) {
            let leftover = listener
                .pid
                .and_then(|pid| process::leftover_group(pid, &self.config.root, slot.name()));
            if let Some(id) = leftover {
                log::warn!("slot {slot}: {listener} on port {port} was started by an earlier zdd; stopping it");
                process::stop_group(&id, self.config.stop.with(), None);
            }
        }
        // Whatever still listens is not zdd's to stop.
        if let Some(listener) = crate::ports::listeners(port, &[]).into_iter().next() {
            return Err(Error::Failed(format!(
                "port {port} of slot {slot} is taken by {listener}, which zdd did not start; stop it or change `ports` (nothing was changed{})",
                self.serving_note()
            )));
        }
        Ok(())
    }

    /// ", slot a still serves" or "".
    fn serving_note(&self) -> String {
        match self.state.active {
            Some(live) if self.state.slot(live).process.is_some() => format!(
                "; slot {live} still serves {}",
                self.state
                    .slot(live)
                    .commit
                    .as_deref()
                    .map(git::short)
                    .unwrap_or("?")
            ),
            _ => String::new(),
        }
    }

    /// Run a build or hook in the slot; `Err` is the reason it failed.
    fn step(
        &mut self,
        slot: Slot,
        sha: &str,
        port: u16,
        label: &str,
        command: &str,
    ) -> std::result::Result<(), StepError> {
        let log = self.log_path(slot);
        process::log_marker(
            &log,
            &format!("{label} of {} in slot {slot}: {command}", git::short(sha)),
        );
        let env = self.env(slot, sha, port);
        let dir = self.slot_dir(slot);
        let spec = Spec {
            command,
            dir: &dir,
            env: &env,
            log: &log,
            run_as: self.config.user.as_ref(),
        };
        let mut step = process::spawn_step(&spec)
            .map_err(|e| StepError::Failed(format!("cannot run the {label}: {e}")))?;
        // Before the app starts, the slot's recorded process is the build or
        // hook, so that a zdd killed meanwhile leaves nothing unrecorded.
        let records_step = self.state.slot(slot).status == SlotStatus::Starting
            && self.state.slot(slot).process.is_none();
        if records_step {
            self.state.slot_mut(slot).process = Some(step.id.clone());
            if let Err(e) = self.save() {
                process::stop_group(&step.id, StopWith::KILL, Some(&mut step.child));
                return Err(StepError::Failed(e.to_string()));
            }
        }
        // After the swap nothing may be cut short: the deploy is done.
        let interruptible = label != "after_swap hook";
        let end = process::wait_step(&mut step, interruptible);
        if records_step {
            self.state.slot_mut(slot).process = None;
        }
        match end {
            Err(e) => Err(StepError::Failed(format!("cannot run the {label}: {e}"))),
            Ok(StepEnd::Interrupted(sig)) => Err(StepError::Interrupted(sig)),
            Ok(StepEnd::Exited(status)) if status.success() => Ok(()),
            Ok(StepEnd::Exited(status)) => {
                Err(StepError::Failed(format!("the {label} failed ({status})")))
            }
        }
    }

    /// Steps 6 to 9 for `target`, which holds `sha` checked out and built.
    /// `fresh`: the commit never served from this slot, so it gets the
    /// rehearsal (if configured) and the verify hook; a rollback or a
    /// restart in place of the live commit gets neither.
    fn bring_up(mut self, mut attempt: Attempt, fresh: bool) -> Result<()> {
        attempt.crash_rollback = fresh
            && attempt.action == Action::Deploy
            && self.config.keeper.rollback_after > 0
            && self.state.slot(attempt.slot.other()).commit.is_some();
        let (action, target, sha) = (attempt.action, attempt.slot, attempt.sha.clone());
        let config = self.config;
        let short = git::short(&sha).to_string();
        let port = config.port(target);
        if let Err(e) = self.check_signal("") {
            return Err(self.abort_with(&attempt, StepError::from(e), None));
        }

        self.lock
            .at_step(&format!("starting {short} in slot {target}"));
        // Steps 6 and 7: start, record at once, verify. In round-robin mode
        // a new commit first runs a rehearsal on a private port: there nginx
        // sends requests to a slot port as soon as anything listens on it,
        // so a version that listens but answers errors must never listen
        // there. With the switch the new slot is only a backup until the
        // flip, so it is verified where it will serve.
        let t = Instant::now();
        let rehearse = fresh && self.mode == NginxMode::RoundRobin && config.health.rehearse;
        if rehearse {
            let private = match free_port(&config.ports) {
                Ok(p) => p,
                Err(e) => {
                    let reason = format!("cannot find a free port for the rehearsal: {e}");
                    return Err(self.abort_env(&attempt, reason, None));
                }
            };
            let mut rehearsal = self.start_verified(&attempt, private, "rehearsal", true)?;
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
        let mut started = self.start_verified(&attempt, port, "start", verify_here)?;
        self.phases.ready_ms = ms(t.elapsed());
        log::info!(
            "slot {target}: pid {} healthy on port {port} after {}",
            started.id.pid,
            fmt(t.elapsed())
        );

        self.lock.at_step(&format!("swapping to slot {target}"));
        // Step 8: steer nginx to the new slot; once it does, zdd finishes
        // the swap even if signalled.
        let old = target.other();
        let old_process = self
            .state
            .slot(old)
            .process
            .clone()
            .filter(|id| id.group_is_ours());
        match self.mode {
            NginxMode::Switch => self.flip_to(&attempt, &mut started, old_process.is_some())?,
            NginxMode::RoundRobin => {
                self.await_failover(&attempt, &mut started, old_process.is_some())?
            }
        }
        // New requests reach the new slot: so do static files served from
        // `current` (the old slot's stay on disk for requests in flight).
        self.point_current(target);
        let subject = self.state.slot(target).subject.clone();

        if let Some(old_id) = old_process {
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
            // Anything queued for the old slot after its stop signal came
            // from a request that took longer than the settle to arrive.
            let mut late = 0;
            let mut watch = || {
                if let Ok(Some(n)) = crate::ports::accept_queue(old_port) {
                    late = late.max(n);
                }
                signals::fault_point("stopping");
            };
            let stopped =
                process::stop_group_watched(&old_id, config.stop.with(), None, &mut watch);
            if late > 0 && self.mode == NginxMode::Switch {
                log::warn!(
                    "slot {old}: {late} connection(s) reached port {old_port} after its stop signal: requests nginx routed there before the flip that took longer than stop.settle ({}) to arrive; if the server had stopped accepting, nginx answered them 502 (raise stop.settle above your longest upload)",
                    humantime::format_duration(config.stop.settle)
                );
            }
            match stopped {
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

        self.lock.at_step("recording the swap");
        // Step 9: record.
        keeper::fold_restarts(&mut self.state, &config.root);
        {
            let o = self.state.slot_mut(old);
            o.process = None;
            o.started_at = None;
        }
        self.state.active = Some(target);
        self.state.next_deploy = old;
        self.phases.total_ms = ms(self.started.elapsed());
        let phases = self.phases;
        self.state.push_history(HistoryEntry {
            at: now(),
            action,
            outcome: Outcome::Ok,
            commit: sha.clone(),
            slot: target,
            previous: attempt.previous.clone(),
            reason: attempt.because.clone(),
            restarts: None,
            phases,
        });
        self.save()?;
        if let Some(hook) = config.hooks.after_swap.as_deref().filter(|_| fresh) {
            match self.step(target, &sha, port, "after_swap hook", hook) {
                Ok(()) => {}
                Err(StepError::Failed(m) | StepError::Environment(m)) => {
                    log::warn!("{m}; the swap itself is done")
                }
                Err(StepError::Interrupted(sig)) => {
                    log::warn!(
                        "the after_swap hook was stopped by {}; the swap itself is done",
                        sig.as_str()
                    )
                }
            }
        }
        let verb = match action {
            Action::Deploy => "deployed",
            Action::Rollback => "rolled back to",
            Action::Restart => "restarted",
        };
        out!(
            "{verb} {short}{} in slot {target} (port {port}): fetch+checkout {}, build {}, ready {}, nginx {}, settle {}, drain {}, total {}",
            subject.map(|s| format!(" {s:?}")).unwrap_or_default(),
            fmt_ms(phases.fetch_ms),
            fmt_ms(phases.build_ms),
            fmt_ms(phases.ready_ms),
            fmt_ms(phases.route_ms),
            fmt_ms(phases.settle_ms),
            fmt_ms(phases.drain_ms),
            fmt_ms(phases.total_ms),
        );
        if let Some(why) = &attempt.because {
            out!("because {why}");
        }
        if let Some(sig) = signals::pending() {
            log::warn!("got {} during the swap; finished it first", sig.as_str());
        }
        Ok(())
    }

    /// Record `target` as live and `next_deploy` as the other slot. The
    /// state leads reality: written before the flip, so that a zdd killed
    /// from here on leaves a state whose live slot the next run makes the
    /// switch point at. Returns what it replaced, for [`Run::unrecord_live`].
    fn record_live(&mut self, target: Slot, started: &mut Started) -> Result<Recorded> {
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
    fn unrecord_live(&mut self, target: Slot, before: Recorded) -> Result<()> {
        self.state.active = before.active;
        self.state.next_deploy = before.next_deploy;
        self.state.slot_mut(target.other()).status = before.old_status;
        self.state.slot_mut(target).status = SlotStatus::Starting;
        self.save()
    }

    /// Step 8 with the switch: record, flip, confirm through nginx. A signal
    /// before the flip, or an nginx that never shows the new slot, puts
    /// everything back: switch, state, the new slot stopped.
    fn flip_to(
        &mut self,
        attempt: &Attempt,
        started: &mut Started,
        must_route: bool,
    ) -> Result<()> {
        let (target, config) = (attempt.slot, self.config);
        let root = &config.root;
        let port = config.port(target);
        let before = self.record_live(target, started)?;
        signals::fault_point("recorded");
        if let Some(sig) = signals::pending() {
            self.unrecord_live(target, before)?;
            return Err(self.abort_with(attempt, StepError::Interrupted(sig), Some(started)));
        }
        let t = Instant::now();
        let was = switch::read(root).unwrap_or(target.other());
        if let Err(e) = switch::flip(root, target) {
            self.unrecord_live(target, before)?;
            let reason = format!(
                "cannot flip the switch {}: {e}",
                switch::file(root).display()
            );
            return Err(self.abort_env(attempt, reason, Some(started)));
        }
        signals::fault_point("flipped");
        match steer::confirm(config, NginxMode::Switch, target, port, must_route) {
            Ok(_) => {
                self.phases.route_ms = ms(t.elapsed());
                log::info!("nginx routes to slot {target} after {}", fmt(t.elapsed()));
                Ok(())
            }
            Err(steer::NotRouted { reason, .. }) if must_route => {
                self.unrecord_live(target, before)?;
                signals::fault_point("backing-out");
                if let Err(e) = switch::flip(root, was) {
                    return Err(Error::NeedsAttention(format!(
                        "{reason}; and pointing the switch back at slot {was} failed: {e}; both slots still run and slot {was} is recorded as live again: fix {} and run zdd again, which points the switch at slot {was} and stops slot {target}",
                        switch::dir(root).display()
                    )));
                }
                let reason = format!("{reason}; the switch points at slot {was} again");
                Err(self.abort_env(attempt, reason, Some(started)))
            }
            // Nothing else serves, so there is nothing to protect: go on.
            Err(not) => {
                log::warn!("{}", not.reason);
                Ok(())
            }
        }
    }

    /// Step 8 in round-robin mode: wait until nginx's failover routes to
    /// the new slot, then record it as live.
    fn await_failover(
        &mut self,
        attempt: &Attempt,
        started: &mut Started,
        must_route: bool,
    ) -> Result<()> {
        let target = attempt.slot;
        let t = Instant::now();
        let port = self.config.port(target);
        match steer::confirm(self.config, NginxMode::RoundRobin, target, port, must_route) {
            Ok(Routed::Seen) => {
                self.phases.route_ms = ms(t.elapsed());
                log::info!("nginx routes to slot {target} after {}", fmt(t.elapsed()));
            }
            Ok(Routed::Waited) => self.phases.route_ms = ms(t.elapsed()),
            Err(not) if must_route => {
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

    /// Before a slot nginx no longer picks is signalled: let it serve for
    /// `stop.settle` — requests nginx routed to it just before the flip, and
    /// is still reading from their clients, reach it meanwhile — then wait,
    /// bounded, until nothing waits in its accept queue.
    fn settle_and_drain(&self, slot: Slot) {
        std::thread::sleep(self.config.stop.settle);
        let port = self.config.port(slot);
        match steer::drain_queue(port, self.config.nginx.route_timeout) {
            steer::Queue::Empty(d) => log::debug!("slot {slot}: accept queue empty after {}", fmt(d)),
            steer::Queue::NotListening => log::debug!("slot {slot}: nothing listens on port {port}"),
            steer::Queue::Unknown => log::warn!(
                "slot {slot}: cannot read the accept queue of port {port} (no sock_diag here); stopping it after the settle alone"
            ),
            steer::Queue::Busy(n) => log::warn!(
                "slot {slot}: {n} connections still queued on port {port} after {}; stopping it anyway",
                humantime::format_duration(self.config.nginx.route_timeout)
            ),
        }
    }

    /// Start the app of `target` on `port` — under its keeper, or alone for
    /// a rehearsal — and record it in the state (not yet saved).
    fn launch(
        &mut self,
        target: Slot,
        sha: &str,
        port: u16,
        label: &str,
        armed: bool,
        rollback: Option<(u32, Duration, &Path)>,
    ) -> std::io::Result<Started> {
        let config = self.config;
        let log = self.log_path(target);
        process::log_marker(
            &log,
            &format!(
                "{label} of {} in slot {target} on port {port}: {}",
                git::short(sha),
                config.start
            ),
        );
        let env = self.env(target, sha, port);
        let dir = self.slot_dir(target);
        let spec = Spec {
            command: &config.start,
            dir: &dir,
            env: &env,
            log: &log,
            run_as: config.user.as_ref(),
        };
        // What stays up runs under its keeper; a rehearsal does not stay.
        let started = if label == "rehearsal" {
            process::spawn_app(&spec)?
        } else {
            let keep = keeper::Keep {
                name: target.name(),
                root: &config.root,
                stop_signal: config.stop.signal,
                stop_timeout: config.stop.timeout,
                armed,
                rollback,
            };
            keeper::spawn(&spec, &keep)?
        };
        let s = self.state.slot_mut(target);
        s.status = SlotStatus::Starting;
        s.process = Some(started.id.clone());
        s.started_at = Some(now());
        s.restarts_recorded = 0;
        Ok(started)
    }

    /// group, record it in the state at once, and verify it: the health
    /// check, then (if `verify`) the verify hook. On failure the new process is stopped and the attempt
    /// recorded; the error says why.
    fn start_verified(
        &mut self,
        attempt: &Attempt,
        port: u16,
        label: &str,
        verify: bool,
    ) -> Result<Started> {
        let (target, sha) = (attempt.slot, attempt.sha.as_str());
        let config = self.config;
        let rollback = attempt.crash_rollback.then_some((
            config.keeper.rollback_after,
            config.keeper.rollback_within,
            config.path.as_path(),
        ));
        let mut started = match self.launch(target, sha, port, label, false, rollback) {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("cannot start `{}`: {e}", config.start);
                return Err(self.abort_env(attempt, reason, None));
            }
        };
        self.save_or_stop(&mut started)?;
        signals::fault_point(label);

        let checker = Checker::new(&config.health, port);
        let verified = match health::wait_ready(&config.health, &checker, &mut started) {
            // The answer must have come from the new app, not from something
            // else that holds the port.
            Verified::Healthy => match answered_by(&mut started, port) {
                Err(reason) => Verified::Foreign(reason),
                Ok(()) => Verified::Healthy,
            },
            other => other,
        };
        let verified = match verified {
            Verified::Healthy => match config.hooks.verify.as_deref().filter(|_| verify) {
                Some(hook) => match self.step(target, sha, port, "verify hook", hook) {
                    Ok(()) => Verified::Healthy,
                    Err(StepError::Failed(m)) => Verified::Failed(m),
                    Err(StepError::Environment(m)) => Verified::Foreign(m),
                    Err(StepError::Interrupted(sig)) => Verified::Interrupted(sig),
                },
                None => Verified::Healthy,
            },
            other => other,
        };
        let why = match verified {
            Verified::Healthy if label == "rehearsal" => return Ok(started),
            // Verified: from now on its keeper starts it again if it exits
            // on its own. An app that exited just before is still a failed
            // start (its keeper, not armed yet, ended with it).
            Verified::Healthy => match keeper::arm(started.id.pid).map(|()| started.exited()) {
                Ok(None) => return Ok(started),
                Ok(Some(status)) => {
                    StepError::Failed(format!("the app exited during start-up ({status})"))
                }
                Err(e) => StepError::Environment(format!(
                    "cannot arm the keeper of slot {target} (pid {}): {e}",
                    started.id.pid
                )),
            },
            Verified::Failed(reason) if label == "rehearsal" => StepError::Failed(format!(
                "{reason} (in the rehearsal on private port {port})"
            )),
            Verified::Failed(reason) => StepError::Failed(reason),
            Verified::Foreign(reason) => StepError::Environment(reason),
            Verified::Interrupted(sig) => StepError::Interrupted(sig),
        };
        Err(self.abort_with(attempt, why, Some(&mut started)))
    }

    /// Abort for a failure that is not the commit's (cron tries it again).
    fn abort_env(&mut self, attempt: &Attempt, reason: String, new: Option<&mut Started>) -> Error {
        self.abort_with(attempt, StepError::Environment(reason), new)
    }

    /// A deploy or rollback failed before the swap: stop the new slot,
    /// record the attempt, and explain.
    fn abort_with(
        &mut self,
        attempt: &Attempt,
        why: StepError,
        new: Option<&mut Started>,
    ) -> Error {
        let (action, slot, sha) = (attempt.action, attempt.slot, attempt.sha.as_str());
        let mut stopped = String::new();
        if let Some(started) = new {
            let r = process::stop_group(
                &started.id,
                self.config.stop.with(),
                Some(&mut started.child),
            );
            if r != Stopped::NotRunning {
                stopped = format!("stopped slot {slot}; ");
            }
        }
        {
            let s = self.state.slot_mut(slot);
            s.process = None;
            s.started_at = None;
            s.status = match action {
                // A rollback target still holds the release it held.
                Action::Rollback => SlotStatus::Standby,
                Action::Deploy | Action::Restart => SlotStatus::Failed,
            };
        }
        let (outcome, reason) = match &why {
            StepError::Failed(r) => (Outcome::Failed, r.clone()),
            StepError::Environment(r) => (Outcome::Error, r.clone()),
            StepError::Interrupted(sig) => (
                Outcome::Interrupted,
                format!("interrupted by {}", sig.as_str()),
            ),
        };
        self.phases.total_ms = ms(self.started.elapsed());
        self.state.push_history(HistoryEntry {
            at: now(),
            action,
            outcome,
            commit: sha.to_string(),
            slot,
            previous: attempt.previous.clone(),
            reason: Some(reason.clone()),
            restarts: None,
            phases: self.phases,
        });
        let saved = self.save();
        let serving = self.serving_note();
        let what = attempt.what();
        let tail = if matches!(why, StepError::Interrupted(_)) {
            String::new()
        } else {
            process::tail_note(&self.log_path(slot))
        };
        if let Err(e) = saved {
            return e;
        }
        let after = match &attempt.tip_of {
            Some(branch) if action == Action::Deploy && outcome == Outcome::Failed => format!(
                "; cron runs will not retry {}, the tip of {branch}, until {branch} moves",
                git::short(sha)
            ),
            _ => String::new(),
        };
        match why {
            StepError::Failed(reason) | StepError::Environment(reason) => Error::Failed(format!(
                "{what} of {} to slot {slot} failed: {reason}; {stopped}nothing else changed{serving}{after}{tail}",
                git::short(sha)
            )),
            StepError::Interrupted(sig) => interrupted(
                sig,
                format!("{stopped}the {what} of {} was abandoned{serving}", git::short(sha)),
            ),
        }
    }
}

/// Why a build, hook or check ended a deploy.
enum StepError {
    /// The commit itself failed (build, hook, health, verify).
    Failed(String),
    /// Something around it failed (checkout, nginx, a port, the system);
    /// cron will try the commit again.
    Environment(String),
    Interrupted(Signal),
}

impl From<Error> for StepError {
    fn from(e: Error) -> StepError {
        match e {
            Error::Interrupted { number, .. } => {
                StepError::Interrupted(Signal::try_from(number).unwrap_or(Signal::SIGTERM))
            }
            other => StepError::Environment(other.to_string()),
        }
    }
}

fn interrupted(sig: Signal, what: String) -> Error {
    Error::Interrupted {
        signal: sig.as_str(),
        number: sig as i32,
        what,
    }
}

/// Does the listener on `port` belong to the process group just started?
fn answered_by(started: &mut Started, port: u16) -> std::result::Result<(), String> {
    if let Some(status) = started.exited() {
        return Err(format!("the app exited during start-up ({status})"));
    }
    let pgid = started.id.pid;
    match crate::ports::listeners(port, &[pgid]).into_iter().next() {
        None => Err(format!("nothing listens on port {port} any more")),
        Some(l) if l.pid.and_then(process::read_stat).map(|st| st.pgrp) == Some(pgid) => Ok(()),
        Some(l) => Err(format!(
            "the health check was answered on port {port} by {l}, not by the new app (pid {pgid})"
        )),
    }
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

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}
