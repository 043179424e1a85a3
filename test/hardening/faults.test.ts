/**
 * Fault injection against the bundle, under load throughout: backends that die mid-response, reset,
 * hang, answer garbage or close keep-alive connections early; Redis killed and restarted; the AWS API
 * throttling, failing, garbling and hanging; a worker killed. The proxy must stay up, never reach a
 * target discovery did not return, and show clients exactly the errors that cannot be retried:
 *
 *   - a response already under way when its target died (cut short: the status was sent);
 *   - a request with a body, or not idempotent, that reached a target which then reset or garbled
 *     its answer (the body is gone, and the target may have acted on it);
 *   - a target silent for UPSTREAM_TIMEOUT (504: it may still be working; the ALB does not retry either);
 *   - a route with no known target (503 with Retry-After), and the requests a killed worker held.
 *
 * Every load request carries X-Req-Id, and each backend notes which ids it processed or failed, so
 * "exactly" is checked id by id.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import type { Socket } from 'node:net';
import { Proxy, startBundle } from '../support/bundle';
import { AwsStub, startAwsStub } from '../support/aws-stub';
import { close, listen, request, until } from '../support/net';
import { RedisServer, startRedisServer } from '../support/redis';
import { Canary, Load, loggedTargets, metric, Outcome, startCanary, startLoad, tally } from './support';

jest.setTimeout(90_000);

type Mode = 'ok' | 'die-mid-response' | 'reset' | 'hang' | 'malformed' | 'close-early';

interface FaultyBackend {
  readonly port: number;
  readonly name: string;
  mode: Mode;
  /** Ids answered in full. */
  readonly processed: Set<string>;
  /** Ids the current fault hit, with their method. */
  readonly faulted: Map<string, string>;
  close(): Promise<void>;
}

// Answers llhttp refuses: framing declared twice, not HTTP at all, a NUL in a header.
const GARBAGE = [
  'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
  'THIS IS NOT HTTP\r\n\r\n',
  'HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok',
];

async function startFaulty(name: string): Promise<FaultyBackend> {
  const sockets = new Set<Socket>();
  let garbage = 0;
  const body = `hello from ${name}`;
  const b = { name, mode: 'ok' as Mode, processed: new Set<string>(), faulted: new Map<string, string>() } as FaultyBackend & { port: number };
  const server = http.createServer((req, res) => {
    const id = String(req.headers['x-req-id'] ?? '');
    const method = req.method ?? '';
    const mode = b.mode;
    switch (mode) {
      case 'ok':
      case 'close-early':
        req.resume();
        req.on('end', () => {
          res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': String(body.length) });
          res.end(body, () => {
            b.processed.add(id);
            // No Connection: close, the connection simply goes: the keep-alive race every proxy meets.
            if (mode === 'close-early') req.socket.destroy();
          });
        });
        return;
      case 'die-mid-response':
        b.faulted.set(id, method);
        req.resume();
        res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': '1000' });
        res.write('x'.repeat(500), () => req.socket.destroy());
        return;
      case 'reset':
        b.faulted.set(id, method);
        req.socket.destroy();
        return;
      case 'hang':
        b.faulted.set(id, method);
        req.resume();
        return;
      case 'malformed':
        b.faulted.set(id, method);
        req.resume();
        req.socket.end(GARBAGE[garbage++ % GARBAGE.length], 'latin1');
        return;
    }
  });
  server.keepAliveTimeout = 30_000;
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  b.port = await listen(server);
  b.close = async () => {
    for (const s of sockets) s.destroy();
    await close(server);
  };
  return b;
}

const isError = (o: Outcome): boolean => o.status !== 200 || o.truncated === true || o.error !== undefined;
const ids = (os: readonly Outcome[]): string[] => os.map((o) => String(o.id)).sort((x, y) => Number(x) - Number(y));
const sorted = (xs: Iterable<string>): string[] => [...xs].sort((x, y) => Number(x) - Number(y));

