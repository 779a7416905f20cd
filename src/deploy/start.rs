//! Steps 4 to 7: clear the idle slot's port, run the build and hooks,
//! start the new slot under its keeper and verify it (health, verify hook,
//! the answer from the right process), then arm its keeper.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::NginxMode;
use crate::error::{Error, Result};
use crate::launch;
use crate::process::{self, Spec, Started, StepEnd, StopWith};
use crate::state::{Slot, SlotStatus};
use crate::text::fmt;
use crate::{git, signals};

use super::outcome::ms;
use super::plan::Attempt;
use super::run::Run;
use crate::health::Failure;
use crate::text::now;

/// A build step or hook zdd runs in a release, by what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    AfterCheckout,
    Build,
    BeforeStart,
    Verify,
    AfterSwap,
}

impl Step {
    /// As messages and the log's marker lines name it.
    pub(super) fn label(self) -> &'static str {
        match self {
            Step::AfterCheckout => "after_checkout hook",
            Step::Build => "build",
            Step::BeforeStart => "before_start hook",
            Step::Verify => "verify hook",
            Step::AfterSwap => "after_swap hook",
        }
    }

    /// A signal to zdd stops it, except after the swap: the deploy is done.
    fn interruptible(self) -> bool {
        self != Step::AfterSwap
    }
}

/// How an app is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Launch {
    /// On its slot's port, under its keeper.
    Start,
    /// Round-robin mode: first on a private port, alone, stopped after.
    Rehearsal,
    /// `zdd up`: the live slot again, where it is.
    Up,
}

impl Launch {
    /// As the log's marker lines and the test fault points name it.
    fn label(self) -> &'static str {
        match self {
            Launch::Start => "start",
            Launch::Rehearsal => "rehearsal",
            Launch::Up => "up",
        }
    }
}

