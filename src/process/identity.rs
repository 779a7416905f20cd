//! Which processes are zdd's, proven from what zdd recorded and from what
//! the kernel says — never from what a process can set about itself (its
//! environment, its argv, the group it joins). A recorded leader (pid,
//! `/proc/PID/stat` start time, boot id) that still runs is zdd's; so is
//! every member of the session it leads (zdd starts every leader with
//! `setsid`, and no process outside a session can enter it), every
//! descendant of it by parent links, and every member of the app's cgroup
//! (see `fence`), which only root can put a process in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fence;

/// A process as zdd recorded it: pid plus what makes it unique over time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessId {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when it started.
    pub boot_id: String,
    /// The cgroup its app runs in, where the system offers one (`fence`):
    /// what proves the app's processes zdd's once their keeper is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// Environment marks that earlier versions of zdd recorded and
    /// trusted; read from their state files, never written, never used.
    #[serde(default, skip_serializing)]
    pub marks: Vec<String>,
}

/// The fields of `/proc/PID/stat` zdd needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// The controlling terminal (0: none).
    pub tty_nr: i32,
    pub start_time: u64,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Parse `/proc/PID/stat` text (the command name may hold spaces and ')').
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm)": state is field 3, ppid 4, pgrp 5, session 6,
    // tty_nr 7, starttime 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        tty_nr: fields.get(4)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn read_stat(pid: i32) -> Option<Stat> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Every process on the machine, looked at once: pid to its stat.
pub struct Table(HashMap<i32, Stat>);

impl Table {
    pub fn now() -> Table {
        use std::io::Read;
        let pids = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
        // One buffer for all: this runs in the loops that wait for a stop.
        let mut path = String::with_capacity(32);
        let mut text = String::with_capacity(512);
        let mut stat = |pid: i32| {
            use std::fmt::Write;
            path.clear();
            text.clear();
            let _ = write!(path, "/proc/{pid}/stat");
            std::fs::File::open(&path)
                .ok()?
                .read_to_string(&mut text)
                .ok()?;
            parse_stat(&text)
        };
        Table(pids.filter_map(|p| Some((p, stat(p)?))).collect())
    }

    pub fn get(&self, pid: i32) -> Option<&Stat> {
        self.0.get(&pid)
    }

    /// The living children of `parent`, with their start times.
    pub fn children_of(&self, parent: i32) -> Vec<(i32, u64)> {
        let mut children: Vec<(i32, u64)> = self
            .0
            .iter()
            .filter(|(_, st)| st.ppid == parent && !st.is_zombie())
            .map(|(&pid, st)| (pid, st.start_time))
            .collect();
        children.sort_unstable();
        children
    }

    /// The living descendants of `root` by parent links (not `root`
    /// itself), leaving out the subtrees of `skip` (zdd itself, when a
    /// keeper's rollback is what stops that keeper) and of every other
    /// keeper below it: a keeper leads a session of its own and fences its
    /// own app, and one whose parent died (a keeper's `zdd rollback`
    /// killed after it started the new slot) is handed to the nearest
    /// subreaper, which may be the old slot's keeper.
    pub fn descendants(&self, root: i32, skip: &[i32]) -> Vec<(i32, u64)> {
        self.descendants_but(root, skip, &|pid, st| st.session == pid && is_keeper(pid))
    }

    fn descendants_but(
        &self,
        root: i32,
        skip: &[i32],
        fenced: &dyn Fn(i32, &Stat) -> bool,
    ) -> Vec<(i32, u64)> {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (&pid, st) in &self.0 {
            children.entry(st.ppid).or_default().push(pid);
        }
        let mut found = Vec::new();
        let mut todo = vec![root];
        while let Some(parent) = todo.pop() {
            for &child in children.get(&parent).into_iter().flatten() {
                let st = &self.0[&child];
                if skip.contains(&child) || child == root || fenced(child, st) {
                    continue;
                }
                todo.push(child);
                if !st.is_zombie() {
                    found.push((child, st.start_time));
                }
            }
        }
        found
    }

    /// Is `pid` `ancestor` or below it, by parent links?
    pub fn is_within(&self, pid: i32, ancestor: i32) -> bool {
        let mut at = pid;
        for _ in 0..4096 {
            if at == ancestor {
                return true;
            }
            match self.0.get(&at) {
                Some(st) if st.ppid > 0 && st.ppid != at => at = st.ppid,
                _ => return false,
            }
        }
        false
    }

