//! The nginx switch: the symlink `ROOT/live`, zdd's own, pointing at
//! `route/a` or `route/b` (`route/SLOT/closed` while maintenance is on).
//! nginx's root for the app's server block is `ROOT/live/www`, an empty
//! folder; when nginx connects to the upstream — after a request's body —
//! its `hash` balancer keys on the real path of that root
//! (`$realpath_root`), so the slot is decided then, by one `realpath()`.
//! A flip is one rename of the symlink: every connection sees one slot or
//! the other. Static files go through the same link (`ROOT/live/app/…`,
//! `route/SLOT/app` pointing at the release the slot holds), so they flip
//! with the code.
//!
//! The real path names the *slot*: `route/SLOT` is a folder of zdd's,
//! never a tree the app can change, whatever tree the slot runs.
//!
//! Until nginx runs the config rendered for this switch, a site of an
//! earlier zdd tests `-f ROOT/switch/b` per request; while that folder
//! exists, every flip renames its file too.
//!
//! Modes: `route/` and the folders in it 0755, so that nginx's worker user
//! (www-data, nobody) can resolve them; it also needs search permission
//! (`x`) on every folder above. zdd never follows a symlink here.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::slot::Slot;

/// The folders of the switch under `root`, with their modes, for
/// `root::prepare` (parents first).
pub const FOLDERS: [(&str, u32); 9] = [
    ("route", 0o755),
    ("route/a", 0o755),
    ("route/a/www", 0o755),
    ("route/a/closed", 0o755),
    ("route/a/closed/www", 0o755),
    ("route/b", 0o755),
    ("route/b/www", 0o755),
    ("route/b/closed", 0o755),
    ("route/b/closed/www", 0o755),
];

/// Where the switch points: a slot, and whether the site is closed for
/// maintenance (nginx answers the public with its page, zdd's probe still
/// reaches the slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub slot: Slot,
    pub closed: bool,
}

impl Position {
    pub fn open(slot: Slot) -> Position {
        Position {
            slot,
            closed: false,
        }
    }

    /// What `ROOT/live` points at, relative to `root`.
    fn target(self) -> PathBuf {
        let dir = PathBuf::from("route").join(self.slot.name());
        if self.closed {
            dir.join("closed")
        } else {
            dir
        }
    }

    fn parse(target: &Path) -> Option<Position> {
        let mut parts = target.iter().map(|p| p.to_str());
        let (Some(Some("route")), Some(Some(slot))) = (parts.next(), parts.next()) else {
            return None;
        };
        let slot = Slot::parse(slot)?;
        match (parts.next(), parts.next()) {
            (None, _) => Some(Position::open(slot)),
            (Some(Some("closed")), None) => Some(Position { slot, closed: true }),
            _ => None,
        }
    }
}

/// Where the switch belongs: at the live slot (slot a before the first
/// deploy).
pub fn wanted(state: &crate::state::State) -> Position {
    Position {
        slot: state.active.unwrap_or(Slot::A),
        closed: state.maintenance.is_some(),
    }
}

/// The symlink nginx resolves.
pub fn link(root: &Path) -> PathBuf {
    root.join("live")
}

/// The page nginx shows in maintenance (written by `zdd maintenance on`).
pub fn maintenance_page(root: &Path) -> PathBuf {
    root.join("route").join("maintenance.html")
}

/// nginx's root for the app's server block (`root` in the snippet).
pub fn nginx_root(root: &Path) -> PathBuf {
    link(root).join("www")
}

/// The suffix of the real path of [`nginx_root`] when the switch points at
/// `slot`, open or closed, as the rendered `map` matches it (a regex).
pub fn resolved_suffix(slot: Slot) -> String {
    format!("/route/{}(/closed)?/www$", slot.name())
}

/// The slot a real path of [`nginx_root`], as nginx reports it, names.
pub fn slot_of_resolved(real: &str) -> Option<Slot> {
    let rest = real.strip_suffix("/www")?;
    let rest = rest.strip_suffix("/closed").unwrap_or(rest);
    let (dir, slot) = rest.rsplit_once('/')?;
    dir.ends_with("/route").then(|| Slot::parse(slot)).flatten()
}

