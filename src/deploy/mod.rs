//! Deploy and rollback, step by step as in the README ("How a deploy
//! works"): this file is the step list, one line a step; `plan` decides
//! from plain data, `run` holds the lock and the state, `start` and `swap`
//! do the steps, `outcome` records and says how it ended, `up` is `zdd up`.

mod outcome;
mod plan;
mod run;
mod start;
mod swap;
mod up;

use std::time::Instant;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lock::LockWait;
use crate::state::{Action, SlotStatus};
use crate::text::{fmt, out};
use crate::{git, signals};

pub use plan::rollback_target;

use crate::health::Failure;
use outcome::ms;
use plan::{Attempt, Decision, Resolved};
use run::Run;

/// `zdd deploy [COMMIT]`.
pub fn deploy(config: &Config, commit: Option<&str>, wait: LockWait) -> Result<()> {
    let named = commit
        .map(git::Rev::parse)
        .transpose()
        .map_err(Error::Usage)?;
    let branch = git::Rev::parse(&config.branch)
        .map_err(|e| Error::Usage(format!("{}: branch: {e}", config.path.display())))?;
    let repo = config.repo.clone().ok_or_else(|| {
        Error::Usage(format!(
            "{}: set `repo` to deploy from it",
            config.path.display()
        ))
    })?;
    let mut run = Run::begin(config, wait, "zdd deploy")?; // 1, 2: lock, reconcile
    let target = run.state.next_deploy;
    let git_repo = run.repo()?;
    let wanted = named.as_ref().unwrap_or(&branch);
    let resolved = run.fetch_and_resolve(&git_repo, &repo, wanted, named.is_some())?; // 3
                                                                                      // The live commit, if its release is there to start again.
    let live_head = run
        .state
        .active
        .filter(|&live| run.tree(live).is_dir())
        .and_then(|live| run.state.slot(live).commit.clone());
    let decision = plan::decide(&plan::Facts {
        state: &run.state,
        sha: &resolved.sha,
        named: named.is_some(),
        live_health: run.live_health(),
        live_head,
        config: &config.fingerprint(),
    });
    let (sha, short) = (resolved.sha.as_str(), git::short(&resolved.sha));
    match decision {
        Decision::AlreadyLive { slot, say: true } => {
            out!("{short} is already live in slot {slot}; nothing to do");
            return Ok(());
        }
        Decision::AlreadyLive { slot, say: false } => {
            log::debug!("{wanted} is {short}, already live in slot {slot}; nothing to do");
            return Ok(());
        }
        Decision::UnhealthyTip { slot, why } => {
            return Err(Error::Failed(format!(
                "slot {slot} runs {short}, the tip of {wanted}, but fails its health check ({why}); cron does not deploy the same commit again over the previous release: run `zdd deploy {short}` to do so"
            )));
        }
        Decision::CronSkip { why, warn } => {
            let text = format!(
                "{wanted} is {short}, which {why}; not deploying it until {wanted} moves (`zdd deploy {short}` deploys it now)"
            );
            match warn {
                false => log::debug!("{text}"),
                // Nothing healthy serves: say so, whatever the level.
                true => log::warn!("{text}; and the live slot is not healthy"),
            }
            return Ok(());
        }
        Decision::RestartInPlace {
            slot,
            sha: live_sha,
            skipped,
        } => {
            let live = git::short(&live_sha);
            match skipped {
                Some(why) => log::warn!(
                    "{wanted} is {short}, which {why}; not deploying it until {wanted} moves (`zdd deploy {short}` deploys it now); the live slot {slot} ({live}) does not run: starting it again"
                ),
                None => log::info!(
                    "slot {slot} holds {live}, the live commit, but does not run; starting it again"
                ),
            }
            run.clear_port(slot)?;
            let attempt = Attempt::new(Action::Deploy, slot, &live_sha, Some(live_sha.clone()));
            run.log_attempt(&attempt);
            return run.bring_up(attempt, false);
        }
        Decision::Deploy { .. } => {}
    }
    let checkout = run.checkout(sha)?; // its folders: no symlink
    log::info!(
        "fetched in {}: {wanted} is {short} {:?}",
        fmt(resolved.fetch_time),
        resolved.subject
    );
    run.clear_port(target)?; // 4
    let mut attempt = Attempt::new(
        Action::Deploy,
        target,
        sha,
        run.state.live_commit().map(str::to_string),
    );
    // Cron deploys the branch's tip: only a failure of that commit makes
    // cron wait for the branch to move.
    let is_tip = named.is_none()
        || git_repo
            .resolve(&branch)
            .is_some_and(|tip| tip.sha == resolved.sha);
    attempt.tip_of = is_tip.then(|| config.branch.clone());
    run.log_attempt(&attempt);
    // A release built before needs no checkout and no build.
    let kept = run
        .state
        .release(sha)
        .filter(|r| config.root.join(&r.dir).is_dir())
        .cloned();
    let fresh = match kept {
        Some(release) => {
            let text = format!(
                "{short} is a kept release, built {}: no checkout, no build",
                release.built_at
            );
            log::info!("{text}");
            run.note(&text);
            attempt.reused = true;
            !release.good()
        }
        None => {
            run.check_out_and_build(&checkout, &attempt, &resolved)?; // 5
            true
        }
    };
    run.bring_up(attempt, fresh) // 6 to 9
}