impl Run<'_> {
    /// Step 4: stop what zdd's own earlier runs left in `slot` — its
    /// recorded process, a keeper zdd never recorded (killed just after
    /// starting it), what is left in the app's cgroup — and refuse a port
    /// held by anything else, which is never signalled.
    pub(super) fn clear_port(&mut self, slot: Slot) -> Result<()> {
        let port = self.config.port(slot);
        let recorded = self.state.slot(slot).process.clone();
        if let Some(id) = &recorded {
            self.stop_earlier_run(slot, id)?;
        }
        let root = &self.config.root;
        let recorded = recorded.as_ref().map(|id| id.pid);
        launch::stop_leftovers(root, slot.name(), recorded, self.config.stop.with());
        // Whatever still listens is not provably zdd's: never signalled.
        if let Some(listener) = crate::ports::listeners(port, &[]).into_iter().next() {
            return Err(Error::Failed(format!(
                "port {port} of slot {slot} is taken by {}, which zdd cannot prove it started; stop it or change `ports` (nothing was changed{})",
                listener.described(root, slot.name()),
                self.serving_note()
            )));
        }
        Ok(())
    }

    /// Before `attempt.slot` starts: it holds the attempt's release, and
    /// `route/SLOT/app` names its folder. The state is saved with the
    /// process that starts next (`save_or_stop`); a zdd killed before then
    /// leaves a link the next run points back at what the state says.
    pub(super) fn hold_release(&mut self, attempt: &Attempt) -> Result<()> {
        let (slot, sha) = (attempt.slot, attempt.sha.as_str());
        let subject = self.state.release(sha).and_then(|r| r.subject.clone());
        let s = self.state.slot_mut(slot);
        if s.commit.as_deref() != Some(sha) {
            s.commit = Some(sha.to_string());
            s.subject = subject;
        }
        self.point_apps();
        Ok(())
    }

    /// Link each `shared` path into `sha`'s fresh release, before its
    /// build: `PATH -> ROOT/shared/PATH`, made there (the app user's) if
    /// missing. A path the commit tracks is an error naming it. The links
    /// are made as the release's owner (root never writes in its tree),
    /// by argv, never a shell.
    pub(super) fn link_shared(&self, sha: &str) -> std::result::Result<(), Failure> {
        let config = self.config;
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
                self.as_owner(&release, "mkdir", &["-p", "--", &parent.to_string_lossy()])?;
            }
            self.as_owner(
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
    pub(super) fn warm_caches(&self, sha: &str) {
        let config = self.config;
        let from = self
            .state
            .live_commit()
            .and_then(|c| self.state.release(c))
            .or_else(|| self.state.releases.iter().rev().find(|r| r.commit != sha));
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
                    self.as_owner(&release, "mkdir", &["-p", "--", &p.to_string_lossy()])
                })
                .and_then(|()| {
                    self.as_owner(
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
        &self,
        dir: &Path,
        program: &str,
        args: &[&str],
    ) -> std::result::Result<(), Failure> {
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null());
        if let Some(user) = self.config.user.as_ref() {
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

    /// Run a build or hook in the slot; `Err` is the reason it failed.
    pub(super) fn step(
        &mut self,
        slot: Slot,
        sha: &str,
        port: u16,
        what: Step,
        command: &str,
    ) -> std::result::Result<(), Failure> {
        let label = what.label();
        let log = self.step_log(slot);
        process::log_marker(
            &log,
            &format!("{label} of {} in slot {slot}: {command}", git::short(sha)),
        );
        let env = self.env(slot, sha, port);
        let dir = self.tree(slot);
        let spec = Spec {
            command,
            dir: &dir,
            env: &env,
            log: &log,
            run_as: self.config.user.as_ref(),
        };
        let mut step = process::spawn_step(&spec)
            .map_err(|e| Failure::Commit(format!("cannot run the {label}: {e}")))?;
        // Before the app starts, the slot's recorded process is the build or
        // hook, so that a zdd killed meanwhile leaves nothing unrecorded.
        let records_step = self.state.slot(slot).status == SlotStatus::Starting
            && self.state.slot(slot).process.is_none();
        if records_step {
            self.state.slot_mut(slot).process = Some(step.id.clone());
            if let Err(e) = self.save() {
                process::stop_group(&step.id, StopWith::KILL, Some(&mut step.child));
                return Err(Failure::Commit(e.to_string()));
            }
        }
        // After the swap nothing may be cut short: the deploy is done.
        let interruptible = what.interruptible();
        let end = process::wait_step(&mut step, interruptible);
        if records_step {
            self.state.slot_mut(slot).process = None;
        }
        match end {
            Err(e) => Err(Failure::Commit(format!("cannot run the {label}: {e}"))),
            Ok(StepEnd::Interrupted(sig)) => Err(Failure::Interrupted(sig)),
            Ok(StepEnd::Exited(status)) if status.success() => Ok(()),
            Ok(StepEnd::Exited(status)) => {
                Err(Failure::Commit(format!("the {label} failed ({status})")))
            }
        }
    }

    /// Steps 6 and 7: start the new slot under its keeper, record it at
    /// once, verify it. In round-robin mode a new commit first runs a
    /// rehearsal on a private port: there nginx sends requests to a slot
    /// port as soon as anything listens on it, so a version that listens but
    /// answers errors must never listen there. With the switch the new slot
    /// is only a backup until the flip, so it is verified where it will
    /// serve. `fresh`: a commit that never served from this slot (verify
    /// hook, rehearsal).
    pub(super) fn start_new(&mut self, attempt: &Attempt, fresh: bool) -> Result<Started> {
        let (target, config) = (attempt.slot, self.config);
        let port = config.port(target);
        self.lock.at_step(&format!(
            "starting {} in slot {target}",
            git::short(&attempt.sha)
        ));
        let t = Instant::now();
        let rehearse = fresh && self.mode == NginxMode::RoundRobin && config.health.rehearse;
        if rehearse {
            let private = match free_port(&config.ports) {
                Ok(p) => p,
                Err(e) => {
                    let reason = format!("cannot find a free port for the rehearsal: {e}");
                    return Err(self.abort_env(attempt, reason, None));
                }
            };
            let mut rehearsal = self.start_verified(attempt, private, Launch::Rehearsal, true)?;
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
        let started = self.start_verified(attempt, port, Launch::Start, verify_here)?;
        self.phases.ready_ms = ms(t.elapsed());
        self.copy_start_output();
        let text = format!(
            "slot {target}: pid {} healthy on port {port} after {}",
            started.id.pid,
            fmt(t.elapsed())
        );
        log::info!("{text}");
        self.note(&text);
        Ok(started)
    }

    /// Start the app of `target` on `port` — under its keeper, or alone for
    /// a rehearsal — and record it in the state (not yet saved).
    pub(super) fn launch(
        &mut self,
        target: Slot,
        sha: &str,
        port: u16,
        how: Launch,
        rollback: Option<(u32, Duration, &Path)>,
    ) -> std::io::Result<Started> {
        // What an earlier start of this attempt wrote (a rehearsal's).
        self.copy_start_output();
        let app = self.app(target, sha, port);
        let marker = format!(
            "{} of {} in slot {target} on port {port}: {}",
            how.label(),
            git::short(sha),
            app.command
        );
        self.note(&format!("{marker} (its output: {})", app.log().display()));
        let from = process::log_size(&app.log());
        // What stays up runs under its keeper; a rehearsal does not stay.
        let started = match how {
            Launch::Rehearsal => app.alone(&marker, &self.env_file)?,
            Launch::Start => app.keep(&marker, false, rollback)?,
            Launch::Up => app.keep(&marker, true, None)?,
        };
        self.start_output = Some((target, from));
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
    pub(super) fn start_verified(
        &mut self,
        attempt: &Attempt,
        port: u16,
        how: Launch,
        verify: bool,
    ) -> Result<Started> {
        let label = how.label();
        let (target, sha) = (attempt.slot, attempt.sha.as_str());
        let config = self.config;
        let rollback = attempt.crash_rollback.then_some((
            config.keeper.rollback_after,
            config.keeper.rollback_within,
            config.path.as_path(),
        ));
        let mut started = match self.launch(target, sha, port, how, rollback) {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("cannot start `{}`: {e}", config.start);
                return Err(self.abort_env(attempt, reason, None));
            }
        };
        self.save_or_stop(&mut started)?;
        signals::fault_point(label);

        let hook = config.hooks.verify.as_deref().filter(|_| verify);
        let rehearsal = how == Launch::Rehearsal;
        let verified = launch::verify(&config.health, port, &mut started, !rehearsal, || {
            hook.map_or(Ok(()), |hook| {
                self.step(target, sha, port, Step::Verify, hook)
            })
        });
        let why = match verified {
            Ok(()) => return Ok(started),
            Err(Failure::Commit(reason)) if rehearsal => Failure::Commit(format!(
                "{reason} (in the rehearsal on private port {port})"
            )),
            Err(why) => why,
        };
        Err(self.abort_with(attempt, why, Some(&mut started)))
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
