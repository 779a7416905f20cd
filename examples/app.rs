//! `app` — the reference implementation of the app side of zdd's contract
//! (SPEC §2), on std and `signal-hook` only. Copy the pattern, not the HTTP
//! parser: it is a deliberately small HTTP/1.1 server.
//!
//! The contract:
//!
//! 1. Listen on `127.0.0.1:$PORT` (`PORT` is required; a missing or invalid
//!    value exits 2, a failed bind exits 1).
//! 2. Answer every path with `200` once ready: `GET`/`HEAD` get `<version>\n`,
//!    `POST`/`PUT`/`PATCH` get `<version> <body bytes>\n`. Every response
//!    carries `Content-Type: text/plain`, `Content-Length`, `X-App-Version`
//!    and `X-App-Pid`. The version is `$APP_VERSION`, else the trimmed
//!    contents of `./VERSION`, else `dev`.
//! 3. On SIGTERM (also SIGINT, SIGQUIT and SIGWINCH, Apache's graceful
//!    stop), drain: switch the listener to non-blocking, accept until
//!    `accept()` reports `WouldBlock`, close the listener in that same step,
//!    let every request in flight finish (a
//!    keep-alive connection gets its current request answered with
//!    `Connection: close`; idle keep-alive connections are closed at once), then exit
//!    0. Closing the listener while connections still sit in the kernel's
//!    accept queue would reset them, and nginx answers a reset POST with 502.
//!
//! Knobs for tests (environment variables):
//!
//! - `APP_READY_DELAY_MS`: sleep this long before binding (slow start-up).
//! - `APP_EXIT_AFTER_MS`: exit with `APP_EXIT_CODE` (default 3) this many ms
//!   after start, whether bound yet or not (a crash during start-up).
//! - `APP_STATUS`: answer every request with this status (200..=599) instead
//!   of 200; the body is unchanged.
//! - `APP_REQUEST_DELAY_MS`: sleep this long before answering each request
//!   (slow requests that are in flight when the stop signal arrives).
//! - `APP_IGNORE_TERM=1`: ignore SIGTERM entirely and keep serving (SIGINT and
//!   SIGQUIT still drain), so that zdd has to escalate to SIGKILL.
//! - `APP_STOP=naive`: on the stop signal, close the listener at once without
//!   taking what the kernel has queued (what gunicorn, uvicorn and node do),
//!   then finish the requests in flight. Queued connections are reset: zdd's
//!   switch mode must not let any be queued by then.
//!
//! It logs one line to stdout when it starts listening and one when it exits;
//! nothing per request.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
use signal_hook::iterator::Signals;

/// How often a connection waiting for the start of a request looks at the
/// draining flag (it is the socket's read timeout).
const POLL: Duration = Duration::from_millis(50);
/// How long a keep-alive connection may sit idle between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a started request (head or body) may go without progress.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// While draining, how long a connection that has not sent a single byte yet
/// (typically one just taken from the accept queue) gets to send its request.
const DRAIN_FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);
/// Largest accepted request head (request line plus headers).
const MAX_HEAD: usize = 64 * 1024;
/// Upper bound on the time spent discarding input after the last response.
const LINGER: Duration = Duration::from_secs(1);

struct Config {
    version: String,
    /// Headers that are the same on every response, pre-rendered.
    fixed_headers: String,
    status: u16,
    request_delay: Duration,
}

struct Shared {
    config: Config,
    draining: AtomicBool,
    /// Responses written after draining began.
    drained: AtomicU64,
    /// Open connections; the main thread waits for zero before exiting.
    active: Mutex<usize>,
    idle: Condvar,
    /// The listener's address once bound (used to wake the blocking accept).
    /// Set and read under this lock together with `draining`, so that either
    /// the main thread sees the flag or the signal thread sees the address.
    addr: Mutex<Option<SocketAddr>>,
    listener_closed: AtomicBool,
    /// Keep-alive connections waiting for their next request, by number:
    /// draining shuts their reading side, so that they close at once
    /// instead of at their next `POLL`.
    waiting: Mutex<std::collections::HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

/// A keep-alive connection listed in `Shared::waiting` while it waits.
struct Waiting<'a> {
    shared: &'a Shared,
    id: u64,
}

