//! One deploy, rollback or `zdd up` in progress: the lock and the state it
//! holds (steps 1 and 2: lock, load, reconcile with reality — the processes,
//! the switch, what an interrupted run left), and what every step asks of it.

use std::path::PathBuf;
use std::time::Instant;

use crate::attempts::AttemptLog;
use crate::config::{Config, NginxMode};
use crate::error::{Error, Result};
use crate::health::Checker;
use crate::lock::{Lock, LockWait};
use crate::process::{self, ProcessId, Started};
use crate::state::{Phases, Slot, SlotStatus, State};
use crate::{fsutil, git, keeper, nginx, observe, root, signals, steer, switch};

use super::plan::{self, Attempt};

/// One deploy or rollback in progress: holds the lock and the state.
pub(super) struct Run<'a> {
    pub(super) config: &'a Config,
    pub(super) state: State,
    pub(super) state_path: PathBuf,
    pub(super) started: Instant,
    pub(super) phases: Phases,
    /// How nginx is steered (`nginx::mode`).
    pub(super) mode: NginxMode,
    pub(super) lock: Lock,
    /// nginx was seen running an earlier zdd's switch (`steer::Routed::AtHead`).
    pub(super) head_time: bool,
    /// Each slot's log size when this run began: a failure quotes what was
    /// written since (a, b).
    pub(super) log_sizes: [u64; 2],
    /// nginx did not answer zdd's probe at all in this run: the live slot
    /// runs, but nothing reaches it.
    pub(super) nginx_silent: bool,
    /// `env_file`'s variables, read once when this run began.
    pub(super) env_file: Vec<(String, String)>,
    /// This attempt's own output file (`attempts`), once there is an
    /// attempt; without one (it could not be created) steps write to the
    /// slot's log.
    pub(super) attempt_log: Option<AttemptLog>,
    /// An app started in this attempt whose output is still to be copied
    /// from its slot's log into the attempt's: the slot, and the log's size
    /// before the start.
    pub(super) start_output: Option<(Slot, u64)>,
}

