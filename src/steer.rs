//! Steering nginx in a swap, and proving it: confirm through nginx's
//! loopback probe that new requests reach the new slot (after a flip of
//! the switch, or once round-robin failover finds it), then wait until
//! nothing is queued for the old slot any more.

use std::time::{Duration, Instant};

use crate::config::{Config, NginxMode};
use crate::health::{Route, RouteProbe};
use crate::slot::Slot;
use crate::{ports, switch};

/// What the confirmation learned about nginx.
pub enum Routed {
    /// nginx's probe answered through the new slot.
    Seen,
    /// No probe location (a custom round-robin template): waited out a
    /// failure mark instead, without proof.
    Waited,
}

/// Why nginx was not seen routing to the new slot.
#[derive(Debug)]
pub struct NotRouted {
    /// One sentence with the likely cause and the fix.
    pub reason: String,
    /// The upstream the switch last picked, as nginx said (switch mode).
    pub picked: Option<String>,
}

/// Ask nginx's probe location until it answers through `slot`'s port:
/// in switch mode it must also name the slot's upstream.
///
/// With `must_route` false (nothing else serves), an nginx that does not
/// answer at all is reported at once instead of waited for.
pub fn confirm(
    config: &Config,
    mode: NginxMode,
    slot: Slot,
    must_route: bool,
) -> Result<Routed, NotRouted> {
    let mut seen = Seen::default();
    confirm_route(config, mode, slot, must_route, &mut seen).map_err(|reason| NotRouted {
        reason,
        picked: seen.picked,
    })
}

/// What the probes saw on the way.
#[derive(Default)]
struct Seen {
    answered: bool,
    picked: Option<String>,
}

fn confirm_route(
    config: &Config,
    mode: NginxMode,
    slot: Slot,
    must_route: bool,
    seen: &mut Seen,
) -> Result<Routed, String> {
    let port = config.port(slot);
    let probe = RouteProbe::new(
        &config.nginx.probe_url,
        config.nginx.probe_host.as_deref(),
        config.health.request_timeout,
    );
    let want = format!("127.0.0.1:{port}");
    let want_upstream = switch::upstream(&config.name, slot);
    let t = Instant::now();
    let mut last;
    loop {
        let route = probe.ask();
        seen.answered |= !matches!(route, Route::Unreachable(_));
        if let Route::Upstream {
            picked: Some(up), ..
        } = &route
        {
            seen.picked = Some(up.clone());
        }
        match route {
            Route::Upstream { addr, picked } => match (mode, picked) {
                (NginxMode::RoundRobin, _) if addr == want => return Ok(Routed::Seen),
                (NginxMode::RoundRobin, _) => last = format!("it answered through {addr}"),
                (NginxMode::Switch, Some(up)) if up == want_upstream && addr == want => {
                    return Ok(Routed::Seen)
                }
                (NginxMode::Switch, Some(up)) if up == want_upstream => {
                    // The switch took, but nginx holds the new slot as failed
                    // (a mark from when it was down) and uses its backup.
                    last = format!("it picks {up} but answered through its backup {addr}");
                }
                (NginxMode::Switch, Some(up)) => {
                    last = format!("it still picks upstream {up}");
                    if t.elapsed() >= config.nginx.route_timeout {
                        return Err(unseen_switch(config, slot, &up, probe.url()));
                    }
                }
                (NginxMode::Switch, None) => {
                    return Err(format!(
                        "nginx answered {} through {addr} but without the X-Zdd-Switch header: the config nginx runs has no switch (written before zdd steered with one, or a custom template without it); run `zdd nginx --write --reload`, or set nginx.mode = \"round-robin\"",
                        probe.url()
                    ))
                }
            },
            // The built-in templates have the probe location, and so does any
            // template in switch mode: an answer without it came from
            // another server block.
            Route::NoProbe(status)
                if config.nginx.template.is_none() || mode == NginxMode::Switch =>
            {
                return Err(format!(
                    "nginx answered {} with HTTP {status} but without the zdd probe header: the request reached another server block (Host {}); remove nginx's default site, set nginx.server_name, or set nginx.probe_url",
                    probe.url(),
                    config.nginx.probe_host.as_deref().unwrap_or("127.0.0.1")
                ))
            }
            Route::NoProbe(status) => {
                let wait = config.nginx.fail_timeout + Duration::from_secs(1);
                log::warn!(
                    "nginx has no zdd probe location at {} (HTTP {status}); waiting {} for it to try slot {slot}, without proof",
                    probe.url(),
                    humantime::format_duration(wait)
                );
                std::thread::sleep(wait.saturating_sub(t.elapsed()));
                return Ok(Routed::Waited);
            }
            Route::Unreachable(e) if !must_route => {
                return Err(format!(
                    "nginx did not answer at {} ({e}); once it runs the config from `zdd nginx`, it will send requests to slot {slot}",
                    probe.url()
                ))
            }
            Route::Unreachable(e) => last = format!("{} did not answer: {e}", probe.url()),
        }
        if t.elapsed() >= config.nginx.route_timeout && !seen.answered {
            return Err(format!(
                "nginx did not answer at {} within {} ({last}): nothing answers on nginx.listen = {:?}; is nginx running, with the config from `zdd nginx`?",
                probe.url(),
                humantime::format_duration(config.nginx.route_timeout),
                config.nginx.listen
            ));
        }
        if t.elapsed() >= config.nginx.route_timeout {
            return Err(format!(
                "nginx did not route to slot {slot} ({want}) within {} ({last}); does its upstream list that port? `zdd nginx` prints the config zdd expects",
                humantime::format_duration(config.nginx.route_timeout)
            ));
        }
        std::thread::sleep(Duration::from_millis(if mode == NginxMode::Switch {
            2
        } else {
            10
        }));
    }
}

