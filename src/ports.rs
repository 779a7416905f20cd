//! Who listens on a TCP port, and what waits there unread. Sockets come
//! from the kernel's sock_diag netlink interface, asked for one state and
//! one local port only, so the cost does not grow with the thousands of
//! TIME_WAIT connections a busy host has (reading `/proc/net/tcp` took
//! 250 ms with 96k of them); a listener's inode is then matched against
//! `/proc/PID/fd`.

use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// A process listening on a TCP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub pid: Option<i32>,
    pub command: Option<String>,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, &self.command) {
            (Some(pid), Some(c)) => write!(f, "pid {pid} ({})", crate::text::escape(c)),
            (Some(pid), None) => write!(f, "pid {pid}"),
            _ => f.write_str("a process zdd cannot see"),
        }
    }
}

impl Listener {
    /// "pid N (user U: command)" for a message about a port of `name`
    /// under `root`, saying when the process claims to be zdd's (its
    /// environment carries `root`'s marks) though nothing proves it.
    pub fn described(&self, root: &std::path::Path, name: &str) -> String {
        let Some(pid) = self.pid else {
            return self.to_string();
        };
        let user = crate::process::user_of(pid).unwrap_or_else(|| "?".into());
        let command = self
            .command
            .as_deref()
            .map(|c| format!(": {}", crate::text::escape(c)))
            .unwrap_or_default();
        let claim = if crate::process::claims(pid, root, name) {
            format!(" (its environment says it is {name}'s under {}, which proves nothing: a keeper of zdd's would vouch for it)", root.display())
        } else {
            String::new()
        };
        format!("pid {pid} (user {user}{command}){claim}")
    }
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LISTEN: u32 = 10;
const IPPROTO_TCP: u8 = 6;

/// One socket as sock_diag reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DiagSocket {
    /// The local address and port.
    addr: std::net::IpAddr,
    port: u16,
    inode: u64,
    /// `idiag_rqueue`: for a listener, connections the kernel has completed
    /// and queued that nobody has `accept()`ed yet; for a connection, bytes
    /// received that its process has not read.
    queued: u32,
}

/// The sockets in `states` (a mask of `1 << TCP_*`) on local `port`,
/// IPv4 and IPv6.
fn sockets(port: u16, states: u32) -> std::io::Result<Vec<DiagSocket>> {
    let mut found = Vec::new();
    for family in [libc_af_inet(), libc_af_inet6()] {
        found.extend(
            dump(family, states, port)?
                .into_iter()
                .filter(|s| s.port == port),
        );
    }
    Ok(found)
}

fn listening_sockets(port: u16) -> std::io::Result<Vec<DiagSocket>> {
    sockets(port, 1 << TCP_LISTEN)
}

/// Bytes that arrived on connections to local `port` and that the process
/// holding them has not read yet: requests it has not seen. A server that
/// stops now may close such a connection as idle, which resets it.
pub fn unread_bytes(port: u16) -> std::io::Result<u64> {
    let states = (1 << TCP_ESTABLISHED) | (1 << TCP_CLOSE_WAIT);
    Ok(sockets(port, states)?
        .iter()
        .map(|s| u64::from(s.queued))
        .sum())
}

/// The addresses `pids` listen on (TCP, IPv4 and IPv6), sorted: where an
/// app really listens when its health check finds nothing on `$PORT`.
pub fn listening_addrs(pids: &[i32]) -> Vec<std::net::SocketAddr> {
    let mut all = Vec::new();
    for family in [libc_af_inet(), libc_af_inet6()] {
        // Port 0: every listener; a host has few.
        all.extend(dump(family, 1 << TCP_LISTEN, 0).unwrap_or_default());
    }
    let mut found: Vec<std::net::SocketAddr> = Vec::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            for s in all.iter().filter(|s| s.inode == inode) {
                let addr = std::net::SocketAddr::new(s.addr, s.port);
                if !found.contains(&addr) {
                    found.push(addr);
                }
            }
        }
    }
    found.sort();
    found
}

/// Inodes of the sockets listening on `port`, IPv4 and IPv6.
pub fn listening_inodes(port: u16) -> std::io::Result<Vec<u64>> {
    Ok(listening_sockets(port)?
        .into_iter()
        .map(|s| s.inode)
        .collect())
}

/// How many connections wait in the accept queues of the sockets listening
/// on `port`; `None` when nothing listens there.
pub fn accept_queue(port: u16) -> std::io::Result<Option<u32>> {
    let sockets = listening_sockets(port)?;
    Ok((!sockets.is_empty()).then(|| sockets.iter().map(|s| s.queued).sum()))
}

fn libc_af_inet() -> u8 {
    AddressFamily::Inet as i32 as u8
}

fn libc_af_inet6() -> u8 {
    AddressFamily::Inet6 as i32 as u8
}

