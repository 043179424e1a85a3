import { AutoScalingClient, DescribeAutoScalingGroupsCommand } from '@aws-sdk/client-auto-scaling';
import { DescribeInstancesCommand, EC2Client, type Instance } from '@aws-sdk/client-ec2';
import { mockClient } from 'aws-sdk-client-mock';
import { loadConfig } from '../../../runtime/config';
import {
  AsgProvider,
  createProvider,
  StaticProvider,
  TagProvider,
  transformAsg,
  transformInstances,
} from '../../../runtime/discovery';
import { makeTarget, POOL_ROUTE } from '../../../runtime/types';

const ec2Mock = mockClient(EC2Client);
const asgMock = mockClient(AutoScalingClient);

beforeEach(() => {
  ec2Mock.reset();
  asgMock.reset();
});
afterAll(() => {
  ec2Mock.restore();
  asgMock.restore();
});

const instance = (n: number, state = 'running', ip: string | null = `10.2.0.${n}`): Instance => ({
  InstanceId: `i-${n}`,
  State: { Name: state as 'running' },
  ...(ip ? { PrivateIpAddress: ip } : {}),
});

describe('tag mode', () => {
  const provider = () =>
    new TagProvider({ ec2: new EC2Client({ region: 'us-east-1' }), tagName: 'Role', tagValue: 'worker', targetPort: 30080 });

  test('running instances with the tag, every page, on TARGET_PORT', async () => {
    const seen: unknown[] = [];
    ec2Mock.on(DescribeInstancesCommand).callsFake((input: { NextToken?: string; Filters?: unknown }) => {
      seen.push({ token: input.NextToken, filters: input.Filters });
      return input.NextToken
        ? { Reservations: [{ Instances: [instance(3), instance(4, 'stopped')] }] }
        : { Reservations: [{ Instances: [instance(2), instance(1)] }], NextToken: 'next' };
    });

    const targets = await provider().discover(POOL_ROUTE);

    expect(targets.map((t) => t.id)).toEqual(['10.2.0.1:30080', '10.2.0.2:30080', '10.2.0.3:30080']);
    expect(seen).toEqual([
      {
        token: undefined,
        filters: [
          { Name: 'tag:Role', Values: ['worker'] },
          { Name: 'instance-state-name', Values: ['running'] },
        ],
      },
      { token: 'next', filters: expect.any(Array) },
    ]);
  });

  test('an instance without a private IP is skipped, not a crash', async () => {
    ec2Mock.on(DescribeInstancesCommand).resolves({ Reservations: [{ Instances: [instance(1), instance(2, 'running', null)] }] });
    await expect(provider().discover(POOL_ROUTE)).resolves.toEqual([makeTarget('10.2.0.1', 30080)]);
  });

  test('no instance: an empty pool', async () => {
    ec2Mock.on(DescribeInstancesCommand).resolves({ Reservations: [] });
    await expect(provider().discover(POOL_ROUTE)).resolves.toEqual([]);
  });

  test('an AWS failure throws', async () => {
    ec2Mock.on(DescribeInstancesCommand).rejects(Object.assign(new Error('Request limit exceeded.'), { name: 'RequestLimitExceeded' }));
    await expect(provider().discover(POOL_ROUTE)).rejects.toMatchObject({ name: 'RequestLimitExceeded' });
  });
});

