/**
 * PROTOTYPE (test/bench, not runtime): a lean keep-alive HTTP/1.1 client for the upstream side, shaped
 * like the part of node:http's ClientRequest that forward.ts uses, so forward.ts changes by one call.
 *
 * Why: under small-GET load ClientRequest + Agent + the IncomingMessage stream are about half of a
 * node:http forwarder's CPU (see test/bench/README-bench.md). Here a connection is a net.Socket and a
 * reused HTTPParser (the llhttp binding node:http itself uses); the request head goes out as one
 * string; the response body goes straight into the client's ServerResponse with backpressure.
 *
 * Not done in the prototype: the agent's request queue is not visible as `agent.requests` (the
 * pool_full timer of forward.ts is never armed), no Expect: 100-continue, no informational (1xx)
 * responses other than as final ones, no upgrade.
 */
import { EventEmitter } from 'node:events';
import * as http from 'node:http';
import * as net from 'node:net';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { HTTPParser } = require('_http_common') as { HTTPParser: any };
const kOnHeaders = HTTPParser.kOnHeaders | 0;
const kOnHeadersComplete = HTTPParser.kOnHeadersComplete | 0;
const kOnBody = HTTPParser.kOnBody | 0;
const kOnMessageComplete = HTTPParser.kOnMessageComplete | 0;

export interface UpstreamRequestOptions {
  host: string;
  port: number;
  method?: string;
  path?: string;
  /** Flat [name, value, …] as forward.ts builds them. */
  headers: string[];
  /** The target's keep-alive pool is keyed on this agent (its maxSockets); false: a one-off connection. */
  agent: http.Agent | false;
  setHost?: boolean;
}

const FREE_SOCKET_TIMEOUT_MS = 4000;

class Conn {
  readonly socket: net.Socket;
  readonly parser: any;
  current: UpstreamRequest | undefined;
  private pendingHeaders: string[] = [];
  reused = false;

  constructor(
    readonly pool: ConnPool | undefined,
    host: string,
    port: number,
  ) {
    this.socket = net.connect({ host, port, noDelay: true });
    this.socket.setKeepAlive(true, 1000);
    const parser = (this.parser = new HTTPParser());
    parser.initialize(HTTPParser.RESPONSE, {}, 0, 0);
    parser[kOnHeaders] = (h: string[]) => {
      for (const x of h) this.pendingHeaders.push(x);
    };
    parser[kOnHeadersComplete] = (
      _maj: number,
      _min: number,
      headers: string[] | undefined,
      _m: unknown,
      _u: unknown,
      status: number,
      message: string,
      _upgrade: boolean,
      keepAlive: boolean,
    ): number => {
      const x = this.current;
      if (!x) return 0;
      const raw = headers ?? this.pendingHeaders;
      this.pendingHeaders = [];
      x.keepAlive = keepAlive;
      x.respond(status, message, raw);
      return x.method === 'HEAD' ? 1 : 0;
    };
    parser[kOnBody] = (b: Buffer) => this.current?.res?.body(b);
    parser[kOnMessageComplete] = () => {
      const x = this.current;
      if (!x) return;
      this.current = undefined;
      x.complete();
      if (x.keepAlive && this.pool && !this.socket.destroyed) this.pool.release(this);
      else this.socket.destroy();
    };
    this.socket.on('data', (d: Buffer) => {
      const r = parser.execute(d);
      if (r instanceof Error) this.socket.destroy(Object.assign(new Error('bad upstream response'), { code: 'HPE_INVALID' }));
    });
    this.socket.on('timeout', () => {
      if (this.current) this.current.emit('timeout');
      else this.socket.destroy();
    });
    this.socket.on('error', (err: NodeJS.ErrnoException) => this.current?.socketError(err));
    this.socket.on('close', () => {
      this.pool?.forget(this);
      const x = this.current;
      this.current = undefined;
      x?.socketClosed();
    });
  }
}

/** The keep-alive connections of one target (one per http.Agent of the registry), LIFO. */
class ConnPool {
  private readonly idle: Conn[] = [];
  private count = 0;
  private readonly waiting: UpstreamRequest[] = [];

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly max: number,
  ) {}

  dispatch(x: UpstreamRequest): void {
    for (let c = this.idle.pop(); c; c = this.idle.pop()) {
      if (c.socket.destroyed) continue;
      c.socket.setTimeout(0);
      c.reused = true;
      return x.assign(c);
    }
    if (this.count < this.max) {
      this.count++;
      return x.assign(new Conn(this, this.host, this.port));
    }
    this.waiting.push(x);
  }

  release(c: Conn): void {
    for (let next = this.waiting.shift(); next; next = this.waiting.shift()) {
      if (next.destroyed) continue;
      c.reused = true;
      return next.assign(c);
    }
    c.socket.setTimeout(FREE_SOCKET_TIMEOUT_MS);
    this.idle.push(c);
  }

  forget(c: Conn): void {
    const i = this.idle.indexOf(c);
    if (i !== -1) this.idle.splice(i, 1);
    this.count--;
  }

  withdraw(x: UpstreamRequest): void {
    const i = this.waiting.indexOf(x);
    if (i !== -1) this.waiting.splice(i, 1);
  }
}

const pools = new WeakMap<http.Agent, ConnPool>();

