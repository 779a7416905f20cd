//! Git plumbing for slot checkouts, always by argv (never a shell):
//! init, fetch, resolve a name to a commit, forced detached checkout.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Run `git -C dir ARGS...`; `Err` carries git's own message.
fn git(dir: &Path, args: &[&str]) -> Result<Output, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "safe.directory=*", "-c", "advice.detachedHead=false"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.trim();
        Err(if msg.is_empty() {
            format!(
                "git {} failed ({})",
                args.first().unwrap_or(&""),
                out.status
            )
        } else {
            // git's whole message, on one line: its first line often holds
            // the cause ("fatal: '/x' does not appear to be a git repository").
            msg.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// Make `dir` a git repository if it is not one yet.
pub fn ensure_repo(dir: &Path) -> Result<(), String> {
    if dir.join(".git").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    git(dir, &["init", "--quiet"]).map(|_| ())
}

/// Fetch every branch (as `origin/NAME`) and tag from `repo` into `dir`.
pub fn fetch(dir: &Path, repo: &str) -> Result<(), String> {
    git(
        dir,
        &[
            "fetch",
            "--quiet",
            "--force",
            "--prune",
            "--tags",
            "--no-write-fetch-head",
            "--end-of-options",
            repo,
            "+refs/heads/*:refs/remotes/origin/*",
        ],
    )
    .map(|_| ())
}

/// A resolved commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub sha: String,
    pub subject: String,
}

/// Resolve a sha, tag or branch name to a commit (full sha and subject),
/// or `None` if it names no commit. A branch name is looked up among the
/// fetched branches. One `git log` per candidate does both.
pub fn resolve(dir: &Path, name: &str) -> Option<Commit> {
    let candidates = [
        format!("{name}^{{commit}}"),
        format!("refs/remotes/origin/{name}^{{commit}}"),
    ];
    // A plain name is most likely a branch: try that first.
    let order: [&String; 2] = if name.bytes().all(|b| b.is_ascii_hexdigit()) {
        [&candidates[0], &candidates[1]]
    } else {
        [&candidates[1], &candidates[0]]
    };
    order.iter().find_map(|rev| {
        let out = git(
            dir,
            &[
                "log",
                "-1",
                "--format=%H%n%s",
                "--end-of-options",
                rev,
                "--",
            ],
        )
        .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let sha = lines.next()?.trim().to_string();
        (sha.len() == 40).then(|| Commit {
            sha,
            subject: lines.next().unwrap_or("").trim().to_string(),
        })
    })
}

/// Check `sha` out detached and forced; remove untracked files but keep
/// ignored ones (build caches).
pub fn checkout(dir: &Path, sha: &str) -> Result<(), String> {
    git(
        dir,
        &["checkout", "--quiet", "--force", "--detach", sha, "--"],
    )?;
    git(dir, &["clean", "--quiet", "--force", "-d"]).map(|_| ())
}

/// The commit checked out in `dir`, read without running git.
pub fn head(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(".git").join("HEAD")).ok()?;
    let text = text.trim();
    (text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| text.to_string())
}

/// The short form of a sha for messages.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
