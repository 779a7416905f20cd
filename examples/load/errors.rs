//! How a request failed: the error kinds the report counts, and the first
//! OS error text seen per kind.

use std::io::{self, ErrorKind};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ErrKind {
    ConnectRefused = 0,
    ConnectOther,
    Reset,
    EofBeforeResponse,
    KeepaliveClosed,
    Timeout,
    BadResponse,
    Other,
}

pub(crate) const N_ERR: usize = 8;
pub(crate) const ERR_NAMES: [&str; N_ERR] = [
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
    pub(crate) static LAST_IO_ERROR: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
}

pub(crate) fn note(e: &io::Error) {
    LAST_IO_ERROR.with(|l| *l.borrow_mut() = Some(e.to_string()));
}

/// Classify an I/O error seen after the connection was established.
pub(crate) fn io_kind(e: &io::Error, reused: bool, got_any: bool) -> ErrKind {
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

pub(crate) fn eof_kind(reused: bool, got_any: bool) -> ErrKind {
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