    /// Living members of process group `pgid`.
    pub fn group(&self, pgid: i32) -> impl Iterator<Item = i32> + '_ {
        self.0
            .iter()
            .filter(move |(_, st)| st.pgrp == pgid && !st.is_zombie())
            .map(|(&pid, _)| pid)
    }
}

impl ProcessId {
    /// Identify a running process now.
    pub fn of(pid: i32) -> Option<ProcessId> {
        read_stat(pid).map(|st| ProcessId {
            pid,
            start_time: st.start_time,
            boot_id: boot_id(),
            cgroup: None,
            marks: Vec::new(),
        })
    }

    /// The recorded leader itself, if it is still there (alive, or a
    /// zombie not yet reaped, which still holds its pid): same pid, same
    /// start time, same boot.
    fn leader(&self, table: Option<&Table>) -> Option<Stat> {
        if self.pid <= 1 || self.boot_id != boot_id() {
            return None;
        }
        let st = match table {
            Some(t) => t.get(self.pid).copied(),
            None => read_stat(self.pid),
        }?;
        (st.start_time == self.start_time).then_some(st)
    }

    /// What is left in the cgroup of `name`'s app under `root` once no
    /// keeper vouches for it: a record with no leader, proven by the cgroup
    /// alone, and what runs in it; `None` when nothing does (or there is
    /// no cgroup).
    pub fn remnants(root: &Path, name: &str) -> Option<(ProcessId, Vec<(i32, u64)>)> {
        let cgroup = fence::app_cgroup_path(root, name)?;
        // Read the cgroup before looking at every process.
        if fence::cgroup_members(&cgroup).is_empty() {
            return None;
        }
        let id = ProcessId {
            pid: 0,
            start_time: 0,
            boot_id: boot_id(),
            cgroup: Some(cgroup),
            marks: Vec::new(),
        };
        let left = id.members(&Table::now());
        (!left.is_empty()).then_some((id, left))
    }

    /// Is the leader itself alive (not a zombie) and ours?
    pub fn leader_alive(&self) -> bool {
        self.leader(None).is_some_and(|st| !st.is_zombie())
    }

    /// Every living process that is provably of this record (see the
    /// module's proof), as pid and start time, leader first. zdd itself
    /// and what it started are left out when they are inside it: a
    /// keeper's rollback is that keeper's descendant, and stops its slot.
    pub fn members(&self, table: &Table) -> Vec<(i32, u64)> {
        let mut found = self.leader_members(table);
        if let Some(cgroup) = &self.cgroup {
            for pid in fence::cgroup_members(cgroup) {
                if let Some(st) = table.get(pid) {
                    add_member(pid, st, &mut found);
                }
            }
        }
        found
    }

    /// What the leader vouches for: itself, its descendants and the
    /// session it leads (its app's cgroup aside).
    fn leader_members(&self, table: &Table) -> Vec<(i32, u64)> {
        let mut found: Vec<(i32, u64)> = Vec::new();
        let add = add_member;
        if let Some(leader) = self.leader(Some(table)) {
            let me = std::process::id() as i32;
            let inside = table.is_within(me, self.pid)
                || table.get(me).is_some_and(|st| st.session == self.pid);
            let mine: Vec<i32> = match inside {
                true => std::iter::once(me)
                    .chain(table.descendants(me, &[]).into_iter().map(|d| d.0))
                    .collect(),
                false => Vec::new(),
            };
            add(self.pid, &leader, &mut found);
            for (pid, _) in table.descendants(self.pid, &mine) {
                add(pid, &table.0[&pid], &mut found);
            }
            // A session leader's session holds only its descendants, even
            // those whose parent died and were handed to init.
            if leader.session == self.pid {
                for (&pid, st) in &table.0 {
                    if st.session == self.pid && !mine.contains(&pid) {
                        add(pid, st, &mut found);
                    }
                }
            }
        }
        found
    }

    /// Is `pid` provably of this record? Asked of a few processes (who
    /// listens on a port): by their own stat and parent links, without a
    /// look at every process.
    pub fn owns(&self, pid: i32) -> bool {
        if let Some(leader) = self.leader(None) {
            let Some(st) = read_stat(pid) else {
                return false;
            };
            if pid == self.pid || (leader.session == self.pid && st.session == self.pid) {
                return true;
            }
            let mut at = st;
            for _ in 0..4096 {
                if at.ppid == self.pid {
                    return true;
                }
                match read_stat(at.ppid) {
                    Some(parent) if at.ppid > 1 => at = parent,
                    _ => break,
                }
            }
        }
        self.cgroup
            .as_ref()
            .is_some_and(|cg| fence::cgroup_members(cg).contains(&pid))
    }

