/**
 * EC2 pool of an Auto Scaling group (`NODE_FILTER=asg`).
 *
 * DescribeAutoScalingGroups(ASG_NAME) → the InService instance ids (not Pending, Terminating*,
 * Standby …) → DescribeInstances by those ids → transformInstances → `privateIp:TARGET_PORT`.
 * A missing or empty group is an empty pool and makes no DescribeInstances call: the stateless load
 * balancer sent an empty id list, which DescribeInstances answers with every instance of the region.
 */
import {
  AutoScalingClient,
  DescribeAutoScalingGroupsCommand,
  type AutoScalingGroup,
} from '@aws-sdk/client-auto-scaling';
import type { EC2Client, Reservation } from '@aws-sdk/client-ec2';
import { send } from '../aws';
import { log } from '../log';
import { Provider, RouteKey, Target } from '../types';
import { countSkipped, describeInstancesById, instancesOf, Skipped, transformInstances } from './ec2';

/**
 * Pure: the ids of the group's InService instances that the group holds healthy, sorted, and how many
 * others were left out. An instance the group marked Unhealthy (its EC2 or ELB check failed) stays
 * InService until it is replaced, or for good while ReplaceUnhealthy is suspended.
 */
export function inServiceInstanceIds(groups: readonly AutoScalingGroup[], name: string): { ids: string[]; skipped: Skipped } {
  // The call named one group; a group without a name in the answer can only be that one.
  const group = groups.find((g) => g.AutoScalingGroupName === name || g.AutoScalingGroupName === undefined);
  const ids = new Set<string>();
  const skipped: Skipped = {};
  for (const i of group?.Instances ?? []) {
    const reason = i.LifecycleState !== 'InService' || !i.InstanceId ? 'not_in_service' : i.HealthStatus === 'Unhealthy' ? 'unhealthy' : undefined;
    if (reason) skipped[reason] = (skipped[reason] ?? 0) + 1;
    else ids.add(i.InstanceId!);
  }
  return { ids: [...ids].sort(), skipped };
}

export interface AsgRecords {
  readonly groups: readonly AutoScalingGroup[];
  readonly reservations: readonly Reservation[];
}

/** Pure: ASG records → targets. Instances must be InService in the group and running in EC2. */
export function transformAsg(records: AsgRecords, name: string, port: number): { targets: Target[]; skipped: Skipped } {
  const inService = inServiceInstanceIds(records.groups, name);
  const wanted = new Set(inService.ids);
  const instances = instancesOf(records.reservations).filter((i) => i.InstanceId !== undefined && wanted.has(i.InstanceId));
  const out = transformInstances(instances, port);
  const skipped: Skipped = { ...inService.skipped };
  for (const [k, n] of Object.entries(out.skipped) as [keyof Skipped, number][]) skipped[k] = (skipped[k] ?? 0) + n;
  return { targets: out.targets, skipped };
}

export interface AsgProviderOptions {
  readonly autoScaling: AutoScalingClient;
  readonly ec2: EC2Client;
  readonly asgName: string;
  readonly targetPort: number;
  /** Clients made for this provider, destroyed by close(). @default none */
  readonly ownedClients?: readonly { destroy(): void }[];
}

export class AsgProvider implements Provider {
  readonly name = 'asg';
  readonly scope: string;

  constructor(private readonly opts: AsgProviderOptions) {
    this.scope = `asg.${opts.asgName}.${opts.targetPort}`;
  }

  /** Whether the group was missing at the last look: said once when that changes, not at every refresh. */
  private missing = false;

  async discover(_route: RouteKey, signal?: AbortSignal): Promise<Target[]> {
    const records = await this.fetch(signal);
    const missing = !records.groups.some((g) => g.AutoScalingGroupName === this.opts.asgName);
    if (missing !== this.missing) {
      this.missing = missing;
      if (missing) log('warn', 'the Auto Scaling group does not exist in this region: the pool is empty (check ASG_NAME and AWS_REGION)', { asgName: this.opts.asgName });
      else log('info', 'the Auto Scaling group exists again', { asgName: this.opts.asgName });
    }
    const { targets, skipped } = transformAsg(records, this.opts.asgName, this.opts.targetPort);
    countSkipped(skipped);
    return targets;
  }

  /** The I/O. No InService instance, no DescribeInstances call. */
  async fetch(signal?: AbortSignal): Promise<AsgRecords> {
    const out = await send<object, { AutoScalingGroups?: AutoScalingGroup[] }>(
      this.opts.autoScaling,
      new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: [this.opts.asgName] }),
      signal,
    );
    const groups = out.AutoScalingGroups ?? [];
    const { ids } = inServiceInstanceIds(groups, this.opts.asgName);
    if (ids.length === 0) return { groups, reservations: [] };
    return { groups, reservations: await describeInstancesById(this.opts.ec2, ids, signal) };
  }

  async close(): Promise<void> {
    for (const c of this.opts.ownedClients ?? []) c.destroy();
  }
}
