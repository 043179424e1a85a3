// Both sides on Node's own llhttp binding: a net server whose connections are parsed by HTTPParser
// (REQUEST) instead of node:http's server, and raw-upstream's minimal keep-alive pool to the target;
// the response head is written by hand and the body passed on as it comes (re-chunked when the target
// chunks it). No timeouts, limits, pipelining, Expect, upgrades or error pages beyond a 502: a sketch
// of how fast a server side of our own could go, not a proxy.
// What this measures: how much of Karma's cost is node:http's server side (streams, ServerResponse).
import * as net from 'node:net';
import { createRequire } from 'node:module';
import { Pool, poolSize, ready, target } from './common.mjs';

const { HTTPParser, methods: METHODS } = createRequire(import.meta.url)('_http_common');
const kOnHeaders = HTTPParser.kOnHeaders | 0;
const kOnHeadersComplete = HTTPParser.kOnHeadersComplete | 0;
const kOnBody = HTTPParser.kOnBody | 0;
const kOnMessageComplete = HTTPParser.kOnMessageComplete | 0;

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/** One client connection: its parser and the exchange under way. */
class Client {
  constructor(socket) {
    this.socket = socket;
    this.ip = socket.remoteAddress?.startsWith('::ffff:') ? socket.remoteAddress.slice(7) : socket.remoteAddress;
    this.headers = [];
    this.x = undefined;
    const parser = (this.parser = new HTTPParser());
    parser.initialize(HTTPParser.REQUEST, {}, 0, 0);
    parser[kOnHeaders] = (h) => {
      for (let i = 0; i < h.length; i++) this.headers.push(h[i]);
    };
    parser[kOnHeadersComplete] = (major, minor, headers, method, url, _s, _m, _upgrade, keepAlive) => {
      const h = headers ?? this.headers;
      this.headers = [];
      let head = `${METHODS[method]} ${url} HTTP/1.1\r\n`;
      let body = false;
      let chunked = false;
      for (let i = 0; i < h.length; i += 2) {
        const lower = h[i].toLowerCase();
        if (lower === 'transfer-encoding') chunked = body = true;
        else if (lower === 'content-length' && h[i + 1] !== '0') body = true;
        if (HOP.has(lower)) continue;
        head += `${h[i]}: ${h[i + 1]}\r\n`;
      }
      head += `X-Forwarded-For: ${this.ip}\r\n${chunked ? 'Transfer-Encoding: chunked\r\n' : ''}\r\n`;
      this.x = { client: this, head, body, chunked, keepAlive: keepAlive && major === 1 && minor === 1, isHead: METHODS[method] === 'HEAD', conn: undefined, pending: [] };
      pool.dispatch(this.x);
      return 0;
    };
    parser[kOnBody] = (b) => {
      const x = this.x;
      if (!x) return;
      const piece = x.chunked ? [`${b.length.toString(16)}\r\n`, Buffer.from(b), '\r\n'] : [Buffer.from(b)];
      if (x.conn) for (const p of piece) x.conn.socket.write(p);
      else x.pending.push(...piece);
    };
    parser[kOnMessageComplete] = () => {
      const x = this.x;
      if (!x || !x.chunked) return;
      if (x.conn) x.conn.socket.write('0\r\n\r\n');
      else x.pending.push('0\r\n\r\n');
    };
    socket.setNoDelay(true);
    socket.on('data', (d) => {
      if (parser.execute(d) instanceof Error) socket.destroy();
    });
    socket.on('error', () => socket.destroy());
  }
}

/** One upstream connection and its parser; `current` is the exchange it serves, if any. */
class Conn {
  constructor(pool) {
    this.pool = pool;
    this.current = undefined;
    this.headers = [];
    this.chunkOut = false;
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
      x.upstreamKeepAlive = keepAlive;
      let head = `HTTP/1.1 ${status} ${message}\r\n`;
      let length = false;
      for (let i = 0; i < h.length; i += 2) {
        const lower = h[i].toLowerCase();
        if (lower === 'content-length') length = true;
        if (!HOP.has(lower)) head += `${h[i]}: ${h[i + 1]}\r\n`;
      }
      this.chunkOut = !length && !x.isHead && status !== 204 && status !== 304;
      if (this.chunkOut) head += 'Transfer-Encoding: chunked\r\n';
      if (!x.keepAlive) head += 'Connection: close\r\n';
      x.client.socket.write(head + '\r\n', 'latin1');
      return x.isHead ? 1 : 0;
    };
    parser[kOnBody] = (b) => {
      const x = this.current;
      if (!x) return;
      const s = x.client.socket;
      if (this.chunkOut) s.write(`${b.length.toString(16)}\r\n`);
      const ok = s.write(b);
      if (this.chunkOut) s.write('\r\n');
      if (!ok && !this.paused) {
        this.paused = true;
        this.socket.pause();
        s.once('drain', this.resume);
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
      const s = x.client.socket;
      if (this.paused) {
        s.off('drain', this.resume);
        this.resume();
      }
      if (this.chunkOut) s.write('0\r\n\r\n');
      x.client.x = undefined;
      if (!x.keepAlive) s.end();
      if (x.upstreamKeepAlive) this.pool.release(this);
      else this.socket.destroy();
    };
    this.socket.on('data', (d) => {
      if (this.parser.execute(d) instanceof Error) this.fail();
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
    if (x) x.client.socket.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  }

  send(x) {
    this.current = x;
    x.conn = this;
    this.socket.write(x.head, 'latin1');
    for (const p of x.pending) this.socket.write(p);
    x.pending.length = 0;
  }
}

const pool = new Pool(poolSize, (p) => new Conn(p));
ready(net.createServer((socket) => new Client(socket)));