    /// Does it still run, provably zdd's: the leader, or (a zombie leader
    /// not yet reaped) living members of its session or of its group. What
    /// is left in its app's cgroup once its leader is gone does not count
    /// (see [`ProcessId::remnants`]); stopping it stops that too.
    pub fn group_is_ours(&self) -> bool {
        match self.leader(None) {
            None => return false,
            Some(st) if !st.is_zombie() => return true,
            Some(_) => {}
        }
        !self.leader_members(&Table::now()).is_empty()
    }

    /// The recorded process group, if signalling it as a whole reaches
    /// only processes of this record: its leader is still there and every
    /// living member of the group is provably of it (always so for a
    /// session leader: no one outside a session can join its groups).
    /// `members` are its [`ProcessId::members`] in `table`.
    pub fn whole_group(&self, table: &Table, members: &[(i32, u64)]) -> bool {
        let Some(leader) = self.leader(Some(table)) else {
            return false;
        };
        if leader.pgrp != self.pid {
            return false;
        }
        table
            .group(self.pid)
            .all(|pid| members.iter().any(|&(p, _)| p == pid))
    }
}

/// Is `pid` a keeper (`zdd keep ...`)? Its command line says so, and it
/// runs as the user running zdd: an app run as its own user cannot pass
/// for one. Used to choose which signal to send a process already proven
/// zdd's, and to leave another keeper's subtree out of a keeper's
/// descendants (so that no process counts as the wrong keeper's); never to
/// prove a process zdd's.
pub fn is_keeper(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mine = std::fs::metadata(format!("/proc/{pid}"))
        .is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw());
    mine && std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"keep".as_slice()))
}

/// Add `pid` to `found` once, unless it is a zombie.
fn add_member(pid: i32, st: &Stat, found: &mut Vec<(i32, u64)>) {
    if !st.is_zombie() && !found.iter().any(|&(p, _)| p == pid) {
        found.push((pid, st.start_time));
    }
}

/// Who `pid` runs as, by name if the user database knows it.
pub fn user_of(pid: i32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    Some(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {uid}"), |u| u.name),
    )
}

/// What `pid`'s environment claims about it, for messages only: zdd sets
/// `ZDD_ROOT` and `ZDD_SLOT` for every app, and any process can set them
/// too, so they prove nothing.
pub fn claims(pid: i32, root: &Path, name: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = [
        format!("ZDD_ROOT={}", root.display()),
        format!("ZDD_SLOT={name}"),
    ];
    let vars: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    want.iter().all(|w| vars.contains(&w.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_handles_odd_names() {
        let text = "1234 (we ird) name)) S 1 1234 1230 34817 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!((st.ppid, st.pgrp, st.session), (1, 1234, 1230));
        assert_eq!(st.tty_nr, 34817);
        assert_eq!(st.start_time, 987654);
    }

    #[test]
    fn own_process_is_identified_and_a_changed_start_time_is_not() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.leader_alive());
        let reused = ProcessId {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!reused.leader_alive());
        assert!(!reused.group_is_ours());
        let init = ProcessId { pid: 1, ..me };
        assert!(!init.group_is_ours(), "pid 1 is never ours");
    }

    #[test]
    fn descendants_follow_parent_links_and_leave_out_what_is_skipped() {
        let stat = |ppid| Stat {
            state: 'S',
            ppid,
            pgrp: 10,
            session: 10,
            tty_nr: 0,
            start_time: 5,
        };
        let table = Table(HashMap::from([
            (10, stat(1)),
            (11, stat(10)),
            (12, stat(11)),
            (13, stat(10)), // a rollback zdd...
            (14, stat(13)), // ...and what it started
            (
                15,
                Stat {
                    state: 'Z',
                    ..stat(10)
                },
            ),
            (20, stat(1)),
        ]));
        let no_keepers = |_: i32, _: &Stat| false;
        let mut found: Vec<i32> = table
            .descendants_but(10, &[13], &no_keepers)
            .iter()
            .map(|d| d.0)
            .collect();
        found.sort();
        assert_eq!(found, [11, 12], "zombies and skipped subtrees left out");
        // Another keeper handed to this one (its parent died) is not of it,
        // nor is its app.
        let keeper_13 = |pid: i32, _: &Stat| pid == 13;
        let mut found: Vec<i32> = table
            .descendants_but(10, &[], &keeper_13)
            .iter()
            .map(|d| d.0)
            .collect();
        found.sort();
        assert_eq!(found, [11, 12]);
    }
}
