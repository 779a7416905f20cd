//! `zdd.toml` as written: the serde structs (unknown keys refused, spans
//! kept for errors) and the duration syntax with its bounds per key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// A duration written like `100ms`, `30s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy)]
pub(super) struct HumanDuration(pub(super) Duration);

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
        "maintenance.retry_after" => (s(1), s(24 * 3600)),
        // nginx counts whole seconds.
        "nginx.fail_timeout" => (s(1), s(3600)),
        "nginx.route_timeout" => (ms(100), s(600)),
        // `--wait` and anything else.
        _ => (ms(1), s(24 * 3600)),
    }
}

/// Parse `100ms`, `30s`, `5m`, `1h` (and combinations like `1m30s`).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    use humantime::DurationError as E;
    humantime::parse_duration(s.trim()).map_err(|e| {
        // One list of units, zdd's: not also the library's own.
        let why = match e {
            E::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            E::InvalidCharacter(at) => format!("an unexpected character at {}", at + 1),
            E::NumberExpected(at) => format!("a number expected at {}", at + 1),
            E::NumberOverflow => "too large".to_string(),
            E::Empty => "empty".to_string(),
        };
        format!("invalid duration {s:?} ({why}); expected a number with ms, s, m or h, like \"100ms\" or \"30s\"")
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) name: Spanned<String>,
    pub(super) repo: Option<String>,
    pub(super) branch: Option<String>,
    pub(super) root: Option<PathBuf>,
    pub(super) build: Option<String>,
    pub(super) shared: Option<Vec<Spanned<String>>>,
    pub(super) cache: Option<Vec<Spanned<String>>>,
    pub(super) env_file: Option<PathBuf>,
    pub(super) start: Spanned<String>,
    pub(super) ports: Option<Spanned<Vec<u16>>>,
    pub(super) user: Option<Spanned<String>>,
    pub(super) health: Option<RawHealth>,
    pub(super) stop: Option<RawStop>,
    pub(super) env: Option<BTreeMap<Spanned<String>, String>>,
    pub(super) hooks: Option<RawHooks>,
    pub(super) nginx: Option<RawNginx>,
    pub(super) keeper: Option<RawKeeper>,
    pub(super) maintenance: Option<RawMaintenance>,
    pub(super) releases: Option<RawReleases>,
    pub(super) logs: Option<RawLogs>,
}

/// A size written as a number of bytes or with a binary unit: `10MiB`,
/// `512K`, `1G` (K, M and G count 1024s).
#[derive(Debug, Clone, Copy)]
pub(super) struct ByteSize(pub(super) u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Bytes(n) => Ok(ByteSize(n)),
            Written::Text(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parse `10MiB`, `10M`, `512 KiB`, `1G`, `4096` (bytes).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let unit = unit.trim();
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if scale > 0 => n
            .checked_mul(scale)
            .ok_or_else(|| format!("size {s:?} is too large")),
        _ => Err(format!(
            "invalid size {s:?}; expected a number of bytes or one with KiB, MiB or GiB, like \"10MiB\""
        )),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogs {
    pub(super) max_size: Option<Spanned<ByteSize>>,
    pub(super) keep: Option<Spanned<u32>>,
    pub(super) timestamps: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReleases {
    pub(super) keep: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMaintenance {
    pub(super) page: Option<PathBuf>,
    pub(super) retry_after: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeeper {
    pub(super) rollback_after: Option<u32>,
    pub(super) rollback_within: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) path: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<HumanDuration>>,
    pub(super) interval: Option<Spanned<HumanDuration>>,
    pub(super) request_timeout: Option<Spanned<HumanDuration>>,
    pub(super) expect_status: Option<Spanned<Vec<u16>>>,
    pub(super) expect_body: Option<String>,
    pub(super) rehearse: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStop {
    pub(super) signal: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<HumanDuration>>,
    pub(super) settle: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    pub(super) after_checkout: Option<String>,
    pub(super) before_start: Option<String>,
    pub(super) verify: Option<String>,
    pub(super) after_swap: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNginx {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) server_name: Option<Spanned<String>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) output: Option<PathBuf>,
    pub(super) upstreams_output: Option<PathBuf>,
    pub(super) snippet_output: Option<PathBuf>,
    pub(super) template: Option<PathBuf>,
    pub(super) pid_file: Option<PathBuf>,
    pub(super) probe_url: Option<Spanned<String>>,
    pub(super) fail_timeout: Option<Spanned<HumanDuration>>,
    pub(super) route_timeout: Option<Spanned<HumanDuration>>,
    pub(super) retry_non_idempotent: Option<bool>,
    pub(super) keepalive: Option<Spanned<u32>>,
    pub(super) test_command: Option<String>,
}
