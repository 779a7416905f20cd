//! Small text helpers for what users read: the `out!` line on stdout,
//! durations and times written the way every message writes them, and the
//! escaping of text that came from outside zdd (an app's argv and output,
//! git's and nginx's messages) so that it can never steer a terminal.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

/// A result line on stdout, made [`printable`]. A closed stdout (`zdd
/// status | head -1`) is not an error worth a panic: the work is done
/// either way.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($arg)*);
        let _ = writeln!(std::io::stdout(), "{}", $crate::text::printable(&line));
    }};
}
pub(crate) use out;

/// Text from outside zdd on one line: every control character (newline and
/// tab too), DEL, the C1 controls and the bidirectional overrides written
/// as a visible escape (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`), the way
/// `ls -b` and `systemctl` show such names. Nothing it returns can move the
/// cursor, end a line or set a terminal's title.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_but(text, &[])
}

/// The last line of defence for everything zdd prints: [`escape`], but
/// zdd's own line breaks (`\n`) and indents (`\t`) stay as they are.
pub fn printable(text: &str) -> Cow<'_, str> {
    escape_but(text, &['\n', '\t'])
}

fn escape_but<'a>(text: &'a str, keep: &[char]) -> Cow<'a, str> {
    let unsafe_char = |c: char| !keep.contains(&c) && needs_escape(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// [`printable`] for raw bytes (an app's log): appended to `out`, with
/// every byte that is not UTF-8 written as `\xNN`. With `more`, an
/// unfinished character at the end of `input` is left for the next call
/// (a read may end in the middle of one): the number of bytes used is
/// returned, and the caller hands the rest back in front of what follows.
pub fn printable_bytes(mut input: &[u8], more: bool, out: &mut Vec<u8>) -> usize {
    let total = input.len();
    // Plain ASCII lines, what logs mostly are: as they are.
    let plain = |b: &u8| matches!(b, b' '..=b'~' | b'\n' | b'\t');
    if input.iter().all(plain) {
        out.extend_from_slice(input);
        return total;
    }
    let invalid = |bytes: &[u8], out: &mut Vec<u8>| {
        for b in bytes {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
    };
    loop {
        match std::str::from_utf8(input) {
            Ok(text) => {
                out.extend_from_slice(printable(text).as_bytes());
                return total;
            }
            Err(e) => {
                let (valid, rest) = input.split_at(e.valid_up_to());
                let valid = std::str::from_utf8(valid).expect("valid up to here");
                out.extend_from_slice(printable(valid).as_bytes());
                match e.error_len() {
                    None if more => return total - rest.len(),
                    None => {
                        invalid(rest, out);
                        return total;
                    }
                    Some(n) => {
                        invalid(&rest[..n], out);
                        input = &rest[n..];
                    }
                }
            }
        }
    }
}

/// C0 and C1 controls, DEL, and the Unicode marks that reorder or hide
/// text on screen (bidirectional embeddings, overrides and isolates).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Write `bytes` to stdout as they are (a man page, a completion script,
/// a rendered config). A reader that stopped reading (`zdd man | head`)
/// ends the output quietly; any other write error is reported.
pub fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

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
    fn outside_text_cannot_steer_the_terminal() {
        // An argv that tried to print a fake line and set the title.
        let forged = "x\n\x1b[32mstate matches\x1b[0m\r\x1b]0;owned\x07\u{202e}";
        let e = escape(forged);
        assert_eq!(
            e,
            "x\\n\\x1b[32mstate matches\\x1b[0m\\r\\x1b]0;owned\\x07\\u{202e}"
        );
        assert!(!e.chars().any(needs_escape));
        assert!(matches!(escape("plain text, é"), Cow::Borrowed(_)));
        // zdd's own lines keep their breaks; an ESC among them does not pass.
        assert_eq!(printable("a\n\tb\x1bc\u{9b}"), "a\n\tb\\x1bc\\x9b");
    }

    #[test]
    fn log_bytes_are_printable_and_unfinished_characters_wait() {
        let mut out = Vec::new();
        let input = "ok \t\x1b]0;owned\x07 \u{202e}é\r\n".as_bytes();
        assert_eq!(printable_bytes(input, false, &mut out), input.len());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ok \t\\x1b]0;owned\\x07 \\u{202e}é\\r\n"
        );
        // Bytes that are not UTF-8, and a character cut by a read.
        let mut out = Vec::new();
        let e_acute = "é".as_bytes();
        let input = [b"a\xff\xfeb".as_slice(), &e_acute[..1]].concat();
        let used = printable_bytes(&input, true, &mut out);
        assert_eq!(used, input.len() - 1, "the cut character waits");
        let rest = [&input[used..], &e_acute[1..]].concat();
        assert_eq!(printable_bytes(&rest, true, &mut out), rest.len());
        assert_eq!(String::from_utf8(out).unwrap(), "a\\xff\\xfebé");
        // At the end, a cut character is written as the bytes it is.
        let mut out = Vec::new();
        printable_bytes(&e_acute[..1], false, &mut out);
        assert_eq!(out, b"\\xc3");
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(12_345), "12.3s");
        assert_eq!(fmt(Duration::from_millis(9_999)), "9999ms");
    }
}
