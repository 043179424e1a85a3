import * as net from 'node:net';
import { TargetRegistry } from '../../runtime/balancer';
import { loadConfig } from '../../runtime/config';
import { activeConnections, discoveryDuration, discoveryErrors, failOpenTotal, limitHits, requestsTotal } from '../../runtime/metrics';
import { EARLY_ANSWER_MAX_AGE_MS, HELD_ASKS_PER_SECOND, NOT_HELD_MS, RouteTable } from '../../runtime/routes';
import { makeTarget, Provider, RouteKey, Target } from '../../runtime/types';
import { Running, start } from '../../runtime/worker';
import { startBackend } from '../support/backend';
import { request, until } from '../support/net';

/** A provider whose answers the test releases by hand, counting calls per route. */
function gated(answer: (route: RouteKey) => Target[] | Error) {
  const calls: string[] = [];
  let open!: () => void;
  let gate = new Promise<void>((r) => (open = r));
  const provider: Provider = {
    name: 'gated',
    discover: async (route) => {
      calls.push(`${route.service}-${route.port}-${route.cluster}`);
      await gate;
      const a = answer(route);
      if (a instanceof Error) throw a;
      return a;
    },
  };
  return {
    provider,
    calls,
    release: () => open(),
    reset: () => (gate = new Promise<void>((r) => (open = r))),
  };
}

const key = (service: string, port = 80, cluster = 'prod'): RouteKey => ({ service, port, cluster });

