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

mod args;
mod errors;
mod http;
mod report;
mod stats;
mod worker;

use std::io::{self, Write};
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::Arc;
use std::time::Instant;

use stats::{Shared, Stats, REASON_NONE};
use worker::Worker;

fn main() {
    let cfg = args::parse();

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

    let (report, failed, p50, p99) = report::summarize(&all, &sh, elapsed);
    let requests = report["requests"].as_u64().unwrap_or(0);
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{report}");
    let _ = out.flush();
    eprintln!("load: {requests} requests, {failed} failed, p50 {p50} ms, p99 {p99} ms");
    exit(if failed == 0 { 0 } else { 1 });
}