/// The key of nginx's `hash` balancer that picks `slot`'s server: the
/// upstream lists slot a's port first and slot b's second, each with
/// weight 1, and nginx picks server `((crc32(key) >> 16) & 0x7fff) % 2`
/// (`ngx_http_upstream_get_hash_peer`). The first of `slot-a`, `slot-a-1`,
/// `slot-a-2`… that picks the slot's index (`slot-a` and `slot-b` do).
pub fn key(slot: Slot) -> String {
    let base = format!("slot-{}", slot.name());
    std::iter::once(base.clone())
        .chain((1..).map(|n| format!("{base}-{n}")))
        .find(|k| hash_pick(k, 2) == slot.index())
        .expect("half of all keys pick each of two servers")
}

/// The server index nginx's `hash` balancer (not consistent) picks first
/// for `key` among `servers` of weight 1.
pub fn hash_pick(key: &str, servers: usize) -> usize {
    ((crc32(key.as_bytes()) >> 16) & 0x7fff) as usize % servers
}

/// CRC-32 (IEEE, reflected, as zlib's and nginx's `ngx_crc32_short`).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Where the switch points now; `None` before the first flip.
pub fn read(root: &Path) -> io::Result<Option<Position>> {
    let link = link(root);
    match std::fs::symlink_metadata(&link) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(m) if !m.file_type().is_symlink() => {
            return Err(io::Error::other(format!(
                "{} is not a symlink; zdd keeps its switch there: remove it",
                link.display()
            )))
        }
        Ok(_) => {}
    }
    let target = std::fs::read_link(&link)?;
    Position::parse(&target).map(Some).ok_or_else(|| {
        io::Error::other(format!(
            "{} points at {}, which is not a slot of zdd's (route/a or route/b): remove it",
            link.display(),
            target.display()
        ))
    })
}

/// Point `route/SLOT/app` at the release `dir` (relative to `root`) that
/// `slot` holds, with one rename, unless it already does: before the slot
/// starts, so that its static files are there when the switch names it.
pub fn point_app(root: &Path, slot: Slot, dir: &str) -> io::Result<()> {
    let app = root.join("route").join(slot.name()).join("app");
    let tree = Path::new("../..").join(dir);
    if std::fs::read_link(&app).ok().as_deref() != Some(tree.as_path()) {
        fsutil::symlink_atomic(&tree, &app)?;
    }
    Ok(())
}

/// Point the switch at `to` with one rename, then make it durable; also
/// the switch file of an earlier zdd's site, while its folder exists.
/// Already pointing there: nothing changes. The folders are
/// `root::prepare`d first (`FOLDERS`); the links to the slots' releases
/// are [`point_app`]'s.
pub fn flip(root: &Path, to: Position) -> io::Result<()> {
    flip_head_time(root, to.slot)?;
    if read(root)? != Some(to) {
        fsutil::symlink_atomic(&to.target(), &link(root))?;
    }
    Ok(())
}

/// The folder of the switch file that sites rendered by an earlier zdd
/// test per request (`if (-f ROOT/switch/b)`).
pub fn head_time_dir(root: &Path) -> PathBuf {
    root.join("switch")
}

