/**
 * ECS discovery: the RUNNING tasks of one service, as targets for one port.
 *
 * Fetch (I/O) then transform (pure), like Traefik's ECS provider:
 *   ListTasks(desiredStatus=RUNNING), every page → DescribeTasks by 100 → [public IPs: one
 *   DescribeNetworkInterfaces] → [bridge/host: DescribeContainerInstances + DescribeInstances, cached]
 *   → transformEcs(records) → targets.
 *
 * awsvpc tasks (Fargate, or EC2 with awsvpc) are reached at their ENI's IP on the port of the Host.
 * bridge/host tasks are reached at their container instance's private IP on the `hostPort` that the
 * container's `networkBindings` give for the Host's port (the container port), so dynamic host ports
 * work.
 */
import {
  DescribeContainerInstancesCommand,
  DescribeTasksCommand,
  ECSClient,
  ListTasksCommand,
  paginateListClusters,
  paginateListServices,
  paginateListTasks,
  type ContainerInstance,
  type ListClustersCommandInput,
  type ListServicesCommandInput,
  type ListTasksCommandInput,
  type NetworkBinding,
  type Task,
} from '@aws-sdk/client-ecs';
import {
  DescribeNetworkInterfacesCommand,
  EC2Client,
  paginateDescribeNetworkInterfaces,
  type DescribeNetworkInterfacesCommandInput,
  type NetworkInterface,
} from '@aws-sdk/client-ec2';
import { chunk, inBatches, isNotFound, pages, send } from '../aws';
import { errorFields, log } from '../log';
import type { IpPreference } from '../config';
import { Found, makeTarget, Provider, RouteKey, setRecent, Target } from '../types';
import {
  countSkipped,
  describeInstancesById,
  instancesOf,
  privateIpsById,
  sortTargets,
  type SkipReason,
  type Skipped,
  type TransformResult,
} from './ec2';
import { usableAddress, usablePort } from './screen';

/** How often HEALTHY_TASKS_ONLY leaving a service no task is said. */
const NONE_HEALTHY_SAID_EVERY_MS = 3_600_000;
/** How long a container instance that did not resolve to an address is left unasked (its tasks skipped meanwhile). */
const UNRESOLVED_HOST_TTL_MS = 60_000;

export type { SkipReason, Skipped, TransformResult };

/** What the fetch part returns: plain data, nothing live. */
export interface EcsRecords {
  /** DescribeTasks output, every batch concatenated. */
  readonly tasks: readonly Task[];
  /** Tasks DescribeTasks reported as failures (MISSING). */
  readonly missing?: number;
  /** ENI id → public IPv4, from DescribeNetworkInterfaces (only with IP_PREFERENCE=public). */
  readonly publicIps: Readonly<Record<string, string>>;
  /** Container instance ARN → its EC2 instance's private IP (bridge/host tasks). */
  readonly hostIps: Readonly<Record<string, string>>;
}

export interface EcsTransformOptions {
  /** The port of the Host: the target port (awsvpc) or the container port (bridge/host). */
  readonly port: number;
  readonly healthyTasksOnly: boolean;
  readonly ipPreference: IpPreference;
  /** A loopback public IP is usable (LOOPBACK_TARGETS: a local AWS stand-in). @default false */
  readonly loopback?: boolean;
}

/** The task's ENI (awsvpc network mode), from its attachment, else from its containers. */
export function eniOf(task: Task): { id?: string; privateIp?: string; ipv6?: string } | undefined {
  const att = (task.attachments ?? []).find(
    (a) => a.type === 'ElasticNetworkInterface' && (a.details ?? []).length > 0 &&
      !['DETACHING', 'DETACHED', 'DELETED', 'FAILED'].includes(a.status ?? ''),
  );
  const detail = (name: string) => att?.details?.find((d) => d.name === name)?.value || undefined;
  let privateIp = detail('privateIPv4Address');
  // ECS has spelled it both ways (the awsvpc ENI's `ipv6Address`; `privateIPv6Address` beside IPv4's).
  let ipv6 = detail('ipv6Address') ?? detail('privateIPv6Address');
  const id = detail('networkInterfaceId');
  if (!privateIp && !ipv6) {
    for (const c of task.containers ?? []) {
      for (const ni of c.networkInterfaces ?? []) {
        privateIp ||= ni.privateIpv4Address || undefined;
        ipv6 ||= ni.ipv6Address || undefined;
      }
    }
  }
  if (!att && !privateIp && !ipv6) return undefined;
  return { ...(id ? { id } : {}), ...(privateIp ? { privateIp } : {}), ...(ipv6 ? { ipv6 } : {}) };
}