describe('route table', () => {
  let clock = 0;
  const now = () => clock;
  let registry: TargetRegistry;
  beforeEach(() => {
    clock = 1_000_000;
    registry = new TargetRegistry({ poolSize: 1, breakerThreshold: 5, breakerTimeoutMs: 1000 });
  });
  afterEach(() => registry.close());

  const table = (provider: Provider, over: Partial<ConstructorParameters<typeof RouteTable>[2]> = {}) =>
    new RouteTable(provider, registry, { negativeCacheTtlMs: 10_000, maxRoutes: 1000, routeIdleTtlMs: 600_000, refreshMs: 30_000, now, ...over });

  test('concurrent first requests for a new route share one discovery', async () => {
    const g = gated(() => [makeTarget('10.0.0.1', 80)]);
    const t = table(g.provider);
    const waits = Array.from({ length: 200 }, () => t.resolve(key('api')));
    g.release();
    const pools = await Promise.all(waits);
    expect(g.calls).toEqual(['api-80-prod']);
    expect(new Set(pools).size).toBe(1);
    expect(t.get(key('api')).kind).toBe('pool');
  });

  test('a route with no target is remembered as absent for NEGATIVE_CACHE_TTL, then asked again', async () => {
    const g = gated(() => []);
    g.release();
    const t = table(g.provider);
    await Promise.all(Array.from({ length: 100 }, () => t.resolve(key('junk'))));
    expect(t.get(key('junk')).kind).toBe('absent');
    clock += 9_999;
    expect(t.get(key('junk')).kind).toBe('absent');
    expect(g.calls).toHaveLength(1);
    clock += 2;
    expect(t.get(key('junk')).kind).toBe('unknown');
    await t.resolve(key('junk'));
    expect(g.calls).toHaveLength(2);
  });

  test('a failed discovery is logged by the worker, unless the primary says it logged it for every worker', async () => {
    const lines: string[] = [];
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    try {
      const g = gated((r) => Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }, r.service === 'shared' ? { logged: true } : {}));
      g.release();
      const t = table(g.provider);
      await t.resolve(key('own')).catch(() => undefined);
      await t.resolve(key('shared')).catch(() => undefined);
      const said = lines.map((l) => JSON.parse(l)).filter((l) => String(l.msg).startsWith('discovery failed'));
      expect(said.map((l) => [l.route, l.code])).toEqual([['own-80-prod', 'ThrottlingException']]);
    } finally {
      stderr.mockRestore();
    }
  });

  test("a failed discovery is counted once: by the route table of a single process, not by a worker whose primary counted it", async () => {
    const errors = async (): Promise<number> => (await discoveryErrors.get()).values.find((v) => v.labels.provider === 'gated')?.value ?? 0;
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const own = gated(() => new Error('denied'));
      own.release();
      const before = await errors();
      await table(own.provider).resolve(key('a')).catch(() => undefined);
      expect(await errors()).toBe(before + 1);
      const viaPrimary = gated(() => new Error('denied'));
      viaPrimary.release();
      await table({ ...viaPrimary.provider, countsFailures: true }).resolve(key('b')).catch(() => undefined);
      expect(await errors()).toBe(before + 1);
    } finally {
      stderr.mockRestore();
    }
  });

  test('an ask the shutdown cuts short (the primary line closing) is no discovery failure: not said, not counted', async () => {
    const lines: string[] = [];
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    const failures = async (): Promise<number> => (await discoveryDuration.get()).values
      .filter((v) => v.labels.outcome === 'error' && v.metricName === 'karma_discovery_duration_seconds_count').reduce((n, v) => n + v.value, 0);
    try {
      const g = gated((r) => r.service === 'aws' ? Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }) : Object.assign(new Error('closing'), { closing: true }));
      const t = table(g.provider);
      const before = await failures();
      const asked = [t.resolve(key('pending')).catch(() => undefined), t.resolve(key('aws')).catch(() => undefined)];
      t.stop();
      g.release();
      await Promise.all(asked);
      // AWS failing during the drain is still said and counted; the cut ask is not.
      expect(lines.filter((l) => l.includes('discovery failed')).map((l) => JSON.parse(l).route)).toEqual(['aws-80-prod']);
      expect(await failures()).toBe(before + 1);
    } finally {
      stderr.mockRestore();
    }
  });

  test("a route whose first discovery failed is absent for as long as the primary holds the failure, else for a second", async () => {
    const g = gated((r) => Object.assign(new Error('denied'), { name: 'AccessDeniedException', logged: true }, r.service === 'held' ? { retryInMs: 8000 } : {}));
    g.release();
    const t = table(g.provider);
    expect(await t.resolve(key('held'))).toBeUndefined();
    expect(await t.resolve(key('own'))).toBeUndefined();
    clock += 1001;
    expect([t.get(key('held')).kind, t.get(key('own')).kind]).toEqual(['absent', 'unknown']);
    clock += 7000;
    expect(t.get(key('held')).kind).toBe('unknown');
  });

  test('a rediscovery the primary answered with the last targets, because AWS failed, is timed as a failure', async () => {
    const outcomes = async (): Promise<Record<string, number>> => Object.fromEntries((await discoveryDuration.get()).values
      .filter((v) => v.metricName === 'karma_discovery_duration_seconds_count' && v.labels.provider === 'stale-test')
      .map((v) => [String(v.labels.outcome), v.value]));
    let stale = false;
    const provider: Provider = {
      name: 'stale-test',
      discover: async () => [],
      discoverAged: async () => ({ targets: [makeTarget('10.0.0.1', 80)], ageMs: 0, ...(stale ? { stale } : {}) }),
    };
    const t = table(provider);
    await t.resolve(key('api'));
    stale = true;
    await t.refresh();
    expect(await outcomes()).toEqual({ ok: 1, error: 1 });
    expect(t.get(key('api'))).toMatchObject({ kind: 'pool', pool: { size: 1 } });
  });

  test("a route whose rediscovery hangs holds only itself: the next pass refreshes the others", async () => {
    let release!: () => void;
    const hung = new Promise<void>((r) => (release = r));
    let stuck = false;
    const fastAnswers: Target[][] = [[makeTarget('10.0.0.1', 80)], [makeTarget('10.0.0.2', 80)]];
    const provider: Provider = {
      name: 'test',
      discover: async (route) => {
        if (route.service === 'slow') {
          if (stuck) await hung;
          return [makeTarget('10.0.1.1', 80)];
        }
        return fastAnswers.length > 1 ? fastAnswers.shift()! : fastAnswers[0];
      },
    };
    const t = table(provider);
    await t.resolve(key('slow'));
    await t.resolve(key('fast'));
    stuck = true;
    clock += 30_000;
    const first = t.refresh({ dueOnly: true }); // slow hangs in it
    await new Promise((r) => setImmediate(r));
    const fast = t.get(key('fast'));
    expect(fast.kind === 'pool' && fast.pool.targets.map((x) => x.host)).toEqual(['10.0.0.2']);
    fastAnswers.splice(0, 1, [makeTarget('10.0.0.3', 80)]);
    clock += 30_000;
    await t.refresh({ dueOnly: true }); // slow is still hanging: fast goes on alone
    const later = t.get(key('fast'));
    expect(later.kind === 'pool' && later.pool.targets.map((x) => x.host)).toEqual(['10.0.0.3']);
    release();
    await first;
  });

  test('a known route that became empty is asked again after NEGATIVE_CACHE_TTL, not a whole period', async () => {
    let answer: Target[] = [makeTarget('10.0.0.1', 80)];
    const calls: number[] = [];
    const provider: Provider = { name: 'test', discover: async () => (calls.push(clock), answer) };
    const t = table(provider, { negativeCacheTtlMs: 10_000, refreshMs: 30_000 });
    await t.resolve(key('api'));
    answer = [];
    clock += 30_000;
    await t.refresh({ dueOnly: true });
    expect(t.get(key('api'))).toMatchObject({ kind: 'pool' });
    answer = [makeTarget('10.0.0.2', 80)];
    clock += 9_000;
    await t.refresh({ dueOnly: true });
    expect(calls).toHaveLength(2);
    clock += 1_000;
    await t.refresh({ dueOnly: true }); // NEGATIVE_CACHE_TTL after it was found empty
    expect(calls).toHaveLength(3);
    const found = t.get(key('api'));
    expect(found.kind === 'pool' && found.pool.targets.map((x) => x.host)).toEqual(['10.0.0.2']);
  });

  test('a refusing target has its route rediscovered at once, with a fresh answer; then at most once a second, less often while nothing changes', async () => {
    let answer = [makeTarget('10.0.0.1', 80)];
    const asked: (number | undefined)[] = [];
    const provider: Provider = {
      name: 'test',
      discover: async () => answer,
      discoverAged: async (_route, _signal, maxAgeMs) => (asked.push(maxAgeMs), { targets: answer, ageMs: 0 }),
    };
    const t = table(provider);
    await t.resolve(key('api'));
    asked.length = 0;
    const settle = () => new Promise((r) => setImmediate(r));

    t.suspect('api-80-prod');
    t.suspect('api-80-prod'); // the same refusals: one rediscovery
    await settle();
    expect(asked).toEqual([EARLY_ANSWER_MAX_AGE_MS]);
    clock += 999;
    t.suspect('api-80-prod');
    await settle();
    expect(asked).toHaveLength(1);
    clock += 1;
    t.suspect('api-80-prod'); // a second on; nothing changed: the next gap is two seconds
    await settle();
    expect(asked).toHaveLength(2);
    clock += 1_999;
    t.suspect('api-80-prod');
    await settle();
    expect(asked).toHaveLength(2);
    clock += 1;
    answer = [makeTarget('10.0.0.2', 80)]; // the new task is listed now
    t.suspect('api-80-prod');
    await settle();
    expect(asked).toHaveLength(3);
    const found = t.get(key('api'));
    expect(found.kind === 'pool' && found.pool.targets.map((x) => x.host)).toEqual(['10.0.0.2']);
    // A change brings the gap back to a second.
    clock += 1_000;
    t.suspect('api-80-prod');
    await settle();
    expect(asked).toHaveLength(4);
    // Routes the table does not hold are not discovered this way.
    t.suspect('nope-80-prod');
    await settle();
    expect(asked).toHaveLength(4);
  });

  test("a refusal during the period's rediscovery waits for it, then asks past the caches unless it brought new targets", async () => {
    let release!: () => void;
    const asked: (number | undefined)[] = [];
    const provider: Provider = {
      name: 'test',
      discover: async () => [makeTarget('10.0.0.1', 80)],
      discoverAged: async (_route, _signal, maxAgeMs) => {
        asked.push(maxAgeMs);
        if (asked.length === 2) await new Promise<void>((r) => (release = r)); // the period's, answered from a cache
        return { targets: [makeTarget(maxAgeMs === undefined ? '10.0.0.1' : '10.0.0.2', 80)], ageMs: 0 };
      },
    };
    const t = table(provider);
    await t.resolve(key('api'));
    clock += 30_000;
    const periodic = t.refresh({ dueOnly: true });
    await new Promise((r) => setImmediate(r));
    const waited = t.suspect('api-80-prod');
    expect(waited).toBeDefined();
    release();
    await periodic;
    await waited;
    expect(asked).toEqual([undefined, undefined, EARLY_ANSWER_MAX_AGE_MS]);
    const found = t.get(key('api'));
    expect(found.kind === 'pool' && found.pool.targets.map((x) => x.host)).toEqual(['10.0.0.2']);
  });

  test('at most MAX_ROUTES routes are kept: absent ones go first, then the least recently used', async () => {
    const g = gated((r) => (r.service.startsWith('junk') ? [] : [makeTarget('10.0.0.1', r.port)]));
    g.release();
    const t = table(g.provider, { maxRoutes: 3 });
    await t.resolve(key('a'));
    await t.resolve(key('junk1'));
    await t.resolve(key('b'));
    clock += 1;
    t.get(key('a')); // a is now more recent than b
    await t.resolve(key('c')); // evicts junk1
    expect(t.get(key('junk1')).kind).toBe('unknown');
    await t.resolve(key('d')); // evicts b, the least recently used
    expect(t.size).toBe(3);
    expect(t.get(key('b')).kind).toBe('unknown');
    expect(t.get(key('a')).kind).toBe('pool');
  });

  test('at most MAX_TARGETS targets are held over all routes: the least recently used routes go, not the one just found, however large', async () => {
    // Every port of the service is a route holding all of its 100 tasks.
    const tasks = (port: number) => Array.from({ length: 100 }, (_, i) => makeTarget(`10.0.${i >> 8}.${i & 255}`, port));
    const g = gated((r) => (r.service === 'huge' ? [...tasks(r.port), ...tasks(r.port + 10_000)] : tasks(r.port)));
    g.release();
    const t = table(g.provider, { maxTargets: 250 });
    const before = (await limitHits.get()).values.find((v) => v.labels.limit === 'targets')?.value ?? 0;
    for (const port of [1, 2]) {
      await t.resolve(key('svc', port));
      clock += 3000;
    }
    t.get(key('svc', 1)); // port 1 is now more recent than port 2
    clock += 3000;
    await t.resolve(key('svc', 3)); // 300 held: port 2 goes
    expect([1, 2, 3].map((p) => t.get(key('svc', p)).kind)).toEqual(['pool', 'unknown', 'pool']);
    expect(registry.targets()).toHaveLength(200);
    // A route larger than the bound on its own is kept, the others going for it.
    clock += 3000;
    await t.resolve(key('huge', 4));
    expect([1, 3].map((p) => t.get(key('svc', p)).kind)).toEqual(['unknown', 'unknown']);
    expect(t.get(key('huge', 4)).kind).toBe('pool');
    expect(((await limitHits.get()).values.find((v) => v.labels.limit === 'targets')?.value ?? 0) - before).toBe(3);
    t.close();
  });

  test('routes used in the last two seconds are not forgotten for MAX_TARGETS: past it then, said once, rather than found again at every request', async () => {
    const g = gated((r) => Array.from({ length: 100 }, (_, i) => makeTarget(`10.0.0.${i + 1}`, r.port)));
    g.release();
    const t = table(g.provider, { maxTargets: 250 });
    const lines: string[] = [];
    const spy = jest.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    try {
      for (let round = 0; round < 3; round++) {
        for (const port of [1, 2, 3]) {
          const r = t.get(key('svc', port));
          if (r.kind !== 'pool') await t.resolve(key('svc', port));
          clock += 100;
        }
      }
      expect(g.calls).toHaveLength(3); // each found once, all three kept: 300 targets
      expect([1, 2, 3].map((p) => t.get(key('svc', p)).kind)).toEqual(['pool', 'pool', 'pool']);
      expect(lines.filter((l) => l.includes('hold more targets than MAX_TARGETS'))).toHaveLength(1);
    } finally {
      spy.mockRestore();
      t.close();
    }
  });

  test('a route unused for ROUTE_IDLE_TTL is forgotten at the next refresh', async () => {
    const g = gated(() => [makeTarget('10.0.0.1', 80)]);
    g.release();
    const t = table(g.provider, { routeIdleTtlMs: 60_000 });
    await t.resolve(key('api'));
    clock += 60_001;
    await t.refresh();
    expect(t.size).toBe(0);
    expect(registry.targets()).toEqual([]);
  });

  test('a forgotten route takes its karma_fail_open_total series along: clients naming ever new ports cannot pile them up', async () => {
    const g = gated((r) => [makeTarget('10.0.0.1', r.port)]);
    g.release();
    const t = table(g.provider, { routeIdleTtlMs: 60_000 });
    const series = async (): Promise<string[]> => (await failOpenTotal.get()).values.map((v) => String(v.labels.route)).filter((r) => r.startsWith('failopen-'));
    for (const port of [1001, 1002, 1003]) {
      const pool = (await t.resolve(key('failopen', port)))!;
      registry.setStatus(pool.targets[0], false);
      expect(pool.pick()!.failOpen).toBe(true);
    }
    expect(await series()).toHaveLength(3);
    clock += 60_001;
    await t.refresh();
    expect(t.size).toBe(0);
    expect(await series()).toEqual([]);
  });

  test("the one pool of static, tag and asg modes is never forgotten: not when idle past ROUTE_IDLE_TTL, not to make room", async () => {
    const g = gated((r) => [makeTarget('10.0.0.1', r.port)]);
    g.release();
    const t = table(g.provider, { routeIdleTtlMs: 60_000, maxRoutes: 1 });
    const pool = await t.pin(key('pool'));
    expect(t.get(key('pool'))).toMatchObject({ kind: 'pool', pool }); // a request, as the server's get() makes
    clock += 60_001;
    await t.refresh();
    expect(t.get(key('pool'))).toMatchObject({ kind: 'pool', pool });
    expect(registry.targets().map((x) => x.id)).toEqual(['10.0.0.1:80']);
    clock += 1;
    expect(await t.resolve(key('other'))).toBeUndefined(); // no room: the pool is not evicted for it
    expect(t.get(key('pool')).kind).toBe('pool');
  });

  test('refresh: a service scaled to zero becomes empty, and a failing discovery keeps the last targets', async () => {
    let answer: Target[] | Error = [makeTarget('10.0.0.1', 80), makeTarget('10.0.0.2', 80)];
    const g = gated(() => answer);
    g.release();
    const t = table(g.provider);
    const pool = (await t.resolve(key('api')))!;
    expect(pool.size).toBe(2);
    answer = Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' });
    await t.refresh();
    expect(pool.size).toBe(2);
    answer = [];
    await t.refresh();
    expect(pool.size).toBe(0);
    expect(pool.pick()).toBeUndefined();
  });
});

