// Example app for zdd on Node.js (>= 18), `http` module only, no npm deps.
//
// The contract (zdd SPEC §2): listen on 127.0.0.1:$PORT; GET/HEAD (any path)
// answer 200 "<version>\n", POST/PUT/PATCH answer 200 "<version> <body
// bytes>\n"; the version is $APP_VERSION, else ./VERSION, else "dev". On
// SIGTERM (also SIGINT, SIGQUIT): stop accepting, finish the requests in
// flight, exit 0.
//
// With zdd's switch (the default nginx.mode) a plain `server.close()` would
// lose nothing: zdd signals the old slot only after nginx stopped sending it
// new requests and its accept queue is empty. What follows is for
// round-robin mode, where nginx keeps queueing connections for the old slot
// until it refuses them. Why the stop is not just `server.close()` there:
//
// 1. close() closes the listening socket at once. Connections the kernel has
//    already accepted (handshake done, request possibly sent) but that still
//    wait in the listen queue for node's event loop to pick them up are then
//    reset. nginx retries a reset GET on the other slot, but answers a reset
//    POST with 502. Node has no "accept until it would block" call. What
//    it has: while the listener is readable, every turn of the event loop
//    accepts (libuv >= 1.45, as in node 20, accepts one connection per turn;
//    older ones accept until EAGAIN) and emits 'connection'. So after the
//    signal we keep serving and look once per loop turn (setImmediate, which
//    runs right after the poll phase): the first whole turn that brought no
//    new 'connection' found the listener not readable, i.e. the queue empty,
//    and we close the listener right there, in the same turn. From then on
//    a connect is refused, which nginx always retries on the other slot. A
//    fixed "quiet period" (say 10 ms without a connection) does not work:
//    under steady load nginx keeps opening connections to this slot every
//    millisecond until it is refused, so the quiet period never comes.
//
// 2. Since node 19, server.close() also calls closeIdleConnections(), which
//    destroys every connection that has not started a request yet —
//    including those accepted in the last loop iteration whose request bytes
//    are in the kernel buffer but not read yet. Those are reset too. So we
//    close only the listener (net.Server's close) and handle connections
//    ourselves: an idle keep-alive connection is closed at once, a fresh
//    connection gets a grace period for its first request, and requests in
//    flight are answered with `Connection: close`, after which node closes
//    the socket. 'close' fires when the last connection is gone; then exit 0.
//
// 3. The close can still reset a connection that reaches the queue between
//    the loop's poll and the close, so that turn must be short: reads on
//    open sockets are paused while we wait for it (see pauseReads). With
//    that, under 32-64 concurrent clients through nginx, 8 swaps cost 0-3
//    POST 502s, against ~40 with a plain server.close(). A server that can
//    call accept() itself until EAGAIN and close right after (see the Rust
//    and Python examples) has a window of microseconds instead.

'use strict';

const http = require('http');
const net = require('net');
const fs = require('fs');

// How long a connection that has not sent its first request yet may take to
// send it once we are draining (it was accepted, so it is owed an answer).
const DRAIN_FIRST_REQUEST_GRACE_MS = 2000;
// Upper bound on waiting for a loop turn without a new connection.
const MAX_QUEUE_DRAIN_MS = 5000;

const port = Number(process.env.PORT);
if (!process.env.PORT || !Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`app: PORT must be a port number 1-65535, got ${JSON.stringify(process.env.PORT)}`);
  process.exit(2);
}

function readVersion() {
  if (process.env.APP_VERSION && process.env.APP_VERSION.trim()) {
    return process.env.APP_VERSION.trim();
  }
  try {
    const v = fs.readFileSync('VERSION', 'utf8').trim();
    if (v) return v;
  } catch (_) {
    // no VERSION file
  }
  return 'dev';
}
// It goes into a header: no control characters.
const version = readVersion().replace(/[\x00-\x1f\x7f]/g, '_');

let draining = false;
let drained = 0; // responses written after the stop signal
let accepted = 0; // 'connection' events so far
// Per open socket: { requests: started, busy: unfinished, idleAt: bytesRead
// when its last response finished }.
const sockets = new Map();

