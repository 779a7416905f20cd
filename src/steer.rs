//! Steering nginx in a swap, and proving it: confirm through nginx's
//! loopback probe that new requests reach the new slot (after a flip of
//! the switch, or once round-robin failover finds it), then wait until
//! nothing is queued for the old slot any more.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{Config, NginxMode};
use crate::health::{Route, RouteProbe, Via};
use crate::slot::Slot;
use crate::{ports, switch};

/// How nginx was seen routing to the new slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// zdd's switch: nginx keyed its connection on the new slot and the
    /// answer came from it. The slot is picked when nginx connects.
    AtConnect,
    /// The switch of a site rendered by an earlier zdd (`if (-f …)`): the
    /// slot is picked when a request's head arrives, so an upload that was
    /// still arriving at the flip goes to the old slot.
    AtHead,
    /// Round-robin: nginx's failover answered through the new slot.
    Failover,
    /// No probe location (a custom round-robin template): waited out a
    /// failure mark instead, without proof.
    Waited,
}

/// Why nginx was not seen routing to the new slot.
#[derive(Debug)]
pub struct NotRouted {
    /// One sentence with the likely cause and the fix.
    pub reason: String,
    /// The slot nginx last picked, when its switch said so.
    pub picked: Option<Slot>,
    /// nginx answered the probe (it runs, but routes elsewhere).
    pub answered: bool,
}

/// What a probe answer must show for nginx to route to one slot.
pub struct Expect {
    mode: NginxMode,
    slot: Slot,
    /// `127.0.0.1:PORT` of the slot.
    addr: String,
    name: String,
    root: PathBuf,
    /// Whether a custom template may lack the probe location.
    custom_template: bool,
    probe_host: String,
    /// `nginx.snippet_output`: what an own server block includes.
    snippet: Option<PathBuf>,
}

impl Expect {
    pub fn new(config: &Config, mode: NginxMode, slot: Slot) -> Expect {
        Expect {
            mode,
            slot,
            addr: format!("127.0.0.1:{}", config.port(slot)),
            name: config.name.clone(),
            // As nginx resolves it (a root created after the config was read
            // was not resolved then).
            root: std::fs::canonicalize(&config.root).unwrap_or_else(|_| config.root.clone()),
            custom_template: config.nginx.template.is_some(),
            probe_host: config
                .nginx
                .probe_host
                .clone()
                .unwrap_or_else(|| "127.0.0.1".into()),
            snippet: config.nginx.snippet_output.clone(),
        }
    }

    /// The slot an earlier zdd's switch names by its upstream.
    fn head_time_slot(&self, upstream: &str) -> Option<Slot> {
        Slot::BOTH
            .into_iter()
            .find(|s| upstream == format!("{}_{}", self.name, s.name()))
    }
}

/// What one answer of the probe says.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Routed(Routed),
    /// Not (yet) the slot: what nginx did, in a few words, and the slot its
    /// switch picked, if it says. Asked again until `nginx.route_timeout`.
    Elsewhere {
        said: String,
        picked: Option<Slot>,
    },
    /// An answer no wait will change: the cause and the fix.
    Wrong(String),
    /// A custom round-robin template without the probe location (HTTP status).
    NoProbe(u16),
    /// Nobody answered (why).
    Unanswered(String),
}