describe('route table behind the server', () => {
  let p: Running;
  afterEach(async () => p?.stop());

  test('200 concurrent requests for a new route make one discovery; 100 for a junk route make one', async () => {
    const backend = await startBackend('api');
    try {
      const g = gated((r) => (r.service === 'api' ? [makeTarget('127.0.0.1', backend.port)] : []));
      p = await start(loadConfig({ DOMAIN: 'example.com', PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off' }), { provider: g.provider });
      const api = Array.from({ length: 200 }, () => request(p.port, { headers: { Host: `api-${backend.port}-prod.example.com` } }));
      const junk = Array.from({ length: 100 }, () => request(p.port, { headers: { Host: 'nothing-80-prod.example.com' } }));
      await new Promise((r) => setTimeout(r, 200));
      g.release();
      const replies = await Promise.all([...api, ...junk]);
      expect(replies.slice(0, 200).every((r) => r.status === 200)).toBe(true);
      expect(replies.slice(200).every((r) => r.status === 503)).toBe(true);
      expect(g.calls.sort()).toEqual([`api-${backend.port}-prod`, 'nothing-80-prod']);
    } finally {
      await backend.close();
    }
  });

  test('a request answered 503 at SHUTDOWN_TIMEOUT while its route is discovered counts as a 503; one whose client left, as 499', async () => {
    const g = gated(() => []);
    p = await start(loadConfig({ DOMAIN: 'example.com', PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '0.5' }), { provider: g.provider });
    const counted = async (code: string): Promise<number> =>
      (await requestsTotal.get()).values.find((v) => v.labels.route === 'none' && v.labels.code === code)?.value ?? 0;
    const open = async (): Promise<number> => (await activeConnections.get()).values[0]?.value ?? 0;
    const before = { '4xx': await counted('4xx'), '5xx': await counted('5xx') };
    const connections = await open();
    const leaving = net.connect(p.port, '127.0.0.1');
    leaving.on('error', () => undefined);
    try {
      const waiting = request(p.port, { headers: { Host: 'slow-80-prod.example.com' }, timeoutMs: 10_000 });
      leaving.write('GET / HTTP/1.1\r\nHost: gone-80-prod.example.com\r\n\r\n');
      await until('both discoveries under way', () => g.calls.length === 2);
      // A reset, so that the proxy knows at once (a FIN alone is a client still waiting for its answer).
      leaving.resetAndDestroy();
      await until('the client that left gone', async () => (await open()) === connections + 1);
      const stopped = p.stop();
      const reply = await waiting;
      expect([reply.status, reply.headers.connection, reply.headers['retry-after']]).toEqual([503, 'close', '1']);
      await stopped;
      // Counted when it is answered (before the process would exit), and as what the client got.
      expect(await counted('5xx')).toBe(before['5xx'] + 1);
      expect(await counted('4xx')).toBe(before['4xx']);
      // The discoveries end: the client that left is counted as nginx's 499, and nothing more.
      g.release();
      await until('the client that left counted', async () => (await counted('4xx')) > before['4xx']);
      await new Promise((r) => setTimeout(r, 50));
      expect([await counted('4xx'), await counted('5xx')]).toEqual([before['4xx'] + 1, before['5xx'] + 1]);
    } finally {
      leaving.destroy();
      g.release();
    }
  });
});

describe('new-route budget', () => {
  test('past NEW_ROUTE_RATE (bursts of 4 s worth) a new route is refused without a discovery, and the budget refills', async () => {
    let clock = 0;
    const registry = new TargetRegistry({ poolSize: 1, breakerThreshold: 5, breakerTimeoutMs: 1000 });
    const g = gated(() => []);
    g.release();
    const t = new RouteTable(g.provider, registry, {
      negativeCacheTtlMs: 10_000, maxRoutes: 1000, routeIdleTtlMs: 600_000, refreshMs: 30_000, newRoutesPerSecond: 2, now: () => clock,
    });
    for (let i = 0; i < 8; i++) await t.resolve(key(`junk${i}`));
    expect(g.calls).toHaveLength(8);
    expect(await t.resolve(key('junk8'))).toBeUndefined();
    expect(g.calls).toHaveLength(8);
    clock += 500; // one more token at 2 per second
    await t.resolve(key('junk9'));
    expect(g.calls).toHaveLength(9);
    expect(await t.resolve(key('junk10'))).toBeUndefined();
    expect(g.calls).toHaveLength(9);
    registry.close();
  });

  test('with the budget spent, a route whose targets the primary holds comes in without a discovery; one it does not hold is refused and takes no place', async () => {
    let clock = 0;
    const registry = new TargetRegistry({ poolSize: 1, breakerThreshold: 5, breakerTimeoutMs: 1000 });
    const g = gated(() => []);
    g.release();
    const asked: string[] = [];
    const provider: Provider = {
      ...g.provider,
      held: async (route) => (asked.push(route.service), route.service === 'real' ? { targets: [makeTarget('10.0.0.9', 80)], ageMs: 40_000 } : undefined),
    };
    const t = new RouteTable(provider, registry, {
      negativeCacheTtlMs: 10_000, maxRoutes: 5, routeIdleTtlMs: 600_000, refreshMs: 30_000, newRoutesPerSecond: 1, now: () => clock,
    });
    for (let i = 0; i < 4; i++) await t.resolve(key(`junk${i}`)); // the budget, spent on Hosts made up
    expect(g.calls).toHaveLength(4);
    const pool = await t.resolve(key('real'));
    expect(pool?.targets.map((x) => x.id)).toEqual(['10.0.0.9:80']);
    expect(t.get(key('real'))).toMatchObject({ kind: 'pool' });
    expect(await t.resolve(key('junk4'))).toBeUndefined();
    expect(t.get(key('junk4'))).toEqual({ kind: 'unknown' });
    expect(asked).toEqual(['real', 'junk4']);
    expect(g.calls).toHaveLength(4); // no discovery for either
    // Hosts made up at any rate: one ask per route at a time, and not again for NOT_HELD_MS; each
    // request refused is a limit hit.
    const hits = async (): Promise<number> => (await limitHits.get()).values.find((v) => v.labels.limit === 'new_routes')?.value ?? 0;
    const before = await hits();
    await Promise.all([...Array.from({ length: 10 }, () => t.resolve(key('junk5'))), t.resolve(key('junk4'))]);
    expect(asked).toEqual(['real', 'junk4', 'junk5']);
    expect((await hits()) - before).toBe(11);
    clock += NOT_HELD_MS;
    await t.resolve(key('spend')); // the token that second brought: a discovery
    await t.resolve(key('junk4'));
    expect(asked).toEqual(['real', 'junk4', 'junk5', 'junk4']);
    expect(g.calls).toHaveLength(5);
    // Held 40 s already: due again at once, a refresh of a known route, which needs no budget.
    await t.refresh({ dueOnly: true });
    expect(g.calls).toHaveLength(6);
    registry.close();
  });

  test(`past the budget, asks for held targets are themselves bounded: ${HELD_ASKS_PER_SECOND} a second`, async () => {
    let clock = 0;
    const registry = new TargetRegistry({ poolSize: 1, breakerThreshold: 5, breakerTimeoutMs: 1000 });
    const g = gated(() => []);
    g.release();
    let asks = 0;
    const provider: Provider = { ...g.provider, held: async () => (asks++, undefined) };
    const t = new RouteTable(provider, registry, {
      negativeCacheTtlMs: 10_000, maxRoutes: 10_000, routeIdleTtlMs: 600_000, refreshMs: 30_000, newRoutesPerSecond: 1, now: () => clock,
    });
    for (let i = 0; i < 4 + 3 * HELD_ASKS_PER_SECOND; i++) await t.resolve(key(`junk${i}`));
    expect(asks).toBe(HELD_ASKS_PER_SECOND);
    clock += 500;
    for (let i = 0; i < HELD_ASKS_PER_SECOND; i++) await t.resolve(key(`more${i}`));
    expect(asks).toBe(HELD_ASKS_PER_SECOND * 1.5);
    registry.close();
  });
});
