import {
  DescribeContainerInstancesCommand,
  DescribeTasksCommand,
  ECSClient,
  ListClustersCommand,
  ListServicesCommand,
  ListTasksCommand,
  type Task,
} from '@aws-sdk/client-ecs';
import { DescribeInstancesCommand, DescribeNetworkInterfacesCommand, EC2Client } from '@aws-sdk/client-ec2';
import { mockClient } from 'aws-sdk-client-mock';
import { createProvider, EcsProvider, transformEcs } from '../../../runtime/discovery';
import { nameFor, slimTask } from '../../../runtime/discovery/ecs';
import { awsCalls, tasksSkipped } from '../../../runtime/metrics';
import { BATCH_CONCURRENCY, MAX_PAGES } from '../../../runtime/aws';
import type { RouteKey } from '../../../runtime/types';

const ecsMock = mockClient(ECSClient);
const ec2Mock = mockClient(EC2Client);
const route: RouteKey = { service: 'api', port: 8080, cluster: 'prod' };

beforeEach(() => {
  ecsMock.reset();
  ec2Mock.reset();
});
afterAll(() => {
  ecsMock.restore();
  ec2Mock.restore();
});

const arn = (i: number) => `arn:aws:ecs:us-east-1:123456789012:task/prod/${i.toString(16).padStart(32, '0')}`;

/** An awsvpc (Fargate) task as DescribeTasks returns it. */
function fargateTask(i: number, over: Partial<Task> = {}): Task {
  const ip = `10.0.${Math.floor(i / 250)}.${(i % 250) + 1}`;
  return {
    taskArn: arn(i),
    lastStatus: 'RUNNING',
    desiredStatus: 'RUNNING',
    healthStatus: 'UNKNOWN',
    launchType: 'FARGATE',
    attachments: [
      {
        id: `att-${i}`,
        type: 'ElasticNetworkInterface',
        status: 'ATTACHED',
        details: [
          { name: 'subnetId', value: 'subnet-1' },
          { name: 'networkInterfaceId', value: `eni-${i}` },
          { name: 'macAddress', value: '0a:00:00:00:00:01' },
          { name: 'privateIPv4Address', value: ip },
        ],
      },
    ],
    containers: [{ name: 'app', lastStatus: 'RUNNING', networkInterfaces: [{ attachmentId: `att-${i}`, privateIpv4Address: ip }] }],
    ...over,
  };
}

/** A bridge-mode task on a container instance with a dynamic host port for container port 8080. */
function bridgeTask(i: number, containerInstance: string, hostPort: number): Task {
  return {
    taskArn: arn(i),
    lastStatus: 'RUNNING',
    desiredStatus: 'RUNNING',
    launchType: 'EC2',
    containerInstanceArn: containerInstance,
    containers: [
      {
        name: 'app',
        networkBindings: [
          { bindIP: '0.0.0.0', containerPort: 8080, hostPort, protocol: 'tcp' },
          { bindIP: '::', containerPort: 8080, hostPort, protocol: 'tcp' },
          { bindIP: '0.0.0.0', containerPort: 9090, hostPort: hostPort + 1, protocol: 'tcp' },
        ],
      },
    ],
  };
}

async function metricValue(metric: typeof awsCalls | typeof tasksSkipped, labels: Record<string, string>): Promise<number> {
  const m = await metric.get();
  return m.values
    .filter((v) => Object.entries(labels).every(([k, x]) => (v.labels as Record<string, unknown>)[k] === x))
    .reduce((n, v) => n + v.value, 0);
}

/** The JSON log lines written while it is on (restore() ends it). */
function captureLog(): Record<string, unknown>[] & { restore: () => void } {
  const lines: Record<string, unknown>[] = [];
  const spy = jest.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(JSON.parse(String(chunk))), true));
  return Object.assign(lines, { restore: () => spy.mockRestore() });
}

function provider(over: Partial<ConstructorParameters<typeof EcsProvider>[0]> = {}): EcsProvider {
  return new EcsProvider({ ecs: new ECSClient({ region: 'us-east-1' }), ec2: new EC2Client({ region: 'us-east-1' }), ...over });
}

/** DescribeTasks answering from a table of tasks, at most 100 per call like the real API. */
function describeFrom(tasks: Task[]): void {
  const byArn = new Map(tasks.map((t) => [t.taskArn as string, t]));
  ecsMock.on(DescribeTasksCommand).callsFake((input: { tasks: string[] }) => {
    if (input.tasks.length > 100) throw Object.assign(new Error('Tasks cannot be more than 100'), { name: 'InvalidParameterException' });
    return { tasks: input.tasks.map((a) => byArn.get(a)).filter(Boolean), failures: [] };
  });
}

