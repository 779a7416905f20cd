//! Git plumbing for releases, always by argv (never a shell): one
//! repository, fetch, resolve a name to a commit, check a commit out into
//! a release folder of its own.
//!
//! The repository lives in `ROOT/git/repo`, outside every work tree, and
//! stays root's: with `user` set the app user owns the release folders,
//! and must not be able to plant git config or hooks that the next deploy
//! (as root) would run. Root's git (fetch, resolve) works in the
//! repository alone; what writes in a release folder (`read-tree -u`)
//! runs as the user who owns it, with git's index in a folder of that
//! user's (`ROOT/git/index/SHA`, removed once the checkout is done), which
//! root never reads. Root never writes in a tree its app's user can
//! change: what is left of an earlier attempt is removed by descriptors
//! (`tree::remove`) and checked out afresh.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::user::RunAs;

/// The one repository every release is checked out from.
#[derive(Debug, Clone)]
pub struct Repo {
    pub git_dir: PathBuf,
}

/// A release folder and git's index for checking it out.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub repo: Repo,
    pub work_tree: PathBuf,
    /// Git's index for the work tree: a folder of the work tree's owner.
    pub index_dir: PathBuf,
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

/// The commit an earlier zdd checked out in slot `slot`'s own repository
/// (`ROOT/git/SLOT`), read without running git.
pub fn legacy_head(root: &Path, slot: &str) -> Option<String> {
    let text = std::fs::read_to_string(root.join("git").join(slot).join("HEAD")).ok()?;
    let text = text.trim();
    (text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| text.to_string())
}

impl Repo {
    pub fn new(root: &Path) -> Repo {
        Repo {
            git_dir: root.join("git").join("repo"),
        }
    }

    /// Run root's `git --git-dir=G ARGS...` in the repository alone (no
    /// work tree); `Err` carries git's own message on one line.
    fn git(&self, args: &[&str]) -> Result<Output, String> {
        let mut cmd = Command::new("git");
        cmd.arg("--git-dir").arg(&self.git_dir).args(args);
        // What it writes (fetched objects) the work tree's owner reads,
        // whatever root's umask is.
        // SAFETY: umask(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::libc::umask(0o022);
                Ok(())
            });
        }
        run(cmd, args)
    }

    /// Create the repository if it does not exist yet: readable by the
    /// release folders' owner whatever root's umask is.
    pub fn ensure(&self) -> Result<(), String> {
        if self.git_dir.join("HEAD").exists() {
            return Ok(());
        }
        let out = Command::new("git")
            .args(["init", "--quiet", "--bare", "--shared=0644"])
            .arg(&self.git_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(crate::text::escape(String::from_utf8_lossy(&out.stderr).trim()).into_owned())
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
}

impl Checkout {
    /// `sha`'s release folder under `root`, from `root`'s repository.
    pub fn release(root: &Path, sha: &str) -> Checkout {
        Checkout {
            repo: Repo::new(root),
            work_tree: root.join(crate::state::release_dir(sha)),
            index_dir: root.join("git").join("index").join(sha),
        }
    }

    /// Run `git ARGS...` on the work tree, as `user` (the tree's owner; zdd's
    /// own user when `None`): in a session of its own, the user's
    /// environment, the index in [`Checkout::index_dir`], no config but the
    /// repository's (root's) and these flags.
    fn git_in_tree(&self, args: &[&str], user: Option<&RunAs>) -> Result<Output, String> {
        let mut cmd = Command::new("git");
        cmd.arg("--git-dir")
            .arg(&self.repo.git_dir)
            .arg("--work-tree")
            .arg(&self.work_tree)
            // The repository is root's; the user only reads it.
            .args(["-c", "safe.directory=*", "-c", "core.fsmonitor=false"])
            .args(["-c", "core.excludesFile=/dev/null"])
            .args(args);
        if let Some(user) = user {
            crate::process::user_env(&mut cmd, user);
            crate::process::become_user(&mut cmd, user);
        }
        crate::process::new_session(&mut cmd);
        // The system's config is root's (filters such as git-lfs's live
        // there); the user's own does not steer what is checked out.
        cmd.current_dir(&self.work_tree)
            .env("GIT_INDEX_FILE", self.index_dir.join("index"))
            .env("GIT_CONFIG_GLOBAL", "/dev/null");
        run(cmd, args).map_err(|e| match user {
            Some(u) if e.contains("Permission denied") => format!(
                "{e} (as {}, who checks it out: the repository {} must be readable by that user: `chmod -R a+rX {}`)",
                u.name,
                self.repo.git_dir.display(),
                self.repo.git_dir.display()
            ),
            _ => e,
        })
    }

    /// Check `sha` out into a fresh release folder, as `user` (zdd's own
    /// user when `None`), who owns the folder: whatever an earlier attempt
    /// left there is removed first, without following anything in it, and
    /// git's index goes once the files are there.
    pub fn check_out(&self, sha: &str, user: Option<&RunAs>) -> Result<(), String> {
        let owner = match user {
            Some(u) => (u.uid, u.gid),
            None => (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
        };
        for (dir, mode) in [(&self.work_tree, 0o755), (&self.index_dir, 0o700)] {
            remove_leftover(dir)?;
            own_folder(dir, mode, owner)?;
        }
        self.git_in_tree(&["read-tree", "--reset", "-u", sha], user)?;
        remove_leftover(&self.index_dir)
    }
}

/// Remove `dir` and what is in it, if it is there (never through a
/// symlink; `tree::remove`).
pub fn remove_leftover(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {
            crate::tree::remove(dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot look at {}: {e}", dir.display())),
    }
}

/// Run a git command to its end with no input; `Err` carries git's own
/// message on one line, escaped.
fn run(mut cmd: Command, args: &[&str]) -> Result<Output, String> {
    let out = cmd
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
        crate::text::escape(&one_line(&lines)).into_owned()
    })
}

/// git's message lines as one: a line that ends a sentence, or one that
/// goes on in the next (which starts in lower case), is followed by a
/// space, any other by "; ".
fn one_line(lines: &[&str]) -> String {
    let mut text = String::new();
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            let ended = text.ends_with(['.', '!', '?', ':']);
            // "fatal: …", "hint: …" start a message of their own.
            let labelled = line
                .split_whitespace()
                .next()
                .is_some_and(|w| w.ends_with(':'));
            let goes_on = !labelled && line.starts_with(|c: char| c.is_lowercase());
            text.push_str(if ended || goes_on { " " } else { "; " });
        }
        text.push_str(line);
    }
    text
}