/// Judge one probe answer against `expect` (pure: no I/O).
pub fn judge(expect: &Expect, route: &Route, probe_url: &str) -> Verdict {
    let slot = expect.slot;
    match route {
        Route::Unreachable(e) => Verdict::Unanswered(e.clone()),
        // The built-in templates have the probe location, and so does any
        // template in switch mode: an answer without it came from another
        // server block.
        Route::NoProbe(status) if !expect.custom_template || expect.mode == NginxMode::Switch => {
            Verdict::Wrong(match &expect.snippet {
                Some(snippet) => format!(
                    "nginx answered {probe_url} with HTTP {status} but without zdd's probe headers: the server block that answered (Host {}) does not include zdd's snippet — add `include {};` to the app's server block and reload nginx — or it is another app's block: then remove nginx's default site, set nginx.server_name, or set nginx.probe_url",
                    expect.probe_host,
                    snippet.display()
                ),
                None => format!(
                    "nginx answered {probe_url} with HTTP {status} but without zdd's probe headers: the request reached another server block (Host {}), or nginx runs a config without zdd's site; remove nginx's default site, set nginx.server_name or nginx.probe_url, or run `zdd nginx --write --reload`",
                    expect.probe_host
                ),
            })
        }
        Route::NoProbe(status) => Verdict::NoProbe(*status),
        Route::Upstream { addr, .. } if expect.mode == NginxMode::RoundRobin => {
            if *addr == expect.addr {
                Verdict::Routed(Routed::Failover)
            } else {
                Verdict::Elsewhere {
                    said: format!("it answered through {addr}"),
                    picked: None,
                }
            }
        }
        Route::Upstream { addr, via } => match via {
            Via::Key { key, resolved } => {
                let picked = switch::slot_of_resolved(resolved);
                let link = switch::nginx_root(&expect.root);
                let ours = expect.root.join("route");
                if !resolved.is_empty() && !Path::new(resolved).starts_with(&ours) {
                    return Verdict::Wrong(format!(
                        "nginx's probe was answered by a server block of another root: it resolved {resolved}, not a folder in {} (another app's site with the same listen and server_name?); give this app's site its own nginx.server_name, or set nginx.probe_url to where its server block listens",
                        ours.display()
                    ));
                }
                if resolved.is_empty() {
                    return Verdict::Wrong(match switch::hidden_by(&expect.root) {
                        Some((folder, mode)) => format!(
                            "nginx's worker cannot resolve the switch {}: its user cannot search {} (mode {mode:04o}); run `chmod o+x {}`",
                            link.display(), folder.display(), folder.display()
                        ),
                        None => format!(
                            "nginx's worker cannot resolve the switch {} (its error log says why: realpath() failed)",
                            link.display()
                        ),
                    });
                }
                if picked.is_none() || *key != switch::key(picked.unwrap_or(slot)) {
                    return Verdict::Wrong(format!(
                        "nginx's probe resolved the server's root to {resolved} and keyed on {key:?}, not on zdd's switch {} (`{}` when slot {slot} serves): the server block that answers {probe_url} sets a root of its own, or runs a config for another root; include zdd's snippet (its `root` line) and run `zdd nginx --write --reload`",
                        link.display(),
                        switch::key(slot)
                    ));
                }
                match picked {
                    Some(p) if p == slot && *addr == expect.addr => {
                        Verdict::Routed(Routed::AtConnect)
                    }
                    Some(p) if p == slot => Verdict::Elsewhere {
                        // Refused by the new slot: nginx used the other.
                        said: format!("it picks slot {slot} but answered through {addr}"),
                        picked,
                    },
                    _ => Verdict::Elsewhere {
                        said: format!("it still resolves {resolved}"),
                        picked,
                    },
                }
            }
            Via::HeadTime(up) => {
                let picked = expect.head_time_slot(up);
                match picked {
                    Some(p) if p == slot && *addr == expect.addr => Verdict::Routed(Routed::AtHead),
                    Some(p) if p == slot => Verdict::Elsewhere {
                        said: format!("it picks upstream {up} but answered through its backup {addr}"),
                        picked,
                    },
                    _ => Verdict::Elsewhere {
                        said: format!("it still picks upstream {up}"),
                        picked,
                    },
                }
            }
            Via::None => Verdict::Wrong(format!(
                "nginx answered {probe_url} through {addr} but without the X-Zdd-Mode header: the config nginx runs has no switch (a custom template without it); run `zdd nginx --write --reload`, or set nginx.mode = \"round-robin\""
            )),
        },
    }
}

/// Ask nginx's probe once, with a short timeout, whether it routes to
/// `slot` now (`zdd status`): the verdict, and the probe's URL.
pub fn look(config: &Config, mode: NginxMode, slot: Slot) -> (Verdict, String) {
    let timeout = config.health.request_timeout.min(Duration::from_secs(1));
    let probe = RouteProbe::new(
        &config.nginx.probe_url,
        config.nginx.probe_host.as_deref(),
        timeout,
    );
    let expect = Expect::new(config, mode, slot);
    (
        judge(&expect, &probe.ask(), probe.url()),
        probe.url().to_string(),
    )
}

