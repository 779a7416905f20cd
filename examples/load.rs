//! `load`: a small blocking HTTP/1.1 load client used by zdd's tests and
//! benchmarks to prove that no request is lost while a deploy happens.
//!
//! It only talks plain HTTP to 127.0.0.1 / localhost. Every request is
//! accounted for: each one ends as either a success (a 2xx whose body's first
//! whitespace-separated token is an expected version) or a counted failure
//! (transport error by kind, non-2xx status, or unexpected version). Requests
//! are never retried, so a kept-alive connection that the server closed while
//! idle shows up as `keepalive_closed`.
//!
//! ```text
//! load --url http://127.0.0.1:8080/path [--concurrency 16] [--post-ratio 0.5]
//!      [--body-size 512] [--keepalive on|off|mixed] [--duration 60s]
//!      [--requests N] [--rate R] [--timeout 10s] [--samples out.csv]
//!      [--expect-version V]... [--stop-file PATH] [--slow-body DUR]
//! ```
//!
//! `--slow-body DUR` sends each POST's head, waits DUR, then sends its body,
//! like a client uploading slowly: nginx picks the upstream when the head
//! arrives and connects to it only once it has the whole body.
//!
//! The run stops when the duration or the request cap is reached, on
//! SIGTERM/SIGINT (in-flight requests finish first; a second signal exits at
//! once with status 1), or when the stop file exists (checked between
//! requests). It then prints one JSON object to stdout and one summary line to
//! stderr, and exits 0 if nothing failed, 1 otherwise, 2 on usage errors.
//!
//! Notes on the report:
//! - `latency_ms` percentiles cover requests that got a complete HTTP response
//!   (any status); transport errors are excluded.
//! - `versions` counts the first body token of 2xx responses only.
//! - `errors` always lists every kind, zeros included: `connect_refused`,
//!   `connect_other`, `reset`, `eof_before_response` (connection closed before
//!   a complete response), `keepalive_closed` (a reused keep-alive connection
//!   was closed or reset before any byte of the response arrived), `timeout`,
//!   `bad_response`, `other`.
//! - Extra keys: `stop_reason` (`duration`, `requests`, `signal`,
//!   `stop_file`) and `error_examples` (first OS error text per error kind).
//! - The samples CSV starts with a header line, then one line per request
//!   sorted by start time: `start_unix_us,latency_us,method,status,version,error`
//!   (start time in microseconds since the Unix epoch, so that it can be
//!   lined up with other events such as deploys)
//!   (status 0 for transport errors; version only for 2xx responses).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: load --url http://127.0.0.1:PORT/path [--concurrency N] \
[--post-ratio F] [--body-size BYTES] [--keepalive on|off|mixed] [--duration DUR] \
[--requests N] [--rate R] [--timeout DUR] [--samples PATH] [--expect-version V]... \
[--stop-file PATH] [--slow-body DUR]";

const MAX_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 256;
const BODY_PREFIX: usize = 256;
const MAX_VERSION_LEN: usize = 64;
const MAX_DISTINCT_VERSIONS: usize = 256;
const OTHER_VERSION: &[u8] = b"(other)";

// ---------------------------------------------------------------- errors

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ErrKind {
    ConnectRefused = 0,
    ConnectOther,
    Reset,
    EofBeforeResponse,
    KeepaliveClosed,
    Timeout,
    BadResponse,
    Other,
}

const N_ERR: usize = 8;
const ERR_NAMES: [&str; N_ERR] = [
    "connect_refused",
    "connect_other",
    "reset",
    "eof_before_response",
    "keepalive_closed",
    "timeout",
    "bad_response",
    "other",
];

thread_local! {
    /// Text of the last I/O error classified on this thread, reported once
    /// per error kind in `error_examples`.
    static LAST_IO_ERROR: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
}

fn note(e: &io::Error) {
    LAST_IO_ERROR.with(|l| *l.borrow_mut() = Some(e.to_string()));
}

