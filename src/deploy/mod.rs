//! Deploy, rollback and restart, step by step as in the README ("How a
//! deploy works"): this file is the step list, one line a step, each step a
//! function of its own module taking the `Run` — `run` holds the lock and
//! the state, `plan` decides from plain data. Steps 1, 2: `run` (lock,
//! load), `reconcile` (with `legacy`); 3 `fetch`; 4 `clear`; 5 `build`;
//! 6, 7 `start`; 8 `swap`; 9 `outcome`, which also says how a failed
//! attempt ended. `step` runs a build or a hook; `up` is `zdd up`.

mod build;
mod clear;
mod fetch;
mod legacy;
mod outcome;
mod plan;
mod reconcile;
mod run;
mod start;
mod step;
mod swap;
mod up;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::git;
use crate::lock::LockWait;
use crate::state::Action;
use crate::text::{fmt, out};

pub use plan::rollback_target;

use crate::health::Failure;
use plan::{Attempt, Decision};
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
    let mut run = begin(config, wait, "zdd deploy")?; // 1, 2: lock, reconcile
    let target = run.state.next_deploy;
    let git_repo = run.repo()?;
    let wanted = named.as_ref().unwrap_or(&branch);
    let resolved = fetch::fetch_and_resolve(&mut run, &git_repo, &repo, wanted, named.is_some())?; // 3
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
            clear::clear_port(&mut run, slot)?;
            let attempt = Attempt::new(Action::Deploy, slot, &live_sha, Some(live_sha.clone()));
            run.log_attempt(&attempt);
            return bring_up(run, attempt, false);
        }
        Decision::Deploy { .. } => {}
    }
    let checkout = run.checkout(sha)?; // its folders: no symlink
    log::info!(
        "fetched in {}: {wanted} is {short} {:?}",
        fmt(resolved.fetch_time),
        resolved.subject
    );
    clear::clear_port(&mut run, target)?; // 4
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
            build::check_out_and_build(&mut run, &checkout, &attempt, &resolved)?; // 5
            true
        }
    };
    bring_up(run, attempt, fresh) // 6 to 9
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
    let mut run = begin(config, wait, "zdd rollback")?; // 1, 2
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
    clear::clear_port(&mut run, target)?; // 4
    let previous = run.state.live_commit().map(str::to_string);
    let mut attempt = Attempt::new(Action::Rollback, target, &commit, previous.clone());
    attempt.because = because.map(|why| match &previous {
        Some(p) => format!("{} {why}", git::short(p)),
        None => why.to_string(),
    });
    run.log_attempt(&attempt);
    bring_up(run, attempt, false) // 6 to 9
}

/// `zdd restart`: the live release started again on the idle slot with the
/// config as it is now (`[env]`, `start`), verified, flipped to, and the
/// old process drained and stopped — a rollback to the live release. The
/// rollback target stays what it was.
pub fn restart(config: &Config, wait: LockWait) -> Result<()> {
    let mut run = begin(config, wait, "zdd restart")?; // 1, 2
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
    clear::clear_port(&mut run, target)?; // 4
    let attempt = Attempt::new(Action::Restart, target, &sha, Some(sha.clone()));
    run.log_attempt(&attempt);
    bring_up(run, attempt, false) // 6 to 9
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
        match begin(config, wait, "zdd up") {
            Ok(mut run) => errors.extend(up::up_live(&mut run).err()),
            Err(e) => errors.push(e),
        }
    }
    errors.extend(crate::named::up(config, wait));
    Error::worst_of(errors)
}

/// Steps 1 and 2: lock and load the state, then make it match reality.
fn begin<'a>(config: &'a Config, wait: LockWait, command: &str) -> Result<Run<'a>> {
    let mut run = Run::open(config, wait, command)?; // 1
    reconcile::with_reality(&mut run)?; // 2
    Ok(run)
}

/// Steps 6 to 9 for `attempt.slot`, which holds `attempt.sha` checked
/// out and built. `fresh`: the commit never served from this slot, so it
/// gets the verify hook (and, in round-robin mode, the rehearsal) and
/// its keeper may roll it back; a rollback or a restart in place of the
/// live commit gets none of these.
fn bring_up(mut run: Run, mut attempt: Attempt, fresh: bool) -> Result<()> {
    start::hold_release(&mut run, &attempt)?;
    attempt.crash_rollback = fresh
        && attempt.action == Action::Deploy
        && run.config.keeper.rollback_after > 0
        && run
            .state
            .live_commit()
            .is_some_and(|c| run.state.release(c).is_some());
    if let Err(e) = run.check_signal("") {
        return Err(outcome::abort_with(
            &mut run,
            &attempt,
            Failure::from(e),
            None,
        ));
    }
    let old = attempt.slot.other();
    let old_process = run
        .state
        .slot(old)
        .process
        .clone()
        .filter(|id| id.group_is_ours());
    if old_process.is_some() {
        swap::check_routing(&mut run, &attempt, old)?; // before 6: nginx follows the switch
    }
    let mut started = start::start_new(&mut run, &attempt, fresh)?; // 6, 7: start, verify
    swap::steer(&mut run, &attempt, &mut started, old_process.is_some())?; // 8: flip, confirm

    // New requests reach the new slot: so do static files served from
    // `current` (the old slot's stay on disk for requests in flight).
    run.point_current(attempt.slot);
    if let Some(old_id) = &old_process {
        swap::stop_old(&mut run, old, old_id); // 8: settle, drain, stop
    }
    outcome::record_swap(run, &attempt, fresh) // 9: record, summary
}
