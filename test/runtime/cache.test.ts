/**
 * Redis sharing against a real redis-server started here on an ephemeral port, and real ECS
 * providers discovering through the loopback AWS stub, so "AWS calls" are calls the stub counted.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Redis } from 'ioredis';
import {
  authTokenOf,
  createRedis,
  decodeTargets,
  encodeTargets,
  lastingRefusal,
  lockKey,
  MAX_SHARED_TARGETS,
  redisOptions,
  SharedProvider,
  targetsKey,
} from '../../runtime/cache';
import { loadConfig } from '../../runtime/config';
import { createProvider } from '../../runtime/discovery';
import { ScreenedProvider } from '../../runtime/discovery/screen';
import { cacheLookups } from '../../runtime/metrics';
import { makeTarget, type Provider, type RouteKey, type Target } from '../../runtime/types';
import { startAwsStub, type AwsStub } from '../support/aws-stub';
import { until } from '../support/net';
import { startRedisServer, type RedisServer } from '../support/redis';

jest.setTimeout(20_000);

const PERIOD_S = 0.4;
const PERIOD_MS = PERIOD_S * 1000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let stub: AwsStub;
let restoreEnv: () => void;
let server: RedisServer;
let admin: Redis;
const open: Provider[] = [];

beforeAll(async () => {
  [stub, server] = await Promise.all([startAwsStub(), startRedisServer()]);
  restoreEnv = stub.applyEnv();
  admin = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  admin.on('error', () => undefined);
});
afterEach(async () => {
  await Promise.all(open.splice(0).map((p) => p.close?.()));
});
afterAll(async () => {
  admin.disconnect();
  restoreEnv();
  await Promise.all([server.stop(), stub.close()]);
});
beforeEach(async () => {
  stub.resetCalls();
  stub.clearFaults();
  stub.model.clusters = { prod: { web: [{ ip: '10.0.0.1' }, { ip: '10.0.0.2' }, { ip: '10.0.0.3' }] } };
  if (admin.status === 'ready' || admin.status === 'wait') {
    if (admin.status === 'wait') await admin.connect();
    await admin.flushall();
  }
});

/** A proxy's discovery as the worker builds it: config from env, REDIS_URL set. */
function proxy(env: Record<string, string> = {}): SharedProvider {
  const p = createProvider(
    loadConfig({ DOMAIN: 'example.com', REDIS_URL: server.url.replace('redis://', ''), NODE_CHECK_PERIOD: String(PERIOD_S), ...env }),
    {},
    { maxAttempts: 1, requestTimeoutMs: 2000, redis: { commandTimeoutMs: 200, maxReconnectDelayMs: 100 } },
  );
  open.push(p);
  // Shared, and what it shares screened like what AWS says (discovery/screen.ts).
  expect(p).toBeInstanceOf(ScreenedProvider);
  const shared = (p as ScreenedProvider).inner;
  expect(shared).toBeInstanceOf(SharedProvider);
  return shared as SharedProvider;
}

const route: RouteKey = { service: 'web', port: 8080, cluster: 'prod' };
/** The key scope of proxy()'s providers: what they discover (no AWS_REGION is set: none is named). */
const SCOPE = 'ecs.private.all';
const ids = (ts: Target[]) => ts.map((t) => t.id);
const ALL = ['10.0.0.1:8080', '10.0.0.2:8080', '10.0.0.3:8080'];

