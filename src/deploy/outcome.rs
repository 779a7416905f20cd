//! What is recorded and said when a deploy or rollback ends: the swap's
//! record and summary line, then the pruning of releases `releases.keep` no
//! longer keeps (step 9); or, when a step fails before the swap,
//! the new slot stopped, the attempt in the history and the one sentence
//! that explains it.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::Error;
use crate::error::Result;
use crate::health::Failure;
use crate::process::{self, Started, Stopped};
use crate::state::{Action, HistoryEntry, Outcome, Phases, Slot, SlotStatus};
use crate::text::{fmt_ms, now, out};
use crate::{git, keeper, signals};

use super::plan::{self, Attempt};
use super::run::Run;
use super::step::{self, Step};

/// An error of zdd's own in a step (a signal, the state, a file): not the
/// commit's fault, unless it is a signal.
impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        match e {
            Error::Interrupted { number, .. } => {
                Failure::Interrupted(Signal::try_from(number).unwrap_or(Signal::SIGTERM))
            }
            other => Failure::Environment(other.to_string()),
        }
    }
}

/// Step 9: record the swap (the new slot live, the old one next to
/// deploy, a history entry), run `hooks.after_swap` on a new release,
/// and print the summary line. `old` was stopped or never ran.
pub(super) fn record_swap(mut run: Run, attempt: &Attempt, fresh: bool) -> Result<()> {
    let (action, target, sha) = (attempt.action, attempt.slot, attempt.sha.clone());
    let config = run.config;
    let short = git::short(&sha).to_string();
    let port = config.port(target);
    let old = target.other();
    let subject = run.state.slot(target).subject.clone();
    run.lock.at_step("recording the swap");
    // Step 9: record.
    keeper::fold_restarts(&mut run.state, &config.root);
    run.state.slot_mut(old).forget_process();
    // A deploy makes its release the newest (a rollback, or a restart
    // in place, reorders nothing).
    let moved = attempt.previous.as_deref() != Some(sha.as_str());
    if action == Action::Deploy && moved {
        if let Some(at) = run.state.releases.iter().position(|r| r.commit == sha) {
            let mut release = run.state.releases.remove(at);
            release.deployed_at = Some(now());
            run.state.releases.push(release);
        }
    }
    run.phases.total_ms = ms(run.started.elapsed());
    let phases = run.phases;
    run.state.push_history(HistoryEntry {
        at: now(),
        action,
        outcome: Outcome::Ok,
        commit: sha.clone(),
        slot: target,
        previous: attempt.previous.clone(),
        reason: attempt.because.clone().or_else(|| {
            attempt
                .reused
                .then(|| "reused its kept release: no checkout, no build".to_string())
        }),
        restarts: None,
        config: Some(run.config.fingerprint()),
        phases,
    });
    run.save()?;
    if let Some(hook) = config.hooks.after_swap.as_deref().filter(|_| fresh) {
        match step::run_step(&mut run, target, &sha, port, Step::AfterSwap, hook) {
            Ok(()) => {}
            Err(Failure::Commit(m) | Failure::Environment(m)) => {
                let text = format!("{m}; the swap itself is done");
                run.note(&text);
                log::warn!("{text}")
            }
            Err(Failure::Interrupted(sig)) => {
                let text = format!(
                    "the after_swap hook was stopped by {}; the swap itself is done",
                    sig.as_str()
                );
                run.note(&text);
                log::warn!("{text}")
            }
        }
    }
    let summary = format!(
        "{}{}",
        summary_line(action, &short, subject.as_deref(), target, port, &phases),
        match attempt.reused {
            true => "; reused its kept release",
            false => "",
        }
    );
    run.note_end(&summary);
    out!("{summary}");
    if let Some(why) = &attempt.because {
        out!("because {why}");
    }
    if let Some(sig) = signals::pending() {
        log::warn!("got {} during the swap; finished it first", sig.as_str());
    }
    prune_releases(&mut run);
    Ok(())
}

