import type { Worker } from 'node:cluster';
import { EventEmitter } from 'node:events';
import { until } from '../support/net';
import { Counter, Registry } from 'prom-client';
import { loadConfig } from '../../runtime/config';
import { Coordinator, STALE_ANSWER_AFTER_MS } from '../../runtime/coordinator';
import { discoveryErrors, memoryCacheLookups } from '../../runtime/metrics';
import { makeTarget, Provider, RouteKey, Target } from '../../runtime/types';

const route: RouteKey = { service: 'api', port: 80, cluster: 'prod' };

function counting(answer: (route: RouteKey) => Target[]): Provider & { calls: number } {
  const p = { name: 'test', calls: 0, discover: async (route: RouteKey) => (p.calls++, answer(route)) };
  return p;
}

/** A provider that fails with AWS's error `name` (and `message`) while `failing`, else answers `targets`; it counts its calls. */
function flaky(targets: Target[], name: string, message = name): Provider & { calls: number; failing: boolean } {
  const p = {
    name: 'test',
    calls: 0,
    failing: false,
    discover: async () => {
      p.calls++;
      if (p.failing) throw Object.assign(new Error(message), { name });
      return targets;
    },
  };
  return p;
}

describe('the primary shares discovery among workers', () => {
  let clock = 0;
  const config = loadConfig({ DOMAIN: 'example.com', NODE_CHECK_PERIOD: '30', NEGATIVE_CACHE_TTL: '10', HEALTH_CHECK_PATH: 'off' });

  test('concurrent and same-period requests for a route make one discovery', async () => {
    const provider = counting(() => [makeTarget('10.0.0.1', 80)]);
    const c = new Coordinator(config, provider, () => clock);
    await Promise.all([c.discover(route), c.discover(route), c.discover(route)]);
    clock += 26_000;
    await c.discover(route);
    expect(provider.calls).toBe(1);
    clock += 2_000; // 28 s: past 0.9 × NODE_CHECK_PERIOD
    await c.discover(route);
    expect(provider.calls).toBe(2);
    await c.close();
  });

  test('it remembers at most MAX_TARGETS targets for each worker over the routes asked: the least recently asked go first', async () => {
    const small = loadConfig({ DOMAIN: 'example.com', NODE_CHECK_PERIOD: '30', HEALTH_CHECK_PATH: 'off', WORKERS: '1', MAX_TARGETS: '250' });
    const provider = counting((r) => Array.from({ length: 100 }, (_, i) => makeTarget(`10.0.0.${i + 1}`, r.port)));
    const c = new Coordinator(small, provider, () => clock);
    const port = (p: number) => ({ ...route, port: p });
    for (const p of [1, 2]) await c.discover(port(p));
    await c.discover(port(1)); // asked again: port 2 is now the least recently asked
    await c.discover(port(3)); // 300 held: port 2's answer goes
    expect(provider.calls).toBe(3);
    expect((await c.held(port(2))).targets).toEqual([]);
    expect((await c.held(port(1))).targets).toHaveLength(100);
    expect((await c.held(port(3))).targets).toHaveLength(100);
    await c.close();
  });

  test('past MAX_TARGETS it keeps the answers of routes a worker uses, however long since they were asked (once a period), over Hosts made up asked since', async () => {
    const small = loadConfig({ DOMAIN: 'example.com', NODE_CHECK_PERIOD: '30', HEALTH_CHECK_PATH: 'off', WORKERS: '1', MAX_TARGETS: '250' });
    const provider = counting((r) => Array.from({ length: r.port === 80 ? 1 : 100 }, (_, i) => makeTarget(`10.0.0.${i + 1}`, r.port)));
    const c = new Coordinator(small, provider, () => clock);
    const worker = Object.assign(new EventEmitter(), { id: 1, isConnected: () => true, send: () => true });
    c.add(worker as unknown as Worker);
    const real = await c.discover(route); // port 80, one target, served by the worker
    worker.emit('message', { t: 'in-use', targets: real });
    for (const p of [1, 2, 3, 4]) await c.discover({ ...route, port: p }); // made up, asked since
    expect((await c.held(route)).targets).toEqual(real);
    await c.close();
  });

  test('its in-memory cache counts hits and misses (karma_discovery_memory_cache_total), with no Redis at all', async () => {
    const count = async (result: string) => (await memoryCacheLookups.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
    const [hits, misses] = [await count('hit'), await count('miss')];
    const provider = counting(() => [makeTarget('10.0.0.1', 80)]);
    const c = new Coordinator(config, provider, () => clock);
    await c.discover(route); // the first ask: a discovery
    await c.discover(route);
    await c.discover(route);
    const absent = counting(() => []);
    const d = new Coordinator(config, absent, () => clock);
    await d.discover(route); // a service with no task: found absent once
    await d.discover(route); // and held so for NEGATIVE_CACHE_TTL
    expect([await count('hit') - hits, await count('miss') - misses]).toEqual([3, 2]);
    expect([provider.calls, absent.calls]).toEqual([1, 1]);
    await c.close();
    await d.close();
  });

  test('a discovery that never settles fails at the deadline, and the next ask after the failure\'s hold starts a new one', async () => {
    let hang = true;
    const signals: AbortSignal[] = [];
    const provider: Provider & { calls: number } = {
      name: 'test',
      calls: 0,
      discover: (_route, signal) => {
        provider.calls++;
        signals.push(signal!);
        // Heeds nothing: an answer that stalls after its headers, as an SDK call once did.
        return hang ? new Promise<Target[]>(() => undefined) : Promise.resolve([makeTarget('10.0.0.1', 80)]);
      },
    };
    const c = new Coordinator(config, provider, () => clock, 200);
    await expect(Promise.all([c.discover(route), c.discover(route)])).rejects.toThrow('discovery took over 0.2 s');
    expect(provider.calls).toBe(1);
    expect(signals[0].aborted).toBe(true);
    hang = false;
    clock += 1000; // past the failure's hold (FAILED_ROUTE_RETRY_MS)
    expect(await c.discover(route)).toEqual([makeTarget('10.0.0.1', 80)]);
    expect(provider.calls).toBe(2);
    await c.close();
  });

  test('an answer shared through Redis is as old as its discovery: kept for what is left of the period, and its age passed to the worker', async () => {
    let age = 20_000;
    const provider: Provider & { calls: number } = {
      name: 'test',
      calls: 0,
      discover: async () => [],
      discoverAged: async () => (provider.calls++, { targets: [makeTarget('10.0.0.1', 80)], ageMs: age }),
    };
    const c = new Coordinator(config, provider, () => clock);
    expect(await c.discoverAged(route)).toEqual({ targets: [makeTarget('10.0.0.1', 80)], ageMs: 20_000 });
    clock += 5_000;
    expect((await c.discoverAged(route)).ageMs).toBe(25_000);
    expect(provider.calls).toBe(1);
    // 27 s old: 0.9 of NODE_CHECK_PERIOD, not 27 s more.
    clock += 2_000;
    age = 0;
    expect(await c.discoverAged(route)).toEqual({ targets: [makeTarget('10.0.0.1', 80)], ageMs: 0 });
    expect(provider.calls).toBe(2);
    await c.close();
  });

  test('an empty answer is shared no longer than NEGATIVE_CACHE_TTL', async () => {
    let targets: Target[] = [];
    const provider = counting(() => targets);
    const c = new Coordinator(config, provider, () => clock);
    expect(await c.discover(route)).toEqual([]);
    clock += 8_000;
    expect(await c.discover(route)).toEqual([]);
    expect(provider.calls).toBe(1);
    targets = [makeTarget('10.0.0.1', 80)];
    clock += 1_500; // 9.5 s
    expect(await c.discover(route)).toEqual(targets);
    expect(provider.calls).toBe(2);
    await c.close();
  });

  test('when a later discovery fails, the last answer is given (a worker started meanwhile gets the targets), and retried next ask', async () => {
    const provider = flaky([makeTarget('10.0.0.1', 80), makeTarget('10.0.0.2', 80)], 'ServerException');
    const c = new Coordinator(config, provider, () => clock);
    expect(await c.discover(route)).toHaveLength(2);
    provider.failing = true;
    clock += 60_000;
    const errorsBefore = (await discoveryErrors.get()).values.find((v) => v.labels.provider === 'test')?.value ?? 0;
    expect(await c.discover(route)).toEqual([makeTarget('10.0.0.1', 80), makeTarget('10.0.0.2', 80)]);
    // Counted where it happened, since the workers see a success.
    expect((await discoveryErrors.get()).values.find((v) => v.labels.provider === 'test')?.value).toBe(errorsBefore + 1);
    expect(await c.discover(route)).toHaveLength(2);
    expect(provider.calls).toBe(3); // each ask tried AWS again
    await expect(c.discover({ ...route, service: 'never-seen' })).rejects.toThrow('ServerException');
    // Kept while workers ask for it, however old the answer; forgotten once nobody has asked for a while.
    clock += 500_000;
    await c.discover(route);
    c.prune(100_000);
    expect(await c.discover(route)).toHaveLength(2);
    clock += 200_000;
    c.prune(100_000);
    await expect(c.discover(route)).rejects.toThrow('ServerException');
    await c.close();
  });

  test('routes are remembered up to MAX_ROUTES per worker, the least recently asked forgotten first', async () => {
    const provider = counting(() => [makeTarget('10.0.0.1', 80)]);
    const c = new Coordinator(loadConfig({ DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', MAX_ROUTES: '2', WORKERS: '2' }), provider, () => clock);
    const r = (i: number): RouteKey => ({ ...route, service: `s${i}` });
    for (const i of [1, 2, 3, 4]) await c.discover(r(i));
    await c.discover(r(1)); // asked again: the most recent now
    await c.discover(r(5)); // one too many: s2, the least recently asked, goes
    expect(provider.calls).toBe(5);
    for (const i of [1, 3, 4, 5]) await c.discover(r(i));
    expect(provider.calls).toBe(5);
    await c.discover(r(2));
    expect(provider.calls).toBe(6);
    await c.close();
  });

  test('a route forgotten while its discovery runs is not remembered when the answer comes', async () => {
    let release!: () => void;
    const slow: Provider = { name: 'test', discover: () => new Promise<Target[]>((r) => (release = () => r([makeTarget('10.0.0.1', 80)]))) };
    const c = new Coordinator(loadConfig({ DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', MAX_ROUTES: '1', WORKERS: '1' }), slow, () => clock);
    const first = c.discover({ ...route, service: 's1' });
    const release1 = release;
    const second = c.discover({ ...route, service: 's2' }); // pushes s1 out
    release1();
    release();
    await Promise.all([first, second]);
    expect((c as unknown as { fresh: Map<string, unknown> }).fresh.size).toBe(1);
    await c.close();
  });

  test('a failing discovery is logged once a period for all the workers, though each ask tries AWS again', async () => {
    const lines: string[] = [];
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    const provider = flaky([makeTarget('10.0.0.1', 80)], 'ThrottlingException', 'Rate exceeded');
    provider.failing = true;
    const c = new Coordinator(config, provider, () => clock);
    const failures = (): Record<string, unknown>[] => lines.map((l) => JSON.parse(l)).filter((l) => String(l.msg).startsWith('discovery failed'));
    try {
      // Two workers asking a few seconds apart, as their periods fall.
      const first = await c.discover(route).catch((e: unknown) => e);
      clock += 3_000;
      const second = await c.discover(route).catch((e: unknown) => e);
      expect(provider.calls).toBe(2);
      expect(failures()).toEqual([expect.objectContaining({ level: 'warn', msg: 'discovery failed; the route has no targets yet', route: 'api-80-prod', code: 'ThrottlingException' })]);
      // The workers are told it was said, so that they do not say it again.
      expect([first, second]).toEqual([expect.objectContaining({ logged: true }), expect.objectContaining({ logged: true })]);
      clock += 30_000;
      await c.discover(route).catch(() => undefined);
      expect(failures()).toHaveLength(2);
      // Once it succeeds, the next failure is said at once, with the targets that stay in use.
      provider.failing = false;
      clock += 30_000;
      await c.discover(route);
      provider.failing = true;
      clock += 30_000;
      expect(await c.discover(route)).toHaveLength(1);
      expect(failures()).toHaveLength(3);
      expect(failures()[2]).toMatchObject({ msg: 'discovery failed: the last targets found stay in use', targets: 1 });
    } finally {
      stderr.mockRestore();
      await c.close();
    }
  });

  test('an ask for an answer no older than maxAgeMs passes over a cached one that is older', async () => {
    const provider = counting(() => [makeTarget('10.0.0.1', 80)]);
    const c = new Coordinator(config, provider, () => clock);
    await c.discover(route);
    clock += 200;
    expect((await c.discoverAged(route, 250)).ageMs).toBe(200); // young enough
    expect(provider.calls).toBe(1);
    clock += 100;
    expect((await c.discoverAged(route, 250)).ageMs).toBe(0);
    expect(provider.calls).toBe(2);
    await c.close();
  });

  test('a route whose first discovery failed is answered with that failure for a second, twice as long at each failure in a row up to NEGATIVE_CACHE_TTL, until one succeeds', async () => {
    const provider = flaky([makeTarget('10.0.0.1', 80)], 'AccessDeniedException', 'not authorized to perform ecs:ListTasks');
    provider.failing = true;
    const c = new Coordinator(config, provider, () => clock);
    const failure = (): Promise<unknown> => c.discover(route).then(() => 'answered', (e: unknown) => e);
    // The waits AWS is left alone for: 1, 2, 4, 8, then NEGATIVE_CACHE_TTL (10 s).
    for (const waitMs of [1000, 2000, 4000, 8000, 10_000, 10_000]) {
      const calls = provider.calls;
      expect(await failure()).toMatchObject({ message: 'not authorized to perform ecs:ListTasks', name: 'AccessDeniedException', logged: true, retryInMs: waitMs });
      expect(provider.calls).toBe(calls + 1);
      // Every worker asking meanwhile gets the same failure, and how long it still holds, without a call.
      clock += waitMs - 1;
      expect(await failure()).toMatchObject({ name: 'AccessDeniedException', retryInMs: 1 });
      expect(provider.calls).toBe(calls + 1);
      clock += 1;
    }
    provider.failing = false;
    expect(await c.discover(route)).toHaveLength(1);
    // A success ends it: with targets found, the next failure is answered with them, not held.
    provider.failing = true;
    clock += 60_000;
    expect(await c.discoverAged(route)).toEqual({ targets: [makeTarget('10.0.0.1', 80)], ageMs: 0, stale: true });
    // Once nobody asks for the route and it is forgotten, a failure starts again at a second.
    clock += 200_000;
    c.prune(100_000);
    expect(await failure()).toMatchObject({ retryInMs: 1000 });
    await c.close();
  });

  test('while a known route\'s new discovery hangs, an ask gets the last answer after STALE_ANSWER_AFTER_MS, as old as it is; one that wants a young answer waits', async () => {
    let hang = false;
    let release: ((t: Target[]) => void) | undefined;
    const provider: Provider & { calls: number } = {
      name: 'test',
      calls: 0,
      discover: () => {
        provider.calls++;
        return hang ? new Promise<Target[]>((resolve) => (release = resolve)) : Promise.resolve([makeTarget('10.0.0.1', 80)]);
      },
    };
    const c = new Coordinator(config, provider, () => clock);
    await c.discover(route);
    hang = true;
    clock += 40_000; // due again: a worker started since asks
    const started = Date.now();
    expect(await c.discoverAged(route)).toEqual({ targets: [makeTarget('10.0.0.1', 80)], ageMs: 40_000 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(STALE_ANSWER_AFTER_MS - 50);
    expect(Date.now() - started).toBeLessThan(STALE_ANSWER_AFTER_MS + 2000);
    // The discovery goes on, joined by the next ask rather than started again.
    const young = c.discoverAged(route, 5_000);
    let settled = false;
    void young.then(() => (settled = true));
    await new Promise((r) => setTimeout(r, STALE_ANSWER_AFTER_MS + 200));
    expect(settled).toBe(false);
    expect(provider.calls).toBe(2);
    release!([makeTarget('10.0.0.2', 80)]);
    expect((await young).targets).toEqual([makeTarget('10.0.0.2', 80)]);
    expect((await c.discoverAged(route)).targets).toEqual([makeTarget('10.0.0.2', 80)]);
    await c.close();
  });

  test('an empty last answer is not given while the new discovery is slow: a worker would hold it as absent for NEGATIVE_CACHE_TTL', async () => {
    let answer: Target[] = [];
    const provider: Provider = { name: 'test', discover: () => new Promise((r) => setTimeout(r, STALE_ANSWER_AFTER_MS + 300, answer)) };
    const c = new Coordinator(config, provider, () => clock);
    expect(await c.discover(route)).toEqual([]); // scaled to zero
    answer = [makeTarget('10.0.0.3', 80)]; // and back
    clock += 12_000; // past NEGATIVE_CACHE_TTL
    expect(await c.discover(route)).toEqual([makeTarget('10.0.0.3', 80)]);
    await c.close();
  });

  test('held(): the targets held for a route up to HELD_MAX_PERIODS periods old, never a discovery; none when none, an empty answer or older ones are held', async () => {
    const provider = counting(() => [makeTarget('10.0.0.1', 80)]);
    const c = new Coordinator(config, provider, () => clock);
    expect(await c.held(route)).toEqual({ targets: [], ageMs: 0 });
    await c.discover(route);
    clock += 50_000; // past its period, within two: held
    expect(await c.held(route)).toEqual({ targets: [makeTarget('10.0.0.1', 80)], ageMs: 50_000 });
    clock += 20_000; // 70 s: its tasks may be long gone
    expect((await c.held(route)).targets).toEqual([]);
    expect(provider.calls).toBe(1);
    const empty = counting(() => []);
    const d = new Coordinator(config, empty, () => clock);
    await d.discover(route);
    expect((await d.held(route)).targets).toEqual([]);
    await Promise.all([c.close(), d.close()]);
  });

  test('held(): targets a failing discovery keeps in use are held as long as it keeps them (a worker replaced during an AWS outage serves them too)', async () => {
    const provider = flaky([makeTarget('10.0.0.1', 80)], 'ExpiredTokenException');
    const c = new Coordinator(config, provider, () => clock);
    await c.discover(route);
    provider.failing = true;
    for (let i = 0; i < 4; i++) {
      clock += 30_000; // each period, a worker's refresh fails and the last targets stay in use
      expect(await c.discover(route)).toEqual([makeTarget('10.0.0.1', 80)]);
    }
    clock += 20_000; // found 140 s ago, kept 20 s ago
    expect(await c.held(route)).toMatchObject({ targets: [makeTarget('10.0.0.1', 80)] });
    clock += 50_000; // and no worker has asked since: its tasks may be long gone
    expect((await c.held(route)).targets).toEqual([]);
    await c.close();
  });

  test("a worker is told how long a failed route is held, and that a known route's answer is the last targets kept through a failure", async () => {
    const provider = flaky([makeTarget('10.0.0.1', 80)], 'ServerException');
    const c = new Coordinator(config, provider, () => clock);
    const sent: Record<string, unknown>[] = [];
    const worker = Object.assign(new EventEmitter(), { id: 1, isConnected: () => true, send: (m: Record<string, unknown>) => sent.push(m) });
    c.add(worker as unknown as Worker);
    const ask = async (n: number, r: RouteKey): Promise<Record<string, unknown>> => {
      worker.emit('message', { t: 'discover', n, route: r });
      await until(`the answer to ask ${n}`, () => sent.some((m) => m.n === n), 2000);
      return sent.find((m) => m.n === n)!;
    };
    expect(await ask(1, route)).toMatchObject({ t: 'discovered', targets: [makeTarget('10.0.0.1', 80)] });
    expect(sent[0].stale).toBeUndefined();
    provider.failing = true;
    clock += 60_000;
    expect(await ask(2, route)).toMatchObject({ t: 'discovered', targets: [makeTarget('10.0.0.1', 80)], stale: true });
    expect(await ask(3, { ...route, service: 'new' })).toMatchObject({ t: 'discovered', error: 'ServerException', code: 'ServerException', logged: true, retryInMs: 1000 });
    await c.close();
  });
});

describe('the primary sums the metrics of its workers', () => {
  const config = loadConfig({ DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off' });
  const web: RouteKey = { service: 'web', port: 80, cluster: 'prod' };

  /** A worker's registry: requests counted by route, and successes by target, as metrics.ts does. */
  async function counts(byRoute: Record<string, number>, byTarget: Record<string, number> = {}): Promise<unknown> {
    const reg = new Registry();
    const c = new Counter({ name: 'fake_requests_total', help: 'h', labelNames: ['route'], registers: [reg] });
    for (const [route, n] of Object.entries(byRoute)) c.inc({ route }, n);
    const t = new Counter({ name: 'fake_successes_total', help: 'h', labelNames: ['target'], registers: [reg] });
    for (const [target, n] of Object.entries(byTarget)) t.inc({ target }, n);
    return reg.getMetricsAsJSON();
  }

  /** A stand-in for a cluster worker: answers each gather with `answer` (or not at all: undefined). */
  class FakeWorker extends EventEmitter {
    answer: () => Promise<unknown> | undefined = () => undefined;
    onAsk: () => void = () => undefined;
    constructor(readonly id: number) {
      super();
    }
    isConnected(): boolean {
      return true;
    }
    send(m: { t: string; n: number }): void {
      if (m.t !== 'metrics?') return;
      const a = this.answer();
      if (a) void a.then((json) => (this.emit('message', { t: 'metrics', n: m.n, json }), this.onAsk()));
    }
  }

  const total = (text: string, route?: string): number =>
    [...text.matchAll(/^fake_requests_total\{route="([^"]+)"\} (\d+)$/gm)].filter((m) => !route || m[1] === route).reduce((n, m) => n + Number(m[2]), 0);

  function setUp(): { c: Coordinator; a: FakeWorker; b: FakeWorker } {
    const c = new Coordinator(config, counting(() => [makeTarget('10.0.0.1', 80)]));
    const a = new FakeWorker(1);
    const b = new FakeWorker(2);
    c.add(a as unknown as Worker);
    c.add(b as unknown as Worker);
    return { c, a, b };
  }

  test('a worker that answers a gather and dies before the others answer is counted once', async () => {
    const { c, a, b } = setUp();
    await c.discover(web);
    a.answer = () => counts({ 'web-80-prod': 10 });
    b.answer = () => counts({ 'web-80-prod': 5 });
    expect(total(await c.metrics())).toBe(15);
    // B answers only once A has died.
    let releaseB!: () => void;
    b.answer = () => new Promise((r) => (releaseB = () => r(counts({ 'web-80-prod': 5 }))));
    a.onAsk = () => {
      c.remove(a as unknown as Worker);
      releaseB();
    };
    expect(total(await c.metrics())).toBe(15);
    b.answer = () => counts({ 'web-80-prod': 6 });
    expect(total(await c.metrics())).toBe(16);
    await c.close();
  });

  test('scrapes at the same time share one gather: the workers are asked once', async () => {
    const { c, a, b } = setUp();
    let asked = 0;
    a.answer = () => (asked++, counts({ pool: 10 }));
    b.answer = () => counts({ pool: 5 });
    const texts = await Promise.all(Array.from({ length: 16 }, () => c.metrics()));
    expect(texts.map((t) => total(t))).toEqual(Array(16).fill(15));
    expect(asked).toBe(1);
    a.answer = () => (asked++, counts({ pool: 11 }));
    expect(total(await c.metrics())).toBe(16); // the next one is a gather of its own
    expect(asked).toBe(2);
    await c.close();
  });

  test('a worker that answers nothing, or an empty answer, counts with its last answer', async () => {
    const { c, a, b } = setUp();
    a.answer = () => counts({ pool: 10 });
    b.answer = () => counts({ pool: 5 });
    expect(total(await c.metrics())).toBe(15);
    a.answer = () => Promise.resolve([]);
    b.answer = () => undefined;
    expect(total(await c.metrics(50))).toBe(15);
    await c.close();
  });

  test("a dead worker's series of routes still asked for, and of their targets, stay; the others go", async () => {
    const { c, a, b } = setUp();
    await c.discover(web); // finds 10.0.0.1:80; no worker has reported it in use
    a.answer = () => counts({ 'web-80-prod': 10, 'old-80-prod': 3 }, { '10.0.0.1:80': 10, '10.0.0.9:80': 3 });
    b.answer = () => counts({ 'web-80-prod': 5 });
    const before = await c.metrics();
    expect([total(before, 'web-80-prod'), total(before, 'old-80-prod')]).toEqual([15, 3]);
    c.remove(a as unknown as Worker);
    const after = await c.metrics();
    expect(total(after, 'web-80-prod')).toBe(15);
    expect(after).toMatch(/^fake_successes_total\{target="10\.0\.0\.1:80"\} 10$/m);
    expect(after).not.toContain('old-80-prod');
    expect(after).not.toContain('10.0.0.9:80');
    await c.close();
  });
});
