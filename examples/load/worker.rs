//! One client: a loop of requests (GET or POST, kept alive or not, at a
//! rate or flat out), each timed and counted, never retried.

use std::io::BufReader;
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::args::KeepAlive;
use crate::errors::{io_kind, note, ErrKind, LAST_IO_ERROR};
use crate::http::{first_token, read_response, Conn, Rd, BODY_PREFIX};
use crate::stats::{Sample, Shared, Stats, NO_VERSION, REASON_DURATION, REASON_REQUESTS};

pub(crate) struct Worker<'a> {
    pub(crate) sh: &'a Shared,
    pub(crate) keepalive: bool,
    pub(crate) get_req: Vec<u8>,
    pub(crate) post_req: Vec<u8>,
    /// Where the body starts in `post_req`.
    pub(crate) post_head_len: usize,
    pub(crate) conn: Option<Conn>,
    pub(crate) line: Vec<u8>,
    pub(crate) prefix: Vec<u8>,
    pub(crate) stats: Stats,
    /// The number of the request under way, which spreads slow bodies.
    pub(crate) ticket: u64,
}

impl<'a> Worker<'a> {
    pub(crate) fn new(sh: &'a Shared, idx: usize, body: &[u8]) -> Worker<'a> {
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
            ticket: 0,
        }
    }

    pub(crate) fn connect(&mut self, deadline: Instant) -> Result<(), ErrKind> {
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
    pub(crate) fn request(&mut self, post: bool, deadline: Instant) -> Result<u16, ErrKind> {
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
        let (low, high) = self.sh.cfg.slow_body;
        let slow = post && !high.is_zero();
        let sent = if slow {
            // Evenly over [low, high], in no fixed order (golden-ratio steps).
            let step = (self.ticket as f64 * 0.618_033_988_75).fract();
            let delay = low + (high - low).mul_f64(step);
            let (head, body) = req.split_at(self.post_head_len);
            conn.r.get_mut().write_all(head).and_then(|()| {
                std::thread::sleep(delay);
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

    pub(crate) fn run(mut self) -> Stats {
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
            self.ticket = ticket;
            let res = self.request(post, t0 + cfg.timeout);
            let latency_us = t0.elapsed().as_micros() as u64;
            self.record(post, t0, latency_us, res);
        }
        self.stats
    }

    pub(crate) fn record(
        &mut self,
        post: bool,
        t0: Instant,
        latency_us: u64,
        res: Result<u16, ErrKind>,
    ) {
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
