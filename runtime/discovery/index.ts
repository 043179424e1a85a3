/**
 * Picks the discovery provider of NODE_FILTER and builds its AWS clients (unless given).
 *
 * Wiring, for main:
 *   const provider = createProvider(config);                  // ecs | tag | asg | static
 *   const redis = await createRedis(config);                   // undefined without REDIS_URL
 *   const shared = redis ? new SharedProvider(provider, redis, { periodMs: config.nodeCheckPeriodMs }) : provider;
 */
import { createAutoScalingClient, createEc2Client, createEcsClient, type AwsClientOptions, type AwsClients } from '../aws';
import type { Config } from '../config';
import type { Provider } from '../types';
import { AsgProvider } from './asg';
import { TagProvider } from './ec2';
import { EcsProvider } from './ecs';
import { StaticProvider } from './static';

export { AsgProvider, inServiceInstanceIds, transformAsg } from './asg';
export { sortTargets, TagProvider, transformInstances, type SkipReason, type Skipped, type TransformResult } from './ec2';
export { EcsProvider, transformEcs, type EcsRecords, type EcsTransformOptions } from './ecs';
export { StaticProvider } from './static';

export type ProviderConfig = Pick<
  Config,
  'nodeFilter' | 'awsRegion' | 'tagName' | 'tagValue' | 'asgName' | 'targetPort' | 'healthyTasksOnly' | 'ipPreference' | 'staticTargets'
>;

/**
 * The provider of `config.nodeFilter`. Clients not given are created (region from AWS_REGION, else the
 * SDK chain) and destroyed by the provider's close(); given clients stay the caller's.
 */
export function createProvider(
  config: ProviderConfig,
  clients: Partial<AwsClients> = {},
  clientOptions: AwsClientOptions = {},
): Provider {
  const opts: AwsClientOptions = { region: config.awsRegion, ...clientOptions };
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
        ownedClients: owned,
      });
  }
}