/// `zdd rollback`; `because` says why in the history (a keeper's automatic
/// rollback), and `if_live` (SLOT:KEEPER_PID) makes it roll back only while
/// that keeper's app is the live one, not a release deployed since.
pub fn rollback(
    config: &Config,
    commit: Option<&str>,
    wait: LockWait,
    because: Option<&str>,
    if_live: Option<crate::cli::IfLive>,
) -> Result<()> {
    let named = commit
        .map(git::Rev::parse)
        .transpose()
        .map_err(Error::Usage)?;
    let mut run = Run::begin(config, wait, "zdd rollback")?; // 1, 2
    if let Some(keeper) = if_live {
        let still = run.state.active == Some(keeper.slot)
            && run
                .state
                .slot(keeper.slot)
                .process
                .as_ref()
                .is_some_and(|id| id.pid == keeper.keeper_pid);
        if !still {
            out!("the release {keeper} kept is no longer live; nothing to roll back");
            return Ok(());
        }
    }
    let (target, commit) = match &named {
        // A keeper's rollback: back to what served before this release.
        None if if_live.is_some() => plan::crash_rollback_target(&run.state)
            .map_or_else(|| plan::rollback_target(&run.state), Ok)
            .map_err(Error::Usage)?,
        None => plan::rollback_target(&run.state).map_err(Error::Usage)?,
        Some(rev) => run.kept_release(rev)?,
    };
    let dir = run
        .state
        .release(&commit)
        .map(|r| config.root.join(&r.dir))
        .unwrap_or_default();
    if !dir.is_dir() {
        return Err(Error::NeedsAttention(format!(
            "the release of {} should be in {}, which is gone; deploy a commit instead",
            git::short(&commit),
            dir.display()
        )));
    }
    run.clear_port(target)?; // 4
    let previous = run.state.live_commit().map(str::to_string);
    let mut attempt = Attempt::new(Action::Rollback, target, &commit, previous.clone());
    attempt.because = because.map(|why| match &previous {
        Some(p) => format!("{} {why}", git::short(p)),
        None => why.to_string(),
    });
    run.log_attempt(&attempt);
    run.bring_up(attempt, false) // 6 to 9
}

