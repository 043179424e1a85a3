/**
 * The deployable stack: a KarmaProxy with an imported hosted zone and, optionally, an imported VPC,
 * both from plain attributes so that synth never looks anything up. Outputs the wildcard name, the
 * addresses and the monthly cost estimate.
 */
import { Annotations, CfnOutput, Fn, Stack, StackProps, Token } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as route53 from 'aws-cdk-lib/aws-route53';
import { Construct } from 'constructs';
import { EXAMPLE_CONTEXT, hostedZoneIdProblem, withoutZonePrefix } from './context';
import { formatCostSummary } from './cost';
import { InvalidPropsError, KarmaProxy, KarmaProxyProps } from './karma-proxy';

/** Props of KarmaProxyStack: the construct's, with the VPC and the hosted zone as plain IDs (no lookup). */
export interface KarmaProxyStackProps extends StackProps, Omit<KarmaProxyProps, 'vpc' | 'hostedZone'> {
  /** Route53 hosted zone that receives `*.<domain>`.
   * @default no DNS record; example values (a warning) when there is no domain either and discovery is ecs */
  readonly hostedZoneId?: string;
  /** Name of that zone. Only used to build and check the record name; without `domain`, the domain
   * (the record is then `*.<zone name>`, as with the app's context).
   * @default the domain itself (the record is then `*.<domain>` whatever the zone's apex is) */
  readonly hostedZoneName?: string;
  /** An existing VPC, imported from attributes (no lookup): needs `publicSubnetIds`, and
   * `isolatedSubnetIds` (or `privateSubnetIds`) when redis is on.
   * @default a new VPC */
  readonly vpcId?: string;
  /** Public subnets of `vpcId`, for the proxy.
   * @default none (required with vpcId) */
  readonly publicSubnetIds?: string[];
  /** Isolated subnets of `vpcId`, for the cache.
   * @default none */
  readonly isolatedSubnetIds?: string[];
  /** Private subnets (with egress) of `vpcId`, for the cache when there are no isolated ones.
   * @default none */
  readonly privateSubnetIds?: string[];
  /** AZs of the subnets, in the same order: each subnet list has one subnet per AZ (or whole rounds of them).
   * @default the region's first AZs, one per public subnet */
  readonly availabilityZones?: string[];
}

/** What `cdk deploy` deploys: a KarmaProxy, its hosted zone and VPC imported from IDs (or a new VPC), and outputs. */
export class KarmaProxyStack extends Stack {
  /** The proxy fleet of this stack. */
  public readonly proxy: KarmaProxy;
  /** True when neither a domain nor a hosted zone was given and example values stand in for them. */
  public readonly usesExampleValues: boolean;