impl<'a> Waiting<'a> {
    /// List `stream`; `None` when draining has begun (close it).
    fn list(stream: &TcpStream, shared: &'a Shared) -> Option<Option<Waiting<'a>>> {
        let Ok(clone) = stream.try_clone() else {
            return Some(None); // found at its next POLL instead
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut waiting = lock(&shared.waiting);
        // Under the lock that `begin_drain` takes after raising the flag.
        if shared.draining.load(Ordering::SeqCst) {
            return None;
        }
        waiting.insert(id, clone);
        Some(Some(Waiting { shared, id }))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.shared.waiting).remove(&self.id);
    }
}

/// Counts an open connection; dropping it (thread end, or a failed spawn)
/// uncounts it and wakes the main thread.
struct ConnGuard(Arc<Shared>);

impl ConnGuard {
    fn new(shared: &Arc<Shared>) -> ConnGuard {
        *lock(&shared.active) += 1;
        ConnGuard(Arc::clone(shared))
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut active = lock(&self.0.active);
        *active -= 1;
        if *active == 0 {
            self.0.idle.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_ms(name: &str) -> Option<Duration> {
    let v = env_nonempty(name)?;
    match v.trim().parse::<u64>() {
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(_) => usage_exit(&format!(
            "{name} must be a number of milliseconds, got {v:?}"
        )),
    }
}

fn usage_exit(msg: &str) -> ! {
    eprintln!("app: {msg}");
    process::exit(2);
}

fn read_version() -> String {
    let raw = env_nonempty("APP_VERSION")
        .or_else(|| {
            std::fs::read_to_string("VERSION")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| "dev".to_string());
    // It goes into a header: no control characters.
    raw.trim()
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect()
}

fn main() {
    let started = Instant::now();
    let pid = process::id();

    let port: u16 = match std::env::var("PORT") {
        Ok(p) => match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => usage_exit(&format!("PORT must be a port number 1-65535, got {p:?}")),
        },
        Err(_) => usage_exit("PORT is not set (zdd sets it to the slot's port)"),
    };
    let status = match env_nonempty("APP_STATUS") {
        None => 200,
        Some(s) => match s.trim().parse::<u16>() {
            Ok(n) if (200..=599).contains(&n) => n,
            _ => usage_exit(&format!("APP_STATUS must be a status 200-599, got {s:?}")),
        },
    };
    let exit_code = match env_nonempty("APP_EXIT_CODE") {
        None => 3,
        Some(s) => match s.trim().parse::<i32>() {
            Ok(n) => n,
            Err(_) => usage_exit(&format!("APP_EXIT_CODE must be an integer, got {s:?}")),
        },
    };
    let ready_delay = env_ms("APP_READY_DELAY_MS");
    let exit_after = env_ms("APP_EXIT_AFTER_MS");
    let request_delay = env_ms("APP_REQUEST_DELAY_MS").unwrap_or(Duration::ZERO);
    let ignore_term = env_nonempty("APP_IGNORE_TERM").is_some_and(|v| v.trim() == "1");
    let naive_stop = match env_nonempty("APP_STOP").as_deref().map(str::trim) {
        None | Some("drain") => false,
        Some("naive") => true,
        Some(other) => usage_exit(&format!("APP_STOP must be drain or naive, got {other:?}")),
    };
    let version = read_version();

    if let Some(after) = exit_after {
        thread::spawn(move || {
            thread::sleep(after.saturating_sub(started.elapsed()));
            eprintln!("app crashing on purpose");
            process::exit(exit_code);
        });
    }

    let fixed_headers =
        format!("Content-Type: text/plain\r\nX-App-Version: {version}\r\nX-App-Pid: {pid}\r\n");
    let shared = Arc::new(Shared {
        config: Config {
            version,
            fixed_headers,
            status,
            request_delay,
        },
        draining: AtomicBool::new(false),
        drained: AtomicU64::new(0),
        active: Mutex::new(0),
        idle: Condvar::new(),
        addr: Mutex::new(None),
        listener_closed: AtomicBool::new(false),
        waiting: Mutex::new(std::collections::HashMap::new()),
        next_conn: AtomicU64::new(0),
    });

    // Signals are handled from the start, so that a stop during a slow
    // start-up is a clean exit 0 too.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGWINCH]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("app: cannot install signal handlers: {e}");
            process::exit(1);
        }
    };
    {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            for sig in signals.forever() {
                if sig == SIGTERM && ignore_term {
                    eprintln!("app ignoring SIGTERM (APP_IGNORE_TERM=1)");
                    continue;
                }
                begin_drain(&shared);
            }
        });
    }

