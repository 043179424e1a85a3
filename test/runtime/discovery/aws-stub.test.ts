/**
 * Real SDK clients, made by runtime/aws.ts, discovering through the loopback AWS stub: proves the
 * AWS_ENDPOINT_URL_* wiring and that the providers read the real wire formats (ECS JSON, EC2 and
 * Auto Scaling XML), paging and errors included.
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ListTasksCommand } from '@aws-sdk/client-ecs';
import { createEcsClient, fetchSecretString, createSecretsManagerClient } from '../../../runtime/aws';
import { loadConfig } from '../../../runtime/config';
import { createProvider } from '../../../runtime/discovery';
import { awsCalls } from '../../../runtime/metrics';
import { POOL_ROUTE, type Provider, type RouteKey } from '../../../runtime/types';
import { startAwsStub, type AwsStub, type StubTask } from '../../support/aws-stub';

let stub: AwsStub;
let restoreEnv: () => void;
const providers: Provider[] = [];

beforeAll(async () => {
  stub = await startAwsStub();
  restoreEnv = stub.applyEnv();
});
afterAll(async () => {
  await Promise.all(providers.map((p) => p.close?.()));
  restoreEnv();
  await stub.close();
});
beforeEach(() => {
  stub.resetCalls();
  stub.clearFaults();
  Object.assign(stub.model, { clusters: {}, containerInstances: {}, instances: [], asgs: {}, secrets: {} });
});

/** A provider from env, as main builds it; short timeouts and few attempts keep fault tests fast. */
function provider(env: Record<string, string>, attempts = 3): Provider {
  const p = createProvider(loadConfig({ DOMAIN: 'example.com', ...env }), {}, { maxAttempts: attempts, requestTimeoutMs: 1000, connectionTimeoutMs: 1000 });
  providers.push(p);
  return p;
}

async function count(api: string, outcome: string): Promise<number> {
  return (await awsCalls.get()).values.find((v) => v.labels.api === api && v.labels.outcome === outcome)?.value ?? 0;
}

const route: RouteKey = { service: 'web', port: 8080, cluster: 'prod' };
const awsvpc = (n: number, over: Partial<StubTask> = {}): StubTask => ({ ip: `10.0.${n >> 8}.${n & 255}`, ...over });

