//! Git plumbing for slot checkouts, always by argv (never a shell):
//! init, fetch, resolve a name to a commit, forced detached checkout.
//!
//! Each slot's repository lives in `ROOT/git/SLOT`, outside its work tree
//! `ROOT/slots/SLOT`, and stays root's: with `user` set the app user owns
//! the work tree, and must not be able to plant git config or hooks that
//! the next deploy (as root) would run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A slot's repository and work tree.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub git_dir: PathBuf,
    pub work_tree: PathBuf,
}

/// A COMMIT as a person or the config names it — a sha, tag or branch —
/// checked once to be safe to hand to git as one argument: not empty, not
/// an option, no whitespace or control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rev(String);

impl Rev {
    pub fn parse(name: &str) -> Result<Rev, String> {
        if name.is_empty()
            || name.starts_with('-')
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!(
                "{name:?} is not a commit: expected a sha, tag or branch name"
            ));
        }
        Ok(Rev(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Rev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resolved commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub sha: String,
    pub subject: String,
}

impl Checkout {
    pub fn new(root: &Path, slot: &str) -> Checkout {
        Checkout {
            git_dir: root.join("git").join(slot),
            work_tree: root.join("slots").join(slot),
        }
    }

    /// Run `git --git-dir=G --work-tree=W ARGS...`; `Err` carries git's
    /// own message on one line.
    fn git(&self, args: &[&str]) -> Result<Output, String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&self.git_dir)
            .arg("--work-tree")
            .arg(&self.work_tree)
            // The work tree may belong to the app user; the repository, which
            // holds config and hooks, does not.
            .args(["-c", "safe.directory=*", "-c", "advice.detachedHead=false"])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        if out.status.success() {
            return Ok(out);
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = msg
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        Err(if lines.is_empty() {
            format!(
                "git {} failed ({})",
                args.first().unwrap_or(&""),
                out.status
            )
        } else {
            lines.join("; ")
        })
    }

    /// Create the repository and the work tree if they do not exist yet.
    pub fn ensure(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.work_tree)
            .map_err(|e| format!("cannot create {}: {e}", self.work_tree.display()))?;
        if self.git_dir.join("HEAD").exists() {
            return Ok(());
        }
        let out = Command::new("git")
            .args(["init", "--quiet", "--bare"])
            .arg(&self.git_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Fetch every branch (as `origin/NAME`) and tag from `repo`.
    pub fn fetch(&self, repo: &str) -> Result<(), String> {
        self.git(&[
            "fetch",
            "--quiet",
            "--force",
            "--prune",
            "--tags",
            "--no-write-fetch-head",
            "--end-of-options",
            repo,
            "+refs/heads/*:refs/remotes/origin/*",
        ])
        .map(|_| ())
    }

    /// Resolve a sha, tag or branch name to a commit, or `None` if it names
    /// no single commit (ranges, `HEAD` and the like are refused). A name
    /// that looks like a sha (7 to 40 hex digits) is tried as one first;
    /// any other name as a fetched branch first, then as a tag.
    pub fn resolve(&self, rev: &Rev) -> Option<Commit> {
        let name = rev.as_str();
        let special = name.contains("..")
            || name.contains("@{")
            || name.contains(':')
            || name == "@"
            || name.starts_with("HEAD")
            || name.starts_with("FETCH_HEAD")
            || name.starts_with("ORIG_HEAD");
        if special {
            return None;
        }
        let as_sha = (7..=40).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_hexdigit());
        let plain = format!("{name}^{{commit}}");
        let branch = format!("refs/remotes/origin/{name}^{{commit}}");
        let order = if as_sha {
            [&plain, &branch]
        } else {
            [&branch, &plain]
        };
        let sha = order.iter().find_map(|rev| {
            let out = self
                .git(&["rev-parse", "--verify", "--quiet", "--end-of-options", rev])
                .ok()?;
            let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (sha.len() == 40).then_some(sha)
        })?;
        let subject = self
            .git(&["show", "--no-patch", "--format=%s", &sha, "--"])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Some(Commit { sha, subject })
    }

    /// Check `sha` out detached and forced; remove untracked files but keep
    /// ignored ones (build caches).
    pub fn checkout(&self, sha: &str) -> Result<(), String> {
        self.git(&["checkout", "--quiet", "--force", "--detach", sha, "--"])?;
        self.git(&["clean", "--quiet", "--force", "-d"]).map(|_| ())
    }

    /// The commit checked out, read without running git.
    pub fn head(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.git_dir.join("HEAD")).ok()?;
        let text = text.trim();
        (text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| text.to_string())
    }
}

/// The short form of a sha for messages.
pub fn short(sha: &str) -> &str {
    sha.char_indices().nth(12).map_or(sha, |(i, _)| &sha[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rev_is_one_safe_argument() {
        assert_eq!(Rev::parse("v1.2").unwrap().as_str(), "v1.2");
        for bad in ["", "--upload-pack=x", "a b", "a\nb"] {
            assert!(
                Rev::parse(bad).unwrap_err().contains("is not a commit"),
                "{bad:?}"
            );
        }
    }
}