describe('EcsProvider with mocked SDK clients', () => {
  test('250 tasks over three ListTasks pages become 250 targets with three DescribeTasks calls', async () => {
    const tasks = Array.from({ length: 250 }, (_, i) => fargateTask(i));
    // Pages of 100 by token, like ECS; the tokens seen are recorded as sent (the paginator reuses its input).
    const tokens: (string | undefined)[] = [];
    ecsMock.on(ListTasksCommand).callsFake((input: { nextToken?: string; cluster?: string; serviceName?: string; desiredStatus?: string }) => {
      expect(input).toMatchObject({ cluster: 'prod', serviceName: 'api', desiredStatus: 'RUNNING' });
      tokens.push(input.nextToken);
      const from = Number(input.nextToken ?? 0);
      return { taskArns: tasks.slice(from, from + 100).map((t) => t.taskArn as string), nextToken: from + 100 < 250 ? String(from + 100) : undefined };
    });
    describeFrom(tasks);

    const targets = await provider().discover(route);

    expect(targets).toHaveLength(250);
    expect(targets.every((t) => t.port === 8080)).toBe(true);
    expect(targets.map((t) => t.id)).toEqual([...targets.map((t) => t.id)].sort());
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(3);
    expect(tokens).toEqual([undefined, '100', '200']);
    const describes = ecsMock.commandCalls(DescribeTasksCommand);
    expect(describes.map((c) => c.args[0].input.tasks?.length)).toEqual([100, 100, 50]);
    expect(describes.every((c) => c.args[0].input.cluster === 'prod')).toBe(true);
    expect(ec2Mock.calls()).toHaveLength(0); // private IPs need no EC2 call
  });

  test('ListTasks pages without end stop at MAX_PAGES with an error; a token given twice is an error at once (the listing is not whole)', async () => {
    let n = 0;
    ecsMock.on(ListTasksCommand).callsFake(() => ({ taskArns: [fargateTask(n).taskArn as string], nextToken: `t${n++}` }));
    describeFrom([]);
    await expect(provider().discover(route)).rejects.toThrow(`ListTasks: more than ${MAX_PAGES} pages`);
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(MAX_PAGES);

    // The token sent answered back: the SDK's paginator would take that page as the last, 100 tasks of 250.
    ecsMock.reset();
    const tasks = Array.from({ length: 250 }, (_, i) => fargateTask(i));
    ecsMock.on(ListTasksCommand).callsFake((input: { nextToken?: string }) => {
      const from = Number(input.nextToken ?? 0);
      return { taskArns: tasks.slice(from, from + 100).map((t) => t.taskArn as string), nextToken: '100' };
    });
    describeFrom(tasks);
    await expect(provider().discover(route)).rejects.toThrow('ListTasks: the same page token twice');
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(2);

    // Tokens taking turns (a, b, a, …): an error at the third page, not after MAX_PAGES.
    ecsMock.reset();
    let turn = 0;
    ecsMock.on(ListTasksCommand).callsFake(() => ({ taskArns: [tasks[0].taskArn as string], nextToken: turn++ % 2 === 0 ? 'a' : 'b' }));
    describeFrom(tasks);
    await expect(provider().discover(route)).rejects.toThrow('ListTasks: the same page token twice');
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(3);
  });

  test(`a service of 2,000 tasks is described 100 at a time with at most ${BATCH_CONCURRENCY} calls in flight`, async () => {
    const tasks = Array.from({ length: 2000 }, (_, i) => fargateTask(i));
    ecsMock.on(ListTasksCommand).callsFake((input: { nextToken?: string }) => {
      const from = Number(input.nextToken ?? 0);
      return { taskArns: tasks.slice(from, from + 100).map((t) => t.taskArn as string), nextToken: from + 100 < 2000 ? String(from + 100) : undefined };
    });
    const byArn = new Map(tasks.map((t) => [t.taskArn as string, t]));
    let inFlight = 0;
    let most = 0;
    ecsMock.on(DescribeTasksCommand).callsFake(async (input: { tasks: string[] }) => {
      most = Math.max(most, ++inFlight);
      await new Promise((r) => setTimeout(r, 2));
      inFlight--;
      return { tasks: input.tasks.map((a) => byArn.get(a)), failures: [] };
    });

    const targets = await provider().discover(route);

    expect(targets).toHaveLength(2000);
    expect(ecsMock.commandCalls(DescribeTasksCommand)).toHaveLength(20);
    expect(most).toBe(BATCH_CONCURRENCY);
  });

  test('a failed DescribeTasks call fails the discovery and starts no further calls', async () => {
    const tasks = Array.from({ length: 2000 }, (_, i) => fargateTask(i));
    ecsMock.on(ListTasksCommand).callsFake((input: { nextToken?: string }) => {
      const from = Number(input.nextToken ?? 0);
      return { taskArns: tasks.slice(from, from + 100).map((t) => t.taskArn as string), nextToken: from + 100 < 2000 ? String(from + 100) : undefined };
    });
    ecsMock.on(DescribeTasksCommand).rejects(Object.assign(new Error('boom'), { name: 'ServerException' }));

    await expect(provider().discover(route)).rejects.toThrow('boom');
    expect(ecsMock.commandCalls(DescribeTasksCommand)).toHaveLength(BATCH_CONCURRENCY);
  });

  test('PENDING, STOPPED, stopping and UNHEALTHY tasks are left out and counted', async () => {
    const tasks = [
      fargateTask(1),
      fargateTask(2, { lastStatus: 'PENDING' }),
      fargateTask(3, { lastStatus: 'STOPPED', desiredStatus: 'STOPPED' }),
      fargateTask(4, { healthStatus: 'UNHEALTHY' }),
      fargateTask(5, { healthStatus: 'HEALTHY' }),
      fargateTask(6, { lastStatus: 'RUNNING', desiredStatus: 'STOPPED' }),
      fargateTask(7, { lastStatus: 'PROVISIONING' }),
    ];
    ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    describeFrom(tasks);
    const before = {
      notRunning: await metricValue(tasksSkipped, { reason: 'not_running' }),
      unhealthy: await metricValue(tasksSkipped, { reason: 'unhealthy' }),
    };

    const targets = await provider().discover(route);

    expect(targets.map((t) => t.id)).toEqual(['10.0.0.2:8080', '10.0.0.6:8080']);
    expect((await metricValue(tasksSkipped, { reason: 'not_running' })) - before.notRunning).toBe(3);
    expect((await metricValue(tasksSkipped, { reason: 'unhealthy' })) - before.unhealthy).toBe(1);
  });

  test('HEALTHY_TASKS_ONLY keeps only HEALTHY tasks', async () => {
    const tasks = [fargateTask(1, { healthStatus: 'HEALTHY' }), fargateTask(2, { healthStatus: 'UNKNOWN' }), fargateTask(3, { healthStatus: 'UNHEALTHY' })];
    ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    describeFrom(tasks);
    const targets = await provider({ healthyTasksOnly: true }).discover(route);
    expect(targets.map((t) => t.id)).toEqual(['10.0.0.2:8080']);
  });

  test('HEALTHY_TASKS_ONLY leaving a service no task (no container health check: every task UNKNOWN) is said once, not left to a silent 503', async () => {
    const lines = captureLog();
    try {
      const tasks = [fargateTask(1, { healthStatus: 'UNKNOWN' }), fargateTask(2, { healthStatus: 'UNKNOWN' })];
      ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
      describeFrom(tasks);
      const p = provider({ healthyTasksOnly: true });
      expect(await p.discover(route)).toEqual([]);
      expect(await p.discover(route)).toEqual([]);
      const said = lines.filter((l) => String(l.msg).startsWith('HEALTHY_TASKS_ONLY'));
      expect(said).toEqual([expect.objectContaining({ level: 'warn', cluster: route.cluster, service: route.service, unknownTasks: 2 })]);
      // One HEALTHY task among them: nothing to say.
      const other = { ...route, service: 'other' };
      describeFrom([fargateTask(3, { healthStatus: 'HEALTHY' }), fargateTask(4, { healthStatus: 'UNKNOWN' })]);
      ecsMock.on(ListTasksCommand).resolves({ taskArns: [fargateTask(3).taskArn as string, fargateTask(4).taskArn as string] });
      expect(await p.discover(other)).toHaveLength(1);
      expect(lines.filter((l) => String(l.msg).startsWith('HEALTHY_TASKS_ONLY'))).toHaveLength(1);
    } finally {
      lines.restore();
    }
  });

  test('bridge mode on an IPv6-only container instance: its IPv6 address, as tag pools read it', async () => {
    const ci = 'arn:aws:ecs:us-east-1:123456789012:container-instance/prod/ci6';
    const tasks = [bridgeTask(1, ci, 32768)];
    ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    describeFrom(tasks);
    ecsMock.on(DescribeContainerInstancesCommand).resolves({ containerInstances: [{ containerInstanceArn: ci, ec2InstanceId: 'i-6' }] });
    ec2Mock.on(DescribeInstancesCommand).resolves({
      Reservations: [{ Instances: [{ InstanceId: 'i-6', Ipv6Address: '2600:1f18::6', State: { Name: 'running' } }] }],
    });
    expect((await provider().discover(route)).map((t) => t.id)).toEqual(['[2600:1f18::6]:32768']);
  });

  test('bridge mode: container instance private IP on the dynamic host port, container instances cached', async () => {
    const ci = (n: number) => `arn:aws:ecs:us-east-1:123456789012:container-instance/prod/ci${n}`;
    const tasks = [bridgeTask(1, ci(1), 32768), bridgeTask(2, ci(1), 32771), bridgeTask(3, ci(2), 49153)];
    ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    describeFrom(tasks);
    ecsMock.on(DescribeContainerInstancesCommand).resolves({
      containerInstances: [
        { containerInstanceArn: ci(1), ec2InstanceId: 'i-1' },
        { containerInstanceArn: ci(2), ec2InstanceId: 'i-2' },
      ],
    });
    ec2Mock.on(DescribeInstancesCommand).resolves({
      Reservations: [
        { Instances: [{ InstanceId: 'i-1', PrivateIpAddress: '10.1.0.1', State: { Name: 'running' } }] },
        { Instances: [{ InstanceId: 'i-2', PrivateIpAddress: '10.1.0.2', State: { Name: 'running' } }] },
      ],
    });
    const p = provider();

    const targets = await p.discover(route);

    expect(targets.map((t) => t.id)).toEqual(['10.1.0.1:32768', '10.1.0.1:32771', '10.1.0.2:49153']);
    expect(ecsMock.commandCalls(DescribeContainerInstancesCommand)).toHaveLength(1);
    expect(ecsMock.commandCalls(DescribeContainerInstancesCommand)[0].args[0].input).toMatchObject({
      cluster: 'prod',
      containerInstances: [ci(1), ci(2)],
    });
    expect(ec2Mock.commandCalls(DescribeInstancesCommand)[0].args[0].input.InstanceIds).toEqual(['i-1', 'i-2']);

    // The other port of the same tasks, and a second refresh: the container instances are cached.
    const other = await p.discover({ ...route, port: 9090 });
    expect(other.map((t) => t.id)).toEqual(['10.1.0.1:32769', '10.1.0.1:32772', '10.1.0.2:49154']);
    expect(ecsMock.commandCalls(DescribeContainerInstancesCommand)).toHaveLength(1);
    expect(ec2Mock.commandCalls(DescribeInstancesCommand)).toHaveLength(1);
  });

  test('bridge mode: a task on a container instance EC2 says is stopped or terminating is no target (its address would hold each try)', async () => {
    const ci = (n: number) => `arn:aws:ecs:us-east-1:123456789012:container-instance/prod/ci${n}`;
    const tasks = [bridgeTask(1, ci(1), 32768), bridgeTask(2, ci(2), 32768), bridgeTask(3, ci(3), 32768)];
    ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    describeFrom(tasks);
    ecsMock.on(DescribeContainerInstancesCommand).resolves({
      containerInstances: [1, 2, 3].map((n) => ({ containerInstanceArn: ci(n), ec2InstanceId: `i-${n}` })),
    });
    ec2Mock.on(DescribeInstancesCommand).resolves({
      Reservations: [
        { Instances: [{ InstanceId: 'i-1', PrivateIpAddress: '10.1.0.1', State: { Name: 'running' } }] },
        { Instances: [{ InstanceId: 'i-2', PrivateIpAddress: '10.1.0.2', State: { Name: 'stopped' } }] },
        { Instances: [{ InstanceId: 'i-3', PrivateIpAddress: '10.1.0.3', State: { Name: 'shutting-down' } }] },
      ],
    });
    expect((await provider().discover(route)).map((t) => t.id)).toEqual(['10.1.0.1:32768']);
  });

  test('IP_PREFERENCE=public: one DescribeNetworkInterfaces for all ENIs, private IP when no public one', async () => {
    const tasks = Array.from({ length: 5 }, (_, i) => fargateTask(i));
    ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    describeFrom(tasks);
    ec2Mock.on(DescribeNetworkInterfacesCommand).resolves({
      NetworkInterfaces: [0, 1, 2, 3].map((i) => ({
        NetworkInterfaceId: `eni-${i}`,
        PrivateIpAddress: `10.0.0.${i + 1}`,
        ...(i === 2 ? {} : { Association: { PublicIp: `54.0.0.${i + 1}` } }),
      })),
    });

    const targets = await provider({ ipPreference: 'public' }).discover(route);

    expect(targets.map((t) => t.id).sort()).toEqual(['10.0.0.3:8080', '10.0.0.5:8080', '54.0.0.1:8080', '54.0.0.2:8080', '54.0.0.4:8080']);
    const calls = ec2Mock.commandCalls(DescribeNetworkInterfacesCommand);
    expect(calls).toHaveLength(1);
    expect(calls[0].args[0].input.NetworkInterfaceIds).toEqual(['eni-0', 'eni-1', 'eni-2', 'eni-3', 'eni-4']);
  });

  test('a deleted ENI does not fail public IP discovery: the ids are retried as a filter', async () => {
    const tasks = [fargateTask(1), fargateTask(2)];
    ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    describeFrom(tasks);
    ec2Mock
      .on(DescribeNetworkInterfacesCommand)
      .rejectsOnce(Object.assign(new Error("The networkInterface ID 'eni-2' does not exist"), { name: 'InvalidNetworkInterfaceID.NotFound' }))
      .resolves({ NetworkInterfaces: [{ NetworkInterfaceId: 'eni-1', Association: { PublicIp: '54.0.0.9' } }] });
    const targets = await provider({ ipPreference: 'public' }).discover(route);
    expect(targets.map((t) => t.id)).toEqual(['10.0.0.3:8080', '54.0.0.9:8080']);
    expect(ec2Mock.commandCalls(DescribeNetworkInterfacesCommand)[1].args[0].input).toMatchObject({
      Filters: [{ Name: 'network-interface-id', Values: ['eni-1', 'eni-2'] }],
    });
  });

  test('IP_PREFERENCE=public with DescribeNetworkInterfaces failing: public IPs known from before stand, said once; a task whose is not known fails the discovery', async () => {
    const lines = captureLog();
    try {
      const tasks = [fargateTask(1), fargateTask(2)];
      ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
      describeFrom(tasks);
      ec2Mock.on(DescribeNetworkInterfacesCommand).resolves({ NetworkInterfaces: [{ NetworkInterfaceId: 'eni-1', Association: { PublicIp: '54.0.0.9' } }] });
      const p = provider({ ipPreference: 'public' });
      expect((await p.discover(route)).map((t) => t.id)).toEqual(['10.0.0.3:8080', '54.0.0.9:8080']);

      // EC2's limits are the account's: throttled (after the SDK's own retries), or refused. A task
      // that left is dropped meanwhile.
      ecsMock.on(ListTasksCommand).resolves({ taskArns: [tasks[0].taskArn as string] });
      ec2Mock.on(DescribeNetworkInterfacesCommand).rejects(Object.assign(new Error('Request limit exceeded.'), { name: 'RequestLimitExceeded', $metadata: { httpStatusCode: 503 } }));
      expect((await p.discover(route)).map((t) => t.id)).toEqual(['54.0.0.9:8080']);
      await p.discover(route);
      const said = lines.filter((l) => String(l.msg).startsWith('cannot look up the public IPs'));
      expect(said).toEqual([expect.objectContaining({ level: 'warn', enis: 1, code: 'RequestLimitExceeded' })]);
      // A new task's public IP is not known: its private address may be out of reach, so no answer
      // rather than a wrong one (the route keeps its last targets; a new one is retried).
      const third = fargateTask(3);
      ecsMock.on(ListTasksCommand).resolves({ taskArns: [...tasks, third].map((t) => t.taskArn as string) });
      describeFrom([...tasks, third]);
      await expect(p.discover(route)).rejects.toMatchObject({ name: 'RequestLimitExceeded' });
    } finally {
      lines.restore();
    }
  });

  test('tasks with missing fields are skipped and counted, never a crash', async () => {
    const tasks: Task[] = [
      fargateTask(1),
      { taskArn: arn(2), lastStatus: 'RUNNING' }, // nothing to reach it by
      fargateTask(3, { attachments: [{ type: 'ElasticNetworkInterface', status: 'PRECREATED', details: [{ name: 'subnetId', value: 's' }] }], containers: [] }),
      { ...bridgeTask(4, 'ci-x', 32768), containers: [{ name: 'app', networkBindings: [{ containerPort: 9999, hostPort: 1 }] }] }, // no binding for 8080
      { ...bridgeTask(5, 'ci-gone', 32768) }, // container instance unknown
      { taskArn: arn(6) }, // no status at all
    ];
    ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    describeFrom(tasks);
    ecsMock.on(DescribeContainerInstancesCommand).resolves({ containerInstances: [], failures: [{ arn: 'ci-gone', reason: 'MISSING' }] });
    const before = await metricValue(tasksSkipped, {});

    const targets = await provider().discover(route);

    expect(targets.map((t) => t.id)).toEqual(['10.0.0.2:8080']);
    expect((await metricValue(tasksSkipped, {})) - before).toBe(5);
    expect(ec2Mock.commandCalls(DescribeInstancesCommand)).toHaveLength(0);
  });

  test.each(['ClusterNotFoundException', 'ServiceNotFoundException'])('%s is an empty route, not an error', async (name) => {
    ecsMock.on(ListTasksCommand).rejects(Object.assign(new Error(name), { name, $metadata: { httpStatusCode: 400 } }));
    // No cluster or service of another case either.
    ecsMock.on(ListClustersCommand).resolves({ clusterArns: ['arn:aws:ecs:us-east-1:123456789012:cluster/other'] });
    ecsMock.on(ListServicesCommand).resolves({ serviceArns: ['arn:aws:ecs:us-east-1:123456789012:service/prod/other'] });
    await expect(provider().discover(route)).resolves.toEqual([]);
    expect(ecsMock.commandCalls(DescribeTasksCommand)).toHaveLength(0);
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(1);
  });

  test('a cluster of ALLOWED_CLUSTERS that ECS does not know is said once until it is found (a wrong region); a cluster a Host made up is not', async () => {
    const lines = captureLog();
    try {
      const notFound = Object.assign(new Error('Cluster not found.'), { name: 'ClusterNotFoundException', $metadata: { httpStatusCode: 400 } });
      ecsMock.on(ListTasksCommand).rejects(notFound);
      const p = provider({ clusterNames: ['Prod'] });
      const missing = () => lines.filter((l) => String(l.msg).startsWith('an ECS cluster of ALLOWED_CLUSTERS does not exist'));
      await expect(p.discover(route)).resolves.toEqual([]);
      await expect(p.discover({ ...route, service: 'web' })).resolves.toEqual([]);
      await expect(p.discover({ ...route, cluster: 'made-up' })).resolves.toEqual([]);
      expect(missing()).toEqual([expect.objectContaining({ level: 'warn', cluster: 'Prod' })]);
      ecsMock.on(ListTasksCommand).resolves({ taskArns: [] });
      await p.discover(route);
      ecsMock.on(ListTasksCommand).rejects(notFound);
      await p.discover(route);
      expect(missing()).toHaveLength(2);
    } finally {
      lines.restore();
    }
  });

  test.each(['ClusterNotFoundException', 'ServiceNotFoundException'])('%s, and the look-up of other cases failing, is still an empty route', async (name) => {
    ecsMock.on(ListTasksCommand).rejects(Object.assign(new Error(name), { name, $metadata: { httpStatusCode: 400 } }));
    ecsMock.on(ListClustersCommand).rejects(Object.assign(new Error('not authorized'), { name: 'AccessDeniedException' }));
    // ListServices not mocked at all: the mock answers undefined.
    await expect(provider({ caseLookup: true }).discover(route)).resolves.toEqual([]);
  });

  test('without ECS_CASE_LOOKUP a missing service is one ListTasks call and an empty route, as the seeds did', async () => {
    ecsMock.on(ListTasksCommand).rejects(Object.assign(new Error('ServiceNotFoundException'), { name: 'ServiceNotFoundException' }));
    await expect(provider().discover({ ...route, service: 'MyApi'.toLowerCase() })).resolves.toEqual([]);
    expect(ecsMock.calls()).toHaveLength(1);
  });

  test('without ECS_CASE_LOOKUP, the first route ECS does not know says once why a mixed-case name is not found', async () => {
    const lines = captureLog();
    try {
      ecsMock.on(ListTasksCommand).rejects(Object.assign(new Error('ServiceNotFoundException'), { name: 'ServiceNotFoundException' }));
      const p = provider();
      await expect(p.discover({ ...route, service: 'myapi' })).resolves.toEqual([]);
      ecsMock.on(ListTasksCommand).rejects(Object.assign(new Error('ClusterNotFoundException'), { name: 'ClusterNotFoundException' }));
      await expect(p.discover({ ...route, cluster: 'mycluster' })).resolves.toEqual([]);
      const said = lines.filter((l) => String(l.msg).includes('ECS_CASE_LOOKUP=true'));
      expect(said).toEqual([expect.objectContaining({ level: 'warn', cluster: route.cluster, service: 'myapi' })]);
      // A cluster of ALLOWED_CLUSTERS is asked for as spelled there: the look-up would not help it.
      const since = lines.length;
      await expect(provider({ clusterNames: ['Prod'] }).discover(route)).resolves.toEqual([]);
      expect(lines.slice(since).filter((l) => String(l.msg).includes('ECS_CASE_LOOKUP'))).toEqual([]);
      expect(lines.slice(since).filter((l) => String(l.msg).startsWith('an ECS cluster of ALLOWED_CLUSTERS does not exist'))).toHaveLength(1);
      // With the look-up on, there is nothing to suggest.
      const before = lines.length;
      ecsMock.on(ListClustersCommand).resolves({ clusterArns: [] });
      await expect(provider({ caseLookup: true }).discover({ ...route, cluster: 'other' })).resolves.toEqual([]);
      expect(lines.slice(before).filter((l) => String(l.msg).includes('ECS_CASE_LOOKUP'))).toEqual([]);
    } finally {
      lines.restore();
    }
  });

  test('Hosts naming services that do not exist, all at once, make one listing of the cluster; a refused listing one call', async () => {
    ecsMock.on(ListTasksCommand).rejects(Object.assign(new Error('ServiceNotFoundException'), { name: 'ServiceNotFoundException' }));
    ecsMock.on(ListServicesCommand).callsFake(async () => {
      await new Promise((r) => setTimeout(r, 20));
      return { serviceArns: ['arn:aws:ecs:us-east-1:123456789012:service/prod/web'] };
    });
    const p = provider({ caseLookup: true });
    const names = Array.from({ length: 50 }, (_, i) => `random-${i}`);
    expect(await Promise.all(names.map((service) => p.discover({ ...route, service })))).toEqual(names.map(() => []));
    expect(ecsMock.commandCalls(ListServicesCommand)).toHaveLength(1);

    ecsMock.reset();
    ecsMock.on(ListTasksCommand).rejects(Object.assign(new Error('ClusterNotFoundException'), { name: 'ClusterNotFoundException' }));
    ecsMock.on(ListClustersCommand).rejects(Object.assign(new Error('not authorized'), { name: 'AccessDeniedException' }));
    for (let i = 0; i < 20; i++) expect(await p.discover({ ...route, cluster: `nope-${i}` })).toEqual([]);
    expect(ecsMock.commandCalls(ListClustersCommand)).toHaveLength(1);
  });

  test('a cluster of ALLOWED_CLUSTERS is only ever that cluster: no look-up turns it into another that differs in case', async () => {
    const notFound = Object.assign(new Error('Cluster not found.'), { name: 'ClusterNotFoundException', $metadata: { httpStatusCode: 400 } });
    ecsMock.on(ListTasksCommand).rejects(notFound);
    ecsMock.on(ListTasksCommand, { cluster: 'PROD' }).resolves({ taskArns: [arn(1)] });
    ecsMock.on(ListClustersCommand).resolves({ clusterArns: ['arn:aws:ecs:us-east-1:123456789012:cluster/PROD'] });
    describeFrom([fargateTask(1)]);
    const lines = captureLog();
    try {
      await expect(provider({ caseLookup: true, clusterNames: ['prod'] }).discover(route)).resolves.toEqual([]); // 'prod' is allowed, 'PROD' is not
      expect(ecsMock.commandCalls(ListClustersCommand)).toHaveLength(0);
      // Not named in ALLOWED_CLUSTERS (no list: any cluster), the look-up finds it.
      expect((await provider({ caseLookup: true }).discover(route)).map((t) => t.id)).toEqual(['10.0.0.2:8080']);
    } finally {
      lines.restore();
    }
  });

  test('ALLOWED_CLUSTERS spelled as ECS spells it: the cluster is asked for by that name, which a role limited to it allows', async () => {
    // IAM compares cluster ARNs case-sensitively: a role for MyStack-Cluster-1A2B refuses the Host's spelling.
    const denied = Object.assign(new Error('not authorized to perform: ecs:ListTasks'), { name: 'AccessDeniedException', $metadata: { httpStatusCode: 400 } });
    ecsMock.on(ListTasksCommand).rejects(denied);
    ecsMock.on(ListTasksCommand, { cluster: 'MyStack-Cluster-1A2B' }).resolves({ taskArns: [arn(1)] });
    describeFrom([fargateTask(1)]);
    const mixed = { ...route, cluster: 'mystack-cluster-1a2b' };
    for (const caseLookup of [false, true]) {
      const found = await provider({ caseLookup, clusterNames: ['prod', 'MyStack-Cluster-1A2B'] }).discover(mixed);
      expect(found.map((t) => t.id)).toEqual(['10.0.0.2:8080']);
    }
    expect(ecsMock.commandCalls(ListTasksCommand).map((c) => c.args[0].input.cluster)).toEqual(['MyStack-Cluster-1A2B', 'MyStack-Cluster-1A2B']);
    // Without the spelling, the refusal is a failed discovery (the route keeps its last targets), not an empty route.
    await expect(provider({ caseLookup: true }).discover(mixed)).rejects.toThrow('not authorized');
  });

  test('a name found in another case is used for as long as it works; when it stops and the look-up fails, the discovery fails', async () => {
    const task = fargateTask(1);
    let gone = false;
    ecsMock.on(ListTasksCommand).callsFake((input: { serviceName: string }) => {
      if (gone || input.serviceName !== 'MyApi') throw Object.assign(new Error('ServiceNotFoundException'), { name: 'ServiceNotFoundException' });
      return { taskArns: [task.taskArn as string] };
    });
    ecsMock.on(ListServicesCommand).resolves({ serviceArns: ['arn:aws:ecs:us-east-1:123456789012:service/prod/MyApi'] });
    describeFrom([task]);
    const p = provider({ caseLookup: true });
    const myapi: RouteKey = { ...route, service: 'myapi' };
    expect(await p.discover(myapi)).toHaveLength(1);
    const now = Date.now();
    const clock = jest.spyOn(Date, 'now');
    try {
      // Hours later: straight to the ECS name, no listing.
      clock.mockReturnValue(now + 5 * 3_600_000);
      expect(await p.discover(myapi)).toHaveLength(1);
      expect(ecsMock.commandCalls(ListServicesCommand)).toHaveLength(1);
      // The service stops answering and the look-up is throttled: an error, so the route keeps its targets.
      gone = true;
      ecsMock.on(ListServicesCommand).rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }));
      await expect(p.discover(myapi)).rejects.toThrow('ServiceNotFoundException');
    } finally {
      clock.mockRestore();
    }
  });

  test("a cluster named like the listings' own keys is still searched for services", async () => {
    const task = fargateTask(1);
    ecsMock.on(ListTasksCommand).callsFake((input: { cluster: string; serviceName: string }) => {
      if (input.serviceName !== 'Api') throw Object.assign(new Error('ServiceNotFoundException'), { name: 'ServiceNotFoundException' });
      return { taskArns: [task.taskArn as string] };
    });
    ecsMock.on(ListServicesCommand).resolves({ serviceArns: ['arn:aws:ecs:us-east-1:123456789012:service/account/Api'] });
    ecsMock.on(ListClustersCommand).resolves({ clusterArns: ['arn:aws:ecs:us-east-1:123456789012:cluster/account'] });
    describeFrom([task]);
    for (const cluster of ['account', 'clusters']) expect(await provider({ caseLookup: true }).discover({ service: 'api', port: 8080, cluster })).toHaveLength(1);
  });

  test('a service scaled to zero is empty, with no DescribeTasks call', async () => {
    ecsMock.on(ListTasksCommand).resolves({ taskArns: [] });
    await expect(provider().discover(route)).resolves.toEqual([]);
    expect(ecsMock.commandCalls(DescribeTasksCommand)).toHaveLength(0);
  });

  test('throttling throws (so the route table keeps the last targets) and is counted as throttled', async () => {
    const tasks = [fargateTask(1), fargateTask(2)];
    describeFrom(tasks);
    ecsMock
      .on(ListTasksCommand)
      .resolvesOnce({ taskArns: tasks.map((t) => t.taskArn as string) })
      .rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException', $metadata: { httpStatusCode: 400 } }));
    const p = provider();
    const throttledBefore = await metricValue(awsCalls, { api: 'ListTasks', outcome: 'throttled' });

    // What the route table does: keep the last good answer when a refresh throws.
    let last = await p.discover(route);
    const refresh = async () => {
      try {
        last = await p.discover(route);
      } catch {
        /* stale on error */
      }
    };
    await expect(p.discover(route)).rejects.toMatchObject({ name: 'ThrottlingException' });
    await refresh();

    expect(last.map((t) => t.id)).toEqual(['10.0.0.2:8080', '10.0.0.3:8080']);
    expect((await metricValue(awsCalls, { api: 'ListTasks', outcome: 'throttled' })) - throttledBefore).toBe(2);
  });

  test('Hosts naming many ports of one service share its fetch within serviceShareMs; a port asking again, a later one and a failed fetch do not', async () => {
    const tasks = [fargateTask(1), fargateTask(2)];
    describeFrom(tasks);
    ecsMock
      .on(ListTasksCommand)
      .resolvesOnce({ taskArns: tasks.map((t) => t.taskArn as string) })
      .rejectsOnce(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException', $metadata: { httpStatusCode: 400 } }))
      .resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    const p = provider({ serviceShareMs: 300 });
    const ports = await Promise.all(Array.from({ length: 50 }, (_, i) => p.discoverAged({ ...route, port: 1000 + i })));
    expect(ports.map((f) => f.targets[0].id)).toEqual(Array.from({ length: 50 }, (_, i) => `10.0.0.2:${1000 + i}`));
    const again = await p.discoverAged({ ...route, port: 9000 });
    expect(again.targets.map((t) => t.id)).toEqual(['10.0.0.2:9000', '10.0.0.3:9000']);
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(1);
    // A route asking again (an early ask after a refusal) never takes what it had: a fetch of its own.
    await expect(p.discoverAged({ ...route, port: 9000 })).rejects.toMatchObject({ name: 'ThrottlingException' });
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(2);
    // The failure is nobody's answer; the shared answer it replaced is gone with it.
    expect((await p.discoverAged(route)).ageMs).toBeLessThan(300);
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(3);
    await new Promise((r) => setTimeout(r, 350));
    await p.discover({ ...route, port: 81 });
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(4);
  });

  test('a service found with no task serves its other ports only briefShareMs: its first task is found by a new route as soon as without sharing', async () => {
    const tasks = [fargateTask(1)];
    describeFrom(tasks);
    ecsMock.on(ListTasksCommand).resolvesOnce({ taskArns: [] }).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    const p = provider({ serviceShareMs: 5000, briefShareMs: 100 });
    expect((await p.discoverAged(route)).targets).toEqual([]);
    expect((await p.discoverAged({ ...route, port: 81 })).targets).toEqual([]); // within briefShareMs: shared
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 150));
    expect((await p.discoverAged({ ...route, port: 82 })).targets.map((t) => t.id)).toEqual(['10.0.0.2:82']);
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(2);
    // Records with a task serve the service's other ports for serviceShareMs, as old as they are.
    await new Promise((r) => setTimeout(r, 150));
    const later = await p.discoverAged({ ...route, port: 83 });
    expect(later.targets.map((t) => t.id)).toEqual(['10.0.0.2:83']);
    expect(later.ageMs).toBeGreaterThanOrEqual(140);
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(2);
  });

  test('a service whose task is still PENDING serves another port its records briefly: once the task runs, a new route finds it at once', async () => {
    const task = fargateTask(1, { lastStatus: 'PENDING' });
    ecsMock.on(ListTasksCommand).resolves({ taskArns: [task.taskArn as string] });
    ecsMock.on(DescribeTasksCommand).resolvesOnce({ tasks: [task], failures: [] }).resolves({ tasks: [{ ...task, lastStatus: 'RUNNING' }], failures: [] });
    const p = provider({ serviceShareMs: 5000, briefShareMs: 100 });
    expect((await p.discoverAged(route)).targets).toEqual([]);
    await new Promise((r) => setTimeout(r, 150));
    expect((await p.discoverAged({ ...route, port: 81 })).targets.map((t) => t.id)).toEqual(['10.0.0.2:81']);
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(2);
  });

  test('ports that joined a fetch slower than briefShareMs and get no target from it take its answer together, not one fetch each in turn', async () => {
    ecsMock.on(ListTasksCommand).callsFake(() => new Promise((r) => setTimeout(() => r({ taskArns: [] }), 300)));
    const p = provider({ serviceShareMs: 4500, briefShareMs: 200 });
    const started = Date.now();
    const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => p.discoverAged({ ...route, port: 9000 + i })));
    expect(answers.every((a) => a.targets.length === 0)).toBe(true);
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(1);
    expect(Date.now() - started).toBeLessThan(1000); // one fetch's time, not eight
  });

  test('a fetch still under way is joined for briefShareMs only: past it, another port does not wait on the first asker\'s fetch', async () => {
    const tasks = [fargateTask(1)];
    describeFrom(tasks);
    let release: (() => void) | undefined;
    ecsMock
      .on(ListTasksCommand)
      .callsFakeOnce(() => new Promise((r) => (release = () => r({ taskArns: tasks.map((t) => t.taskArn as string) }))))
      .resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    const p = provider({ serviceShareMs: 5000, briefShareMs: 100 });
    const hung = p.discoverAged(route);
    await new Promise((r) => setTimeout(r, 150));
    expect((await p.discoverAged({ ...route, port: 81 })).targets.map((t) => t.id)).toEqual(['10.0.0.2:81']);
    expect(ecsMock.commandCalls(ListTasksCommand)).toHaveLength(2);
    release!();
    expect((await hung).targets.map((t) => t.id)).toEqual(['10.0.0.2:8080']);
  });

  test('the route of the pool modes is not an ECS service', async () => {
    await expect(provider().discover({ service: '*', port: 0, cluster: '*' })).resolves.toEqual([]);
    expect(ecsMock.calls()).toHaveLength(0);
  });

  test('createProvider builds an ECS provider whose clients can be mocked', async () => {
    const tasks = [fargateTask(1)];
    ecsMock.on(ListTasksCommand).resolves({ taskArns: tasks.map((t) => t.taskArn as string) });
    describeFrom(tasks);
    const p = createProvider({
      nodeFilter: 'ecs',
      awsRegion: 'us-east-1',
      tagName: 'Name',
      tagValue: 'x',
      asgName: 'x',
      targetPort: 30080,
      healthyTasksOnly: false,
      ipPreference: 'private',
      staticTargets: [],
    });
    expect(p.name).toBe('ecs');
    await expect(p.discover(route)).resolves.toEqual([{ id: '10.0.0.2:8080', host: '10.0.0.2', port: 8080 }]);
    await p.close?.();
  });
});

