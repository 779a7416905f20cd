//! `zdd.toml`: the resolved [`Config`] that the rest of zdd takes as plain
//! data. `raw` is the file as written (serde), `parse` turns it into a
//! `Config` with file:line:col errors, `sections` checks the tables.

mod env_file;
mod parse;
mod raw;
mod sections;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::slot::Slot;
pub use crate::user::RunAs;
pub use env_file::read_env_file;
pub use parse::{assignments_end, toml_error};
pub use raw::{duration_bounds, parse_duration};

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
    /// Files and folders that outlive a release, linked into each one.
    pub shared: Vec<Shared>,
    /// Build caches copied from the live release into a new one before
    /// its build (a copy each, never shared).
    pub cache: Vec<Shared>,
    pub start: String,
    pub ports: [u16; 2],
    pub user: Option<RunAs>,
    pub health: Health,
    pub stop: Stop,
    pub env: BTreeMap<String, String>,
    /// Dotenv lines for the app's environment, read at every start by zdd
    /// (`[env]` wins over it).
    pub env_file: Option<PathBuf>,
    pub hooks: Hooks,
    pub nginx: Nginx,
    pub keeper: Keeper,
    pub maintenance: Maintenance,
    pub releases: Releases,
    /// How the keepers cap and stamp the app logs (`[logs]`).
    pub logs: LogPolicy,
}

/// A path every release shares: `ROOT/shared/PATH`, linked into each
/// release at `PATH` before its build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    /// Relative to the release, without a trailing `/`.
    pub path: String,
    /// A folder (written with a trailing `/`), else a file.
    pub dir: bool,
}

/// How the log is capped and stamped (`[logs]`): what the keepers do to the
/// app logs they write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPolicy {
    /// The most a file holds, in bytes.
    pub max_size: u64,
    /// How many rotated files are kept (at least 1).
    pub keep: u32,
    /// Each line starts with its RFC 3339 time.
    pub timestamps: bool,
}

impl LogPolicy {
    /// zdd's defaults: 10 MiB, 5 rotated files, no timestamps.
    pub const DEFAULT: LogPolicy = LogPolicy {
        max_size: 10 * 1024 * 1024,
        keep: 5,
        timestamps: false,
    };
}

/// How many releases stay on disk.
#[derive(Debug, Clone)]
pub struct Releases {
    /// Good releases (ones that went live) kept, the live one included.
    pub keep: u32,
}

impl Default for Releases {
    fn default() -> Self {
        Releases { keep: 5 }
    }
}

/// The page nginx shows while `zdd maintenance on`.
#[derive(Debug, Clone)]
pub struct Maintenance {
    /// A page of the operator's own (a minijinja template that gets
    /// `message` and `since`, HTML-escaped); the built-in one if `None`.
    pub page: Option<PathBuf>,
    /// The `Retry-After` header's value (rendered into the nginx config).
    pub retry_after: Duration,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            page: None,
            retry_after: Duration::from_secs(120),
        }
    }
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
    /// (and its accept queue is empty) before it gets the stop signal. nginx
    /// picks the slot when it connects, so nothing needs it: 0 by default.
    pub settle: Duration,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            signal: Signal::SIGTERM,
            timeout: Duration::from_secs(30),
            settle: Duration::ZERO,
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
    /// One upstream with nginx's `hash` balancer, keyed when nginx
    /// connects on the real path of a symlink zdd flips (`switch`).
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
    /// Switch mode: idle upstream connections each nginx worker keeps
    /// (`keepalive N`); 0 turns upstream keep-alive off.
    pub keepalive: u32,
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

    /// What a release's build and run take from the config — `build`,
    /// `start`, `user`, `[env]`, the hooks, the ports, the health check,
    /// `shared` —
    /// as 16 hex digits (FNV-1a). A deploy that failed under another
    /// fingerprint is a new attempt for cron: the fix may be in zdd.toml.
    pub fn fingerprint(&self) -> String {
        let h = &self.health;
        let mut text = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.build,
            self.start,
            self.user.as_ref().map(|u| &u.name),
            self.env,
            self.hooks,
            self.ports,
            h.path,
            h.expect_status,
            h.expect_body,
            h.timeout
        );
        // Only when set: a config without them keeps its earlier fingerprint.
        if !self.shared.is_empty() {
            text.push_str(&format!("|{:?}", self.shared));
        }
        if let Some(file) = &self.env_file {
            text.push_str(&format!("|{file:?}"));
        }
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{hash:016x}")
    }

    /// Find the config file: `--config`/`$ZDD_CONFIG` if given (a folder
    /// means its `zdd.toml`), else `./zdd.toml`. `None` when nothing was
    /// given and there is no file.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        match explicit {
            // `-c /etc/zdd/shop` names the folder the config is in.
            Some(p) if p.is_dir() => Some(p.join(DEFAULT_FILE)),
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from(DEFAULT_FILE);
                p.exists().then_some(p)
            }
        }
    }

    /// Read and resolve a config file: one that only root or the user
    /// running zdd could have written (`root::read_trusted`), since it says
    /// what zdd runs.
    pub fn load(path: &Path) -> Result<Config> {
        let text = crate::root::read_trusted(path).map_err(|e| match e {
            crate::root::Untrusted::Io(source) => Error::ConfigRead {
                path: path.to_path_buf(),
                source,
            },
            crate::root::Untrusted::Refused(why) => Error::Usage(format!("config file {why}")),
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
}
