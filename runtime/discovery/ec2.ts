/**
 * EC2 pools by tag (`NODE_FILTER=tag`), and the EC2 pieces the other providers share: instances by
 * id, instances → targets, and the skip bookkeeping.
 *
 * Tag mode: DescribeInstances(tag:TAG_NAME=TAG_VALUE, instance-state-name=running), every page →
 * transformInstances → `privateIp:TARGET_PORT`. The transform checks the state again, so a stopped
 * instance never becomes a target whatever the API returned.
 */
import {
  DescribeInstancesCommand,
  EC2Client,
  paginateDescribeInstances,
  type DescribeInstancesCommandInput,
  type Instance,
  type Reservation,
} from '@aws-sdk/client-ec2';
import { inBatches, pages, send } from '../aws';
import { tasksSkipped } from '../metrics';
import { makeTarget, Provider, RouteKey, sortTargets, Target } from '../types';

/** Why a task or instance was left out. Label values of `tasksSkipped{reason}`. */
export type SkipReason =
  | 'not_running' // ECS lastStatus, or EC2 state, is not running
  | 'stopping' // ECS desiredStatus is STOPPED: SIGTERM has been or is about to be sent
  | 'unhealthy' // ECS healthStatus UNHEALTHY, or ASG HealthStatus Unhealthy (about to be replaced)
  | 'not_healthy' // HEALTHY_TASKS_ONLY and healthStatus is not HEALTHY (UNKNOWN: no health check)
  | 'no_address' // no IP to reach it by
  | 'no_binding' // bridge/host task without a TCP networkBinding for the port
  | 'no_host' // bridge/host task whose container instance's private IP is unknown
  | 'not_in_service' // ASG instance not InService (Pending, Terminating, Standby …)
  | 'not_found'; // DescribeTasks reported it missing (stopped and gone in between)

export type Skipped = Partial<Record<SkipReason, number>>;

export interface TransformResult {
  /** Sorted by id, no duplicates. */
  readonly targets: Target[];
  readonly skipped: Skipped;
}

/** Sorted by id (stable order for round-robin), de-duplicated. */
export { sortTargets };

/** Adds a transform's skipped counts to `tasksSkipped{reason}`. */
export function countSkipped(skipped: Skipped): void {
  for (const [reason, n] of Object.entries(skipped)) if (n) tasksSkipped.inc({ reason }, n);
}

/** Every instance of DescribeInstances' reservations. */
export function instancesOf(reservations: readonly Reservation[]): Instance[] {
  return reservations.flatMap((r) => r.Instances ?? []);
}

/**
 * Pure: reservations → instance id → private IP (the IPv6 address of an IPv6-only instance), for the
 * hosts of bridge and host mode tasks. Not an instance EC2 says is other than running (stopped, being
 * terminated): its tasks cannot answer, and its address (a stopped instance keeps it) would hold each
 * try for POOL_TIMEOUT.
 */
export function privateIpsById(reservations: readonly Reservation[]): Record<string, string> {
  const out: Record<string, string> = {};
  // An IPv6-only instance has its primary IPv6 address instead, as transformInstances reads it.
  for (const i of instancesOf(reservations)) {
    if (i.State?.Name !== undefined && i.State.Name !== 'running') continue;
    const ip = i.PrivateIpAddress || i.Ipv6Address;
    if (i.InstanceId && ip) out[i.InstanceId] = ip;
  }
  return out;
}

/** Pure: instances → `privateIp:port` targets; only running instances with an address. */
export function transformInstances(instances: readonly Instance[], port: number): TransformResult {
  const skipped: Skipped = {};
  const targets: Target[] = [];
  for (const i of instances) {
    // AWS always sends State; a record without one is not evidence of a stopped instance.
    const state = i.State?.Name;
    const reason: SkipReason | undefined =
      state !== undefined && state !== 'running' ? 'not_running' : !i.PrivateIpAddress && !i.Ipv6Address ? 'no_address' : undefined;
    if (reason) {
      skipped[reason] = (skipped[reason] ?? 0) + 1;
      continue;
    }
    targets.push(makeTarget((i.PrivateIpAddress || i.Ipv6Address) as string, port));
  }
  return { targets: sortTargets(targets), skipped };
}

/** Every page of DescribeInstances for `input` (Filters, not ids). */
export async function describeInstancesPaged(
  ec2: EC2Client,
  input: DescribeInstancesCommandInput,
  signal?: AbortSignal,
): Promise<Reservation[]> {
  const reservations: Reservation[] = [];
  const paginator = paginateDescribeInstances({ client: ec2, pageSize: 1000, stopOnSameToken: true }, input, ...(signal ? [{ abortSignal: signal }] : []));
  for await (const page of pages('DescribeInstances', input, paginator)) reservations.push(...(page.Reservations ?? []));
  return reservations;
}

/**
 * DescribeInstances by id in batches of 100 (ids cannot be combined with MaxResults, so no paging).
 * One unknown id fails a whole call with InvalidInstanceID.NotFound; only then the same ids go
 * through an `instance-id` filter, which ignores unknown ones.
 */
export async function describeInstancesById(ec2: EC2Client, ids: readonly string[], signal?: AbortSignal): Promise<Reservation[]> {
  const outs = await inBatches(ids, 100, async (batch) => {
    try {
      const out = await send<object, { Reservations?: Reservation[] }>(ec2, new DescribeInstancesCommand({ InstanceIds: batch }), signal);
      return out.Reservations ?? [];
    } catch (err) {
      if ((err as { name?: string }).name !== 'InvalidInstanceID.NotFound') throw err;
      return describeInstancesPaged(ec2, { Filters: [{ Name: 'instance-id', Values: batch }], MaxResults: 1000 }, signal);
    }
  });
  return outs.flat();
}

export interface TagProviderOptions {
  readonly ec2: EC2Client;
  readonly tagName: string;
  readonly tagValue: string;
  readonly targetPort: number;
  /** Clients made for this provider, destroyed by close(). @default none */
  readonly ownedClients?: readonly { destroy(): void }[];
}

/** The pool of running instances tagged TAG_NAME=TAG_VALUE. Every route is the pool. */
export class TagProvider implements Provider {
  readonly name = 'tag';
  readonly scope: string;

  constructor(private readonly opts: TagProviderOptions) {
    this.scope = `tag.${opts.tagName}=${opts.tagValue}.${opts.targetPort}`;
  }

  async discover(_route: RouteKey, signal?: AbortSignal): Promise<Target[]> {
    const instances = instancesOf(await this.fetch(signal));
    const { targets, skipped } = transformInstances(instances, this.opts.targetPort);
    countSkipped(skipped);
    return targets;
  }

  /** The I/O: reservations of running instances with the tag. */
  fetch(signal?: AbortSignal): Promise<Reservation[]> {
    return describeInstancesPaged(
      this.opts.ec2,
      {
        Filters: [
          { Name: `tag:${this.opts.tagName}`, Values: [this.opts.tagValue] },
          { Name: 'instance-state-name', Values: ['running'] },
        ],
        MaxResults: 1000,
      },
      signal,
    );
  }

  async close(): Promise<void> {
    for (const c of this.opts.ownedClients ?? []) c.destroy();
  }
}
