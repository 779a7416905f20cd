//! A build step or hook (`build`, `hooks.*`), run in a release as the app's
//! user, its process recorded while it runs; used by steps 5, 7 and 9.

use crate::git;
use crate::health::Failure;
use crate::process::{self, Spec, StepEnd, StopWith};
use crate::state::{Slot, SlotStatus};

use crate::attempts::StepOutput;

use super::run::Run;

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

/// Run a build or hook in the slot; `Err` is the reason it failed.
pub(super) fn run_step(
    run: &mut Run,
    slot: Slot,
    sha: &str,
    port: u16,
    what: Step,
    command: &str,
) -> std::result::Result<(), Failure> {
    let label = what.label();
    let log = run.step_log(slot);
    process::log_marker(
        &log,
        &format!("{label} of {} in slot {slot}: {command}", git::short(sha)),
    );
    let env = run.env(slot, sha, port);
    let dir = run.tree(slot);
    let spec = Spec {
        command,
        dir: &dir,
        env: &env,
        log: &log,
        run_as: run.config.user.as_ref(),
    };
    let mut output = StepOutput::open(&log, label).map_err(|e| {
        Failure::Environment(format!(
            "cannot open {} for the {label}'s output: {e}",
            log.display()
        ))
    })?;
    let mut step = process::spawn_step(&spec)
        .map_err(|e| Failure::Commit(format!("cannot run the {label}: {e}")))?;
    // Before the app starts, the slot's recorded process is the build or
    // hook, so that a zdd killed meanwhile leaves nothing unrecorded.
    let records_step = run.state.slot(slot).status == SlotStatus::Starting
        && run.state.slot(slot).process.is_none();
    if records_step {
        run.state.slot_mut(slot).process = Some(step.started.id.clone());
        if let Err(e) = run.save() {
            let started = &mut step.started;
            process::stop_group(&started.id, StopWith::KILL, Some(&mut started.child));
            return Err(Failure::Commit(e.to_string()));
        }
    }
    // After the swap nothing may be cut short: the deploy is done.
    let interruptible = what.interruptible();
    let end = process::wait_step(&mut step, interruptible, &mut |chunk| output.write(chunk));
    output.finish();
    if records_step {
        run.state.slot_mut(slot).process = None;
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
