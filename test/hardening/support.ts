/**
 * Helpers of the hardening suites: raw sockets (bytes in, bytes and a verdict out), a backend that
 * records every byte it receives, a canary listener that must never be reached, a load generator that
 * keeps score, and /metrics readers. Everything on 127.0.0.1, every wait bounded.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import type { Proxy } from '../support/bundle';
import { close, listen } from '../support/net';

// ---- raw exchanges ----

export interface ParsedResponse {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: string;
}

/** Splits bytes into complete HTTP/1.1 responses (Content-Length or chunked framing); `rest` is what does not parse. */
export function parseResponses(data: string): { responses: ParsedResponse[]; rest: string } {
  const responses: ParsedResponse[] = [];
  let at = 0;
  for (;;) {
    const end = data.indexOf('\r\n\r\n', at);
    if (end === -1) break;
    const lines = data.slice(at, end).split('\r\n');
    const m = /^HTTP\/1\.1 (\d{3})(?: .*)?$/.exec(lines[0]);
    if (!m) break;
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const c = line.indexOf(':');
      if (c > 0) headers[line.slice(0, c).toLowerCase()] = line.slice(c + 1).trim();
    }
    if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
      // Chunked answers: the proxy re-chunks a target's answer of unknown length.
      let pos = end + 4;
      let body = '';
      let complete = false;
      for (;;) {
        const eol = data.indexOf('\r\n', pos);
        if (eol === -1) break;
        const size = parseInt(data.slice(pos, eol), 16);
        if (Number.isNaN(size) || data.length < eol + 2 + size + 2) break;
        body += data.slice(eol + 2, eol + 2 + size);
        pos = eol + 2 + size + 2;
        if (size === 0) {
          complete = true;
          break;
        }
      }
      if (!complete) break;
      responses.push({ status: Number(m[1]), headers, body });
      at = pos;
      continue;
    }
    const length = Number(headers['content-length'] ?? 0);
    if (data.length < end + 4 + length) break;
    responses.push({ status: Number(m[1]), headers, body: data.slice(end + 4, end + 4 + length) });
    at = end + 4 + length;
  }
  return { responses, rest: data.slice(at) };
}

export interface RawResult {
  /** Every byte received, latin1. */
  readonly data: string;
  readonly responses: ParsedResponse[];
  /** Bytes after the last complete response (a clean exchange leaves none). */
  readonly rest: string;
  /** The proxy closed the connection before the deadline. */
  readonly closed: boolean;
  /** Milliseconds from connect to the close (or to the deadline). */
  readonly ms: number;
  /** Milliseconds to the first byte received, if any. */
  readonly firstByteMs: number | undefined;
}

export type Script = (socket: net.Socket) => void;

/**
 * Connects, writes `input` (bytes, or a script that writes over time), and collects everything until the
 * proxy closes the connection or `deadlineMs` passes.
 */
export function rawExchange(port: number, input: string | Buffer | Script, opts: { deadlineMs?: number } = {}): Promise<RawResult> {
  const deadlineMs = opts.deadlineMs ?? 5000;
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const t0 = Date.now();
    const chunks: Buffer[] = [];
    let firstByteMs: number | undefined;
    let finished = false;
    const done = (closed: boolean): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      socket.destroy();
      const data = Buffer.concat(chunks).toString('latin1');
      const { responses, rest } = parseResponses(data);
      resolve({ data, responses, rest, closed, ms: Date.now() - t0, firstByteMs });
    };
    const timer = setTimeout(() => done(false), deadlineMs);
    socket.on('data', (d: Buffer) => {
      firstByteMs ??= Date.now() - t0;
      chunks.push(d);
    });
    socket.on('end', () => done(true));
    socket.on('close', () => done(true));
    socket.on('error', () => done(true));
    socket.on('connect', () => {
      if (typeof input === 'function') input(socket);
      else socket.write(typeof input === 'string' ? Buffer.from(input, 'latin1') : input);
    });
  });
}