/// The local folder a `repo` names (a path or a `file://` URL), if it is
/// local.
pub fn local_repo(repo: &str) -> Option<&Path> {
    let path = repo.strip_prefix("file://").unwrap_or(repo);
    path.starts_with('/').then(|| Path::new(path))
}

/// Make the folder `dir`, which is not there, with `mode`, and give it to
/// `owner` (uid, gid), by descriptors (`tree::make_entry`). Its parent is
/// zdd's own (`root::prepare` checked it), so nobody can swap `dir` between
/// these steps.
fn own_folder(dir: &Path, mode: u32, owner: (u32, u32)) -> Result<(), String> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(format!("{} names no folder", dir.display()));
    };
    crate::tree::make_entry(parent, &name.to_string_lossy(), true, mode, owner)
        .map(|_| ())
        .map_err(|e| format!("cannot create {} for uid {}: {e}", dir.display(), owner.0))
}

/// The short form of a sha for messages.
pub fn short(sha: &str) -> &str {
    sha.char_indices().nth(12).map_or(sha, |(i, _)| &sha[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_messages_read_as_one_line() {
        let lines = [
            "fatal: '/srv/nope' does not appear to be a git repository",
            "fatal: Could not read from remote repository.",
            "Please make sure you have the correct access rights",
            "and the repository exists.",
        ];
        assert_eq!(
            one_line(&lines),
            "fatal: '/srv/nope' does not appear to be a git repository; fatal: Could not read from remote repository. Please make sure you have the correct access rights and the repository exists."
        );
        assert_eq!(
            local_repo("file:///srv/git/a"),
            Some(Path::new("/srv/git/a"))
        );
        assert_eq!(local_repo("/srv/git/a"), Some(Path::new("/srv/git/a")));
        assert_eq!(local_repo("git@host:a.git"), None);
        assert_eq!(local_repo("https://host/a.git"), None);
    }

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
