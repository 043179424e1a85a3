// node:http server in front (its limits, timeouts and header checks stay), but the upstream side is
// a minimal keep-alive client of our own: a LIFO pool of net.Sockets per target, the request head
// written as one string, the response parsed by Node's own llhttp binding (HTTPParser, the parser
// node:http uses) and written to the client through ServerResponse with backpressure.
// What this measures: how much of a node:http forwarder's cost is ClientRequest + Agent.
import * as http from 'node:http';
import { HOP, Pool, TargetConn, clientIp, poolSize, ready } from './common.mjs';

/** Writes the target's response through the client's ServerResponse. */
class Conn extends TargetConn {
  head(x, status, message, h, keepAlive) {
    x.keepAlive = keepAlive;
    const out = [];
    for (let i = 0; i < h.length; i += 2) if (!HOP.has(h[i].toLowerCase())) out.push(h[i], h[i + 1]);
    x.res.writeHead(status, message, out);
    return x.head ? 1 : 0; // a HEAD response has no body whatever Content-Length says
  }

  body(x, b) {
    if (!x.res.write(b)) this.pauseFor(x.res);
  }

  done(x) {
    this.unpause(x.res);
    x.res.end();
    if (x.keepAlive) this.pool.release(this);
    else this.socket.destroy();
  }

  failed(x) {
    if (!x.res.headersSent) x.res.writeHead(502).end();
    else x.res.destroy();
  }

  send(x) {
    this.current = x;
    const { req } = x;
    const raw = req.rawHeaders;
    let head = `${req.method} ${req.url} HTTP/1.1\r\n`;
    let chunked = false;
    for (let i = 0; i < raw.length; i += 2) {
      const lower = raw[i].toLowerCase();
      if (lower === 'transfer-encoding') chunked = true;
      if (HOP.has(lower)) continue;
      head += `${raw[i]}: ${raw[i + 1]}\r\n`;
    }
    head += `X-Forwarded-For: ${clientIp(req)}\r\n${chunked ? 'Transfer-Encoding: chunked\r\n' : ''}\r\n`;
    if (x.hasBody) {
      this.socket.write(head, 'latin1');
      req.on('data', (c) => {
        const ok = chunked ? this.socket.write(`${c.length.toString(16)}\r\n`) && this.socket.write(c) && this.socket.write('\r\n') : this.socket.write(c);
        if (!ok) {
          req.pause();
          this.socket.once('drain', () => req.resume());
        }
      });
      req.on('end', () => {
        if (chunked) this.socket.write('0\r\n\r\n');
      });
    } else {
      this.socket.write(head, 'latin1');
    }
  }
}

const pool = new Pool(poolSize, (p) => new Conn(p));
const server = http.createServer((req, res) => {
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool.dispatch({ req, res, hasBody, head: req.method === 'HEAD', keepAlive: false });
});
ready(server);
