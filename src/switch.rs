//! The nginx switch: one empty file under `ROOT/switch/`, named after the
//! slot that nginx sends new requests to. The rendered nginx config tests
//! `-f ROOT/switch/b` on every request (no `b`: slot a). A flip is one
//! atomic filesystem operation — the rename of `a` to `b` or back, or the
//! creation of the first file — so every request sees one slot or the other.
//!
//! Modes: `ROOT/switch/` 0755 and the file 0644, so that nginx's worker user
//! (www-data, nobody) can see it; it also needs search permission (`x`) on
//! every folder above. zdd never follows a symlink here.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::slot::Slot;

/// The upstream of app `name` whose primary is `slot`: the one the
/// switch picks for it (the rendered config and the `X-Zdd-Switch` value).
pub fn upstream(name: &str, slot: Slot) -> String {
    format!("{name}_{}", slot.name())
}

/// The switch's folder under `root`.
pub fn dir(root: &Path) -> PathBuf {
    root.join("switch")
}

/// The file nginx tests: while it exists, new requests go to slot b.
pub fn file(root: &Path) -> PathBuf {
    dir(root).join(Slot::B.name())
}

/// The slot the switch points at now (what nginx picks for a new request).
pub fn read(root: &Path) -> io::Result<Slot> {
    if std::fs::symlink_metadata(dir(root)).is_ok_and(|m| !m.is_dir()) {
        return Err(not_a_folder(&dir(root)));
    }
    match std::fs::symlink_metadata(file(root)) {
        Ok(_) => Ok(Slot::B),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Slot::A),
        Err(e) => Err(e),
    }
}

/// Point the switch at `to` with one atomic operation, then make it
/// durable. Already pointing there: nothing changes.
pub fn flip(root: &Path, to: Slot) -> io::Result<()> {
    let dir = dir(root);
    if std::fs::create_dir(&dir).is_ok() {
        // Whatever the umask: nginx's workers must be able to look inside.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() {
        return Err(not_a_folder(&dir));
    }
    if meta.mode() & 0o022 != 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} must belong to the user running zdd and not be writable by group or others (mode {:04o}, uid {}): anyone who can write there steers the site",
            dir.display(),
            meta.mode() & 0o7777,
            meta.uid()
        )));
    }
    let target = dir.join(to.name());
    let other = dir.join(to.other().name());
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    if exists(&other) {
        // Replaces `target` too if both were there (never left so by zdd).
        std::fs::rename(&other, &target)?;
    } else if !exists(&target) {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&target)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    } else {
        return Ok(());
    }
    fsutil::sync_dir(&target)
}

fn not_a_folder(dir: &Path) -> io::Error {
    io::Error::other(format!(
        "{} is not a folder (a symlink or a file); zdd keeps its switch there and will not follow it",
        dir.display()
    ))
}

/// The first folder on the way to the switch file that other users cannot
/// search (no `o+x`), with its mode: nginx's worker cannot see through it.
pub fn hidden_by(root: &Path) -> Option<(PathBuf, u32)> {
    let mut blocked = None;
    for folder in dir(root).ancestors() {
        if let Ok(meta) = std::fs::metadata(folder) {
            if meta.mode() & 0o001 == 0 {
                blocked = Some((folder.to_path_buf(), meta.mode() & 0o7777));
            }
        }
    }
    blocked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_by_rename_and_reads_back() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(read(root.path()).unwrap(), Slot::A, "no file: slot a");
        flip(root.path(), Slot::A).unwrap();
        assert_eq!(read(root.path()).unwrap(), Slot::A);
        flip(root.path(), Slot::B).unwrap();
        assert_eq!(read(root.path()).unwrap(), Slot::B);
        assert!(!dir(root.path()).join("a").exists(), "a was renamed to b");
        flip(root.path(), Slot::B).unwrap();
        flip(root.path(), Slot::A).unwrap();
        assert_eq!(read(root.path()).unwrap(), Slot::A);
        let names: Vec<_> = std::fs::read_dir(dir(root.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a"], "one file, named after the live slot");
        let mode = std::fs::metadata(dir(root.path())).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o755, "nginx's worker must be able to look inside");
    }

    #[test]
    fn a_symlinked_switch_folder_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir(root.path())).unwrap();
        let e = flip(root.path(), Slot::B).unwrap_err();
        assert!(e.to_string().contains("will not follow it"), "{e}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_private_folder_above_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o750)).unwrap();
        let (folder, mode) = hidden_by(&root).unwrap();
        assert_eq!(folder, root);
        assert_eq!(mode, 0o750);
    }
}