/** Writes `pieces` one by one, `everyMs` apart, for as long as the socket is open (slowloris and friends). */
export function trickle(pieces: readonly (string | Buffer)[], everyMs: number, thenForever?: string): Script {
  return (socket) => {
    let i = 0;
    const tick = (): void => {
      if (socket.destroyed || !socket.writable) return;
      const piece = i < pieces.length ? pieces[i++] : thenForever;
      if (piece === undefined) return;
      socket.write(typeof piece === 'string' ? Buffer.from(piece, 'latin1') : piece);
      setTimeout(tick, everyMs).unref();
    };
    tick();
  };
}

// ---- a backend that keeps every byte ----

export interface RecordingBackend {
  readonly port: number;
  readonly server: http.Server;
  /** Every byte received on every connection, health checks included, latin1. */
  bytes(): string;
  /** Completed requests by path (the body as received). */
  readonly requests: { method: string; url: string; rawHeaders: string[]; body: string }[];
  connections: number;
  close(): Promise<void>;
}

/** An HTTP backend answering `200 ok` that records the raw bytes it receives (to prove what was never forwarded). */
export async function startRecordingBackend(): Promise<RecordingBackend> {
  const received: Buffer[] = [];
  const b = {
    port: 0,
    connections: 0,
    requests: [] as RecordingBackend['requests'],
    bytes: () => Buffer.concat(received).toString('latin1'),
  } as RecordingBackend & { port: number; server: http.Server };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      b.requests.push({ method: req.method ?? '', url: req.url ?? '', rawHeaders: req.rawHeaders, body: Buffer.concat(chunks).toString('latin1') });
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': '2' });
      res.end('ok');
    });
  });
  server.on('connection', (s) => {
    b.connections++;
    s.on('data', (d: Buffer) => received.push(d));
  });
  b.server = server;
  b.port = await listen(server);
  b.close = () => close(server);
  return b;
}

// ---- a listener nothing may reach ----

export interface Canary {
  readonly port: number;
  /** Connections accepted so far: must stay 0. */
  connections: number;
  close(): Promise<void>;
}

/** A TCP listener on 127.0.0.1 that no request must ever make the proxy connect to. */
export async function startCanary(): Promise<Canary> {
  const sockets = new Set<net.Socket>();
  const c = { port: 0, connections: 0 } as Canary & { port: number };
  const server = net.createServer((s) => {
    c.connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
  });
  c.port = await listen(server);
  c.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return c;
}

// ---- load with a score ----

export interface Outcome {
  readonly id: number;
  readonly method: string;
  /** Status of a complete response. */
  readonly status?: number;
  /** A connection error before any response (ECONNRESET, ECONNREFUSED, timeout, …). */
  readonly error?: string;
  /** The response started but its body was cut short. */
  readonly truncated?: boolean;
  readonly at: number;
}

export interface LoadOptions {
  readonly concurrency?: number;
  /** Method of the n-th request: GET by default. POSTs carry a small body. */
  readonly method?: (n: number) => string;
  readonly host?: string | ((n: number) => string);
  readonly path?: string;
  readonly timeoutMs?: number;
  /** Pause between two requests of one loop. */
  readonly pauseMs?: number;
}

export interface Load {
  readonly outcomes: Outcome[];
  /** Stops the loops; resolves with every outcome once the requests in flight have ended. */
  stop(): Promise<Outcome[]>;
  /** Resolves once `n` more requests have completed. */
  more(n: number, timeoutMs?: number): Promise<void>;
}

/**
 * Keeps `concurrency` clients busy against `port` with keep-alive connections until stop(). Every request
 * carries `X-Req-Id` so a backend can say which ones it processed.
 */