/// `zdd restart`: the live release started again on the idle slot with the
/// config as it is now (`[env]`, `start`), verified, flipped to, and the
/// old process drained and stopped — a rollback to the live release. The
/// rollback target stays what it was.
pub fn restart(config: &Config, wait: LockWait) -> Result<()> {
    let mut run = Run::begin(config, wait, "zdd restart")?; // 1, 2
    let (Some(live), Some(sha)) = (
        run.state.active,
        run.state.live_commit().map(str::to_string),
    ) else {
        return Err(Error::Usage(
            "nothing is deployed yet; nothing to restart (`zdd deploy` deploys the tip)".into(),
        ));
    };
    if !run.tree(live).is_dir() {
        return Err(Error::NeedsAttention(format!(
            "the live release {} should be in {}, which is gone; deploy a commit instead",
            git::short(&sha),
            run.tree(live).display()
        )));
    }
    let target = live.other();
    run.clear_port(target)?; // 4
    let attempt = Attempt::new(Action::Restart, target, &sha, Some(sha.clone()));
    run.log_attempt(&attempt);
    run.bring_up(attempt, false) // 6 to 9
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

impl Run<'_> {
    /// Step 3: fetch into the idle slot's repository and resolve `wanted`.
    fn fetch_and_resolve(
        &mut self,
        git_repo: &git::Repo,
        repo: &str,
        wanted: &git::Rev,
        named: bool,
    ) -> Result<Resolved> {
        let target = self.state.next_deploy;
        self.lock
            .at_step(&format!("fetching {repo} into slot {target}"));
        let t = Instant::now();
        let local = git::local_repo(repo);
        if let Some(path) = local.filter(|p| !p.exists()) {
            return Err(Error::Usage(format!(
                "repo {} (in {}) does not exist: set `repo` to the app's git repository, a path or a URL",
                path.display(),
                self.config.path.display()
            )));
        }
        git_repo.ensure().map_err(Error::Failed)?;
        let fetched = git_repo.fetch(repo);
        self.check_signal("nothing was deployed")?;
        fetched.map_err(|e| {
            let message = format!("cannot fetch {repo}: {e}");
            // A local folder that is no repository is the config's fault;
            // a remote that does not answer may answer next time.
            match local.is_some() && e.contains("does not appear to be a git repository") {
                true => Error::Usage(format!(
                    "{message}; set `repo` in {} to the app's git repository (or let the user running zdd read it)",
                    self.config.path.display()
                )),
                false => Error::Failed(message),
            }
        })?;
        let git::Commit { sha, subject } = git_repo.resolve(wanted).ok_or_else(|| {
            Error::Usage(match named {
                true => format!(
                    "unknown commit {:?}: not a sha, tag or branch in {repo}{}",
                    wanted.as_str(),
                    duration_hint(wanted.as_str())
                ),
                false => format!(
                    "branch {:?} not found in {repo}; set `branch` in the config",
                    wanted.as_str()
                ),
            })
        })?;
        Ok(Resolved {
            sha,
            subject,
            fetch_time: t.elapsed(),
        })
    }

    /// Step 5: check the commit out in the idle slot and build it (hooks
    /// around the build). From here on the slot no longer holds what it
    /// held before, so the state says so first.
    fn check_out_and_build(
        &mut self,
        checkout: &git::Checkout,
        attempt: &Attempt,
        resolved: &Resolved,
    ) -> Result<()> {
        let (config, target, sha) = (self.config, attempt.slot, attempt.sha.as_str());
        let short = git::short(sha);
        {
            let s = self.state.slot_mut(target);
            s.status = SlotStatus::Starting;
            s.commit = Some(sha.to_string());
            s.subject = Some(resolved.subject.clone());
        }
        self.save()?;
        self.lock
            .at_step(&format!("checking out {short} for slot {target}"));
        let t = Instant::now();
        // As the work tree's owner: the user who builds and runs the app.
        if let Err(e) = checkout.check_out(sha, config.user.as_ref()) {
            return Err(self.abort_env(attempt, format!("cannot check out {short}: {e}"), None));
        }
        signals::fault_point("checked-out");
        if let Err(e) = self.link_shared(sha) {
            return Err(self.abort_with(attempt, e, None));
        }
        signals::fault_point("linked");
        self.warm_caches(sha);
        self.phases.fetch_ms = ms(resolved.fetch_time + t.elapsed());
        let text = format!(
            "slot {target}: checked out {short} into {} in {}",
            crate::state::release_dir(sha),
            fmt(t.elapsed())
        );
        log::info!("{text}");
        self.note(&text);

        let t = Instant::now();
        self.lock
            .at_step(&format!("building {short} in slot {target}"));
        use start::Step;
        for (what, command) in [
            (Step::AfterCheckout, config.hooks.after_checkout.as_deref()),
            (Step::Build, config.build.as_deref()),
            (Step::BeforeStart, config.hooks.before_start.as_deref()),
        ] {
            let Some(command) = command else { continue };
            let step = Instant::now();
            if let Err(e) = self.step(target, sha, config.port(target), what, command) {
                return Err(self.abort_with(attempt, e, None));
            }
            log::info!(
                "slot {target}: {} done in {}",
                what.label(),
                fmt(step.elapsed())
            );
        }
        self.phases.build_ms = ms(t.elapsed());
        // Built: a release, kept for deploys and rollbacks without a build.
        self.state.releases.retain(|r| r.commit != sha);
        self.state.releases.push(crate::state::Release {
            commit: sha.to_string(),
            subject: Some(resolved.subject.clone()),
            dir: crate::state::release_dir(sha),
            built_at: crate::text::now(),
            deployed_at: None,
        });
        self.save()?;
        signals::fault_point("built");
        Ok(())
    }

    /// Steps 6 to 9 for `attempt.slot`, which holds `attempt.sha` checked
    /// out and built. `fresh`: the commit never served from this slot, so it
    /// gets the verify hook (and, in round-robin mode, the rehearsal) and
    /// its keeper may roll it back; a rollback or a restart in place of the
    /// live commit gets none of these.
    fn bring_up(mut self, mut attempt: Attempt, fresh: bool) -> Result<()> {
        self.hold_release(&attempt)?;
        attempt.crash_rollback = fresh
            && attempt.action == Action::Deploy
            && self.config.keeper.rollback_after > 0
            && self
                .state
                .live_commit()
                .is_some_and(|c| self.state.release(c).is_some());
        if let Err(e) = self.check_signal("") {
            return Err(self.abort_with(&attempt, Failure::from(e), None));
        }
        let old = attempt.slot.other();
        let old_process = self
            .state
            .slot(old)
            .process
            .clone()
            .filter(|id| id.group_is_ours());
        if old_process.is_some() {
            self.check_routing(&attempt, old)?; // before 6: nginx follows the switch
        }
        let mut started = self.start_new(&attempt, fresh)?; // 6, 7: start, verify
        self.steer(&attempt, &mut started, old_process.is_some())?; // 8: flip, confirm

        // New requests reach the new slot: so do static files served from
        // `current` (the old slot's stay on disk for requests in flight).
        self.point_current(attempt.slot);
        if let Some(old_id) = &old_process {
            self.stop_old(old, old_id); // 8: settle, drain, stop
        }
        self.record_swap(&attempt, fresh) // 9: record, summary
    }
}

/// An unknown COMMIT that reads as a duration was meant for `--wait`,
/// which takes its value after `=` only (a bare `--wait` waits forever).
fn duration_hint(commit: &str) -> String {
    match crate::config::parse_duration(commit) {
        Ok(_) => {
            format!("; to wait at most {commit} for the lock, write --wait={commit} (with the =)")
        }
        Err(_) => String::new(),
    }
}
