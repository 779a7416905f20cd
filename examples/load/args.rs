//! The command line (clap), resolved into the run's [`Config`]: only plain
//! HTTP to 127.0.0.1 or localhost; durations parsed as zdd parses them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// A load client that proves no request is lost: every request ends as a
/// success (a 2xx whose body starts with an expected version) or a counted
/// failure.
#[derive(Debug, Parser)]
#[command(name = "load")]
struct Cli {
    /// http://127.0.0.1:PORT/path (or localhost)
    #[arg(long)]
    url: String,
    /// Concurrent clients
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Share of POST requests, 0.0 to 1.0
    #[arg(long, default_value_t = 0.5, value_parser = ratio)]
    post_ratio: f64,
    /// Bytes in each POST body
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(0..=(1 << 30)))]
    body_size: u64,
    /// Keep connections alive: on, off, or mixed (every other client)
    #[arg(long, value_enum, default_value = "mixed")]
    keepalive: KeepAlive,
    /// Stop after this long
    #[arg(long, default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// Stop after this many requests
    #[arg(long)]
    requests: Option<u64>,
    /// Requests per second in all (default: as fast as they come back)
    #[arg(long, value_parser = rate)]
    rate: Option<f64>,
    /// Give up on one request after this long
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    timeout: Duration,
    /// Write one CSV line per request here
    #[arg(long)]
    samples: Option<PathBuf>,
    /// A version a 2xx body may start with (repeat for more; none: any)
    #[arg(long = "expect-version", value_name = "V")]
    expect_versions: Vec<String>,
    /// Stop when this file exists (checked between requests)
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Send each POST's body this long after its head (a slow upload); a
    /// range LOW..HIGH spreads the delays evenly over it
    #[arg(long, default_value = "0s", value_parser = delay_range)]
    slow_body: (Duration, Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KeepAlive {
    On,
    Off,
    Mixed,
}

/// The run, resolved.
pub(crate) struct Config {
    pub(crate) addr: SocketAddr,
    pub(crate) host_header: String,
    pub(crate) path: String,
    pub(crate) concurrency: usize,
    pub(crate) post_ratio: f64,
    pub(crate) body_size: usize,
    pub(crate) keepalive: KeepAlive,
    pub(crate) duration: Duration,
    pub(crate) requests: Option<u64>,
    pub(crate) rate: Option<f64>,
    pub(crate) timeout: Duration,
    pub(crate) samples: Option<PathBuf>,
    pub(crate) expect_versions: Vec<Vec<u8>>,
    pub(crate) stop_file: Option<PathBuf>,
    /// The shortest and longest delay of a POST's body after its head.
    pub(crate) slow_body: (Duration, Duration),
}

/// Parse the command line; a usage error exits 2 (clap's way).
pub(crate) fn parse() -> Config {
    resolve(Cli::parse()).unwrap_or_else(|e| {
        eprintln!("load: {e}");
        std::process::exit(2)
    })
}

fn resolve(cli: Cli) -> Result<Config, String> {
    let (addr, host_header, path) = parse_url(&cli.url)?;
    Ok(Config {
        addr,
        host_header,
        path,
        concurrency: cli.concurrency as usize,
        post_ratio: cli.post_ratio,
        body_size: cli.body_size as usize,
        keepalive: cli.keepalive,
        duration: cli.duration,
        requests: cli.requests,
        rate: cli.rate,
        timeout: cli.timeout,
        samples: cli.samples,
        expect_versions: cli
            .expect_versions
            .into_iter()
            .map(String::into_bytes)
            .collect(),
        stop_file: cli.stop_file,
        slow_body: cli.slow_body,
    })
}

/// `100ms`, `30s`, `2m`: the same parser as zdd's config.
fn duration(s: &str) -> Result<Duration, String> {
    zdd::config::parse_duration(s)
}

/// `DUR`, or `LOW..HIGH` with LOW <= HIGH.
fn delay_range(s: &str) -> Result<(Duration, Duration), String> {
    let (low, high) = match s.split_once("..") {
        Some((l, h)) => (duration(l)?, duration(h)?),
        None => (duration(s)?, duration(s)?),
    };
    match low <= high {
        true => Ok((low, high)),
        false => Err(format!("{s:?}: LOW must not be above HIGH")),
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    duration(s).and_then(|d| match d.is_zero() {
        true => Err("must be more than 0".into()),
        false => Ok(d),
    })
}

fn ratio(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| format!("{s:?} is not within 0.0..=1.0"))
}

fn rate(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| format!("{s:?} is not a positive number"))
}