    if let Some(d) = ready_delay {
        thread::sleep(d);
    }
    if shared.draining.load(Ordering::SeqCst) {
        // Stopped before it ever listened: nothing to drain.
        println!("app {} drained 0 in-flight, exiting", shared.config.version);
        process::exit(0);
    }

    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("app: cannot listen on 127.0.0.1:{port}: {e}");
            process::exit(1);
        }
    };
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)));
    let draining_already = {
        let mut a = lock(&shared.addr);
        *a = Some(addr);
        shared.draining.load(Ordering::SeqCst)
    };
    println!(
        "app {} listening on 127.0.0.1:{} pid {}",
        shared.config.version,
        addr.port(),
        pid
    );

    if !draining_already {
        accept_loop(&listener, &shared);
    }
    if naive_stop {
        drop(listener);
        shared.listener_closed.store(true, Ordering::SeqCst);
    } else {
        drain_accept_queue(listener, &shared);
    }

    let mut active = lock(&shared.active);
    while *active > 0 {
        active = shared.idle.wait(active).unwrap_or_else(|e| e.into_inner());
    }
    drop(active);
    println!(
        "app {} drained {} in-flight, exiting",
        shared.config.version,
        shared.drained.load(Ordering::SeqCst)
    );
    let _ = io::stdout().flush();
    process::exit(0);
}

