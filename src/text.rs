//! Small text helpers for what users read: the `out!` line on stdout, and
//! durations and times written the way every message writes them.

use std::time::{Duration, SystemTime};

/// A result line on stdout. A closed stdout (`zdd status | head -1`) is
/// not an error worth a panic: the work is done either way.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use out;

/// `850ms`, `12.3s`.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// A duration as [`fmt_ms`] writes it.
pub fn fmt(d: Duration) -> String {
    fmt_ms(d.as_millis() as u64)
}

/// Now, as zdd writes times everywhere (RFC 3339, UTC, seconds).
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_short() {
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(12_345), "12.3s");
        assert_eq!(fmt(Duration::from_millis(9_999)), "9999ms");
    }
}
