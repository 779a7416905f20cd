//! Step 5: check the commit out into its own release folder, link the
//! `shared` paths into it, copy the `cache` paths from an earlier release,
//! and run the build and its hooks there; the release is then recorded.

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::health::Failure;
use crate::process;
use crate::state::SlotStatus;
use crate::text::fmt;
use crate::{git, signals};

use super::outcome::{self, ms};
use super::plan::{Attempt, Resolved};
use super::run::Run;
use super::step::{self, Step};

/// Step 5: check the commit out in the idle slot and build it (hooks
/// around the build). From here on the slot no longer holds what it
/// held before, so the state says so first.
pub(super) fn check_out_and_build(
    run: &mut Run,
    checkout: &git::Checkout,
    attempt: &Attempt,
    resolved: &Resolved,
) -> Result<()> {
    let (config, target, sha) = (run.config, attempt.slot, attempt.sha.as_str());
    let short = git::short(sha);
    {
        let s = run.state.slot_mut(target);
        s.status = SlotStatus::Starting;
        s.commit = Some(sha.to_string());
        s.subject = Some(resolved.subject.clone());
    }
    run.save()?;
    run.lock
        .at_step(&format!("checking out {short} for slot {target}"));
    let t = Instant::now();
    // As the work tree's owner: the user who builds and runs the app.
    if let Err(e) = checkout.check_out(sha, config.user.as_ref()) {
        return Err(outcome::abort_env(
            run,
            attempt,
            format!("cannot check out {short}: {e}"),
            None,
        ));
    }
    signals::fault_point("checked-out");
    if let Err(e) = link_shared(run, sha) {
        return Err(outcome::abort_with(run, attempt, e, None));
    }
    signals::fault_point("linked");
    warm_caches(run, sha);
    run.phases.fetch_ms = ms(resolved.fetch_time + t.elapsed());
    let text = format!(
        "slot {target}: checked out {short} into {} in {}",
        crate::state::release_dir(sha),
        fmt(t.elapsed())
    );
    log::info!("{text}");
    run.note(&text);

    let t = Instant::now();
    run.lock
        .at_step(&format!("building {short} in slot {target}"));
    for (what, command) in [
        (Step::AfterCheckout, config.hooks.after_checkout.as_deref()),
        (Step::Build, config.build.as_deref()),
        (Step::BeforeStart, config.hooks.before_start.as_deref()),
    ] {
        let Some(command) = command else { continue };
        let step = Instant::now();
        if let Err(e) = step::run_step(run, target, sha, config.port(target), what, command) {
            return Err(outcome::abort_with(run, attempt, e, None));
        }
        log::info!(
            "slot {target}: {} done in {}",
            what.label(),
            fmt(step.elapsed())
        );
    }
    run.phases.build_ms = ms(t.elapsed());
    // Built: a release, kept for deploys and rollbacks without a build.
    run.state.releases.retain(|r| r.commit != sha);
    run.state.releases.push(crate::state::Release {
        commit: sha.to_string(),
        subject: Some(resolved.subject.clone()),
        dir: crate::state::release_dir(sha),
        built_at: crate::text::now(),
        deployed_at: None,
    });
    run.save()?;
    signals::fault_point("built");
    Ok(())
}

