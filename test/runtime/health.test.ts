import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import type { Range } from '../../runtime/config';
import { HEALTH_CHECK_USER_AGENT, HealthChecker, HealthOptions, hostHeader, statusMatches } from '../../runtime/health';
import { healthCheckLatency, nodeHealthStatus, register } from '../../runtime/metrics';
import { makeTarget, StatusSetter, Target } from '../../runtime/types';

// ---- a backend whose health path we steer: a status code, or 'hang' (accepts, never answers) ----

type Mode = number | 'hang';

interface Hit {
  at: number;
  served: Mode;
  method: string | undefined;
  url: string | undefined;
  headers: http.IncomingHttpHeaders;
}

interface Backend {
  target: Target;
  mode: Mode;
  /** Wait this long before answering. */
  delayMs: number;
  hits: Hit[];
  /** Sockets open on the server side right now. */
  sockets: Set<Socket>;
  close(): Promise<void>;
}

const backends: Backend[] = [];
const checkers: HealthChecker[] = [];

async function backend(mode: Mode = 200, host = '127.0.0.1'): Promise<Backend> {
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    const served = b.mode;
    b.hits.push({ at: Date.now(), served, method: req.method, url: req.url, headers: req.headers });
    if (served === 'hang') return;
    const answer = () => {
      res.statusCode = served;
      if (served >= 300 && served < 400) res.setHeader('Location', '/elsewhere');
      res.end('some body the checker must not wait for');
    };
    if (b.delayMs > 0) setTimeout(answer, b.delayMs);
    else answer();
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const { port } = server.address() as AddressInfo;
  const b: Backend = {
    target: makeTarget(host, port),
    mode,
    delayMs: 0,
    hits: [],
    sockets,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  backends.push(b);
  return b;
}

/** A port nothing listens on: bound, then released. */
async function closedPort(): Promise<Target> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return makeTarget('127.0.0.1', port);
}

// ---- a setter that remembers, and a checker that is always stopped ----

interface Call {
  id: string;
  up: boolean;
  at: number;
}

function recorder(): StatusSetter & { calls: Call[]; of(id: string): boolean[] } {
  const calls: Call[] = [];
  return {
    calls,
    setStatus: (target, up) => calls.push({ id: target.id, up, at: Date.now() }),
    of: (id) => calls.filter((c) => c.id === id).map((c) => c.up),
  };
}

const PERIOD_MS = 60;
/** Far above PERIOD_MS: a loaded CI machine must not turn a slow first answer into a failure. */
const TIMEOUT_MS = 1000;

function checker(setter: StatusSetter, opts: Partial<HealthOptions> = {}, random = () => 0.5): HealthChecker {
  const c = new HealthChecker(
    {
      path: '/health',
      periodMs: PERIOD_MS,
      timeoutMs: TIMEOUT_MS,
      healthyThreshold: 2,
      unhealthyThreshold: 3,
      matcher: [{ from: 200, to: 399 }],
      ...opts,
    },
    setter,
    { random },
  );
  checkers.push(c);
  return c;
}

