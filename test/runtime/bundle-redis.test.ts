/**
 * Two proxies (bundles) sharing one real redis-server and one AWS endpoint: the fleet makes about the
 * AWS calls of one proxy, keeps serving when Redis dies, and shares again once it is back.
 */
import * as path from 'node:path';
import { Redis } from 'ioredis';
import { startAwsStub } from '../support/aws-stub';
import { startBackend } from '../support/backend';
import { Proxy, startBundle } from '../support/bundle';
import { freePort, request, until } from '../support/net';
import { startRedisServer } from '../support/redis';

jest.setTimeout(90_000);

test('a fleet of two proxies shares discovery through Redis, survives its death and picks up its restart', async () => {
  const backend = await startBackend('task');
  const stub = await startAwsStub({ clusters: { prod: { api: [{ ip: '127.0.0.1' }] } } });
  const redis = await startRedisServer();
  const env = { ...stub.env(), DOMAIN: 'example.com', REDIS_URL: `127.0.0.1:${redis.port}`, NODE_CHECK_PERIOD: '1', HEALTH_CHECK_PATH: 'off' };
  const fleet = await Promise.all([startBundle(env), startBundle(env)]);
  const host = { Host: `api-${backend.port}-prod.example.com` };
  const serveAll = async (): Promise<void> => {
    for (const p of fleet) expect(await request(p.port, { headers: host })).toMatchObject({ status: 200, body: 'task' });
  };
  /** ListTasks calls over `seconds` of refreshing, with both proxies serving the route meanwhile. */
  const callsOver = async (seconds: number): Promise<number> => {
    stub.resetCalls();
    const until = Date.now() + seconds * 1000;
    while (Date.now() < until) {
      await serveAll();
      await new Promise((r) => setTimeout(r, 200));
    }
    return stub.count('ListTasks');
  };
  try {
    await serveAll();
    // Shared: about one discovery per second for the whole fleet (two without Redis).
    const shared = await callsOver(4);
    expect(shared).toBeLessThanOrEqual(6);

    await redis.kill();
    await serveAll();
    const alone = await callsOver(4);
    expect(alone).toBeGreaterThan(shared); // each proxy asks AWS itself now, and still serves

    await redis.restart();
    await new Promise((r) => setTimeout(r, 2500)); // reconnect backoff is capped at 2 s
    const again = await callsOver(4);
    expect(again).toBeLessThanOrEqual(6);
  } finally {
    await Promise.all(fleet.map((p) => p.stop()));
    await redis.stop();
    await stub.close();
    await backend.close();
  }
});

test('with Redis, a change in AWS reaches a proxy that took the route late from a fleet-mate within one NODE_CHECK_PERIOD', async () => {
  const [one, two] = await Promise.all([startBackend('task-1'), startBackend('task-2')]);
  const ci = 'arn:aws:ecs:us-east-1:123456789012:container-instance/moving/ci-1';
  const task = (port: number) => ({ launchType: 'EC2' as const, containerInstanceArn: ci, bindings: [{ containerPort: 80, hostPort: port }] });
  const stub = await startAwsStub({ clusters: { moving: { web: [task(one.port)] } } });
  stub.model.containerInstances[ci] = 'i-0123456789abcdef1';
  stub.model.instances.push({ id: 'i-0123456789abcdef1', privateIp: '127.0.0.1' });
  const redis = await startRedisServer();
  const periodS = 4;
  const env = { ...stub.env(), DOMAIN: 'example.com', REDIS_URL: `127.0.0.1:${redis.port}`, NODE_CHECK_PERIOD: String(periodS), HEALTH_CHECK_PATH: 'off', WORKERS: '1' };
  const [early, late] = await Promise.all([startBundle(env), startBundle(env)]);
  const host = { Host: 'web-80-moving.example.com' };
  try {
    expect((await request(early.port, { headers: host })).body).toBe('task-1');
    const found = Date.now();
    stub.model.clusters.moving = { web: [task(two.port)] };
    // The late proxy takes the early one's answer from Redis, most of a period old already.
    await new Promise((r) => setTimeout(r, periodS * 700));
    expect((await request(late.port, { headers: host })).body).toBe('task-1');
    expect(stub.count('ListTasks')).toBe(1);
    await until('the new task served by the late proxy', async () => (await request(late.port, { headers: host })).body === 'task-2', periodS * 3000, 50);
    // Refreshed with the fleet, a period after the answer was found: not a period after it took it.
    expect(Date.now() - found).toBeLessThan(periodS * 1000 * 1.45);
  } finally {
    await Promise.all([early.stop(), late.stop()]);
    await redis.stop();
    await stub.close();
    await Promise.all([one.close(), two.close()]);
  }
});

