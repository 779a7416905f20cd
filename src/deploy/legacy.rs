//! Upgrade in place: the work trees of an earlier zdd (`slots/X`, with
//! `git/X`) recorded as releases and moved to `releases/SHA`, without a
//! rebuild and without stopping what runs from them (part of step 2).

use crate::error::{Error, Result};
use crate::git;
use crate::root;
use crate::state::{Slot, SlotStatus};

use super::run::Run;

/// Releases an earlier zdd built in the slots' own work trees
/// (`slots/X`, with `git/X`): recorded as releases where they are, and
/// moved to `releases/SHA` once nothing runs from them (an app that
/// runs there keeps its paths). Returns whether the state changed.
pub(super) fn adopt_legacy_trees(run: &mut Run) -> Result<bool> {
    let root = run.config.root.clone();
    let mut changed = false;
    // Oldest first: the standby slot's release served before the live one.
    let mut order: Vec<Slot> = Slot::BOTH.to_vec();
    order.sort_by_key(|&s| run.state.active == Some(s));
    for slot in order {
        let s = run.state.slot(slot).clone();
        let Some(sha) = s.commit.clone() else {
            continue;
        };
        let legacy = root.join("slots").join(slot.name());
        let served = matches!(s.status, SlotStatus::Live | SlotStatus::Standby);
        if !served
            || run.state.release(&sha).is_some()
            || git::legacy_head(&root, slot.name()).as_deref() != Some(sha.as_str())
            || !legacy.is_dir()
        {
            continue;
        }
        root::check_no_symlink(&legacy)?;
        let deployed_at = run
            .state
            .history
            .iter()
            .rev()
            .find(|h| h.commit == sha && h.outcome == crate::state::Outcome::Ok)
            .map(|h| h.at.clone())
            .unwrap_or_else(crate::text::now);
        run.state.releases.push(crate::state::Release {
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
        run.save()?;
    }
    for slot in Slot::BOTH {
        let legacy_dir = format!("slots/{}", slot.name());
        let runs = run.state.slot(slot).process.is_some();
        let Some(at) = run.state.releases.iter().position(|r| r.dir == legacy_dir) else {
            continue;
        };
        let to = crate::state::release_dir(&run.state.releases[at].commit);
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
                git::short(&run.state.releases[at].commit)
            );
        }
        // Moved now, or by a zdd killed before it recorded the move.
        run.state.releases[at].dir = to;
        run.save()?;
        changed = true;
    }
    // A slot that went live without its release being marked so (zdd
    // killed after the flip, the next run recording it live): good.
    if let Some(sha) = run.state.live_commit().map(str::to_string) {
        if let Some(r) = run.state.release_mut(&sha).filter(|r| !r.good()) {
            r.deployed_at = Some(crate::text::now());
            changed = true;
        }
    }
    Ok(changed)
}
