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
