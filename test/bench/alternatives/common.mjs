// What every alternative forwarder shares: where to listen, where to forward, how to load an optional
// package (from the project, or from test/bench/.deps: npm install --prefix test/bench/.deps undici http-proxy-3),
// and the readiness line the harness waits for.
import { createRequire } from 'node:module';
import * as net from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const [host, port] = (process.env.TARGET ?? '127.0.0.1:8080').split(':');
export const target = { host, port: Number(port) };
export const listenPort = Number(process.env.PORT ?? 0);
/** Upstream keep-alive sockets, as Karma's POOL_SIZE default. */
export const poolSize = 100;

/** Loads an npm package, or exits 3 with a line the harness prints as the reason for skipping. */
export function need(name) {
  for (const from of [path.join(here, '..', '..', '..', 'package.json'), path.join(here, '..', '.deps', 'package.json')]) {
    try {
      return createRequire(from)(name);
    } catch {
      // try the next place
    }
  }
  process.stderr.write(`missing package ${name}: npm install --no-save ${name} (or npm install --prefix test/bench/.deps ${name})\n`);
  process.exit(3);
}

export function ready(server) {
  server.listen(listenPort, '127.0.0.1', () => process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n'));
  process.on('SIGTERM', () => process.exit(0));
}

// The X-Forwarded-For every forwarder here appends, as Karma does, so none is measured doing less.
export function clientIp(req) {
  const a = req.socket.remoteAddress ?? '';
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}

/**
 * The sketches' keep-alive pool to the target: at most `max` connections made by `connect(pool)`,
 * idle ones reused last-in first-out, exchanges beyond that waiting in line. A connection calls
 * release() when its exchange is done and forget() when it closes; it serves an exchange in send(x).
 */
export class Pool {
  constructor(max, connect) {
    this.max = max;
    this.connect = connect;
    this.idle = [];
    this.count = 0;
    this.waiting = [];
  }

  dispatch(x) {
    const c = this.idle.pop();
    if (c) return c.send(x);
    if (this.count < this.max) {
      this.count++;
      return this.connect(this).send(x);
    }
    this.waiting.push(x);
  }

  release(c) {
    const next = this.waiting.shift();
    if (next) c.send(next);
    else this.idle.push(c);
  }

  forget(c) {
    const i = this.idle.indexOf(c);
    if (i !== -1) this.idle.splice(i, 1);
    this.count--;
  }
}

// Node's own llhttp binding (the parser node:http uses), for the raw-* sketches.
const common = createRequire(import.meta.url)('_http_common');
export const { HTTPParser, methods: METHODS } = common;
export const kOnHeaders = HTTPParser.kOnHeaders | 0;
export const kOnHeadersComplete = HTTPParser.kOnHeadersComplete | 0;
export const kOnBody = HTTPParser.kOnBody | 0;
export const kOnMessageComplete = HTTPParser.kOnMessageComplete | 0;
export const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/**
 * One keep-alive connection of a sketch's Pool to the target, its responses parsed by llhttp; `current`
 * is the exchange it serves, if any. A subclass writes the response where it goes: head(x, status,
 * message, headers, keepAlive) (1 to skip the body), body(x, chunk), done(x) after the last byte, and
 * failed(x) when the socket errs or closes during exchange x (the socket is destroyed already); send(x)
 * starts an exchange.
 */
export class TargetConn {
  constructor(pool) {
    this.pool = pool;
    this.current = undefined;
    this.headers = [];
    this.paused = false;
    this.resume = () => {
      this.paused = false;
      this.socket.resume();
    };
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
      return this.head(x, status, message, h, keepAlive);
    };
    parser[kOnBody] = (b) => {
      if (this.current) this.body(this.current, b);
    };
    parser[kOnMessageComplete] = () => {
      const x = this.current;
      if (!x) return;
      this.current = undefined;
      this.done(x);
    };
    this.socket.on('data', (d) => {
      if (parser.execute(d) instanceof Error) this.fail();
    });
    this.socket.on('error', () => this.fail());
    this.socket.on('close', () => {
      this.pool.forget(this);
      this.fail();
    });
  }

  /** The socket erred or closed: it is destroyed, and the exchange under way, if any, is failed(). */
  fail() {
    const x = this.current;
    this.current = undefined;
    this.socket.destroy();
    if (x) this.failed(x);
  }

  /** Stops reading the target until `sink` drains (the client is slower than the target). */
  pauseFor(sink) {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
    sink.once('drain', this.resume);
  }

  /** Reads again: the body is complete and buffered in `sink`, which may never say 'drain' now. */
  unpause(sink) {
    if (!this.paused) return;
    sink.off('drain', this.resume);
    this.resume();
  }
}
