/**
 * One circuit breaker per target, however many workers: the bundle with WORKERS=2, each request sent
 * to a chosen worker (the other one is stopped with SIGSTOP while the request is accepted, so the
 * kernel can hand the connection only to the one that runs).
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { makeTarget } from '../../runtime/types';
import { Backend, startBackend } from '../support/backend';
import { Proxy, startBundle } from '../support/bundle';
import { close, freePort, Reply, request, until } from '../support/net';

jest.setTimeout(60_000);

/** CIRCUIT_BREAKER_TIMEOUT in minutes: 0.01 = 600 ms. */
const TIMEOUT_MS = 600;
const BASE = { NODE_FILTER: 'static', HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_THRESHOLD: '3', CIRCUIT_BREAKER_TIMEOUT: '0.01', RETRIES: '0', WORKERS: '2', LOG_CONNECTIONS: 'true' };

let p: Proxy | undefined;
let backends: Backend[] = [];
afterEach(async () => {
  for (const pid of p?.workers() ?? []) process.kill(pid, 'SIGCONT');
  await p?.stop();
  p = undefined;
  await Promise.all(backends.map((b) => b.close()));
  backends = [];
});

async function bundleFor(targets: Backend[]): Promise<Proxy> {
  const proxy = await startBundle({ ...BASE, STATIC_TARGETS: targets.map((b) => makeTarget('127.0.0.1', b.port).id).join(',') });
  await until('two workers', () => proxy.workers().length === 2);
  return proxy;
}

/** One request on a fresh connection, accepted by worker `pid`: every other worker is stopped meanwhile. */
async function via(proxy: Proxy, pid: number, opts: Parameters<typeof request>[1] = {}): Promise<Reply> {
  const others = proxy.workers().filter((w) => w !== pid);
  for (const w of others) process.kill(w, 'SIGSTOP');
  try {
    return await request(proxy.port, opts);
  } finally {
    for (const w of others) process.kill(w, 'SIGCONT');
  }
}

/** Which worker answered each request, from the access log. */
const answeredBy = (proxy: Proxy): number[] => proxy.lines().filter((l) => l.msg === 'access').map((l) => Number(l.pid));

