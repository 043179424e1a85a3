// The fallback backend when nginx is not installed: the same four routes the nginx backend serves.
//   GET /small  102 bytes   GET /1mb  1 MiB   GET /1gb  1 GiB (streamed)   POST /post  reads the body, answers "ok"
// Prints {"port":N} once listening. Env: PORT (0 = any free port).
import * as http from 'node:http';

export const SMALL = Buffer.from('hello '.repeat(17).trimEnd() + '\n'); // 102 bytes, as the nginx backend
const MB = Buffer.alloc(1 << 20, 'x');

const server = http.createServer((req, res) => {
  if (req.url === '/small') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': SMALL.length });
    res.end(SMALL);
  } else if (req.url === '/1mb') {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': MB.length });
    res.end(MB);
  } else if (req.url === '/1gb') {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': 1024 * MB.length });
    let left = 1024;
    const more = () => {
      while (left > 0) {
        left--;
        if (!res.write(MB)) return void res.once('drain', more);
      }
      res.end();
    };
    more();
  } else if (req.url === '/post') {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 3 });
      res.end('ok\n');
    });
  } else {
    res.writeHead(404, { 'Content-Length': 0 });
    res.end();
  }
});
server.keepAliveTimeout = 65_000;
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
process.on('SIGTERM', () => process.exit(0));