/// Classify an I/O error seen after the connection was established.
fn io_kind(e: &io::Error, reused: bool, got_any: bool) -> ErrKind {
    note(e);
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => ErrKind::Timeout,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            if reused && !got_any {
                ErrKind::KeepaliveClosed
            } else {
                ErrKind::Reset
            }
        }
        ErrorKind::UnexpectedEof => eof_kind(reused, got_any),
        _ => ErrKind::Other,
    }
}

fn eof_kind(reused: bool, got_any: bool) -> ErrKind {
    LAST_IO_ERROR.with(|l| {
        *l.borrow_mut() = Some(if got_any {
            "connection closed in the middle of the response".to_string()
        } else {
            "connection closed before any response byte".to_string()
        })
    });
    if reused && !got_any {
        ErrKind::KeepaliveClosed
    } else {
        ErrKind::EofBeforeResponse
    }
}

// ---------------------------------------------------------------- config

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeepAlive {
    On,
    Off,
    Mixed,
}

struct Config {
    addr: SocketAddr,
    host_header: String,
    path: String,
    concurrency: usize,
    post_ratio: f64,
    body_size: usize,
    keepalive: KeepAlive,
    duration: Duration,
    requests: Option<u64>,
    rate: Option<f64>,
    timeout: Duration,
    samples: Option<PathBuf>,
    expect_versions: Vec<Vec<u8>>,
    stop_file: Option<PathBuf>,
    slow_body: Duration,
}

fn usage_error(msg: &str) -> ! {
    eprintln!("load: {msg}");
    eprintln!("{USAGE}");
    exit(2);
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 30s, 500ms, 2m)"))?;
    if !v.is_finite() || v < 0.0 || v * mult > 1e9 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
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

fn parse_args() -> Config {
    let mut url: Option<String> = None;
    let mut concurrency = 16usize;
    let mut post_ratio = 0.5f64;
    let mut body_size = 512usize;
    let mut keepalive = KeepAlive::Mixed;
    let mut duration = Duration::from_secs(60);
    let mut requests = None;
    let mut rate = None;
    let mut timeout = Duration::from_secs(10);
    let mut samples = None;
    let mut expect_versions = Vec::new();
    let mut stop_file = None;
    let mut slow_body = Duration::ZERO;

    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> String {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| usage_error(&format!("{name} needs a value")))
        };
        match name.as_str() {
            "--url" => url = Some(value()),
            "--concurrency" => {
                concurrency = value()
                    .parse()
                    .ok()
                    .filter(|&n| (1..=10_000).contains(&n))
                    .unwrap_or_else(|| usage_error("--concurrency must be 1..=10000"))
            }
            "--post-ratio" => {
                post_ratio = value()
                    .parse()
                    .ok()
                    .filter(|f: &f64| (0.0..=1.0).contains(f))
                    .unwrap_or_else(|| usage_error("--post-ratio must be within 0.0..=1.0"))
            }
            "--body-size" => {
                body_size = value()
                    .parse()
                    .ok()
                    .filter(|&n| n <= 1 << 30)
                    .unwrap_or_else(|| usage_error("--body-size must be a byte count"))
            }
            "--keepalive" => {
                keepalive = match value().as_str() {
                    "on" => KeepAlive::On,
                    "off" => KeepAlive::Off,
                    "mixed" => KeepAlive::Mixed,
                    _ => usage_error("--keepalive must be on, off or mixed"),
                }
            }
            "--duration" => duration = parse_duration(&value()).unwrap_or_else(|e| usage_error(&e)),
            "--requests" => {
                requests = Some(
                    value()
                        .parse()
                        .unwrap_or_else(|_| usage_error("--requests must be an integer")),
                )
            }
            "--rate" => {
                rate = Some(
                    value()
                        .parse()
                        .ok()
                        .filter(|r: &f64| r.is_finite() && *r > 0.0)
                        .unwrap_or_else(|| usage_error("--rate must be a positive number")),
                )
            }
            "--timeout" => {
                timeout = parse_duration(&value())
                    .ok()
                    .filter(|d| !d.is_zero())
                    .unwrap_or_else(|| usage_error("--timeout must be a positive duration"))
            }
            "--samples" => samples = Some(PathBuf::from(value())),
            "--expect-version" => expect_versions.push(value().into_bytes()),
            "--stop-file" => stop_file = Some(PathBuf::from(value())),
            "--slow-body" => {
                slow_body = parse_duration(&value()).unwrap_or_else(|e| usage_error(&e))
            }
            _ => usage_error(&format!("unknown argument {arg:?}")),
        }
    }
    let url = url.unwrap_or_else(|| usage_error("--url is required"));
    let (addr, host_header, path) = parse_url(&url).unwrap_or_else(|e| usage_error(&e));
    Config {
        addr,
        host_header,
        path,
        concurrency,
        post_ratio,
        body_size,
        keepalive,
        duration,
        requests,
        rate,
        timeout,
        samples,
        expect_versions,
        slow_body,
        stop_file,
    }
}