describe('backend faults under load', () => {
  let good: FaultyBackend;
  let bad: FaultyBackend;
  let p: Proxy;
  const UPSTREAM_TIMEOUT_S = 1;

  beforeAll(async () => {
    [good, bad] = await Promise.all([startFaulty('good'), startFaulty('bad')]);
    p = await startBundle({
      NODE_FILTER: 'static',
      STATIC_TARGETS: `127.0.0.1:${good.port},127.0.0.1:${bad.port}`,
      // Active checks off and the breaker out of reach, so the bad target keeps its share of traffic and
      // every fault is met many times (the breaker has its own tests).
      HEALTH_CHECK_PATH: 'off',
      CIRCUIT_BREAKER_THRESHOLD: '100000',
      UPSTREAM_TIMEOUT: String(UPSTREAM_TIMEOUT_S),
      LOG_CONNECTIONS: 'true',
    });
  });

  afterAll(async () => {
    await p?.stop('SIGKILL');
    await Promise.all([good?.close(), bad?.close()]);
  });

  /** Runs GET and POST load while `bad` misbehaves, until it has hit `faults` requests; returns every outcome. */
  async function underFault(mode: Mode, faults: number): Promise<Outcome[]> {
    bad.mode = mode;
    bad.faulted.clear();
    bad.processed.clear();
    good.processed.clear();
    const load = startLoad(p.port, { concurrency: 8, method: (n) => (n % 2 ? 'POST' : 'GET'), timeoutMs: 10_000 });
    try {
      await until(`${faults} requests to meet '${mode}'`, () => bad.faulted.size >= faults || (mode === 'close-early' && bad.processed.size >= faults), 20_000, 20);
      await load.more(16);
    } finally {
      bad.mode = 'ok';
    }
    const outcomes = await load.stop();
    expect(outcomes.length).toBeGreaterThan(faults);
    return outcomes;
  }

  afterEach(async () => {
    // Whatever happened, the proxy is up, serves, and used no target but the two it was given.
    expect(p.child.exitCode).toBeNull();
    expect((await request(p.port, { path: '/after' })).status).toBe(200);
    for (const t of loggedTargets(p)) expect([`127.0.0.1:${good.port}`, `127.0.0.1:${bad.port}`]).toContain(t);
  });

  test('a target dying mid-response: exactly the responses it cut are cut, nothing else fails', async () => {
    const outcomes = await underFault('die-mid-response', 12);
    const errors = outcomes.filter(isError);
    expect(ids(errors)).toEqual(sorted(bad.faulted.keys()));
    // Already under way, so never turned into a 5xx: the client sees a short body (or a dropped connection).
    for (const e of errors) expect(e.truncated === true || e.error !== undefined).toBe(true);
  });

  /** GETs never fail (retried on the other target); exactly the POSTs the bad one swallowed are 502s. */
  function expectOnlySwallowedPostsFailed(outcomes: Outcome[]): void {
    const errors = outcomes.filter(isError);
    expect(errors.filter((o) => o.method === 'GET')).toEqual([]);
    const postsHit = [...bad.faulted].filter(([, m]) => m === 'POST').map(([id]) => id);
    expect(ids(errors)).toEqual(sorted(postsHit));
    for (const e of errors) expect(e.status).toBe(502);
  }

  test('a target resetting connections: GETs are retried and never fail; only bodies it swallowed come back 502', async () => {
    expectOnlySwallowedPostsFailed(await underFault('reset', 12));
  });

  test('a target that hangs: exactly the requests it swallowed get a 504 after UPSTREAM_TIMEOUT', async () => {
    const outcomes = await underFault('hang', 8);
    const errors = outcomes.filter(isError);
    expect(ids(errors)).toEqual(sorted(bad.faulted.keys()));
    for (const e of errors) expect(e.status).toBe(504);
  });

  test('a target answering garbage: GETs are retried and never fail; only bodies it swallowed come back 502', async () => {
    expectOnlySwallowedPostsFailed(await underFault('malformed', 12));
  });

  test('a target closing keep-alive connections after every response: no GET fails, and no POST is lost or doubled', async () => {
    const outcomes = await underFault('close-early', 100);
    expect(bad.processed.size).toBeGreaterThanOrEqual(100);
    const errors = outcomes.filter(isError);
    expect(errors.filter((o) => o.method === 'GET')).toEqual([]);
    // A POST can only fail if its body went onto a connection the target closed at that very moment; then
    // no target processed it, and the client got a clean 502 it may retry. Rare, and never silent.
    for (const e of errors) {
      expect(e.status).toBe(502);
      expect(bad.processed.has(String(e.id)) || good.processed.has(String(e.id))).toBe(false);
    }
    expect(errors.length).toBeLessThanOrEqual(Math.ceil(outcomes.length * 0.02));
    const ok = outcomes.filter((o) => !isError(o));
    for (const o of ok) expect(bad.processed.has(String(o.id)) !== good.processed.has(String(o.id))).toBe(true);
  });
});