/// Called from the signal thread: raise the flag, then wake the main thread
/// out of its blocking `accept()` by connecting to the listener ourselves.
fn begin_drain(shared: &Shared) {
    let addr = {
        let a = lock(&shared.addr);
        if shared.draining.swap(true, Ordering::SeqCst) {
            return; // already draining
        }
        *a
    };
    for conn in lock(&shared.waiting).values() {
        let _ = conn.shutdown(std::net::Shutdown::Read);
    }
    let Some(addr) = addr else {
        return; // not bound yet: main sees the flag right after binding
    };
    // The accepted wake-up connection sends nothing and is closed at once by
    // its handler. Retry in case the accept queue was momentarily full.
    for _ in 0..50 {
        if shared.listener_closed.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            drop(s);
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Blocking accept until draining begins.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => spawn_connection(stream, shared),
            Err(e) => accept_error(&e),
        }
        if shared.draining.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// The stop step of the contract: take everything the kernel has already
/// queued, then close the listener before anything else can queue.
fn drain_accept_queue(listener: TcpListener, shared: &Arc<Shared>) {
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("app: cannot make the listener non-blocking: {e}");
    }
    let mut stuck_since: Option<Instant> = None;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stuck_since = None;
                spawn_connection(stream, shared);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if transient(&e) => continue,
            Err(e) => {
                // e.g. out of file descriptors: retry for a while, then give up.
                let since = *stuck_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    eprintln!("app: giving up draining the accept queue: {e}");
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
    drop(listener);
    shared.listener_closed.store(true, Ordering::SeqCst);
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Interrupted | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

fn accept_error(e: &io::Error) {
    if transient(e) {
        return;
    }
    // EMFILE, ENFILE, ENOBUFS, ...: do not spin.
    eprintln!("app: accept failed: {e}");
    thread::sleep(Duration::from_millis(10));
}

fn spawn_connection(stream: TcpStream, shared: &Arc<Shared>) {
    let guard = ConnGuard::new(shared);
    let res = thread::Builder::new()
        .name("conn".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let shared = Arc::clone(&guard.0);
            serve_connection(stream, &shared);
            drop(guard);
        });
    if let Err(e) = res {
        // The closure (stream and guard) has been dropped: connection closed.
        eprintln!("app: cannot start a connection thread: {e}");
    }
}

/// What a parsed request head says.
#[derive(Clone, Copy)]
struct Head {
    method: Method,
    http11: bool,
    keep_alive: bool,
    content_length: u64,
    expect_continue: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    /// HEAD: like GET without the body.
    Head,
    /// POST, PUT, PATCH: the body's size is echoed.
    WithBody,
    /// GET and anything else.
    Other,
}

enum Wait {
    /// A complete head ends at this offset in the buffer.
    Head(usize),
    /// Close the connection without answering (EOF, idle, draining, error).
    Close,
    /// Answer with this status and close.
    Reject(u16),
}

fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    // accept() on a non-blocking listener may hand out non-blocking sockets
    // on some systems; this one must block (with timeouts).
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));

    // Per-connection buffers, reused for every request on it.
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut body: Vec<u8> = Vec::with_capacity(64);
    let mut served: u64 = 0;

    loop {
        let parsed = match wait_for_head(&mut stream, &mut buf, served, shared) {
            Wait::Head(n) => parse_head(&buf[..n]).map(|h| (n, h)),
            Wait::Close => return,
            Wait::Reject(status) => Err(status),
        };
        let (head_end, head) = match parsed {
            Ok(p) => p,
            Err(status) => {
                reject(&mut stream, &mut out, shared, status);
                linger_close(stream);
                return;
            }
        };
        served += 1;

        // The body: count it, discard it, keep the framing.
        let in_buf = (buf.len() - head_end) as u64;
        let from_buf = head.content_length.min(in_buf) as usize;
        buf.drain(..head_end + from_buf);
        let mut remaining = head.content_length - from_buf as u64;
        if remaining > 0
            && head.expect_continue
            && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        if remaining > 0 && !discard_body(&mut stream, &mut remaining) {
            return; // the client went away or stalled mid-body
        }

        if !shared.config.request_delay.is_zero() {
            thread::sleep(shared.config.request_delay);
        }

        let draining = shared.draining.load(Ordering::SeqCst);
        let close = !head.keep_alive || draining;
        body.clear();
        body.extend_from_slice(shared.config.version.as_bytes());
        if head.method == Method::WithBody {
            let _ = write!(body, " {}", head.content_length);
        }
        body.push(b'\n');
        let send_body = head.method != Method::Head;
        let status = shared.config.status;
        if !respond(
            &mut stream,
            &mut out,
            shared,
            status,
            &body,
            send_body,
            head,
            close,
        ) {
            return;
        }
        if draining {
            shared.drained.fetch_add(1, Ordering::SeqCst);
        }
        if close {
            linger_close(stream);
            return;
        }
    }
}

