//! HTTP checks over plain HTTP to loopback: the app's health URL, and the
//! nginx probe location that reports which upstream served a request.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::Health;
use crate::process::Started;

/// One health check target with its expectations.
pub struct Checker {
    agent: ureq::Agent,
    url: String,
    expect_status: (u16, u16),
    expect_body: Option<String>,
}

impl Checker {
    pub fn new(health: &Health, port: u16) -> Checker {
        let agent = agent(health.request_timeout, 0);
        Checker {
            agent,
            url: format!("http://127.0.0.1:{port}{}", health.path),
            expect_status: health.expect_status,
            expect_body: health.expect_body.clone(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One probe: `Ok` when healthy, else what was seen, in a few words.
    pub fn check(&self) -> Result<(), String> {
        let mut resp = self.agent.get(&self.url).call().map_err(describe_error)?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let (lo, hi) = self.expect_status;
        if !(lo..=hi).contains(&status) {
            return Err(format!(
                "HTTP {status} (expected {lo}-{hi}), body {}",
                snippet(&body)
            ));
        }
        if let Some(want) = &self.expect_body {
            if !body.contains(want.as_str()) {
                return Err(format!(
                    "HTTP {status}, body {} lacks {want:?}",
                    snippet(&body)
                ));
            }
        }
        Ok(())
    }
}

/// Why a step of a deploy did not pass — its build, a hook, the start-up
/// check of the new process: the one failure type of those steps.
#[derive(Debug)]
pub enum Failure {
    /// The commit itself failed (build, hook, health, verify).
    Commit(String),
    /// Something around it failed, not the commit: the checkout, nginx, a
    /// port, the system, something other than the new process answering,
    /// a start command that cannot run at all; cron tries the commit again.
    Environment(String),
    Interrupted(Signal),
}

/// How the start-up check of a new process ended.
pub type Verified = Result<(), Failure>;

/// Probe a freshly started process until it is healthy, it exits (noticed
/// at once, with its exit status), `health.timeout` passes, or zdd is
/// signalled. The first probe is immediate; the next ones come after 2 ms,
/// doubling up to `health.interval`, so a fast app is seen ready within a
/// few milliseconds without hammering a slow one. `watch` sees how long it
/// has waited, after each check that did not pass.
pub fn wait_ready(
    health: &Health,
    checker: &Checker,
    started: &mut Started,
    watch: &mut dyn FnMut(&mut Started, Duration),
) -> Verified {
    let t = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(sig) = crate::signals::pending() {
            return Err(Failure::Interrupted(sig));
        }
        if let Some(status) = started.exited() {
            return exited_during_start_up(status);
        }
        let last = match checker.check() {
            Ok(()) => return Ok(()),
            Err(seen) => seen,
        };
        if let Some(status) = started.exited() {
            return exited_during_start_up(status);
        }
        watch(started, t.elapsed());
        if t.elapsed() >= health.timeout {
            return Err(Failure::Commit(format!(
                "not healthy after {} (last check of {}: {last})",
                humantime::format_duration(health.timeout),
                checker.url()
            )));
        }
        pause = pause.min(health.interval);
        std::thread::sleep(pause.min(health.timeout.saturating_sub(t.elapsed())));
        pause *= 2;
    }
}

/// An app that exited before it was healthy: the commit's failure, unless
/// `sh` said the command itself cannot run (126: found but not executable,
/// 127: not found), which fixing `start` or the system cures.
pub fn exited_during_start_up(status: std::process::ExitStatus) -> Verified {
    match status.code() {
        Some(code @ (126 | 127)) => Err(Failure::Environment(format!(
            "the start command cannot run (exit status {code}: {}; see the slot's log): fix `start`, or what it runs, and deploy again (cron tries the commit again)",
            if code == 126 { "found but not executable by the app's user" } else { "not found" }
        ))),
        _ => Err(Failure::Commit(format!(
            "the app exited during start-up ({status})"
        ))),
    }
}

/// What nginx's probe location said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// nginx answered through `addr` (the last server it tried); `via`
    /// is what its switch says, if it has one.
    Upstream { addr: String, via: Via },
    /// nginx answered, but without the probe header: the template has no
    /// probe location.
    NoProbe(u16),
    /// nobody answered.
    Unreachable(String),
}

/// The switch nginx's probe reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// zdd's switch: the hash key nginx computed when it connected
    /// (`X-Zdd-Key`) and the real path of the server's root it resolved
    /// (`X-Zdd-Root`; empty when it could not).
    Key { key: String, resolved: String },
    /// The switch of sites rendered by an earlier zdd, which picks an
    /// upstream per request head (`X-Zdd-Switch`).
    HeadTime(String),
    /// No switch header: round-robin, or a config without a switch.
    None,
}

