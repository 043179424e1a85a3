/**
 * Two proxies (bundles) sharing one real redis-server and one AWS endpoint: the fleet makes about the
 * AWS calls of one proxy, keeps serving when Redis dies, and shares again once it is back.
 */
import { startAwsStub } from '../support/aws-stub';
import { startBackend } from '../support/backend';
import { startBundle } from '../support/bundle';
import { request } from '../support/net';
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