describe('with several workers, one breaker per target', () => {
  test('opens after exactly CIRCUIT_BREAKER_THRESHOLD failures counted across workers, sends one half-open trial, re-opens on its failure and closes on its success everywhere', async () => {
    const good = await startBackend('good');
    const bad = await startBackend('bad');
    backends = [good, bad];
    let broken = true;
    bad.handle = (req, res) => (broken ? req.socket.destroy() : res.end('bad'));
    p = await bundleFor(backends);
    const [a, b] = p.workers();
    const alternate = async (n: number, opts: Parameters<typeof request>[1] = {}): Promise<number[]> => {
      const statuses: number[] = [];
      for (let i = 0; i < n; i++) statuses.push((await via(p!, i % 2 ? b : a, opts)).status);
      return statuses;
    };

    const statuses = await alternate(12, { method: 'POST', body: 'x' });
    expect(new Set(answeredBy(p))).toEqual(new Set([a, b])); // both workers took part
    expect(bad.seen).toHaveLength(3); // exactly the threshold, wherever the failures happened
    expect(statuses.filter((s) => s === 502)).toHaveLength(3);
    expect(statuses.filter((s) => s === 200)).toHaveLength(9);

    // Half-open: one trial for all workers; it fails, and the breaker re-opens in both.
    await new Promise((r) => setTimeout(r, TIMEOUT_MS + 100));
    expect((await alternate(8, { method: 'POST', body: 'x' })).filter((s) => s === 502)).toHaveLength(1);
    expect(bad.seen).toHaveLength(4);

    // Recovered: the next trial succeeds and the breaker closes in both workers.
    broken = false;
    await new Promise((r) => setTimeout(r, TIMEOUT_MS + 100));
    expect(await alternate(8)).toEqual(Array(8).fill(200));
    expect(bad.seen.length).toBeGreaterThanOrEqual(4 + 3);
    // Said once for both workers: opened (the re-opening after a failed trial is not news), then closed.
    const target = makeTarget('127.0.0.1', bad.port).id;
    await until('the closing logged', () => p!.lines().some((l) => l.msg === 'circuit breaker closed: target back in rotation'));
    const said = [...p.stderr.split('\n'), ...p.stdout.split('\n')].filter((l) => l.includes('"msg":"circuit breaker'));
    expect(said.map((l) => [JSON.parse(l).msg, JSON.parse(l).target])).toEqual([
      ['circuit breaker open: target gets no requests until a trial succeeds', target],
      ['circuit breaker closed: target back in rotation', target],
    ]);
  });

  test('with one target, the request right after a successful trial is forwarded by the other worker, not refused', async () => {
    const only = await startBackend('only');
    backends = [only];
    let broken = true;
    only.handle = (req, res) => (broken ? req.socket.destroy() : res.end('only'));
    p = await bundleFor(backends);
    const [a, b] = p.workers();
    const failures = [];
    for (const w of [a, b, a]) failures.push((await via(p, w)).status);
    expect(failures).toEqual([502, 502, 502]);
    // Open in both: refused without a connection to the target.
    expect([(await via(p, b)).status, (await via(p, a)).status]).toEqual([503, 503]);
    expect(only.seen).toHaveLength(3);

    broken = false;
    await new Promise((r) => setTimeout(r, TIMEOUT_MS + 100));
    expect(await via(p, a)).toMatchObject({ status: 200, body: 'only' }); // the trial
    expect(await via(p, b)).toMatchObject({ status: 200, body: 'only' });
    expect(await via(p, a)).toMatchObject({ status: 200, body: 'only' });
  });

  test('the request right after a successful trial, on a worker that has not heard of it yet, is forwarded, not refused', async () => {
    const only = await startBackend('only');
    backends = [only];
    let broken = true;
    let held: (() => void) | undefined;
    only.handle = (req, res) => {
      if (broken) req.socket.destroy();
      else if (held) res.end('only');
      else held = () => res.end('only'); // the trial: answered when the test says
    };
    p = await bundleFor(backends);
    const primary = p.child.pid!;
    const [a, b] = p.workers();
    for (const w of [a, a, a]) expect((await via(p, w)).status).toBe(502);
    broken = false;
    await new Promise((r) => setTimeout(r, TIMEOUT_MS + 100));
    // The trial, on worker a; worker b hears that a holds it.
    process.kill(b, 'SIGSTOP');
    const trial = request(p.port);
    await until('the trial at the target', () => held);
    process.kill(b, 'SIGCONT');
    await new Promise((r) => setTimeout(r, 100));
    // The trial succeeds while the primary is stopped: b has not heard yet when the next request comes.
    process.kill(primary, 'SIGSTOP');
    try {
      held!();
      expect(await trial).toMatchObject({ status: 200, body: 'only' });
      process.kill(a, 'SIGSTOP');
      const next = request(p.port);
      await new Promise((r) => setTimeout(r, 150));
      process.kill(primary, 'SIGCONT');
      expect(await next).toMatchObject({ status: 200, body: 'only' });
      await until('b to log it', () => answeredBy(p!).includes(b));
    } finally {
      process.kill(primary, 'SIGCONT');
      process.kill(a, 'SIGCONT');
    }
  });

  test('a WebSocket handshake to a target that refuses gets its 502 at once', async () => {
    const gone = await startBackend('gone');
    const port = gone.port;
    await gone.close();
    p = await startBundle({ ...BASE, STATIC_TARGETS: makeTarget('127.0.0.1', port).id });
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(p!.port, '127.0.0.1', () => {
        socket.write('GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
      });
      let text = '';
      socket.on('data', (d: Buffer) => (text += d));
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
      socket.setTimeout(10_000, () => socket.destroy(new Error('no answer')));
    });
    expect(answer).toMatch(/^HTTP\/1\.1 502 /);
  });

  test('a worker started after the breaker opened (a replacement) starts with it open', async () => {
    const only = await startBackend('only');
    backends = [only];
    only.handle = (req) => req.socket.destroy();
    p = await startBundle({ ...BASE, CIRCUIT_BREAKER_TIMEOUT: '1', STATIC_TARGETS: makeTarget('127.0.0.1', only.port).id });
    await until('two workers', () => p!.workers().length === 2);
    const [a, b] = p.workers();
    for (const w of [a, a, a]) expect((await via(p, w)).status).toBe(502);
    process.kill(b, 'SIGKILL');
    await until('a replacement worker', () => p!.workers().length === 2 && !p!.workers().includes(b));
    const c = p.workers().find((w) => w !== a)!;
    // Queued in the shared accept queue until the replacement listens (worker a is stopped meanwhile).
    expect((await via(p, c)).status).toBe(503);
    await until('the access log line', () => answeredBy(p!).includes(c));
    expect(only.seen).toHaveLength(3);
  });

  test('when the only worker that used the target dies, its replacement still starts with the breaker open', async () => {
    const only = await startBackend('only');
    backends = [only];
    only.handle = (req) => req.socket.destroy();
    // A set port: with one worker the listening socket closes with it, and PORT=0 would pick another.
    const port = String(await freePort());
    p = await startBundle({ ...BASE, WORKERS: '1', PORT: port, CIRCUIT_BREAKER_TIMEOUT: '1', STATIC_TARGETS: makeTarget('127.0.0.1', only.port).id });
    await until('one worker', () => p!.workers().length === 1);
    const [a] = p.workers();
    for (let i = 0; i < 3; i++) expect((await request(p.port)).status).toBe(502);
    expect((await request(p.port)).status).toBe(503);
    process.kill(a, 'SIGKILL');
    await until('a replacement worker', () => p!.workers().length === 1 && !p!.workers().includes(a));
    // Refused until the replacement listens.
    await until('the replacement listening', () => request(p!.port).then(() => true, () => false));
    for (let i = 0; i < 3; i++) expect((await request(p.port)).status).toBe(503);
    expect(only.seen).toHaveLength(3);
  });
});

