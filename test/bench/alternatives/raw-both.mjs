// Both sides on Node's own llhttp binding: a net server whose connections are parsed by HTTPParser
// (REQUEST) instead of node:http's server, and raw-upstream's minimal keep-alive pool to the target;
// the response head is written by hand and the body passed on as it comes (re-chunked when the target
// chunks it). No timeouts, limits, pipelining, Expect, upgrades or error pages beyond a 502: a sketch
// of how fast a server side of our own could go, not a proxy.
// What this measures: how much of Karma's cost is node:http's server side (streams, ServerResponse).
import * as net from 'node:net';
import { HOP, HTTPParser, METHODS, Pool, TargetConn, kOnBody, kOnHeaders, kOnHeadersComplete, kOnMessageComplete, poolSize, ready } from './common.mjs';

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

/** Writes the target's response to the client's socket by hand, re-chunked when the target chunks it. */
class Conn extends TargetConn {
  head(x, status, message, h, keepAlive) {
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
  }

  body(x, b) {
    const s = x.client.socket;
    if (this.chunkOut) s.write(`${b.length.toString(16)}\r\n`);
    const ok = s.write(b);
    if (this.chunkOut) s.write('\r\n');
    if (!ok) this.pauseFor(s);
  }

  done(x) {
    const s = x.client.socket;
    this.unpause(s);
    if (this.chunkOut) s.write('0\r\n\r\n');
    x.client.x = undefined;
    if (!x.keepAlive) s.end();
    if (x.upstreamKeepAlive) this.pool.release(this);
    else this.socket.destroy();
  }

  failed(x) {
    x.client.socket.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
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
