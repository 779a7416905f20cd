//! Durable file replacement: write a temp file beside the target, fsync,
//! rename over the target, fsync the folder. Used for the state file,
//! process records, the rendered nginx config and the `current` symlink.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Open `path` for reading, never through a symlink (ELOOP if it is one).
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Replace `path` with `bytes` atomically; readers see the old or the new
/// file, never a mix. A failure leaves the old file untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Point the symlink `link` at `target`, replacing any old link atomically.
pub fn symlink_atomic(target: &Path, link: &Path) -> std::io::Result<()> {
    let tmp = temp_beside(link);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(link)
}

/// Create a folder (and parents) with the given mode for the new ones.
pub fn create_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

/// Give `dir` and everything below it to `uid:gid`. The walk goes by file
/// descriptors opened with `O_NOFOLLOW` and changes owners with
/// `fchownat(AT_SYMLINK_NOFOLLOW)`, so the user who owns the tree cannot
/// swap a folder for a symlink and make root chown something else.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = open(dir, flags, Mode::empty())?;
    let owner = (
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    );
    let result = nix::unistd::fchown(fd, owner.0, owner.1)
        .map_err(std::io::Error::from)
        .and_then(|()| chown_below(fd, owner));
    let _ = nix::unistd::close(fd);
    result
}

type Owner = (Option<nix::unistd::Uid>, Option<nix::unistd::Gid>);

/// Chown the entries of the open folder `dirfd`, recursively; closes nothing
/// it did not open.
fn chown_below(dirfd: std::os::fd::RawFd, owner: Owner) -> std::io::Result<()> {
    use nix::dir::{Dir, Type};
    use nix::errno::Errno;
    use nix::fcntl::{openat, AtFlags, OFlag};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    // Dir takes ownership of its fd: give it a duplicate.
    let mut listing = Dir::from_fd(nix::unistd::dup(dirfd)?)?;
    let mut folders = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_owned();
        if name.as_bytes() == b"." || name.as_bytes() == b".." {
            continue;
        }
        match nix::unistd::fchownat(
            Some(dirfd),
            name.as_c_str(),
            owner.0,
            owner.1,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        if entry.file_type() == Some(Type::Directory) {
            folders.push(name);
        }
    }
    for name in folders {
        match openat(Some(dirfd), name.as_c_str(), flags, Mode::empty()) {
            Ok(child) => {
                let r = chown_below(child, owner);
                let _ = nix::unistd::close(child);
                r?;
            }
            // Gone, or replaced by a symlink or file since it was listed.
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// fsync the folder that holds `path`, so that a rename or create in it lasts.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.toml");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn chown_tree_does_not_follow_symlinks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("a/link")).unwrap();
        chown_tree(dir.path(), me.0, me.1).unwrap();
        let f = std::fs::metadata(dir.path().join("a/b/f")).unwrap();
        assert_eq!((f.uid(), f.gid()), me);
        let link = std::fs::symlink_metadata(dir.path().join("a/link")).unwrap();
        assert!(link.file_type().is_symlink());
        assert!(
            chown_tree(&dir.path().join("a/link"), me.0, me.1).is_err(),
            "a symlink is not walked"
        );
    }

    #[test]
    fn symlink_atomic_replaces_link() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("current");
        symlink_atomic(Path::new("slots/a"), &link).unwrap();
        symlink_atomic(Path::new("slots/b"), &link).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("slots/b"));
    }
}