  constructor(scope: Construct, id: string, props: KarmaProxyStackProps = {}) {
    super(scope, id, {
      description: 'Karma Proxy: a Graviton instance that load-balances HTTP to ECS services and EC2 pools, instead of an ALB',
      ...props,
    });

    const problems: string[] = [];
    let vpc: ec2.IVpc | undefined;
    if (props.vpcId) {
      const pub = props.publicSubnetIds ?? [];
      if (pub.length === 0) problems.push('vpcId needs publicSubnetIds (the proxy runs in public subnets)');
      const cacheSubnets = (props.isolatedSubnetIds?.length ?? 0) + (props.privateSubnetIds?.length ?? 0);
      // Not for a static pool: redis there is refused by the construct, whose message says why.
      if (KarmaProxy.redisByDefault(props.discovery) && (props.redis ?? true) && cacheSubnets === 0) {
        problems.push('vpcId needs isolatedSubnetIds or privateSubnetIds for the cache (or redis: false)');
      }
      // Vpc.fromVpcAttributes deals each list out over the AZs in turn; a list that does not fill whole
      // rounds fails there, in words that name neither the setting nor the fix.
      const givenAzs = props.availabilityZones?.length ? props.availabilityZones : undefined;
      const azCount = givenAzs?.length ?? pub.length;
      const azs = givenAzs
        ? `the ${azCount} availabilityZones`
        : `${azCount} AZs (one per publicSubnetIds entry, as availabilityZones is not set)`;
      for (const [name, ids] of [['publicSubnetIds', pub], ['isolatedSubnetIds', props.isolatedSubnetIds ?? []],
        ['privateSubnetIds', props.privateSubnetIds ?? []]] as const) {
        if (azCount > 0 && ids.length % azCount !== 0) {
          problems.push(`${name} lists ${ids.length} subnet${ids.length === 1 ? '' : 's'} for ${azs}: give one ` +
            `subnet per AZ, in the order of the AZs${givenAzs ? '' : ', or set availabilityZones'}`);
        }
      }
      if (problems.length === 0) {
        // Imported subnets without route table ids warn that reading one gives undefined; nothing here
        // reads them (the proxy and the cache need subnet ids alone), and the warning fails `cdk synth --strict`.
        Annotations.of(this).acknowledgeWarning('@aws-cdk/aws-ec2:noSubnetRouteTableId',
          'The proxy and the cache need subnet ids alone: no route table is read.');
        vpc = ec2.Vpc.fromVpcAttributes(this, 'Vpc', {
          vpcId: props.vpcId,
          availabilityZones: givenAzs ?? pub.map((_, i) => Fn.select(i, Fn.getAzs())),
          publicSubnetIds: pub,
          isolatedSubnetIds: props.isolatedSubnetIds?.length ? props.isolatedSubnetIds : undefined,
          privateSubnetIds: props.privateSubnetIds?.length ? props.privateSubnetIds : undefined,
        });
      }
    } else {
      if (props.publicSubnetIds || props.isolatedSubnetIds || props.privateSubnetIds) {
        problems.push('publicSubnetIds, isolatedSubnetIds and privateSubnetIds need vpcId');
      }
      if (props.availabilityZones?.length) problems.push('availabilityZones needs vpcId (they are the AZs of its subnets)');
    }
    if (props.hostedZoneName && !props.hostedZoneId) problems.push('hostedZoneName needs hostedZoneId');
    // Taken and checked as the app takes and checks its context (a token is the deployer's to get right).
    const literalZoneId = props.hostedZoneId !== undefined && !Token.isUnresolved(props.hostedZoneId) ? withoutZonePrefix(props.hostedZoneId) : undefined;
    const zoneIdProblem = literalZoneId === undefined ? undefined : hostedZoneIdProblem(literalZoneId);
    if (zoneIdProblem) problems.push(zoneIdProblem);
    if (props.hostedZoneId && !props.domain && !props.hostedZoneName) problems.push('hostedZoneId needs domain or hostedZoneName');
    // With problems of its own, the stack still builds its proxy (in a VPC of its own) to learn the
    // construct's problems too: one error names them all.

    // Nothing to route by: synthesize anyway, with example values and a warning (a deploy would fail at the record).
    let { domain, hostedZoneName } = props;
    let hostedZoneId = literalZoneId ?? props.hostedZoneId;
    // The record is then *.<zone name>, as with the app's context.
    if (!domain && hostedZoneId && hostedZoneName) domain = hostedZoneName;
    // (A pool, asg, tag or static, serves every Host: without a domain it is reached on its addresses.)
    this.usesExampleValues = !domain && !hostedZoneId && (props.discovery ?? 'ecs') === 'ecs';
    if (this.usesExampleValues) {
      ({ domain, hostedZoneId, hostedZoneName } = EXAMPLE_CONTEXT);
      Annotations.of(this).addWarningV2('karma-proxy:example-values',
        `No domain and no hostedZoneId: using example values (domain ${domain}, zone ${hostedZoneId} ${hostedZoneName}). ` +
        'Give your own before deploying.');
    }

    // A zone with neither name nor domain is named above; the construct is not told of it again.
    const hostedZone = hostedZoneId && (hostedZoneName || domain)
      ? route53.HostedZone.fromHostedZoneAttributes(this, 'Zone', {
        hostedZoneId,
        zoneName: (hostedZoneName || domain)!,
      })
      : undefined;

    // A VPC refused above is not built: the proxy is built in one of its own, where the subnet choices
    // made for the one refused mean nothing.
    const subnets = props.vpcId && !vpc ? { vpcSubnets: undefined, cacheSubnets: undefined } : {};
    try {
      this.proxy = new KarmaProxy(this, 'Proxy', { ...props, domain, vpc, hostedZone, ...subnets });
    } catch (e) {
      if (problems.length === 0) throw e;
      problems.push(...(e instanceof InvalidPropsError ? e.problems : [(e as Error).message]));
    }
    if (problems.length > 0) throw new InvalidPropsError(`KarmaProxyStack props (${this.node.path})`, problems);

    if (this.proxy.wildcardDomainName) {
      new CfnOutput(this, 'WildcardDomain', {
        description: 'Routes: <service>-<port>-<cluster> under this wildcard',
        value: this.proxy.wildcardDomainName,
      });
    }
    new CfnOutput(this, 'Addresses', {
      description: 'Elastic IPs of the fleet, one per instance slot',
      value: Fn.join(',', this.proxy.addresses),
    });
    new CfnOutput(this, 'MonthlyCostEstimate', {
      description: 'What this stack costs per month, next to the floor of an ALB',
      value: formatCostSummary(this.proxy.costEstimate),
    });
    new CfnOutput(this, 'AutoScalingGroupName', {
      description: 'Find the instances: aws ssm start-session --target <instance id>',
      value: this.proxy.autoScalingGroup.autoScalingGroupName,
    });
    new CfnOutput(this, 'SecurityGroupId', {
      description: 'The proxy\'s security group: allow it in on your targets\' ports',
      value: this.proxy.securityGroup.securityGroupId,
    });
    if (this.proxy.cacheEndpoint) {
      new CfnOutput(this, 'CacheEndpoint', { value: this.proxy.cacheEndpoint });
    }
  }
}