describe('MODE=tcp, with several workers', () => {
  /** Connects, sends `text`, half-closes, and collects what comes until the close; an error says its code. */
  const tunnel = (port: number, text: string): Promise<string> =>
    new Promise((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => s.end(text));
      let got = '';
      s.on('data', (d) => (got += d));
      s.on('close', () => resolve(got));
      s.on('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code}`));
      s.setTimeout(5000, () => s.destroy());
    });

  test('the first connection after CIRCUIT_BREAKER_TIMEOUT is the trial, not reset while the worker claims it', async () => {
    const port = await freePort();
    p = await startBundle({ ...BASE, MODE: 'tcp', CIRCUIT_BREAKER_TIMEOUT: '0.02', STATIC_TARGETS: makeTarget('127.0.0.1', port).id });
    await until('two workers', () => p!.workers().length === 2);
    // Nothing listens: three refusals open the breaker.
    for (let i = 0; i < 3; i++) expect(await tunnel(p.port, 'x')).toBe('error ECONNRESET');
    const opened = Date.now();
    const echo = net.createServer({ allowHalfOpen: true }, (sock) => {
      sock.on('error', () => undefined);
      sock.on('data', (d) => sock.write(d));
      sock.on('end', () => sock.end());
    });
    await new Promise<void>((resolve) => echo.listen(port, '127.0.0.1', resolve));
    try {
      await new Promise((r) => setTimeout(r, 1200 + 300 - (Date.now() - opened)));
      expect(await tunnel(p.port, 'first')).toBe('first');
      expect(await tunnel(p.port, 'second')).toBe('second');
    } finally {
      await close(echo);
    }
  });
});

