// A plain express 4 app: nothing in it knows about zdd. It answers every
// path with the release in ./VERSION (and, for a POST, the size of the body
// it read), and stops on SIGTERM the way express's own docs show
// ("Health checks and graceful shutdown"): server.close(), which stops
// accepting and lets the requests in flight finish.
const fs = require('fs');
const express = require('express');

const version = fs.readFileSync('VERSION', 'utf8').trim();
const app = express();
app.use(express.raw({ type: '*/*', limit: '1mb' }));

app.all('*', (req, res) => {
  res.type('text/plain');
  if (req.method === 'POST') {
    res.send(`${version} ${Buffer.isBuffer(req.body) ? req.body.length : 0}\n`);
  } else {
    res.send(`${version}\n`);
  }
});

const server = app.listen(Number(process.env.PORT), '127.0.0.1');

process.on('SIGTERM', () => {
  server.close(() => {
    console.log('HTTP server closed');
  });
});