describe('discovery through the AWS stub with real SDK clients', () => {
  test('ECS awsvpc: every page, DescribeTasks by 100, only RUNNING and not UNHEALTHY', async () => {
    const tasks = Array.from({ length: 250 }, (_, i) => awsvpc(i + 1));
    tasks.push(awsvpc(300, { lastStatus: 'PENDING' }), awsvpc(301, { healthStatus: 'UNHEALTHY' }));
    stub.model.clusters.prod = { web: tasks, other: [awsvpc(400)] };
    const okBefore = await count('ListTasks', 'ok');

    const targets = await provider({}).discover(route);

    expect(targets).toHaveLength(250);
    expect(targets).toContainEqual({ id: '10.0.0.1:8080', host: '10.0.0.1', port: 8080 });
    expect(targets.map((t) => t.id)).not.toContain('10.0.1.44:8080'); // PENDING
    expect(targets.map((t) => t.id)).not.toContain('10.0.1.45:8080'); // UNHEALTHY
    expect(stub.count('ListTasks')).toBe(3);
    expect(stub.count('DescribeTasks')).toBe(3);
    expect(stub.calls.filter((c) => c.api === 'DescribeTasks').map((c) => (c.params.tasks as string[]).length)).toEqual([100, 100, 52]);
    expect(stub.calls[0].params).toMatchObject({ cluster: 'prod', serviceName: 'web', desiredStatus: 'RUNNING' });
    expect((await count('ListTasks', 'ok')) - okBefore).toBe(3);
  });

  test("a cluster or service ECS does not know is counted as not_found, not as an AWS error: junk Hosts trip no alert", async () => {
    stub.model.clusters.prod = { web: [awsvpc(1)] };
    const before = { notFound: await count('ListTasks', 'not_found'), error: await count('ListTasks', 'error') };
    const p = provider({}, 1);
    expect(await p.discover({ service: 'junk', port: 8080, cluster: 'prod' })).toEqual([]);
    expect(await p.discover({ service: 'web', port: 8080, cluster: 'nosuchcluster' })).toEqual([]);
    expect((await count('ListTasks', 'not_found')) - before.notFound).toBe(2);
    expect((await count('ListTasks', 'error')) - before.error).toBe(0);
  });

  test('ECS names in any case: a lower-case Host reaches the CloudFormation-named cluster and service, looked up once', async () => {
    const services: Record<string, StubTask[]> = {};
    for (let i = 0; i < 24; i++) services[`Other-${i}`] = [awsvpc(100 + i)];
    services['MyStack-ApiService-1A2B3C'] = [awsvpc(1), awsvpc(2)];
    stub.model.clusters['MyStack-Cluster-9Z8Y'] = services;
    stub.model.clusters.unrelated = {};
    const p = provider({ ECS_CASE_LOOKUP: 'true' });
    const lower: RouteKey = { service: 'mystack-apiservice-1a2b3c', port: 8080, cluster: 'mystack-cluster-9z8y' };

    expect((await p.discover(lower)).map((t) => t.id)).toEqual(['10.0.0.1:8080', '10.0.0.2:8080']);
    expect(stub.count('ListClusters')).toBe(1);
    expect(stub.count('ListServices')).toBe(1); // 100 a page
    expect(stub.calls.filter((c) => c.api === 'DescribeTasks').map((c) => c.params.cluster)).toEqual(['MyStack-Cluster-9Z8Y']);

    // Remembered: a refresh goes straight to the ECS names.
    stub.resetCalls();
    expect(await p.discover(lower)).toHaveLength(2);
    expect(stub.calls.map((c) => c.api)).toEqual(['ListTasks', 'DescribeTasks']);
    expect(stub.calls[0].params).toMatchObject({ cluster: 'MyStack-Cluster-9Z8Y', serviceName: 'MyStack-ApiService-1A2B3C' });

    // Hosts naming services that do not exist: empty routes, answered from the listing already made.
    stub.resetCalls();
    for (const name of ['nope-1', 'nope-2', 'nope-3']) expect(await p.discover({ ...lower, service: name })).toEqual([]);
    expect(stub.count('ListTasks')).toBe(3);
    expect(stub.count('ListServices')).toBe(0);
  });

  test('ECS public IPs: one DescribeNetworkInterfaces, private IP as fallback', async () => {
    stub.model.clusters.prod = { web: [awsvpc(1, { publicIp: '54.1.1.1' }), awsvpc(2), awsvpc(3, { publicIp: '54.1.1.3' })] };
    const targets = await provider({ IP_PREFERENCE: 'public' }).discover(route);
    expect(targets.map((t) => t.id)).toEqual(['10.0.0.2:8080', '54.1.1.1:8080', '54.1.1.3:8080']);
    expect(stub.count('DescribeNetworkInterfaces')).toBe(1);
    expect(Object.keys(stub.calls.find((c) => c.api === 'DescribeNetworkInterfaces')?.params ?? {})).toEqual(
      expect.arrayContaining(['NetworkInterfaceId.1', 'NetworkInterfaceId.2', 'NetworkInterfaceId.3']),
    );
  });

  test('ECS bridge mode: dynamic host ports on the container instance private IP', async () => {
    const ci = 'arn:aws:ecs:us-east-1:123456789012:container-instance/prod/abc';
    stub.model.clusters.prod = {
      web: [
        { containerInstanceArn: ci, bindings: [{ containerPort: 8080, hostPort: 32768 }] },
        { containerInstanceArn: ci, bindings: [{ containerPort: 8080, hostPort: 32769 }] },
      ],
    };
    stub.model.containerInstances[ci] = 'i-0abc';
    stub.model.instances.push({ id: 'i-0abc', privateIp: '10.3.0.7' });
    const p = provider({});
    expect((await p.discover(route)).map((t) => t.id)).toEqual(['10.3.0.7:32768', '10.3.0.7:32769']);
    await p.discover(route);
    expect(stub.count('DescribeContainerInstances')).toBe(1);
    expect(stub.count('DescribeInstances')).toBe(1);
  });

  test('ECS bridge mode: a container instance that does not resolve is not asked for again at every refresh', async () => {
    const gone = 'arn:aws:ecs:us-east-1:123456789012:container-instance/prod/gone';
    const bare = 'arn:aws:ecs:us-east-1:123456789012:container-instance/prod/bare';
    const good = 'arn:aws:ecs:us-east-1:123456789012:container-instance/prod/good';
    stub.model.clusters.prod = {
      web: [
        { containerInstanceArn: gone, bindings: [{ containerPort: 8080, hostPort: 32768 }] },
        { containerInstanceArn: bare, bindings: [{ containerPort: 8080, hostPort: 32769 }] },
        { containerInstanceArn: good, bindings: [{ containerPort: 8080, hostPort: 32770 }] },
      ],
    };
    // 'gone' is unknown to ECS; 'bare' is an instance without an address.
    stub.model.containerInstances[bare] = 'i-0bare';
    stub.model.containerInstances[good] = 'i-0good';
    stub.model.instances.push({ id: 'i-0bare' }, { id: 'i-0good', privateIp: '10.3.0.8' });
    const p = provider({});
    for (let i = 0; i < 3; i++) expect((await p.discover(route)).map((t) => t.id)).toEqual(['10.3.0.8:32770']);
    expect(stub.count('DescribeContainerInstances')).toBe(1);
    expect(stub.count('DescribeInstances')).toBe(1);
  });

  test('ECS bridge mode: an instance EC2 does not return yet (just launched) is asked for again at the next refresh', async () => {
    const late = 'arn:aws:ecs:us-east-1:123456789012:container-instance/prod/late';
    stub.model.clusters.prod = { web: [{ containerInstanceArn: late, bindings: [{ containerPort: 8080, hostPort: 32771 }] }] };
    stub.model.containerInstances[late] = 'i-0late';
    const p = provider({});
    expect(await p.discover(route)).toEqual([]);
    stub.model.instances.push({ id: 'i-0late', privateIp: '10.3.0.9' });
    expect((await p.discover(route)).map((t) => t.id)).toEqual(['10.3.0.9:32771']);
  });

  test('a missing cluster or service is an empty route', async () => {
    stub.model.clusters.prod = { web: [awsvpc(1)] };
    const p = provider({});
    await expect(p.discover({ ...route, cluster: 'nope' })).resolves.toEqual([]);
    await expect(p.discover({ ...route, service: 'nope' })).resolves.toEqual([]);
  });

  test('tag mode: running instances with the tag, on TARGET_PORT', async () => {
    stub.model.instances.push(
      { id: 'i-1', privateIp: '10.4.0.1', tags: { Name: 'worker-node' } },
      { id: 'i-2', privateIp: '10.4.0.2', tags: { Name: 'worker-node' }, state: 'stopped' },
      { id: 'i-3', privateIp: '10.4.0.3', tags: { Name: 'other' } },
      { id: 'i-4', tags: { Name: 'worker-node' } },
    );
    await expect(provider({ NODE_FILTER: 'tag' }).discover(POOL_ROUTE)).resolves.toEqual([
      { id: '10.4.0.1:30080', host: '10.4.0.1', port: 30080 },
    ]);
  });

  test('asg mode: InService only; an empty or missing group is an empty pool with no DescribeInstances', async () => {
    stub.model.instances.push({ id: 'i-1', privateIp: '10.5.0.1' }, { id: 'i-2', privateIp: '10.5.0.2' });
    stub.model.asgs['worker-nodes'] = [{ id: 'i-1' }, { id: 'i-2', lifecycleState: 'Terminating:Wait' }];
    stub.model.asgs.empty = [];
    expect((await provider({ NODE_FILTER: 'asg' }).discover(POOL_ROUTE)).map((t) => t.id)).toEqual(['10.5.0.1:30080']);
    expect(stub.count('DescribeInstances')).toBe(1);

    stub.resetCalls();
    await expect(provider({ NODE_FILTER: 'asg', ASG_NAME: 'empty' }).discover(POOL_ROUTE)).resolves.toEqual([]);
    await expect(provider({ NODE_FILTER: 'asg', ASG_NAME: 'missing' }).discover(POOL_ROUTE)).resolves.toEqual([]);
    expect(stub.count('DescribeAutoScalingGroups')).toBe(2);
    expect(stub.count('DescribeInstances')).toBe(0);
  });

  test('asg mode: a group that does not exist is said once in the log, and again when it comes back', async () => {
    const lines: string[] = [];
    const write = jest.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    const out = jest.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    try {
      const p = provider({ NODE_FILTER: 'asg', ASG_NAME: 'typo' });
      for (let i = 0; i < 3; i++) await expect(p.discover(POOL_ROUTE)).resolves.toEqual([]);
      stub.model.asgs.typo = [];
      await expect(p.discover(POOL_ROUTE)).resolves.toEqual([]);
    } finally {
      write.mockRestore();
      out.mockRestore();
    }
    const said = lines.map((l) => JSON.parse(l) as { level: string; msg: string; asgName?: string }).filter((l) => l.asgName === 'typo');
    expect(said.map((l) => [l.level, l.msg])).toEqual([
      ['warn', 'the Auto Scaling group does not exist in this region: the pool is empty (check ASG_NAME and AWS_REGION)'],
      ['info', 'the Auto Scaling group exists again'],
    ]);
  });

  test('a throttled call is retried by the SDK and counted per attempt', async () => {
    stub.model.clusters.prod = { web: [awsvpc(1)] };
    stub.fail('ListTasks', 'throttle');
    const before = await count('ListTasks', 'throttled');
    await expect(provider({}).discover(route)).resolves.toHaveLength(1);
    expect(stub.count('ListTasks')).toBe(2);
    expect((await count('ListTasks', 'throttled')) - before).toBe(1);
  });

  test.each([
    ['throttle', 'ThrottlingException'],
    ['error500', 'ServerException'],
  ] as const)('%s on every attempt: discover throws %s', async (fault, name) => {
    stub.model.clusters.prod = { web: [awsvpc(1)] };
    stub.fail('*', fault, { times: Infinity });
    await expect(provider({}, 2).discover(route)).rejects.toMatchObject({ name });
    expect(stub.count('ListTasks')).toBe(2);
  });

  test('throttled EC2 and Auto Scaling are counted as throttled too', async () => {
    const ec2Before = await count('DescribeInstances', 'throttled');
    const asgBefore = await count('DescribeAutoScalingGroups', 'throttled');
    stub.fail('*', 'throttle', { times: Infinity });
    await expect(provider({ NODE_FILTER: 'tag' }, 1).discover(POOL_ROUTE)).rejects.toMatchObject({ name: 'RequestLimitExceeded' });
    await expect(provider({ NODE_FILTER: 'asg' }, 1).discover(POOL_ROUTE)).rejects.toMatchObject({ name: 'Throttling' });
    expect((await count('DescribeInstances', 'throttled')) - ec2Before).toBe(1);
    expect((await count('DescribeAutoScalingGroups', 'throttled')) - asgBefore).toBe(1);
  });

  test.each(['hang', 'malformed', 'reset'] as const)('a %s answer fails the discovery within the timeout', async (fault) => {
    stub.model.clusters.prod = { web: [awsvpc(1)] };
    stub.fail('ListTasks', fault, { times: Infinity });
    const started = Date.now();
    await expect(provider({}, 1).discover(route)).rejects.toBeInstanceOf(Error);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  test.each([
    ['an empty 200', 'ListTasks', 'empty200', {}],
    ['{} for ListTasks', 'ListTasks', 'emptyObject200', {}],
    ['{} for DescribeTasks', 'DescribeTasks', 'emptyObject200', {}],
    ['an HTML 200 for DescribeInstances', 'DescribeInstances', 'html200', { NODE_FILTER: 'tag' }],
    ['an empty 200 for DescribeInstances', 'DescribeInstances', 'empty200', { NODE_FILTER: 'tag' }],
    ['an empty 200 for DescribeAutoScalingGroups', 'DescribeAutoScalingGroups', 'empty200', { NODE_FILTER: 'asg' }],
    ['a group without its Instances list', 'DescribeAutoScalingGroups', 'noItemList', { NODE_FILTER: 'asg' }],
    ['a reservation without its instances list', 'DescribeInstances', 'noItemList', { NODE_FILTER: 'tag' }],
  ] as const)('%s is a failed discovery, not an empty pool, and is counted as an error', async (_name, api, fault, env) => {
    stub.model.clusters.prod = { web: [awsvpc(1)] };
    stub.model.instances = [{ id: 'i-1', privateIp: '10.0.0.9', tags: { Name: 'worker-node' } }];
    stub.model.asgs = { 'worker-nodes': [{ id: 'i-1' }] };
    const p = provider(env, 1);
    const key = 'NODE_FILTER' in env ? POOL_ROUTE : route;
    await expect(p.discover(key)).resolves.toHaveLength(1);
    const errorsBefore = await count(api, 'error');
    stub.fail(api, fault, { times: Infinity });
    await expect(p.discover(key)).rejects.toMatchObject({ name: 'IncompleteAnswer' });
    expect((await count(api, 'error')) - errorsBefore).toBe(1);
  });

  test('a real empty answer is still an empty pool', async () => {
    stub.model.clusters.prod = { web: [] };
    await expect(provider({}, 1).discover(route)).resolves.toEqual([]);
    stub.model.asgs = { 'worker-nodes': [] };
    await expect(provider({ NODE_FILTER: 'asg' }, 1).discover(POOL_ROUTE)).resolves.toEqual([]);
    await expect(provider({ NODE_FILTER: 'tag' }, 1).discover(POOL_ROUTE)).resolves.toEqual([]);
  });

  test('an abort signal stops a discovery whose call AWS is holding', async () => {
    stub.model.clusters.prod = { web: [awsvpc(1)] };
    stub.fail('ListTasks', 'hang');
    const ac = new AbortController();
    const p = provider({}, 1).discover(route, ac.signal);
    // Aborted once the call is at the stub: aborted before its socket, the SDK leaves a connection timer behind.
    while (stub.count('ListTasks') === 0) await new Promise((r) => setTimeout(r, 5));
    const started = Date.now();
    ac.abort();
    await expect(p).rejects.toBeInstanceOf(Error);
    expect(Date.now() - started).toBeLessThan(500); // the request timeout is 1000 ms
  });

  test('Secrets Manager: the SecretString of a secret', async () => {
    stub.model.secrets['arn:aws:secretsmanager:us-east-1:123456789012:secret:redis-auth'] = 'tok3n';
    const sm = createSecretsManagerClient();
    try {
      await expect(fetchSecretString('arn:aws:secretsmanager:us-east-1:123456789012:secret:redis-auth', sm)).resolves.toBe('tok3n');
      await expect(fetchSecretString('missing', sm)).rejects.toMatchObject({ name: 'ResourceNotFoundException' });
    } finally {
      sm.destroy();
    }
  });
});

test('an AWS answer that stalls after its headers fails at the client timeout rather than hanging', async () => {
  // Headers and the start of a JSON body, then nothing: the SDK's request timeout ends with the headers.
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/x-amz-json-1.1' });
    res.write('{"taskArns":[');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const before = process.env.AWS_ENDPOINT_URL_ECS;
  process.env.AWS_ENDPOINT_URL_ECS = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const ecs = createEcsClient({ region: 'us-east-1', maxAttempts: 1, requestTimeoutMs: 300, connectionTimeoutMs: 300 });
  try {
    const t0 = Date.now();
    await expect(ecs.send(new ListTasksCommand({ cluster: 'prod' }))).rejects.toThrow(/timed out/);
    expect(Date.now() - t0).toBeLessThan(5000);
  } finally {
    process.env.AWS_ENDPOINT_URL_ECS = before;
    ecs.destroy();
    server.closeAllConnections();
    server.close();
  }
});