impl<'a> Run<'a> {
    /// Steps 1 and 2: lock, load, reconcile with reality.
    pub(super) fn begin(config: &'a Config, wait: LockWait, command: &str) -> Result<Run<'a>> {
        let started = Instant::now();
        root::prepare(
            &config.root,
            &[
                root::RELEASES,
                root::GIT,
                root::GIT_INDEX,
                root::LOGS,
                root::DEPLOY_LOGS,
                root::RUN,
            ],
        )?;
        root::prepare(&config.root, &switch::FOLDERS)?;
        for slot in Slot::BOTH {
            root::check_file(&process::log_path(&config.root, slot.name()))?;
        }
        let mode = nginx::mode(config)?;
        let env_file = match &config.env_file {
            Some(path) => crate::launch::read_env_file(path)?,
            None => Vec::new(),
        };
        let lock = Lock::acquire(&config.root, wait, command)?;
        let state_path = config.state_path();
        let state = State::load(&state_path, config.ports)?;
        let log_sizes =
            Slot::BOTH.map(|slot| process::log_size(&process::log_path(&config.root, slot.name())));
        let mut run = Run {
            config,
            state,
            state_path,
            started,
            phases: Phases::default(),
            mode,
            lock,
            head_time: false,
            log_sizes,
            nginx_silent: false,
            env_file,
            attempt_log: None,
            start_output: None,
        };
        let restarted = keeper::fold_restarts(&mut run.state, &config.root);
        let reconciled = run.reconcile();
        if run.adopt_legacy_trees()? || reconciled || restarted {
            run.save()?;
        }
        run.point_apps();
        run.reconcile_switch()?;
        run.stop_leftover()?;
        if let Some(live) = run.state.active {
            run.point_current(live);
        }
        Ok(run)
    }

    /// Make the state match the processes that really run (see
    /// `observe` and `plan::reconcile`). Returns whether anything changed.
    pub(super) fn reconcile(&mut self) -> bool {
        let alive = observe::alive(&self.state);
        let said = plan::reconcile(&mut self.state, alive);
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
    pub(super) fn reconcile_switch(&mut self) -> Result<()> {
        let config = self.config;
        let root = &config.root;
        let Some(live) = self.state.active else {
            return Ok(());
        };
        let runs = |slot: Slot| self.state.slot(slot).process.is_some();
        if self.mode != NginxMode::Switch || !runs(live) {
            return Ok(());
        }
        let want = self.position(live);
        let was = match switch::read(root) {
            Ok(Some(p)) if p == want => return Ok(()),
            Ok(Some(p)) if p.slot == live => {
                // Only maintenance differs (a `zdd maintenance` interrupted).
                return self.flip_or_attention(want);
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
        self.flip_or_attention(want)?;
        let other_runs = runs(was);
        match steer::confirm(config, NginxMode::Switch, live, other_runs) {
            Ok(routed) => {
                self.note_routing(routed);
                Ok(())
            }
            Err(not) if other_runs && not.picked == Some(was) => {
                // nginx does not follow the switch: it serves from `was`.
                self.flip_or_attention(self.position(was))?;
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

    /// Where the switch belongs while `slot` is live.
    pub(super) fn position(&self, slot: Slot) -> switch::Position {
        switch::Position {
            slot,
            closed: self.state.maintenance.is_some(),
        }
    }

    /// Point the switch at `to`, or stop: a switch zdd cannot set needs
    /// the operator.
    fn flip_or_attention(&self, to: switch::Position) -> Result<()> {
        let root = &self.config.root;
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
    pub(super) fn stop_leftover(&mut self) -> Result<()> {
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
        self.stop_earlier_run(idle, &id)
    }

    /// Stop the group an earlier run recorded in `slot` (drained first
    /// when nginx no longer picks the slot) and forget it in the state.
    pub(super) fn stop_earlier_run(&mut self, slot: Slot, id: &ProcessId) -> Result<()> {
        log::warn!(
            "slot {slot}: pid {} from an earlier run still runs; stopping it",
            id.pid
        );
        let pointed = switch::read(&self.config.root)
            .ok()
            .flatten()
            .map(|p| p.slot);
        if self.mode == NginxMode::Switch && pointed != Some(slot) {
            self.settle_and_drain(slot);
        }
        keeper::fold_restarts(&mut self.state, &self.config.root);
        process::stop_group(id, self.config.stop.with(), None);
        self.state.slot_mut(slot).forget_process();
        self.save()
    }

    pub(super) fn save(&self) -> Result<()> {
        self.state.save(&self.state_path)
    }

    /// Save the state that records `started`; if that fails, stop it: a
    /// process the state does not record must not outlive zdd.
    pub(super) fn save_or_stop(&self, started: &mut Started) -> Result<()> {
        self.save().inspect_err(|_| {
            process::stop_group(
                &started.id,
                self.config.stop.with(),
                Some(&mut started.child),
            );
        })
    }

    /// Point `ROOT/current` at `slot`'s release (atomically), unless it
    /// already does.
    pub(super) fn point_current(&self, slot: Slot) {
        let current = self.config.root.join("current");
        let Some(target) = self.release_dir_of(slot).map(PathBuf::from) else {
            return;
        };
        if std::fs::read_link(&current).ok().as_ref() == Some(&target) {
            return;
        }
        if let Err(e) = fsutil::symlink_atomic(&target, &current) {
            log::warn!("cannot update {}: {e}", current.display());
        }
    }

    /// The folder of the release `slot` holds, relative to root.
    fn release_dir_of(&self, slot: Slot) -> Option<String> {
        let sha = self.state.slot(slot).commit.as_deref()?;
        Some(self.state.release_dir(sha))
    }

    /// The tree `slot` runs: its release's folder (where builds, hooks and
    /// the app run).
    pub(super) fn tree(&self, slot: Slot) -> PathBuf {
        match self.release_dir_of(slot) {
            Some(dir) => self.config.root.join(dir),
            None => self.config.root.join("releases"),
        }
    }

    /// The repository, once proven not to be a symlink (git would follow
    /// it out of root).
    pub(super) fn repo(&self) -> Result<git::Repo> {
        let repo = git::Repo::new(&self.config.root);
        root::check_no_symlink(&repo.git_dir)?;
        Ok(repo)
    }

    /// `sha`'s release folder and index, once proven not to be symlinks.
    pub(super) fn checkout(&self, sha: &str) -> Result<git::Checkout> {
        let checkout = git::Checkout::release(&self.config.root, sha);
        root::check_no_symlink(&checkout.repo.git_dir)?;
        root::check_no_symlink(&checkout.work_tree)?;
        root::check_no_symlink(&checkout.index_dir)?;
        Ok(checkout)
    }

    /// `zdd rollback COMMIT`: the idle slot and the kept, good release
    /// `rev` names (resolved in the repository, without a fetch), or exit 2
    /// naming the kept ones.
    pub(super) fn kept_release(&self, rev: &git::Rev) -> Result<(Slot, String)> {
        // A kept sha (or its prefix) first: git may have lost the commit.
        let hex = rev.as_str().len() >= 7 && rev.as_str().bytes().all(|b| b.is_ascii_hexdigit());
        let by_prefix: Vec<&str> = self
            .state
            .releases
            .iter()
            .map(|r| r.commit.as_str())
            .filter(|c| hex && c.starts_with(&rev.as_str().to_ascii_lowercase()))
            .collect();
        let sha = match by_prefix.as_slice() {
            [one] => Some(one.to_string()),
            _ => self.repo()?.resolve(rev).map(|c| c.sha),
        };
        let live = self.state.live_commit();
        let kept: Vec<&crate::state::Release> = self
            .state
            .releases
            .iter()
            .rev()
            .filter(|r| r.good() && Some(r.commit.as_str()) != live)
            .collect();
        if let Some(r) = kept.iter().find(|r| Some(&r.commit) == sha.as_ref()) {
            let idle = self
                .state
                .active
                .map_or(self.state.next_deploy, Slot::other);
            return Ok((idle, r.commit.clone()));
        }
        let names = match kept.is_empty() {
            true => "none".to_string(),
            false => kept
                .iter()
                .map(|r| git::short(&r.commit).to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let what = match (&sha, live) {
            (None, _) => format!("{rev:?} names no commit in the repository"),
            (Some(s), Some(l)) if s == l => format!("{} is the live release", git::short(s)),
            (Some(s), _) => format!("{} is not a kept release that went live", git::short(s)),
        };
        Err(Error::Usage(format!(
            "cannot roll back to {rev}: {what}; the kept releases to roll back to, newest first: {names} (`zdd releases` lists them; `zdd deploy {rev}` builds it)"
        )))
    }

    /// Each slot's `route/SLOT/app` names the release it holds (static
    /// files flip with the code).
    pub(super) fn point_apps(&self) {
        for slot in Slot::BOTH {
            if let Some(dir) = self.release_dir_of(slot) {
                if let Err(e) = switch::point_app(&self.config.root, slot, &dir) {
                    log::warn!("cannot point route/{slot}/app at {dir}: {e}");
                }
            }
        }
    }

    /// Releases an earlier zdd built in the slots' own work trees
    /// (`slots/X`, with `git/X`): recorded as releases where they are, and
    /// moved to `releases/SHA` once nothing runs from them (an app that
    /// runs there keeps its paths). Returns whether the state changed.
    pub(super) fn adopt_legacy_trees(&mut self) -> Result<bool> {
        let root = self.config.root.clone();
        let mut changed = false;
        // Oldest first: the standby slot's release served before the live one.
        let mut order: Vec<Slot> = Slot::BOTH.to_vec();
        order.sort_by_key(|&s| self.state.active == Some(s));
        for slot in order {
            let s = self.state.slot(slot).clone();
            let Some(sha) = s.commit.clone() else {
                continue;
            };
            let legacy = root.join("slots").join(slot.name());
            let served = matches!(s.status, SlotStatus::Live | SlotStatus::Standby);
            if !served
                || self.state.release(&sha).is_some()
                || git::legacy_head(&root, slot.name()).as_deref() != Some(sha.as_str())
                || !legacy.is_dir()
            {
                continue;
            }
            root::check_no_symlink(&legacy)?;
            let deployed_at = self
                .state
                .history
                .iter()
                .rev()
                .find(|h| h.commit == sha && h.outcome == crate::state::Outcome::Ok)
                .map(|h| h.at.clone())
                .unwrap_or_else(crate::text::now);
            self.state.releases.push(crate::state::Release {
                commit: sha,
                subject: s.subject.clone(),
                dir: format!("slots/{}", slot.name()),
                built_at: deployed_at.clone(),
                deployed_at: Some(deployed_at),
            });
            changed = true;
        }
        // Recorded before anything moves: a zdd killed mid-way finds them.
        if changed {
            self.save()?;
        }
        for slot in Slot::BOTH {
            let legacy_dir = format!("slots/{}", slot.name());
            let runs = self.state.slot(slot).process.is_some();
            let Some(at) = self.state.releases.iter().position(|r| r.dir == legacy_dir) else {
                continue;
            };
            let to = crate::state::release_dir(&self.state.releases[at].commit);
            let moved = !root.join(&legacy_dir).exists() && root.join(&to).is_dir();
            if !moved {
                if runs || root.join(&to).exists() {
                    continue;
                }
                std::fs::rename(root.join(&legacy_dir), root.join(&to)).map_err(|e| {
                    Error::NeedsAttention(format!("cannot move {legacy_dir} to {to}: {e}"))
                })?;
                log::info!(
                    "moved the release {} from {legacy_dir} to {to}",
                    git::short(&self.state.releases[at].commit)
                );
            }
            // Moved now, or by a zdd killed before it recorded the move.
            self.state.releases[at].dir = to;
            self.save()?;
            changed = true;
        }
        // A slot that went live without its release being marked so (zdd
        // killed after the flip, the next run recording it live): good.
        if let Some(sha) = self.state.live_commit().map(str::to_string) {
            if let Some(r) = self.state.release_mut(&sha).filter(|r| !r.good()) {
                r.deployed_at = Some(crate::text::now());
                changed = true;
            }
        }
        Ok(changed)
    }

    pub(super) fn log_path(&self, slot: Slot) -> PathBuf {
        process::log_path(&self.config.root, slot.name())
    }

    /// Open `attempt`'s own output file. Without one (a full disk) the
    /// attempt goes on, its steps' output in the slot's log.
    pub(super) fn log_attempt(&mut self, attempt: &Attempt) {
        match AttemptLog::create(
            &self.config.root,
            attempt.action,
            &attempt.sha,
            attempt.slot,
        ) {
            Ok(log) => self.attempt_log = Some(log),
            Err(e) => log::warn!("{e}; the attempt's output goes to the slot's log"),
        }
    }

    /// Where a build or hook of `slot` writes: the attempt's file, else the
    /// slot's log.
    pub(super) fn step_log(&self, slot: Slot) -> PathBuf {
        match &self.attempt_log {
            Some(log) => log.path().to_path_buf(),
            None => self.log_path(slot),
        }
    }

    /// A marker line in the attempt's file, if there is one.
    pub(super) fn note(&self, text: &str) {
        if let Some(log) = &self.attempt_log {
            log.marker(text);
        }
    }

    /// The attempt's last line, how it ended, if it has a file.
    pub(super) fn note_end(&self, text: &str) {
        if let Some(log) = &self.attempt_log {
            log.end(text);
        }
    }

    /// Copy the output of the app this attempt started last from its
    /// slot's log into the attempt's file (once it was verified, or
    /// stopped).
    pub(super) fn copy_start_output(&mut self) {
        if let (Some((slot, from)), Some(log)) = (self.start_output.take(), &self.attempt_log) {
            log.copy_output(&self.log_path(slot), from);
        }
    }

    pub(super) fn check_signal(&self, what: &str) -> Result<()> {
        match signals::pending() {
            Some(sig) => Err(Error::interrupted(sig, what)),
            None => Ok(()),
        }
    }

    /// The live slot's health right now: `None` when nothing live runs,
    /// else the health check's verdict.
    pub(super) fn live_health(&self) -> Option<std::result::Result<(), String>> {
        let live = self.state.active?;
        self.state.slot(live).process.as_ref()?;
        Some(Checker::new(&self.config.health, self.config.port(live)).check())
    }

    /// The app `slot` runs with `sha` on `port`: its release, its config.
    pub(super) fn app<'s>(&'s self, slot: Slot, sha: &'s str, port: u16) -> crate::launch::App<'s> {
        crate::launch::App {
            root: &self.config.root,
            name: slot.name(),
            dir: self.tree(slot),
            port,
            command: &self.config.start,
            commit: Some(sha),
            config: Some(self.config),
        }
    }

    /// The environment of the app's build and hooks: the app's, the env
    /// file as this run read it.
    pub(super) fn env(&self, slot: Slot, sha: &str, port: u16) -> Vec<(String, String)> {
        self.app(slot, sha, port).env(&self.env_file)
    }

    /// ", slot a still serves" or "".
    pub(super) fn serving_note(&self) -> String {
        match self.state.active {
            Some(live) if self.state.slot(live).process.is_some() => {
                let sha = self.state.slot(live).commit.as_deref().map(git::short);
                match self.nginx_silent {
                    false => format!("; slot {live} still serves {}", sha.unwrap_or("?")),
                    true => format!(
                        "; slot {live} still runs {}, but nothing reaches it while nginx does not answer",
                        sha.unwrap_or("?")
                    ),
                }
            }
            _ => String::new(),
        }
    }
}
