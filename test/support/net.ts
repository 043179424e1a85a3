/** Small socket helpers for tests: free ports, listening on 127.0.0.1 port 0, closing for sure. */
import * as http from 'node:http';
import * as net from 'node:net';

/** A port that was free a moment ago (bind 127.0.0.1:0, read it, close). */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

export async function listen<T extends net.Server>(server: T): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return (server.address() as net.AddressInfo).port;
}

/** Closes a server and every connection it still has. */
export async function close(server: net.Server): Promise<void> {
  if (!server.listening) return;
  if (server instanceof http.Server) server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
}

/** What pump() writes into: a socket, a request, or an answer. */
export interface PumpSink {
  write(chunk: Buffer): boolean;
  once(event: 'drain', fn: () => void): unknown;
  end(): unknown;
  readonly writable: boolean;
}

/**
 * Writes `total` bytes, `chunk` at a time, as fast as `w` takes them (waiting for 'drain' when it pushes
 * back), and ends it after the last unless `end` is false. Stops early should `w` stop taking writes.
 * Returns a getter of the bytes written so far.
 */
export function pump(w: PumpSink, total: number, { chunk = Buffer.alloc(1 << 16, 97), end = true }: { chunk?: Buffer; end?: boolean } = {}): () => number {
  let sent = 0;
  const more = (): void => {
    while (sent < total && w.writable) {
      sent += chunk.length;
      if (!w.write(chunk)) return void w.once('drain', more);
    }
    if (end && sent >= total) w.end();
  };
  more();
  return () => sent;
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request over a fresh connection (no agent), with a deadline. */
export function request(
  port: number,
  opts: { method?: string; path?: string; headers?: Record<string, string | string[]>; body?: string | Buffer; timeoutMs?: number } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path ?? '/', headers: opts.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
        res.on('error', reject);
      },
    );
    req.setTimeout(opts.timeoutMs ?? 10_000, () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Polls `check` until it is truthy or the deadline passes (then throws with `what`). */
export async function until<T>(what: string, check: () => T | Promise<T>, timeoutMs = 10_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
