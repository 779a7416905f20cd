#!/usr/bin/env python3
"""Example app for zdd on Python 3 (3.8+), standard library only.

The contract (zdd SPEC §2): listen on 127.0.0.1:$PORT; GET/HEAD (any path)
answer 200 "<version>\\n", POST/PUT/PATCH answer 200 "<version> <body
bytes>\\n"; the version is $APP_VERSION, else ./VERSION, else "dev". On
SIGTERM (also SIGINT, SIGQUIT): stop accepting, finish the requests in
flight, exit 0.

With zdd's switch (the default nginx.mode) finishing the requests in flight
is all the stop needs: zdd signals the old slot only after nginx stopped
sending it new requests and its accept queue is empty. What follows matters
in round-robin mode. The stop, done right there: closing a listening socket resets the connections that
the kernel has already accepted but that still wait in its accept queue, and
nginx answers a reset POST with 502. So on the signal the main loop accepts
from the (non-blocking) listener until accept() raises BlockingIOError,
hands those connections to handler threads like any other, and closes the
listener in the same step. Then it waits for the handler threads: a request
in flight is finished and answered with `Connection: close`; an idle
keep-alive connection is closed; a connection that has not sent anything yet
gets a short grace period for its first request.
"""

import http.server
import os
import select
import selectors
import signal
import socket
import socketserver
import sys
import threading
import time

# How often a connection waiting for its next request looks at the draining flag.
POLL_S = 0.05
# How long a keep-alive connection may sit idle between requests.
IDLE_TIMEOUT_S = 75.0
# How long reading or writing a started request may stall.
REQUEST_TIMEOUT_S = 30.0
# While draining: how long a connection that has sent nothing yet (e.g. one
# just taken from the accept queue) gets to send its first request.
DRAIN_FIRST_REQUEST_GRACE_S = 2.0


def read_version():
    v = os.environ.get("APP_VERSION", "").strip()
    if not v:
        try:
            with open("VERSION", encoding="utf-8") as f:
                v = f.read().strip()
        except OSError:
            v = ""
    # It goes into a header: no control characters.
    return "".join("_" if ord(c) < 32 or ord(c) == 127 else c for c in (v or "dev"))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = REQUEST_TIMEOUT_S
    disable_nagle_algorithm = True
    wbufsize = -1  # buffer headers and body; one send per response

    def handle(self):
        first = True
        while self.wait_for_request(first):
            first = False
            self.handle_one_request()
            if self.close_connection:
                return

    def wait_for_request(self, first):
        """True once the start of a request is readable (in the socket or in
        rfile's buffer); False to close: EOF, idle too long, or draining."""
        sock = self.connection
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        since = time.monotonic()
        grace_until = None
        while True:
            if self.peek_nonblocking():
                return True
            try:
                readable = poller.poll(POLL_S * 1000)
            except OSError:
                return False
            if readable:
                # Readable but nothing to read: the client closed (or an error).
                return bool(self.peek_nonblocking())
            now = time.monotonic()
            if self.server.draining:
                if not first:
                    return False  # idle keep-alive connection
                if grace_until is None:
                    grace_until = now + DRAIN_FIRST_REQUEST_GRACE_S
                if now >= grace_until:
                    return False
            elif now - since > IDLE_TIMEOUT_S:
                return False

    def peek_nonblocking(self):
        # rfile is buffered: a pipelined request may already sit in its
        # buffer. With the socket non-blocking, peek() returns the buffered
        # bytes, or what one recv() gets, or b"" if there is nothing yet.
        self.connection.settimeout(0)
        try:
            return self.rfile.peek(1)
        except OSError:
            return b""
        finally:
            self.connection.settimeout(REQUEST_TIMEOUT_S)

    def respond(self, body_bytes=None):
        version = self.server.version
        body = (f"{version}\n" if body_bytes is None else f"{version} {body_bytes}\n").encode()
        draining = self.server.draining
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-App-Version", version)
        self.send_header("X-App-Pid", str(os.getpid()))
        if draining:
            self.send_header("Connection", "close")  # also sets close_connection
        elif self.request_version == "HTTP/1.0" and not self.close_connection:
            self.send_header("Connection", "keep-alive")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if draining:
            self.server.count_drained()

    def read_body(self):
        """Reads and discards the body; returns its size, or None after
        answering an error."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(411, "chunked bodies are not supported; send Content-Length")
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            self.send_error(400, "bad Content-Length")
            return None
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                self.close_connection = True
                return None  # the client went away
            remaining -= len(chunk)
        return length

    def do_GET(self):
        if self.read_body() is not None:
            self.respond()

    def do_POST(self):
        n = self.read_body()
        if n is not None:
            self.respond(n)

    do_HEAD = do_DELETE = do_OPTIONS = do_GET
    do_PUT = do_PATCH = do_POST

    def log_message(self, format, *args):
        pass  # no log line per request


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the handler threads
    block_on_close = True
    request_queue_size = 511

    def __init__(self, port, version):
        self.version = version
        self.draining = False
        self.drained = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), Handler)
        self.socket.setblocking(False)

    def server_bind(self):
        # HTTPServer.server_bind would also look up the host's FQDN; skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def count_drained(self):
        with self.lock:
            self.drained += 1

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def accept_pending(self):
        """Accepts until the kernel's accept queue is empty."""
        while True:
            try:
                conn, addr = self.socket.accept()
            except BlockingIOError:
                return
            except (InterruptedError, ConnectionAbortedError):
                continue
            except OSError as e:  # e.g. out of file descriptors
                print(f"app: accept failed: {e}", file=sys.stderr, flush=True)
                time.sleep(0.01)
                return
            self.process_request(conn, addr)  # one thread per connection

    def run(self):
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())  # a signal wakes select() at once

        def on_signal(signum, frame):
            self.draining = True

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, on_signal)

        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        print(
            f"app {self.version} listening on 127.0.0.1:{self.server_port} pid {os.getpid()}",
            flush=True,
        )
        while not self.draining:
            for key, _ in sel.select(timeout=1.0):
                if key.fileobj is wake_r:
                    try:
                        wake_r.recv(512)
                    except BlockingIOError:
                        pass
                elif not self.draining:
                    self.accept_pending()

        # The stop: empty the accept queue, then close the listener at once.
        sel.unregister(self.socket)
        self.accept_pending()
        self.socket.close()
        # Wait for the requests in flight (ThreadingMixIn joins its threads).
        self.server_close()
        print(f"app {self.version} drained {self.drained} in-flight, exiting", flush=True)


def main():
    raw = os.environ.get("PORT", "")
    try:
        port = int(raw)
        if not 1 <= port <= 65535:
            raise ValueError
    except ValueError:
        print(f"app: PORT must be a port number 1-65535, got {raw!r}", file=sys.stderr)
        return 2
    version = read_version()
    try:
        server = Server(port, version)
    except OSError as e:
        print(f"app: cannot listen on 127.0.0.1:{port}: {e}", file=sys.stderr)
        return 1
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