/// Ask nginx's probe location until it answers through `slot`'s port, and
/// in switch mode its switch names the slot.
///
/// With `must_route` false (nothing else serves), an nginx that does not
/// answer at all is reported at once instead of waited for.
pub fn confirm(
    config: &Config,
    mode: NginxMode,
    slot: Slot,
    must_route: bool,
) -> Result<Routed, NotRouted> {
    let probe = RouteProbe::new(
        &config.nginx.probe_url,
        config.nginx.probe_host.as_deref(),
        config.health.request_timeout,
    );
    let expect = Expect::new(config, mode, slot);
    let limit = config.nginx.route_timeout;
    let t = Instant::now();
    let (mut answered, mut picked) = (false, None);
    let mut last;
    loop {
        let seen = picked;
        let fail = move |reason: String| NotRouted {
            reason,
            picked: seen,
            answered: true,
        };
        match judge(&expect, &probe.ask(), probe.url()) {
            Verdict::Routed(r) => return Ok(r),
            Verdict::Wrong(reason) => return Err(fail(reason)),
            Verdict::NoProbe(status) => {
                let wait = config.nginx.fail_timeout + Duration::from_secs(1);
                log::warn!(
                    "nginx has no zdd probe location at {} (HTTP {status}); waiting {} for it to try slot {slot}, without proof",
                    probe.url(),
                    humantime::format_duration(wait)
                );
                std::thread::sleep(wait.saturating_sub(t.elapsed()));
                return Ok(Routed::Waited);
            }
            Verdict::Unanswered(e) if !must_route => {
                return Err(NotRouted {
                    answered: false,
                    ..fail(format!(
                        "nginx did not answer at {} ({e}); once it runs the config from `zdd nginx`, it will send requests to slot {slot}",
                        probe.url()
                    ))
                })
            }
            Verdict::Unanswered(e) => last = format!("{} did not answer: {e}", probe.url()),
            Verdict::Elsewhere { said, picked: p } => {
                answered = true;
                picked = p.or(picked);
                last = said;
            }
        }
        let fail = |reason: String| NotRouted {
            reason,
            picked,
            answered,
        };
        if t.elapsed() >= limit {
            let reason = if !answered {
                format!(
                    "nginx did not answer at {} within {} ({last}): nothing answers on nginx.listen = {:?}; is nginx running, with the config from `zdd nginx`?",
                    probe.url(),
                    humantime::format_duration(limit),
                    config.nginx.listen
                )
            } else if mode == NginxMode::Switch && picked.is_some_and(|p| p != slot) {
                format!(
                    "after the switch was flipped to slot {slot}, nginx did not follow it for {} ({last}); look in nginx's error log",
                    humantime::format_duration(limit)
                )
            } else {
                format!(
                    "nginx did not route to slot {slot} ({}) within {} ({last}); does its upstream list that port? `zdd nginx` prints the config zdd expects",
                    expect.addr,
                    humantime::format_duration(limit)
                )
            };
            return Err(fail(reason));
        }
        std::thread::sleep(Duration::from_millis(match mode {
            NginxMode::Switch => 2,
            NginxMode::RoundRobin => 10,
        }));
    }
}

/// How the wait for the old slot's queues ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Nothing queued or unread for [`QUIET`] in a row.
    Empty(Duration),
    /// Nothing listens on the port (the old app already closed it), and
    /// nothing waits unread.
    NotListening,
    /// Still this much waiting when the limit passed: connections in the
    /// accept queue, bytes unread on accepted ones.
    Busy { queued: u32, unread: u64 },
    /// The kernel's listing could not be read.
    Unknown,
}

/// How long the old slot must stay quiet before its stop signal: nginx
/// connects (or sends on a kept-alive connection) the moment it has picked
/// a slot, so a request it sent there before the flip is in the kernel
/// within microseconds; 5 ms covers a worker preempted in between.
pub const QUIET: Duration = Duration::from_millis(5);

