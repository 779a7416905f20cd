//! `root` is zdd's, and zdd proves it before it writes there: the folders
//! above it cannot be swapped by others, `root` and the folders zdd keeps
//! in it belong to the user running zdd and are not writable by group or
//! others, and where zdd keeps its files and work trees there is no symlink
//! to follow (sshd's StrictModes, applied to a root-run deploy tool).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil;

/// The folders zdd keeps in `root`, with the mode it creates them with.
pub const RELEASES: (&str, u32) = ("releases", 0o755);
pub const GIT: (&str, u32) = ("git", 0o755);
/// What every release shares (`shared`): root's folders, the app user's
/// files and folders in them.
pub const SHARED: (&str, u32) = ("shared", 0o755);
/// Git's index folders while a release is checked out (each the app user's).
pub const GIT_INDEX: (&str, u32) = ("git/index", 0o755);
pub const LOGS: (&str, u32) = ("logs", 0o700);
pub const RUN: (&str, u32) = ("run", 0o700);
/// Each deploy attempt's output (`attempts`).
pub const DEPLOY_LOGS: (&str, u32) = ("logs/deploys", 0o700);

/// Make sure `root` and `folders` in it exist and are safe to write in:
/// create what is missing, then check ownership, modes and symlinks.
/// Errors are exit 2, naming the path and the fix.
pub fn prepare(root: &Path, folders: &[(&str, u32)]) -> Result<()> {
    check_ancestors(root)?;
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fsutil::create_dir(root, 0o755).map_err(usage("cannot create", root))?
        }
        Err(e) => return Err(usage("cannot look at", root)(e)),
        Ok(_) => {}
    }
    // `root` itself may be a symlink (the config names it); what it points
    // at must be a folder of ours.
    let meta = std::fs::metadata(root).map_err(usage("cannot look at", root))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "root {} is not a directory; set `root` to a folder of zdd's own",
            root.display()
        )));
    }
    check_owned(root, &meta)?;
    for &(name, mode) in folders {
        let dir = root.join(name);
        if let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(usage("cannot create", &dir)(e));
            }
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                .map_err(usage("cannot set the mode of", &dir))?;
        }
        check_dir(&dir)?;
    }
    Ok(())
}

/// `dir` is a folder of zdd's: not a symlink, owned by the user running
/// zdd, not writable by group or others.
pub fn check_dir(dir: &Path) -> Result<()> {
    let meta = real_dir(dir)?;
    check_owned(dir, &meta)
}

/// `path` is a folder, not a symlink (or does not exist yet): before git or
/// the app touches a work tree or a repository there.
pub fn check_no_symlink(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(usage("cannot look at", path)(e)),
        Ok(meta) if meta.file_type().is_symlink() => Err(symlink_here(path)),
        Ok(meta) if !meta.is_dir() => Err(Error::Usage(format!(
            "{} is not a folder; zdd keeps a work tree or repository there: remove it",
            path.display()
        ))),
        Ok(_) => Ok(()),
    }
}

