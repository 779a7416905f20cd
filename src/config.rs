//! `zdd.toml`: parsing, validation with file:line:col errors, and the
//! resolved [`Config`] that the rest of zdd takes as plain data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::signals::parse_signal;
use crate::slot::Slot;
use crate::user::resolve_user;
pub use crate::user::RunAs;

/// The file name looked up in the current folder when no `--config` is given.
pub const DEFAULT_FILE: &str = "zdd.toml";

/// A fully resolved configuration: defaults applied, paths absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub name: String,
    pub repo: Option<String>,
    pub branch: String,
    pub root: PathBuf,
    pub build: Option<String>,
    pub start: String,
    pub ports: [u16; 2],
    pub user: Option<RunAs>,
    pub health: Health,
    pub stop: Stop,
    pub env: BTreeMap<String, String>,
    pub hooks: Hooks,
    pub nginx: Nginx,
    pub keeper: Keeper,
}

/// What the keeper does about a release that crash-loops after its swap.
#[derive(Debug, Clone)]
pub struct Keeper {
    /// Roll back after this many exits on its own (0: never).
    pub rollback_after: u32,
    /// ...within this long of the swap.
    pub rollback_within: Duration,
}

impl Default for Keeper {
    fn default() -> Self {
        Keeper {
            rollback_after: 3,
            rollback_within: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Health {
    pub path: String,
    pub timeout: Duration,
    pub interval: Duration,
    pub request_timeout: Duration,
    pub expect_status: (u16, u16),
    pub expect_body: Option<String>,
    /// Start a new commit once on a private port and check it there before
    /// it listens on its slot port (where nginx sends it traffic at once).
    pub rehearse: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: "/".into(),
            timeout: Duration::from_secs(30),
            interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(2),
            expect_status: (200, 299),
            expect_body: None,
            rehearse: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Stop {
    pub signal: Signal,
    pub timeout: Duration,
    /// Switch mode: how long the old slot keeps serving after the flip
    /// before it gets the stop signal, for requests nginx routed to it
    /// just before the flip and is still reading from their clients.
    pub settle: Duration,
}

impl Stop {
    /// How an app's group is stopped (see `process::StopWith`).
    pub fn with(&self) -> crate::process::StopWith {
        crate::process::StopWith {
            signal: self.signal,
            timeout: self.timeout,
        }
    }
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            signal: Signal::SIGTERM,
            timeout: Duration::from_secs(30),
            settle: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub after_checkout: Option<String>,
    pub before_start: Option<String>,
    pub verify: Option<String>,
    pub after_swap: Option<String>,
}

/// How nginx is steered to the new slot during a swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NginxMode {
    /// Two upstreams, each slot the primary of one and the backup of the
    /// other; a file that nginx tests on every request picks the upstream.
    Switch,
    /// One upstream listing both slots; zdd waits until nginx's passive
    /// failover routes to the new slot.
    RoundRobin,
}

impl NginxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NginxMode::Switch => "switch",
            NginxMode::RoundRobin => "round-robin",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Nginx {
    pub listen: String,
    pub server_name: String,
    /// `nginx.mode` as written; `None` lets zdd decide from the template
    /// (see `nginx::mode`).
    pub mode: Option<NginxMode>,
    /// The full site (upstreams and a server block).
    pub output: Option<PathBuf>,
    /// The two upstreams alone, for an `include` at http level.
    pub upstreams_output: Option<PathBuf>,
    /// The lines for an operator's own server block (switch and probe).
    pub snippet_output: Option<PathBuf>,
    pub template: Option<PathBuf>,
    pub pid_file: PathBuf,
    /// The URL of the template's loopback probe location, which reports
    /// `$upstream_addr`; derived from `listen` unless set.
    pub probe_url: String,
    /// The Host header of the probe request: the first `server_name`, unless
    /// that is `_`, a wildcard or a regex.
    pub probe_host: Option<String>,
    /// How long a slot stays marked failed in nginx after a refused connect.
    pub fail_timeout: Duration,
    /// Give up when nginx has not routed to the new slot after this long.
    pub route_timeout: Duration,
    /// Opt in to `proxy_next_upstream ... non_idempotent` (may run a POST twice).
    pub retry_non_idempotent: bool,
    /// The command that checks nginx's configuration before a reload.
    pub test_command: String,
}

impl Config {
    /// The port of slot `a` (0) or `b` (1).
    pub fn port(&self, slot: Slot) -> u16 {
        self.ports[slot.index()]
    }

    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.toml")
    }

    /// Find the config file: `--config`/`$ZDD_CONFIG` if given, else
    /// `./zdd.toml`. `None` when nothing was given and there is no file.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from(DEFAULT_FILE);
                p.exists().then_some(p)
            }
        }
    }

    /// Read and resolve a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(path, &text)?;
        // Absolute: keepers run `zdd rollback --config PATH` from a slot.
        if let Ok(absolute) = std::path::absolute(path) {
            config.path = absolute;
        }
        // `root` may be a symlink: resolved once, here; below it zdd follows
        // none (see `root`).
        if let Ok(real) = std::fs::canonicalize(&config.root) {
            config.root = real;
        }
        Ok(config)
    }

    /// Parse config text; `path` names the file in errors and anchors
    /// relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = line_col(text, span.map(|s| s.start).unwrap_or(0));
            Error::Config {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_string()))?;
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };

        let name = raw.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(at(
                Some(raw.name.span()),
                format!("invalid name {name:?}: expected letters, digits, '_' or '-'"),
            ));
        }
        let pair = |list: &Spanned<Vec<u16>>, what: &str| match list.get_ref()[..] {
            [a, b] => Ok([a, b]),
            ref other => Err(at(
                Some(list.span()),
                format!("{what} must list exactly two numbers, got {}", other.len()),
            )),
        };
        let ports = match &raw.ports {
            Some(p) => {
                let [a, b] = pair(p, "ports (slot a, slot b)")?;
                if a == b {
                    return Err(at(
                        Some(p.span()),
                        format!("the two slot ports must differ, both are {a}"),
                    ));
                }
                if a == 0 || b == 0 {
                    return Err(at(
                        Some(p.span()),
                        "port 0 is not a usable slot port".into(),
                    ));
                }
                [a, b]
            }
            None => [3001, 3002],
        };
        if raw.start.get_ref().trim().is_empty() {
            return Err(at(
                Some(raw.start.span()),
                "`start` must not be empty".into(),
            ));
        }
        let user = match &raw.user {
            None => None,
            Some(u) => Some(resolve_user(u.get_ref()).map_err(|m| at(Some(u.span()), m))?),
        };

        let h = raw.health.unwrap_or_default();
        let defaults = Health::default();
        let expect_status = match h.expect_status {
            None => defaults.expect_status,
            Some(s) => {
                let [lo, hi] = pair(&s, "health.expect_status [LOW, HIGH]")?;
                if lo > hi || !(100..=599).contains(&lo) || !(100..=599).contains(&hi) {
                    return Err(at(
                        Some(s.span()),
                        "expect_status must be [LOW, HIGH] with 100 <= LOW <= HIGH <= 599".into(),
                    ));
                }
                (lo, hi)
            }
        };
        let health_path = match h.path {
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(at(
                    Some(p.span()),
                    format!("health.path must start with '/', got {:?}", p.get_ref()),
                ))
            }
            Some(p) => p.into_inner(),
            None => defaults.path,
        };
        // Each duration within sane bounds for its key (the README's table).
        let bounded = |d: Option<Spanned<HumanDuration>>, key: &str, default: Duration| {
            let Some(d) = d else { return Ok(default) };
            let (min, max) = duration_bounds(key);
            let value = d.get_ref().0;
            if value < min || value > max {
                return Err(at(
                    Some(d.span()),
                    format!(
                        "{key} must be between {} and {}, got {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max),
                        humantime::format_duration(value)
                    ),
                ));
            }
            Ok(value)
        };
        let health = Health {
            path: health_path,
            timeout: bounded(h.timeout, "health.timeout", defaults.timeout)?,
            interval: bounded(h.interval, "health.interval", defaults.interval)?,
            request_timeout: bounded(
                h.request_timeout,
                "health.request_timeout",
                defaults.request_timeout,
            )?,
            expect_status,
            expect_body: h.expect_body,
            rehearse: h.rehearse.unwrap_or(defaults.rehearse),
        };

        let s = raw.stop.unwrap_or_default();
        let stop = Stop {
            signal: match s.signal {
                None => Signal::SIGTERM,
                Some(sig) => parse_signal(sig.get_ref()).map_err(|m| at(Some(sig.span()), m))?,
            },
            timeout: bounded(s.timeout, "stop.timeout", Stop::default().timeout)?,
            settle: bounded(s.settle, "stop.settle", Stop::default().settle)?,
        };

        let n = raw.nginx.unwrap_or_default();
        // nginx parameters go into the rendered config as they are: only what
        // nginx takes in that position, nothing that ends or opens a block.
        let nginx_param = |v: &Option<Spanned<String>>, key: &str, extra_bad: &str| {
            let Some(v) = v else { return Ok(None) };
            let text = v.get_ref();
            let bad = text
                .chars()
                .find(|&c| c.is_control() || ";{}\"'#`".contains(c) || extra_bad.contains(c));
            match bad {
                _ if text.trim().is_empty() => {
                    Err(at(Some(v.span()), format!("{key} must not be empty")))
                }
                Some(c) => Err(at(
                    Some(v.span()),
                    format!("{key} = {text:?} holds {c:?}, which nginx does not take there"),
                )),
                None => Ok(Some(text.trim().to_string())),
            }
        };
        let listen = nginx_param(&n.listen, "nginx.listen", "$\\")?.unwrap_or_else(|| "80".into());
        let plain_http = !listen.contains("unix:")
            && !listen.split_whitespace().any(|w| w == "ssl" || w == "quic");
        let probe_url = match n.probe_url {
            Some(u) => {
                check_http_url(u.get_ref()).map_err(|m| at(Some(u.span()), m))?;
                u.into_inner()
            }
            None if plain_http => format!("http://{}/.zdd/upstream", probe_authority(&listen)),
            None => {
                return Err(at(
                    None,
                    format!("nginx.listen = {listen:?} is not plain HTTP on a port: set nginx.probe_url to a plain-HTTP loopback address of the zdd probe location"),
                ))
            }
        };
        let server_name =
            nginx_param(&n.server_name, "nginx.server_name", "")?.unwrap_or_else(|| "_".into());
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
                    return Err(at(
                        Some(m.span()),
                        format!(
                            "unknown nginx.mode {other:?}; expected \"switch\" or \"round-robin\""
                        ),
                    ))
                }
            }),
        };
        let nginx = Nginx {
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
            fail_timeout: bounded(n.fail_timeout, "nginx.fail_timeout", Duration::from_secs(1))?,
            route_timeout: bounded(
                n.route_timeout,
                "nginx.route_timeout",
                Duration::from_secs(5),
            )?,
            retry_non_idempotent: n.retry_non_idempotent.unwrap_or(false),
            test_command: n.test_command.unwrap_or_else(|| "nginx -t".into()),
        };

        let mut env = BTreeMap::new();
        for (key, value) in raw.env.unwrap_or_default() {
            if ["PORT", "ZDD_SLOT", "ZDD_COMMIT", "ZDD_ROOT"].contains(&key.get_ref().as_str()) {
                return Err(at(
                    Some(key.span()),
                    format!(
                        "{} is set by zdd itself and cannot be set in [env]",
                        key.get_ref()
                    ),
                ));
            }
            env.insert(key.into_inner(), value);
        }
        let k = raw.keeper.unwrap_or_default();
        let keeper = Keeper {
            rollback_after: k.rollback_after.unwrap_or(Keeper::default().rollback_after),
            rollback_within: bounded(
                k.rollback_within,
                "keeper.rollback_within",
                Keeper::default().rollback_within,
            )?,
        };
        let hooks = raw.hooks.unwrap_or_default();
        Ok(Config {
            path: path.to_path_buf(),
            name: name.clone(),
            repo: raw.repo.map(|r| resolve_repo(&r, &dir)),
            branch: raw.branch.unwrap_or_else(|| "main".into()),
            root: raw.root.as_deref().map(resolve).unwrap_or(dir.clone()),
            build: raw.build.filter(|b| !b.trim().is_empty()),
            start: raw.start.into_inner(),
            ports,
            user,
            health,
            stop,
            env,
            hooks: Hooks {
                after_checkout: hooks.after_checkout,
                before_start: hooks.before_start,
                verify: hooks.verify,
                after_swap: hooks.after_swap,
            },
            nginx,
            keeper,
        })
    }
}