/// After a swap: remove the releases `releases.keep` no longer keeps
/// (`plan::to_prune`), what no record names (a zdd killed while it
/// checked one out, or while it removed one), and the trees of an
/// earlier zdd nothing holds. Each goes out of the record first, the
/// state saved, and is removed after: a record never names a folder
/// half removed.
fn prune_releases(run: &mut Run) {
    let t = std::time::Instant::now();
    let root = run.config.root.clone();
    run.lock.at_step("removing old releases");
    let mut gone = Vec::new();
    for sha in plan::to_prune(&run.state, run.config.releases.keep) {
        if let Some(dir) = run.state.release(&sha).map(|r| r.dir.clone()) {
            gone.push(dir);
            run.state.releases.retain(|r| r.commit != sha);
        }
    }
    if !gone.is_empty() {
        if let Err(e) = run.save() {
            log::warn!("{e}");
            return;
        }
    }
    signals::fault_point("pruning");
    let removed = gone.len();
    // What no record names and no slot holds: earlier removals, and
    // checkouts a killed zdd left.
    let named = |name: &str| {
        run.state.release(name).is_some()
            || Slot::BOTH
                .iter()
                .any(|&s| run.state.slot(s).commit.as_deref() == Some(name))
    };
    for (folder, prefix) in [("releases", "releases/"), ("git/index", "git/index/")] {
        let Ok(entries) = std::fs::read_dir(root.join(folder)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !named(&name) {
                gone.push(format!("{prefix}{name}"));
            }
        }
    }
    for slot in Slot::BOTH {
        let legacy = format!("slots/{}", slot.name());
        if run.state.releases.iter().any(|r| r.dir == legacy) {
            continue;
        }
        for dir in [
            legacy,
            format!("git/{}", slot.name()),
            format!("git/{}.index", slot.name()),
        ] {
            if std::fs::symlink_metadata(root.join(&dir)).is_ok() {
                gone.push(dir);
            }
        }
    }
    gone.sort();
    gone.dedup();
    for dir in &gone {
        if let Err(e) = git::remove_leftover(&root.join(dir)) {
            log::warn!("cannot remove {dir}: {e}");
        }
    }
    let _ = std::fs::remove_dir(root.join("slots")); // once empty
    if removed > 0 {
        log::info!(
            "removed {removed} release(s) beyond releases.keep = {} in {}",
            run.config.releases.keep,
            crate::text::fmt(t.elapsed())
        );
    }
}

/// A deploy that failed: the release it built goes, unless it went
/// live before or it is built and the failure was not its own.
fn discard_release(run: &mut Run, attempt: &Attempt, commit_fault: bool) {
    let sha = attempt.sha.as_str();
    let release = run.state.release(sha);
    let keep = release.is_some_and(|r| r.good() || !commit_fault);
    // Never what another slot holds, nor what was live before.
    let held = run.state.slot(attempt.slot.other()).commit.as_deref() == Some(sha)
        || attempt.previous.as_deref() == Some(sha);
    if attempt.action != Action::Deploy || keep || held {
        return;
    }
    let dir = run.state.release_dir(sha);
    let root = &run.config.root;
    let index = root.join("git/index").join(sha);
    match git::remove_leftover(&root.join(&dir)).and_then(|()| git::remove_leftover(&index)) {
        Ok(()) => {
            run.state.releases.retain(|r| r.commit != sha);
            log::debug!("removed {dir}: the release did not make it");
        }
        Err(e) => log::warn!("cannot remove the failed release {dir}: {e}"),
    }
}

/// Abort for a failure that is not the commit's (cron tries it again):
/// git, nginx, a port. The slot's log has nothing to add to it.
pub(super) fn abort_env(
    run: &mut Run,
    attempt: &Attempt,
    reason: String,
    new: Option<&mut Started>,
) -> Error {
    abort(run, attempt, Failure::Environment(reason), new, false)
}

/// A deploy or rollback failed before the swap because of what ran in
/// the slot (a build, a hook, the app): stop the new slot, record the
/// attempt, and explain, quoting what this attempt wrote to the log.
pub(super) fn abort_with(
    run: &mut Run,
    attempt: &Attempt,
    why: Failure,
    new: Option<&mut Started>,
) -> Error {
    abort(run, attempt, why, new, true)
}

fn abort(
    run: &mut Run,
    attempt: &Attempt,
    why: Failure,
    new: Option<&mut Started>,
    quote_log: bool,
) -> Error {
    let (action, slot, sha) = (attempt.action, attempt.slot, attempt.sha.as_str());
    let mut stopped = String::new();
    if let Some(started) = new {
        let r = process::stop_group(
            &started.id,
            run.config.stop.with(),
            Some(&mut started.child),
        );
        if r != Stopped::NotRunning {
            stopped = format!("stopped slot {slot}; ");
        }
    }
    {
        let s = run.state.slot_mut(slot);
        s.forget_process();
        s.status = match action {
            // A rollback target still holds the release it held.
            Action::Rollback => SlotStatus::Standby,
            Action::Deploy | Action::Restart => SlotStatus::Failed,
        };
    }
    discard_release(run, attempt, matches!(why, Failure::Commit(_)));
    let (outcome, reason) = match &why {
        Failure::Commit(r) => (Outcome::Failed, r.clone()),
        Failure::Environment(r) => (Outcome::Error, r.clone()),
        Failure::Interrupted(sig) => (
            Outcome::Interrupted,
            format!("interrupted by {}", sig.as_str()),
        ),
    };
    run.phases.total_ms = ms(run.started.elapsed());
    run.state.push_history(HistoryEntry {
        at: now(),
        action,
        outcome,
        commit: sha.to_string(),
        slot,
        previous: attempt.previous.clone(),
        reason: Some(reason.clone()),
        restarts: None,
        config: Some(run.config.fingerprint()),
        phases: run.phases,
    });
    let saved = run.save();
    let serving = run.serving_note();
    // The app it started, stopped now, wrote all it will.
    run.copy_start_output();
    let tail = match &run.attempt_log {
        _ if !quote_log || matches!(why, Failure::Interrupted(_)) => String::new(),
        Some(log) => process::tail_note(log.path()),
        // This attempt's own output: none when nothing ran in the slot.
        None => process::tail_note_since(&run.log_path(slot), run.log_sizes[slot.index()]),
    };
    run.note_end(&format!("the {} failed: {reason}", attempt.what()));
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
    failure(attempt, why, &stopped, &serving, &after, &tail)
}