describe('a target restarted in a deploy is back once its health check passes, not CIRCUIT_BREAKER_TIMEOUT later', () => {
  // Five minutes, the default: the test would time out long before a breaker left to its timeout.
  const DEPLOY = { NODE_FILTER: 'static', HEALTH_CHECK_PATH: '/ping', HEALTH_CHECK_PERIOD: '0.3', HEALTH_CHECK_TIMEOUT: '0.3', CIRCUIT_BREAKER_THRESHOLD: '3', CIRCUIT_BREAKER_TIMEOUT: '5', RETRIES: '0', WORKERS: '2' };
  let again: http.Server | undefined;
  afterEach(async () => {
    if (again) await close(again);
    again = undefined;
  });

  /**
   * One target, restarted in place: it stops (its refusals open the breaker: 502s, then 503s), then
   * listens again on its port. The first answer from it, and how long after it listened again.
   */
  async function restartedInPlace(env: Record<string, string>): Promise<{ body: string; ms: number }> {
    const app = await startBackend('app');
    backends = [app];
    p = await startBundle({ ...DEPLOY, ...env, STATIC_TARGETS: makeTarget('127.0.0.1', app.port).id });
    await until('two workers', () => p!.workers().length === 2);
    await until('a first answer', async () => (await request(p!.port)).status === 200);
    await app.close(); // the task stops: connections are refused
    const statuses: number[] = [];
    await until('the breaker open', async () => {
      statuses.push((await request(p!.port)).status);
      return statuses.at(-1) === 503;
    });
    expect(statuses.slice(0, 3)).toEqual([502, 502, 502]);
    again = http.createServer((_req, res) => res.end('back'));
    await new Promise<void>((resolve) => again!.listen(app.port, '127.0.0.1', resolve));
    const listening = Date.now();
    const back = await until('an answer from the restarted target', async () => {
      const r = await request(p!.port);
      return r.status === 200 ? r : undefined;
    }, 10_000, 100);
    const ms = Date.now() - listening;
    for (let i = 0; i < 4; i++) expect((await request(p!.port)).status).toBe(200);
    return { body: back!.body, ms };
  }

  test('refused while it restarts: 502s open the breaker (503s), and the first passing check lets the next request through', async () => {
    const { body, ms } = await restartedInPlace({});
    expect(body).toBe('back');
    expect(ms).toBeLessThan(5000); // a check period (0.3 s) or so, not CIRCUIT_BREAKER_TIMEOUT's 5 minutes
  });

  test('in a quiet service (a request every 1.5 s, two workers) the restarted target gets its trial and is back, not left out while the other serves', async () => {
    const [app, other] = await Promise.all([startBackend('app'), startBackend('other')]);
    backends = [app, other];
    p = await startBundle({ ...DEPLOY, STATIC_TARGETS: [app, other].map((b) => makeTarget('127.0.0.1', b.port).id).join(',') });
    await until('two workers', () => p!.workers().length === 2);
    await until('both answering', async () => (await request(p!.port)).status === 200);
    await app.close(); // its refusals open its breaker; the other target answers the rest
    await until('the breaker open', async () => {
      await request(p!.port);
      return p!.stderr.includes('circuit breaker open');
    });
    again = http.createServer((_req, res) => res.end('back'));
    await new Promise<void>((resolve) => again!.listen(app.port, '127.0.0.1', resolve));
    const bodies: string[] = [];
    for (let i = 0; i < 8 && !bodies.includes('back'); i++) {
      await new Promise((r) => setTimeout(r, 1500));
      bodies.push((await request(p!.port)).body);
    }
    expect(bodies).toContain('back');
  });

  test('without health checks, a breaker refusals opened half-opens after CIRCUIT_BREAKER_TIMEOUT, not before, however soon the target listens again', async () => {
    const app = await startBackend('app');
    backends = [app];
    p = await startBundle({ ...DEPLOY, HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_TIMEOUT: '0.05', STATIC_TARGETS: makeTarget('127.0.0.1', app.port).id });
    await until('two workers', () => p!.workers().length === 2);
    expect((await request(p.port)).status).toBe(200);
    await app.close();
    const statuses: number[] = [];
    const sent: number[] = [];
    await until('the breaker open', async () => {
      sent.push(Date.now());
      statuses.push((await request(p!.port)).status);
      return statuses.at(-1) === 503;
    });
    expect(statuses).toEqual([502, 502, 502, 503]);
    const opened = sent[2]; // the breaker opened once the third request had been sent, and before the fourth
    let served = 0;
    again = http.createServer((_req, res) => {
      served++;
      res.end('back');
    });
    await new Promise<void>((resolve) => again!.listen(app.port, '127.0.0.1', resolve));
    // Open for the whole 3 s: every request meanwhile is a 503, and none reaches the target.
    while (Date.now() - sent[3] < 2500) {
      expect((await request(p.port)).status).toBe(503);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(served).toBe(0);
    const back = await until('the trial after the timeout', async () => {
      const r = await request(p!.port);
      return r.status === 200 ? r : undefined;
    }, 5000, 100);
    expect(back?.body).toBe('back');
    expect(Date.now() - opened).toBeGreaterThanOrEqual(3000);
    for (let i = 0; i < 4; i++) expect((await request(p.port)).status).toBe(200);
  });

  test('a breaker that resets of real requests opened keeps its timeout, however its health path answers', async () => {
    const app = await startBackend('app');
    backends = [app];
    app.handle = (req) => req.socket.destroy();
    p = await startBundle({ ...DEPLOY, STATIC_TARGETS: makeTarget('127.0.0.1', app.port).id });
    await until('two workers', () => p!.workers().length === 2);
    const statuses: number[] = [];
    await until('the breaker open', async () => {
      statuses.push((await request(p!.port)).status);
      return statuses.at(-1) === 503;
    });
    expect(statuses).toEqual([502, 502, 502, 503]);
    app.handle = (_req, res) => res.end('fine now');
    const checks = app.healthChecks;
    await until('three more passing health checks', () => app.healthChecks >= checks + 3);
    expect((await request(p!.port)).status).toBe(503);
    expect(app.seen).toHaveLength(3);
  });
});