/// Why nginx may not see a flip of the switch, with the fix.
fn unseen_switch(config: &Config, slot: Slot, picked: &str, probe_url: &str) -> String {
    let file = switch::file(&config.root);
    let cause = match switch::hidden_by(&config.root) {
        Some((folder, mode)) => format!(
            "nginx's worker user cannot search {} (mode {mode:04o}), so it cannot see {}; run `chmod o+x {}`",
            folder.display(),
            file.display(),
            folder.display()
        ),
        None => format!(
            "nginx's worker cannot see {} (look for stat() errors in nginx's error log), or open_file_cache caches the test in the server block that answers {probe_url} (zdd's snippet sets `open_file_cache off`)",
            file.display()
        ),
    };
    format!(
        "after the switch was flipped to slot {slot}, nginx still picked upstream {picked} for {}: {cause}",
        humantime::format_duration(config.nginx.route_timeout)
    )
}

/// How the wait for the old slot's accept queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Nothing queued, seen twice in a row.
    Empty(Duration),
    /// Nothing listens on the port (the old app already closed it).
    NotListening,
    /// Still this many queued when the limit passed.
    Busy(u32),
    /// The kernel's listing could not be read.
    Unknown,
}

/// Wait, at most `limit`, until no connection waits in the accept queue of
/// `port`: two readings 2 ms apart, both empty.
pub fn drain_queue(port: u16, limit: Duration) -> Queue {
    let t = Instant::now();
    let mut empty_since: Option<Instant> = None;
    loop {
        match ports::accept_queue(port) {
            Err(e) => {
                log::debug!("cannot read the accept queue of port {port}: {e}");
                return Queue::Unknown;
            }
            Ok(None) => return Queue::NotListening,
            Ok(Some(0)) => match empty_since {
                Some(since) if since.elapsed() >= Duration::from_millis(2) => {
                    return Queue::Empty(t.elapsed())
                }
                Some(_) => {}
                None => empty_since = Some(Instant::now()),
            },
            Ok(Some(n)) => {
                empty_since = None;
                if t.elapsed() >= limit {
                    return Queue::Busy(n);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_waits_for_the_queue_to_empty() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(matches!(
            drain_queue(port, Duration::from_secs(1)),
            Queue::Empty(_)
        ));
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(drain_queue(port, Duration::from_millis(20)), Queue::Busy(1));
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