describe('REDIS_URL=rediss:// (TLS)', () => {
  // A self-signed certificate for 127.0.0.1, made for these tests only (test/support/tls).
  const TLS_DIR = path.join(__dirname, '..', 'support', 'tls');
  const cert = path.join(TLS_DIR, 'localhost-test.crt');
  const key = path.join(TLS_DIR, 'localhost-test.key');

  test('discovery is shared over TLS when the server certificate is trusted; an untrusted one is refused and the proxy serves without Redis', async () => {
    const backend = await startBackend('task');
    const stub = await startAwsStub({ clusters: { prod: { api: [{ ip: '127.0.0.1' }] } } });
    const tlsPort = await freePort();
    const redis = await startRedisServer(['--tls-port', String(tlsPort), '--tls-cert-file', cert, '--tls-key-file', key, '--tls-ca-cert-file', cert, '--tls-auth-clients', 'no']);
    const admin = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    const env = { ...stub.env(), DOMAIN: 'example.com', REDIS_URL: `rediss://127.0.0.1:${tlsPort}`, NODE_CHECK_PERIOD: '1', HEALTH_CHECK_PATH: 'off' };
    const host = { Host: `api-${backend.port}-prod.example.com` };
    const proxies: Proxy[] = [];
    try {
      await admin.connect();
      const untrusted = await startBundle(env);
      proxies.push(untrusted);
      expect(await request(untrusted.port, { headers: host })).toMatchObject({ status: 200, body: 'task' });
      // It reached the TLS port (the only one in its settings) and refused the certificate: logged, not shared.
      const refused = await until('the certificate refused', () =>
        untrusted.stderr
          .split('\n')
          .find((l) => /redis unavailable/.test(l) && /self-signed certificate|DEPTH_ZERO_SELF_SIGNED_CERT/.test(l)),
      );
      expect(refused).toBeDefined();
      expect(await admin.keys('*')).toEqual([]);

      const trusted = await startBundle({ ...env, NODE_EXTRA_CA_CERTS: cert });
      proxies.push(trusted);
      expect(await request(trusted.port, { headers: host })).toMatchObject({ status: 200, body: 'task' });
      const keys = await until('the discovery in Redis', async () => {
        const k = await admin.keys('*');
        return k.length > 0 ? k : undefined;
      });
      expect(keys!.some((k) => k.includes('api') && k.includes('prod'))).toBe(true);
    } finally {
      admin.disconnect();
      await Promise.all(proxies.map((p) => p.stop()));
      await redis.stop();
      await stub.close();
      await backend.close();
    }
  });
});

test('with Redis, ports of one service named at different times on two proxies cost the fleet a discovery of it a period or two, not one per port', async () => {
  // A port each, all of one task: answers, so that no refusal asks for a discovery of its own.
  const ports = await Promise.all(Array.from({ length: 6 }, (_, i) => startBackend(`port-${i}`)));
  const stub = await startAwsStub({ clusters: { spread: { api: [{ ip: '127.0.0.1' }] } } });
  const redis = await startRedisServer();
  const periodS = 2;
  const env = { ...stub.env(), DOMAIN: 'example.com', REDIS_URL: `127.0.0.1:${redis.port}`, NODE_CHECK_PERIOD: String(periodS), HEALTH_CHECK_PATH: 'off', WORKERS: '1', NEW_ROUTE_RATE: '100' };
  const fleet = await Promise.all([startBundle(env), startBundle(env)]);
  const get = async (p: Proxy, i: number) => (await request(p.port, { headers: { Host: `api-${ports[i].port}-spread.example.com`, Connection: 'close' } })).body;
  try {
    // Named a sixth of a period apart, on one proxy then the other: each route on a clock of its own.
    for (let i = 0; i < ports.length; i++) {
      expect(await get(fleet[i % 2], i)).toBe(`port-${i}`);
      await new Promise((r) => setTimeout(r, (periodS * 1000) / 6));
    }
    stub.resetCalls();
    const ends = Date.now() + periodS * 3000;
    while (Date.now() < ends) {
      for (const p of fleet) for (let i = 0; i < ports.length; i++) expect(await get(p, i)).toBe(`port-${i}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    // Three periods: at most a fetch per proxy a period (each may hold some of the routes' locks).
    expect(stub.count('ListTasks')).toBeLessThanOrEqual(8);
  } finally {
    await Promise.all(fleet.map((p) => p.stop()));
    await redis.stop();
    await stub.close();
    await Promise.all(ports.map((b) => b.close()));
  }
});

test("with Redis, a change in AWS reaches a port that took another port's records within one NODE_CHECK_PERIOD of their fetch", async () => {
  const [one, two] = await Promise.all([startBackend('task-1'), startBackend('task-2')]);
  const ci = 'arn:aws:ecs:us-east-1:123456789012:container-instance/moving/ci-1';
  // Container ports 80 and 81, both on the backend's port: two routes of one service.
  const task = (port: number) => ({ launchType: 'EC2' as const, containerInstanceArn: ci, bindings: [{ containerPort: 80, hostPort: port }, { containerPort: 81, hostPort: port }] });
  const stub = await startAwsStub({ clusters: { moving: { web: [task(one.port)] } } });
  stub.model.containerInstances[ci] = 'i-0123456789abcdef1';
  stub.model.instances.push({ id: 'i-0123456789abcdef1', privateIp: '127.0.0.1' });
  const redis = await startRedisServer();
  const periodS = 3;
  const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', REDIS_URL: `127.0.0.1:${redis.port}`, NODE_CHECK_PERIOD: String(periodS), HEALTH_CHECK_PATH: 'off', WORKERS: '1' });
  const get = async (port: number) => (await request(p.port, { headers: { Host: `web-${port}-moving.example.com` } })).body;
  try {
    expect(await get(80)).toBe('task-1');
    const fetched = Date.now();
    stub.model.clusters.moving = { web: [task(two.port)] };
    // Port 81 named most of a period later: it takes port 80's records, as old as they are.
    await new Promise((r) => setTimeout(r, periodS * 700));
    await get(81);
    await until('the new task served on port 81', async () => (await get(81)) === 'task-2', periodS * 3000, 50);
    // A period after the records were fetched (and a refresh tick); not a period after port 81 took them.
    expect(Date.now() - fetched).toBeLessThan(periodS * 1000 * 1.45);
  } finally {
    await p.stop();
    await redis.stop();
    await stub.close();
    await Promise.all([one.close(), two.close()]);
  }
});
