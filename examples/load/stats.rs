//! What the workers share (the config, the clock, why the run stopped) and
//! what each one counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::args::Config;
use crate::errors::{ErrKind, N_ERR};

/// At most this many distinct versions are told apart; the rest count as
/// `(other)`.
const MAX_DISTINCT_VERSIONS: usize = 256;
const OTHER_VERSION: &[u8] = b"(other)";

pub(crate) const REASON_NONE: u8 = 0;
pub(crate) const REASON_DURATION: u8 = 1;
pub(crate) const REASON_REQUESTS: u8 = 2;
pub(crate) const REASON_SIGNAL: u8 = 3;
pub(crate) const REASON_STOP_FILE: u8 = 4;

pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) start: Instant,
    /// `start` as microseconds since the Unix epoch, for the samples file.
    pub(crate) start_unix_us: u64,
    pub(crate) run_deadline: Instant,
    pub(crate) tickets: AtomicU64,
    pub(crate) stop: AtomicBool,
    pub(crate) term: Arc<AtomicBool>,
    pub(crate) reason: AtomicU8,
}

impl Shared {
    pub(crate) fn set_reason(&self, r: u8) {
        let _ = self
            .reason
            .compare_exchange(REASON_NONE, r, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Checked between requests: should this worker stop now?
    pub(crate) fn should_stop(&self) -> bool {
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

#[derive(Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) start_us: u64,
    pub(crate) latency_us: u64,
    pub(crate) status: u16,
    pub(crate) post: bool,
    pub(crate) err: Option<ErrKind>,
    pub(crate) version: u32,
}

pub(crate) const NO_VERSION: u32 = u32::MAX;

pub(crate) struct Stats {
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    pub(crate) by_status: Vec<u64>,
    pub(crate) errors: [u64; N_ERR],
    /// [GET, POST] x [requests, failed]
    pub(crate) by_method: [[u64; 2]; 2],
    pub(crate) unexpected_version: u64,
    pub(crate) ver_ids: HashMap<Vec<u8>, u32>,
    pub(crate) ver_names: Vec<Vec<u8>>,
    pub(crate) ver_counts: Vec<u64>,
    pub(crate) latencies_us: Vec<u32>,
    pub(crate) samples: Vec<Sample>,
    /// First error message seen per kind (where one is known).
    pub(crate) examples: [Option<String>; N_ERR],
}

impl Stats {
    pub(crate) fn new(reserve: usize) -> Stats {
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

    pub(crate) fn intern(&mut self, tok: &[u8]) -> u32 {
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
