//! Trees that another user can change (a work tree the app's user owns):
//! zdd, often root, never walks them by path. [`remove`] deletes one by
//! directory descriptors, as GNU `rm` does — each folder opened with
//! `O_NOFOLLOW | O_DIRECTORY` relative to its parent's descriptor, each
//! entry unlinked relative to its folder's — so that a folder swapped for a
//! symlink while the walk runs is removed as the symlink it is, and
//! nothing outside the tree (nor on another filesystem) is touched.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Remove `path` and everything below it without following a symlink.
/// Its parent folder must be one nobody else can write (zdd's own).
pub fn remove(path: &Path) -> io::Result<()> {
    remove_watched(path, &mut |_| {})
}

/// [`remove`], calling `entering` with each folder's path (for messages
/// only: the walk never uses it) once it is open and before it is read —
/// where a test swaps things under it.
pub fn remove_watched(path: &Path, entering: &mut dyn FnMut(&Path)) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no entry", path.display())))?;
    let parent_fd = open_dir(None, &cstring(parent.as_os_str().as_bytes())?)?;
    let dev = fstat(parent_fd.as_raw_fd())?.st_dev;
    let name = cstring(name.as_bytes())?;
    let mut walk = Walk {
        dev,
        entering,
        depth: 0,
    };
    walk.remove_entry(parent_fd.as_raw_fd(), &name, path)
}

struct Walk<'a> {
    /// The filesystem the tree is on: a mount point inside is not entered.
    dev: u64,
    entering: &'a mut dyn FnMut(&Path),
    /// How many folders deep the walk is (one descriptor open per level).
    depth: usize,
}

/// How deep a tree zdd removes (real work trees, `node_modules` included,
/// stay far below; each level holds a descriptor open).
const MAX_DEPTH: usize = 256;
/// How often zdd empties a folder that its owner keeps refilling.
const ROUNDS: usize = 16;

impl Walk<'_> {
    /// Remove the entry `name` of the open folder `dir` (at `shown`).
    fn remove_entry(&mut self, dir: RawFd, name: &CStr, shown: &Path) -> io::Result<()> {
        // A few rounds: the tree's owner may swap or refill it meanwhile.
        for _ in 0..ROUNDS {
            match unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => return Ok(()),
                Err(Errno::EISDIR | Errno::EPERM) => {}
                Err(e) => return Err(annotate(e, shown)),
            }
            // A folder: open it where it is, never through a symlink.
            let child = match open_dir(Some(dir), name) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc_enoent()) => return Ok(()),
                // Swapped for a symlink or a file since: unlink that.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(nix::libc::ELOOP | nix::libc::ENOTDIR)
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(annotate_io(e, shown)),
            };
            if fstat(child.as_raw_fd())?.st_dev != self.dev {
                return Err(io::Error::other(format!(
                    "{} is on another filesystem (a mount point); zdd does not remove it",
                    shown.display()
                )));
            }
            if self.depth >= MAX_DEPTH {
                return Err(io::Error::other(format!(
                    "{} is more than {MAX_DEPTH} folders deep; zdd does not remove it",
                    shown.display()
                )));
            }
            (self.entering)(shown);
            self.depth += 1;
            let emptied = self.empty(child.as_raw_fd(), shown);
            self.depth -= 1;
            emptied?;
            match unlinkat(Some(dir), name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => return Ok(()),
                // Refilled, or swapped for a file or symlink: again.
                Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOTDIR) => continue,
                Err(e) => return Err(annotate(e, shown)),
            }
        }
        Err(io::Error::other(format!(
            "{} keeps changing while zdd removes it",
            shown.display()
        )))
    }

    /// Remove every entry of the open folder `dir`.
    fn empty(&mut self, dir: RawFd, shown: &Path) -> io::Result<()> {
        for _ in 0..ROUNDS {
            let names = list(dir)?;
            if names.is_empty() {
                return Ok(());
            }
            for name in names {
                let child = shown.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
                self.remove_entry(dir, &name, &child)?;
            }
        }
        Err(io::Error::other(format!(
            "{} keeps being refilled while zdd removes it",
            shown.display()
        )))
    }
}

/// The disk space `path` and everything below it take (allocated blocks),
/// walked the way [`remove`] walks: by descriptors, never through a
/// symlink, never onto another filesystem, at most [`MAX_DEPTH`] deep.
pub fn size(path: &Path) -> io::Result<u64> {
    let root = open_dir(None, &cstring(path.as_os_str().as_bytes())?)?;
    let st = fstat(root.as_raw_fd())?;
    size_below(root.as_raw_fd(), st.st_dev, 0).map(|below| below + blocks(&st))
}