/// Wait, at most `limit`, until for [`QUIET`] (readings every millisecond)
/// nothing waited on `port`: no connection in its accept queue, and no
/// byte unread on a connection its app accepted. A request the app has
/// not read yet is one it may drop when it stops (uvicorn closes
/// connections it has seen nothing on, which resets one with a request in
/// it, and nginx answers a reset POST with 502).
pub fn drain_queue(port: u16, limit: Duration) -> Queue {
    let t = Instant::now();
    let mut empty_since: Option<Instant> = None;
    loop {
        let waiting =
            ports::accept_queue(port).and_then(|queued| Ok((queued, ports::unread_bytes(port)?)));
        match waiting {
            Err(e) => {
                log::debug!("cannot read the queues of port {port}: {e}");
                return Queue::Unknown;
            }
            Ok((None, 0)) => return Queue::NotListening,
            Ok((Some(0), 0)) => match empty_since {
                Some(since) if since.elapsed() >= QUIET => return Queue::Empty(t.elapsed()),
                Some(_) => {}
                None => empty_since = Some(Instant::now()),
            },
            Ok((queued, unread)) => {
                empty_since = None;
                if t.elapsed() >= limit {
                    return Queue::Busy {
                        queued: queued.unwrap_or(0),
                        unread,
                    };
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(mode: NginxMode, slot: Slot) -> Expect {
        Expect {
            mode,
            slot,
            addr: format!("127.0.0.1:{}", 3001 + slot.index()),
            name: "shop".into(),
            root: "/srv/shop".into(),
            custom_template: false,
            probe_host: "shop.example.com".into(),
            snippet: None,
        }
    }

    fn keyed(addr: &str, slot: &str, key: &str) -> Route {
        Route::Upstream {
            addr: addr.into(),
            via: Via::Key {
                key: key.into(),
                resolved: format!("/srv/shop/route/{slot}/www"),
            },
        }
    }

    const URL: &str = "http://127.0.0.1:80/.zdd/upstream";

    #[test]
    fn the_switch_is_proven_by_key_real_path_and_answer() {
        let want_b = expect(NginxMode::Switch, Slot::B);
        assert_eq!(
            judge(&want_b, &keyed("127.0.0.1:3002", "b", "slot-b"), URL),
            Verdict::Routed(Routed::AtConnect)
        );
        let closed = Route::Upstream {
            addr: "127.0.0.1:3002".into(),
            via: Via::Key {
                key: "slot-b".into(),
                resolved: "/srv/shop/route/b/closed/www".into(),
            },
        };
        assert_eq!(
            judge(&want_b, &closed, URL),
            Verdict::Routed(Routed::AtConnect),
            "maintenance does not change the slot"
        );
        assert!(matches!(
            judge(&want_b, &keyed("127.0.0.1:3001", "a", "slot-a"), URL),
            Verdict::Elsewhere { picked: Some(Slot::A), said } if said.contains("still resolves /srv/shop/route/a/www")
        ));
        assert!(matches!(
            judge(&want_b, &keyed("127.0.0.1:3001", "b", "slot-b"), URL),
            Verdict::Elsewhere { picked: Some(Slot::B), said } if said.contains("answered through 127.0.0.1:3001")
        ));
    }

    #[test]
    fn a_root_nginx_cannot_resolve_or_that_is_not_zdds_is_wrong_at_once() {
        let want = expect(NginxMode::Switch, Slot::A);
        let unresolved = Route::Upstream {
            addr: "127.0.0.1:3001".into(),
            via: Via::Key {
                key: String::new(),
                resolved: String::new(),
            },
        };
        let Verdict::Wrong(why) = judge(&want, &unresolved, URL) else {
            panic!()
        };
        assert!(
            why.contains("cannot resolve the switch /srv/shop/live/www"),
            "{why}"
        );
        let Verdict::Wrong(why) = judge(&want, &keyed("127.0.0.1:3001", "x", ""), URL) else {
            panic!()
        };
        assert!(why.contains("sets a root of its own"), "{why}");
        let Verdict::Wrong(why) = judge(&want, &keyed("127.0.0.1:3001", "a", "slot-b"), URL) else {
            panic!()
        };
        assert!(why.contains("keyed on \"slot-b\""), "{why}");
    }

    #[test]
    fn a_probe_answered_for_another_root_is_named() {
        let want = expect(NginxMode::Switch, Slot::A);
        let other = Route::Upstream {
            addr: "127.0.0.1:3001".into(),
            via: Via::Key {
                key: "slot-a".into(),
                resolved: "/srv/blog/route/a/www".into(),
            },
        };
        let Verdict::Wrong(why) = judge(&want, &other, URL) else {
            panic!()
        };
        assert!(why.contains("a server block of another root: it resolved /srv/blog/route/a/www, not a folder in /srv/shop/route"), "{why}");
    }

    #[test]
    fn an_earlier_zdds_switch_is_recognised() {
        let want = expect(NginxMode::Switch, Slot::B);
        let head = |up: &str, addr: &str| Route::Upstream {
            addr: addr.into(),
            via: Via::HeadTime(up.into()),
        };
        assert_eq!(
            judge(&want, &head("shop_b", "127.0.0.1:3002"), URL),
            Verdict::Routed(Routed::AtHead)
        );
        assert!(matches!(
            judge(&want, &head("shop_a", "127.0.0.1:3001"), URL),
            Verdict::Elsewhere {
                picked: Some(Slot::A),
                ..
            }
        ));
        assert!(matches!(
            judge(&want, &head("shop_b", "127.0.0.1:3001"), URL),
            Verdict::Elsewhere { picked: Some(Slot::B), said } if said.contains("backup")
        ));
    }

    #[test]
    fn answers_without_a_switch_or_probe() {
        let want = expect(NginxMode::Switch, Slot::B);
        let plain = Route::Upstream {
            addr: "127.0.0.1:3002".into(),
            via: Via::None,
        };
        assert!(
            matches!(judge(&want, &plain, URL), Verdict::Wrong(w) if w.contains("has no switch"))
        );
        assert!(matches!(
            judge(&want, &Route::NoProbe(404), URL),
            Verdict::Wrong(w) if w.contains("another server block (Host shop.example.com)")
        ));
        let mut custom_rr = expect(NginxMode::RoundRobin, Slot::B);
        custom_rr.custom_template = true;
        assert_eq!(
            judge(&custom_rr, &Route::NoProbe(404), URL),
            Verdict::NoProbe(404)
        );
        assert_eq!(
            judge(&want, &Route::Unreachable("connection refused".into()), URL),
            Verdict::Unanswered("connection refused".into())
        );
    }

    #[test]
    fn round_robin_needs_only_the_answer() {
        let want = expect(NginxMode::RoundRobin, Slot::A);
        let via = |addr: &str| Route::Upstream {
            addr: addr.into(),
            via: Via::None,
        };
        assert_eq!(
            judge(&want, &via("127.0.0.1:3001"), URL),
            Verdict::Routed(Routed::Failover)
        );
        assert!(matches!(
            judge(&want, &via("127.0.0.1:3002"), URL),
            Verdict::Elsewhere { picked: None, .. }
        ));
    }

    #[test]
    fn drain_waits_for_the_queue_to_empty() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(matches!(
            drain_queue(port, Duration::from_secs(1)),
            Queue::Empty(_)
        ));
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(
            drain_queue(port, Duration::from_millis(20)),
            Queue::Busy {
                queued: 1,
                unread: 0
            }
        );
        let accepter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let accepted = l.accept().unwrap();
            (l, accepted)
        });
        assert!(matches!(
            drain_queue(port, Duration::from_secs(5)),
            Queue::Empty(d) if d >= Duration::from_millis(20)
        ));
        drop(accepter.join().unwrap());
    }

    #[test]
    fn drain_of_a_closed_port_ends_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert_eq!(
            drain_queue(port, Duration::from_secs(5)),
            Queue::NotListening
        );
    }
}