// ---------------------------------------------------------------- shared state

const REASON_NONE: u8 = 0;
const REASON_DURATION: u8 = 1;
const REASON_REQUESTS: u8 = 2;
const REASON_SIGNAL: u8 = 3;
const REASON_STOP_FILE: u8 = 4;

struct Shared {
    cfg: Config,
    start: Instant,
    /// `start` as microseconds since the Unix epoch, for the samples file.
    start_unix_us: u64,
    run_deadline: Instant,
    tickets: AtomicU64,
    stop: AtomicBool,
    term: Arc<AtomicBool>,
    reason: AtomicU8,
}

impl Shared {
    fn set_reason(&self, r: u8) {
        let _ = self
            .reason
            .compare_exchange(REASON_NONE, r, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Checked between requests: should this worker stop now?
    fn should_stop(&self) -> bool {
        if self.term.load(Ordering::Relaxed) {
            self.set_reason(REASON_SIGNAL);
            return true;
        }
        if self.stop.load(Ordering::Relaxed) {
            return true;
        }
        if Instant::now() >= self.run_deadline {
            self.set_reason(REASON_DURATION);
            return true;
        }
        if let Some(f) = &self.cfg.stop_file {
            if f.exists() {
                self.set_reason(REASON_STOP_FILE);
                self.stop.store(true, Ordering::Relaxed);
                return true;
            }
        }
        false
    }
}

// ---------------------------------------------------------------- per-worker stats

#[derive(Clone, Copy)]
struct Sample {
    start_us: u64,
    latency_us: u64,
    status: u16,
    post: bool,
    err: Option<ErrKind>,
    version: u32,
}

const NO_VERSION: u32 = u32::MAX;

struct Stats {
    requests: u64,
    ok: u64,
    by_status: Vec<u64>,
    errors: [u64; N_ERR],
    /// [GET, POST] x [requests, failed]
    by_method: [[u64; 2]; 2],
    unexpected_version: u64,
    ver_ids: HashMap<Vec<u8>, u32>,
    ver_names: Vec<Vec<u8>>,
    ver_counts: Vec<u64>,
    latencies_us: Vec<u32>,
    samples: Vec<Sample>,
    /// First error message seen per kind (where one is known).
    examples: [Option<String>; N_ERR],
}

impl Stats {
    fn new(reserve: usize) -> Stats {
        Stats {
            requests: 0,
            ok: 0,
            by_status: vec![0; 600],
            errors: [0; N_ERR],
            by_method: [[0; 2]; 2],
            unexpected_version: 0,
            ver_ids: HashMap::new(),
            ver_names: Vec::new(),
            ver_counts: Vec::new(),
            latencies_us: Vec::with_capacity(reserve),
            samples: Vec::new(),
            examples: Default::default(),
        }
    }

    fn intern(&mut self, tok: &[u8]) -> u32 {
        if let Some(&id) = self.ver_ids.get(tok) {
            return id;
        }
        let tok = if self.ver_names.len() >= MAX_DISTINCT_VERSIONS {
            if let Some(&id) = self.ver_ids.get(OTHER_VERSION) {
                return id;
            }
            OTHER_VERSION
        } else {
            tok
        };
        let id = self.ver_names.len() as u32;
        self.ver_ids.insert(tok.to_vec(), id);
        self.ver_names.push(tok.to_vec());
        self.ver_counts.push(0);
        id
    }
}

// ---------------------------------------------------------------- HTTP client

struct Conn {
    r: BufReader<TcpStream>,
    /// Completed requests on this connection; > 0 means it is being reused.
    reqs: u64,
    /// Read timeout currently set on the socket.
    cur_timeout: Duration,
}

/// Reader over one response, tracking whether any byte has arrived.
struct Rd<'a> {
    c: &'a mut Conn,
    deadline: Instant,
    reused: bool,
    got_any: bool,
}

impl Rd<'_> {
    /// Make sure the buffer holds at least one byte; EOF is an error.
    fn fill(&mut self) -> Result<(), ErrKind> {
        if !self.c.r.buffer().is_empty() {
            return Ok(());
        }
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return Err(ErrKind::Timeout);
            }
            let remaining = self.deadline - now;
            if remaining + Duration::from_millis(20) < self.c.cur_timeout {
                self.c
                    .r
                    .get_ref()
                    .set_read_timeout(Some(remaining))
                    .map_err(|_| ErrKind::Other)?;
                self.c.cur_timeout = remaining;
            }
            match self.c.r.fill_buf() {
                Ok([]) => return Err(eof_kind(self.reused, self.got_any)),
                Ok(_) => {
                    self.got_any = true;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_kind(&e, self.reused, self.got_any)),
            }
        }
    }

    /// Like `fill`, but EOF is reported as `Ok(false)`.
    fn fill_or_eof(&mut self) -> Result<bool, ErrKind> {
        match self.fill() {
            Ok(()) => Ok(true),
            Err(ErrKind::EofBeforeResponse) | Err(ErrKind::KeepaliveClosed) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn read_line(&mut self, line: &mut Vec<u8>) -> Result<(), ErrKind> {
        line.clear();
        loop {
            self.fill()?;
            let buf = self.c.r.buffer();
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&buf[..=i]);
                self.c.r.consume(i + 1);
                return Ok(());
            }
            let n = buf.len();
            line.extend_from_slice(buf);
            self.c.r.consume(n);
            if line.len() > MAX_LINE {
                return Err(ErrKind::BadResponse);
            }
        }
    }

    /// Consume `n` body bytes, keeping the first few in `prefix`.
    fn read_body(&mut self, mut n: u64, prefix: &mut Vec<u8>) -> Result<(), ErrKind> {
        while n > 0 {
            self.fill()?;
            let buf = self.c.r.buffer();
            let take = (buf.len() as u64).min(n) as usize;
            keep_prefix(prefix, &buf[..take]);
            self.c.r.consume(take);
            n -= take as u64;
        }
        Ok(())
    }

    fn read_to_eof(&mut self, prefix: &mut Vec<u8>) -> Result<(), ErrKind> {
        while self.fill_or_eof()? {
            let buf = self.c.r.buffer();
            let n = buf.len();
            keep_prefix(prefix, buf);
            self.c.r.consume(n);
        }
        Ok(())
    }
}