/// Where and what: "line L, column C: MESSAGE" for a TOML error in `text`
/// (never an empty reason).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = match e.message().trim() {
        "" => e.to_string(),
        m => m.to_string(),
    };
    let message = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let (line, column) = line_col(text, span.start);
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A local repo path is made absolute (relative to the config's folder);
/// URLs and `host:path` forms are left as they are.
fn resolve_repo(repo: &str, dir: &Path) -> String {
    let looks_remote = repo.contains("://")
        || repo
            .split_once(':')
            .is_some_and(|(host, _)| !host.contains('/'));
    if looks_remote || Path::new(repo).is_absolute() {
        repo.to_string()
    } else {
        normalize(&dir.join(repo)).to_string_lossy().into_owned()
    }
}

/// Remove `.` and `..` components without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
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
fn probe_authority(listen: &str) -> String {
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

/// A duration written like `100ms`, `30s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Bounds, zero included, are checked per key (`duration_bounds`).
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// The smallest and largest value each duration key takes.
pub fn duration_bounds(key: &str) -> (Duration, Duration) {
    let (ms, s) = (Duration::from_millis, Duration::from_secs);
    match key {
        "health.timeout" => (ms(100), s(3600)),
        "health.interval" => (ms(1), s(60)),
        "health.request_timeout" => (ms(10), s(300)),
        "stop.timeout" => (ms(100), s(3600)),
        "stop.settle" => (ms(0), s(600)),
        "keeper.rollback_within" => (s(1), s(24 * 3600)),
        // nginx counts whole seconds.
        "nginx.fail_timeout" => (s(1), s(3600)),
        "nginx.route_timeout" => (ms(100), s(600)),
        "--wait" => (ms(1), s(24 * 3600)),
        _ => (ms(1), s(24 * 3600)),
    }
}

/// Parse `100ms`, `30s`, `5m`, `1h` (and combinations like `1m30s`).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); expected a number with ms, s, m or h, like \"100ms\" or \"30s\""))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Spanned<String>,
    repo: Option<String>,
    branch: Option<String>,
    root: Option<PathBuf>,
    build: Option<String>,
    start: Spanned<String>,
    ports: Option<Spanned<Vec<u16>>>,
    user: Option<Spanned<String>>,
    health: Option<RawHealth>,
    stop: Option<RawStop>,
    env: Option<BTreeMap<Spanned<String>, String>>,
    hooks: Option<RawHooks>,
    nginx: Option<RawNginx>,
    keeper: Option<RawKeeper>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeeper {
    rollback_after: Option<u32>,
    rollback_within: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    timeout: Option<Spanned<HumanDuration>>,
    interval: Option<Spanned<HumanDuration>>,
    request_timeout: Option<Spanned<HumanDuration>>,
    expect_status: Option<Spanned<Vec<u16>>>,
    expect_body: Option<String>,
    rehearse: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStop {
    signal: Option<Spanned<String>>,
    timeout: Option<Spanned<HumanDuration>>,
    settle: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    after_checkout: Option<String>,
    before_start: Option<String>,
    verify: Option<String>,
    after_swap: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNginx {
    listen: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    output: Option<PathBuf>,
    upstreams_output: Option<PathBuf>,
    snippet_output: Option<PathBuf>,
    template: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    probe_url: Option<Spanned<String>>,
    fail_timeout: Option<Spanned<HumanDuration>>,
    route_timeout: Option<Spanned<HumanDuration>>,
    retry_non_idempotent: Option<bool>,
    test_command: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/etc/zdd/zdd.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("name = \"shop\"\nstart = \"./run\"\n").unwrap();
        assert_eq!(c.ports, [3001, 3002]);
        assert_eq!(c.branch, "main");
        assert_eq!(c.root, PathBuf::from("/etc/zdd"));
        assert_eq!(c.health.interval, Duration::from_millis(100));
        assert_eq!(c.stop.signal, Signal::SIGTERM);
        assert_eq!(c.nginx.probe_url, "http://127.0.0.1:80/.zdd/upstream");
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let c = parse("name = \"s\"\nstart = \"x\"\nroot = \"state\"\nrepo = \"../git/s.git\"\n")
            .unwrap();
        assert_eq!(c.root, PathBuf::from("/etc/zdd/state"));
        assert_eq!(c.repo.as_deref(), Some("/etc/git/s.git"));
        let c = parse("name = \"s\"\nstart = \"x\"\nrepo = \"git@host:s.git\"\n").unwrap();
        assert_eq!(c.repo.as_deref(), Some("git@host:s.git"));
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let e = err("name = \"s\"\nstart = \"x\"\n\n[health]\n  tiemout = \"3s\"\n");
        assert!(
            e.starts_with("/etc/zdd/zdd.toml:5:3: unknown field `tiemout`"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_names_the_value() {
        let e = err("name = \"s\"\nstart = \"x\"\n[stop]\ntimeout = \"soon\"\n");
        assert!(
            e.starts_with("/etc/zdd/zdd.toml:4:11: invalid duration \"soon\""),
            "{e}"
        );
    }

    #[test]
    fn equal_ports_are_rejected_with_position() {
        let e = err("name = \"s\"\nstart = \"x\"\nports = [3001, 3001]\n");
        assert_eq!(
            e,
            "/etc/zdd/zdd.toml:3:9: the two slot ports must differ, both are 3001"
        );
    }

    #[test]
    fn missing_start_is_an_error() {
        let e = err("name = \"s\"\n");
        assert!(e.contains("missing field `start`"), "{e}");
        assert!(e.starts_with("/etc/zdd/zdd.toml:1:1"), "{e}");
    }

    #[test]
    fn bad_name_and_signal() {
        assert!(err("name = \"a b\"\nstart = \"x\"\n")
            .starts_with("/etc/zdd/zdd.toml:1:8: invalid name"));
        let e = err("name = \"s\"\nstart = \"x\"\n[stop]\nsignal = \"SIGNOPE\"\n");
        assert!(e.contains(":4:10: unknown signal"), "{e}");
        let c = parse("name = \"s\"\nstart = \"x\"\n[stop]\nsignal = \"quit\"\n").unwrap();
        assert_eq!(c.stop.signal, Signal::SIGQUIT);
    }

    #[test]
    fn health_path_and_fail_timeout_errors_point_at_the_value() {
        let e = err("name = \"s\"\nstart = \"x\"\n[health]\npath = \"healthz\"\n");
        assert!(
            e.starts_with("/etc/zdd/zdd.toml:4:8: health.path must start with '/'"),
            "{e}"
        );
        let e = err("name = \"s\"\nstart = \"x\"\n[nginx]\nfail_timeout = \"500ms\"\n");
        assert!(
            e.starts_with(
                "/etc/zdd/zdd.toml:4:16: nginx.fail_timeout must be between 1s and 1h, got 500ms"
            ),
            "{e}"
        );
    }

    #[test]
    fn env_cannot_override_what_zdd_sets() {
        let e = err("name = \"s\"\nstart = \"x\"\n[env]\nA = \"1\"\nPORT = \"9\"\n");
        assert!(
            e.starts_with("/etc/zdd/zdd.toml:5:1: PORT is set by zdd itself"),
            "{e}"
        );
        let c = parse("name = \"s\"\nstart = \"x\"\n[env]\nA = \"1\"\n").unwrap();
        assert_eq!(c.env.get("A").map(String::as_str), Some("1"));
    }

    #[test]
    fn zero_durations_and_tls_listen_are_refused() {
        let e = err("name = \"s\"\nstart = \"x\"\n[stop]\ntimeout = \"0s\"\n");
        assert!(
            e.starts_with(
                "/etc/zdd/zdd.toml:4:11: stop.timeout must be between 100ms and 1h, got 0s"
            ),
            "{e}"
        );
        let c = parse("name = \"s\"\nstart = \"x\"\n[stop]\nsettle = \"0s\"\n").unwrap();
        assert_eq!(
            c.stop.settle,
            Duration::ZERO,
            "no settle at all is a choice"
        );
        assert!(
            err("name = \"s\"\nstart = \"x\"\n[health]\ninterval = \"0ms\"\n")
                .contains("health.interval must be between 1ms and 1m, got 0s")
        );
        assert!(
            err("name = \"s\"\nstart = \"x\"\n[nginx]\nlisten = \"443 ssl\"\n")
                .contains("set nginx.probe_url")
        );
        assert!(parse("name = \"s\"\nstart = \"x\"\n[nginx]\nlisten = \"443 ssl\"\nprobe_url = \"http://127.0.0.1:8081/.zdd/upstream\"\n").is_ok());
    }

    #[test]
    fn fixed_size_lists_refuse_extra_entries() {
        let e = err("name = \"s\"\nstart = \"x\"\nports = [3001, 3002, 3003]\n");
        assert_eq!(
            e,
            "/etc/zdd/zdd.toml:3:9: ports (slot a, slot b) must list exactly two numbers, got 3"
        );
        let e = err("name = \"s\"\nstart = \"x\"\n[health]\nexpect_status = [200, 299, 300]\n");
        assert!(
            e.starts_with("/etc/zdd/zdd.toml:4:17: health.expect_status [LOW, HIGH] must list exactly two numbers, got 3"),
            "{e}"
        );
        assert!(err("name = \"s\"\nstart = \"x\"\nports = [3001]\n").contains("got 1"));
    }

    #[test]
    fn durations_have_bounds_per_key() {
        let e = err("name = \"s\"\nstart = \"x\"\n[health]\ntimeout = \"500000000 years\"\n");
        assert!(
            e.starts_with(
                "/etc/zdd/zdd.toml:4:11: health.timeout must be between 100ms and 1h, got "
            ),
            "{e}"
        );
        let e = err("name = \"s\"\nstart = \"x\"\n[stop]\ntimeout = \"2h\"\n");
        assert!(
            e.contains("stop.timeout must be between 100ms and 1h, got 2h"),
            "{e}"
        );
        let e = err("name = \"s\"\nstart = \"x\"\n[nginx]\nroute_timeout = \"1ms\"\n");
        assert!(
            e.contains("nginx.route_timeout must be between 100ms and 10m"),
            "{e}"
        );
        assert!(parse("name = \"s\"\nstart = \"x\"\n[health]\ninterval = \"1ms\"\n").is_ok());
    }

    #[test]
    fn nginx_parameters_cannot_break_out_of_their_directive() {
        for (key, value) in [
            ("server_name", "shop.test; include /etc/passwd"),
            ("server_name", "a { b"),
            ("listen", "80 }"),
            ("listen", "80\\nx"),
            ("listen", "$port"),
            ("server_name", "\\\"quoted\\\""),
        ] {
            let e = err(&format!(
                "name = \"s\"\nstart = \"x\"\n[nginx]\n{key} = \"{value}\"\n"
            ));
            assert!(
                e.starts_with("/etc/zdd/zdd.toml:4:"),
                "{key} = {value}: {e}"
            );
            assert!(
                e.contains("which nginx does not take there"),
                "{key} = {value}: {e}"
            );
        }
        let c = parse("name = \"s\"\nstart = \"x\"\n[nginx]\nserver_name = \"~^(www\\\\.)?shop\\\\.test$ shop.test\"\nlisten = \"127.0.0.1:8080 default_server\"\n").unwrap();
        assert_eq!(c.nginx.server_name, "~^(www\\.)?shop\\.test$ shop.test");
    }

    #[test]
    fn probe_url_must_be_plain_http() {
        for bad in [
            "not a url",
            "https://127.0.0.1/.zdd/upstream",
            "http:///x",
            "http://",
        ] {
            let e = err(&format!(
                "name = \"s\"\nstart = \"x\"\n[nginx]\nprobe_url = {bad:?}\n"
            ));
            assert!(
                e.starts_with("/etc/zdd/zdd.toml:4:13: nginx.probe_url"),
                "{bad}: {e}"
            );
        }
        assert!(parse("name = \"s\"\nstart = \"x\"\n[nginx]\nprobe_url = \"http://[::1]:8081/.zdd/upstream\"\n").is_ok());
    }

    #[test]
    fn probe_url_follows_listen() {
        assert_eq!(probe_authority("8080"), "127.0.0.1:8080");
        assert_eq!(
            probe_authority("127.0.0.2:81 default_server"),
            "127.0.0.2:81"
        );
        assert_eq!(probe_authority("*:80"), "127.0.0.1:80");
        assert_eq!(probe_authority("[::]:80"), "[::1]:80");
    }
}