/** Why a task must not get traffic regardless of its address, or undefined if it may. */
export function statusSkip(task: Task, healthyTasksOnly: boolean): SkipReason | undefined {
  if (task.lastStatus !== 'RUNNING') return 'not_running';
  if (task.desiredStatus !== undefined && task.desiredStatus !== 'RUNNING') return 'stopping';
  if (task.healthStatus === 'UNHEALTHY') return 'unhealthy';
  if (healthyTasksOnly && task.healthStatus !== 'HEALTHY') return 'not_healthy';
  return undefined;
}

/** `8000-8010` → [8000, 8010]. */
function range(text: string | undefined): [number, number] | undefined {
  const m = /^(\d+)-(\d+)$/.exec(text ?? '');
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

/** The host port a binding gives to `containerPort`, or undefined. */
function hostPortFor(b: NetworkBinding, containerPort: number): number | undefined {
  if (b.protocol !== undefined && b.protocol !== 'tcp') return undefined;
  if (b.containerPort === containerPort && typeof b.hostPort === 'number' && b.hostPort > 0) return b.hostPort;
  const cr = range(b.containerPortRange);
  const hr = range(b.hostPortRange);
  // Docker maps a port range onto the host range in order.
  if (cr && hr && containerPort >= cr[0] && containerPort <= cr[1] && cr[1] - cr[0] === hr[1] - hr[0]) {
    return hr[0] + (containerPort - cr[0]);
  }
  return undefined;
}

/**
 * The distinct host ports of the task's running containers for `containerPort` (bridge/host mode). A
 * container that exited in a task still running (one not essential) keeps its bindings in ECS's answer,
 * but Docker gave their host ports back: another container may have one now.
 */
export function hostPortsOf(task: Task, containerPort: number): number[] {
  const ports = new Set<number>();
  for (const c of task.containers ?? []) {
    if (c.lastStatus !== undefined && c.lastStatus !== 'RUNNING') continue;
    for (const b of c.networkBindings ?? []) {
      const p = hostPortFor(b, containerPort);
      // A broken answer's port (31001.5, 70000, a range mapped past 65535) is no binding.
      if (p !== undefined && usablePort(p)) ports.add(p);
    }
  }
  return [...ports].sort((a, b) => a - b);
}

/**
 * Pure: a task with only what transformEcs reads: its statuses, container instance and ENI attachments,
 * and its containers' statuses, bindings and addresses. A service's records serve its other ports for
 * most of a period (serviceShareMs), and DescribeTasks's tasks, whole (overrides, tags, containers'
 * images and digests, other attachments), are several KB each.
 */
export function slimTask(t: Task): Task {
  return {
    lastStatus: t.lastStatus,
    desiredStatus: t.desiredStatus,
    healthStatus: t.healthStatus,
    containerInstanceArn: t.containerInstanceArn,
    attachments: (t.attachments ?? []).filter((a) => a.type === 'ElasticNetworkInterface').map((a) => ({ type: a.type, status: a.status, details: a.details })),
    containers: (t.containers ?? []).map((c) => ({ lastStatus: c.lastStatus, networkBindings: c.networkBindings, networkInterfaces: c.networkInterfaces })),
  };
}

/** Tasks that pass the status filters. */
export function usableTasks(tasks: readonly Task[], healthyTasksOnly: boolean): Task[] {
  return tasks.filter((t) => statusSkip(t, healthyTasksOnly) === undefined);
}

/** ENI ids whose public IP is wanted (usable awsvpc tasks). */
export function eniIdsToResolve(tasks: readonly Task[], opts: Omit<EcsTransformOptions, 'port'>): string[] {
  if (opts.ipPreference !== 'public') return [];
  const ids = new Set<string>();
  for (const t of usableTasks(tasks, opts.healthyTasksOnly)) {
    const id = eniOf(t)?.id;
    if (id) ids.add(id);
  }
  return [...ids].sort();
}

/** Container instances whose private IP is needed (usable tasks without an ENI address). */
export function containerInstancesToResolve(tasks: readonly Task[], healthyTasksOnly: boolean): string[] {
  const arns = new Set<string>();
  for (const t of usableTasks(tasks, healthyTasksOnly)) {
    const eni = eniOf(t);
    if (!eni?.privateIp && !eni?.ipv6 && t.containerInstanceArn) arns.add(t.containerInstanceArn);
  }
  return [...arns].sort();
}

/** Pure: ECS records → targets for one port, and what was left out and why. */
export function transformEcs(records: EcsRecords, opts: EcsTransformOptions): TransformResult {
  const skipped: Skipped = {};
  const skip = (r: SkipReason) => {
    skipped[r] = (skipped[r] ?? 0) + 1;
  };
  if (records.missing) skipped.not_found = records.missing;
  const targets: Target[] = [];
  for (const task of records.tasks) {
    const why = statusSkip(task, opts.healthyTasksOnly);
    if (why) {
      skip(why);
      continue;
    }
    const eni = eniOf(task);
    if (eni?.privateIp || eni?.ipv6) {
      const pub = opts.ipPreference === 'public' && eni.id ? records.publicIps[eni.id] : undefined;
      // A public address the screen would refuse (an odd or hostile answer) falls back to the private one.
      const usablePub = pub && usableAddress(pub, opts.loopback) ? pub : undefined;
      targets.push(makeTarget((usablePub || eni.privateIp || eni.ipv6) as string, opts.port));
      continue;
    }
    if (eni || !task.containerInstanceArn) {
      // An awsvpc task whose ENI has no IP yet, or a task with nothing to reach it by.
      skip('no_address');
      continue;
    }
    const hostPorts = hostPortsOf(task, opts.port);
    if (hostPorts.length === 0) {
      skip('no_binding');
      continue;
    }
    const hostIp = records.hostIps[task.containerInstanceArn];
    if (!hostIp) {
      skip('no_host');
      continue;
    }
    for (const p of hostPorts) targets.push(makeTarget(hostIp, p));
  }
  return { targets: sortTargets(targets), skipped };
}

/**
 * Pure: the ECS name among `arns` (cluster or service ARNs; the name is the last path segment) that a
 * lower-cased Host name stands for. ECS names are case-sensitive, a Host is not: `MyStack-Api-1A2B`
 * (a CloudFormation-made name) is reached as `mystack-api-1a2b`. undefined when none matches, or when
 * several differ only in case (which one was meant cannot be told).
 */
export function nameFor(arns: readonly string[], lowerName: string): string | undefined {
  let found: string | undefined;
  for (const arn of arns) {
    if (typeof arn !== 'string') continue; // a broken answer's entry: the others still count
    const name = arn.slice(arn.lastIndexOf('/') + 1);
    if (name.toLowerCase() !== lowerName) continue;
    if (found !== undefined && found !== name) return undefined;
    found = name;
  }
  return found;
}

/** Pure: DescribeNetworkInterfaces output → ENI id → public IPv4. */
export function publicIpsByEni(enis: readonly NetworkInterface[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of enis) if (n.NetworkInterfaceId && n.Association?.PublicIp) out[n.NetworkInterfaceId] = n.Association.PublicIp;
  return out;
}

export interface EcsProviderOptions {
  readonly ecs: ECSClient;
  /** Needed for IP_PREFERENCE=public and for bridge/host tasks. */
  readonly ec2: EC2Client;
  readonly healthyTasksOnly?: boolean;
  readonly ipPreference?: IpPreference;
  /** Loopback addresses are usable (LOOPBACK_TARGETS): see EcsTransformOptions.loopback. @default false */
  readonly loopback?: boolean;
  /**
   * Look up cluster and service names that differ from the route's only in case (ListClusters,
   * ListServices). Off, a route is exactly the calls the seeds made, which a role written for them allows.
   * @default false
   */
  readonly caseLookup?: boolean;
  /**
   * Cluster names as configured (ALLOWED_CLUSTERS): a route's lower-case cluster is asked for by the
   * name spelled here, with or without caseLookup. A role limited to `MyStack-Cluster-1A2B` refuses a call
   * for `mystack-cluster-1a2b` (IAM compares ARNs case-sensitively) rather than answering "not found".
   * Two names that differ only in case are left to caseLookup. @default none
   */
  readonly clusterNames?: readonly string[];
  /** How long a container instance → private IP mapping is kept. @default 1 hour */
  readonly hostCacheTtlMs?: number;
  /** Most container instances remembered. @default 10000 */
  readonly hostCacheMax?: number;
  /**
   * How long one service's tasks serve the discoveries of all its routes (ports): Hosts naming ever new
   * ports of one real service must not each cost their own ListTasks and DescribeTasks, then again every
   * period while remembered. A route that takes another port's records is as old as they are, so its
   * next refresh comes with theirs, and a service's routes keep in step: one fetch a period, however many
   * ports are named. @default 0 (each discovery asks)
   */
  readonly serviceShareMs?: number;
  /**
   * How long records that give a port no target serve it (its own fetch follows: a service whose first
   * task is starting is found by a new route as soon as without sharing), and how long a fetch still
   * under way may be joined (it carries its first asker's deadline). @default serviceShareMs
   */
  readonly briefShareMs?: number;
  /** Clients made for this provider, destroyed by close(). @default none */
  readonly ownedClients?: readonly { destroy(): void }[];
}

/** One fetch of a service's records, shared by its ports (EcsProvider.discoverAged). */
interface ServiceRecords {
  /** When the fetch began: the age of every answer taken from it. */
  readonly at: number;
  readonly records: Promise<EcsRecords>;
  /** The ports whose routes took it: asking again, they fetch anew. */
  readonly ports: Set<number>;
  /** It has answered (or failed): joined, it costs no wait on another asker's deadline (briefShareMs). */
  settled: boolean;
}

/** How long a ListClusters or ListServices answer serves to find names that differ only in case. */
export const NAME_LISTING_TTL_MS = 60_000;

/** The ECS provider: one route = one (service, port, cluster). */
export class EcsProvider implements Provider {
  readonly name = 'ecs';
  /** Redis key part: results depend on these options, so proxies that differ must not share. */
  readonly scope: string;
  private readonly ecs: ECSClient;
  private readonly ec2: EC2Client;
  private readonly healthyTasksOnly: boolean;
  private readonly ipPreference: IpPreference;
  private readonly loopback: boolean;
  private readonly caseLookup: boolean;
  /** Without caseLookup, whether a route ECS does not know has been said (notFound). */
  private saidCaseHint = false;
  private readonly hostCacheTtlMs: number;
  private readonly hostCacheMax: number;
  /**
   * Container instance ARN → private IP of its EC2 instance (both never change for its life); undefined
   * for one that did not resolve (asked again a minute later at most).
   */
  private readonly hostCache = new Map<string, { ip: string | undefined; until: number }>();
  /** `cluster:<host name>` / `service:<cluster>/<host name>` → the ECS name of other case it stands for. */
  private readonly realNames = new Map<string, string>();
  /** Lower-case cluster name → the ECS name configured for it (clusterNames), when it is not lower case. */
  private readonly givenNames = new Map<string, string>();
  /** ListClusters ('account') and ListServices ('cluster:<name>') answers (undefined: failed), for realName(). */
  private readonly listings = new Map<string, { arns: readonly string[] | undefined; until: number }>();
  /** Listings being made: one at a time for each key. */
  private readonly listing = new Map<string, Promise<string[] | undefined>>();
  /** ENI ID → its public IP (undefined: none), from the last lookups: what stays known when one fails. */
  private readonly eniPublicIps = new Map<string, string | undefined>();
  /** When a failed ENI lookup was last logged (once a minute at most). */
  private eniFailureSaidAt = -Infinity;
  /** Lower-case names of ALLOWED_CLUSTERS: one of them missing is the operator's to know (a wrong region). */
  private readonly configuredClusters: ReadonlySet<string>;
  /** Configured clusters found missing, said once until they are found. */
  private readonly missingClusters = new Set<string>();
  /** `cluster/service` → when it was last said that HEALTHY_TASKS_ONLY left it no task (once an hour each). */
  private readonly noneHealthySaid = new Map<string, number>();
  /** `cluster/service` → its records being fetched or fetched, when the fetch began, and the ports that took them (serviceShareMs). */
  private readonly services = new Map<string, ServiceRecords>();

  constructor(private readonly opts: EcsProviderOptions) {
    this.ecs = opts.ecs;
    this.ec2 = opts.ec2;
    this.healthyTasksOnly = opts.healthyTasksOnly ?? false;
    this.ipPreference = opts.ipPreference ?? 'private';
    this.loopback = opts.loopback ?? false;
    this.hostCacheTtlMs = opts.hostCacheTtlMs ?? 3_600_000;
    this.hostCacheMax = opts.hostCacheMax ?? 10_000;
    this.caseLookup = opts.caseLookup ?? false;
    const spelled = new Map<string, Set<string>>();
    for (const name of opts.clusterNames ?? []) spelled.set(name.toLowerCase(), (spelled.get(name.toLowerCase()) ?? new Set()).add(name));
    for (const [lower, names] of spelled) if (names.size === 1 && !names.has(lower)) this.givenNames.set(lower, [...names][0]);
    this.configuredClusters = new Set(spelled.keys());
    // Results depend on these options: proxies that differ must not share them through Redis.
    this.scope = ['ecs', this.ipPreference, this.healthyTasksOnly ? 'healthy' : 'all', ...(this.caseLookup ? ['anycase'] : [])].join('.');
  }

  async discover(route: RouteKey, signal?: AbortSignal): Promise<Target[]> {
    return (await this.discoverAged(route, signal)).targets;
  }

  /**
   * A route's targets, from its service's records: fetched now, or by a discovery of another of its
   * ports begun less than serviceShareMs (and maxAgeMs) ago, then as old as that; when they give this
   * port no target, or are still being fetched, less than briefShareMs ago. A route asking again (its
   * next period, an early ask) never takes the records it had.
   */
  async discoverAged(route: RouteKey, signal?: AbortSignal, maxAgeMs = Infinity): Promise<Found> {
    if (route.service === '*') return { targets: [], ageMs: 0 };
    const shareMs = this.opts.serviceShareMs ?? 0;
    const briefMs = Math.min(shareMs, this.opts.briefShareMs ?? shareMs);
    const key = `${route.cluster}/${route.service}`;
    const now = Date.now();
    // Records past their use go (the map is in the order fetches began): a service's tasks are not kept
    // beyond serviceShareMs.
    for (const [k, v] of this.services) {
      if (now - v.at < shareMs) break;
      this.services.delete(k);
    }
    let shared = this.services.get(key);
    let own = false;
    if (!shared || shared.ports.has(route.port) || now - shared.at >= Math.min(shared.settled ? shareMs : briefMs, maxAgeMs)) {
      own = true;
      // Others joining it share its first asker's deadline, for briefShareMs at most.
      const fetched: ServiceRecords = { at: now, records: this.fetch(route, signal), ports: new Set<number>(), settled: false };
      shared = fetched;
      if (shareMs > 0) setRecent(this.services, key, fetched, this.hostCacheMax);
      fetched.records.then(
        () => void (fetched.settled = true),
        // A failure is nobody's answer.
        () => (this.services.get(key) === fetched ? this.services.delete(key) : undefined),
      );
    }
    shared.ports.add(route.port);
    const records = await shared.records;
    const { targets, skipped } = transformEcs(records, {
      port: route.port,
      healthyTasksOnly: this.healthyTasksOnly,
      ipPreference: this.ipPreference,
      loopback: this.loopback,
    });
    // Another port's records that give this one nothing (no task running yet, none with an address, none
    // bound to this port) serve it briefly: a route taken as empty is absent for NEGATIVE_CACHE_TTL.
    // Asked again, its port is among those that took them: a fetch of its own.
    // Judged at the ask, not after the wait: every port that joined a slow fetch within briefShareMs of
    // its start takes its answer, rather than each fetching again in turn.
    if (!own && targets.length === 0 && now - shared.at >= briefMs) return this.discoverAged(route, signal, maxAgeMs);
    countSkipped(skipped);
    if (targets.length === 0 && skipped.not_healthy) this.sayNoneHealthy(key, route, skipped.not_healthy);
    // Its own fetch is a fresh answer (0 old, as any provider's); another port's is as old as it began.
    return { targets, ageMs: own ? 0 : Date.now() - shared.at };
  }

  /**
   * HEALTHY_TASKS_ONLY left a route no target because its running tasks are UNKNOWN: what a service
   * without a container health check reports, forever. Said (once an hour a service), not left to a 503
   * and a metric to explain.
   */
  private sayNoneHealthy(key: string, route: RouteKey, tasks: number): void {
    const now = Date.now();
    if (now - (this.noneHealthySaid.get(key) ?? -Infinity) < NONE_HEALTHY_SAID_EVERY_MS) return;
    setRecent(this.noneHealthySaid, key, now, this.hostCacheMax);
    log('warn', 'HEALTHY_TASKS_ONLY: no task of this service is HEALTHY, so its route has no target (a task definition without a container health check reports UNKNOWN for good)', {
      cluster: route.cluster,
      service: route.service,
      unknownTasks: tasks,
    });
  }

  /** The I/O: every record the transform needs for one route. */
  async fetch(route: RouteKey, signal?: AbortSignal): Promise<EcsRecords> {
    const empty: EcsRecords = { tasks: [], publicIps: {}, hostIps: {} };
    const listed = await this.listTaskArns(route, signal);
    if (listed === undefined || listed.arns.length === 0) return empty;
    const { cluster, arns } = listed;

    const described = await inBatches(arns, 100, (batch) =>
      send<object, { tasks?: Task[]; failures?: unknown[] }>(
        this.ecs,
        new DescribeTasksCommand({ cluster, tasks: batch }),
        signal,
      ),
    );
    const tasks = described.flatMap((d) => d.tasks ?? []);
    const missing = described.reduce((n, d) => n + (d.failures?.length ?? 0), 0);
    signal?.throwIfAborted();

    const [publicIps, hostIps] = await Promise.all([
      this.publicIps(eniIdsToResolve(tasks, { healthyTasksOnly: this.healthyTasksOnly, ipPreference: this.ipPreference }), signal),
      this.hostIps(cluster, containerInstancesToResolve(tasks, this.healthyTasksOnly), signal),
    ]);
    return { tasks: tasks.map(slimTask), missing, publicIps, hostIps };
  }

  /**
   * Every page of ListTasks, and the cluster's ECS name; undefined when the cluster or service does not
   * exist. A route's names are lower case (from the Host): with caseLookup, when ECS knows no such
   * cluster or service, the one that differs only in case is looked up (ListClusters, ListServices)
   * and remembered for as long as it is in use. Should that look-up fail (throttled, refused), a route
   * that had found its names fails (the route keeps its last targets); one that never had is empty.
   */
  private async listTaskArns(route: RouteKey, signal?: AbortSignal): Promise<{ cluster: string; arns: string[] } | undefined> {
    const clusterKey = `cluster:${route.cluster}`;
    let cluster = this.realNames.get(clusterKey) ?? this.givenNames.get(route.cluster) ?? route.cluster;
    let service = this.realNames.get(`service:${cluster}/${route.service}`) ?? route.service;
    for (;;) {
      try {
        const arns = await this.taskArnsOf(cluster, service, signal);
        this.missingClusters.delete(route.cluster);
        // Kept while in use, least recently used going first.
        if (cluster !== route.cluster) setRecent(this.realNames, clusterKey, cluster, this.hostCacheMax);
        if (service !== route.service) setRecent(this.realNames, `service:${cluster}/${route.service}`, service, this.hostCacheMax);
        return { cluster, arns };
      } catch (err) {
        if (!isNotFound(err)) throw err;
        const clusterGone = (err as { name?: string }).name === 'ClusterNotFoundException';
        // A cluster of ALLOWED_CLUSTERS is the one spelled there: another that differs only in case is
        // another cluster, which the allow-list does not name.
        if (!this.caseLookup || (clusterGone && this.configuredClusters.has(route.cluster))) return this.notFound(route, clusterGone);
        const real = clusterGone
          ? await this.realName({ cluster: undefined }, route.cluster)
          : await this.realName({ cluster }, route.service);
        signal?.throwIfAborted();
        if (real === null) {
          if (cluster !== route.cluster || service !== route.service) throw err;
          return this.notFound(route, clusterGone);
        }
        if (real === undefined || real === (clusterGone ? cluster : service)) return this.notFound(route, clusterGone);
        if (clusterGone) {
          cluster = real;
          service = this.realNames.get(`service:${cluster}/${route.service}`) ?? route.service;
        } else service = real;
      }
    }
  }

  /**
   * A route whose cluster or service ECS does not know is empty (a 503, remembered for
   * NEGATIVE_CACHE_TTL). A cluster of ALLOWED_CLUSTERS that does not exist is said, once until it is
   * found: it is configuration, most likely a wrong AWS_REGION or a typo, not a client's invention.
   */
  private notFound(route: RouteKey, clusterGone: boolean): undefined {
    // Without caseLookup, `MyCluster` is unreachable by any Host (lower-cased), and its 503s would say
    // nothing of why: said once, with the route that first met it (maybe a client's invention).
    // Not for a cluster of ALLOWED_CLUSTERS: it is asked for as spelled there, with or without the look-up.
    if (!this.caseLookup && !this.saidCaseHint && !(clusterGone && this.configuredClusters.has(route.cluster))) {
      this.saidCaseHint = true;
      log('warn', `ECS knows no ${clusterGone ? 'cluster' : 'service'} of a route, which is empty (a 503). A Host's names are lower case and ECS's are case-sensitive: ` +
        'for clusters or services with capitals set ECS_CASE_LOOKUP=true (the role must allow ecs:ListClusters and ecs:ListServices). Said once', {
        cluster: route.cluster, ...(clusterGone ? {} : { service: route.service }),
      });
    }
    if (clusterGone && this.configuredClusters.has(route.cluster) && !this.missingClusters.has(route.cluster)) {
      this.missingClusters.add(route.cluster);
      log('warn', 'an ECS cluster of ALLOWED_CLUSTERS does not exist in this region: its routes are empty (check ALLOWED_CLUSTERS and AWS_REGION)', {
        cluster: this.givenNames.get(route.cluster) ?? route.cluster,
      });
    }
    return undefined;
  }

  private async taskArnsOf(cluster: string, serviceName: string, signal?: AbortSignal): Promise<string[]> {
    const input: ListTasksCommandInput = { cluster, serviceName, desiredStatus: 'RUNNING', maxResults: 100 };
    const arns: string[] = [];
    const paginator = paginateListTasks({ client: this.ecs, pageSize: 100, stopOnSameToken: true }, input, ...(signal ? [{ abortSignal: signal }] : []));
    for await (const page of pages(apiOf(ListTasksCommand), input, paginator)) arns.push(...(page.taskArns ?? []));
    return [...new Set(arns)];
  }

  /**
   * The ECS name that `lowerName` stands for, among the account's clusters (`{ cluster: undefined }`)
   * or one cluster's services; null when the listing failed. A listing is kept NAME_LISTING_TTL_MS,
   * failed ones too, and made once however many discoveries want it at the same time: Hosts naming
   * nothing cost at most one listing per cluster per period.
   */
  private async realName(scope: { cluster: string | undefined }, lowerName: string): Promise<string | undefined | null> {
    const listingKey = scope.cluster === undefined ? 'account' : `cluster:${scope.cluster}`;
    const cached = this.listings.get(listingKey);
    let arns: readonly string[] | undefined;
    if (cached && cached.until > Date.now()) arns = cached.arns;
    else {
      let pending = this.listing.get(listingKey);
      if (!pending) {
        // Not bound to this discovery's signal: the listing is shared, and the SDK's timeouts bound it.
        pending = this.list(scope.cluster).then((listed) => {
          this.listing.delete(listingKey);
          setRecent(this.listings, listingKey, { arns: listed, until: Date.now() + NAME_LISTING_TTL_MS }, this.hostCacheMax);
          return listed;
        });
        this.listing.set(listingKey, pending);
      }
      arns = await pending;
    }
    return arns === undefined ? null : nameFor(arns, lowerName);
  }

  /** Every cluster ARN of the account (cluster undefined), or every service ARN of a cluster; undefined when that fails. */
  private async list(cluster: string | undefined): Promise<string[] | undefined> {
    const arns: string[] = [];
    try {
      if (cluster === undefined) {
        const input: ListClustersCommandInput = { maxResults: 100 };
        const paginator = paginateListClusters({ client: this.ecs, pageSize: 100, stopOnSameToken: true }, input);
        for await (const page of pages('ListClusters', input, paginator)) arns.push(...(page?.clusterArns ?? []));
      } else {
        const input: ListServicesCommandInput = { cluster, maxResults: 100 };
        const paginator = paginateListServices({ client: this.ecs, pageSize: 100, stopOnSameToken: true }, input);
        for await (const page of pages('ListServices', input, paginator)) arns.push(...(page?.serviceArns ?? []));
      }
    } catch (err) {
      // The cluster gone: nothing to find in it. Refused (a role of the user's without these actions) or
      // throttled: said so, and kept as failed for the period.
      if (isNotFound(err)) return [];
      log('warn', 'cannot look up ECS names of another case', { cluster: cluster ?? '(all)', ...errorFields(err) });
      return undefined;
    }
    return arns;
  }

  /**
   * One DescribeNetworkInterfaces for every ENI (batches of 1000 beyond that); ENIs without a public
   * IP fall back to private in the transform. When the lookup fails (throttled: EC2's limits are the
   * account's; refused) and this process knows every ENI's public IP from earlier lookups, those stand
   * and the discovery goes on (tasks that left are dropped). With one it does not know, the discovery
   * fails, as before: a private address in their place may be unreachable (a proxy in another VPC), and
   * the answer would go to every proxy through Redis. A known route keeps its last targets then.
   */
  private async publicIps(eniIds: string[], signal?: AbortSignal): Promise<Record<string, string>> {
    if (eniIds.length === 0) return {};
    try {
      const batches = await inBatches(eniIds, 1000, (ids) => this.describeEnis(ids, signal));
      const found = publicIpsByEni(batches.flat());
      for (const id of eniIds) setRecent(this.eniPublicIps, id, found[id], this.hostCacheMax);
      return found;
    } catch (err) {
      if (signal?.aborted || !eniIds.every((id) => this.eniPublicIps.has(id))) throw err;
      const known: Record<string, string> = {};
      for (const id of eniIds) {
        const ip = this.eniPublicIps.get(id);
        if (ip !== undefined) known[id] = ip;
      }
      const now = Date.now();
      if (now - this.eniFailureSaidAt >= 60_000) {
        this.eniFailureSaidAt = now;
        log('warn', 'cannot look up the public IPs of tasks (DescribeNetworkInterfaces): those known from earlier lookups stand', { enis: eniIds.length, ...errorFields(err) });
      }
      return known;
    }
  }

  private async describeEnis(ids: string[], signal?: AbortSignal): Promise<NetworkInterface[]> {
    try {
      const out = await send<object, { NetworkInterfaces?: NetworkInterface[] }>(
        this.ec2,
        new DescribeNetworkInterfacesCommand({ NetworkInterfaceIds: ids }),
        signal,
      );
      return out.NetworkInterfaces ?? [];
    } catch (err) {
      // By id, one ENI deleted in between (its task just stopped) fails the whole call; a filter
      // ignores it. Only then, since filters take at most 200 values and need paging.
      if ((err as { name?: string }).name !== 'InvalidNetworkInterfaceID.NotFound') throw err;
      const enis: NetworkInterface[] = [];
      for (const values of chunk(ids, 200)) {
        const input: DescribeNetworkInterfacesCommandInput = { Filters: [{ Name: 'network-interface-id', Values: values }], MaxResults: 1000 };
        const paginator = paginateDescribeNetworkInterfaces({ client: this.ec2, pageSize: 1000, stopOnSameToken: true }, input, ...(signal ? [{ abortSignal: signal }] : []));
        for await (const page of pages('DescribeNetworkInterfaces', input, paginator)) enis.push(...(page.NetworkInterfaces ?? []));
      }
      return enis;
    }
  }

  /** Private IPs of container instances, from the cache or DescribeContainerInstances + DescribeInstances. */
  private async hostIps(cluster: string, arns: string[], signal?: AbortSignal): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    const now = Date.now();
    const unknown: string[] = [];
    for (const arn of arns) {
      const hit = this.hostCache.get(arn);
      if (hit && hit.until > now) {
        if (hit.ip !== undefined) out[arn] = hit.ip;
      } else unknown.push(arn);
    }
    if (unknown.length === 0) return out;

    const described = await inBatches(unknown, 100, (batch) =>
      send<object, { containerInstances?: ContainerInstance[] }>(
        this.ecs,
        new DescribeContainerInstancesCommand({ cluster, containerInstances: batch }),
        signal,
      ),
    );
    const instanceOf = new Map<string, string>();
    for (const ci of described.flatMap((d) => d.containerInstances ?? [])) {
      if (ci.containerInstanceArn && ci.ec2InstanceId) instanceOf.set(ci.containerInstanceArn, ci.ec2InstanceId);
    }
    const instanceIds = [...new Set(instanceOf.values())].sort();
    const reservations = instanceIds.length === 0 ? [] : await describeInstancesById(this.ec2, instanceIds, signal);
    const ips = privateIpsById(reservations);
    const seen = new Set(instancesOf(reservations).map((i) => i.InstanceId));
    for (const arn of unknown) {
      const id = instanceOf.get(arn);
      const ip = id === undefined ? undefined : ips[id];
      if (ip) {
        out[arn] = ip;
        this.remember(arn, ip, now);
      } else if (id === undefined || seen.has(id)) {
        // One that does not resolve (unknown to ECS, an instance without an address) is not asked for at
        // every refresh: its tasks are skipped (no_host) until it is asked again. An instance EC2 did not
        // return yet (just launched) is asked again at the next refresh.
        this.remember(arn, undefined, now);
      }
    }
    return out;
  }

  private remember(arn: string, ip: string | undefined, now: number): void {
    const ttl = ip === undefined ? Math.min(this.hostCacheTtlMs, UNRESOLVED_HOST_TTL_MS) : this.hostCacheTtlMs;
    setRecent(this.hostCache, arn, { ip, until: now + ttl }, this.hostCacheMax);
  }

  async close(): Promise<void> {
    for (const c of this.opts.ownedClients ?? []) c.destroy();
  }
}

function apiOf(ctor: { name: string }): string {
  return ctor.name.replace(/Command\d*$/, '');
}