/** The response as forward.ts reads it: status, raw headers, `headers.connection`, pipe(res). */
class UpstreamResponse extends EventEmitter {
  readonly headers: { connection?: string } = {};
  private sink: http.ServerResponse | undefined;
  private paused = false;

  constructor(
    private readonly conn: Conn,
    readonly statusCode: number,
    readonly statusMessage: string,
    readonly rawHeaders: string[],
  ) {
    super();
    for (let i = 0; i < rawHeaders.length; i += 2) {
      if (rawHeaders[i].length === 10 && rawHeaders[i].toLowerCase() === 'connection') this.headers.connection = rawHeaders[i + 1];
    }
  }

  pipe(res: http.ServerResponse): http.ServerResponse {
    this.sink = res;
    return res;
  }

  private readonly resume = (): void => {
    this.paused = false;
    this.conn.socket.resume();
  };

  body(b: Buffer): void {
    const res = this.sink;
    if (!res) return;
    if (!res.write(b) && !this.paused) {
      this.paused = true;
      this.conn.socket.pause();
      res.once('drain', this.resume);
    }
  }

  end(): void {
    if (this.paused) {
      // The body is complete and buffered in the response: the socket serves the next exchange now,
      // and a finished response may never say 'drain'.
      this.sink?.off('drain', this.resume);
      this.resume();
    }
    this.sink?.end();
  }
}

export class UpstreamRequest extends EventEmitter {
  readonly method: string;
  keepAlive = false;
  destroyed = false;
  reusedSocket = false;
  writableNeedDrain = false;
  res: UpstreamResponse | undefined;
  private conn: Conn | undefined;
  private headSent = false;
  private chunked = false;
  private timeoutMs = 0;
  private readonly head: string;

  constructor(
    opts: UpstreamRequestOptions,
    private readonly pool: ConnPool | undefined,
  ) {
    super();
    this.method = opts.method ?? 'GET';
    const h = opts.headers;
    let head = `${this.method} ${opts.path ?? '/'} HTTP/1.1\r\n`;
    let length = false;
    for (let i = 0; i < h.length; i += 2) {
      head += `${h[i]}: ${h[i + 1]}\r\n`;
      if (h[i].length === 14 && h[i].toLowerCase() === 'content-length') length = true;
    }
    // forward.ts drops Transfer-Encoding (hop-by-hop): a body of unknown length goes out chunked.
    this.head = head;
    this.chunked = !length;
    if (pool) pool.dispatch(this);
    else this.assign(new Conn(undefined, opts.host, opts.port));
  }

  assign(c: Conn): void {
    this.conn = c;
    c.current = this;
    this.reusedSocket = c.reused;
    if (this.timeoutMs) c.socket.setTimeout(this.timeoutMs);
    process.nextTick(() => {
      if (!this.destroyed) this.emit('socket', c.socket);
    });
  }

  setTimeout(ms: number, cb?: () => void): this {
    this.timeoutMs = ms;
    if (cb) this.on('timeout', cb);
    this.conn?.socket.setTimeout(ms);
    return this;
  }

  private sendHead(withBody: boolean): void {
    if (this.headSent || !this.conn) return;
    this.headSent = true;
    const h = withBody && this.chunked ? `${this.head}Transfer-Encoding: chunked\r\n\r\n` : `${this.head}\r\n`;
    if (!withBody) this.chunked = false;
    this.conn.socket.write(h, 'latin1');
  }

  write(chunk: Buffer): boolean {
    if (!this.conn || this.destroyed) return false;
    this.sendHead(true);
    const s = this.conn.socket;
    const ok = this.chunked ? s.write(`${chunk.length.toString(16)}\r\n`) && s.write(chunk) && s.write('\r\n') : s.write(chunk);
    if (!ok) {
      this.writableNeedDrain = true;
      s.once('drain', () => {
        this.writableNeedDrain = false;
        this.emit('drain');
      });
    }
    return ok;
  }

  end(chunk?: Buffer): this {
    if (chunk) this.write(chunk);
    if (!this.headSent) this.sendHead(false);
    else if (this.chunked && this.conn) this.conn.socket.write('0\r\n\r\n');
    this.emit('finish');
    return this;
  }

  respond(status: number, message: string, raw: string[]): void {
    this.res = new UpstreamResponse(this.conn!, status, message, raw);
    this.emit('response', this.res);
  }

  complete(): void {
    this.conn?.socket.setTimeout(0);
    this.res?.end();
  }

  socketError(err: NodeJS.ErrnoException): void {
    if (this.res) this.res.emit('aborted');
    else this.emit('error', err);
  }

  socketClosed(): void {
    if (this.res) this.res.emit('aborted');
    else if (!this.destroyed) this.emit('error', Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }));
  }

  destroy(err?: Error): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.pool?.withdraw(this);
    const c = this.conn;
    this.conn = undefined;
    if (c && c.current === this) {
      c.current = undefined;
      c.socket.destroy();
    }
    if (err) process.nextTick(() => this.emit('error', err));
    return this;
  }
}

/** Drop-in for the `http.request(...)` call of forward.ts's attempt(). */
export function upstreamRequest(opts: UpstreamRequestOptions): UpstreamRequest {
  let pool: ConnPool | undefined;
  if (opts.agent) {
    pool = pools.get(opts.agent);
    if (!pool) {
      pool = new ConnPool(opts.host, opts.port, opts.agent.maxSockets);
      pools.set(opts.agent, pool);
    }
  }
  return new UpstreamRequest(opts, pool);
}
