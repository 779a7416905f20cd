//! Starting an app so that it stays up, the one way that a deploy, a
//! rollback, `zdd start` and `zdd up` all do it: under its keeper (see
//! `keeper::spawn`), recorded at once by the caller, then verified —
//! healthy, answered by its own process group, the caller's own check (the
//! verify hook) — and only then its keeper armed.

use std::path::Path;

use crate::config::Health;
use crate::health::{self, Checker, Verified};
use crate::keeper;
use crate::process::{self, Started};

/// The environment of an app (and of a slot's build and hooks): `PORT`,
/// zdd's marks (`ZDD_ROOT`, `ZDD_SLOT`: see `process::mark_env`), then
/// `extra` (`ZDD_COMMIT` for a slot, the config's `[env]`).
pub fn app_env<'a>(
    root: &Path,
    name: &str,
    port: u16,
    extra: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, String)> {
    let mut env = vec![("PORT".to_string(), port.to_string())];
    env.extend(process::mark_env(root, name));
    env.extend(
        extra
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env
}

/// Verify an app just started on `port`: its health check passes, the
/// answer came from its own group, then `then` (the caller's own check).
/// With `arm`, its keeper is armed once all passed: from then on it starts
/// the app again if it exits on its own; an app that exited just before is
/// still a failed start (its keeper, not armed yet, ended with it).
pub fn verify(
    health: &Health,
    port: u16,
    started: &mut Started,
    arm: bool,
    then: impl FnOnce() -> Verified,
) -> Verified {
    let checker = Checker::new(health, port);
    let verdict = match health::wait_ready(health, &checker, started) {
        // The answer must have come from the new app, not from something
        // else that holds the port.
        Verified::Healthy => match answered_by(started, port) {
            Err(reason) => Verified::Foreign(reason),
            Ok(()) => then(),
        },
        other => other,
    };
    match verdict {
        Verified::Healthy if arm => match keeper::arm(started.id.pid).map(|()| started.exited()) {
            Ok(None) => Verified::Healthy,
            Ok(Some(status)) => {
                Verified::Failed(format!("the app exited during start-up ({status})"))
            }
            Err(e) => Verified::Foreign(format!(
                "cannot arm its keeper (pid {}): {e}",
                started.id.pid
            )),
        },
        other => other,
    }
}

/// Does the listener on `port` belong to the process group just started?
fn answered_by(started: &mut Started, port: u16) -> Result<(), String> {
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