const server = http.createServer((req, res) => {
  const state = sockets.get(req.socket);
  if (state) {
    state.requests += 1;
    state.busy += 1;
  }
  res.on('close', () => {
    if (state) {
      state.busy -= 1;
      state.idleAt = req.socket.bytesRead;
    }
  });

  let bytes = 0;
  req.on('data', (chunk) => {
    bytes += chunk.length;
  });
  req.on('end', () => {
    const withBody = req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH';
    const body = withBody ? `${version} ${bytes}\n` : `${version}\n`;
    const headers = {
      'Content-Type': 'text/plain',
      'Content-Length': Buffer.byteLength(body),
      'X-App-Version': version,
      'X-App-Pid': String(process.pid),
    };
    if (draining) {
      // Node closes the socket after this response.
      headers.Connection = 'close';
      drained += 1;
    }
    res.writeHead(200, headers);
    res.end(req.method === 'HEAD' ? undefined : body);
  });
});

// Keep idle keep-alive connections longer than a proxy would keep them.
server.keepAliveTimeout = 75_000;

server.on('connection', (socket) => {
  accepted += 1;
  sockets.set(socket, { requests: 0, busy: 0, idleAt: 0 });
  socket.on('close', () => sockets.delete(socket));
  if (draining) armGrace(socket);
});

server.on('clientError', (err, socket) => {
  if (socket.writable && err.code !== 'ECONNRESET') {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
  } else {
    socket.destroy();
  }
});

server.on('error', (err) => {
  console.error(`app: cannot listen on 127.0.0.1:${port}: ${err.message}`);
  process.exit(1);
});

// Idle: no response pending and not a byte received since the last one.
function isIdle(socket, state) {
  return state.busy === 0 && socket.bytesRead === state.idleAt;
}

// While draining: a connection that has not sent a single byte is closed
// after the grace period (unref'd so that it never delays the exit itself).
function armGrace(socket) {
  setTimeout(() => {
    const state = sockets.get(socket);
    if (state && state.requests === 0 && isIdle(socket, state)) socket.destroy();
  }, DRAIN_FIRST_REQUEST_GRACE_MS).unref();
}

function closeListener() {
  net.Server.prototype.close.call(server, () => {
    console.log(`app ${version} drained ${drained} in-flight, exiting`);
    process.exit(0);
  });
  resumeReads();
  // One more turn, so that requests that arrived on paused sockets are read.
  setImmediate(() => {
    for (const [socket, state] of sockets) {
      if (state.requests === 0) {
        armGrace(socket); // fresh: its first request may still be on the way
      } else if (isIdle(socket, state)) {
        socket.destroy(); // idle keep-alive connection
      }
      // Otherwise a request is in flight: its response carries
      // `Connection: close`, and node closes the socket after it.
    }
  });
}

// Reads on open sockets are paused while we look for an empty accept queue,
// so that the deciding loop turn does nothing but poll the listener: its
// poll phase is the window in which a new connection could still slip into
// the queue and be reset by the close (measured: ~20 us paused, 0.5-5 ms
// under load unpaused). This is the same `_handle.readStop()/readStart()`
// node's http server uses to pause a connection; we leave `_handle.reading`
// alone, so the server's own pause/resume bookkeeping stays right.
const paused = new Set();
function pauseReads() {
  for (const socket of sockets.keys()) {
    if (!paused.has(socket) && socket._handle && socket._handle.reading) {
      socket._handle.readStop();
      paused.add(socket);
    }
  }
}
function resumeReads() {
  for (const socket of paused) {
    if (!socket.destroyed && socket._handle && socket._handle.reading) {
      socket._handle.readStart();
    }
  }
  paused.clear();
}

function stop() {
  if (draining) return;
  draining = true;
  const started = Date.now();
  // `seen` is first taken in a check phase, so each later check covers one
  // whole poll phase (the signal itself may arrive after that turn's accept).
  let seen = -1;
  const check = () => {
    if (accepted !== seen && Date.now() - started < MAX_QUEUE_DRAIN_MS) {
      seen = accepted;
      pauseReads(); // including connections accepted in this turn
      setImmediate(check);
      return;
    }
    if (accepted !== seen) {
      console.error(`app: connections kept coming for ${MAX_QUEUE_DRAIN_MS} ms; closing the listener anyway`);
    }
    closeListener();
  };
  setImmediate(check);
}

for (const sig of ['SIGTERM', 'SIGINT', 'SIGQUIT']) process.on(sig, stop);

server.listen({ port, host: '127.0.0.1', backlog: 511 }, () => {
  console.log(`app ${version} listening on 127.0.0.1:${port} pid ${process.pid}`);
});
