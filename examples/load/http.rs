//! Reading one HTTP/1.1 response off a connection, by hand and bounded:
//! status line, headers, a body by length, chunks or until EOF, keeping the
//! first bytes of the body (where the app's version is).

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::errors::{eof_kind, io_kind, ErrKind};

const MAX_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 256;
/// How much of the body is kept (the version is its first token).
pub(crate) const BODY_PREFIX: usize = 256;
pub(crate) const MAX_VERSION_LEN: usize = 64;

pub(crate) struct Conn {
    pub(crate) r: BufReader<TcpStream>,
    /// Completed requests on this connection; > 0 means it is being reused.
    pub(crate) reqs: u64,
    /// Read timeout currently set on the socket.
    pub(crate) cur_timeout: Duration,
}

/// Reader over one response, tracking whether any byte has arrived.
pub(crate) struct Rd<'a> {
    pub(crate) c: &'a mut Conn,
    pub(crate) deadline: Instant,
    pub(crate) reused: bool,
    pub(crate) got_any: bool,
}

impl Rd<'_> {
    /// Make sure the buffer holds at least one byte; EOF is an error.
    pub(crate) fn fill(&mut self) -> Result<(), ErrKind> {
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
    pub(crate) fn fill_or_eof(&mut self) -> Result<bool, ErrKind> {
        match self.fill() {
            Ok(()) => Ok(true),
            Err(ErrKind::EofBeforeResponse) | Err(ErrKind::KeepaliveClosed) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn read_line(&mut self, line: &mut Vec<u8>) -> Result<(), ErrKind> {
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
    pub(crate) fn read_body(&mut self, mut n: u64, prefix: &mut Vec<u8>) -> Result<(), ErrKind> {
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

    pub(crate) fn read_to_eof(&mut self, prefix: &mut Vec<u8>) -> Result<(), ErrKind> {
        while self.fill_or_eof()? {
            let buf = self.c.r.buffer();
            let n = buf.len();
            keep_prefix(prefix, buf);
            self.c.r.consume(n);
        }
        Ok(())
    }
}

pub(crate) fn keep_prefix(prefix: &mut Vec<u8>, data: &[u8]) {
    let room = BODY_PREFIX.saturating_sub(prefix.len());
    if room > 0 {
        prefix.extend_from_slice(&data[..data.len().min(room)]);
    }
}

pub(crate) fn trim_crlf(l: &[u8]) -> &[u8] {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    l.strip_suffix(b"\r").unwrap_or(l)
}

pub(crate) fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

pub(crate) fn parse_u64(s: &[u8], radix: u32) -> Option<u64> {
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
pub(crate) fn parse_status_line(line: &[u8]) -> Option<(u16, bool)> {
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
pub(crate) fn first_token(body: &[u8]) -> &[u8] {
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
pub(crate) fn read_response(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// Serve `raw` as the whole answer on a loopback socket and read it.
    fn read(raw: &'static [u8]) -> Result<(u16, bool, Vec<u8>), ErrKind> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(raw).unwrap();
        });
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut conn = Conn {
            r: BufReader::new(stream),
            reqs: 0,
            cur_timeout: Duration::from_secs(5),
        };
        let mut rd = Rd {
            c: &mut conn,
            deadline: Instant::now() + Duration::from_secs(5),
            reused: false,
            got_any: false,
        };
        let (mut line, mut prefix) = (Vec::new(), Vec::new());
        let got = read_response(&mut rd, &mut line, &mut prefix);
        server.join().unwrap();
        got.map(|(status, reusable)| (status, reusable, prefix))
    }

    #[test]
    fn status_lines_and_versions() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 OK\r\n"),
            Some((200, false))
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 502 Bad Gateway\r\n"),
            Some((502, true))
        );
        assert_eq!(parse_status_line(b"SSH-2.0-x\r\n"), None);
        assert_eq!(first_token(b"  v2 2048\n"), b"v2");
        assert_eq!(first_token(b""), b"");
        assert_eq!(parse_u64(b"1f", 16), Some(31));
        assert_eq!(parse_u64(b"", 10), None);
    }

    #[test]
    fn bodies_by_length_by_chunks_and_to_the_end() {
        let (status, reusable, body) =
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nv1\n").unwrap();
        assert_eq!(
            (status, reusable, body.as_slice()),
            (200, true, b"v1\n".as_slice())
        );
        let (status, _, body) = read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nv2 \r\n4\r\n2048\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((status, body.as_slice()), (200, b"v2 2048".as_slice()));
        let (status, reusable, body) =
            read(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\nbad gateway").unwrap();
        assert_eq!(
            (status, reusable, body.as_slice()),
            (502, false, b"bad gateway".as_slice())
        );
    }

    #[test]
    fn a_connection_closed_early_is_counted_as_such() {
        assert_eq!(read(b"").unwrap_err(), ErrKind::EofBeforeResponse);
        assert_eq!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nv1").unwrap_err(),
            ErrKind::EofBeforeResponse
        );
        assert_eq!(read(b"garbage\r\n\r\n").unwrap_err(), ErrKind::BadResponse);
    }
}
