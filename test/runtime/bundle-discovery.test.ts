/**
 * The bundle discovering through a loopback AWS endpoint (AWS_ENDPOINT_URL_*), as it would through
 * AWS: ECS awsvpc and bridge tasks, and EC2 pools.
 */
import { startAwsStub, AwsStub } from '../support/aws-stub';
import { Backend, startBackend } from '../support/backend';
import { startBundle } from '../support/bundle';
import { request, until } from '../support/net';
import { TARGETS_RESIDENCY_MS } from '../../runtime/routes';

jest.setTimeout(60_000);

/**
 * Kills every worker of `p`, one after the other as crashes come, each once its replacement listens:
 * the listening port stays open, and every request after meets a worker that never served a route.
 */
async function replaceWorkers(p: Awaited<ReturnType<typeof startBundle>>, workers: number): Promise<void> {
  for (const pid of p.workers()) {
    process.kill(pid, 'SIGKILL');
    await until('a replacement worker, listening', async () => {
      if (p.workers().includes(pid)) return false;
      const health = await request(p.metricsPort, { path: '/healthz' });
      return (JSON.parse(health.body) as { workers: number }).workers === workers;
    });
  }
}

describe('the bundle with AWS discovery', () => {
  let stub: AwsStub;
  let backends: Backend[];
  beforeAll(async () => {
    backends = await Promise.all(['task-1', 'task-2'].map(startBackend));
    stub = await startAwsStub();
  });
  afterAll(async () => {
    await stub.close();
    await Promise.all(backends.map((b) => b.close()));
  });

  test('routes a Host to the RUNNING task of an ECS service (awsvpc), never to a PENDING one', async () => {
    const [one, two] = backends;
    // awsvpc: the target port is the port in the Host, so both backends must listen on it; use
    // one backend per service instead and check the PENDING task is left out.
    stub.model.clusters.prod = {
      api: [
        { ip: '127.0.0.1', lastStatus: 'RUNNING' },
        { ip: '127.0.0.2', lastStatus: 'PENDING' },
      ],
    };
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off' });
    try {
      for (let i = 0; i < 3; i++) {
        const r = await request(p.port, { headers: { Host: `api-${one.port}-prod.example.com` } });
        expect(r).toMatchObject({ status: 200, body: 'task-1' });
      }
      expect(stub.count('ListTasks')).toBe(1);
      const unknown = await request(p.port, { headers: { Host: `nope-${two.port}-prod.example.com` } });
      expect(unknown.status).toBe(503);
      // Discovery runs in the primary from the packed module (scripts/build.mjs); what it counts lands in
      // the one metrics registry that /metrics serves, not in a copy of its own.
      const metrics = await request(p.metricsPort, { path: '/metrics' });
      expect(metrics.body).toMatch(/^karma_tasks_skipped_total\{reason="not_running"\} 1$/m);
    } finally {
      await p.stop();
    }
  });

  test('bridge mode: the Host port is the container port, the target the instance IP on the dynamic host port', async () => {
    const [one, two] = backends;
    stub.model.clusters.ec2 = {
      web: [
        { launchType: 'EC2', containerInstanceArn: 'arn:aws:ecs:us-east-1:123456789012:container-instance/ec2/ci-1', bindings: [{ containerPort: 80, hostPort: one.port }] },
        { launchType: 'EC2', containerInstanceArn: 'arn:aws:ecs:us-east-1:123456789012:container-instance/ec2/ci-1', bindings: [{ containerPort: 80, hostPort: two.port }] },
      ],
    };
    stub.model.containerInstances['arn:aws:ecs:us-east-1:123456789012:container-instance/ec2/ci-1'] = 'i-0123456789abcdef0';
    stub.model.instances.push({ id: 'i-0123456789abcdef0', privateIp: '127.0.0.1' });
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off' });
    try {
      const names = [];
      for (let i = 0; i < 4; i++) names.push((await request(p.port, { headers: { Host: 'web-80-ec2.example.com' } })).body);
      expect(names.sort()).toEqual(['task-1', 'task-1', 'task-2', 'task-2']);
    } finally {
      await p.stop();
    }
  });

  test.each(['1', '2'])('a change in AWS reaches a route within one NODE_CHECK_PERIOD of it, whenever the route was found (%s workers)', async (workers) => {
    const [one, two] = backends;
    const ci = 'arn:aws:ecs:us-east-1:123456789012:container-instance/moving/ci-1';
    const task = (port: number) => ({ launchType: 'EC2' as const, containerInstanceArn: ci, bindings: [{ containerPort: 80, hostPort: port }] });
    stub.model.clusters.moving = { web: [task(one.port)] };
    stub.model.containerInstances[ci] = 'i-0123456789abcdef1';
    stub.model.instances.push({ id: 'i-0123456789abcdef1', privateIp: '127.0.0.1' });
    const periodS = 3;
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', NODE_CHECK_PERIOD: String(periodS), WORKERS: workers });
    const host = { Host: 'web-80-moving.example.com' };
    try {
      // Found a third of a period into the proxy's life: off any clock the proxy started with.
      await new Promise((r) => setTimeout(r, periodS * 300));
      expect((await request(p.port, { headers: host })).body).toBe('task-1');
      stub.model.clusters.moving = { web: [task(two.port)] };
      const changed = Date.now();
      await until('the new task served', async () => (await request(p.port, { headers: host })).body === 'task-2', periodS * 3000, 50);
      // A period, a refresh tick and the discovery itself; not the two periods a shared clock could take.
      expect(Date.now() - changed).toBeLessThan(periodS * 1000 * 1.4);
    } finally {
      await p.stop();
    }
  });

  test('Hosts naming many ports of one service cost one discovery of it, not one per port', async () => {
    stub.model.clusters.prod = { api: [{ ip: '127.0.0.1', lastStatus: 'RUNNING' }] };
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', NEW_ROUTE_RATE: '100', UPSTREAM_TIMEOUT: '1' });
    try {
      stub.resetCalls();
      await Promise.all(Array.from({ length: 40 }, (_, i) => request(p.port, { headers: { Host: `api-${40000 + i}-prod.example.com`, Connection: 'close' } })));
      expect(stub.count('ListTasks')).toBe(1);
    } finally {
      await p.stop();
    }
  });

  test.each(['1', '2'])('ports of one service named at different times are refreshed together: one discovery of it a period, not one per port (%s workers)', async (workers) => {
    stub.model.clusters.spread = { api: [{ ip: '127.0.0.1', lastStatus: 'RUNNING' }] };
    // A port each, all of one task: answers, so that no refusal asks for a discovery of its own.
    const ports = await Promise.all(Array.from({ length: 6 }, (_, i) => startBackend(`port-${i}`)));
    const periodS = 2;
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', NEW_ROUTE_RATE: '100', NODE_CHECK_PERIOD: String(periodS), WORKERS: workers });
    const get = async (b: Backend) => (await request(p.port, { headers: { Host: `api-${b.port}-spread.example.com`, Connection: 'close' } })).body;
    try {
      // Named a sixth of a period apart: each on a clock of its own, each was a fetch of its own a period.
      for (const [i, b] of ports.entries()) {
        expect(await get(b)).toBe(`port-${i}`);
        await new Promise((r) => setTimeout(r, (periodS * 1000) / 6));
      }
      stub.resetCalls();
      // Kept in use (ROUTE_IDLE_TTL) while three periods go by.
      const ends = Date.now() + periodS * 3000;
      while (Date.now() < ends) {
        for (const [i, b] of ports.entries()) expect(await get(b)).toBe(`port-${i}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      // Three periods: three fetches, or four as the clocks meet.
      expect(stub.count('ListTasks')).toBeLessThanOrEqual(4);
      expect(stub.count('ListTasks')).toBeGreaterThanOrEqual(2);
    } finally {
      await p.stop();
      await Promise.all(ports.map((b) => b.close()));
    }
  });

  test('Hosts naming made-up ports of a large service hold at most MAX_TARGETS targets: the least recently used routes go', async () => {
    stub.model.clusters.big = { api: Array.from({ length: 100 }, (_, i) => ({ ip: `127.0.1.${i + 1}`, lastStatus: 'RUNNING' })) };
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', NEW_ROUTE_RATE: '100', MAX_TARGETS: '250', RETRIES: '0' });
    try {
      // Nothing listens there: each is a 502 (or a 503 once its breakers open), but each is a route of 100
      // targets. Routes used in the last 2 s are kept (TARGETS_RESIDENCY_MS): three, then three more.
      const name = (i: number) => request(p.port, { headers: { Host: `api-${42000 + i}-big.example.com`, Connection: 'close' } });
      for (let i = 0; i < 3; i++) await name(i);
      await new Promise((r) => setTimeout(r, TARGETS_RESIDENCY_MS + 200));
      for (let i = 3; i < 6; i++) await name(i);
      const body = (await request(p.metricsPort, { path: '/metrics' })).body;
      const known = Number(/^karma_routes\{state="known"\} (\d+)$/m.exec(body)?.[1]);
      expect(known).toBeGreaterThanOrEqual(2);
      expect(known).toBeLessThanOrEqual(3);
      expect(Number(/^karma_limit_hits_total\{limit="targets"\} (\d+)$/m.exec(body)?.[1])).toBeGreaterThanOrEqual(3);
    } finally {
      await p.stop();
    }
  });

  test('Hosts made up that spend NEW_ROUTE_RATE keep no worker from a route the primary holds: a replacement worker serves it', async () => {
    const [one] = backends;
    stub.model.clusters.prod = { api: [{ ip: '127.0.0.1', lastStatus: 'RUNNING' }] };
    const host = `api-${one.port}-prod.example.com`;
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', WORKERS: '2', NEW_ROUTE_RATE: '1' });
    const junk = (n: number) => Promise.all(Array.from({ length: n }, (_, i) => request(p.port, { headers: { Host: `nope${i}-80-prod.example.com`, Connection: 'close' } })));
    try {
      expect(await request(p.port, { headers: { Host: host, Connection: 'close' } })).toMatchObject({ status: 200 });
      await replaceWorkers(p, 2);
      await junk(40); // both new workers' budgets (4 each) spent on Hosts made up
      stub.resetCalls();
      for (let i = 0; i < 6; i++) expect(await request(p.port, { headers: { Host: host, Connection: 'close' } })).toMatchObject({ status: 200, body: 'task-1' });
      expect(stub.count('ListTasks')).toBe(0); // held by the primary: no AWS call
      expect((await junk(4)).map((r) => r.status)).toEqual([503, 503, 503, 503]);
    } finally {
      await p.stop();
    }
  });

  test('asg mode: the InService instances of the group, on TARGET_PORT', async () => {
    const [one] = backends;
    stub.model.asgs.workers = [{ id: 'i-00000000000000001' }, { id: 'i-00000000000000002', lifecycleState: 'Terminating' }];
    stub.model.instances.push({ id: 'i-00000000000000001', privateIp: '127.0.0.1' }, { id: 'i-00000000000000002', privateIp: '127.0.0.3' });
    // The stub silences the SDK's Node 20 warning; here it may speak, to show it comes out as a log line.
    const p = await startBundle({ ...stub.env(), AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'false',
      NODE_FILTER: 'asg', ASG_NAME: 'workers', TARGET_PORT: String(one.port), HEALTH_CHECK_PATH: 'off' });
    try {
      for (let i = 0; i < 3; i++) expect(await request(p.port, { headers: { Host: 'anything.example.org' } })).toMatchObject({ status: 200, body: 'task-1' });
    } finally {
      await p.stop();
    }
    // Every line is JSON, the SDK's own warnings (its NodeVersionSupportWarning on Node 20) included.
    const lines = `${p.stdout}\n${p.stderr}`.split('\n').filter((l) => l.trim() !== '');
    expect(lines.filter((l) => { try { JSON.parse(l); return false; } catch { return true; } })).toEqual([]);
    if (Number(process.versions.node.split('.')[0]) < 22) {
      expect(lines.map((l) => JSON.parse(l)).filter((l) => /^NodeVersionSupportWarning: .* require node >=22\./.test(l.msg)))
        .toMatchObject([{ level: 'warn', warning: 'Warning' }]);
    }
  });

  test.each(['1', '2'])('a rolling deploy: when the old task refuses, the route is rediscovered at once and the request retried on the new task (%s workers)', async (workers) => {
    const old = await startBackend('old');
    const fresh = await startBackend('new');
    const ci = 'arn:aws:ecs:us-east-1:123456789012:container-instance/deploy/ci-1';
    const task = (port: number) => ({ launchType: 'EC2' as const, containerInstanceArn: ci, bindings: [{ containerPort: 80, hostPort: port }] });
    stub.model.clusters.deploy = { web: [task(old.port)] };
    stub.model.containerInstances[ci] = 'i-0123456789abcdef2';
    stub.model.instances.push({ id: 'i-0123456789abcdef2', privateIp: '127.0.0.1' });
    // The default period (30 s): without a rediscovery the refusal asks for, the new task would be found half a minute on.
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', WORKERS: workers });
    const host = { Host: 'web-80-deploy.example.com' };
    try {
      expect((await request(p.port, { headers: host })).body).toBe('old');
      // The deploy comes a while after the route was found (longer than a shared answer counts as new).
      await new Promise((r) => setTimeout(r, 400));
      const before = stub.count('ListTasks');
      // ECS has started the new task and stops the old one: its port now refuses.
      stub.model.clusters.deploy = { web: [task(fresh.port)] };
      await old.close();
      // Each request (on its own connection, so that every worker takes some) meets the refusal or
      // its outcome: the retry waits for the route's rediscovery and reaches the new task.
      const bodies: string[] = [];
      for (let i = 0; i < 12; i++) bodies.push((await request(p.port, { headers: { ...host, Connection: 'close' } })).body);
      expect(bodies).toEqual(Array(12).fill('new'));
      // A handful of discoveries, not one per request.
      expect(stub.count('ListTasks') - before).toBeLessThanOrEqual(2 * Number(workers));
      for (let i = 0; i < 3; i++) expect((await request(p.port, { headers: host })).body).toBe('new');
    } finally {
      await p.stop();
      await fresh.close();
    }
  });

  test('a rolling deploy with several workers: requests on workers that met no refusal, finding the shared breaker open, wait for the rediscovery too', async () => {
    const old = await startBackend('old');
    const fresh = await startBackend('new');
    const ci = 'arn:aws:ecs:us-east-1:123456789012:container-instance/deploy/ci-1';
    const task = (port: number, arn: string) => ({ arn, launchType: 'EC2' as const, containerInstanceArn: ci, bindings: [{ containerPort: 80, hostPort: port }] });
    stub.model.clusters.deploy = { web: [task(old.port, 'arn:aws:ecs:us-east-1:123456789012:task/deploy/old')] };
    stub.model.containerInstances[ci] = 'i-0123456789abcdef2';
    stub.model.instances.push({ id: 'i-0123456789abcdef2', privateIp: '127.0.0.1' });
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', WORKERS: '4', CIRCUIT_BREAKER_THRESHOLD: '1' });
    const host = { Host: 'web-80-deploy.example.com' };
    try {
      // Every worker holds the route (connections of their own spread over the workers).
      for (let i = 0; i < 16; i++) expect((await request(p.port, { headers: { ...host, Connection: 'close' } })).body).toBe('old');
      await new Promise((r) => setTimeout(r, 400));
      stub.model.clusters.deploy = { web: [task(fresh.port, 'arn:aws:ecs:us-east-1:123456789012:task/deploy/new')] };
      await old.close();
      // One request meets the refusal: the breaker opens for every worker.
      expect((await request(p.port, { headers: { ...host, Connection: 'close' } })).body).toBe('new');
      await new Promise((r) => setTimeout(r, 300));
      const replies = await Promise.all(Array.from({ length: 40 }, () => request(p.port, { headers: { ...host, Connection: 'close' } })));
      expect(replies.map((r) => `${r.status} ${r.body}`)).toEqual(Array(40).fill('200 new'));
    } finally {
      await p.stop();
      await fresh.close();
    }
  });

  test('the last task stopping: the request its refusal held for the rediscovery gets 503 (an empty route), not 502', async () => {
    const last = await startBackend('last');
    const ci = 'arn:aws:ecs:us-east-1:123456789012:container-instance/deploy/ci-1';
    stub.model.clusters.deploy = { web: [{ launchType: 'EC2' as const, containerInstanceArn: ci, bindings: [{ containerPort: 80, hostPort: last.port }] }] };
    stub.model.containerInstances[ci] = 'i-0123456789abcdef2';
    stub.model.instances.push({ id: 'i-0123456789abcdef2', privateIp: '127.0.0.1' });
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', WORKERS: '1' });
    const host = { Host: 'web-80-deploy.example.com' };
    try {
      expect((await request(p.port, { headers: host })).body).toBe('last');
      await new Promise((r) => setTimeout(r, 400));
      stub.model.clusters.deploy = { web: [] }; // scaled to zero: the task stops
      await last.close();
      const r = await request(p.port, { headers: host });
      expect(r.status).toBe(503);
      expect(r.headers['retry-after']).toBeDefined();
    } finally {
      await p.stop();
    }
  });

  test('asg mode with AWS hanging at boot: the proxy listens after a bounded wait and answers 503, not a refused port', async () => {
    const [one] = backends;
    stub.fail('DescribeAutoScalingGroups', 'hang', { times: Infinity });
    try {
      // Ready 10 s in (POOL_START_WAIT_MS), and the start itself: a bound with room for a loaded machine.
      const p = await startBundle({ ...stub.env(), NODE_FILTER: 'asg', ASG_NAME: 'workers', TARGET_PORT: String(one.port), HEALTH_CHECK_PATH: 'off' }, 45_000);
      try {
        expect(await request(p.port)).toMatchObject({ status: 503 });
        expect(p.stderr).toContain('"msg":"the pool is not discovered yet: serving 503 until it is"');
      } finally {
        await p.stop('SIGKILL');
      }
    } finally {
      stub.clearFaults();
    }
  });

  test("a new route's first request outlasts one hung AWS attempt: the SDK's retry finds the targets, and it is answered", async () => {
    const [one] = backends;
    stub.model.clusters.prod = { api: [{ ip: '127.0.0.1', lastStatus: 'RUNNING' }] };
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off' });
    try {
      const before = stub.count('ListTasks');
      stub.fail('ListTasks', 'hang', { times: 1 });
      // The attempt is given up at 10 s (aws.ts) and retried at once; the wait was 10 s too, and the
      // client got a 503 milliseconds before the retry's answer.
      const r = await request(p.port, { headers: { Host: `api-${one.port}-prod.example.com` }, timeoutMs: 20_000 });
      expect(r.status).toBe(200);
      expect(stub.count('ListTasks') - before).toBe(2); // the hung attempt and its retry
    } finally {
      stub.clearFaults();
      await p.stop();
    }
  }, 30_000);

  test("a new route whose discovery AWS refuses is a 503, and the log names AWS's error, not a bare Error", async () => {
    const [one] = backends;
    stub.model.clusters.prod = { api: [{ ip: '127.0.0.1', lastStatus: 'RUNNING' }] };
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', AWS_MAX_ATTEMPTS: '1' });
    try {
      stub.fail('ListTasks', 'throttle', { times: Infinity });
      expect((await request(p.port, { headers: { Host: `api-${one.port}-prod.example.com` } })).status).toBe(503);
      const failed = await until('the failure logged', () =>
        p.stderr.split('\n').filter((l) => l.includes('discovery failed')).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.route === `api-${one.port}-prod`));
      // A route that never had targets keeps none: the line does not say it does.
      expect(failed).toMatchObject({ code: 'ThrottlingException', msg: 'discovery failed; the route has no targets yet' });
    } finally {
      stub.clearFaults();
      await p.stop();
    }
  });

  test.each([
    ['failing', 'error500'],
    ['hanging (answered after a second, not at the 30 s discovery deadline)', 'hang'],
  ] as const)('workers that replace crashed ones while AWS is %s serve the targets found before', async (_how, fault) => {
    const [one] = backends;
    stub.model.clusters.prod = { api: [{ ip: '127.0.0.1', lastStatus: 'RUNNING' }] };
    const host = `api-${one.port}-prod.example.com`;
    const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', WORKERS: '2', NODE_CHECK_PERIOD: '1', AWS_MAX_ATTEMPTS: '1' });
    try {
      expect(await request(p.port, { headers: { Host: host, Connection: 'close' } })).toMatchObject({ status: 200 });
      stub.fail('*', fault, { times: Infinity });
      await new Promise((r) => setTimeout(r, 1500)); // the route is due again: its refresh has failed, or hangs
      // Both replaced (one alone might not be given a connection).
      await replaceWorkers(p, 2);
      for (let i = 0; i < 6; i++) {
        const started = Date.now();
        expect(await request(p.port, { headers: { Host: host, Connection: 'close' } })).toMatchObject({ status: 200 });
        expect(Date.now() - started).toBeLessThan(5_000); // a first request's wait for discovery is 12 s
      }
    } finally {
      stub.clearFaults();
      await p.stop('SIGKILL');
    }
  }, 60_000);
});
