//! The config's tables — `[health]`, `[stop]`, `[nginx]`, `[keeper]` —
//! checked and given their defaults. nginx parameters go into the rendered
//! config as they are, so they take only what nginx takes there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::parse::Source;
use super::raw::{RawHealth, RawKeeper, RawLogs, RawMaintenance, RawNginx, RawReleases, RawStop};
use super::{Health, Keeper, LogPolicy, Maintenance, Nginx, NginxMode, Releases, Stop};
use crate::error::Result;
use crate::signals::parse_signal;

impl Source<'_> {
    pub(super) fn health(&self, h: RawHealth) -> Result<Health> {
        let defaults = Health::default();
        let expect_status = match h.expect_status {
            None => defaults.expect_status,
            Some(s) => {
                let [lo, hi] = self.pair(&s, "health.expect_status [LOW, HIGH]")?;
                if lo > hi || !(100..=599).contains(&lo) || !(100..=599).contains(&hi) {
                    return Err(self.at(
                        Some(s.span()),
                        "expect_status must be [LOW, HIGH] with 100 <= LOW <= HIGH <= 599".into(),
                    ));
                }
                (lo, hi)
            }
        };
        let path = match h.path {
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(self.at(
                    Some(p.span()),
                    format!("health.path must start with '/', got {:?}", p.get_ref()),
                ))
            }
            Some(p) => p.into_inner(),
            None => defaults.path,
        };
        Ok(Health {
            path,
            timeout: self.bounded(h.timeout, "health.timeout", defaults.timeout)?,
            interval: self.bounded(h.interval, "health.interval", defaults.interval)?,
            request_timeout: self.bounded(
                h.request_timeout,
                "health.request_timeout",
                defaults.request_timeout,
            )?,
            expect_status,
            expect_body: h.expect_body,
            rehearse: h.rehearse.unwrap_or(defaults.rehearse),
        })
    }

    pub(super) fn stop(&self, s: RawStop) -> Result<Stop> {
        let defaults = Stop::default();
        Ok(Stop {
            signal: match s.signal {
                None => defaults.signal,
                Some(sig) => {
                    parse_signal(sig.get_ref()).map_err(|m| self.at(Some(sig.span()), m))?
                }
            },
            timeout: self.bounded(s.timeout, "stop.timeout", defaults.timeout)?,
            settle: self.bounded(s.settle, "stop.settle", defaults.settle)?,
        })
    }

    pub(super) fn keeper(&self, k: RawKeeper) -> Result<Keeper> {
        let defaults = Keeper::default();
        Ok(Keeper {
            rollback_after: k.rollback_after.unwrap_or(defaults.rollback_after),
            rollback_within: self.bounded(
                k.rollback_within,
                "keeper.rollback_within",
                defaults.rollback_within,
            )?,
        })
    }

    pub(super) fn releases(&self, r: RawReleases) -> Result<Releases> {
        Ok(Releases {
            keep: match r.keep {
                None => Releases::default().keep,
                Some(k) if !(2..=100).contains(k.get_ref()) => {
                    return Err(self.at(
                        Some(k.span()),
                        format!("releases.keep = {} is out of bounds: keep 2 to 100 good releases (the live one counts, and one to roll back to)", k.get_ref()),
                    ))
                }
                Some(k) => k.into_inner(),
            },
        })
    }

    pub(super) fn logs(&self, l: RawLogs) -> Result<LogPolicy> {
        let defaults = LogPolicy::DEFAULT;
        const MIN: u64 = 1 << 20;
        const MAX: u64 = 64 << 30;
        Ok(LogPolicy {
            max_size: match l.max_size {
                None => defaults.max_size,
                Some(m) if !(MIN..=MAX).contains(&m.get_ref().0) => {
                    return Err(self.at(
                        Some(m.span()),
                        format!("logs.max_size = {} bytes is out of bounds: take 1MiB to 64GiB per file", m.get_ref().0),
                    ))
                }
                Some(m) => m.into_inner().0,
            },
            keep: match l.keep {
                None => defaults.keep,
                Some(k) if *k.get_ref() == 0 => {
                    return Err(self.at(
                        Some(k.span()),
                        "logs.keep = 0 would throw the whole log away each time it reaches logs.max_size; keep 1 to 100 rotated files".into(),
                    ))
                }
                Some(k) if *k.get_ref() > 100 => {
                    return Err(self.at(
                        Some(k.span()),
                        format!("logs.keep = {} is out of bounds: keep 1 to 100 rotated files (raise logs.max_size for more)", k.get_ref()),
                    ))
                }
                Some(k) => k.into_inner(),
            },
            timestamps: l.timestamps.unwrap_or(defaults.timestamps),
        })
    }

    pub(super) fn maintenance(
        &self,
        m: RawMaintenance,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Maintenance> {
        let defaults = Maintenance::default();
        Ok(Maintenance {
            page: m.page.as_deref().map(resolve),
            retry_after: self.bounded(
                m.retry_after,
                "maintenance.retry_after",
                defaults.retry_after,
            )?,
        })
    }

    /// An nginx parameter: only what nginx takes in that position, nothing
    /// that ends or opens a block.
    fn nginx_param(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        extra_bad: &str,
    ) -> Result<Option<String>> {
        let Some(v) = v else { return Ok(None) };
        let text = v.get_ref();
        let bad = text
            .chars()
            .find(|&c| c.is_control() || ";{}\"'#`".contains(c) || extra_bad.contains(c));
        match bad {
            _ if text.trim().is_empty() => {
                Err(self.at(Some(v.span()), format!("{key} must not be empty")))
            }
            Some(c) => Err(self.at(
                Some(v.span()),
                format!("{key} = {text:?} holds {c:?}, which nginx does not take there"),
            )),
            None => Ok(Some(text.trim().to_string())),
        }
    }

    pub(super) fn nginx(&self, n: RawNginx, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<Nginx> {
        let listen = self
            .nginx_param(&n.listen, "nginx.listen", "$\\")?
            .unwrap_or_else(|| "80".into());
        let plain_http = !listen.contains("unix:")
            && !listen.split_whitespace().any(|w| w == "ssl" || w == "quic");
        let probe_url = match n.probe_url {
            Some(u) => {
                check_http_url(u.get_ref()).map_err(|m| self.at(Some(u.span()), m))?;
                u.into_inner()
            }
            None if plain_http => format!("http://{}/.zdd/upstream", probe_authority(&listen)),
            None => {
                return Err(self.at(
                    None,
                    format!("nginx.listen = {listen:?} is not plain HTTP on a port: set nginx.probe_url to a plain-HTTP loopback address of the zdd probe location"),
                ))
            }
        };
        let server_name = self
            .nginx_param(&n.server_name, "nginx.server_name", "")?
            .unwrap_or_else(|| "_".into());
        if let (Some(v), Some(at)) = (&n.server_name, dangling_backslash(&server_name)) {
            return Err(self.at(
                Some(v.span()),
                format!(
                    "nginx.server_name = {server_name:?} has a \\ at {} that escapes what follows it in nginx's config (the `;` that ends the directive); a \\ must escape a visible character, as in a regex's `\\.`",
                    at + 1
                ),
            ));
        }
        let probe_host = server_name
            .split_whitespace()
            .next()
            .filter(|h| *h != "_" && !h.starts_with('~') && !h.contains('*'))
            .map(str::to_string);
        let mode = match &n.mode {
            None => None,
            Some(m) => Some(match m.get_ref().as_str() {
                "switch" => NginxMode::Switch,
                "round-robin" => NginxMode::RoundRobin,
                other => {
                    return Err(self.at(
                        Some(m.span()),
                        format!(
                            "unknown nginx.mode {other:?}; expected \"switch\" or \"round-robin\""
                        ),
                    ))
                }
            }),
        };
        Ok(Nginx {
            listen,
            server_name,
            probe_host,
            mode,
            output: n.output.as_deref().map(resolve),
            upstreams_output: n.upstreams_output.as_deref().map(resolve),
            snippet_output: n.snippet_output.as_deref().map(resolve),
            template: n.template.as_deref().map(resolve),
            pid_file: n
                .pid_file
                .as_deref()
                .map(resolve)
                .unwrap_or_else(|| PathBuf::from("/run/nginx.pid")),
            probe_url,
            fail_timeout: self.bounded(
                n.fail_timeout,
                "nginx.fail_timeout",
                Duration::from_secs(1),
            )?,
            route_timeout: self.bounded(
                n.route_timeout,
                "nginx.route_timeout",
                Duration::from_secs(5),
            )?,
            retry_non_idempotent: n.retry_non_idempotent.unwrap_or(false),
            keepalive: match n.keepalive {
                None => 16,
                Some(k) if *k.get_ref() > 4096 => {
                    return Err(self.at(
                        Some(k.span()),
                        format!("nginx.keepalive = {} is more idle connections than a worker should keep per upstream; take 0 (off) to 4096", k.get_ref()),
                    ))
                }
                Some(k) => k.into_inner(),
            },
            test_command: n.test_command.unwrap_or_else(|| "nginx -t".into()),
        })
    }
}

/// Where a `\\` in `text` escapes nothing visible (it ends the text or
/// stands before a space): nginx would then read the next character — the
/// `;` zdd puts after the value — as part of the name. `\\\\` is one escaped
/// backslash; `\\.` in a regex name is fine.
fn dangling_backslash(text: &str) -> Option<usize> {
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some((_, next)) if !next.is_whitespace() => {}
                _ => return Some(i),
            }
        }
    }
    None
}

/// `http://HOST[:PORT]/PATH`: what zdd's plain-HTTP probe can ask.
fn check_http_url(url: &str) -> std::result::Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("nginx.probe_url = {url:?} must be a plain http:// URL, like \"http://127.0.0.1:80/.zdd/upstream\"")
    })?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let valid = url
        .parse::<ureq::http::Uri>()
        .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
    if authority.is_empty() || !valid {
        return Err(format!(
            "nginx.probe_url = {url:?} is not a URL zdd can ask: expected http://HOST:PORT/PATH"
        ));
    }
    Ok(())
}

/// `host:port` to reach nginx's `listen` from this machine.
pub(super) fn probe_authority(listen: &str) -> String {
    let addr = listen.split_whitespace().next().unwrap_or("80");
    if let Ok(port) = addr.parse::<u16>() {
        return format!("127.0.0.1:{port}");
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            let host = match host {
                "*" | "0.0.0.0" | "" => "127.0.0.1",
                "[::]" => "[::1]",
                h => h,
            };
            format!("{host}:{port}")
        }
        None => format!("{addr}:80"),
    }
}
