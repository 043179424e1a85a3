/**
 * The primary's sum of its workers' metrics (MetricsGather): a counter a scrape shows never goes down
 * while its route is current, whichever worker forgets what.
 */
import { Counter, Registry } from 'prom-client';
import { MetricsGather, type MetricsJson } from '../../runtime/gather';

/** A worker's registry: karma_requests_total by route, as the request path counts it. */
function worker() {
  const r = new Registry();
  const requests = new Counter({ name: 'karma_requests_total', help: 'Requests.', labelNames: ['route', 'code'], registers: [r] });
  return {
    count: (route: string, n: number) => requests.inc({ route, code: '2xx' }, n),
    forget: (route: string) => requests.remove({ route, code: '2xx' }),
    json: async () => (await r.getMetricsAsJSON()) as unknown as MetricsJson,
  };
}

/** The route's total in a scrape's text. */
const totalOf = (text: string, route: string): number =>
  [...text.matchAll(/^karma_requests_total\{([^}]*)\} (\d+)$/gm)].filter((m) => m[1].includes(`route="${route}"`)).reduce((n, m) => n + Number(m[2]), 0);

function setUp(current: Set<string>) {
  const gather = new MetricsGather(() => ({ routes: current, targets: new Set<string>() }));
  const workers = new Map([
    [1, worker()],
    [2, worker()],
  ]);
  /** A scrape in which every worker answers with its registry as it is now. */
  const scrape = async (): Promise<string> => {
    const answers = new Map<number, MetricsJson>();
    for (const [id, w] of workers) answers.set(id, await w.json());
    return gather.text(
      workers.keys(),
      [...workers.keys()].map((id) => ({ id, send: (n: number) => setImmediate(() => gather.answered(id, n, answers.get(id))) })),
      1000,
    );
  };
  return { gather, workers, scrape };
}

test("a route one worker forgets while another still serves it keeps the forgetting worker's count in the sum", async () => {
  const current = new Set(['api-80-prod']);
  const { workers, scrape } = setUp(current);
  workers.get(1)!.count('api-80-prod', 5);
  workers.get(2)!.count('api-80-prod', 3);
  expect(totalOf(await scrape(), 'api-80-prod')).toBe(8);

  workers.get(1)!.forget('api-80-prod'); // idle in worker 1 for ROUTE_IDLE_TTL
  expect(totalOf(await scrape(), 'api-80-prod')).toBe(8);
  workers.get(2)!.count('api-80-prod', 1);
  expect(totalOf(await scrape(), 'api-80-prod')).toBe(9);

  // Worker 1 takes the route again, counting from zero: its earlier count still stands beside it.
  workers.get(1)!.count('api-80-prod', 2);
  expect(totalOf(await scrape(), 'api-80-prod')).toBe(11);
  workers.get(1)!.forget('api-80-prod');
  expect(totalOf(await scrape(), 'api-80-prod')).toBe(11);
});

test('once the primary forgets the route too, its series go: forgotten routes cannot pile up', async () => {
  const current = new Set(['api-80-prod', 'web-80-prod']);
  const { workers, scrape } = setUp(current);
  workers.get(1)!.count('api-80-prod', 5);
  workers.get(1)!.count('web-80-prod', 1);
  await scrape();
  workers.get(1)!.forget('api-80-prod');
  expect(totalOf(await scrape(), 'api-80-prod')).toBe(5);
  current.delete('api-80-prod');
  const text = await scrape();
  expect(text).not.toContain('route="api-80-prod"');
  expect(totalOf(text, 'web-80-prod')).toBe(1);
});

test('a worker whose answer is late counts with its last answer, and is not counted twice when it comes', async () => {
  const current = new Set(['api-80-prod']);
  const gather = new MetricsGather(() => ({ routes: current, targets: new Set<string>() }));
  const w = worker();
  w.count('api-80-prod', 4);
  const first = await w.json();
  await gather.text([1], [{ id: 1, send: (n) => setImmediate(() => gather.answered(1, n, first)) }], 1000);
  // This time it does not answer within the bound.
  expect(totalOf(await gather.text([1], [{ id: 1, send: () => undefined }], 20), 'api-80-prod')).toBe(4);
  w.count('api-80-prod', 1);
  gather.answered(1, gather.nextNumber(), await w.json());
  expect(totalOf(await gather.text([1], [], 20), 'api-80-prod')).toBe(5);
});

test('a route a worker forgets and takes up again between two answers (its count starting over) does not lower the sum', async () => {
  const current = new Set(['api-80-prod']);
  const { workers, scrape } = setUp(current);
  workers.get(1)!.count('api-80-prod', 100);
  expect(totalOf(await scrape(), 'api-80-prod')).toBe(100);
  workers.get(1)!.forget('api-80-prod');
  workers.get(1)!.count('api-80-prod', 3);
  expect(totalOf(await scrape(), 'api-80-prod')).toBe(103);
});

test('with nobody scraping, what live workers let go is folded as it comes, not kept set by set', async () => {
  const current = new Set<string>();
  const gather = new MetricsGather(() => ({ routes: current, targets: new Set<string>() }));
  const w = worker();
  for (let i = 0; i < 200; i++) {
    w.count(`r${i}-80-prod`, 1);
    gather.answered(1, gather.nextNumber(), await w.json());
    w.forget(`r${i}-80-prod`);
    gather.answered(1, gather.nextNumber(), await w.json());
  }
  await new Promise((r) => setImmediate(r));
  expect((gather as unknown as { departed: unknown[] }).departed.length).toBeLessThanOrEqual(40);
});

test('a sum a hair smaller than last served (floating-point addition in another order) is served as before; a real drop is not hidden', async () => {
  const gather = new MetricsGather(() => ({ routes: new Set(['api']), targets: new Set<string>() }));
  const answer = (value: number): MetricsJson => [
    { name: 'karma_x_seconds_total', help: 'Seconds.', type: 'counter', aggregator: 'sum', values: [{ value, labels: { route: 'api' } }] } as MetricsJson[number],
  ];
  /** A scrape whose workers answer in `order` (the sum adds their counts in the order they come). */
  const scrape = async (values: Record<number, number>, order: number[]): Promise<number> => {
    const ask = order.map((id, i) => ({ id, send: (n: number) => setTimeout(() => gather.answered(id, n, answer(values[id])), 5 * i) }));
    const text = await gather.text(order, ask, 1000);
    return Number(/^karma_x_seconds_total\{route="api"\} (\S+)$/m.exec(text)![1]);
  };
  const counts = { 1: 0.1, 2: 0.2, 3: 0.3 };
  expect(await scrape(counts, [1, 2, 3])).toBe(0.1 + 0.2 + 0.3); // 0.6000000000000001
  expect(await scrape(counts, [2, 3, 1])).toBe(0.1 + 0.2 + 0.3); // 0.2 + 0.3 + 0.1 is 0.6: not a reset
  expect(await scrape({ 1: 0.1, 2: 0.2, 3: 0.4 }, [1, 2, 3])).toBeCloseTo(0.7, 12);
});