describe('a silent target when IDLE_TIMEOUT equals UPSTREAM_TIMEOUT (the defaults are both 60 s)', () => {
  test('the client gets its 504, never a connection cut by its own idle timer', async () => {
    const silent = await startFaulty('silent');
    silent.mode = 'hang';
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${silent.port}`, HEALTH_CHECK_PATH: 'off', IDLE_TIMEOUT: '1', UPSTREAM_TIMEOUT: '1' });
    try {
      const replies = await Promise.all(Array.from({ length: 5 }, (_, i) => request(p.port, { path: `/silent/${i}`, method: i % 2 ? 'POST' : 'GET', body: i % 2 ? 'x' : undefined })));
      expect(replies.map((r) => r.status)).toEqual([504, 504, 504, 504, 504]);
    } finally {
      await p.stop('SIGKILL');
      await silent.close();
    }
  });
});

describe('IDLE_TIMEOUT is silence on the client connection, not a cap on a slow answer', () => {
  test('a target slower than IDLE_TIMEOUT but within UPSTREAM_TIMEOUT still answers through; an idle keep-alive connection is told IDLE_TIMEOUT and closed a second after it', async () => {
    const slow = http.createServer((req, res) => {
      req.resume();
      setTimeout(() => res.end(`slow ${req.url}`), 2200);
    });
    const slowPort = await listen(slow);
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${slowPort}`, HEALTH_CHECK_PATH: 'off', IDLE_TIMEOUT: '1', UPSTREAM_TIMEOUT: '4' });
    try {
      const replies = await Promise.all([request(p.port, { path: '/a' }), request(p.port, { path: '/b', method: 'POST', body: 'x' })]);
      expect(replies.map((r) => [r.status, r.body])).toEqual([
        [200, 'slow /a'],
        [200, 'slow /b'],
      ]);

      // One keep-alive exchange, then silence: the proxy closes the connection after about IDLE_TIMEOUT.
      const sock = await new Promise<Socket>((resolve, reject) => {
        const c = net.connect(p.port, '127.0.0.1', () => resolve(c));
        c.on('error', reject);
      });
      let answered = 0;
      let head = '';
      sock.on('data', (d: Buffer) => ((answered = Date.now()), (head += d.toString('latin1'))));
      const closed = new Promise<number>((r) => sock.on('close', () => r(Date.now())));
      sock.write('GET /keep HTTP/1.1\r\nHost: app.example.com\r\n\r\n');
      // A request in the second past IDLE_TIMEOUT is served, and the connection's clock starts over.
      await new Promise((r) => setTimeout(r, 1300));
      expect(sock.destroyed).toBe(false);
      const answers = head.split('HTTP/1.1 200').length - 1;
      sock.write('GET /again HTTP/1.1\r\nHost: app.example.com\r\n\r\n');
      await until('the second answer', () => head.split('HTTP/1.1 200').length - 1 === answers + 1, 5000, 10);
      const closedAt = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(-1), 10_000))]);
      sock.destroy();
      expect(answered).toBeGreaterThan(0);
      // Told how long it may idle, as Node tells it; closed only a little after, so that a client
      // honouring the hint closes first.
      expect(head).toMatch(/\r\nKeep-Alive: timeout=1\r\n/i);
      expect(closedAt).toBeGreaterThan(0);
      const idleMs = closedAt - answered;
      expect(idleMs).toBeGreaterThanOrEqual(1500);
      expect(idleMs).toBeLessThan(4000);
    } finally {
      await p.stop('SIGKILL');
      await close(slow);
    }
  });
});