describe('asg mode', () => {
  const provider = () =>
    new AsgProvider({
      autoScaling: new AutoScalingClient({ region: 'us-east-1' }),
      ec2: new EC2Client({ region: 'us-east-1' }),
      asgName: 'workers',
      targetPort: 30080,
    });

  test('only InService instances, looked up by id', async () => {
    asgMock.on(DescribeAutoScalingGroupsCommand).resolves({
      AutoScalingGroups: [
        {
          AutoScalingGroupName: 'workers',
          MinSize: 0,
          MaxSize: 10,
          DesiredCapacity: 6,
          DefaultCooldown: 300,
          AvailabilityZones: ['us-east-1a'],
          HealthCheckType: 'EC2',
          CreatedTime: new Date(0),
          Instances: [
            { InstanceId: 'i-1', LifecycleState: 'InService', HealthStatus: 'Healthy', AvailabilityZone: 'a', ProtectedFromScaleIn: false },
            { InstanceId: 'i-2', LifecycleState: 'Pending', HealthStatus: 'Healthy', AvailabilityZone: 'a', ProtectedFromScaleIn: false },
            { InstanceId: 'i-3', LifecycleState: 'Terminating', HealthStatus: 'Healthy', AvailabilityZone: 'a', ProtectedFromScaleIn: false },
            { InstanceId: 'i-4', LifecycleState: 'Standby', HealthStatus: 'Healthy', AvailabilityZone: 'a', ProtectedFromScaleIn: false },
            { InstanceId: 'i-5', LifecycleState: 'InService', HealthStatus: 'Healthy', AvailabilityZone: 'a', ProtectedFromScaleIn: false },
            { InstanceId: 'i-6', LifecycleState: 'Terminating:Wait', HealthStatus: 'Healthy', AvailabilityZone: 'a', ProtectedFromScaleIn: false },
          ],
        },
      ],
    });
    ec2Mock.on(DescribeInstancesCommand).resolves({ Reservations: [{ Instances: [instance(1), instance(5)] }] });

    const targets = await provider().discover(POOL_ROUTE);

    expect(targets.map((t) => t.id)).toEqual(['10.2.0.1:30080', '10.2.0.5:30080']);
    expect(asgMock.commandCalls(DescribeAutoScalingGroupsCommand)[0].args[0].input).toEqual({ AutoScalingGroupNames: ['workers'] });
    const calls = ec2Mock.commandCalls(DescribeInstancesCommand);
    expect(calls).toHaveLength(1);
    expect(calls[0].args[0].input.InstanceIds).toEqual(['i-1', 'i-5']);
  });

  test.each([
    ['a group with no instances', { AutoScalingGroups: [{ AutoScalingGroupName: 'workers', Instances: [] }] }],
    ['a missing group', { AutoScalingGroups: [] }],
    ['a group with only Pending instances', { AutoScalingGroups: [{ AutoScalingGroupName: 'workers', Instances: [{ InstanceId: 'i-9', LifecycleState: 'Pending' }] }] }],
  ])('%s is an empty pool and makes no DescribeInstances call', async (_name, answer) => {
    asgMock.on(DescribeAutoScalingGroupsCommand).resolves(answer as never);
    ec2Mock.on(DescribeInstancesCommand).resolves({ Reservations: [{ Instances: [instance(1), instance(2)] }] });
    await expect(provider().discover(POOL_ROUTE)).resolves.toEqual([]);
    expect(ec2Mock.commandCalls(DescribeInstancesCommand)).toHaveLength(0);
  });

  test('an instance terminated between the two calls is retried through a filter', async () => {
    asgMock.on(DescribeAutoScalingGroupsCommand).resolves({
      AutoScalingGroups: [{ AutoScalingGroupName: 'workers', Instances: [{ InstanceId: 'i-1', LifecycleState: 'InService' }, { InstanceId: 'i-2', LifecycleState: 'InService' }] }],
    } as never);
    ec2Mock
      .on(DescribeInstancesCommand)
      .rejectsOnce(Object.assign(new Error("The instance ID 'i-2' does not exist"), { name: 'InvalidInstanceID.NotFound' }))
      .resolves({ Reservations: [{ Instances: [instance(1)] }] });
    await expect(provider().discover(POOL_ROUTE)).resolves.toEqual([makeTarget('10.2.0.1', 30080)]);
    expect(ec2Mock.commandCalls(DescribeInstancesCommand)[1].args[0].input.Filters).toEqual([{ Name: 'instance-id', Values: ['i-1', 'i-2'] }]);
  });
});

