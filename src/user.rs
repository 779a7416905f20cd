//! The unprivileged account that builds and runs the app (`user` in
//! zdd.toml): its ids, groups and home, from the system's databases.

use std::path::PathBuf;

/// The unprivileged account that builds and runs the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Its supplementary groups (from the group database).
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// Look `name` up; zdd must run as root to switch to it.
pub fn resolve_user(name: &str) -> std::result::Result<RunAs, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "`user = {name:?}` needs zdd to run as root (it switches to that user for build and app); remove `user` or run zdd as root"
        ));
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => {
            let cname =
                std::ffi::CString::new(name).map_err(|_| format!("invalid user name {name:?}"))?;
            let groups = nix::unistd::getgrouplist(&cname, u.gid)
                .map_err(|e| format!("cannot list the groups of {name:?}: {e}"))?;
            Ok(RunAs {
                name: name.to_string(),
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                groups: groups.iter().map(|g| g.as_raw()).collect(),
                home: u.dir,
            })
        }
        Ok(None) => Err(format!("no such user {name:?}")),
        Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
    }
}
