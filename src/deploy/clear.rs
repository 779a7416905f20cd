//! Step 4: clear the idle slot's port of what zdd's earlier runs left
//! there, and refuse one that anything else holds.

use crate::error::{Error, Result};
use crate::launch;
use crate::state::Slot;

use super::reconcile;
use super::run::Run;

/// Step 4: stop what zdd's own earlier runs left in `slot` — its
/// recorded process, a keeper zdd never recorded (killed just after
/// starting it), what is left in the app's cgroup — and refuse a port
/// held by anything else, which is never signalled.
pub(super) fn clear_port(run: &mut Run, slot: Slot) -> Result<()> {
    let port = run.config.port(slot);
    let recorded = run.state.slot(slot).process.clone();
    if let Some(id) = &recorded {
        reconcile::stop_earlier_run(run, slot, id)?;
    }
    let root = &run.config.root;
    let recorded = recorded.as_ref().map(|id| id.pid);
    launch::stop_leftovers(root, slot.name(), recorded, run.config.stop.with());
    // Whatever still listens is not provably zdd's: never signalled.
    if let Some(listener) = crate::ports::listeners(port, &[]).into_iter().next() {
        return Err(Error::Failed(format!(
            "port {port} of slot {slot} is taken by {}, which zdd cannot prove it started; stop it or change `ports` (nothing was changed{})",
            listener.described(root, slot.name()),
            run.serving_note()
        )));
    }
    Ok(())
}