async function waitFor(what: string, cond: () => boolean, deadlineMs = 3000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function gaugeValue(id: string): Promise<number | undefined> {
  return (await nodeHealthStatus.get()).values.find((v) => v.labels.target === id)?.value;
}

async function latencyCount(id: string): Promise<number | undefined> {
  return (await healthCheckLatency.get()).values.find(
    (v) => v.labels.target === id && v.metricName === 'load_balancer_health_check_latency_seconds_count',
  )?.value;
}

afterEach(async () => {
  for (const c of checkers.splice(0)) c.stop();
  await Promise.all(backends.splice(0).map((b) => b.close()));
  jest.restoreAllMocks();
});

// ---- tests ----

describe('statusMatches', () => {
  const r = (from: number, to = from): Range => ({ from, to });
  it.each([
    [200, [r(200)], true],
    [201, [r(200)], false],
    [302, [r(200, 399)], true],
    [302, [r(200)], false],
    [399, [r(200, 399)], true],
    [400, [r(200, 399)], false],
    [204, [r(200), r(204)], true],
    [500, [r(200), r(204)], false],
  ])('%i against %j is %s', (status, matcher, pass) => {
    expect(statusMatches(status, matcher)).toBe(pass);
  });
});

describe('hostHeader', () => {
  it.each([
    [makeTarget('10.0.0.1', 80), '10.0.0.1:80'],
    [makeTarget('::1', 8080), '[::1]:8080'],
    [makeTarget('fd00::5', 443), '[fd00::5]:443'],
  ])('%j → %s', (target, expected) => {
    expect(hostHeader(target)).toBe(expected);
  });
});

describe('HEALTH_CHECK_PROTOCOL=tcp: a check passes when a connection opens', () => {
  test('a target that does not speak HTTP passes, and its connection is closed at once without a byte sent', async () => {
    const received: Buffer[] = [];
    let connections = 0;
    const server = net.createServer((s) => {
      connections++;
      s.on('data', (d) => received.push(d));
      s.write('SSH-2.0-OpenSSH_9.6\r\n'); // a greeting, not HTTP
      s.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const target = makeTarget('127.0.0.1', (server.address() as AddressInfo).port);
      const setter = recorder();
      const c = checker(setter, { protocol: 'tcp' });
      c.sync([target]);
      await waitFor('first verdict', () => setter.calls.length > 0);
      expect(setter.of(target.id)).toEqual([true]);
      await waitFor('three more checks', () => connections >= 4);
      expect(setter.of(target.id)).toEqual([true]);
      expect(Buffer.concat(received).length).toBe(0);
      // The same target with HTTP checks fails them: what MODE=tcp pools of other protocols need this for.
      const httpSetter = recorder();
      checker(httpSetter).sync([target]);
      await waitFor('an HTTP verdict', () => httpSetter.calls.length > 0);
      expect(httpSetter.of(target.id)).toEqual([false]);
    } finally {
      for (const c of checkers.splice(0)) c.stop();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('a port nobody listens on fails', async () => {
    const target = await closedPort();
    const setter = recorder();
    const c = checker(setter, { protocol: 'tcp' });
    c.sync([target]);
    await waitFor('first verdict', () => setter.calls.length > 0);
    expect(setter.of(target.id)).toEqual([false]);
    expect(await gaugeValue(target.id)).toBe(0);
  });
});

describe('HealthChecker', () => {
  it('a first passing check says up once, with the right request, gauge and latency', async () => {
    const b = await backend(200);
    const setter = recorder();
    const c = checker(setter);
    expect(c.status(b.target.id)).toBeUndefined();
    c.sync([b.target]);
    await waitFor('first verdict', () => setter.calls.length > 0);
    expect(setter.calls).toEqual([expect.objectContaining({ id: b.target.id, up: true })]);
    expect(c.status(b.target.id)).toBe(true);

    const hit = b.hits[0];
    expect(hit.method).toBe('GET');
    expect(hit.url).toBe('/health');
    expect(hit.headers.host).toBe(`127.0.0.1:${b.target.port}`);
    expect(hit.headers['user-agent']).toBe(HEALTH_CHECK_USER_AGENT);
    expect(hit.headers.connection).toBe('close');
    expect(await gaugeValue(b.target.id)).toBe(1);
    expect(await latencyCount(b.target.id)).toBeGreaterThanOrEqual(1);

    // More passing checks say nothing more.
    await waitFor('three more checks', () => b.hits.length >= 4);
    expect(setter.of(b.target.id)).toEqual([true]);
  });

  it('a first failing check says down at once, without waiting for the threshold', async () => {
    const b = await backend(500);
    const setter = recorder();
    const c = checker(setter, { unhealthyThreshold: 5 });
    c.sync([b.target]);
    await waitFor('first verdict', () => setter.calls.length > 0);
    expect(b.hits).toHaveLength(1);
    expect(setter.of(b.target.id)).toEqual([false]);
    expect(c.status(b.target.id)).toBe(false);
    expect(await gaugeValue(b.target.id)).toBe(0);
  });

  it('flips down only after unhealthyThreshold failures, and up only after healthyThreshold passes', async () => {
    const b = await backend(200);
    const setter = recorder();
    const c = checker(setter, { healthyThreshold: 2, unhealthyThreshold: 3 });
    c.sync([b.target]);
    await waitFor('up', () => setter.calls.length === 1);

    b.mode = 500;
    const served500 = () => b.hits.filter((h) => h.served === 500).length;
    await waitFor('two failures', () => served500() >= 2);
    expect(setter.of(b.target.id)).toEqual([true]); // two are not enough
    await waitFor('down', () => setter.calls.length === 2);
    // Checks of one target never overlap, so the server has answered exactly the three that counted.
    expect(served500()).toBe(3);
    expect(setter.calls[1].up).toBe(false);
    expect(c.status(b.target.id)).toBe(false);
    expect(await gaugeValue(b.target.id)).toBe(0);

    const before = b.hits.length;
    b.mode = 200;
    await waitFor('one pass', () => b.hits.length >= before + 1);
    expect(setter.calls).toHaveLength(2);
    await waitFor('up again', () => setter.calls.length === 3);
    expect(b.hits.length - before).toBe(2);
    expect(setter.of(b.target.id)).toEqual([true, false, true]);
    expect(await gaugeValue(b.target.id)).toBe(1);

    // Steady state: no further calls.
    const steady = b.hits.length;
    await waitFor('more checks', () => b.hits.length >= steady + 3);
    expect(setter.calls).toHaveLength(3);
  });

  it('a pass in the middle of failures starts the count again', async () => {
    const b = await backend(200);
    const setter = recorder();
    const c = checker(setter, { unhealthyThreshold: 3 });
    c.sync([b.target]);
    await waitFor('up', () => setter.calls.length === 1);
    // fail, fail, pass, fail, fail: never three in a row.
    const plan: Mode[] = [500, 500, 200, 500, 500, 200];
    let i = 0;
    b.mode = plan[0];
    const start = b.hits.length;
    await waitFor('the plan', () => {
      const done = b.hits.length - start;
      if (done > i && i < plan.length - 1) b.mode = plan[++i];
      return done >= plan.length;
    });
    expect(setter.of(b.target.id)).toEqual([true]);
  });

  it.each([
    [302, '200-399', true, [{ from: 200, to: 399 }]],
    [302, '200', false, [{ from: 200, to: 200 }]],
    [204, '200,204', true, [{ from: 200, to: 200 }, { from: 204, to: 204 }]],
    [404, '200-399', false, [{ from: 200, to: 399 }]],
  ])('status %i against matcher %s: pass=%s', async (status, _name, pass, matcher) => {
    const b = await backend(status);
    const setter = recorder();
    const c = checker(setter, { matcher });
    c.sync([b.target]);
    await waitFor('first verdict', () => setter.calls.length > 0);
    expect(setter.of(b.target.id)).toEqual([pass]);
  });

  it('a closed port fails', async () => {
    const target = await closedPort();
    const setter = recorder();
    const c = checker(setter);
    c.sync([target]);
    await waitFor('first verdict', () => setter.calls.length > 0);
    expect(setter.of(target.id)).toEqual([false]);
    expect(await latencyCount(target.id)).toBeGreaterThanOrEqual(1);
  });

  it('a hung target fails at the timeout while others keep their schedule', async () => {
    const period = 80;
    const timeout = 300;
    const good = await backend(200);
    // Three hung targets: checked one after another, they would hold the good one back 900 ms a turn.
    const hung = await Promise.all([backend('hang'), backend('hang'), backend('hang')]);
    const setter = recorder();
    const c = checker(setter, { periodMs: period, timeoutMs: timeout, unhealthyThreshold: 1 });
    const synced = Date.now();
    c.sync([good.target, ...hung.map((h) => h.target)]);

    await waitFor('every hung target judged', () => hung.every((h) => setter.of(h.target.id).length > 0));
    for (const h of hung) {
      expect(setter.of(h.target.id)).toEqual([false]);
      const judged = setter.calls.find((x) => x.id === h.target.id)!.at;
      // The timeout runs from the start of the check, which is after the sync and before the server
      // sees the request.
      expect(judged - synced).toBeGreaterThanOrEqual(timeout);
      expect(judged - h.hits[0].at).toBeLessThan(timeout + 150);
    }

    const from = good.hits.length;
    await sleep(8 * period);
    const times = good.hits.slice(from).map((h) => h.at);
    expect(times.length).toBeGreaterThanOrEqual(5); // about 8 on schedule; a serial checker would get 1
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    expect(Math.max(...gaps)).toBeLessThan(period * 1.1 + 100);
    expect(setter.of(good.target.id)).toEqual([true]);
    // The hung checks were cut off: their sockets do not pile up on the hung servers.
    for (const h of hung) expect(h.sockets.size).toBeLessThanOrEqual(1);
  });

  it('sync is idempotent: known targets keep their verdict, counters and timer', async () => {
    const period = 150;
    const b = await backend(200);
    const setter = recorder();
    const c = checker(setter, { periodMs: period, unhealthyThreshold: 4 });
    c.sync([b.target]);
    await waitFor('up', () => setter.calls.length === 1);

    // Failing from now on, while discovery re-syncs with equal (not identical) targets every 10 ms.
    b.mode = 500;
    const before = b.hits.length;
    const t0 = Date.now();
    while (Date.now() - t0 < 3.5 * period) {
      c.sync([makeTarget(b.target.host, b.target.port)]);
      expect(c.status(b.target.id)).toBe(true);
      await sleep(10);
    }
    // On schedule: about 3 checks. A sync that restarted the timer would have postponed them all;
    // one that checked new-looking targets at once would have made dozens.
    const checks = b.hits.length - before;
    expect(checks).toBeGreaterThanOrEqual(2);
    expect(checks).toBeLessThanOrEqual(5);
    // A sync that reset the counters would have made the next failure a first result, down at once.
    await waitFor('down', () => setter.calls.length === 2);
    expect(b.hits.filter((h) => h.served === 500)).toHaveLength(4);
    expect(setter.of(b.target.id)).toEqual([true, false]);
  });

  it('a target that leaves stops being checked and loses its metric series', async () => {
    const stay = await backend(200);
    const leave = await backend(200);
    const setter = recorder();
    const c = checker(setter);
    c.sync([stay.target, leave.target]);
    await waitFor('both judged', () => setter.calls.length === 2);
    await waitFor('latency of both', () => leave.hits.length >= 2 && stay.hits.length >= 2);
    expect(await gaugeValue(leave.target.id)).toBe(1);
    expect(await register.getSingleMetricAsString('load_balancer_node_health_status')).toContain(leave.target.id);

    c.sync([stay.target]);
    expect(c.status(leave.target.id)).toBeUndefined();
    expect(c.status(stay.target.id)).toBe(true);
    expect(await gaugeValue(leave.target.id)).toBeUndefined();
    expect(await latencyCount(leave.target.id)).toBeUndefined();
    expect(await register.getSingleMetricAsString('load_balancer_node_health_status')).not.toContain(leave.target.id);
    expect(await register.getSingleMetricAsString('load_balancer_health_check_latency_seconds')).not.toContain(
      leave.target.id,
    );
    expect(await gaugeValue(stay.target.id)).toBe(1);

    const left = leave.hits.length;
    const stayed = stay.hits.length;
    await waitFor('the other keeps going', () => stay.hits.length >= stayed + 4);
    expect(leave.hits.length).toBe(left);
    // A late result of the leaver (none here, but a check may be in flight) never brings its series back.
    expect(await gaugeValue(leave.target.id)).toBeUndefined();
    expect(setter.of(leave.target.id)).toEqual([true]);
  });

  it('a target that comes back starts afresh: its first result counts at once', async () => {
    const b = await backend(200);
    const setter = recorder();
    const c = checker(setter, { unhealthyThreshold: 5 });
    c.sync([b.target]);
    await waitFor('up', () => setter.calls.length === 1);
    c.sync([]);
    b.mode = 500;
    c.sync([b.target]);
    expect(c.status(b.target.id)).toBeUndefined();
    await waitFor('down at once', () => setter.calls.length === 2);
    expect(setter.of(b.target.id)).toEqual([true, false]);
  });

  it('a removed target with a check in flight drops its late result', async () => {
    const b = await backend('hang');
    const setter = recorder();
    const c = checker(setter, { timeoutMs: 2000, periodMs: 200 });
    c.sync([b.target]);
    await waitFor('a check in flight', () => b.sockets.size === 1 && b.hits.length === 1);
    c.sync([]);
    await waitFor('the check aborted', () => b.sockets.size === 0);
    await sleep(250);
    expect(setter.calls).toEqual([]);
    expect(await latencyCount(b.target.id)).toBeUndefined();
  });

  it('checks IPv6 targets, with the address in brackets in Host', async () => {
    let b: Backend;
    try {
      b = await backend(200, '::1');
    } catch (err) {
      // A host without IPv6 loopback cannot run this; say so rather than fail.
      console.warn(`skipping IPv6 check: ${(err as Error).message}`);
      return;
    }
    const setter = recorder();
    const c = checker(setter);
    c.sync([b.target]);
    await waitFor('first verdict', () => setter.calls.length > 0);
    expect(b.target.id).toBe(`[::1]:${b.target.port}`);
    expect(setter.of(b.target.id)).toEqual([true]);
    expect(b.hits[0].headers.host).toBe(`[::1]:${b.target.port}`);
  });

  it('checks a new target at once, whatever the jitter would draw', async () => {
    const b = await backend(200);
    const c = checker(recorder(), { periodMs: 5000 }, () => 0.99);
    const t0 = Date.now();
    c.sync([b.target]);
    await waitFor('the first check', () => b.hits.length === 1);
    expect(b.hits[0].at - t0).toBeLessThan(150); // not after a jittered delay, nor a period
  });

  it('spaces checks by the period ±10%, counted from the start of the previous check', async () => {
    const period = 300;
    const b = await backend(200);
    b.delayMs = 100; // a slow answer must not stretch the cadence
    // First check at once (no draw); the first gap (0.5) lets the connection path warm up, then 0.9× and ~1.1×.
    const draws = [0.5, 0, 0.99];
    const c = checker(recorder(), { periodMs: period }, () => draws.shift() ?? 0.5);
    const t0 = Date.now();
    c.sync([b.target]);
    await waitFor('four checks', () => b.hits.length >= 4, 3000);
    // Seen from the server, so each arrival carries some connection noise.
    const [first, second, third, fourth] = b.hits.map((h) => h.at);
    expect(first - t0).toBeLessThan(150);
    expect(third - second).toBeGreaterThanOrEqual(period * 0.9 - 20); // 270
    expect(third - second).toBeLessThan(period * 0.9 + 50); // not 270 + the 100 ms answer
    expect(fourth - third).toBeGreaterThanOrEqual(period * 1.1 - 20); // 330
    expect(fourth - third).toBeLessThan(period * 1.1 + 50);
  });

  it('keeps checking when the setter throws, and reports the error', async () => {
    const b = await backend(200);
    const errors: unknown[] = [];
    const c = new HealthChecker(
      {
        path: '/health',
        periodMs: PERIOD_MS,
        timeoutMs: TIMEOUT_MS,
        healthyThreshold: 1,
        unhealthyThreshold: 1,
        matcher: [{ from: 200, to: 200 }],
      },
      {
        setStatus: () => {
          throw new Error('balancer bug');
        },
      },
      { random: () => 0.5, onError: (err) => errors.push(err) },
    );
    checkers.push(c);
    c.sync([b.target]);
    await waitFor('an error', () => errors.length === 1);
    b.mode = 500;
    await waitFor('a second error', () => errors.length === 2);
    expect(c.status(b.target.id)).toBe(false);
    expect((errors[0] as Error).message).toBe('balancer bug');
  });

  it('stop() aborts checks in flight, clears every timer, and nothing is called after it', async () => {
    const live = new Set<NodeJS.Timeout>();
    const created: NodeJS.Timeout[] = [];
    const realSet = global.setTimeout;
    const realClear = global.clearTimeout;
    jest.spyOn(global, 'setTimeout').mockImplementation(((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => {
      const h = realSet(() => {
        live.delete(h);
        fn(...args);
      }, ms);
      live.add(h);
      created.push(h);
      return h;
    }) as unknown as typeof setTimeout);
    jest.spyOn(global, 'clearTimeout').mockImplementation(((h?: NodeJS.Timeout) => {
      if (h) live.delete(h);
      realClear(h);
    }) as typeof clearTimeout);

    const ok = await backend(200);
    const hung = await backend('hang');
    const setter = recorder();
    const c = new HealthChecker(
      {
        path: '/health',
        periodMs: 100,
        timeoutMs: TIMEOUT_MS,
        healthyThreshold: 1,
        unhealthyThreshold: 1,
        matcher: [{ from: 200, to: 200 }],
      },
      setter,
      { random: () => 0.5 },
    );
    checkers.push(c);
    c.sync([ok.target, hung.target]);
    await new Promise<void>((resolve, reject) => {
      const end = Date.now() + 3000;
      const poll = () => {
        if (setter.calls.length >= 1 && hung.sockets.size === 1) return resolve();
        if (Date.now() > end) return reject(new Error('timed out waiting for a verdict and a hung check'));
        realSet(poll, 5);
      };
      poll();
    });
    // Timers of the checker never hold the process open, even before stop().
    const ours = created.filter((h) => live.has(h));
    expect(ours.length).toBeGreaterThan(0);
    for (const h of ours) expect(h.hasRef()).toBe(false);

    c.stop();
    expect(live.size).toBe(0);
    expect(c.status(ok.target.id)).toBeUndefined();
    jest.restoreAllMocks();

    await waitFor('the hung check aborted', () => hung.sockets.size === 0);
    const calls = setter.calls.length;
    const hits = ok.hits.length;
    c.sync([ok.target]); // a stopped checker stays stopped
    await sleep(300);
    expect(setter.calls).toHaveLength(calls);
    expect(ok.hits.length).toBe(hits);
    expect(await gaugeValue(ok.target.id)).toBeUndefined();
  });

  it.each([
    [{ path: 'health' }, `path must start with '/', got "health"`],
    [{ periodMs: 0 }, 'periodMs must be > 0, got 0'],
    [{ timeoutMs: -1 }, 'timeoutMs must be > 0, got -1'],
    [{ healthyThreshold: 0 }, 'healthyThreshold must be an integer >= 1, got 0'],
    [{ unhealthyThreshold: 1.5 }, 'unhealthyThreshold must be an integer >= 1, got 1.5'],
    [{ matcher: [] }, 'matcher must hold at least one status range'],
  ])('rejects %j', (bad, message) => {
    const opts: HealthOptions = {
      path: '/',
      periodMs: 1000,
      timeoutMs: 1000,
      healthyThreshold: 2,
      unhealthyThreshold: 2,
      matcher: [{ from: 200, to: 200 }],
      ...bad,
    };
    expect(() => new HealthChecker(opts, recorder())).toThrow(message);
  });
});