/// Link each `shared` path into `sha`'s fresh release, before its
/// build: `PATH -> ROOT/shared/PATH`, made there (the app user's) if
/// missing. A path the commit tracks is an error naming it. The links
/// are made as the release's owner (root never writes in its tree),
/// by argv, never a shell.
fn link_shared(run: &Run, sha: &str) -> std::result::Result<(), Failure> {
    let config = run.config;
    if config.shared.is_empty() {
        return Ok(());
    }
    let env = |e: Error| Failure::Environment(e.to_string());
    crate::root::prepare(&config.root, &[crate::root::SHARED]).map_err(env)?;
    let release = config.root.join(crate::state::release_dir(sha));
    let owner = config.user.as_ref().map_or_else(
        || {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        },
        |u| (u.uid, u.gid),
    );
    for item in &config.shared {
        if std::fs::symlink_metadata(release.join(&item.path)).is_ok() {
            return Err(Failure::Commit(format!(
                "the commit has {}, which `shared` in {} names: remove it from the repository (`git rm -r --cached {}` and ignore it), or from `shared`",
                item.path,
                config.path.display(),
                item.path
            )));
        }
        let target = config.root.join("shared").join(&item.path);
        match crate::tree::make_entry(
            &config.root.join("shared"),
            &item.path,
            item.dir,
            if item.dir { 0o755 } else { 0o644 },
            owner,
        ) {
            Ok(true) => log::info!(
                "created {} for `shared` ({}, empty)",
                target.display(),
                if item.dir { "a folder" } else { "a file" }
            ),
            Ok(false) => {}
            Err(e) => {
                return Err(Failure::Environment(format!(
                    "cannot prepare {}: {e}",
                    target.display()
                )))
            }
        }
        let link = Path::new(&item.path);
        if let Some(parent) = link.parent().filter(|p| !p.as_os_str().is_empty()) {
            as_owner(
                run,
                &release,
                "mkdir",
                &["-p", "--", &parent.to_string_lossy()],
            )?;
        }
        as_owner(
            run,
            &release,
            "ln",
            &["-s", "--", &target.to_string_lossy(), &item.path],
        )?;
    }
    log::info!(
        "linked {} shared path(s) into {}",
        config.shared.len(),
        crate::state::release_dir(sha)
    );
    Ok(())
}

/// Copy each `cache` path from the live release (else the newest kept
/// one) into `sha`'s fresh release before its build: `cp -a
/// --reflink=auto`, as the releases' owner, by argv — a copy each,
/// never a folder two releases share. A cache that cannot be copied
/// makes a cold build, with a warning; never a failed deploy.
fn warm_caches(run: &Run, sha: &str) {
    let config = run.config;
    let from = run
        .state
        .live_commit()
        .and_then(|c| run.state.release(c))
        .or_else(|| run.state.releases.iter().rev().find(|r| r.commit != sha));
    let Some(from) = from.filter(|_| !config.cache.is_empty()) else {
        return;
    };
    let t = Instant::now();
    let source = config.root.join(&from.dir);
    let release = config.root.join(crate::state::release_dir(sha));
    let mut copied = 0;
    for item in &config.cache {
        let src = source.join(&item.path);
        let parent = Path::new(&item.path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty());
        let copy = parent
            .map_or(Ok(()), |p| {
                as_owner(run, &release, "mkdir", &["-p", "--", &p.to_string_lossy()])
            })
            .and_then(|()| {
                as_owner(
                    run,
                    &release,
                    "cp",
                    &[
                        "-a",
                        "--reflink=auto",
                        "-T",
                        "--",
                        &src.to_string_lossy(),
                        &item.path,
                    ],
                )
            });
        match copy {
            Ok(()) => copied += 1,
            Err(Failure::Environment(e) | Failure::Commit(e))
                if e.contains("No such file or directory") =>
            {
                log::debug!("no {} in {} to start the build from", item.path, from.dir)
            }
            Err(Failure::Environment(e) | Failure::Commit(e)) => {
                log::warn!(
                    "cannot copy the cache {} from {}: {e}; building without it",
                    item.path,
                    from.dir
                )
            }
            Err(Failure::Interrupted(_)) => {}
        }
    }
    if copied > 0 {
        log::info!(
            "copied {copied} cache path(s) from {} in {}",
            from.dir,
            fmt(t.elapsed())
        );
    }
}

/// Run `program ARGS` in `dir` as the release's owner.
fn as_owner(
    run: &Run,
    dir: &Path,
    program: &str,
    args: &[&str],
) -> std::result::Result<(), Failure> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null());
    if let Some(user) = run.config.user.as_ref() {
        process::user_env(&mut cmd, user);
        process::become_user(&mut cmd, user);
    }
    process::new_session(&mut cmd);
    let out = cmd
        .output()
        .map_err(|e| Failure::Environment(format!("cannot run {program}: {e}")))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(Failure::Environment(format!(
            "`{program} {}` in {} failed: {}",
            args.join(" "),
            dir.display(),
            crate::text::escape(String::from_utf8_lossy(&out.stderr).trim())
        ))),
    }
}
