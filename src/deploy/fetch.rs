//! Step 3: fetch the repository and resolve the commit to deploy.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::git;

use super::plan::Resolved;
use super::run::Run;

/// Step 3: fetch into the idle slot's repository and resolve `wanted`.
pub(super) fn fetch_and_resolve(
    run: &mut Run,
    git_repo: &git::Repo,
    repo: &str,
    wanted: &git::Rev,
    named: bool,
) -> Result<Resolved> {
    let target = run.state.next_deploy;
    run.lock
        .at_step(&format!("fetching {repo} into slot {target}"));
    let t = Instant::now();
    let local = git::local_repo(repo);
    if let Some(path) = local.filter(|p| !p.exists()) {
        return Err(Error::Usage(format!(
            "repo {} (in {}) does not exist: set `repo` to the app's git repository, a path or a URL",
            path.display(),
            run.config.path.display()
        )));
    }
    git_repo.ensure().map_err(Error::Failed)?;
    let fetched = git_repo.fetch(repo);
    run.check_signal("nothing was deployed")?;
    fetched.map_err(|e| {
        let message = format!("cannot fetch {repo}: {e}");
        // A local folder that is no repository is the config's fault;
        // a remote that does not answer may answer next time.
        match local.is_some() && e.contains("does not appear to be a git repository") {
            true => Error::Usage(format!(
                "{message}; set `repo` in {} to the app's git repository (or let the user running zdd read it)",
                run.config.path.display()
            )),
            false => Error::Failed(message),
        }
    })?;
    let git::Commit { sha, subject } = git_repo.resolve(wanted).ok_or_else(|| {
        Error::Usage(match named {
            true => format!(
                "unknown commit {:?}: not a sha, tag or branch in {repo}{}",
                wanted.as_str(),
                hint(wanted.as_str(), &run.config.branch)
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

/// What an unknown COMMIT may have meant: `HEAD`, which zdd's copy of
/// the repository has none of (it fetches branches and tags), or a
/// duration for `--wait`, which takes its value after `=` only (a bare
/// `--wait` waits forever).
fn hint(commit: &str, branch: &str) -> String {
    if commit.eq_ignore_ascii_case("HEAD") {
        return format!(
            "; zdd's copy of the repository has branches and tags, no HEAD: `zdd deploy` alone deploys the tip of {branch}"
        );
    }
    match crate::config::parse_duration(commit) {
        Ok(_) => {
            format!("; to wait at most {commit} for the lock, write --wait={commit} (with the =)")
        }
        Err(_) => String::new(),
    }
}
