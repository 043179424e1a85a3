/**
 * The request path counts into plain numbers (countRequest, countSuccess) that prom-client receives when
 * the metrics are read: a scrape must show exactly what per-request inc()/observe() calls would have.
 */
import { Counter, Histogram, Registry } from 'prom-client';
import { ClientBytes, countRequest, countSuccess, eventLoopStallMax, forgetRoute, openFds, register, requestDuration, requestSeconds, requestsTotal, successfulConnections, watchEventLoop } from '../../runtime/metrics';

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

const helpOf = (m: object): string => (m as { help: string }).help;

/** The same metrics fed one call per request, as prom-client is normally used. */
function reference() {
  const r = new Registry();
  return {
    r,
    requests: new Counter({ name: 'karma_requests_total', help: helpOf(requestsTotal), labelNames: ['route', 'code'], registers: [r] }),
    duration: new Histogram({ name: 'karma_request_duration_seconds', help: helpOf(requestDuration), labelNames: ['code'], buckets: BUCKETS, registers: [r] }),
    success: new Counter({ name: 'load_balancer_successful_connections_total', help: helpOf(successfulConnections), labelNames: ['target'], registers: [r] }),
  };
}

/** A metric's exposition lines, sorted (series order is not part of the format). */
async function text(r: Registry, name: string): Promise<string[]> {
  return (await r.getSingleMetricAsString(name)).split('\n').sort();
}

beforeEach(() => register.resetMetrics());

test('requests, durations and successes tallied on the request path read back exactly as per-call prom-client', async () => {
  const ref = reference();
  const samples: [string, number, number][] = [
    ['api-80-prod', 200, 0.0004],
    ['api-80-prod', 204, 0.001], // on a bucket bound: counted in that bucket (le is inclusive)
    ['api-80-prod', 503, 0.3],
    ['web-8080-prod', 200, 0.02],
    ['web-8080-prod', 499, 75], // beyond the last bucket: only +Inf, sum and count
    ['none', 400, 0],
    ['api-80-prod', 101, 12],
  ];
  for (const [route, status, seconds] of samples) {
    countRequest(route, status, seconds);
    const code = `${Math.floor(status / 100)}xx`;
    ref.requests.inc({ route, code });
    ref.duration.observe({ code }, seconds);
  }
  for (const t of ['10.0.0.1:80', '10.0.0.1:80', '10.0.0.2:80']) {
    countSuccess(t);
    ref.success.inc({ target: t });
  }
  for (const name of ['karma_requests_total', 'karma_request_duration_seconds', 'load_balancer_successful_connections_total']) {
    expect({ name, text: await text(register, name) }).toEqual({ name, text: await text(ref.r, name) });
  }

  // Counted once: a second read adds nothing, and later requests add to what was there.
  expect(await text(register, 'karma_requests_total')).toEqual(await text(ref.r, 'karma_requests_total'));
  countRequest('api-80-prod', 200, 0.002);
  ref.requests.inc({ route: 'api-80-prod', code: '2xx' });
  ref.duration.observe({ code: '2xx' }, 0.002);
  expect(await text(register, 'karma_requests_total')).toEqual(await text(ref.r, 'karma_requests_total'));
  expect(await text(register, 'karma_request_duration_seconds')).toEqual(await text(ref.r, 'karma_request_duration_seconds'));
});

test('the JSON form the primary aggregates from its workers includes the tallies too', async () => {
  countRequest('api-80-prod', 200, 0.01);
  countSuccess('10.0.0.9:80');
  const json = await register.getMetricsAsJSON();
  const requests = json.find((m) => m.name === 'karma_requests_total')!;
  const success = json.find((m) => m.name === 'load_balancer_successful_connections_total')!;
  const count = json.find((m) => m.name === 'karma_request_duration_seconds')!;
  expect((requests as unknown as { values: { labels: object; value: number }[] }).values).toEqual([expect.objectContaining({ labels: { route: 'api-80-prod', code: '2xx' }, value: 1 })]);
  expect((success as unknown as { values: { labels: object; value: number }[] }).values).toEqual([expect.objectContaining({ labels: { target: '10.0.0.9:80' }, value: 1 })]);
  expect((count as unknown as { values: { metricName: string; value: number }[] }).values.find((v) => v.metricName === 'karma_request_duration_seconds_count')?.value).toBe(1);
});

test("each route's request seconds are summed (with karma_requests_total, its mean time), and go when the route is forgotten", async () => {
  const seconds = async (): Promise<Record<string, number>> =>
    Object.fromEntries((await requestSeconds.get()).values.map((v) => [String(v.labels.route), v.value]));
  for (const [route, s] of [['api-80-prod', 0.5], ['api-80-prod', 1.5], ['web-8080-prod', 2], ['api-80-prod', 0.25]] as const) countRequest(route, 200, s);
  expect(await seconds()).toEqual({ 'api-80-prod': 2.25, 'web-8080-prod': 2 });
  // Read once: a second read adds nothing.
  expect(await seconds()).toEqual({ 'api-80-prod': 2.25, 'web-8080-prod': 2 });
  countRequest('api-80-prod', 503, 1);
  expect(await seconds()).toEqual({ 'api-80-prod': 3.25, 'web-8080-prod': 2 });
  forgetRoute('api-80-prod');
  expect(await seconds()).toEqual({ 'web-8080-prod': 2 });
  expect((await register.getSingleMetricAsString('karma_requests_total'))).not.toContain('api-80-prod');
});

test('an event loop stall is seen for a minute, however often the metrics are read meanwhile', async () => {
  const stall = async (): Promise<number> => (await eventLoopStallMax.get()).values[0]?.value ?? 0;
  watchEventLoop();
  await new Promise((r) => setTimeout(r, 100));
  const calm = await stall();
  const until = Date.now() + 300;
  while (Date.now() < until) {
    // Held up, as a long synchronous task holds a worker.
  }
  await new Promise((r) => setTimeout(r, 60));
  // Read as the primary's gathers read it, every few seconds, before a scrape: each sees it.
  for (let i = 0; i < 3; i++) expect(await stall()).toBeGreaterThan(Math.max(0.2, calm));
});

test('open descriptors are counted off the event loop', async () => {
  const n = (await openFds.get()).values[0]?.value ?? NaN;
  expect(n).toBeGreaterThan(3);
});

test("a socket whose queued bytes were dropped at its destruction takes nothing back, nor any other socket's bytes", () => {
  const a = { bytesRead: 100, bytesWritten: 4_259_840 };
  const b = { bytesRead: 10, bytesWritten: 20 };
  const open = new Set([a, b]) as unknown as Set<import('node:net').Socket>;
  const bytes = new ClientBytes(open);
  expect(bytes.take()).toEqual([110, 4_259_860]);
  // Destroyed with 64 KiB still queued: bytesWritten falls back to what went out.
  a.bytesWritten = 4_194_304;
  b.bytesWritten = 30;
  open.delete(a as unknown as import('node:net').Socket);
  bytes.closed(a as unknown as import('node:net').Socket);
  expect(bytes.take()).toEqual([0, 10]);
  bytes.stop();
});
