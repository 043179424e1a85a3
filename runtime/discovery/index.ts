/**
 * Picks the discovery provider of NODE_FILTER, builds its AWS clients (unless given) and, when
 * REDIS_URL is set, wraps it in a SharedProvider so the fleet shares one discovery per route and
 * period. `createProvider(config)` is all the wiring a worker needs; close() releases everything.
 */
import { createAutoScalingClient, createEc2Client, createEcsClient, type AwsClientOptions, type AwsClients } from '../aws';
import { createRedis, SharedProvider, type RedisClientOptions } from '../cache';
import type { Config } from '../config';
import type { Provider } from '../types';
import { AsgProvider } from './asg';
import { TagProvider } from './ec2';
import { EcsProvider } from './ecs';
import { StaticProvider } from './static';
import { ScreenedProvider } from './screen';

export { AsgProvider, inServiceInstanceIds, transformAsg } from './asg';
export { sortTargets, TagProvider, transformInstances, type SkipReason, type Skipped, type TransformResult } from './ec2';
export { EcsProvider, transformEcs, type EcsRecords, type EcsTransformOptions } from './ecs';
export { StaticProvider } from './static';

export type ProviderConfig = Pick<
  Config,
  'nodeFilter' | 'awsRegion' | 'tagName' | 'tagValue' | 'asgName' | 'targetPort' | 'healthyTasksOnly' | 'ipPreference' | 'staticTargets'
> &
  Partial<Pick<Config, 'allowedClusters' | 'redisUrl' | 'redisAuthSecretArn' | 'nodeCheckPeriodMs' | 'negativeCacheTtlMs' | 'loopbackTargets' | 'ecsCaseLookup' | 'port' | 'metricsPort'>>;

/**
 * How long one ECS service's tasks answer for all its ports: as long as the coordinator and Redis call
 * an answer fresh (0.9 of NODE_CHECK_PERIOD). Hosts naming a thousand ports of one real service cost one
 * fetch of it a period, not a thousand; each route knows its answer's age, and is refreshed a period after
 * the fetch it took. Records that give a port no target serve it a tenth of the period (2 s at most), so
 * that a service's first task is found by a new route as soon as without sharing; a fetch under way is
 * joined as briefly.
 */
export const SERVICE_SHARE_OF_PERIOD = 0.9;
export const BRIEF_SERVICE_SHARE_MAX_MS = 2000;

export interface CreateProviderOptions extends AwsClientOptions {
  /** Options of the Redis client when REDIS_URL is set. */
  readonly redis?: RedisClientOptions;
}

/**
 * The provider of `config.nodeFilter`, shared through Redis when `config.redisUrl` is set (static mode
 * has nothing to share). Clients not given are created (region from AWS_REGION, else the SDK chain)
 * and destroyed by close(); given clients stay the caller's. Never waits on Redis: the client connects
 * (and reads REDIS_AUTH_SECRET_ARN) in the background, and discovery goes straight to AWS until then.
 */
export function createProvider(
  config: ProviderConfig,
  clients: Partial<AwsClients> = {},
  options: CreateProviderOptions = {},
): Provider {
  const inner = createBaseProvider(config, clients, options);
  if (config.nodeFilter === 'static') return inner;
  const loopback = config.loopbackTargets ?? false;
  // The proxy's own ports on this machine's addresses are the proxy itself (its metrics, or a loop).
  const ownPorts = [config.port, config.metricsPort].filter((p): p is number => typeof p === 'number' && p > 0);
  if (!config.redisUrl) return new ScreenedProvider(inner, loopback, ownPorts);
  const connecting = new AbortController();
  const redis = createRedis(
    { redisUrl: config.redisUrl, redisAuthSecretArn: config.redisAuthSecretArn, awsRegion: config.awsRegion },
    { ...options.redis, signal: connecting.signal },
  );
  // Screened outside the sharing: what comes from Redis is checked as what comes from AWS.
  const periodMs = config.nodeCheckPeriodMs ?? (config.nodeFilter === 'ecs' ? 30_000 : 10_000);
  // Fresh as long as the coordinator keeps an answer (0.9 of the period; of NEGATIVE_CACHE_TTL when empty).
  const shared = new SharedProvider(inner, redis, {
    periodMs,
    connecting,
    ...(config.awsRegion ? { region: config.awsRegion } : {}),
    ...(config.negativeCacheTtlMs !== undefined ? { emptyFreshMs: 0.9 * config.negativeCacheTtlMs } : {}),
  });
  return new ScreenedProvider(shared, loopback, ownPorts);
}

/** The provider of `config.nodeFilter` alone, without Redis sharing. */
export function createBaseProvider(
  config: ProviderConfig,
  clients: Partial<AwsClients> = {},
  clientOptions: AwsClientOptions = {},
): Provider {
  const { redis: _redis, ...awsOptions } = clientOptions as CreateProviderOptions;
  const opts: AwsClientOptions = { region: config.awsRegion, ...awsOptions };
  const owned: { destroy(): void }[] = [];
  const make = <T extends { destroy(): void }>(given: T | undefined, create: (o: AwsClientOptions) => T): T => {
    if (given) return given;
    const c = create(opts);
    owned.push(c);
    return c;
  };
  switch (config.nodeFilter) {
    case 'static':
      return new StaticProvider(config.staticTargets);
    case 'tag':
      return new TagProvider({
        ec2: make(clients.ec2, createEc2Client),
        tagName: config.tagName,
        tagValue: config.tagValue,
        targetPort: config.targetPort,
        ownedClients: owned,
      });
    case 'asg':
      return new AsgProvider({
        autoScaling: make(clients.autoScaling, createAutoScalingClient),
        ec2: make(clients.ec2, createEc2Client),
        asgName: config.asgName,
        targetPort: config.targetPort,
        ownedClients: owned,
      });
    case 'ecs':
      return new EcsProvider({
        ecs: make(clients.ecs, createEcsClient),
        ec2: make(clients.ec2, createEc2Client),
        healthyTasksOnly: config.healthyTasksOnly,
        ipPreference: config.ipPreference,
        loopback: config.loopbackTargets,
        caseLookup: config.ecsCaseLookup,
        clusterNames: config.allowedClusters,
        ...(config.nodeCheckPeriodMs === undefined
          ? {}
          : { serviceShareMs: SERVICE_SHARE_OF_PERIOD * config.nodeCheckPeriodMs, briefShareMs: Math.min(config.nodeCheckPeriodMs / 10, BRIEF_SERVICE_SHARE_MAX_MS) }),
        ownedClients: owned,
      });
  }
}