/// The summary line of a swap: what, where, and each phase's time.
fn summary_line(
    action: Action,
    short: &str,
    subject: Option<&str>,
    slot: Slot,
    port: u16,
    p: &Phases,
) -> String {
    let verb = match action {
        Action::Deploy => "deployed",
        Action::Rollback => "rolled back to",
        Action::Restart => "restarted",
    };
    format!(
        "{verb} {short}{} in slot {slot} (port {port}): fetch+checkout {}, build {}, ready {}, nginx {}, settle {}, drain {}, total {}",
        subject.map(|s| format!(" {s:?}")).unwrap_or_default(),
        fmt_ms(p.fetch_ms),
        fmt_ms(p.build_ms),
        fmt_ms(p.ready_ms),
        fmt_ms(p.route_ms),
        fmt_ms(p.settle_ms),
        fmt_ms(p.drain_ms),
        fmt_ms(p.total_ms),
    )
}

/// The error a failed attempt ends with: one sentence, then the log's
/// last lines (`stopped`, `serving`, `after`, `tail` are its parts, each
/// empty or ready to append).
fn failure(
    attempt: &Attempt,
    why: Failure,
    stopped: &str,
    serving: &str,
    after: &str,
    tail: &str,
) -> Error {
    let (what, slot, short) = (attempt.what(), attempt.slot, git::short(&attempt.sha));
    match why {
        Failure::Commit(reason) | Failure::Environment(reason) => Error::Failed(format!(
            "{what} of {short} to slot {slot} failed: {reason}; {stopped}nothing else changed{serving}{after}{tail}"
        )),
        Failure::Interrupted(sig) => Error::interrupted(
            sig,
            format!("{stopped}the {what} of {short} was abandoned{serving}"),
        ),
    }
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(action: Action) -> Attempt {
        Attempt::new(
            action,
            Slot::B,
            "5145c65a3ef0d1b2c3d4e5f60718293a4b5c6d7e",
            Some("52951a39bfdc0000000000000000000000000000".into()),
        )
    }

    #[test]
    fn summary_lines() {
        let p = Phases::example(12_345);
        let lines = [
            summary_line(
                Action::Deploy,
                "5145c65a3ef0",
                Some("v2: second release"),
                Slot::B,
                3002,
                &p,
            ),
            summary_line(Action::Rollback, "52951a39bfdc", None, Slot::A, 3001, &p),
        ];
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn failure_messages() {
        let texts = [
            failure(
                &attempt(Action::Deploy),
                Failure::Commit("not healthy after 30s (last check of http://127.0.0.1:3002/: HTTP 500 (expected 200-299), body \"v2\")".into()),
                "stopped slot b; ",
                "; slot a still serves 52951a39bfdc",
                "; cron runs will not retry 5145c65a3ef0, the tip of main, until main moves",
                "\nlast lines of /var/lib/zdd/shop/logs/b.log:\n  app v2 listening on 127.0.0.1:3002",
            ),
            failure(
                &attempt(Action::Rollback),
                Failure::Environment("nginx did not answer at http://127.0.0.1:80/.zdd/upstream within 5s (connection refused): nothing answers on nginx.listen = \"80\"; is nginx running, with the config from `zdd nginx`?".into()),
                "stopped slot b; ",
                "; slot a still serves 52951a39bfdc",
                "",
                "",
            ),
            failure(
                &attempt(Action::Deploy),
                Failure::Interrupted(Signal::SIGINT),
                "stopped slot b; ",
                "; slot a still serves 52951a39bfdc",
                "",
                "",
            ),
        ];
        let text: Vec<String> = texts
            .iter()
            .map(|e| format!("exit {}: {e}", e.code()))
            .collect();
        insta::assert_snapshot!(text.join("\n\n"));
    }
}