fn blocks(st: &nix::sys::stat::FileStat) -> u64 {
    (st.st_blocks as u64) * 512
}

fn size_below(dir: RawFd, dev: u64, depth: usize) -> io::Result<u64> {
    let mut total = 0;
    for name in list(dir)? {
        let Ok(st) = nix::sys::stat::fstatat(
            Some(dir),
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue; // gone meanwhile
        };
        total += blocks(&st);
        let is_dir = st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR;
        if is_dir && st.st_dev == dev && depth < MAX_DEPTH {
            if let Ok(child) = open_dir(Some(dir), &name) {
                total += size_below(child.as_raw_fd(), dev, depth + 1)?;
            }
        }
    }
    Ok(total)
}

/// Make `rel` (a relative path, `/`-separated) below the folder `base`
/// exist, by descriptors: every folder on the way must be the running
/// user's (made 0755 if missing), so that nobody else can swap one for a
/// symlink; the entry itself, if missing, is made — a folder or an empty
/// file, with `mode` whatever the umask — and given to `owner` (uid, gid).
/// An entry already there must be of that kind and no symlink. Returns
/// whether it made it.
pub fn make_entry(
    base: &Path,
    rel: &str,
    folder: bool,
    mode: u32,
    owner: (u32, u32),
) -> io::Result<bool> {
    let me = nix::unistd::geteuid().as_raw();
    let mut dir = open_dir(None, &cstring(base.as_os_str().as_bytes())?)?;
    let mut shown = base.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    let (leaf, on_the_way) = parts
        .split_last()
        .ok_or_else(|| io::Error::other("an empty path"))?;
    for part in on_the_way {
        let name = cstring(part.as_bytes())?;
        shown.push(part);
        let child = match open_dir(Some(dir.as_raw_fd()), &name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc_enoent()) => make_dir(dir.as_raw_fd(), &name)?,
            Err(e) => return Err(annotate_io(e, &shown)),
        };
        if fstat(child.as_raw_fd())?.st_uid != me {
            return Err(io::Error::other(format!(
                "{} is not zdd's own folder (uid {me}); a folder on the way of a shared path must be",
                shown.display()
            )));
        }
        dir = child;
    }
    let name = cstring(leaf.as_bytes())?;
    match nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name.as_c_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => {
            let kind = st.st_mode & nix::libc::S_IFMT;
            return match kind {
                nix::libc::S_IFLNK => Err(io::Error::other(
                    "it is a symlink; zdd never follows one here: remove it",
                )),
                nix::libc::S_IFDIR if folder => Ok(false),
                nix::libc::S_IFREG if !folder => Ok(false),
                _ if folder => Err(io::Error::other(
                    "`shared` names a folder (a trailing /), but something else is there",
                )),
                _ => Err(io::Error::other(
                    "`shared` names a file, but something else is there",
                )),
            };
        }
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(annotate(e, &shown.join(leaf))),
    }
    let made = match folder {
        true => make_dir(dir.as_raw_fd(), &name)?,
        false => {
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            let fd = openat(
                Some(dir.as_raw_fd()),
                name.as_c_str(),
                flags,
                Mode::from_bits_truncate(mode),
            )?;
            // SAFETY: openat just returned this descriptor; nothing else owns it.
            unsafe { OwnedFd::from_raw_fd(fd) }
        }
    };
    nix::unistd::fchown(
        made.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(owner.0)),
        Some(nix::unistd::Gid::from_raw(owner.1)),
    )?;
    nix::sys::stat::fchmod(made.as_raw_fd(), Mode::from_bits_truncate(mode))?;
    Ok(true)
}

/// Make the folder `name` in the open folder `dir` (0755 before any
/// umask) and open it, never through a symlink.
fn make_dir(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    nix::sys::stat::mkdirat(Some(dir), name, Mode::from_bits_truncate(0o755))?;
    open_dir(Some(dir), name)
}

/// The entries of the open folder `dir`, `.` and `..` aside.
fn list(dir: RawFd) -> io::Result<Vec<CString>> {
    // Dir takes its descriptor: give it a close-on-exec copy.
    let copy = nix::fcntl::fcntl(dir, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))?;
    let mut listing = nix::dir::Dir::from_fd(copy)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Open the folder `name` (relative to `dir`, or the cwd) without