describe('a worker killed under load', () => {
  test('the others keep serving, a new worker takes its place, and only its open connections fail', async () => {
    const target = await startFaulty('target');
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${target.port}`, HEALTH_CHECK_PATH: 'off', WORKERS: '2' });
    const concurrency = 8;
    const load = startLoad(p.port, { concurrency, method: (n) => (n % 2 ? 'POST' : 'GET') });
    try {
      await until('two workers', () => p.workers().length === 2);
      const before = p.workers();
      await load.more(200);
      const killedAt = Date.now();
      process.kill(before[0], 'SIGKILL');
      await until('a replacement worker', () => {
        const now = p.workers();
        return now.length === 2 && !now.includes(before[0]);
      }, 15_000, 50);
      await load.more(300);
      const outcomes = await load.stop();
      const errors = outcomes.filter(isError);
      // Only connections the dead worker held: each fails at most once, and never as an answer of the proxy.
      expect(errors.length).toBeLessThanOrEqual(concurrency);
      for (const e of errors) expect(e.status === undefined || e.truncated === true).toBe(true);
      expect(outcomes.filter((o) => o.at > killedAt && o.status === 200).length).toBeGreaterThan(100);
      await until('both workers ready again', async () => {
        const health = await request(p.metricsPort, { path: '/healthz' });
        return health.status === 200 && (JSON.parse(health.body) as { workers: number }).workers === 2;
      }, 15_000, 100);
    } finally {
      await load.stop();
      await p.stop('SIGKILL');
      await target.close();
    }
  });
});

describe('the AWS API hanging, with default timeouts', () => {
  test('the first request of a new route gets a 503 with Retry-After within 12 s (a hung AWS attempt and its retry), not after UPSTREAM_TIMEOUT', async () => {
    const stub = await startAwsStub({ clusters: { prod: { web: [{ ip: '127.0.0.1' }] } } });
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off' });
    try {
      stub.fail('*', 'hang', { times: Infinity });
      const t0 = Date.now();
      const r = await request(p.port, { headers: { Host: 'web-8080-prod.example.com' }, timeoutMs: 20_000 });
      expect(r.status).toBe(503);
      expect(r.headers['retry-after']).toBeDefined();
      expect(Date.now() - t0).toBeLessThan(12_000 + 2000);
    } finally {
      await p.stop('SIGKILL');
      await stub.close();
    }
  });
});

describe('Redis and the AWS API failing under load (ecs mode)', () => {
  let web: FaultyBackend;
  let api: FaultyBackend;
  let fresh: FaultyBackend;
  let canary: Canary;
  let stub: AwsStub;
  let redis: RedisServer;
  let p: Proxy;
  let routesAsked = 0;

  const host = (svc: string, port: number): string => `${svc}-${port}-prod.example.com`;
  /** A route never asked for before: its first request needs a discovery. */
  const newRoute = (): string => host(`new${++routesAsked}`, fresh.port);

  beforeAll(async () => {
    [web, api, fresh, canary] = await Promise.all([startFaulty('web'), startFaulty('api'), startFaulty('fresh'), startCanary()]);
    redis = await startRedisServer();
    stub = await startAwsStub({
      clusters: {
        prod: {
          web: [{ ip: '127.0.0.1' }],
          api: [{ ip: '127.0.0.1' }],
          ...Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`new${i + 1}`, [{ ip: '127.0.0.1' }]])),
        },
      },
    });
    p = await startBundle({
      ...stub.env(),
      DOMAIN: 'example.com',
      ALLOWED_CLUSTERS: 'prod',
      ALLOWED_PORTS: [web.port, api.port, fresh.port].join(','),
      REDIS_URL: redis.url,
      NODE_CHECK_PERIOD: '0.3',
      // Also how long the first request of a new route waits for its discovery.
      UPSTREAM_TIMEOUT: '3',
      HEALTH_CHECK_PATH: 'off',
      AWS_MAX_ATTEMPTS: '2',
      LOG_CONNECTIONS: 'true',
    });
    // Both routes known before the faults start.
    expect((await request(p.port, { headers: { Host: host('web', web.port) } })).status).toBe(200);
    expect((await request(p.port, { headers: { Host: host('api', api.port) } })).status).toBe(200);
  });

  afterAll(async () => {
    await p?.stop('SIGKILL');
    await Promise.all([web?.close(), api?.close(), fresh?.close(), canary?.close(), stub?.close(), redis?.stop()]);
  });

  /** Load on the two known routes while `during` runs; every one of those requests must succeed. */
  async function knownRoutesServe(during: (load: Load) => Promise<void>): Promise<void> {
    const load = startLoad(p.port, { concurrency: 6, method: (n) => (n % 2 ? 'POST' : 'GET'), host: (n) => (n % 3 ? host('web', web.port) : host('api', api.port)) });
    try {
      await during(load);
      await load.more(50);
    } finally {
      const outcomes = await load.stop();
      expect(tally(outcomes)).toEqual({ '200': outcomes.length });
    }
  }

  /** Waits for `n` more refresh rounds' worth of ListTasks calls (the refresh loop is still running). */
  const refreshes = async (n: number): Promise<void> => {
    const start = stub.count('ListTasks');
    await until(`${n} discovery calls`, () => stub.count('ListTasks') >= start + n, 15_000, 20);
  };

  afterEach(() => {
    expect(p.child.exitCode).toBeNull();
    expect(canary.connections).toBe(0);
    for (const t of loggedTargets(p)) expect([web.port, api.port, fresh.port].map((x) => `127.0.0.1:${x}`)).toContain(t);
  });

  test('Redis killed and restarted: known routes keep serving, new ones are discovered without it, sharing resumes', async () => {
    await knownRoutesServe(async () => {
      await redis.kill();
      await refreshes(4);
      expect((await request(p.port, { headers: { Host: newRoute() } })).status).toBe(200);
      const looked = await metric(p.metricsPort, 'karma_discovery_cache_total');
      await redis.restart();
      // Sharing resumes by itself: Redis is consulted again.
      await until('the cache to be used again', async () => (await metric(p.metricsPort, 'karma_discovery_cache_total', { result: 'hit' })) + (await metric(p.metricsPort, 'karma_discovery_cache_total', { result: 'miss' })) > looked, 15_000, 100);
      expect((await request(p.port, { headers: { Host: newRoute() } })).status).toBe(200);
    });
  });

  test.each([
    ['throttling', 'throttle'],
    ['500s', 'error500'],
    ['malformed bodies', 'malformed'],
  ] as const)('the AWS API answering %s: known routes keep serving, a new route is a 503 with Retry-After within UPSTREAM_TIMEOUT, then works once AWS does', async (_what, fault) => {
    await knownRoutesServe(async () => {
      stub.fail('*', fault, { times: Infinity });
      try {
        await refreshes(2);
        const t0 = Date.now();
        const route = newRoute();
        const r = await request(p.port, { headers: { Host: route } });
        expect(r.status).toBe(503);
        expect(r.headers['retry-after']).toBeDefined();
        expect(Date.now() - t0).toBeLessThan(3000 + 2000);
      } finally {
        stub.clearFaults();
      }
      // A failed discovery is remembered for a moment (so an outage is not hammered), then tried again.
      await until('a new route to be discovered again', async () => (await request(p.port, { headers: { Host: newRoute() } })).status === 200, 10_000, 200);
    });
  });

  test('Redis down and the AWS API failing at once: known routes keep serving', async () => {
    await knownRoutesServe(async () => {
      await redis.kill();
      stub.fail('*', 'error500', { times: Infinity });
      try {
        await refreshes(2);
      } finally {
        stub.clearFaults();
        await redis.restart();
      }
    });
  });

  // Last: a hung call holds the refresh loop until the SDK's own timeout, which would slow the tests after it.
  test('the AWS API hanging: known routes keep serving; once it answers, new routes are discovered', async () => {
    await knownRoutesServe(async (load) => {
      stub.fail('*', 'hang', { times: Infinity });
      try {
        const before = stub.count();
        await until('a discovery call to hang', () => stub.count() > before, 10_000, 20);
        await load.more(100);
      } finally {
        stub.clearFaults();
      }
      expect((await request(p.port, { headers: { Host: newRoute() } })).status).toBe(200);
    });
  });
});
