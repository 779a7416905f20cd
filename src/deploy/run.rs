//! One deploy, rollback, restart or `zdd up` in progress: `Run` holds the
//! lock and the state (step 1: lock, load) and answers what every step
//! asks of them — where a slot's release is, saving, the attempt's output
//! file, the app's environment. The steps themselves are functions of
//! their own modules that take the `Run`.

use std::path::PathBuf;
use std::time::Instant;

use crate::attempts::AttemptLog;
use crate::config::{Config, NginxMode};
use crate::error::{Error, Result};
use crate::health::Checker;
use crate::lock::{Lock, LockWait};
use crate::process::{self, Started};
use crate::state::{Phases, Slot, State};
use crate::{fsutil, git, nginx, root, signals, switch};

use super::plan::Attempt;

/// One deploy, rollback or restart in progress: holds the lock and the state.
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
    /// `env_file`'s variables, read (and so checked) once when this run
    /// began: the build's, the hooks' and a rehearsal's. An app that stays
    /// up gets the file as its keeper reads it when it starts the app.
    pub(super) env_file: Vec<(String, String)>,
    /// This attempt's own output file (`attempts`), once there is an
    /// attempt; without one (it could not be created) steps write to the
    /// slot's log.
    pub(super) attempt_log: Option<AttemptLog>,
    /// An app started in this attempt whose output is still to be copied
    /// from its slot's log into the attempt's: the slot, and where the
    /// start's marker line begins in its log.
    pub(super) start_output: Option<(Slot, Option<crate::process::LogSpot>)>,
}

impl<'a> Run<'a> {
    /// Step 1: lock and load the state (then `reconcile` makes it match
    /// reality).
    pub(super) fn open(config: &'a Config, wait: LockWait, command: &str) -> Result<Run<'a>> {
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
            Some(path) => crate::config::read_env_file(path)?,
            None => Vec::new(),
        };
        let lock = Lock::acquire(&config.root, wait, command)?;
        let state_path = config.state_path();
        let state = State::load(&state_path, config.ports)?;
        let log_sizes =
            Slot::BOTH.map(|slot| process::log_size(&process::log_path(&config.root, slot.name())));
        Ok(Run {
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
        })
    }

    /// Where the switch belongs while `slot` is live.
    pub(super) fn position(&self, slot: Slot) -> switch::Position {
        switch::Position {
            slot,
            closed: self.state.maintenance.is_some(),
        }
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
        if let (Some((slot, start)), Some(log)) = (self.start_output.take(), &self.attempt_log) {
            log.copy_output(&self.log_path(slot), start);
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