fn keep_prefix(prefix: &mut Vec<u8>, data: &[u8]) {
    let room = BODY_PREFIX.saturating_sub(prefix.len());
    if room > 0 {
        prefix.extend_from_slice(&data[..data.len().min(room)]);
    }
}

fn trim_crlf(l: &[u8]) -> &[u8] {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn parse_u64(s: &[u8], radix: u32) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = (b as char).to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(d)?;
    }
    Some(v)
}

/// Returns (status, is HTTP/1.0).
fn parse_status_line(line: &[u8]) -> Option<(u16, bool)> {
    let l = trim_crlf(line);
    if l.len() < 12 || !l.starts_with(b"HTTP/1.") || l[8] != b' ' {
        return None;
    }
    if l.len() > 12 && l[12] != b' ' {
        return None;
    }
    let status = parse_u64(&l[9..12], 10)? as u16;
    if !(100..=599).contains(&status) {
        return None;
    }
    Some((status, l[7] == b'0'))
}

/// First whitespace-separated token of the body, capped in length.
fn first_token(body: &[u8]) -> &[u8] {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let rest = &body[start..];
    let end = rest
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    &rest[..end.min(MAX_VERSION_LEN)]
}

/// Read one response (skipping 1xx). Returns (status, connection reusable).
fn read_response(
    rd: &mut Rd,
    line: &mut Vec<u8>,
    prefix: &mut Vec<u8>,
) -> Result<(u16, bool), ErrKind> {
    prefix.clear();
    loop {
        rd.read_line(line)?;
        let (status, http10) = parse_status_line(line).ok_or(ErrKind::BadResponse)?;
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut conn_close = false;
        let mut conn_keepalive = false;
        let mut n_headers = 0;
        loop {
            rd.read_line(line)?;
            let l = trim_crlf(line);
            if l.is_empty() {
                break;
            }
            n_headers += 1;
            if n_headers > MAX_HEADERS {
                return Err(ErrKind::BadResponse);
            }
            let colon = l
                .iter()
                .position(|&b| b == b':')
                .ok_or(ErrKind::BadResponse)?;
            let name = l[..colon].trim_ascii();
            let value = l[colon + 1..].trim_ascii();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_u64(value, 10).ok_or(ErrKind::BadResponse)?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(ErrKind::BadResponse);
                }
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = contains_ci(value, b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                conn_close |= contains_ci(value, b"close");
                conn_keepalive |= contains_ci(value, b"keep-alive");
            }
        }
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(ErrKind::BadResponse);
            }
            continue; // interim response; the real one follows
        }
        let mut reusable = !conn_close && (!http10 || conn_keepalive);
        if status == 204 || status == 304 {
            // no body
        } else if chunked {
            loop {
                rd.read_line(line)?;
                let l = trim_crlf(line);
                let size_part = l.split(|&b| b == b';').next().unwrap_or(b"");
                let size = parse_u64(size_part.trim_ascii(), 16).ok_or(ErrKind::BadResponse)?;
                if size == 0 {
                    // trailers until the empty line
                    loop {
                        rd.read_line(line)?;
                        if trim_crlf(line).is_empty() {
                            break;
                        }
                    }
                    break;
                }
                rd.read_body(size, prefix)?;
                rd.read_line(line)?;
                if !trim_crlf(line).is_empty() {
                    return Err(ErrKind::BadResponse);
                }
            }
        } else if let Some(n) = content_length {
            rd.read_body(n, prefix)?;
        } else {
            rd.read_to_eof(prefix)?;
            reusable = false;
        }
        return Ok((status, reusable));
    }
}