describe('nameFor (pure): the ECS name a lower-case Host name stands for', () => {
  const arns = [
    'arn:aws:ecs:us-east-1:123456789012:service/Prod/MyStack-Api-1A2B',
    'arn:aws:ecs:us-east-1:123456789012:service/Prod/web',
    'arn:aws:ecs:us-east-1:123456789012:service/Prod/Twin',
    'arn:aws:ecs:us-east-1:123456789012:service/Prod/TWIN',
    'arn:aws:ecs:us-east-1:123456789012:service/legacy-format',
  ];
  test.each<[string, string | undefined]>([
    ['mystack-api-1a2b', 'MyStack-Api-1A2B'],
    ['web', 'web'],
    ['legacy-format', 'legacy-format'],
    ['twin', undefined], // two services differ only in case: which one was meant cannot be told
    ['prod', undefined], // a path segment that is not the name
    ['nope', undefined],
  ])('%s → %s', (lower, name) => expect(nameFor(arns, lower)).toBe(name));

  test('entries of a broken answer that are not strings are passed over', () => {
    expect(nameFor([null, 42, 'arn:aws:ecs:us-east-1:123456789012:service/Prod/MyApi'] as unknown as string[], 'myapi')).toBe('MyApi');
  });
});

describe('transformEcs (pure)', () => {
  const base = { port: 80, healthyTasksOnly: false, ipPreference: 'private' as const };
  const cases: [string, Task, string[]][] = [
    ['awsvpc from the attachment', fargateTask(0), ['10.0.0.1:80']],
    [
      'awsvpc from the container when the attachment has no IP',
      fargateTask(0, { attachments: [{ type: 'ElasticNetworkInterface', details: [{ name: 'networkInterfaceId', value: 'eni-0' }] }] }),
      ['10.0.0.1:80'],
    ],
    [
      'IPv6-only awsvpc task',
      fargateTask(0, {
        attachments: [{ type: 'ElasticNetworkInterface', details: [{ name: 'ipv6Address', value: '2600:1f18::1' }] }],
        containers: [],
      }),
      ['[2600:1f18::1]:80'],
    ],
    [
      'host mode binding',
      { taskArn: 'a', lastStatus: 'RUNNING', containerInstanceArn: 'ci', containers: [{ networkBindings: [{ containerPort: 80, hostPort: 80 }] }] },
      ['10.9.9.9:80'],
    ],
    [
      'port range binding',
      {
        taskArn: 'a',
        lastStatus: 'RUNNING',
        containerInstanceArn: 'ci',
        containers: [{ networkBindings: [{ containerPortRange: '70-90', hostPortRange: '40070-40090' }] }],
      },
      ['10.9.9.9:40080'],
    ],
    [
      'udp binding is not a target',
      { taskArn: 'a', lastStatus: 'RUNNING', containerInstanceArn: 'ci', containers: [{ networkBindings: [{ containerPort: 80, hostPort: 80, protocol: 'udp' }] }] },
      [],
    ],
    [
      'IPv6-only awsvpc task, the address spelled privateIPv6Address',
      fargateTask(0, {
        attachments: [{ type: 'ElasticNetworkInterface', details: [{ name: 'privateIPv6Address', value: '2600:1f18::2' }] }],
        containers: [],
      }),
      ['[2600:1f18::2]:80'],
    ],
    [
      'a host port no socket can have (a broken answer) is no binding',
      { taskArn: 'a', lastStatus: 'RUNNING', containerInstanceArn: 'ci', containers: [{ networkBindings: [
        { containerPort: 80, hostPort: 31001.5 }, { containerPort: 80, hostPort: 70000 }, { containerPort: 80, hostPort: -1 }] }] },
      [],
    ],
    [
      'a port range mapped past 65535 is no binding',
      { taskArn: 'a', lastStatus: 'RUNNING', containerInstanceArn: 'ci', containers: [{ networkBindings: [{ containerPortRange: '70-90', hostPortRange: '65530-65550' }] }] },
      [],
    ],
    ['DEACTIVATING', fargateTask(0, { lastStatus: 'DEACTIVATING' }), []],
    [
      // Docker gave its host port back when it exited: another container may have it now.
      "a container that exited in a running task (a sidecar that is not essential): its binding is no target",
      { taskArn: 'a', lastStatus: 'RUNNING', containerInstanceArn: 'ci', containers: [
        { name: 'app', lastStatus: 'RUNNING', networkBindings: [{ containerPort: 80, hostPort: 32768 }] },
        { name: 'old', lastStatus: 'STOPPED', networkBindings: [{ containerPort: 80, hostPort: 32769 }] },
      ] },
      ['10.9.9.9:32768'],
    ],
  ];
  test.each(cases)('%s', (_name, task, ids) => {
    const out = transformEcs({ tasks: [task], publicIps: {}, hostIps: { ci: '10.9.9.9' } }, base);
    expect(out.targets.map((t) => t.id)).toEqual(ids);
  });

  /** Cases whose answer turns on a part slimTask might have dropped. */
  const edges: [string, Task][] = [
    ['an ENI attachment with details but no address yet', fargateTask(0, { attachments: [{ type: 'ElasticNetworkInterface', details: [{ name: 'subnetId', value: 'subnet-1' }] }], containers: [] })],
    ['a detached ENI attachment', fargateTask(0, { attachments: [{ type: 'ElasticNetworkInterface', status: 'DETACHED', details: [{ name: 'privateIPv4Address', value: '10.0.0.9' }] }] })],
    ['an UNHEALTHY task', fargateTask(0, { healthStatus: 'UNHEALTHY' })],
    ['a HEALTHY task', fargateTask(0, { healthStatus: 'HEALTHY' })],
    ['a task being stopped', fargateTask(0, { desiredStatus: 'STOPPED' })],
    ['a bridge task', bridgeTask(1, 'ci', 32768)],
    ['a task with nothing to reach it by', { taskArn: 'a', lastStatus: 'RUNNING' }],
  ];
  test.each([...cases.map(([n, t]): [string, Task] => [n, t]), ...edges])('slimTask keeps what the transform reads: %s', (_name, task) => {
    for (const opts of [base, { ...base, port: 8080 }, { ...base, healthyTasksOnly: true }, { ...base, ipPreference: 'public' as const }]) {
      const records = (t: Task) => ({ tasks: [t], publicIps: { 'eni-0': '54.0.0.1' }, hostIps: { ci: '10.9.9.9' } });
      expect(transformEcs(records(slimTask(task)), opts)).toEqual(transformEcs(records(task), opts));
    }
  });

  test('slimTask drops what the transform does not read: a task as DescribeTasks gives it is a fraction of its size', () => {
    const full = fargateTask(7, {
      taskDefinitionArn: 'arn:aws:ecs:us-east-1:123456789012:task-definition/api:42',
      group: 'service:api',
      overrides: { containerOverrides: [{ name: 'app', environment: Array.from({ length: 20 }, (_, i) => ({ name: `VAR_${i}`, value: 'x'.repeat(40) })) }] },
      tags: Array.from({ length: 10 }, (_, i) => ({ key: `tag-${i}`, value: 'y'.repeat(40) })),
      containers: [{ name: 'app', image: 'x'.repeat(120), imageDigest: `sha256:${'0'.repeat(64)}`, lastStatus: 'RUNNING', networkInterfaces: [{ attachmentId: 'att-7', privateIpv4Address: '10.0.0.8' }] }],
    });
    const slim = slimTask(full);
    expect(JSON.stringify(slim).length).toBeLessThan(JSON.stringify(full).length / 4);
    expect(slim).not.toHaveProperty('overrides');
    expect(slim).not.toHaveProperty('tags');
  });

  test('IP_PREFERENCE=public: a public address the screen refuses falls back to the private one, not to nothing', () => {
    const out = transformEcs({ tasks: [fargateTask(0)], publicIps: { 'eni-0': '169.254.169.254' }, hostIps: {} }, { ...base, ipPreference: 'public' });
    expect(out.targets.map((t) => t.id)).toEqual(['10.0.0.1:80']);
    const ok = transformEcs({ tasks: [fargateTask(0)], publicIps: { 'eni-0': '54.0.0.1' }, hostIps: {} }, { ...base, ipPreference: 'public' });
    expect(ok.targets.map((t) => t.id)).toEqual(['54.0.0.1:80']);
  });

  test('IP_PREFERENCE=public with LOOPBACK_TARGETS: a local stand-in\'s loopback public address is the one used', () => {
    const records = { tasks: [fargateTask(0)], publicIps: { 'eni-0': '127.0.0.12' }, hostIps: {} };
    expect(transformEcs(records, { ...base, ipPreference: 'public' }).targets.map((t) => t.id)).toEqual(['10.0.0.1:80']);
    expect(transformEcs(records, { ...base, ipPreference: 'public', loopback: true }).targets.map((t) => t.id)).toEqual(['127.0.0.12:80']);
    // Link-local is refused whatever: the private address stands.
    const imds = { ...records, publicIps: { 'eni-0': '169.254.169.254' } };
    expect(transformEcs(imds, { ...base, ipPreference: 'public', loopback: true }).targets.map((t) => t.id)).toEqual(['10.0.0.1:80']);
  });

  test('the same address twice is one target', () => {
    const out = transformEcs({ tasks: [fargateTask(0), fargateTask(0, { taskArn: 'dup' })], publicIps: {}, hostIps: {} }, base);
    expect(out.targets).toHaveLength(1);
  });
});