export function startLoad(port: number, opts: LoadOptions = {}): Load {
  const agent = new http.Agent({ keepAlive: true, maxSockets: opts.concurrency ?? 8 });
  const outcomes: Outcome[] = [];
  let stopped = false;
  let next = 0;
  const waiters: { count: number; resolve: () => void }[] = [];
  const record = (o: Outcome): void => {
    outcomes.push(o);
    for (const w of [...waiters]) {
      if (outcomes.length >= w.count) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  };
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const id = next++;
      const method = opts.method?.(id) ?? 'GET';
      const body = method === 'POST' || method === 'PUT' ? `body-of-${id}` : undefined;
      const host = typeof opts.host === 'function' ? opts.host(id) : opts.host;
      let settled = false;
      const end = (o: Omit<Outcome, 'id' | 'method' | 'at'>): void => {
        if (settled) return;
        settled = true;
        record({ id, method, at: Date.now(), ...o });
        resolve();
      };
      const req = http.request(
        {
          host: '127.0.0.1',
          port,
          method,
          path: opts.path ?? `/load/${id}`,
          agent,
          headers: {
            'X-Req-Id': String(id),
            ...(host ? { Host: host } : {}),
            ...(body ? { 'Content-Type': 'text/plain', 'Content-Length': String(body.length) } : {}),
          },
        },
        (res) => {
          res.on('data', () => undefined);
          res.on('aborted', () => end({ status: res.statusCode, truncated: true }));
          res.on('error', () => end({ status: res.statusCode, truncated: true }));
          res.on('end', () => end(res.complete ? { status: res.statusCode } : { status: res.statusCode, truncated: true }));
        },
      );
      req.setTimeout(opts.timeoutMs ?? 10_000, () => req.destroy(Object.assign(new Error('client timeout'), { code: 'CLIENT_TIMEOUT' })));
      req.on('error', (e: NodeJS.ErrnoException) => end({ error: e.code ?? e.message }));
      req.end(body);
    });
  const loops = Array.from({ length: opts.concurrency ?? 8 }, async () => {
    while (!stopped) {
      await one();
      if (opts.pauseMs) await new Promise((r) => setTimeout(r, Math.random() * opts.pauseMs!));
    }
  });
  return {
    outcomes,
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
      agent.destroy();
      return outcomes;
    },
    more: (n, timeoutMs = 15_000) =>
      new Promise<void>((resolve, reject) => {
        const count = outcomes.length + n;
        const timer = setTimeout(() => reject(new Error(`load: ${n} more requests did not complete within ${timeoutMs} ms`)), timeoutMs);
        waiters.push({
          count,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      }),
  };
}

/** Counts outcomes by a short label: `200`, `502`, `ECONNRESET`, `truncated`. */
export function tally(outcomes: readonly Outcome[]): Record<string, number> {
  const t: Record<string, number> = {};
  for (const o of outcomes) {
    const k = o.truncated ? 'truncated' : o.error ?? String(o.status);
    t[k] = (t[k] ?? 0) + 1;
  }
  return t;
}

// ---- metrics ----

/** Fetches /metrics from the primary. */
export function scrape(metricsPort: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port: metricsPort, path: '/metrics', agent: false, timeout: 5000 }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve(text));
      })
      .on('error', reject)
      .on('timeout', function (this: http.ClientRequest) {
        this.destroy(new Error('metrics timeout'));
      });
  });
}

/** The value of one series (labels matched exactly as given, in any order), 0 when absent. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map<string, string>();
    for (const pair of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have.set(pair[1], pair[2]);
    if (want.every(([k, v]) => have.get(k) === v)) sum += Number(m[3]);
  }
  return sum;
}

export async function metric(metricsPort: number, name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricValue(await scrape(metricsPort), name, labels);
}

/** Targets named by a proxy's access log (LOG_CONNECTIONS=true). */
export function loggedTargets(p: Proxy): Set<string> {
  return new Set(p.lines().filter((l) => l.msg === 'access' && typeof l.target === 'string').map((l) => l.target as string));
}