describe('pure transforms', () => {
  test.each<[string, Instance[], string[]]>([
    ['running', [instance(1)], ['10.2.0.1:30080']],
    ['stopped, stopping, pending, terminated', ['stopped', 'stopping', 'pending', 'terminated'].map((s, i) => instance(i, s)), []],
    ['no IP', [instance(1, 'running', null)], []],
    ['sorted by id', [instance(9), instance(10)], ['10.2.0.10:30080', '10.2.0.9:30080']],
  ])('transformInstances: %s', (_name, instances, ids) => {
    expect(transformInstances(instances, 30080).targets.map((t) => t.id)).toEqual(ids);
  });

  test('transformAsg ignores instances that are not InService in the group', () => {
    const out = transformAsg(
      {
        groups: [{ AutoScalingGroupName: 'g', Instances: [{ InstanceId: 'i-1', LifecycleState: 'InService' }, { InstanceId: 'i-2', LifecycleState: 'Standby' }] }] as never,
        reservations: [{ Instances: [instance(1), instance(2)] }],
      },
      'g',
      80,
    );
    expect(out.targets.map((t) => t.id)).toEqual(['10.2.0.1:80']);
    expect(out.skipped).toEqual({ not_in_service: 1 });
  });

  test('transformAsg leaves out an InService instance the group marked Unhealthy (replaced soon, or never while ReplaceUnhealthy is suspended)', () => {
    const out = transformAsg(
      {
        groups: [
          {
            AutoScalingGroupName: 'g',
            Instances: [
              { InstanceId: 'i-1', LifecycleState: 'InService', HealthStatus: 'Healthy' },
              { InstanceId: 'i-2', LifecycleState: 'InService', HealthStatus: 'Unhealthy' },
              { InstanceId: 'i-3', LifecycleState: 'Terminating', HealthStatus: 'Unhealthy' },
            ],
          },
        ] as never,
        reservations: [{ Instances: [instance(1), instance(2), instance(3)] }],
      },
      'g',
      80,
    );
    expect(out.targets.map((t) => t.id)).toEqual(['10.2.0.1:80']);
    expect(out.skipped).toEqual({ unhealthy: 1, not_in_service: 1 });
  });

  test('transformAsg takes no instance record without an id: it cannot be the group’s', () => {
    const out = transformAsg(
      {
        groups: [{ AutoScalingGroupName: 'g', Instances: [{ InstanceId: 'i-1', LifecycleState: 'InService' }] }] as never,
        reservations: [{ Instances: [instance(1), { State: { Name: 'running' }, PrivateIpAddress: '10.9.9.9' }] }],
      },
      'g',
      80,
    );
    expect(out.targets.map((t) => t.id)).toEqual(['10.2.0.1:80']);
  });
});

describe('static mode and createProvider', () => {
  test('static targets, sorted', async () => {
    const p = new StaticProvider([makeTarget('10.0.0.2', 80), makeTarget('10.0.0.1', 80)]);
    await expect(p.discover(POOL_ROUTE)).resolves.toEqual([makeTarget('10.0.0.1', 80), makeTarget('10.0.0.2', 80)]);
  });

  test.each([
    ['static', { NODE_FILTER: 'static', STATIC_TARGETS: '10.0.0.1:80' }],
    ['tag', { NODE_FILTER: 'tag' }],
    ['asg', { NODE_FILTER: 'asg' }],
    ['ecs', { NODE_FILTER: 'ecs', DOMAIN: 'example.com' }],
  ])('NODE_FILTER=%s', async (name, env) => {
    const p = createProvider(loadConfig({ AWS_REGION: 'us-east-1', ...env }));
    expect(p.name).toBe(name);
    await p.close?.();
  });

  test('asg mode from config uses ASG_NAME and TARGET_PORT', async () => {
    asgMock.on(DescribeAutoScalingGroupsCommand).resolves({
      AutoScalingGroups: [{ AutoScalingGroupName: 'web', Instances: [{ InstanceId: 'i-1', LifecycleState: 'InService' }] }],
    } as never);
    ec2Mock.on(DescribeInstancesCommand).resolves({ Reservations: [{ Instances: [instance(1)] }] });
    const p = createProvider(loadConfig({ NODE_FILTER: 'asg', ASG_NAME: 'web', TARGET_PORT: '8081', AWS_REGION: 'us-east-1' }));
    await expect(p.discover(POOL_ROUTE)).resolves.toEqual([makeTarget('10.2.0.1', 8081)]);
    await p.close?.();
  });
});