/// `path`, where zdd keeps a file of its own (a log, a record), is not a
/// symlink: checked before anything is started that writes there.
pub fn check_file(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(symlink_here(path)),
        Ok(meta) if meta.is_dir() => Err(Error::Usage(format!(
            "{} is a folder; zdd keeps a file of its own there: remove it",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Open `path` for reading without following a symlink; `None` if missing.
pub fn read_nofollow(path: &Path) -> Result<Option<String>> {
    match crate::fsutil::open_nofollow(path) {
        Ok(mut f) => {
            let mut text = String::new();
            io::Read::read_to_string(&mut f, &mut text).map_err(Error::io("cannot read", path))?;
            Ok(Some(text))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(refused(path, e)),
    }
}

/// An I/O error on `path`, or the refusal of a symlink (exit 2) when the
/// error says zdd met one (`O_NOFOLLOW` gives ELOOP).
pub fn refused(path: &Path, e: io::Error) -> Error {
    if e.raw_os_error() == Some(nix::libc::ELOOP) {
        symlink_here(path)
    } else if e.raw_os_error() == Some(nix::libc::EACCES) && !may_read(path) {
        // Not a state that needs attention: the wrong user asked.
        Error::Usage(not_permitted(path))
    } else {
        Error::io("cannot open", path)(e)
    }
}

/// Whether the running user is root or the owner of `path` (or of its
/// folder, when it is not there): then a refusal is not about who asks
/// (NFS, SELinux, an immutable file) and is reported as it is.
fn may_read(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let meta = std::fs::symlink_metadata(path)
        .or_else(|_| std::fs::symlink_metadata(path.parent().unwrap_or(Path::new("/"))));
    me == 0 || meta.is_ok_and(|m| m.uid() == me)
}

/// The sentence for a file zdd's user may not open: whose it is, and who
/// can.
fn not_permitted(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid();
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return format!(
            "cannot open {}: permission denied to {} (a folder on its way is closed to it); run zdd as the user that owns {}'s root",
            path.display(),
            user_name(me.as_raw()),
            path.display()
        );
    };
    let owner = user_name(meta.uid());
    let how = match meta.uid() {
        0 => "run zdd as root (sudo zdd …)".to_string(),
        _ => format!("run zdd as {owner}"),
    };
    format!(
        "cannot open {}: it is {owner}'s (mode {:04o}), and zdd runs as {}, who cannot read it; {how}",
        path.display(),
        meta.mode() & 0o7777,
        user_name(me.as_raw()),
    )
}

/// A user's name, or `uid N` when it has none.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

/// [`read_trusted`] for a file the config names under `key` (a template):
/// any failure is bad input (exit 2), named by the key.
pub fn read_trusted_input(path: &Path, key: &str) -> Result<String> {
    read_trusted(path).map_err(|e| {
        Error::Usage(match e {
            Untrusted::Io(e) => format!("{key} {}: {e}", path.display()),
            Untrusted::Refused(why) => format!("{key} {why}"),
        })
    })
}

/// Read a file that steers what zdd does (its config, a custom nginx
/// template, nginx's pid file): only one that nobody but root and the user
/// running zdd could have written. The path is resolved one component at a
/// time, symlinks included, and every folder on the way must belong to
/// root or that user and be writable by no one else (unless sticky, like
/// `/tmp`); the file itself must belong to root or that user and be
/// writable by neither group nor others. Else exit 2 naming the file (as
/// `what`) and the fix; a file that is not there is [`Untrusted::Io`].
pub fn read_trusted(path: &Path) -> std::result::Result<String, Untrusted> {
    use std::os::unix::fs::OpenOptionsExt;
    let resolved = resolve_trusted(path)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&resolved)
        .map_err(Untrusted::Io)?;
    let meta = file.metadata().map_err(Untrusted::Io)?;
    if !meta.is_file() {
        return Err(Untrusted::Refused(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(Untrusted::Refused(format!(
            "{} belongs to uid {}, not to root or to the user running zdd (uid {me}), who alone may steer zdd: `chown {me} {}`",
            path.display(),
            meta.uid(),
            resolved.display()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Untrusted::Refused(format!(
            "{} is writable by group or others (mode {:04o}), who could make zdd run anything as its user: `chmod go-w {}`",
            path.display(),
            meta.mode() & 0o7777,
            resolved.display()
        )));
    }
    let mut text = String::new();
    io::Read::read_to_string(&mut file, &mut text).map_err(Untrusted::Io)?;
    Ok(text)
}

/// Why [`read_trusted`] did not return the text.
#[derive(Debug)]
pub enum Untrusted {
    /// It could not be read (missing, unreadable).
    Io(io::Error),
    /// Others could have written it or swapped it: the sentence says which
    /// and the fix.
    Refused(String),
}

/// Follow `path` to the file it names, one component at a time, checking
/// each folder passed through (see [`read_trusted`]).
fn resolve_trusted(path: &Path) -> std::result::Result<PathBuf, Untrusted> {
    use std::collections::VecDeque;
    use std::path::Component;
    let absolute = std::path::absolute(path).map_err(Untrusted::Io)?;
    let mut pending: VecDeque<PathBuf> = absolute
        .components()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut current = PathBuf::from("/");
    let mut hops = 0;
    let me = nix::unistd::geteuid().as_raw();
    // In a sticky folder others can write (`/tmp`), only what root or the
    // user running zdd put there counts, as `fs.protected_symlinks` and
    // `protected_hardlinks` would have it.
    let shared = |dir: &Path| {
        std::fs::metadata(dir)
            .is_ok_and(|m| m.mode() & 0o1002 == 0o1002 || m.mode() & 0o1020 == 0o1020)
    };
    while let Some(part) = pending.pop_front() {
        match part.components().next() {
            Some(Component::RootDir) => {
                current = PathBuf::from("/");
                trusted_folder(path, &current)?;
                continue;
            }
            Some(Component::CurDir) | None => continue,
            Some(Component::ParentDir) => {
                current.pop();
                continue;
            }
            _ => {}
        }
        let next = current.join(&part);
        let meta = std::fs::symlink_metadata(&next).map_err(Untrusted::Io)?;
        if meta.file_type().is_symlink() {
            if shared(&current) && meta.uid() != 0 && meta.uid() != me {
                return Err(Untrusted::Refused(format!(
                    "{}: the symlink {} belongs to uid {} in a folder others can write",
                    path.display(),
                    next.display(),
                    meta.uid()
                )));
            }
            hops += 1;
            if hops > 40 {
                return Err(Untrusted::Io(io::Error::from_raw_os_error(
                    nix::libc::ELOOP,
                )));
            }
            let target = std::fs::read_link(&next).map_err(Untrusted::Io)?;
            for c in target.components().rev() {
                pending.push_front(PathBuf::from(c.as_os_str()));
            }
            continue;
        }
        if pending.is_empty() {
            if shared(&current) && meta.nlink() > 1 {
                return Err(Untrusted::Refused(format!(
                    "{} has {} hard links and sits in a folder others can write, so it may be another file: keep it elsewhere",
                    path.display(),
                    meta.nlink()
                )));
            }
            return Ok(next);
        }
        trusted_folder(path, &next)?;
        current = next;
    }
    Ok(current)
}

/// A folder on the way to `file`: root's or the running user's, writable
/// by no one else unless sticky.
fn trusted_folder(file: &Path, dir: &Path) -> std::result::Result<(), Untrusted> {
    let meta = std::fs::metadata(dir).map_err(Untrusted::Io)?;
    let me = nix::unistd::geteuid().as_raw();
    let owner_ok = meta.uid() == 0 || meta.uid() == me;
    let sticky = meta.mode() & 0o1000 != 0;
    if owner_ok && (meta.mode() & 0o022 == 0 || sticky) {
        return Ok(());
    }
    Err(Untrusted::Refused(format!(
        "{}: the folder {} on its way is {} (mode {:04o}, uid {}), so others could swap the file: `chmod go-w {}`, or keep the file elsewhere",
        file.display(),
        dir.display(),
        if owner_ok { "writable by group or others" } else { "not owned by root or by the user running zdd" },
        meta.mode() & 0o7777,
        meta.uid(),
        dir.display()
    )))
}

/// Before zdd changes anything, a folder it cannot use is bad input (exit
/// 2): nothing was changed.
fn usage<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |e| Error::Usage(format!("{what} {}: {e}", path.display()))
}

fn symlink_here(path: &Path) -> Error {
    Error::Usage(format!(
        "{} is a symlink; zdd never follows symlinks where it keeps its own files and work trees: remove it",
        path.display()
    ))
}

/// A folder of zdd's: not a symlink, a folder.
fn real_dir(dir: &Path) -> Result<std::fs::Metadata> {
    let meta = std::fs::symlink_metadata(dir).map_err(usage("cannot look at", dir))?;
    if meta.file_type().is_symlink() {
        return Err(symlink_here(dir));
    }
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a folder; zdd keeps its own files there: remove it",
            dir.display()
        )));
    }
    Ok(meta)
}

/// Owned by the user running zdd, not writable by group or others.
fn check_owned(dir: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::Usage(format!(
            "{} belongs to uid {}, not to the user running zdd (uid {me}); zdd writes only in folders of its own: `chown {me} {}`, or run zdd as its owner",
            dir.display(),
            meta.uid(),
            dir.display()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Error::Usage(format!(
            "{} is writable by group or others (mode {:04o}), who could make zdd write or run anything: `chmod go-w {}`",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        )));
    }
    Ok(())
}

/// The folders above `root` must not let others swap it: each belongs to
/// root or to the user running zdd, and is not writable by group or others
/// unless it has the sticky bit (like /tmp), as sshd's StrictModes checks.
fn check_ancestors(root: &Path) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let resolved: PathBuf = match std::fs::canonicalize(root) {
        Ok(p) => p,
        // Not created yet: check from its nearest existing folder up.
        Err(_) => root.to_path_buf(),
    };
    for dir in resolved.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let owner_ok = meta.uid() == 0 || meta.uid() == me;
        let sticky = meta.mode() & 0o1000 != 0;
        if !owner_ok || (meta.mode() & 0o022 != 0 && !sticky) {
            return Err(Error::Usage(format!(
                "{} above root {} is {} (mode {:04o}, uid {}), so others could swap root for a folder of theirs; `chmod go-w {}` or move root",
                dir.display(),
                root.display(),
                if owner_ok { "writable by group or others" } else { "not owned by root or by the user running zdd" },
                meta.mode() & 0o7777,
                meta.uid(),
                dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn top() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        chmod(t.path(), 0o755);
        t
    }

    #[test]
    fn creates_root_and_its_folders_with_their_modes() {
        let t = top();
        let root = t.path().join("root");
        prepare(&root, &[RELEASES, LOGS]).unwrap();
        assert_eq!(
            std::fs::metadata(root.join("logs")).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(root.join("releases")).unwrap().mode() & 0o777,
            0o755
        );
        prepare(&root, &[RELEASES, LOGS]).unwrap();
    }

    #[test]
    fn a_writable_root_or_folder_is_refused_with_the_fix() {
        let t = top();
        let root = t.path().join("root");
        prepare(&root, &[LOGS]).unwrap();
        chmod(&root, 0o777);
        let e = prepare(&root, &[LOGS]).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("(mode 0777)"), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("chmod go-w {}", root.display())),
            "{e}"
        );
        chmod(&root, 0o755);
        chmod(&root.join("logs"), 0o770);
        let e = prepare(&root, &[LOGS]).unwrap_err().to_string();
        assert!(e.contains("logs is writable by group or others"), "{e}");
    }

    #[test]
    fn symlinks_are_refused_and_a_symlinked_root_is_followed_once() {
        let t = top();
        let real = t.path().join("real");
        prepare(&real, &[]).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        prepare(&link, &[LOGS]).unwrap();
        assert!(real.join("logs").is_dir());

        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, real.join("releases")).unwrap();
        let e = prepare(&real, &[RELEASES]).unwrap_err().to_string();
        assert!(e.contains("releases is a symlink"), "{e}");
        std::os::unix::fs::symlink(&elsewhere, real.join("a")).unwrap();
        assert!(check_no_symlink(&real.join("a")).is_err());
        assert!(check_no_symlink(&real.join("b")).is_ok(), "missing is fine");

        std::fs::write(elsewhere.join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(elsewhere.join("secret"), real.join("state.toml")).unwrap();
        let e = read_nofollow(&real.join("state.toml")).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(read_nofollow(&real.join("none")).unwrap().is_none());
    }

    #[test]
    fn only_files_nobody_else_could_write_steer_zdd() {
        let t = top();
        let file = t.path().join("zdd.toml");
        std::fs::write(&file, "name = \"x\"\n").unwrap();
        chmod(&file, 0o644);
        assert_eq!(read_trusted(&file).unwrap(), "name = \"x\"\n");
        let refused = |p: &Path| match read_trusted(p) {
            Err(Untrusted::Refused(m)) => m,
            other => panic!("{}: {other:?}", p.display()),
        };
        chmod(&file, 0o666);
        let e = refused(&file);
        assert!(
            e.contains("is writable by group or others (mode 0666)"),
            "{e}"
        );
        assert!(e.contains(&format!("chmod go-w {}", file.display())), "{e}");
        chmod(&file, 0o644);

        // A symlink is followed, and the folders it leads through checked.
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let link = open.join("zdd.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = refused(&link);
        assert!(
            e.contains(&format!("the folder {} on its way", open.display())),
            "{e}"
        );
        let safe_link = t.path().join("link.toml");
        std::os::unix::fs::symlink("open/../zdd.toml", &safe_link).unwrap();
        let e = refused(&safe_link);
        assert!(e.contains("open on its way"), "through it: {e}");
        chmod(&open, 0o1777);
        assert!(read_trusted(&link).is_ok(), "sticky, like /tmp");
        assert!(matches!(
            read_trusted(&t.path().join("missing")),
            Err(Untrusted::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn in_a_folder_others_can_write_only_our_own_links_count() {
        let t = top();
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o1777);
        let file = t.path().join("zdd.toml");
        std::fs::write(&file, "x").unwrap();
        chmod(&file, 0o644);
        // A hard link to a file of ours, made in a shared folder.
        let hard = shared.join("hard.toml");
        std::fs::hard_link(&file, &hard).unwrap();
        assert!(
            matches!(read_trusted(&hard), Err(Untrusted::Refused(m)) if m.contains("hard links"))
        );
        // A symlink someone else made there.
        let link = shared.join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_trusted(&link).is_ok(), "our own symlink");
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
            let e = read_trusted(&link);
            assert!(
                matches!(&e, Err(Untrusted::Refused(m)) if m.contains("belongs to uid 65534 in a folder others can write")),
                "{e:?}"
            );
        }
    }

    #[test]
    fn root_that_is_a_file_is_named() {
        let t = top();
        let file = t.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = prepare(&file, &[]).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }

    #[test]
    fn a_world_writable_folder_above_root_needs_the_sticky_bit() {
        let t = top();
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o1777);
        prepare(&shared.join("root"), &[]).unwrap();
        chmod(&shared, 0o777);
        let e = prepare(&shared.join("root"), &[]).unwrap_err().to_string();
        assert!(e.contains("others could swap root"), "{e}");
    }
}