/// Reads until `buf` holds a complete request head. While nothing of a
/// request has arrived yet, wakes every `POLL` to look at the draining flag.
fn wait_for_head(stream: &mut TcpStream, buf: &mut Vec<u8>, served: u64, shared: &Shared) -> Wait {
    let mut chunk = [0u8; 8192];
    let mut last_progress = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    let mut listed = match served > 0 && buf.is_empty() {
        true => match Waiting::list(stream, shared) {
            None => return Wait::Close,
            Some(listed) => listed,
        },
        false => None,
    };
    loop {
        // Tolerate empty lines before a request line (RFC 9112 §2.2).
        let skip = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if skip > 0 {
            buf.drain(..skip);
        }
        if let Some(end) = find_head_end(buf) {
            return Wait::Head(end);
        }
        if buf.len() > MAX_HEAD {
            return Wait::Reject(431);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Wait::Close,
            Ok(n) => {
                // A request has started: draining must let it finish.
                drop(listed.take());
                buf.extend_from_slice(&chunk[..n]);
                last_progress = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let now = Instant::now();
                if !buf.is_empty() {
                    // A request has started: finish it, draining or not.
                    if now - last_progress > REQUEST_TIMEOUT {
                        return Wait::Reject(408);
                    }
                    continue;
                }
                if shared.draining.load(Ordering::SeqCst) {
                    if served > 0 {
                        return Wait::Close; // idle keep-alive connection
                    }
                    // Fresh connection (e.g. just taken from the accept
                    // queue): its request is on the way, give it a moment.
                    let deadline = *drain_deadline.get_or_insert(now + DRAIN_FIRST_REQUEST_GRACE);
                    if now >= deadline {
                        return Wait::Close;
                    }
                } else if now - last_progress > IDLE_TIMEOUT {
                    return Wait::Close;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Wait::Close,
        }
    }
}

/// Offset just past the blank line that ends the head (CRLF or bare LF).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses a request head; `Err(status)` means answer that and close.
fn parse_head(head: &[u8]) -> Result<Head, u16> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(400u16)?;
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(400),
    };
    if !is_token(method) || target.is_empty() || target.iter().any(|&c| c <= b' ' || c == 0x7f) {
        return Err(400);
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        v if v.starts_with(b"HTTP/") => return Err(505),
        _ => return Err(400),
    };

    let mut content_length: Option<u64> = None;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    for line in lines {
        if line.is_empty() {
            break; // the blank line that ends the head
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(400); // obsolete line folding
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(400u16)?;
        let name = &line[..colon];
        let value = trim_ows(&line[colon + 1..]);
        if !is_token(name) {
            return Err(400);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(value).ok_or(400u16)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(400);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked (or any other transfer coding) bodies are not
            // supported: ask for a Content-Length instead.
            return Err(411);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim_ows) {
                if token.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = http11 && value.eq_ignore_ascii_case(b"100-continue");
        }
    }

    let method = match method {
        b"HEAD" => Method::Head,
        b"POST" | b"PUT" | b"PATCH" => Method::WithBody,
        _ => Method::Other,
    };
    Ok(Head {
        method,
        http11,
        keep_alive: !conn_close && (http11 || conn_keep_alive),
        content_length: content_length.unwrap_or(0),
        expect_continue,
    })
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    // A list of identical values ("5, 5") is allowed by RFC 9110 §8.6.
    let mut result: Option<u64> = None;
    for part in v.split(|&b| b == b',').map(trim_ows) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        if result.is_some_and(|r| r != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

/// Reads and throws away `remaining` body bytes. False if the client closed
/// or stalled for `REQUEST_TIMEOUT`.
fn discard_body(stream: &mut TcpStream, remaining: &mut u64) -> bool {
    let mut chunk = [0u8; 16384];
    let mut last_progress = Instant::now();
    while *remaining > 0 {
        let want = (*remaining).min(chunk.len() as u64) as usize;
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return false,
            Ok(n) => {
                *remaining -= n as u64;
                last_progress = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if last_progress.elapsed() > REQUEST_TIMEOUT {
                    return false;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        411 => "Length Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// Writes one response. `send_body` is false for HEAD (the headers still
/// describe the body a GET would get). False if the write failed.
#[allow(clippy::too_many_arguments)]
fn respond(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    shared: &Shared,
    status: u16,
    body: &[u8],
    send_body: bool,
    head: Head,
    close: bool,
) -> bool {
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason(status));
    out.extend_from_slice(shared.config.fixed_headers.as_bytes());
    // 204 and 304 responses never carry a body (APP_STATUS may ask for them).
    let bodiless = status == 204 || status == 304;
    if !bodiless {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if !head.http11 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if send_body && !bodiless {
        out.extend_from_slice(body);
    }
    stream.write_all(out).is_ok()
}

/// Answers an unusable request with `status` and `Connection: close`.
fn reject(stream: &mut TcpStream, out: &mut Vec<u8>, shared: &Shared, status: u16) {
    let mut body = Vec::with_capacity(shared.config.version.len() + 1);
    body.extend_from_slice(shared.config.version.as_bytes());
    body.push(b'\n');
    let head = Head {
        method: Method::Other,
        http11: true,
        keep_alive: false,
        content_length: 0,
        expect_continue: false,
    };
    respond(stream, out, shared, status, &body, true, head, true);
}

/// Closes after the last response without resetting it: send FIN, then read
/// and discard whatever the client still sends (a pipelined request, the
/// rest of a rejected body) until it closes too. Closing a socket with unread
/// input makes the kernel send RST, which can destroy the response in flight.
fn linger_close(mut stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}
