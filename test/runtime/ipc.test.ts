import { PRIMARY_ANSWER_TIMEOUT_MS, PrimaryProvider, ToPrimary } from '../../runtime/ipc';
import { DISCOVERY_DEADLINE_MS, makeTarget, RouteKey } from '../../runtime/types';

const route: RouteKey = { service: 'api', port: 80, cluster: 'prod' };

/** A worker's PrimaryProvider whose questions are kept for the test to answer. */
function worker(timeoutMs?: number): { provider: PrimaryProvider; asked: ToPrimary[] } {
  const asked: ToPrimary[] = [];
  return { provider: new PrimaryProvider('ecs', timeoutMs, (m) => asked.push(m)), asked };
}

describe("a worker's discovery through the primary", () => {
  test("waits past the primary's discovery deadline: a hung AWS is the primary's failure to report, not a silent primary", () => {
    expect(PRIMARY_ANSWER_TIMEOUT_MS).toBeGreaterThan(DISCOVERY_DEADLINE_MS);
  });

  test("brings the primary's hold on a failed route, and whether an answer is the last targets kept through a failure", async () => {
    const { provider, asked } = worker();
    const failed = provider.discoverAged(route).catch((e: unknown) => e);
    const kept = provider.discoverAged(route);
    const [n1, n2] = asked.map((m) => (m as { n: number }).n);
    provider.receive({ t: 'discovered', n: n1, error: 'denied', code: 'AccessDeniedException', logged: true, retryInMs: 4000 });
    provider.receive({ t: 'discovered', n: n2, targets: [makeTarget('10.0.0.1', 80)], ageMs: 0, stale: true });
    expect(await failed).toMatchObject({ message: 'denied', code: 'AccessDeniedException', logged: true, retryInMs: 4000 });
    expect(await kept).toEqual({ targets: [makeTarget('10.0.0.1', 80)], ageMs: 0, stale: true });
    await provider.close();
  });

  test('says the primary did not answer when it did not, within its timeout', async () => {
    const { provider } = worker(50);
    await expect(provider.discoverAged(route)).rejects.toThrow('the primary did not answer a discovery request');
    await provider.close();
  });
});
