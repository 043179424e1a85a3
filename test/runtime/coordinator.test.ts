import { loadConfig } from '../../runtime/config';
import { Coordinator } from '../../runtime/coordinator';
import { makeTarget, Provider, RouteKey, Target } from '../../runtime/types';

const route: RouteKey = { service: 'api', port: 80, cluster: 'prod' };

function counting(answer: () => Target[]): Provider & { calls: number } {
  const p = { name: 'test', calls: 0, discover: async () => (p.calls++, answer()) };
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

  test('a discovery that never settles fails at the deadline, and the next ask starts a new one', async () => {
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
    expect(await c.discover(route)).toEqual([makeTarget('10.0.0.1', 80)]);
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
    let fail = false;
    const provider: Provider & { calls: number } = {
      name: 'test',
      calls: 0,
      discover: async () => {
        provider.calls++;
        if (fail) throw Object.assign(new Error('ServerException'), { name: 'ServerException' });
        return [makeTarget('10.0.0.1', 80), makeTarget('10.0.0.2', 80)];
      },
    };
    const c = new Coordinator(config, provider, () => clock);
    expect(await c.discover(route)).toHaveLength(2);
    fail = true;
    clock += 60_000;
    expect(await c.discover(route)).toEqual([makeTarget('10.0.0.1', 80), makeTarget('10.0.0.2', 80)]);
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

  test('a failed discovery is not cached', async () => {
    let fail = true;
    const provider: Provider & { calls: number } = {
      name: 'test',
      calls: 0,
      discover: async () => {
        provider.calls++;
        if (fail) throw new Error('ThrottlingException');
        return [makeTarget('10.0.0.1', 80)];
      },
    };
    const c = new Coordinator(config, provider, () => clock);
    await expect(c.discover(route)).rejects.toThrow('ThrottlingException');
    fail = false;
    expect(await c.discover(route)).toHaveLength(1);
    expect(provider.calls).toBe(2);
    await c.close();
  });
});