struct Worker<'a> {
    sh: &'a Shared,
    keepalive: bool,
    get_req: Vec<u8>,
    post_req: Vec<u8>,
    /// Where the body starts in `post_req`.
    post_head_len: usize,
    conn: Option<Conn>,
    line: Vec<u8>,
    prefix: Vec<u8>,
    stats: Stats,
}

impl<'a> Worker<'a> {
    fn new(sh: &'a Shared, idx: usize, body: &[u8]) -> Worker<'a> {
        let cfg = &sh.cfg;
        let keepalive = match cfg.keepalive {
            KeepAlive::On => true,
            KeepAlive::Off => false,
            KeepAlive::Mixed => idx.is_multiple_of(2),
        };
        let conn_hdr = if keepalive {
            ""
        } else {
            "Connection: close\r\n"
        };
        let get_req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: zdd-load\r\nAccept: */*\r\n{}\r\n",
            cfg.path, cfg.host_header, conn_hdr
        )
        .into_bytes();
        let mut post_req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: zdd-load\r\nAccept: */*\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n{}\r\n",
            cfg.path,
            cfg.host_header,
            body.len(),
            conn_hdr
        )
        .into_bytes();
        let post_head_len = post_req.len();
        post_req.extend_from_slice(body);
        let reserve = match cfg.requests {
            Some(n) => (n as usize / cfg.concurrency + 1).min(1 << 20),
            None => 1 << 14,
        };
        let mut stats = Stats::new(reserve);
        if cfg.samples.is_some() {
            stats.samples.reserve(reserve);
        }
        Worker {
            sh,
            keepalive,
            get_req,
            post_req,
            post_head_len,
            conn: None,
            line: Vec::with_capacity(256),
            prefix: Vec::with_capacity(BODY_PREFIX),
            stats,
        }
    }