/// Parse `http://HOST[:PORT][/path]`, accepting only 127.0.0.1 and localhost.
/// Returns (address, Host header value, request target).
fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let lower = url.to_ascii_lowercase();
    if !lower.starts_with("http://") {
        return Err(format!(
            "refusing URL {url:?}: only plain http:// to 127.0.0.1 or localhost is allowed"
        ));
    }
    let rest = &url[7..];
    let rest = rest.split('#').next().unwrap_or("");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let mut path = rest[end..].to_string();
    if path.is_empty() {
        path.push('/');
    } else if path.starts_with('?') {
        path.insert(0, '/');
    }
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("invalid characters in URL path of {url:?}"));
    }
    if authority.contains('@') {
        return Err(format!("refusing URL {url:?}: userinfo not supported"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p
                .parse()
                .map_err(|_| format!("invalid port in URL {url:?}"))?;
            if port == 0 {
                return Err(format!("invalid port in URL {url:?}"));
            }
            (h, port)
        }
        None => (authority, 80),
    };
    let ip = if host == "127.0.0.1" || host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        return Err(format!(
            "refusing host {host:?}: only 127.0.0.1 or localhost is allowed"
        ));
    };
    Ok((SocketAddr::from((ip, port)), authority.to_string(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_from(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        resolve(cli)
    }

    #[test]
    fn defaults_and_every_flag() {
        let c = parse_from(&["--url", "http://127.0.0.1:8080/x?y=1"]).unwrap();
        assert_eq!(c.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (c.host_header.as_str(), c.path.as_str()),
            ("127.0.0.1:8080", "/x?y=1")
        );
        assert_eq!((c.concurrency, c.post_ratio, c.body_size), (16, 0.5, 512));
        assert_eq!(c.keepalive, KeepAlive::Mixed);
        assert_eq!(c.duration, Duration::from_secs(60));
        assert_eq!(c.slow_body, (Duration::ZERO, Duration::ZERO));
        let c = parse_from(&[
            "--url=http://localhost/",
            "--concurrency=4",
            "--post-ratio",
            "1",
            "--keepalive",
            "off",
            "--duration",
            "1m30s",
            "--slow-body",
            "300ms",
            "--expect-version",
            "v1",
            "--expect-version",
            "v2",
        ])
        .unwrap();
        assert_eq!(c.addr.port(), 80);
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.keepalive, KeepAlive::Off);
        assert_eq!(c.duration, Duration::from_secs(90));
        assert_eq!(
            c.slow_body,
            (Duration::from_millis(300), Duration::from_millis(300))
        );
        let spread = parse_from(&["--url=http://localhost/", "--slow-body=50ms..2s"]).unwrap();
        assert_eq!(
            spread.slow_body,
            (Duration::from_millis(50), Duration::from_secs(2))
        );
        assert!(parse_from(&["--url=http://localhost/", "--slow-body=2s..1s"]).is_err());
        assert_eq!(c.expect_versions, [b"v1".to_vec(), b"v2".to_vec()]);
    }

    #[test]
    fn only_plain_http_to_loopback() {
        for bad in [
            "https://127.0.0.1/",
            "http://example.com/",
            "http://10.0.0.1:80/",
            "http://u@127.0.0.1/",
            "http://127.0.0.1:0/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(parse_from(&["--url", "http://127.0.0.1/", "--post-ratio", "2"]).is_err());
        assert!(parse_from(&["--url", "http://127.0.0.1/", "--timeout", "0s"]).is_err());
    }
}