/// following a symlink.
fn open_dir(dir: Option<RawFd>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty())?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::other("a path with a NUL byte"))
}

fn libc_enoent() -> i32 {
    nix::libc::ENOENT
}

fn annotate(e: Errno, path: &Path) -> io::Error {
    annotate_io(e.into(), path)
}

fn annotate_io(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path below `dir` with its file content.
    fn contents(dir: &Path) -> Vec<(String, String)> {
        let mut all = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                all.extend(contents(&p));
            } else {
                all.push((
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                ));
            }
        }
        all.sort();
        all
    }

    #[test]
    fn make_entry_walks_only_zdds_folders_and_follows_no_symlink() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let base = t.path();
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        assert!(make_entry(base, "config/deep/.env", false, 0o644, me).unwrap());
        assert!(
            !make_entry(base, "config/deep/.env", false, 0o644, me).unwrap(),
            "there"
        );
        assert!(base.join("config/deep/.env").is_file());
        assert!(make_entry(base, "uploads", true, 0o755, me).unwrap());
        assert!(
            make_entry(base, "uploads", false, 0o644, me).is_err(),
            "a folder, not a file"
        );
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("link")).unwrap();
        assert!(make_entry(base, "link/x", false, 0o644, me).is_err());
        assert!(make_entry(base, "link", true, 0o755, me)
            .unwrap_err()
            .to_string()
            .contains("symlink"));
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing made through it"
        );
        if nix::unistd::geteuid().is_root() {
            // A folder on the way that another user owns: refused.
            std::fs::create_dir(base.join("theirs")).unwrap();
            std::os::unix::fs::chown(base.join("theirs"), Some(65534), Some(65534)).unwrap();
            let e = make_entry(base, "theirs/x", false, 0o644, me)
                .unwrap_err()
                .to_string();
            assert!(e.contains("is not zdd's own folder"), "{e}");
            assert!(make_entry(base, "given", true, 0o755, (65534, 65534)).unwrap());
            assert_eq!(std::fs::metadata(base.join("given")).unwrap().uid(), 65534);
        }
    }

    #[test]
    fn size_counts_the_tree_and_no_symlink_target() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/big"), vec![7u8; 64 * 1024]).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("huge"), vec![7u8; 1024 * 1024]).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        let n = size(&tree).unwrap();
        assert!((64 * 1024..512 * 1024).contains(&n), "{n}");
    }

    #[test]
    fn removes_a_tree_and_no_symlink_target() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "keep").unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
        std::fs::write(tree.join("a/b/c/f"), "x").unwrap();
        std::fs::write(tree.join("top"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.join("a/link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("precious"), tree.join("flink")).unwrap();
        remove(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(contents(outside.path()).len(), 1);
        assert!(remove(&tree).is_ok(), "already gone is fine");
    }

    /// `tree/junk/sub/f`, then [`remove_watched`] of `tree` with `swap`
    /// run once, when the walk enters `at`; nothing outside may change.
    fn swap_mid_walk(at: &str, swap: impl Fn(&Path, &Path)) {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("deep")).unwrap();
        std::fs::write(outside.path().join("deep/precious"), "keep").unwrap();
        let before = contents(outside.path());
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("junk/sub")).unwrap();
        std::fs::write(tree.join("junk/sub/f"), "x").unwrap();
        let when = if at.is_empty() {
            tree.clone()
        } else {
            tree.join(at)
        };
        let mut swapped = false;
        remove_watched(&tree, &mut |entered| {
            if entered == when && !swapped {
                swap(&tree, outside.path());
                swapped = true;
            }
        })
        .unwrap();
        assert!(swapped);
        assert!(!tree.exists());
        assert_eq!(contents(outside.path()), before, "nothing outside changed");
    }

    #[test]
    fn a_folder_swapped_for_a_symlink_mid_walk_is_removed_as_a_symlink() {
        // What the attack did: once zdd is inside `tree`, and before it
        // reaches `junk`, `junk` becomes a symlink to a folder of root's.
        swap_mid_walk("", |tree, target| {
            std::fs::remove_dir_all(tree.join("junk")).unwrap();
            std::os::unix::fs::symlink(target, tree.join("junk")).unwrap();
        });
        // Later: `junk` is open and being emptied when it is moved aside
        // and a symlink put in its place.
        swap_mid_walk("junk", |tree, target| {
            std::fs::rename(tree.join("junk"), tree.join("moved")).unwrap();
            std::os::unix::fs::symlink(target, tree.join("junk")).unwrap();
        });
    }
}