    fn connect(&mut self, deadline: Instant) -> Result<(), ErrKind> {
        let timeout = self.sh.cfg.timeout;
        let t = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let s = TcpStream::connect_timeout(&self.sh.cfg.addr, t).map_err(|e| {
            note(&e);
            match e.kind() {
                ErrorKind::ConnectionRefused => ErrKind::ConnectRefused,
                ErrorKind::TimedOut | ErrorKind::WouldBlock => ErrKind::Timeout,
                _ => ErrKind::ConnectOther,
            }
        })?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(timeout))
            .and_then(|_| s.set_write_timeout(Some(timeout)))
            .map_err(|_| ErrKind::Other)?;
        self.conn = Some(Conn {
            r: BufReader::with_capacity(16 * 1024, s),
            reqs: 0,
            cur_timeout: timeout,
        });
        Ok(())
    }

    /// One request, no retries. On success the first body bytes are in
    /// `self.prefix`.
    fn request(&mut self, post: bool, deadline: Instant) -> Result<u16, ErrKind> {
        if self.conn.is_none() {
            self.connect(deadline)?;
        }
        let timeout = self.sh.cfg.timeout;
        let conn = self.conn.as_mut().expect("connected");
        let reused = conn.reqs > 0;
        if conn.cur_timeout != timeout {
            if conn.r.get_ref().set_read_timeout(Some(timeout)).is_err() {
                self.conn = None;
                return Err(ErrKind::Other);
            }
            conn.cur_timeout = timeout;
        }
        let req = if post { &self.post_req } else { &self.get_req };
        let slow = post && !self.sh.cfg.slow_body.is_zero();
        let sent = if slow {
            let (head, body) = req.split_at(self.post_head_len);
            conn.r.get_mut().write_all(head).and_then(|()| {
                std::thread::sleep(self.sh.cfg.slow_body);
                conn.r.get_mut().write_all(body)
            })
        } else {
            conn.r.get_mut().write_all(req)
        };
        let res = match sent {
            Err(e) => Err(io_kind(&e, reused, false)),
            Ok(()) => {
                let mut rd = Rd {
                    c: &mut *conn,
                    deadline,
                    reused,
                    got_any: false,
                };
                read_response(&mut rd, &mut self.line, &mut self.prefix)
            }
        };
        match res {
            Ok((status, reusable)) => {
                if reusable && self.keepalive {
                    conn.reqs += 1;
                } else {
                    self.conn = None;
                }
                Ok(status)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    fn run(mut self) -> Stats {
        let sh = self.sh;
        let cfg = &sh.cfg;
        loop {
            if sh.should_stop() {
                break;
            }
            let ticket = sh.tickets.fetch_add(1, Ordering::Relaxed);
            if cfg.requests.is_some_and(|cap| ticket >= cap) {
                sh.set_reason(REASON_REQUESTS);
                break;
            }
            if let Some(rate) = cfg.rate {
                let at = sh.start + Duration::from_secs_f64(ticket as f64 / rate);
                if at >= sh.run_deadline {
                    sh.set_reason(REASON_DURATION);
                    break;
                }
                let mut stopped = false;
                loop {
                    let now = Instant::now();
                    if now >= at {
                        break;
                    }
                    std::thread::sleep((at - now).min(Duration::from_millis(20)));
                    if sh.should_stop() {
                        stopped = true;
                        break;
                    }
                }
                if stopped {
                    break;
                }
            }
            // Exact overall POST fraction: request t is a POST when
            // floor((t+1)*r) > floor(t*r).
            let r = cfg.post_ratio;
            let post = ((ticket + 1) as f64 * r).floor() > (ticket as f64 * r).floor();

            let t0 = Instant::now();
            let res = self.request(post, t0 + cfg.timeout);
            let latency_us = t0.elapsed().as_micros() as u64;
            self.record(post, t0, latency_us, res);
        }
        self.stats
    }

    fn record(&mut self, post: bool, t0: Instant, latency_us: u64, res: Result<u16, ErrKind>) {
        let cfg = &self.sh.cfg;
        let st = &mut self.stats;
        let m = post as usize;
        st.requests += 1;
        st.by_method[m][0] += 1;
        let mut version = NO_VERSION;
        let mut status = 0u16;
        let mut err = None;
        match res {
            Ok(s) => {
                status = s;
                st.latencies_us.push(latency_us.min(u32::MAX as u64) as u32);
                st.by_status[s as usize] += 1;
                let mut ok = false;
                if (200..300).contains(&s) {
                    let tok = first_token(&self.prefix);
                    let expected = cfg.expect_versions.is_empty()
                        || cfg.expect_versions.iter().any(|v| v.as_slice() == tok);
                    version = st.intern(tok);
                    st.ver_counts[version as usize] += 1;
                    if expected {
                        ok = true;
                    } else {
                        st.unexpected_version += 1;
                    }
                }
                if ok {
                    st.ok += 1;
                } else {
                    st.by_method[m][1] += 1;
                }
            }
            Err(k) => {
                st.errors[k as usize] += 1;
                let ex = LAST_IO_ERROR.with(|l| l.borrow_mut().take());
                if st.examples[k as usize].is_none() {
                    st.examples[k as usize] = ex;
                }
                st.by_method[m][1] += 1;
                err = Some(k);
            }
        }
        if cfg.samples.is_some() {
            st.samples.push(Sample {
                start_us: t0.duration_since(self.sh.start).as_micros() as u64,
                latency_us,
                status,
                post,
                err,
                version,
            });
        }
    }
}

// ---------------------------------------------------------------- report

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    ms(sorted[idx] as u64)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn csv_safe(v: &[u8], out: &mut Vec<u8>) {
    for &b in v {
        out.push(if b == b',' || b == b'"' || !(0x21..0x7f).contains(&b) {
            b'_'
        } else {
            b
        });
    }
}

fn write_samples(path: &PathBuf, all: &[Stats], start_unix_us: u64) -> io::Result<()> {
    let mut rows: Vec<(&Sample, &Stats)> = Vec::new();
    for st in all {
        rows.extend(st.samples.iter().map(|s| (s, st)));
    }
    rows.sort_by_key(|(s, _)| s.start_us);
    let mut w = BufWriter::with_capacity(1 << 16, std::fs::File::create(path)?);
    w.write_all(b"start_unix_us,latency_us,method,status,version,error\n")?;
    let mut ver = Vec::with_capacity(MAX_VERSION_LEN);
    for (s, st) in rows {
        ver.clear();
        if s.version != NO_VERSION {
            csv_safe(&st.ver_names[s.version as usize], &mut ver);
        }
        write!(
            w,
            "{},{},{},{},",
            start_unix_us + s.start_us,
            s.latency_us,
            if s.post { "POST" } else { "GET" },
            s.status
        )?;
        w.write_all(&ver)?;
        w.write_all(b",")?;
        if let Some(k) = s.err {
            w.write_all(ERR_NAMES[k as usize].as_bytes())?;
        }
        w.write_all(b"\n")?;
    }
    w.flush()
}

fn main() {
    let cfg = parse_args();

    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while draining exits immediately with status 1.
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&term))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&term)))
            .unwrap_or_else(|e| {
                eprintln!("load: cannot install signal handler: {e}");
                exit(2);
            });
    }

    let mut body = vec![0u8; cfg.body_size];
    for (i, b) in body.iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }

    let start = Instant::now();
    let start_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let sh = Shared {
        run_deadline: start + cfg.duration,
        cfg,
        start,
        start_unix_us,
        tickets: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        term,
        reason: AtomicU8::new(REASON_NONE),
    };

    let all: Vec<Stats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..sh.cfg.concurrency)
            .map(|i| {
                let w = Worker::new(&sh, i, &body);
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || w.run())
                    .expect("spawn worker thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();

    // Merge.
    let mut requests = 0u64;
    let mut ok = 0u64;
    let mut by_status = vec![0u64; 600];
    let mut errors = [0u64; N_ERR];
    let mut by_method = [[0u64; 2]; 2];
    let mut unexpected_version = 0u64;
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut lat: Vec<u32> = Vec::with_capacity(all.iter().map(|s| s.latencies_us.len()).sum());
    for st in &all {
        requests += st.requests;
        ok += st.ok;
        for (a, b) in by_status.iter_mut().zip(&st.by_status) {
            *a += b;
        }
        for (a, b) in errors.iter_mut().zip(&st.errors) {
            *a += b;
        }
        for (a, b) in by_method.iter_mut().zip(&st.by_method) {
            a[0] += b[0];
            a[1] += b[1];
        }
        unexpected_version += st.unexpected_version;
        for (name, n) in st.ver_names.iter().zip(&st.ver_counts) {
            *versions
                .entry(String::from_utf8_lossy(name).into_owned())
                .or_insert(0) += n;
        }
        lat.extend_from_slice(&st.latencies_us);
    }
    lat.sort_unstable();
    let mut examples = serde_json::Map::new();
    for (i, name) in ERR_NAMES.iter().enumerate() {
        if let Some(ex) = all.iter().find_map(|st| st.examples[i].as_ref()) {
            examples.insert(name.to_string(), ex.clone().into());
        }
    }
    let failed = requests - ok;

    if let Some(path) = &sh.cfg.samples {
        if let Err(e) = write_samples(path, &all, sh.start_unix_us) {
            eprintln!("load: cannot write samples to {}: {e}", path.display());
        }
    }

    let status_map: serde_json::Map<String, serde_json::Value> = by_status
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(s, &n)| (s.to_string(), n.into()))
        .collect();
    let error_map: serde_json::Map<String, serde_json::Value> = ERR_NAMES
        .iter()
        .zip(errors)
        .map(|(k, n)| (k.to_string(), n.into()))
        .collect();
    let (p50, p90, p99) = (
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
    );
    let max = lat.last().map(|&v| ms(v as u64)).unwrap_or(0.0);
    let stop_reason = match sh.reason.load(Ordering::Relaxed) {
        REASON_DURATION => "duration",
        REASON_REQUESTS => "requests",
        REASON_SIGNAL => "signal",
        REASON_STOP_FILE => "stop_file",
        _ => "unknown",
    };
    let rps = if elapsed > 0.0 {
        requests as f64 / elapsed
    } else {
        0.0
    };
    let report = serde_json::json!({
        "requests": requests,
        "ok": ok,
        "failed": failed,
        "by_status": status_map,
        "errors": error_map,
        "by_method": {
            "GET": {"requests": by_method[0][0], "failed": by_method[0][1]},
            "POST": {"requests": by_method[1][0], "failed": by_method[1][1]},
        },
        "versions": versions,
        "unexpected_version": unexpected_version,
        "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max},
        "duration_s": (elapsed * 1000.0).round() / 1000.0,
        "rps": (rps * 10.0).round() / 10.0,
        "error_examples": examples,
        "stop_reason": stop_reason,
    });
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{report}");
    let _ = out.flush();
    eprintln!("load: {requests} requests, {failed} failed, p50 {p50} ms, p99 {p99} ms");
    exit(if failed == 0 { 0 } else { 1 });
}