/// Asks nginx's loopback probe location which slot served the request.
pub struct RouteProbe {
    agent: ureq::Agent,
    url: String,
    host: Option<String>,
}

/// The response header the default template's probe location sets.
pub const UPSTREAM_HEADER: &str = "x-zdd-upstream";
/// `switch` from a probe location of zdd's switch.
pub const MODE_HEADER: &str = "x-zdd-mode";
/// The hash key nginx computed (switch mode).
pub const KEY_HEADER: &str = "x-zdd-key";
/// The real path nginx resolved for the server's root (switch mode).
pub const ROOT_HEADER: &str = "x-zdd-root";
/// The upstream an earlier zdd's switch picked per request head.
pub const HEAD_TIME_HEADER: &str = "x-zdd-switch";

impl RouteProbe {
    /// `host`, when given, is sent as the Host header, so that nginx picks
    /// the app's server block even when another one is its default server.
    pub fn new(url: &str, host: Option<&str>, timeout: Duration) -> RouteProbe {
        RouteProbe {
            agent: agent(timeout, 2),
            url: url.to_string(),
            host: host.map(str::to_string),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn ask(&self) -> Route {
        let mut request = self.agent.get(&self.url);
        if let Some(host) = &self.host {
            request = request.header("Host", host);
        }
        match request.call() {
            Err(e) => Route::Unreachable(describe_error(e)),
            Ok(mut resp) => {
                let _ = resp
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_string();
                let header = |name| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                // nginx leaves out a header whose value is empty.
                let via = match (header(MODE_HEADER), header(HEAD_TIME_HEADER)) {
                    (Some(mode), _) if mode == "switch" => Via::Key {
                        key: header(KEY_HEADER).unwrap_or_default(),
                        resolved: header(ROOT_HEADER).unwrap_or_default(),
                    },
                    (None, Some(up)) if !up.is_empty() => Via::HeadTime(up),
                    _ => Via::None,
                };
                match header(UPSTREAM_HEADER) {
                    // "$upstream_addr" lists every server tried: "a, b".
                    Some(addrs) => Route::Upstream {
                        addr: addrs
                            .rsplit(',')
                            .next()
                            .unwrap_or(&addrs)
                            .trim()
                            .to_string(),
                        via,
                    },
                    None => Route::NoProbe(resp.status().as_u16()),
                }
            }
        }
    }
}

/// The header of zdd's maintenance page.
pub const MAINTENANCE_HEADER: &str = "x-zdd-maintenance";

/// Whether nginx answers a public request — `/` at the authority of
/// `probe_url`, with the probe's Host — with zdd's maintenance page (503
/// and its header); `Err` when nobody answers.
pub fn maintenance_shown(
    probe_url: &str,
    host: Option<&str>,
    timeout: Duration,
) -> Result<bool, String> {
    let rest = probe_url.strip_prefix("http://").unwrap_or(probe_url);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let url = format!("http://{authority}/");
    let mut request = agent(timeout, 0).get(&url);
    if let Some(host) = host {
        request = request.header("Host", host);
    }
    match request.call() {
        Err(e) => Err(format!(
            "nginx did not answer at {url}: {}",
            describe_error(e)
        )),
        Ok(resp) => {
            Ok(resp.status().as_u16() == 503 && resp.headers().contains_key(MAINTENANCE_HEADER))
        }
    }
}

fn agent(timeout: Duration, idle: usize) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(idle)
        .max_idle_connections_per_host(idle)
        .build()
        .new_agent()
}

fn describe_error(e: ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::TimedOut => "timed out".into(),
            _ => io.to_string(),
        },
        ureq::Error::Timeout(_) => "timed out".into(),
        other => other.to_string(),
    }
}

fn snippet(body: &str) -> String {
    let one_line: String = body.trim().chars().take(120).collect();
    format!("\"{}\"", crate::text::escape(&one_line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_start_that_cannot_run_is_not_the_commits_failure() {
        let exited =
            |code: i32| exited_during_start_up(std::process::ExitStatus::from_raw(code << 8));
        assert!(
            matches!(exited(126), Err(Failure::Environment(m)) if m.contains("found but not executable"))
        );
        assert!(
            matches!(exited(127), Err(Failure::Environment(m)) if m.contains("127: not found"))
        );
        assert!(
            matches!(exited(3), Err(Failure::Commit(m)) if m == "the app exited during start-up (exit status: 3)")
        );
    }
}