/// Keep the switch file of an earlier zdd's site in step: rename `a` to
/// `b` or back. Nothing to do when its folder is not there.
fn flip_head_time(root: &Path, to: Slot) -> io::Result<()> {
    let dir = head_time_dir(root);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => {
            return Err(io::Error::other(format!(
                "{} is not a folder (a symlink or a file); zdd keeps the switch of its earlier sites there and will not follow it",
                dir.display()
            )))
        }
        Ok(_) => {}
    }
    crate::root::check_dir(&dir).map_err(|e| io::Error::other(e.to_string()))?;
    let target = dir.join(to.name());
    let other = dir.join(to.other().name());
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    if exists(&other) {
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

/// The first folder on the way to nginx's root that other users cannot
/// search (no `o+x`), with its mode: nginx's worker cannot resolve it.
pub fn hidden_by(root: &Path) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut blocked = None;
    for folder in root.join("route").join("a").join("www").ancestors() {
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

    fn prepared() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        crate::root::prepare(root.path(), &FOLDERS).unwrap();
        root
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"a"), 0xe8b7_be43);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn each_slot_has_a_key_that_picks_its_server() {
        assert_eq!(key(Slot::A), "slot-a");
        assert_eq!(key(Slot::B), "slot-b");
        for slot in Slot::BOTH {
            assert_eq!(hash_pick(&key(slot), 2), slot.index());
        }
        // The plain slot names would pick the other server each.
        assert_eq!(hash_pick("a", 2), 1);
        assert_eq!(hash_pick("b", 2), 0);
    }

    #[test]
    fn flips_by_one_rename_and_reads_back() {
        let root = prepared();
        let r = root.path();
        assert_eq!(read(r).unwrap(), None, "before the first flip");
        flip(r, Position::open(Slot::B)).unwrap();
        assert_eq!(read(r).unwrap(), Some(Position::open(Slot::B)));
        assert_eq!(std::fs::read_link(link(r)).unwrap(), Path::new("route/b"));
        let closed = Position {
            slot: Slot::A,
            closed: true,
        };
        flip(r, closed).unwrap();
        assert_eq!(read(r).unwrap(), Some(closed));
        let real = std::fs::canonicalize(nginx_root(r)).unwrap();
        assert_eq!(slot_of_resolved(real.to_str().unwrap()), Some(Slot::A));
        point_app(r, Slot::B, "releases/5b5d6aec").unwrap();
        assert_eq!(
            std::fs::read_link(r.join("route/b/app")).unwrap(),
            Path::new("../../releases/5b5d6aec")
        );
        assert!(
            !head_time_dir(r).exists(),
            "the earlier switch is not made anew"
        );
        let names: Vec<_> = std::fs::read_dir(r)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temp link left: {names:?}");
    }

    #[test]
    fn an_earlier_sites_switch_file_flips_too() {
        let root = prepared();
        let r = root.path();
        std::fs::create_dir(head_time_dir(r)).unwrap();
        std::fs::set_permissions(head_time_dir(r), std::fs::Permissions::from_mode(0o755)).unwrap();
        flip(r, Position::open(Slot::B)).unwrap();
        assert!(head_time_dir(r).join("b").exists());
        flip(r, Position::open(Slot::A)).unwrap();
        assert!(head_time_dir(r).join("a").exists() && !head_time_dir(r).join("b").exists());
    }

    #[test]
    fn a_live_that_is_not_zdds_link_is_refused() {
        let root = prepared();
        let r = root.path();
        std::os::unix::fs::symlink("/etc", link(r)).unwrap();
        let e = read(r).unwrap_err();
        assert!(e.to_string().contains("not a slot of zdd's"), "{e}");
        std::fs::remove_file(link(r)).unwrap();
        std::fs::create_dir(link(r)).unwrap();
        let e = flip(r, Position::open(Slot::A)).unwrap_err();
        assert!(e.to_string().contains("is not a symlink"), "{e}");
    }

    #[test]
    fn a_symlinked_earlier_switch_folder_is_refused() {
        let root = prepared();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), head_time_dir(root.path())).unwrap();
        let e = flip(root.path(), Position::open(Slot::B)).unwrap_err();
        assert!(e.to_string().contains("will not follow it"), "{e}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn real_paths_name_their_slot() {
        assert_eq!(slot_of_resolved("/srv/x/route/b/www"), Some(Slot::B));
        assert_eq!(slot_of_resolved("/srv/x/route/a/closed/www"), Some(Slot::A));
        assert_eq!(slot_of_resolved("/srv/x/slots/a/www"), None);
        assert_eq!(slot_of_resolved("/srv/x/route/c/www"), None);
        assert_eq!(slot_of_resolved(""), None);
    }

    #[test]
    fn a_private_folder_above_is_named() {
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
