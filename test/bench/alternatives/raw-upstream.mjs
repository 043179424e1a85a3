// node:http server in front (its limits, timeouts and header checks stay), but the upstream side is
// a minimal keep-alive client of our own: a LIFO pool of net.Sockets per target, the request head
// written as one string, the response parsed by Node's own llhttp binding (HTTPParser, the parser
// node:http uses) and written to the client through ServerResponse with backpressure.
// What this measures: how much of a node:http forwarder's cost is ClientRequest + Agent.
import * as http from 'node:http';
import * as net from 'node:net';
import { createRequire } from 'node:module';
import { Pool, clientIp, poolSize, ready, target } from './common.mjs';

const { HTTPParser } = createRequire(import.meta.url)('_http_common');
const kOnHeaders = HTTPParser.kOnHeaders | 0;
const kOnHeadersComplete = HTTPParser.kOnHeadersComplete | 0;
const kOnBody = HTTPParser.kOnBody | 0;
const kOnMessageComplete = HTTPParser.kOnMessageComplete | 0;

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/** One upstream connection and its parser; `current` is the exchange it serves, if any. */
class Conn {
  constructor(pool) {
    this.pool = pool;
    this.current = undefined;
    this.headers = [];
    this.socket = net.connect(target.port, target.host);
    this.socket.setNoDelay(true);
    const parser = (this.parser = new HTTPParser());
    parser.initialize(HTTPParser.RESPONSE, {}, 0, 0);
    parser[kOnHeaders] = (h) => {
      for (let i = 0; i < h.length; i++) this.headers.push(h[i]);
    };
    parser[kOnHeadersComplete] = (_maj, _min, headers, _m, _u, status, message, _upgrade, keepAlive) => {
      const x = this.current;
      if (!x) return 0;
      const h = headers ?? this.headers;
      this.headers = [];
      x.keepAlive = keepAlive;
      const out = [];
      for (let i = 0; i < h.length; i += 2) if (!HOP.has(h[i].toLowerCase())) out.push(h[i], h[i + 1]);
      x.res.writeHead(status, message, out);
      return x.head ? 1 : 0; // a HEAD response has no body whatever Content-Length says
    };
    parser[kOnBody] = (b) => {
      const x = this.current;
      if (x && !x.res.write(b) && !this.paused) {
        this.paused = true;
        this.socket.pause();
        x.res.once('drain', this.resume);
      }
    };
    this.paused = false;
    this.resume = () => {
      this.paused = false;
      this.socket.resume();
    };
    parser[kOnMessageComplete] = () => {
      const x = this.current;
      if (!x) return;
      this.current = undefined;
      if (this.paused) {
        // The body is complete and buffered in the response: this socket serves the next exchange now,
        // and a finished response may never say 'drain'.
        x.res.off('drain', this.resume);
        this.resume();
      }
      x.res.end();
      if (x.keepAlive) this.pool.release(this);
      else this.socket.destroy();
    };
    this.socket.on('data', (d) => {
      const r = parser.execute(d);
      if (r instanceof Error) this.fail();
    });
    this.socket.on('error', () => this.fail());
    this.socket.on('close', () => {
      this.pool.forget(this);
      this.fail();
    });
  }

  fail() {
    const x = this.current;
    this.current = undefined;
    this.socket.destroy();
    if (!x) return;
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