/// The TCP sockets of one address family in `states` on local `port` (the
/// kernel matches `idiag_sport` of a dump when it is not 0).
fn dump(family: u8, states: u32, port: u16) -> std::io::Result<Vec<DiagSocket>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // nlmsghdr (16 bytes) + inet_diag_req_v2 (56 bytes).
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    req.extend_from_slice(&states.to_ne_bytes());
    // inet_diag_sockid: the source port (big endian), anything else.
    req.extend_from_slice(&port.to_be_bytes());
    req.extend_from_slice(&[0u8; 46]);
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;

    let mut found = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 {
            return Ok(found);
        }
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < 16 || off + len > n {
                return Ok(found);
            }
            match kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY if len >= 16 + 72 => {
                    // inet_diag_msg: id.sport (big endian) at 4, rqueue at
                    // 56, inode at 68.
                    let msg = &buf[off + 16..off + len];
                    let field = |at: usize| u32::from_ne_bytes(msg[at..at + 4].try_into().unwrap());
                    // id.src at 8: 4 bytes for IPv4, 16 for IPv6.
                    let addr = match family == libc_af_inet() {
                        true => std::net::IpAddr::from(<[u8; 4]>::try_from(&msg[8..12]).unwrap()),
                        false => std::net::IpAddr::from(<[u8; 16]>::try_from(&msg[8..24]).unwrap()),
                    };
                    found.push(DiagSocket {
                        addr,
                        port: u16::from_be_bytes([msg[4], msg[5]]),
                        queued: field(56),
                        inode: field(68) as u64,
                    });
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

/// Does any process in `pids` hold one of `inodes` open?
fn holder_among(pids: impl IntoIterator<Item = i32>, wanted: &[String]) -> Option<i32> {
    pids.into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|t| wanted.iter().any(|w| t.as_os_str() == w.as_str()))
            })
        })
    })
}

fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
}

/// Who listens on `port`; `likely` pids are looked at before all others.
/// Empty when nothing listens.
pub fn listeners(port: u16, likely: &[i32]) -> Vec<Listener> {
    let inodes = match listening_inodes(port) {
        Ok(i) => i,
        Err(e) => {
            log::debug!("sock_diag failed ({e}); probing port {port} by connecting");
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return vec![Listener {
                    pid: None,
                    command: None,
                }];
            }
            return Vec::new();
        }
    };
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let pid =
        holder_among(likely.iter().copied(), &wanted).or_else(|| holder_among(all_pids(), &wanted));
    vec![Listener {
        pid,
        command: pid.and_then(crate::process::command_of),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_listener_v4_and_v6() {
        let me = std::process::id() as i32;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let inodes = listening_inodes(port).unwrap();
        assert_eq!(inodes.len(), 1);
        let found = listeners(port, &[]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid, Some(me));
        assert_eq!(listeners(port, &[me])[0].pid, Some(me));
        drop(l);
        // A child forked meanwhile by another test holds a copy of the
        // socket until its exec closes it: give that a moment.
        let gone = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            !listening_inodes(port).unwrap().contains(&inodes[0])
        });
        assert!(gone, "the closed listener is no longer listed");

        if let Ok(l6) = std::net::TcpListener::bind("[::1]:0") {
            let port = l6.local_addr().unwrap().port();
            assert_eq!(listeners(port, &[])[0].pid, Some(me));
        }
    }

    #[test]
    fn accept_queue_counts_connections_not_yet_accepted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(accept_queue(port).unwrap(), Some(0));
        let _c1 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _c2 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(accept_queue(port).unwrap(), Some(2));
        let (_s, _) = l.accept().unwrap();
        assert_eq!(accept_queue(port).unwrap(), Some(1));
        drop(l);
        assert_eq!(accept_queue(port).unwrap(), None, "nothing listens");
    }

    #[test]
    fn unread_bytes_are_what_arrived_and_nobody_read() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(unread_bytes(port).unwrap(), 0);
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut served, _) = l.accept().unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let t = std::time::Instant::now();
        while unread_bytes(port).unwrap() == 0 && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(unread_bytes(port).unwrap(), 18, "the request waits unread");
        let mut buf = [0u8; 18];
        served.read_exact(&mut buf).unwrap();
        assert_eq!(unread_bytes(port).unwrap(), 0, "read: nothing waits");
        // The client's own end (another local port) is not counted.
        served.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(unread_bytes(port).unwrap(), 0);
    }

    #[test]
    fn listening_addrs_are_where_the_pids_listen() {
        let me = std::process::id() as i32;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let found = listening_addrs(&[me]);
        assert!(found.contains(&addr), "{found:?} lacks {addr}");
        // A connection is no listener (other tests of this process may
        // listen meanwhile: look at these addresses only).
        let c = std::net::TcpStream::connect(addr).unwrap();
        let ours = [c.local_addr().unwrap(), addr];
        let found = listening_addrs(&[me]);
        assert_eq!(ours.map(|a| found.contains(&a)), [false, true]);
        drop(l);
        // A child forked meanwhile by another test holds a copy until its
        // exec closes it.
        let gone = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            !listening_addrs(&[me]).contains(&addr)
        });
        assert!(gone, "a closed listener is not listed");
    }

    #[test]
    fn a_connected_socket_is_not_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(listening_inodes(port).unwrap().len(), 1);
    }
}