async function lookups(result: string): Promise<number> {
  return (await cacheLookups.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
}

describe('pure parts', () => {
  test('stored targets round-trip; anything else is a miss', () => {
    const t = [makeTarget('10.0.0.2', 80), makeTarget('fd00::1', 80)];
    expect(decodeTargets(encodeTargets(t, 1000, 5))).toEqual({ targets: [makeTarget('10.0.0.2', 80), makeTarget('fd00::1', 80)], ttl: 1000, took: 5 });
    expect(decodeTargets(encodeTargets([], 1000, 0))?.targets).toEqual([]);
    for (const bad of [null, '', 'nope', '{"v":2,"ttl":1,"targets":[]}', '{"v":1,"ttl":1,"targets":[{"host":"x","port":0}]}', '{"v":1,"targets":[]}']) {
      expect(decodeTargets(bad)).toBeUndefined();
    }
  });

  test('an entry no proxy would write (more targets than any service has, or over a megabyte) is a miss, not parsed', () => {
    const many = (n: number): Target[] => Array.from({ length: n }, (_, i) => makeTarget(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, 8080));
    expect(decodeTargets(encodeTargets(many(MAX_SHARED_TARGETS), 1000, 0))?.targets).toHaveLength(MAX_SHARED_TARGETS);
    expect(decodeTargets(encodeTargets(many(MAX_SHARED_TARGETS + 1), 1000, 0))).toBeUndefined();
    expect(decodeTargets(`{"v":1,"ttl":1000,"took":0,"targets":[],"pad":"${'x'.repeat(2 * 1024 * 1024)}"}`)).toBeUndefined();
  });

  test("refusals that stay (an ACL's, a key's type) are told from passing errors, in each Redis version's words", () => {
    for (const m of [
      "NOPERM this user has no permissions to run the 'select' command",
      "NOPERM User karma has no permissions to access one of the keys used as arguments",
      'ERR The user executing the script can\'t run this command or subcommand script: 4e6d8fc8bb01276962cce5371fa795a7763657ae, on @user_script:1.',
      "ERR ACL failure in script: User 'karma' has no permissions to run the 'get' command script: 4e6d8f, on @user_script:1.",
      "ERR Error running script (call to f_4e6d8fc8): @user_script:1: @user_script: 1: The user executing the script can't run this command or subcommand",
      "ERR Error running script (call to f_4e6d8fc8): @user_script:1: The user executing the script can't access at least one of the keys mentioned in the command",
    ]) expect([m, lastingRefusal(m)]).toEqual([m, 'NOPERM']);
    expect(lastingRefusal('WRONGTYPE Operation against a key holding the wrong kind of value')).toBe('WRONGTYPE');
    for (const m of ['LOADING Redis is loading the dataset in memory', 'OOM command not allowed when used memory > maxmemory', "READONLY You can't write against a read only replica.", 'ERR Error running script (call to f_1): @user_script:1: user_script:1: Script attempted to access nonexistent global variable']) {
      expect([m, lastingRefusal(m)]).toEqual([m, undefined]);
    }
  });

  test('keys are versioned and name the provider scope and the route', () => {
    expect(targetsKey('ecs.private.all', route)).toBe('karma:v1:targets:ecs.private.all:web-8080-prod');
    expect(lockKey('asg.workers.30080', { service: '*', port: 0, cluster: '*' })).toBe('karma:v1:lock:asg.workers.30080:pool');
  });

  test('the client fails fast and reconnects with a capped backoff', () => {
    const o = redisOptions({ maxReconnectDelayMs: 3000 });
    expect(o).toMatchObject({ enableOfflineQueue: false, commandTimeout: 300, maxRetriesPerRequest: 1 });
    const retry = o.retryStrategy as (n: number) => number;
    expect(retry(1)).toBeLessThan(retry(3));
    expect(retry(1000)).toBe(3000);
  });

  test('the AUTH secret is the SecretString, or a JSON token field', () => {
    expect(authTokenOf('s3cret\n')).toBe('s3cret');
    expect(authTokenOf('{"token":"abc"}')).toBe('abc');
    expect(authTokenOf('{"password":"p"}')).toBe('p');
  });
});

describe('SharedProvider on a real redis-server', () => {
  test('two proxies sharing Redis make one set of AWS calls per interval', async () => {
    const a = proxy();
    const b = proxy();
    expect(await a.connected()).toBe(true);
    expect(await b.connected()).toBe(true);
    const hitsBefore = await lookups('hit');

    // Interval 1: both at once (one takes the lock, the other waits for its result).
    const [ra, rb] = await Promise.all([a.discover(route), b.discover(route)]);
    expect(ids(ra)).toEqual(ALL);
    expect(ids(rb)).toEqual(ALL);
    expect(stub.count('ListTasks')).toBe(1);
    expect(stub.count('DescribeTasks')).toBe(1);

    // Intervals 2 and 3: each proxy refreshes once per period, in either order.
    for (const [first, second, n] of [[a, b, 2], [b, a, 3]] as const) {
      await sleep(PERIOD_MS);
      expect(ids(await first.discover(route))).toEqual(ALL);
      expect(ids(await second.discover(route))).toEqual(ALL);
      expect(stub.count('ListTasks')).toBe(n);
    }
    expect(stub.count('DescribeTasks')).toBe(3);
    expect((await lookups('hit')) - hitsBefore).toBe(3);

    // What a proxy shares is what the others serve: a change in ECS reaches both at the next refresh.
    stub.model.clusters.prod.web.pop();
    await sleep(PERIOD_MS);
    expect(ids(await a.discover(route))).toEqual(ALL.slice(0, 2));
    expect(ids(await b.discover(route))).toEqual(ALL.slice(0, 2));
    expect(stub.count('ListTasks')).toBe(4);

    const stored = decodeTargets(await admin.get(targetsKey(SCOPE, route)));
    expect(stored?.targets.map((t) => t.id)).toEqual(ALL.slice(0, 2));
    expect(await admin.pttl(targetsKey(SCOPE, route))).toBeGreaterThan(PERIOD_MS);
  });

  test("a fleet-mate's answer is given with its age, so that the proxy taking it late refreshes it with the fleet", async () => {
    const a = proxy();
    const b = proxy();
    await Promise.all([a.connected(), b.connected()]);
    expect(await a.discoverAged(route)).toEqual({ targets: expect.any(Array), ageMs: 0 });
    await sleep(PERIOD_MS / 2);
    const taken = await b.discoverAged(route);
    expect(ids(taken.targets)).toEqual(ALL);
    expect(taken.ageMs).toBeGreaterThanOrEqual(PERIOD_MS / 2 - 20);
    expect(taken.ageMs).toBeLessThan(0.9 * PERIOD_MS);
    expect(stub.count('ListTasks')).toBe(1);

    // Stale, and a fleet-mate holds the lock: its previous answer, said to be just past fresh (asked
    // again in a tenth of a period), not as old as it is (asked again at every tick).
    await sleep(PERIOD_MS);
    await admin.set(lockKey(SCOPE, route), 'fleet-mate', 'PX', 5000);
    const meanwhile = await b.discoverAged(route);
    expect(ids(meanwhile.targets)).toEqual(ALL);
    expect(meanwhile.ageMs).toBe(Math.round(0.9 * PERIOD_MS));
    expect(stub.count('ListTasks')).toBe(1);
  });

  test('an ask for an answer no older than maxAgeMs (its targets refuse) passes over an older shared one', async () => {
    const a = proxy();
    const b = proxy();
    await Promise.all([a.connected(), b.connected()]);
    await a.discoverAged(route);
    await sleep(60);
    expect((await b.discoverAged(route, undefined, 1000)).ageMs).toBeGreaterThan(0); // young enough: shared
    expect(stub.count('ListTasks')).toBe(1);
    expect((await b.discoverAged(route, undefined, 50)).ageMs).toBe(0); // older than asked: from AWS
    expect(stub.count('ListTasks')).toBe(2);
  });

  test('fleets of two regions on one Redis share nothing: a cluster of the same name elsewhere is another cluster', async () => {
    const east = proxy({ AWS_REGION: 'us-east-1' });
    const west = proxy({ AWS_REGION: 'eu-west-1' });
    await Promise.all([east.connected(), west.connected()]);
    expect(east.scope).toBe('ecs.private.all@us-east-1');
    expect(west.scope).toBe('ecs.private.all@eu-west-1');
    await east.discover(route);
    expect(await admin.exists(targetsKey(east.scope, route))).toBe(1);
    expect(await admin.exists(targetsKey(west.scope, route))).toBe(0);
    stub.resetCalls();
    await west.discover(route);
    expect(stub.count('ListTasks')).toBe(1); // asked its own region, not given the other's answer
  });

  test('an answer its provider had already aged (another port\'s shared ECS records) is given and written as old as it is', async () => {
    const inner: Provider = {
      name: 'aged',
      discover: async () => [makeTarget('10.0.0.7', 8080)],
      discoverAged: async () => ({ targets: [makeTarget('10.0.0.7', 8080)], ageMs: 1500 }),
    };
    const redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
    redis.on('error', () => undefined);
    const periodMs = 10_000;
    const a = new SharedProvider(inner, redis, { periodMs, scope: 'aged' });
    const b = new SharedProvider(inner, redis, { periodMs, scope: 'aged' });
    open.push(a, b);
    expect(await a.connected()).toBe(true);
    expect((await a.discoverAged(route)).ageMs).toBe(1500);
    await sleep(50);
    const taken = await b.discoverAged(route);
    expect(taken.ageMs).toBeGreaterThanOrEqual(1500);
    expect(taken.ageMs).toBeLessThan(2500);
    // Its refresh lock lasts as long as the answer is fresh from when it was found (0.9 of the period,
    // less the 1.5 s it was old already), or the route would be refreshed from it for nearly two periods.
    const lockTtl = await admin.pttl(lockKey('aged', route));
    expect(lockTtl).toBeGreaterThan(0.9 * periodMs - 1500 - 500);
    expect(lockTtl).toBeLessThanOrEqual(0.9 * periodMs - 1500);
    // An early ask (its targets refused) wants an answer found since: written a moment ago, it was
    // found 1.5 s before; the inner provider is asked.
    let asked = 0;
    const c = new SharedProvider({ ...inner, discoverAged: async () => (asked++, { targets: [makeTarget('10.0.0.8', 8080)], ageMs: 0 }) }, redis, { periodMs, scope: 'aged' });
    open.push(c);
    expect(ids((await c.discoverAged(route, undefined, 1000)).targets)).toEqual(['10.0.0.8:8080']);
    expect(asked).toBe(1);
  });

  test('a pool larger than readers take (MAX_SHARED_TARGETS) is not written for nobody', async () => {
    const big = Array.from({ length: MAX_SHARED_TARGETS + 1 }, (_, i) => makeTarget(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, 8080));
    const inner: Provider = { name: 'big', discover: async () => big };
    const redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
    redis.on('error', () => undefined);
    const p = new SharedProvider(inner, redis, { periodMs: PERIOD_MS, scope: 'big' });
    open.push(p);
    expect(await p.connected()).toBe(true);
    expect(await p.discover(route)).toHaveLength(MAX_SHARED_TARGETS + 1);
    await sleep(50);
    expect(await admin.exists(targetsKey('big', route))).toBe(0);
  });

  test("a targets key of another type (something else's) is replaced, said once, and the fleet shares again", async () => {
    const key = targetsKey(SCOPE, route);
    await admin.hset(key, 'not', 'a string');
    const lines: string[] = [];
    const spy = jest.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    try {
      const [a, b] = [proxy(), proxy()];
      await Promise.all([a.connected(), b.connected()]);
      expect(ids(await a.discover(route))).toEqual(ALL);
      await until('the key replaced', async () => (await admin.type(key)) === 'string', 2000);
      expect(ids(await b.discover(route))).toEqual(ALL);
    } finally {
      spy.mockRestore();
    }
    expect(stub.count('ListTasks')).toBe(1);
    const said = lines.map((l) => JSON.parse(l) as { msg: string; key?: string }).filter((l) => l.msg.startsWith('a Redis key of ours holds another type'));
    expect(said).toEqual([expect.objectContaining({ key })]);
  });

  test('a shared value larger than any proxy writes is ignored without being downloaded whole', async () => {
    const key = targetsKey('huge', route);
    // 8 MiB of a plausible entry's start: a poisoned value, read at every refresh of the route.
    await admin.set(key, '{"v":1,"ttl":1200,"took":0,"targets":[' + ' '.repeat(8 * 1024 * 1024), 'PX', 60_000);
    const inner: Provider = { name: 'huge', discover: async () => [makeTarget('10.0.0.7', 8080)] };
    const redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
    redis.on('error', () => undefined);
    const p = new SharedProvider(inner, redis, { periodMs: PERIOD_MS, scope: 'huge' });
    open.push(p);
    expect(await p.connected()).toBe(true);
    const sent = async (): Promise<number> => Number(/total_net_output_bytes:(\d+)/.exec(await admin.info('stats'))![1]);
    const before = await sent();
    expect(ids(await p.discover(route))).toEqual(['10.0.0.7:8080']);
    expect((await sent()) - before).toBeLessThan(2 * 1024 * 1024);
  });

  test('a proxy with nothing shared waits for the lock holder instead of calling AWS', async () => {
    const a = proxy();
    await a.connected();
    await admin.set(lockKey(SCOPE, route), 'someone-else', 'PX', 5000);
    const pending = a.discover(route);
    await sleep(20);
    await admin.set(targetsKey(SCOPE, route), encodeTargets([makeTarget('10.9.9.9', 8080)], 3 * PERIOD_MS, 0), 'PX', 3 * PERIOD_MS);
    expect(ids(await pending)).toEqual(['10.9.9.9:8080']);
    expect(stub.count('ListTasks')).toBe(0);
  });

  test("a lock holder whose AWS call fails (not throttled) lets the lock go: a fleet-mate waiting on it goes to AWS then, not after the whole wait", async () => {
    const a = proxy();
    const b = proxy();
    await Promise.all([a.connected(), b.connected()]);
    stub.fail('ListTasks', 'error500', { delayMs: 300 }); // a's credentials, network or endpoint
    const failing = a.discover(route);
    await sleep(50);
    const started = Date.now();
    const waiting = b.discover(route); // nothing shared yet: b waits for a's answer
    await expect(failing).rejects.toMatchObject({ name: 'ServerException' });
    expect(ids(await waiting)).toEqual(ALL);
    expect(Date.now() - started).toBeLessThan(1500); // the wait is 2 s
    expect(stub.count('ListTasks')).toBe(2);
  });

  test('a lock holder that AWS throttles keeps the lock: the fleet does not pile on', async () => {
    const a = proxy();
    await a.connected();
    stub.fail('ListTasks', 'throttle');
    await expect(a.discover(route)).rejects.toMatchObject({ name: 'ThrottlingException' });
    await sleep(50); // a lock let go expires in 1 ms
    expect(await admin.pttl(lockKey(SCOPE, route))).toBeGreaterThan(50);
  });

  test("a lock holder with a longer NODE_CHECK_PERIOD (a longer TTL) is waited for, and its answer taken", async () => {
    const a = proxy();
    await a.connected();
    await admin.set(lockKey(SCOPE, route), 'slower-fleet-mate', 'PX', 5000);
    const started = Date.now();
    const pending = a.discover(route);
    await sleep(20);
    await admin.set(targetsKey(SCOPE, route), encodeTargets([makeTarget('10.9.9.9', 8080)], 30 * PERIOD_MS, 0), 'PX', 30 * PERIOD_MS);
    expect(ids(await pending)).toEqual(['10.9.9.9:8080']);
    expect(Date.now() - started).toBeLessThan(1000); // not the whole wait, then AWS
    expect(stub.count('ListTasks')).toBe(0);
  });

  test('an answer from a fleet-mate with a longer NODE_CHECK_PERIOD is taken while it is young, without waiting on its lock', async () => {
    // A rolling deploy that changes the period, or two fleets on one cache: the other writes with a longer TTL.
    const slow = proxy({ NODE_CHECK_PERIOD: '30' });
    const fast = proxy({ NODE_CHECK_PERIOD: '10' });
    await Promise.all([slow.connected(), fast.connected()]);
    expect(ids(await slow.discover(route))).toEqual(ALL);
    const started = Date.now();
    expect(ids(await fast.discover(route))).toEqual(ALL);
    expect(Date.now() - started).toBeLessThan(1000); // not the 2 s wait for a lock holder's answer
    expect(stub.count('ListTasks')).toBe(1);
  });

  test('what Redis holds is screened as AWS answers are, and aged since it was written, not by the TTL it claims', async () => {
    const a = proxy();
    await a.connected();
    const screened = open[open.length - 1];
    const key = targetsKey(SCOPE, route);
    // A poisoned entry that looks fresh: the metadata address and loopback beside a real one.
    // Also spelt as an IPv6 parser reads them (IPv4-mapped in hex, uncompressed): the screen judges the address, not the text.
    const poisoned = [
      makeTarget('169.254.169.254', 80),
      makeTarget('127.0.0.1', 22),
      makeTarget('::ffff:7f00:1', 22),
      makeTarget('::ffff:a9fe:a9fe', 80),
      makeTarget('fd00:ec2:0:0:0:0:0:254', 80),
      makeTarget('10.9.9.9', 8080),
    ];
    await admin.set(key, encodeTargets(poisoned, 3 * PERIOD_MS, 0), 'PX', 3 * PERIOD_MS);
    expect(ids(await screened.discover(route))).toEqual(['10.9.9.9:8080']);
    expect(stub.count('ListTasks')).toBe(0);
    // One that claims a 1 ms TTL but was stored to live for days is none of ours: AWS is asked.
    await admin.set(key, encodeTargets(poisoned, 1, 0), 'PX', 100_000_000);
    expect(ids(await screened.discover(route))).toEqual(ALL);
    expect(stub.count('ListTasks')).toBe(1);
  });

  test('a lock and an entry that never expire (none of ours) hold no proxy on their targets', async () => {
    const a = proxy();
    await a.connected();
    const lock = lockKey(SCOPE, route);
    await admin.set(lock, 'stuck');
    await admin.set(targetsKey(SCOPE, route), encodeTargets([makeTarget('10.9.9.9', 8080)], 3 * PERIOD_MS, 0));
    // Not served as "the previous result while another proxy refreshes": after the bounded wait, AWS.
    expect(ids(await a.discover(route))).toEqual(ALL);
    expect(stub.count('ListTasks')).toBe(1);
    // The lock was given an expiry (and may be gone already): the next discovery takes it and shares what AWS said.
    expect(await admin.pttl(lock)).not.toBe(-1);
    await until('the lock gone', async () => (await admin.exists(lock)) === 0, 5000);
    await admin.del(targetsKey(SCOPE, route));
    expect(ids(await a.discover(route))).toEqual(ALL);
    expect(await admin.pttl(targetsKey(SCOPE, route))).toBeGreaterThan(0);
  });

  test('a lock set for a day (none of ours) is cut to our length, and does not hold the route for its day', async () => {
    const a = proxy();
    await a.connected();
    const lock = lockKey(SCOPE, route);
    await admin.set(lock, 'foreign', 'PX', 86_400_000);
    expect(ids(await a.discover(route))).toEqual(ALL);
    await until('the lock cut to a period', async () => (await admin.pttl(lock)) <= PERIOD_MS, 2000);
    await until('the lock gone', async () => (await admin.exists(lock)) === 0, 5000);
    expect(ids(await a.discover(route))).toEqual(ALL);
    expect(await admin.pttl(targetsKey(SCOPE, route))).toBeGreaterThan(0);
  });

  test('an empty service is shared as empty, and AWS failures are not cached', async () => {
    // A longer period than the others': a's lock (0.9 of it) must outlive a's failed call and b's look
    // on a machine busy with other work.
    const period = { NODE_CHECK_PERIOD: '2' };
    const a = proxy(period);
    const b = proxy(period);
    await Promise.all([a.connected(), b.connected()]);
    stub.model.clusters.prod.web = [];
    expect(await a.discover(route)).toEqual([]);
    expect(await b.discover(route)).toEqual([]);
    expect(stub.count('ListTasks')).toBe(1);

    await sleep(2000);
    stub.fail('ListTasks', 'throttle', { times: Infinity });
    await expect(a.discover(route)).rejects.toMatchObject({ name: 'ThrottlingException' });
    // b sees a's lock and the previous (empty) shared answer, and does not pile on AWS.
    expect(await b.discover(route)).toEqual([]);
    expect(stub.count('ListTasks')).toBe(2);
  });

  test('an empty answer is shared for NEGATIVE_CACHE_TTL, not a whole period: a first task is found as soon as without Redis', async () => {
    const env = { NODE_CHECK_PERIOD: '30', NEGATIVE_CACHE_TTL: '0.5' };
    const a = proxy(env);
    const b = proxy(env);
    await Promise.all([a.connected(), b.connected()]);
    stub.model.clusters.prod.web = [];
    expect(await a.discover(route)).toEqual([]);
    expect(await b.discover(route)).toEqual([]); // shared, not asked again
    expect(stub.count('ListTasks')).toBe(1);
    // The lock a took for the empty answer lasts no longer than the answer is fresh.
    const lockTtl = await admin.pttl(lockKey(SCOPE, route));
    expect(lockTtl).toBeGreaterThan(0);
    expect(lockTtl).toBeLessThanOrEqual(450);

    stub.model.clusters.prod.web = [{ ip: '10.0.0.1' }];
    await sleep(600);
    expect(ids(await b.discover(route))).toEqual(['10.0.0.1:8080']);
    expect(ids(await a.discover(route))).toEqual(['10.0.0.1:8080']); // b's answer, shared
    expect(stub.count('ListTasks')).toBe(2);
  });

  test("an early ask's empty answer keeps its lock's short life: the fleet's next early ask is not held off for NEGATIVE_CACHE_TTL", async () => {
    const a = proxy({ NODE_CHECK_PERIOD: '30', NEGATIVE_CACHE_TTL: '9' });
    await a.connected();
    stub.model.clusters.prod.web = []; // scaled to zero
    expect(await a.discoverAged(route, undefined, 250)).toEqual({ targets: [], ageMs: 0 }); // asked early, after a refusal
    await sleep(50);
    const lockTtl = await admin.pttl(`${lockKey(SCOPE, route)}:early`);
    expect(lockTtl).toBeGreaterThan(0);
    expect(lockTtl).toBeLessThanOrEqual(1000); // EARLY_LOCK_MS, not stretched to 9 s
  });

  test('Redis killed mid-test: requests are still served, errors are logged once; a restart is picked up', async () => {
    const a = proxy();
    const b = proxy();
    await Promise.all([a.connected(), b.connected()]);
    expect(ids(await a.discover(route))).toEqual(ALL);
    expect(ids(await b.discover(route))).toEqual(ALL);
    expect(stub.count('ListTasks')).toBe(1);

    const stderr = jest.spyOn(process.stderr, 'write');
    try {
      await server.kill();
      const errorsBefore = await lookups('error');
      for (let i = 0; i < 5; i++) {
        const started = Date.now();
        const [ra, rb] = await Promise.all([a.discover(route), b.discover(route)]);
        expect(ids(ra)).toEqual(ALL);
        expect(ids(rb)).toEqual(ALL);
        expect(Date.now() - started).toBeLessThan(1000); // no request waits on a dead Redis
      }
      expect(stub.count('ListTasks')).toBe(11); // each proxy on its own now
      expect((await lookups('error')) - errorsBefore).toBe(10);
      const outageLines = stderr.mock.calls.filter(([line]) => String(line).includes('redis unavailable'));
      expect(outageLines.length).toBeLessThanOrEqual(2); // once per client, not per request
    } finally {
      stderr.mockRestore();
      await server.restart(); // in finally: later tests need it whatever happened here
    }

    expect(await a.connected()).toBe(true);
    expect(await b.connected()).toBe(true);
    stub.resetCalls();
    expect(ids(await a.discover(route))).toEqual(ALL);
    expect(ids(await b.discover(route))).toEqual(ALL);
    expect(stub.count('ListTasks')).toBe(1); // shared again
  });

  test('an outage that turns into a refusal (the Redis back wants a password) says so: the last reason on record is the true one', async () => {
    const own = await startRedisServer();
    let back: RedisServer | undefined;
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const lines = (): string[] => stderr.mock.calls.map(([l]) => String(l)).filter((l) => l.includes('redis'));
    try {
      const p = createProvider(
        loadConfig({ DOMAIN: 'example.com', REDIS_URL: `127.0.0.1:${own.port}`, NODE_CHECK_PERIOD: String(PERIOD_S) }),
        {},
        { maxAttempts: 1, redis: { commandTimeoutMs: 200, maxReconnectDelayMs: 100 } },
      );
      open.push(p);
      await ((p as ScreenedProvider).inner as SharedProvider).connected();
      await own.kill();
      await until('the outage said', () => lines().some((l) => l.includes('redis unavailable')), 5000);
      back = await startRedisServer(['--requirepass', 'one-now'], own.port);
      await until('the refusal said', () => lines().some((l) => l.includes('now for another reason') && l.includes('NOAUTH')), 5000);
      await sleep(500); // reconnecting all the while: said once
      expect(lines().filter((l) => l.includes('unavailable'))).toHaveLength(2);
    } finally {
      stderr.mockRestore();
      await Promise.all([back?.stop(), own.stop()]);
    }
  });

  test('a slow (paused) Redis costs a request at most the command timeout, and its silence is logged once', async () => {
    const a = proxy();
    await a.connected();
    const stderr = jest.spyOn(process.stderr, 'write');
    const stdout = jest.spyOn(process.stdout, 'write');
    const said = (text: string): number => [...stderr.mock.calls, ...stdout.mock.calls].filter(([line]) => String(line).includes(text)).length;
    server.pause();
    try {
      const started = Date.now();
      expect(ids(await a.discover(route))).toEqual(ALL);
      expect(Date.now() - started).toBeLessThan(1500);
      // Just failed: the next discovery does not even try Redis.
      const sent = jest.spyOn((a as unknown as { redis: Redis }).redis, 'sendCommand');
      expect(ids(await a.discover(route))).toEqual(ALL);
      expect(sent).not.toHaveBeenCalled();
      // Tried again once the suspension is over: still silent, and not said twice.
      await sleep(1100);
      expect(ids(await a.discover(route))).toEqual(ALL);
      expect(said('redis is not answering')).toBe(1);
      // Silent twice in a row: left alone twice as long (a hung Redis costs new routes ever less often).
      await sleep(1100);
      sent.mockClear();
      expect(ids(await a.discover(route))).toEqual(ALL);
      expect(sent).not.toHaveBeenCalled();
      sent.mockRestore();
      server.resume();
      await sleep(1000);
      await a.discover(route);
      expect(said('redis answering again')).toBe(1);
      expect(said('redis is not answering')).toBe(1);
    } finally {
      stderr.mockRestore();
      stdout.mockRestore();
      server.resume();
    }
  });

  test('a connection that goes silent without a FIN (a dead node, a partition) is dropped after three tries and made anew', async () => {
    // A relay in front of Redis that can freeze the connections it has (no FIN, no RST: nothing more
    // passes), while new ones go through: what a node that died or was cut off looks like.
    const pairs: net.Socket[][] = [];
    const all: net.Socket[] = [];
    let accepted = 0;
    const relay = net.createServer((c) => {
      accepted++;
      const r = net.connect(Number(new URL(server.url).port), '127.0.0.1');
      c.pipe(r).pipe(c);
      for (const s of [c, r]) s.on('error', () => undefined);
      pairs.push([c, r]);
      all.push(c, r);
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    const freeze = (): void => {
      for (const [c, r] of pairs.splice(0)) {
        c.unpipe(r);
        r.unpipe(c);
        c.pause();
        r.pause();
      }
    };
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const stdout = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
    const said = (text: string): number => [...stderr.mock.calls, ...stdout.mock.calls].filter(([l]) => String(l).includes(text)).length;
    try {
      const a = proxy({ REDIS_URL: `127.0.0.1:${(relay.address() as net.AddressInfo).port}` });
      await a.connected();
      expect(accepted).toBe(1);
      freeze();
      // Tries 1, 2 and 4 s apart: the third silent one drops the connection.
      await until('a new connection', async () => {
        await a.discover(route);
        return accepted === 2 && said('redis answering again') === 1 ? true : undefined;
      }, 12_000);
      expect(said('redis is not answering')).toBe(1);
      expect(said('reconnecting')).toBe(1);
      await admin.flushall();
      await a.discoverAged(route, undefined, 0); // asks AWS and shares the answer again
      await until('the shared answer', async () => ((await admin.exists(targetsKey(SCOPE, route))) === 1 ? true : undefined));
    } finally {
      stderr.mockRestore();
      stdout.mockRestore();
      for (const x of all) x.destroy();
      await new Promise((r) => relay.close(r));
    }
  });

  test('lookups that fail together in one silence count as one failure: Redis is tried again a second later, not eight', async () => {
    stub.model.clusters = { prod: { web: [{ ip: '10.0.0.1' }], api: [{ ip: '10.0.0.2' }], db: [{ ip: '10.0.0.3' }], ui: [{ ip: '10.0.0.4' }] } };
    const a = proxy();
    await a.connected();
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    server.pause();
    try {
      await Promise.all(['web', 'api', 'db', 'ui'].map((service) => a.discover({ service, port: 80, cluster: 'prod' })));
      await sleep(1100);
      const sent = jest.spyOn((a as unknown as { redis: Redis }).redis, 'sendCommand');
      await a.discover(route);
      expect(sent).toHaveBeenCalled();
      sent.mockRestore();
    } finally {
      stderr.mockRestore();
      server.resume();
    }
  });

  test('a cluster-mode Redis is said once not to be supported, and discovery goes on unshared', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-cluster-'));
    // One cluster node with no slots: every key command answers CLUSTERDOWN, as a wrong node answers MOVED.
    const cluster = await startRedisServer(['--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, 'nodes.conf')]);
    const stderr = jest.spyOn(process.stderr, 'write');
    try {
      const p = createProvider(
        loadConfig({ DOMAIN: 'example.com', REDIS_URL: cluster.url, NODE_CHECK_PERIOD: '1' }),
        {},
        { maxAttempts: 1 },
      );
      open.push(p);
      await ((p as ScreenedProvider).inner as SharedProvider).connected();
      expect(ids(await p.discover(route))).toEqual(ALL);
      await sleep(1100); // past the second a failed Redis is left alone: asked, and refused, again
      expect(ids(await p.discover(route))).toEqual(ALL);
      expect(stub.count('ListTasks')).toBe(2);
      expect(stderr.mock.calls.filter(([line]) => String(line).includes('cluster-mode Redis, which is not supported')).length).toBe(1);
    } finally {
      stderr.mockRestore();
      await cluster.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a database this Redis does not have is said once, and nothing is shared in database 0 instead', async () => {
    // The client would select it, be refused, and go on in database 0 with whatever else uses it.
    const stderr = jest.spyOn(process.stderr, 'write');
    try {
      const p = proxy({ REDIS_URL: `${server.url}/99` });
      await sleep(300);
      for (let i = 0; i < 2; i++) expect(ids(await p.discover(route))).toEqual(ALL);
      expect(stub.count('ListTasks')).toBe(2);
      expect(await admin.dbsize()).toBe(0);
      const said = stderr.mock.calls.map(([l]) => String(l)).filter((l) => l.includes('names a database this Redis does not have'));
      expect(said).toHaveLength(1);
      expect(JSON.parse(said[0])).toMatchObject({ level: 'error', error: expect.stringMatching(/DB index/) });
      // Nothing else: the client going away is no outage to report.
      expect(stderr.mock.calls.map(([l]) => String(l)).filter((l) => l.includes('redis unavailable'))).toEqual([]);
    } finally {
      stderr.mockRestore();
    }
  });

  describe('an ACL user', () => {
    /** The README's ACL command for the proxy's user, as written there (its password put in). */
    const readmeAcl = (): string[] => {
      const line = /`(ACL SETUSER karma on >… [^`]*)`/.exec(fs.readFileSync(path.join(__dirname, '../../README.md'), 'utf8'));
      expect(line).not.toBeNull();
      return line![1].replace('>…', '>pw').split(' ').slice(2);
    };
    const users: string[] = [];
    afterEach(async () => {
      for (const u of users.splice(0)) await admin.call('ACL', 'DELUSER', u);
    });
    async function user(name: string, rules: string[]): Promise<string> {
      await admin.call('ACL', 'SETUSER', name, 'reset', ...rules);
      users.push(name);
      return `redis://${name}:pw@127.0.0.1:${server.port}`;
    }
    const said = (spy: jest.SpyInstance, text: string): string[] => spy.mock.calls.map(([l]) => String(l)).filter((l) => l.includes(text));

    test("with the README's commands shares discovery in its /db, empty answers short-lived, and nothing is refused", async () => {
      const url = await user('karma-readme', readmeAcl().slice(1));
      const stderr = jest.spyOn(process.stderr, 'write');
      try {
        const env = { REDIS_URL: `${url}/2`, NODE_CHECK_PERIOD: '30', NEGATIVE_CACHE_TTL: '0.5' };
        const a = proxy(env);
        const b = proxy(env);
        await Promise.all([a.connected(), b.connected()]);
        expect(ids(await a.discover(route))).toEqual(ALL);
        expect(ids(await b.discover(route))).toEqual(ALL);
        expect(stub.count('ListTasks')).toBe(1);
        const other: RouteKey = { ...route, service: 'api' };
        stub.model.clusters.prod.api = [];
        expect(await a.discover(other)).toEqual([]);
        await sleep(100);
        expect(await admin.pttl(lockKey(SCOPE, other))).toBeLessThanOrEqual(450); // the script ran
        // A fleet-mate waits on the holder of the lock, for a new route and for an early ask (its targets refused).
        const late: RouteKey = { ...route, service: 'late' };
        stub.model.clusters.prod.late = [{ ip: '10.0.0.9' }];
        for (const maxAgeMs of [Infinity, 1]) {
          stub.fail('ListTasks', 'delay', { delayMs: 300 });
          const holding = a.discoverAged(late, undefined, maxAgeMs);
          await sleep(50);
          expect(ids((await b.discoverAged(late, undefined, maxAgeMs)).targets)).toEqual(['10.0.0.9:8080']);
          await holding;
        }
        expect(stub.count('ListTasks')).toBe(4); // web, api, and late twice: once each time
        expect(await admin.dbsize()).toBe(0); // database 0 untouched
        expect(said(stderr, 'redis')).toEqual([]);
      } finally {
        stderr.mockRestore();
      }
    });

    test('that may not SELECT its /db is said once, and nothing is shared in database 0 instead (another fleet may use it)', async () => {
      const url = await user('karma-noselect', readmeAcl().slice(1).filter((r) => r !== '+select'));
      const stderr = jest.spyOn(process.stderr, 'write');
      try {
        const a = proxy({ REDIS_URL: `${url}/3` });
        const b = proxy({ REDIS_URL: `${url}/3` });
        await sleep(300);
        for (const p of [a, b]) expect(ids(await p.discover(route))).toEqual(ALL);
        expect(stub.count('ListTasks')).toBe(2);
        expect(await admin.dbsize()).toBe(0);
        const lines = said(stderr, 'may not SELECT');
        expect(lines.length).toBeGreaterThanOrEqual(1);
        expect(lines.length).toBeLessThanOrEqual(2); // once per client
        expect(JSON.parse(lines[0])).toMatchObject({ level: 'error', error: expect.stringMatching(/NOPERM/) });
        expect(said(stderr, 'redis available again')).toEqual([]);
      } finally {
        stderr.mockRestore();
      }
    });

    test.each(['+eval', '+get'])('without %s, an empty answer holds fleet-mates off for NEGATIVE_CACHE_TTL, not the period', async (rule) => {
      // The lock of an empty answer is cut to NEGATIVE_CACHE_TTL by a script; refused, it was left a
      // period long, and every proxy was served the empty answer until then.
      const url = await user(`karma-no${rule.slice(1)}`, readmeAcl().slice(1).filter((r) => r !== rule));
      const stderr = jest.spyOn(process.stderr, 'write');
      try {
        const env = { REDIS_URL: url, NODE_CHECK_PERIOD: '30', NEGATIVE_CACHE_TTL: '0.5' };
        const a = proxy(env);
        const b = proxy(env);
        await Promise.all([a.connected(), b.connected()]);
        const soon: RouteKey = { ...route, service: 'soon' };
        stub.model.clusters.prod.soon = [];
        expect(await a.discover(soon)).toEqual([]);
        await sleep(100);
        expect(await admin.pttl(lockKey(SCOPE, soon))).toBeLessThanOrEqual(450);
        stub.model.clusters.prod.soon = [{ ip: '10.0.0.7' }]; // the service gets its task
        await sleep(600);
        expect(ids(await b.discover(soon))).toEqual(['10.0.0.7:8080']);
        expect(said(stderr, 'redis refused a command')).toHaveLength(1);
      } finally {
        stderr.mockRestore();
      }
    });

    test("whose script may not GET is said once as a refusal, and Redis is not left alone for it", async () => {
      const url = await user('karma-noget', readmeAcl().slice(1).filter((r) => r !== '+get'));
      const stderr = jest.spyOn(process.stderr, 'write');
      try {
        const a = proxy({ REDIS_URL: url, NODE_CHECK_PERIOD: '30', NEGATIVE_CACHE_TTL: '0.5' });
        const b = proxy({ REDIS_URL: url, NODE_CHECK_PERIOD: '30', NEGATIVE_CACHE_TTL: '0.5' });
        await Promise.all([a.connected(), b.connected()]);
        for (const service of ['x1', 'x2', 'x3']) {
          stub.model.clusters.prod[service] = [];
          expect(await a.discover({ ...route, service })).toEqual([]);
        }
        await sleep(100);
        // Still shared: b finds a's answers without asking AWS.
        for (const service of ['x1', 'x2', 'x3']) expect(await b.discover({ ...route, service })).toEqual([]);
        expect(stub.count('ListTasks')).toBe(3);
        const lines = said(stderr, 'redis refused a command');
        expect(lines).toHaveLength(1);
        expect(JSON.parse(lines[0]).error).toMatch(/can't run this command/);
      } finally {
        stderr.mockRestore();
      }
    });
  });

  test('a full Redis (maxmemory, noeviction) is said once, and so is its recovery', async () => {
    const stderr = jest.spyOn(process.stderr, 'write');
    const stdout = jest.spyOn(process.stdout, 'write');
    const said = (spy: jest.SpyInstance, text: string): number => spy.mock.calls.filter(([l]) => String(l).includes(text)).length;
    await admin.config('SET', 'maxmemory-policy', 'noeviction');
    await admin.config('SET', 'maxmemory', '1');
    try {
      const a = proxy();
      await a.connected();
      expect(ids(await a.discover(route))).toEqual(ALL);
      await sleep(1100); // past the second a failed Redis is left alone
      expect(ids(await a.discover(route))).toEqual(ALL);
      expect(said(stderr, 'redis is full (maxmemory)')).toBe(1);
      await admin.config('SET', 'maxmemory', '0');
      await sleep(2100); // refused twice in a row: left alone for 2 s
      expect(ids(await a.discover(route))).toEqual(ALL);
      expect(said(stdout, 'redis answering again')).toBe(1);
      expect(await admin.exists(targetsKey(SCOPE, route))).toBe(1);
    } finally {
      await admin.config('SET', 'maxmemory', '0');
      stderr.mockRestore();
      stdout.mockRestore();
    }
  });

  test('a read-only replica as REDIS_URL (a reader endpoint) is said, and discovery goes on from AWS', async () => {
    const replica = await startRedisServer(['--replicaof', '127.0.0.1', new URL(server.url).port]);
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const a = proxy({ REDIS_URL: replica.url.replace('redis://', '') });
      await a.connected();
      expect(ids(await a.discover(route))).toEqual(ALL); // its lock (a write) refused: from AWS
      await until('the warning', () => stderr.mock.calls.some(([l]) => String(l).includes('read-only replica')));
      for (let i = 0; i < 3; i++) {
        await sleep(1100);
        expect(ids((await a.discoverAged(route, undefined, 0)).targets)).toEqual(ALL);
      }
      expect(stderr.mock.calls.filter(([l]) => String(l).includes('read-only replica'))).toHaveLength(1); // not per command
    } finally {
      stderr.mockRestore();
      await replica.stop();
    }
  });

  test('without a reachable Redis at start the proxy discovers by itself', async () => {
    const p = createProvider(
      loadConfig({ DOMAIN: 'example.com', REDIS_URL: 'redis://127.0.0.1:1', NODE_CHECK_PERIOD: '1' }),
      {},
      { maxAttempts: 1, redis: { maxReconnectDelayMs: 100 } },
    );
    open.push(p);
    expect(ids(await p.discover(route))).toEqual(ALL);
  });
});

describe('createRedis', () => {
  let secured: RedisServer;
  beforeAll(async () => {
    secured = await startRedisServer(['--requirepass', 'pa:ss@word', '--user', 'karma', 'on', '>k-secret', '~*', '+@all']);
  });
  afterAll(async () => {
    await secured.stop();
  });

  async function pingWith(config: Parameters<typeof createRedis>[0]): Promise<string> {
    const r = await createRedis(config, { maxReconnectDelayMs: 100 });
    if (!r) throw new Error('no client');
    try {
      if (r.status !== 'ready') await new Promise((resolve, reject) => {
        r.once('ready', resolve);
        r.once('error', reject);
      });
      return await r.ping();
    } finally {
      r.disconnect();
    }
  }

  test('no REDIS_URL, no client', async () => {
    await expect(createRedis({ redisUrl: undefined, redisAuthSecretArn: undefined, awsRegion: undefined })).resolves.toBeUndefined();
  });

  test('redis:// with a password, and with a user and password', async () => {
    const port = secured.port;
    await expect(pingWith({ redisUrl: `redis://:${encodeURIComponent('pa:ss@word')}@127.0.0.1:${port}`, redisAuthSecretArn: undefined, awsRegion: undefined })).resolves.toBe('PONG');
    await expect(pingWith({ redisUrl: `redis://karma:k-secret@127.0.0.1:${port}`, redisAuthSecretArn: undefined, awsRegion: undefined })).resolves.toBe('PONG');
  });

  test('the bare host:port of the seed', async () => {
    const config = loadConfig({ DOMAIN: 'example.com', REDIS_URL: `127.0.0.1:${server.port}` });
    await expect(pingWith(config)).resolves.toBe('PONG');
  });

  test('REDIS_AUTH_SECRET_ARN: the token comes from Secrets Manager, once', async () => {
    const arn = 'arn:aws:secretsmanager:us-east-1:123456789012:secret:karma-redis-auth';
    stub.model.secrets[arn] = 'pa:ss@word';
    await expect(pingWith({ redisUrl: `redis://127.0.0.1:${secured.port}`, redisAuthSecretArn: arn, awsRegion: 'us-east-1' })).resolves.toBe('PONG');
    expect(stub.count('GetSecretValue')).toBe(1);
  });

  test('an unreadable secret leaves the proxy without Redis, not without service, and is read again until it is', async () => {
    // The network or credentials not up yet at boot, throttling, a policy fixed later: not for the process's life.
    const arn = 'arn:aws:secretsmanager:us-east-1:123456789012:secret:later';
    const errors = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const infos = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      const made = createRedis({ redisUrl: `redis://127.0.0.1:${secured.port}`, redisAuthSecretArn: arn, awsRegion: 'us-east-1' }, { secretRetryMs: 50 });
      await until('three reads of the secret', () => stub.count('GetSecretValue') >= 3, 5000);
      stub.model.secrets[arn] = 'pa:ss@word';
      const r = await made;
      try {
        expect(r).toBeDefined();
        await until('connected', () => r!.status === 'ready', 5000);
        expect(await r!.ping()).toBe('PONG');
      } finally {
        r?.disconnect();
      }
      const said = (spy: jest.SpyInstance): string[] => spy.mock.calls.map((c) => String(c[0])).filter((l) => l.includes('Redis AUTH token'));
      expect(said(errors)).toEqual([expect.stringContaining('cannot read the Redis AUTH token')]);
      expect(said(infos)).toEqual([expect.stringContaining('read the Redis AUTH token: discovery is shared')]);
    } finally {
      errors.mockRestore();
      infos.mockRestore();
    }
  });

  test('a provider closed while its AUTH secret cannot be read stops reading it, and has no Redis', async () => {
    const errors = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const config = loadConfig({ DOMAIN: 'example.com', REDIS_URL: `redis://127.0.0.1:${secured.port}`, REDIS_AUTH_SECRET_ARN: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:missing' });
      const p = createProvider(config, {}, { maxAttempts: 1, redis: { secretRetryMs: 50 } });
      await until('a read of the secret', () => stub.count('GetSecretValue') >= 1, 5000);
      await p.close?.();
      const shared = (p as ScreenedProvider).inner as SharedProvider;
      await expect(shared.connected()).resolves.toBe(false);
      const reads = stub.count('GetSecretValue');
      await new Promise((r) => setTimeout(r, 300));
      expect(stub.count('GetSecretValue')).toBe(reads);
    } finally {
      errors.mockRestore();
    }
  });

  test('ended while a read of its AUTH secret is under way, no client is made and no retry waited for', async () => {
    const errors = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      stub.fail('GetSecretValue', 'error500', { delayMs: 300 });
      const ending = new AbortController();
      const started = Date.now();
      const made = createRedis(
        { redisUrl: `redis://127.0.0.1:${secured.port}`, redisAuthSecretArn: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:slow', awsRegion: 'us-east-1' },
        { secretRetryMs: 10_000, signal: ending.signal },
      );
      await sleep(50);
      ending.abort();
      await expect(made).resolves.toBeUndefined();
      expect(Date.now() - started).toBeLessThan(5000); // not the 10 s wait before the next read
    } finally {
      errors.mockRestore();
    }
  });

  test('rediss:// to a Redis without TLS is said with a hint, not as a bare connect timeout', async () => {
    const stderr = jest.spyOn(process.stderr, 'write');
    try {
      proxy({ REDIS_URL: `rediss://127.0.0.1:${server.port}` });
      const line = await until('the outage said', () => stderr.mock.calls.map(([l]) => String(l)).find((l) => l.includes('redis unavailable')), 8000);
      expect(JSON.parse(line!)).toMatchObject({ code: 'ETIMEDOUT', hint: expect.stringContaining('a Redis without TLS') });
    } finally {
      stderr.mockRestore();
    }
  });

  test('rediss:// turns TLS on', async () => {
    const r = await createRedis({ redisUrl: 'rediss://user:pw@127.0.0.1:1', redisAuthSecretArn: undefined, awsRegion: undefined }, { maxReconnectDelayMs: 100 });
    try {
      expect(r?.options.tls).toBeTruthy();
      expect(r?.options).toMatchObject({ username: 'user', password: 'pw', host: '127.0.0.1', port: 1 });
    } finally {
      r?.disconnect();
    }
  });
});
