/**
 * KarmaProxy: a small Graviton fleet running the bundled proxy runtime in place of an Application Load
 * Balancer. It builds (or takes) the network, an optional ElastiCache Redis shared by the fleet, the
 * instance role, one Elastic IP per instance slot, and a wildcard DNS record listing those addresses.
 *
 * This file never imports runtime code: it knows the bundle's path and the runtime's env var names.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  Annotations,
  Arn,
  Aws,
  CfnElement,
  CfnResource,
  Duration,
  Lazy,
  Stack,
  Tags,
  Token,
  Validations,
} from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as elasticache from 'aws-cdk-lib/aws-elasticache';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as route53 from 'aws-cdk-lib/aws-route53';
import * as s3assets from 'aws-cdk-lib/aws-s3-assets';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct, IConstruct } from 'constructs';
import { groupsOf, isV6InstanceServices, isV6LinkLocal, isV6Loopback, mappedV4 } from '../runtime/address';
import { CLUSTER_ARN, CLUSTER_NAME, ConfigError, loadConfig, mistypedSettings } from '../runtime/config';
import { CostEstimate, PRICES, estimateMonthlyCost } from './cost';
import { INSTANCE_PATHS, renderBootstrap, renderEnvFile, renderUnit } from './user-data';

/** How the runtime finds its targets (the runtime's NODE_FILTER). */
export type DiscoveryMode = 'ecs' | 'asg' | 'tag' | 'static';

/** Active health checks of targets, ALB-like. Unset fields keep the runtime's defaults for the mode. */
export interface KarmaProxyHealthCheck {
  /** Path probed on each target; `'off'` disables active checks (HEALTH_CHECK_PATH).
   * @default '/' in ecs mode, '/ping' in pool modes */
  readonly path?: string;
  /** `'tcp'`: a check passes when a connection opens, for `MODE=tcp` pools that do not speak HTTP;
   * `'http'`: a GET of `path` (HEALTH_CHECK_PROTOCOL).
   * @default 'http' */
  readonly protocol?: 'http' | 'tcp';
  /** Time between two checks of a target (HEALTH_CHECK_PERIOD).
   * @default 30 seconds in ecs mode, 2 seconds in pool modes */
  readonly interval?: Duration;
  /** Time a check may take (HEALTH_CHECK_TIMEOUT).
   * @default 5 seconds in ecs mode, 2 seconds in pool modes */
  readonly timeout?: Duration;
  /** Passing checks that make an unhealthy target healthy (HEALTHY_THRESHOLD).
   * @default 5 in ecs mode, 2 in pool modes */
  readonly healthyThreshold?: number;
  /** Failing checks that make a healthy target unhealthy (UNHEALTHY_THRESHOLD).
   * @default 2 */
  readonly unhealthyThreshold?: number;
  /** Status codes that pass, e.g. `'200'`, `'200-399'`, `'200,204'` (HEALTH_CHECK_MATCHER).
   * @default '200-399' in ecs mode, '200' in pool modes */
  readonly healthyHttpCodes?: string;
}

/** Props of KarmaProxy. Each is optional, but ecs discovery (the default) needs `domain` or a named `hostedZone`. */
export interface KarmaProxyProps {
  // ---- network ----

  /** The VPC of the proxy (and of the cache). It needs public subnets (`publicSubnetIds` when imported with
   * `Vpc.fromVpcAttributes`); a VPC without them, or a selection below that matches none of its subnets,
   * fails at synth with the subnets the VPC has.
   * Give the VPC of your targets: from a new one, the proxy reaches awsvpc tasks only at public
   * addresses, and other targets only through peering you add; synth says so in a note.
   * @default a new VPC: 2 AZs, public subnets for the proxy, isolated subnets for the cache, no NAT gateway */
  readonly vpc?: ec2.IVpc;
  /** Where the instances run: public subnets only, for the Elastic IPs, packages and AWS APIs (no NAT).
   * @default the VPC's public subnets */
  readonly vpcSubnets?: ec2.SubnetSelection;
  /** Where the cache runs.
   * @default the VPC's isolated subnets, else its private subnets */
  readonly cacheSubnets?: ec2.SubnetSelection;
  /** The proxy's security group. The construct adds its ingress rules (80, 443, metrics) to it; it must
   * allow all outbound traffic (targets on their ports, AWS APIs, packages), and synth warns when it
   * does not (`KarmaProxy:SecurityGroupOutbound`) or takes no rules (`KarmaProxy:SecurityGroupImmutable`).
   * @default a new group with all outbound traffic allowed */
  readonly securityGroup?: ec2.ISecurityGroup;
  /** CIDRs (IPv4 or IPv6) allowed to reach ports 80 and 443. An empty list opens nothing: use `connections`.
   * @default ['0.0.0.0/0'] */
  readonly allowedCidrs?: string[];
  /** Who may scrape `/metrics` and read `/healthz` on `metricsPort`: your monitoring's CIDR or security
   * group. The internet is refused (0.0.0.0/0, ::/0, or any CIDR wider than a /8, IPv6 fc00::/7): /metrics names every route and target.
   * @default nobody from outside the instance */
  readonly metricsPeer?: ec2.IPeer;
  /** Port of `/metrics` and `/healthz` (METRICS_PORT).
   * @default 6970 */
  readonly metricsPort?: number;

  // ---- DNS ----

  /** Routes are `<service>-<port>-<cluster>.<domain>` (DOMAIN); the record is `*.<domain>`.
   * Needed in ecs mode; must be inside `hostedZone`.
   * @default the hosted zone's name when a zone is given, else none */
  readonly domain?: string;
  /** Zone that receives the wildcard A record. Import it with `HostedZone.fromHostedZoneAttributes`.
   * @default no record: point `*.<domain>` at `addresses` yourself */
  readonly hostedZone?: route53.IHostedZone;
  /** TTL of the wildcard record.
   * @default 60 seconds */
  readonly recordTtl?: Duration;

  // ---- fleet ----

  /** Instance type; must be ARM Graviton (arm64).
   * @default t4g.nano */
  readonly instanceType?: ec2.InstanceType;
  /** Instances running in steady state (one signal each at deploy).
   * @default 1 */
  readonly minCapacity?: number;
  /** Most instances, and the number of Elastic IPs (one per slot).
   * @default minCapacity */
  readonly maxCapacity?: number;
  /** Run on Spot (about a third of the price; an interrupted instance is replaced and reclaims its address).
   * @default false */
  readonly spot?: boolean;
  /** The instance role. The construct adds to it what the proxy needs: the discovery mode's reads, the
   * bundle, the cache secret, its addresses and cfn-signal. A role that takes no statements (imported
   * with `Role.fromRoleArn(..., { mutable: false })`, or from another account) gets none of them: synth
   * then warns (`KarmaProxy:RoleNotGranted`) with the actions to grant it yourself.
   *
   * Session Manager is not added to a role you give: who may open a shell on your instances is your
   * role's decision (it may hold AmazonSSMManagedInstanceCore already, or leave shells out on purpose),
   * and the proxy runs without it. To reach the instances as the README shows, grant the role
   * `KarmaProxy.SESSION_MANAGER_ACTIONS` on `*`.
   * @default a new role with exactly what the discovery mode, the bundle, the cache secret and the addresses need, plus SSM Session Manager */
  readonly role?: iam.IRole;
  /** Root volume (gp3, encrypted), GB.
   * @default 8 */
  readonly rootVolumeSize?: number;
  /** The image the instances boot: an Amazon Linux 2023 arm64 image (the boot script uses dnf, the
   * `nodejs22` package and the CloudFormation helper scripts). Pin one (`ec2.MachineImage.genericLinux`)
   * to replace instances only when you change it: the default is read from SSM at every deploy, so a
   * deploy after AWS publishes a new image replaces the fleet. Refused at synth when it tells that it
   * will not do: Windows, or an SSM parameter of AWS's (or a name of one's own) that says x86_64, or a
   * distribution other than Amazon Linux 2023.
   * @default the latest Amazon Linux 2023 arm64 image (SSM parameter, resolved by CloudFormation) */
  readonly machineImage?: ec2.IMachineImage;
  /** How long CloudFormation waits for an instance to boot, become healthy and claim its address: from
   * 5 minutes to 1 hour (a rolling update's pause may not be longer). The boot's wait for a free address
   * is what this leaves after 10 minutes (at least 1, at most 10).
   * @default 20 minutes */
  readonly signalTimeout?: Duration;
  /** Local path of the runtime bundle (a `.js` file), uploaded as an asset.
   * @default dist/karma-proxy.js of this package (`npm run build`) */
  readonly bundlePath?: string;

  // ---- cache ----

  /** An ElastiCache Redis that the fleet shares discovery through. `false`: each instance keeps its own state in memory.
   * With maxCapacity 1 it shares nothing (one instance's workers share through its primary): synth notes
   * it, and warns when `redis: true` is given. Static targets are not discovered: with `discovery: 'static'` there
   * is nothing to share, and `redis: true` is refused.
   * @default true, except with discovery 'static' */
  readonly redis?: boolean;
  /** Cache node type.
   * @default cache.t4g.micro */
  readonly redisNodeType?: string;

  // ---- runtime ----

  /** How targets are found (NODE_FILTER).
   * @default 'ecs' */
  readonly discovery?: DiscoveryMode;
  /** ECS clusters that may be routed to (ALLOWED_CLUSTERS), spelled as ECS spells them: the role can only read these, and ARNs are case-sensitive.
   * A cluster's name or its ARN (`cluster.clusterName` or `cluster.clusterArn`). Each is two ARNs in the role's
   * policy, which IAM bounds: about 30 fit beside 50 instance slots, 60 beside one (synth says when over).
   * @default any cluster */
  readonly clusters?: string[];
  /** Target ports that may be routed to: numbers or `'8000-8100'` ranges (ALLOWED_PORTS).
   * @default any port */
  readonly ports?: Array<number | string>;
  /** Auto Scaling group of the pool in asg mode (ASG_NAME).
   * @default the runtime's default, 'worker-nodes' */
  readonly asgName?: string;
  /** Tag key and value of the pool in tag mode (TAG_NAME, TAG_VALUE).
   * @default the runtime's defaults, 'Name' and 'worker-node' */
  readonly tagName?: string;
  /** Tag value of the pool in tag mode (TAG_VALUE), matched as an EC2 filter matches it: `*` and `?` are
   * wildcards, `\*` and `\?` literal.
   * @default the runtime's default, 'worker-node' */
  readonly tagValue?: string;
  /** The pool in static mode, `host:port` each (STATIC_TARGETS). Required in static mode.
   * @default none */
  readonly staticTargets?: string[];
  /** Port of the pool's instances in asg and tag modes (TARGET_PORT).
   * @default the runtime's default, 30080 */
  readonly targetPort?: number;
  /** Time between discovery refreshes (NODE_CHECK_PERIOD).
   * @default 30 seconds in ecs mode, 10 seconds in pool modes */
  readonly discoveryInterval?: Duration;
  /** Active health checks of targets.
   * @default the runtime's defaults for the mode */
  readonly healthCheck?: KarmaProxyHealthCheck;
  /** Time in-flight requests get after SIGTERM (SHUTDOWN_TIMEOUT); systemd waits 15 seconds longer.
   * @default 30 seconds */
  readonly shutdownTimeout?: Duration;
  /** Any runtime env var, written last to /etc/karma-proxy/env: it overrides what the props above set.
   * Not those the resources are wired for: PORT and HOST (port 80 on every address), AWS_REGION, a
   * METRICS_HOST other than 0.0.0.0, :: or 127.0.0.1, and NODE_FILTER, ALLOWED_CLUSTERS and DOMAIN unless
   * they agree with the props they come from; never AWS credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...).
   * @default none */
  readonly environment?: Record<string, string>;
}

const DNS_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$/;
const ENV_KEY = /^[A-Z_][A-Z0-9_]*$/;
const DISCOVERY_MODES: readonly DiscoveryMode[] = ['ecs', 'asg', 'tag', 'static'];
/** Env vars that would hand the SDK credentials other than the instance role's. */
const CREDENTIAL_VARS = [
  'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_SECURITY_TOKEN', 'AWS_PROFILE',
  'AWS_SHARED_CREDENTIALS_FILE', 'AWS_CONFIG_FILE', 'AWS_ROLE_ARN', 'AWS_WEB_IDENTITY_TOKEN_FILE',
  'AWS_CONTAINER_CREDENTIALS_FULL_URI', 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI', 'AWS_CONTAINER_AUTHORIZATION_TOKEN',
  'AWS_EC2_METADATA_DISABLED',
] as const;
/** How long the boot waits for /healthz. */
const HEALTH_WAIT_SECONDS = 300;
/** What the boot may take besides its two waits: swap, dnf, the bundle, the unit (a few minutes at worst). */
const BOOT_SECONDS = 300;
/**
 * The most instance slots: each is an Elastic IP (paid for, used or not) and an ARN in the role's
 * policy, whose size IAM bounds (ROLE_INLINE_POLICY_LIMIT; 50 slots take about half of it).
 */
const MAX_CAPACITY = 50;
/** Elastic IPs a region allows an account unless raised (one per instance slot here). */
const EIP_DEFAULT_QUOTA = 5;
/** Inbound rules per security group and IP version, by default (the quota can be raised). */
const SG_RULES_DEFAULT_QUOTA = 60;
/** IAM's bound on a role's inline policies together, in characters without whitespace (not adjustable). */
const ROLE_INLINE_POLICY_LIMIT = 10_240;
/** The most user data EC2 takes (before base64). */
const USER_DATA_LIMIT = 16 * 1024;
/** signalTimeout's bounds: a boot's own minimum, and CloudFormation's longest rolling-update pause (PT1H). */
const MIN_SIGNAL_SECONDS = 5 * 60;
const MAX_SIGNAL_SECONDS = 60 * 60;

/** What an instance needs of the CDK asset bucket: `aws s3 cp` of one object (HeadObject is GetObject's). */
const BUNDLE_READ_ACTIONS = ['s3:GetObject'];

const unresolved = (v: unknown): boolean => Token.isUnresolved(v);
const stripDot = (s: string): string => s.trim().toLowerCase().replace(/\.+$/, '');

/** Seconds as the runtime reads them: `30`, `0.5`; a duration of a deploy-time number of seconds, as its token. */
function seconds(d: Duration): string {
  try {
    return String(d.toMilliseconds() / 1000);
  } catch (err) {
    // Duration.seconds(parameter): CDK converts no token between units, but the seconds are the seconds.
    const s = d.toSeconds();
    if (unresolved(s)) return Token.asString(s);
    throw err;
  }
}

/** A number as the env file says it: a deploy-time one (a Number parameter) as its token, not as its encoding. */
function numberText(n: number): string {
  return unresolved(n) ? Token.asString(n) : String(n);
}

/** Loopback (127/8, ::1, localhost) or link-local (169.254/16, fe80::/10, and fd00:ec2::/32, IMDS over IPv6), however spelt. */
function isInstanceLocal(name: string): boolean {
  // A name with its root's dot (`localhost.`) is the same name.
  const host = name.endsWith('.') ? name.slice(0, -1) : name;
  if (host === 'localhost' || host.endsWith('.localhost') || host === '0.0.0.0') return true;
  // The metadata service's own names (instance-data, instance-data.ec2.internal).
  if (host === 'instance-data' || host.startsWith('instance-data.')) return true;
  const v4 = (h: string): boolean => /^(0*127|169\.0*254|0+)\./.test(h);
  // inet_aton, which resolves a target, reads 2852039166, 0xa9fea9fe and 0251.0376.0251.0376 as
  // 169.254.169.254, and so does the URL parser: judged on its dotted form.
  if (!host.includes(':')) return v4(host) || v4(dottedV4(host) ?? '');
  const g = groupsOf(host);
  if (g === undefined) return false;
  const v4Inside = mappedV4(g);
  if (v4Inside !== undefined) return v4(v4Inside);
  return g.every((x) => x === 0) || isV6Loopback(g) || isV6LinkLocal(g) || isV6InstanceServices(g);
}

/** An IPv4 address however spelt (decimal, hex, octal, shortened), as a dotted quad; undefined for a name. */
function dottedV4(host: string): string | undefined {
  if (!/^[0-9a-fx.]+$/i.test(host)) return undefined;
  try {
    const h = new URL(`http://${host}/`).hostname;
    return /^\d+\.\d+\.\d+\.\d+$/.test(h) ? h : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Why `s` is no CIDR a security group takes, or undefined: its shape, and for IPv4 the bits past its
 * prefix (`10.0.0.1/8` is most likely a slip for `10.0.0.1/32` or `10.0.0.0/8`; EC2 would widen it).
 */
function cidrProblem(s: string): string | undefined {
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(s);
  if (v4) {
    const octets = v4.slice(1, 5).map(Number);
    const prefix = Number(v4[5]);
    if (octets.some((o) => o > 255) || prefix > 32) return 'is not a CIDR';
    const address = octets.reduce((a, o) => a * 256 + o, 0);
    const size = 2 ** (32 - prefix);
    if (address % size !== 0) {
      const base = address - (address % size);
      const network = [24, 16, 8, 0].map((shift) => Math.floor(base / 2 ** shift) % 256).join('.');
      return `has bits set past its /${prefix} prefix: give ${network}/${prefix}, or ${octets.join('.')}/32 for one address`;
    }
    return undefined;
  }
  const v6 = /^([0-9a-fA-F:.]+)\/(\d{1,3})$/.exec(s);
  const groups = v6 && v6[1].includes(':') ? groupsOf(v6[1]) : undefined;
  const prefix = Number(v6?.[2]);
  if (!groups || prefix > 128) return 'is not a CIDR';
  // Bits past the prefix, group by group.
  const hostBits = groups.some((g, i) => (g & (0xffff >> Math.min(16, Math.max(0, prefix - i * 16)))) !== 0);
  return hostBits ? `has bits set past its /${prefix} prefix` : undefined;
}

/** An IPv6 CIDR in the one spelling Peer.ipv6 takes (lower case, no dotted IPv4 tail); a token as it is. */
export function canonicalV6Cidr(cidr: string): string {
  if (unresolved(cidr)) return cidr;
  const [address, prefix] = cidr.split('/');
  return `${new URL(`http://[${address}]/`).hostname.slice(1, -1)}/${prefix}`;
}

function isPortSpec(p: number | string): boolean {
  if (typeof p === 'number') return Number.isInteger(p) && p >= 1 && p <= 65535;
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(p.trim());
  if (!m) return false;
  const from = Number(m[1]);
  const to = Number(m[2] ?? m[1]);
  return from >= 1 && to <= 65535 && from <= to;
}

/**
 * A Graviton fleet running Karma Proxy, with its addresses, DNS, cache and permissions.
 *
 * ```ts
 * const proxy = new KarmaProxy(this, 'Proxy', { domain: 'apps.example.com', hostedZone });
 * service.connections.allowFrom(proxy, ec2.Port.tcp(8080));
 * ```
 */
export class KarmaProxy extends Construct implements ec2.IConnectable {
  /** Port the proxy listens on, on the instance. */
  public static readonly HTTP_PORT = 80;
  /** Opened now for the TLS listener to come. */
  public static readonly HTTPS_PORT = 443;
  /** Port of `/metrics` and `/healthz` unless `metricsPort` says otherwise (the runtime's METRICS_PORT default). */
  public static readonly DEFAULT_METRICS_PORT = 6970;
  /** Port of the cache, the only one its security group opens, to the proxy's group. */
  public static readonly REDIS_PORT = 6379;
  /** Instance type unless `instanceType` says otherwise: the cheapest Graviton. */
  public static readonly DEFAULT_INSTANCE_TYPE = 't4g.nano';
  /** Cache node type unless `redisNodeType` says otherwise. */
  public static readonly DEFAULT_REDIS_NODE_TYPE = 'cache.t4g.micro';
  /** Whether the fleet gets a cache unless `redis` says otherwise: it shares discovery, and static targets have none. */
  public static redisByDefault(discovery: DiscoveryMode = 'ecs'): boolean {
    return discovery !== 'static';
  }
  /** The bundle `npm run build` writes, used unless `bundlePath` says otherwise. */
  public static readonly DEFAULT_BUNDLE_PATH = path.join(__dirname, '..', 'dist', 'karma-proxy.js');
  /** Tag key marking the Elastic IPs (and instances) of one fleet. */
  public static readonly POOL_TAG_KEY = 'karma-proxy:pool';
  /** Tag key numbering a fleet's Elastic IPs, its slots, from 1 to maxCapacity. */
  public static readonly SLOT_TAG_KEY = 'karma-proxy:slot';
  /** The runtime's settings on the instance: exactly `runtimeEnvironment`. */
  public static readonly ENV_FILE = INSTANCE_PATHS.envFile;
  /** The bundle on the instance, run by the systemd unit. */
  public static readonly BUNDLE_FILE = INSTANCE_PATHS.bundle;
  /** systemd's LimitNOFILE: a socket to the client and one to the target per request. */
  public static readonly LIMIT_NOFILE = 65536;
  /** What the Session Manager agent calls (on `*`): the construct's own role has them, a role you give does not. */
  public static readonly SESSION_MANAGER_ACTIONS: readonly string[] = [
    'ssm:UpdateInstanceInformation', 'ssmmessages:CreateControlChannel', 'ssmmessages:CreateDataChannel',
    'ssmmessages:OpenControlChannel', 'ssmmessages:OpenDataChannel',
  ];

  /** The proxy's security group, default port 80: `service.connections.allowFrom(proxy, port)` lets it in. */
  public readonly connections: ec2.Connections;
  /** The VPC the fleet (and the cache) runs in: the `vpc` prop, or the one the construct made. */
  public readonly vpc: ec2.IVpc;
  /** The proxy's security group: the `securityGroup` prop, or the one the construct made. */
  public readonly securityGroup: ec2.ISecurityGroup;
  /** The instance role: the `role` prop, or the one the construct made. */
  public readonly role: iam.IRole;
  /** Launch template of the instances: Amazon Linux 2023 arm64, IMDSv2, encrypted gp3 root, the user data. */
  public readonly launchTemplate: ec2.LaunchTemplate;
  /** The fleet: minCapacity to maxCapacity instances, waiting on their boot signals, updated one at a time. */
  public readonly autoScalingGroup: autoscaling.AutoScalingGroup;
  /** The first-boot script: swap on small instances, Node.js, the bundle, the unit, health, address, signal. */
  public readonly userData: ec2.UserData;
  /** The runtime bundle as uploaded. */
  public readonly bundle: s3assets.Asset;
  /** One Elastic IP per instance slot (maxCapacity). */
  public readonly elasticIps: ec2.CfnEIP[];
  /** The public addresses of the fleet (tokens resolved at deploy). */
  public readonly addresses: string[];
  /** Value of the POOL_TAG_KEY tag on this fleet's addresses and instances: the stack's name and the
   * construct's address, so that no two fleets of an account share it. */
  public readonly poolId: string;
  /** `*.<domain>` when a domain is given. */
  public readonly wildcardDomainName?: string;
  /** The `*.<domain>` A record listing `addresses`, when a hosted zone and a domain are given. */
  public readonly wildcardRecord?: route53.ARecord;
  /** Primary endpoint address of the cache, when `redis` is on. */
  public readonly cacheEndpoint?: string;
  /** Port of the cache, when `redis` is on. */
  public readonly cachePort?: string;
  /** `rediss://<endpoint>:<port>` (no password: the token is in `cacheAuthSecret`). */
  public readonly redisUrl?: string;
  /** Secret whose SecretString is the cache's AUTH token. */
  public readonly cacheAuthSecret?: secretsmanager.ISecret;
  /** Security group of the cache: Redis from the proxy's group only. When `redis` is on. */
  public readonly cacheSecurityGroup?: ec2.ISecurityGroup;
  /** The cache: one encrypted Redis node with an AUTH token. When `redis` is on. */
  public readonly cacheReplicationGroup?: elasticache.CfnReplicationGroup;
  /** Exactly what is written to /etc/karma-proxy/env (values may be tokens). */
  public readonly runtimeEnvironment: Readonly<Record<string, string>>;
  /** Monthly cost of what this construct runs, with the ALB's floor beside it. */
  public readonly costEstimate: CostEstimate;
  /** Actions of the statements the role did not keep, for the RoleNotGranted warning. */
  private readonly droppedActions: string[] = [];
  /** Where the statements go and are acknowledged: the construct's role, or its policy on a given role. */
  private readonly permissions: iam.Role | iam.Policy | iam.IRole;

  constructor(scope: Construct, id: string, props: KarmaProxyProps = {}) {
    super(scope, id);

    const instanceType = props.instanceType ?? new ec2.InstanceType(KarmaProxy.DEFAULT_INSTANCE_TYPE);
    const minCapacity = props.minCapacity ?? 1;
    const maxCapacity = props.maxCapacity ?? Math.max(minCapacity, 1);
    const discovery = props.discovery ?? 'ecs';
    const useRedis = props.redis ?? KarmaProxy.redisByDefault(discovery);
    const redisNodeType = props.redisNodeType ?? KarmaProxy.DEFAULT_REDIS_NODE_TYPE;
    const metricsPort = props.metricsPort ?? KarmaProxy.DEFAULT_METRICS_PORT;
    const allowedCidrs = props.allowedCidrs ?? ['0.0.0.0/0'];
    const bundlePath = props.bundlePath ?? KarmaProxy.DEFAULT_BUNDLE_PATH;
    const rootVolumeSize = props.rootVolumeSize ?? 8;
    const shutdownTimeout = props.shutdownTimeout ?? Duration.seconds(30);
    const signalTimeout = props.signalTimeout ?? Duration.minutes(20);
    const recordTtl = props.recordTtl ?? Duration.seconds(60);
    // Without a domain, the zone's own name: the record is then *.<zone>.
    const domainInput = props.domain ?? (props.hostedZone ? tryZoneName(props.hostedZone) : undefined);
    const domain = domainInput === undefined || unresolved(domainInput) ? domainInput : stripDot(domainInput);
    const environment = props.environment ?? {};

    // ---- network ---- (the VPC before the checks: they test the subnet selections against it)
    this.vpc = props.vpc ?? new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      // The proxy sits in public subnets with its own addresses: a NAT gateway would cost ten times the instance.
      natGateways: 0,
      subnetConfiguration: [
        { name: 'Public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 },
        { name: 'Cache', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 },
      ],
      // Nothing uses the default group; restricting it would add a Lambda-backed custom resource.
      restrictDefaultSecurityGroup: false,
    });
    if (!props.vpc) {
      Validations.of(this.vpc).acknowledge({
        id: 'AwsSolutions-VPC7',
        reason: 'Flow logs cost more than the proxy itself; the proxy can log each request (LOG_CONNECTIONS).',
      });
    }

    const problems = this.validate(props, {
      instanceType, minCapacity, maxCapacity, discovery, redisNodeType, metricsPort, allowedCidrs,
      bundlePath, rootVolumeSize, shutdownTimeout, domain, environment, useRedis, vpc: this.vpc,
    });
    if (problems.length > 0) {
      // Said in the same error: what the proxy would refuse of `environment` (judged with stand-ins for
      // what the resources below would give), so that one synth names every problem.
      // Only environment's own settings, and none its checks above named already.
      const own = Object.keys(environment).filter((key) => ENV_KEY.test(key) && !problems.some((p) => p.includes(`environment.${key}`)));
      let refused: string[] = [];
      try {
        const preview = this.runtimeEnv(props, { discovery, metricsPort, shutdownTimeout, domain, environment },
          useRedis ? { url: DEPLOY_TIME_STAND_INS.REDIS_URL, secretArn: DEPLOY_TIME_STAND_INS.REDIS_AUTH_SECRET_ARN } : undefined);
        refused = runtimeRefusals(preview).filter((p) => names(p, own));
      } catch {
        // Props too broken to make their env (a string for a list, said above): judged once they are right.
      }
      throw new InvalidPropsError(`KarmaProxy props (${this.node.path})`, [...problems, ...refused.map(asEnvironment)]);
    }

    // environment may override these two: the metrics rule, the health probe and systemd's stop timeout follow it.
    const overridden = (key: string): string | undefined =>
      environment[key] !== undefined && !unresolved(environment[key]) ? environment[key].trim() : undefined;
    const effectiveMetricsPort = Number(overridden('METRICS_PORT') ?? metricsPort);
    const effectiveShutdownSeconds = Number(overridden('SHUTDOWN_TIMEOUT') ?? shutdownTimeout.toMilliseconds() / 1000);

    this.securityGroup = props.securityGroup ?? new ec2.SecurityGroup(this, 'SecurityGroup', {
      vpc: this.vpc,
      description: 'Karma Proxy: HTTP(S) from allowedCidrs; out to targets, AWS APIs and packages',
      allowAllOutbound: true,
    });
    for (const cidr of allowedCidrs) {
      const peer = cidr.includes(':') ? ec2.Peer.ipv6(canonicalV6Cidr(cidr)) : ec2.Peer.ipv4(cidr);
      this.securityGroup.addIngressRule(peer, ec2.Port.tcp(KarmaProxy.HTTP_PORT), `HTTP from ${cidr}`);
      this.securityGroup.addIngressRule(peer, ec2.Port.tcp(KarmaProxy.HTTPS_PORT), `HTTPS from ${cidr}`);
    }
    if (props.metricsPeer) {
      this.securityGroup.addIngressRule(props.metricsPeer, ec2.Port.tcp(effectiveMetricsPort), 'Karma Proxy metrics and health');
    }
    // The rules open IPv6, but the proxy listens where HOST says (0.0.0.0 unless told: IPv4 only) and
    // the record is an A record: said, rather than an opening nothing answers.
    const host = overridden('HOST');
    if (allowedCidrs.some((c) => !unresolved(c) && c.includes(':')) && host !== '::' && host !== '[::]') {
      Validations.of(this).addWarning('KarmaProxy:Ipv6NotServed',
        'allowedCidrs has IPv6 CIDRs, but the proxy listens on IPv4 only (HOST 0.0.0.0) and the wildcard record is an A record: ' +
        "for IPv6 clients set HOST to '::' in environment (proxyEnv in the app; it takes IPv4 too), give the instances IPv6 " +
        'addresses (their subnets) and add an AAAA record of your own.');
    }
    if (props.securityGroup) this.checkGivenSecurityGroup(props.securityGroup, allowedCidrs.length > 0);
    if (!props.securityGroup && allowedCidrs.some((c) => c.endsWith('/0'))) {
      Validations.of(this.securityGroup).acknowledge({
        id: 'AwsSolutions-EC23',
        reason: 'A public load balancer: ports 80 and 443 are open to allowedCidrs by design, and nothing else is.',
      });
    }
    this.connections = new ec2.Connections({
      securityGroups: [this.securityGroup],
      defaultPort: ec2.Port.tcp(KarmaProxy.HTTP_PORT),
    });

    // ---- identity ----
    const ownRole = !props.role;
    this.role = props.role ?? new iam.Role(this, 'Role', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: 'Karma Proxy instances: discovery reads, its bundle, its cache secret, its addresses, Session Manager',
    });
    // This construct's statements go in a policy of their own, where they are acknowledged for cdk-nag:
    // acknowledging on the role would hide the user's own findings, a given role's or what a user adds
    // to `role` later (its default policy). (Not on an immutable role: a policy would attach to it all
    // the same, which is what immutable forbids.)
    this.permissions = dropsStatements(this.role) ? this.role : new iam.Policy(this, 'RolePolicy', { roles: [this.role] });
    if (ownRole) {
      // Session Manager is the only way in (no SSH key, no open port). What its agent needs and no more:
      // AmazonSSMManagedInstanceCore would also let an internet-facing instance read every Parameter
      // Store value of the account (ssm:GetParameter* on *).
      this.grantToRole(new iam.PolicyStatement({
        sid: 'SessionManagerAgent',
        actions: [...KarmaProxy.SESSION_MANAGER_ACTIONS],
        resources: ['*'],
      }));
    }
    // Names, whether given as names or as ARNs: the IAM condition and ALLOWED_CLUSTERS are built from them.
    const clusters = this.allowedClusters(props, environment);
    this.addDiscoveryPermissions(discovery, clusters);

    // ---- bundle ----
    this.bundle = new s3assets.Asset(this, 'Bundle', { path: bundlePath });
    // GetObject alone (no listing, no bucket settings), on the asset bucket's objects of the bundle's kind
    // (`<hash>.js`), not only this bundle's key: an update that rolls back replaces instances while the
    // policy is still the new one, and they must fetch the previous bundle.
    const bundleObjects = this.bundle.bucket.arnForObjects('*.js');
    this.grantToRole(new iam.PolicyStatement({
      sid: 'ReadBundle',
      actions: [...BUNDLE_READ_ACTIONS],
      resources: [bundleObjects],
    }));
    Validations.of(this.permissions).acknowledge({
      id: `AwsSolutions-IAM5[Resource::${nagText(bundleObjects, this)}]`,
      reason: 'Instances download the bundle at boot, and those of a rolled-back update the previous one, whose key the policy cannot know: GetObject on the asset bucket\'s `*.js` objects (single-file JavaScript assets of this account and region: code, not data).',
    });

    // ---- cache ----
    if (useRedis) {
      const subnets = this.vpc.selectSubnets(props.cacheSubnets ?? this.defaultCacheSubnets());
      const cacheSg = new ec2.SecurityGroup(this, 'CacheSecurityGroup', {
        vpc: this.vpc,
        description: 'Karma Proxy cache: Redis from the proxy fleet only',
        allowAllOutbound: false,
      });
      // Through connections: an egress rule is added too when the proxy's group (one given) restricts egress.
      cacheSg.connections.allowFrom(this.connections, ec2.Port.tcp(KarmaProxy.REDIS_PORT), 'Redis from the Karma Proxy fleet');
      const secret = new secretsmanager.Secret(this, 'CacheAuthToken', {
        description: 'Karma Proxy: AUTH token of its Redis (the SecretString is the token)',
        generateSecretString: { passwordLength: 64, excludePunctuation: true, includeSpace: false },
      });
      Validations.of(secret).acknowledge({
        id: 'AwsSolutions-SMG4',
        reason: 'The token is read once at start by the runtime; rotating an ElastiCache AUTH token needs a coordinated ROTATE/SET update that this stack does not automate.',
      });
      const subnetGroup = new elasticache.CfnSubnetGroup(this, 'CacheSubnets', {
        description: 'Karma Proxy cache subnets',
        subnetIds: subnets.subnetIds,
      });
      const cache = new elasticache.CfnReplicationGroup(this, 'Cache', {
        replicationGroupDescription: 'Karma Proxy shared discovery cache',
        engine: 'redis',
        engineVersion: '7.1',
        cacheNodeType: redisNodeType,
        numCacheClusters: 1,
        automaticFailoverEnabled: false,
        multiAzEnabled: false,
        port: KarmaProxy.REDIS_PORT,
        cacheSubnetGroupName: subnetGroup.ref,
        securityGroupIds: [cacheSg.securityGroupId],
        transitEncryptionEnabled: true,
        transitEncryptionMode: 'required',
        atRestEncryptionEnabled: true,
        // A {{resolve:secretsmanager:...}} reference: the token itself is never in the template.
        authToken: secret.secretValue.unsafeUnwrap(),
      });
      Validations.of(cache).acknowledge({
        id: 'AwsSolutions-AEC4',
        reason: 'The cache only shares discovery results: when it is down each instance asks AWS itself, so a second node in another AZ would double its cost for nothing.',
      });
      Validations.of(cache).acknowledge({
        id: 'AwsSolutions-AEC5',
        reason: 'Only the proxy security group reaches the cache, over TLS with an AUTH token; a non-default port adds nothing to that.',
      });
      this.grantToRole(new iam.PolicyStatement({
        sid: 'ReadCacheAuthToken',
        actions: ['secretsmanager:GetSecretValue'],
        resources: [secret.secretArn],
      }));
      this.cacheSecurityGroup = cacheSg;
      this.cacheAuthSecret = secret;
      this.cacheReplicationGroup = cache;
      this.cacheEndpoint = cache.attrPrimaryEndPointAddress;
      this.cachePort = cache.attrPrimaryEndPointPort;
      this.redisUrl = `rediss://${this.cacheEndpoint}:${this.cachePort}`;
    }

    // ---- addresses ----
    // The stack's name and the construct's path: one app deployed twice in an account and region (a
    // staging and a production stack) has the same paths, and its fleets must not see each other's addresses.
    const stackName = Stack.of(this).stackName;
    this.poolId = unresolved(stackName) ? this.node.addr : `${stackName}.${this.node.addr}`;
    Tags.of(this).add(KarmaProxy.POOL_TAG_KEY, this.poolId);
    this.elasticIps = [];
    for (let slot = 0; slot < maxCapacity; slot++) {
      const eip = new ec2.CfnEIP(this, `Address${slot + 1}`, { domain: 'vpc' });
      Tags.of(eip).add(KarmaProxy.SLOT_TAG_KEY, String(slot + 1));
      this.elasticIps.push(eip);
    }
    this.addresses = this.elasticIps.map((eip) => eip.attrPublicIp);
    this.grantToRole(new iam.PolicyStatement({
      sid: 'FindFleetAddresses',
      actions: ['ec2:DescribeAddresses'],
      resources: ['*'],
    }));
    const stack = Stack.of(this);
    this.grantToRole(new iam.PolicyStatement({
      sid: 'ClaimFleetAddress',
      actions: ['ec2:AssociateAddress'],
      resources: this.elasticIps.map((eip) =>
        stack.formatArn({ service: 'ec2', resource: 'elastic-ip', resourceName: eip.attrAllocationId })),
    }));
    this.grantToRole(new iam.PolicyStatement({
      sid: 'ClaimAddressForFleetInstance',
      actions: ['ec2:AssociateAddress'],
      resources: [stack.formatArn({ service: 'ec2', resource: 'instance', resourceName: '*' })],
      conditions: { StringEquals: { [`aws:ResourceTag/${KarmaProxy.POOL_TAG_KEY}`]: this.poolId } },
    }));
    Validations.of(this.permissions).acknowledge({
      id: `AwsSolutions-IAM5[Resource::${nagText(stack.formatArn({ service: 'ec2', resource: 'instance', resourceName: '*' }), this)}]`,
      reason: 'An instance can only be named once it exists: AssociateAddress is limited to instances carrying this fleet\'s pool tag, and to this fleet\'s addresses.',
    });
    Validations.of(this.permissions).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason: 'Describe and List calls (ec2:DescribeAddresses, ec2:DescribeInstances, ec2:DescribeNetworkInterfaces, autoscaling:DescribeAutoScalingGroups, ecs:ListTasks, ecs:ListServices, and ecs:ListClusters where no clusters are given) and the Session Manager agent\'s ssmmessages channels support no resource-level permissions. ECS reads are limited to the allowed clusters when clusters are given; without clusters any cluster may be routed to, so ecs:DescribeTasks and ecs:DescribeContainerInstances are on every cluster too.',
    });

    // ---- runtime settings ----
    const env = this.runtimeEnv(props, { discovery, metricsPort, shutdownTimeout, domain, environment },
      this.redisUrl && this.cacheAuthSecret ? { url: this.redisUrl, secretArn: this.cacheAuthSecret.secretArn } : undefined);
    // A Redis of one's own (redis: false, environment.REDIS_URL) with its token in a secret of one's own:
    // the role may read that secret, as it reads the construct's.
    const ownSecret = environment.REDIS_AUTH_SECRET_ARN;
    if (ownSecret !== undefined && (!this.cacheAuthSecret || ownSecret !== this.cacheAuthSecret.secretArn)) {
      // A partial ARN (without the 6 characters Secrets Manager adds to the name) names the secret for
      // the runtime's GetSecretValue, but IAM matches the full ARN: both forms are granted.
      this.grantToRole(new iam.PolicyStatement({ sid: 'ReadRedisAuthToken', actions: ['secretsmanager:GetSecretValue'], resources: [ownSecret, `${ownSecret}-??????`] }));
    }
    this.runtimeEnvironment = Object.freeze({ ...env });
    // What the proxy itself would refuse at start fails the synth, not the boot (a deploy that times out
    // and rolls back): the runtime's own checks, on exactly what the env file will say.
    const refused = runtimeRefusals(this.runtimeEnvironment);
    if (refused.length > 0) {
      throw new InvalidPropsError(`KarmaProxy props (${this.node.path})`, refused.map(asEnvironment));
    }
    const albTimeout = albTimeoutProblem(props, this.runtimeEnvironment);
    if (albTimeout) throw new InvalidPropsError(`KarmaProxy props (${this.node.path})`, [albTimeout]);
    // A token read from a secret, then sent in the clear: ElastiCache itself takes an AUTH token only with TLS.
    const ownUrl = environment.REDIS_URL;
    if (ownSecret !== undefined && typeof ownUrl === 'string' && !Token.isUnresolved(ownUrl) && !/^rediss:\/\//i.test(ownUrl.trim())) {
      Validations.of(this).addWarning('KarmaProxy:PlaintextRedisAuth',
        `environment.REDIS_URL '${ownUrl}' is not rediss:// (TLS) while environment.REDIS_AUTH_SECRET_ARN is set: the AUTH token read ` +
        'from that secret would cross the network in the clear; use rediss:// with a Redis that has in-transit encryption on.');
    }
    // A mistyped setting is ignored by the proxy, which says so only in its journal: said here too.
    for (const { name, meant } of mistypedSettings(environment)) {
      Validations.of(this).addWarning('KarmaProxy:UnknownSetting',
        `environment.${name} is not a setting of the proxy and would be ignored; did you mean ${meant}?`);
    }


    // ---- fleet ----
    const signalResource = Lazy.string({
      produce: () => stack.getLogicalId(this.autoScalingGroup.node.defaultChild as CfnElement),
    });
    this.userData = ec2.UserData.custom(renderBootstrap({
      stackName: Aws.STACK_NAME,
      signalResource,
      region: Aws.REGION,
      bundleUrl: this.bundle.s3ObjectUrl,
      bundleSha256: crypto.createHash('sha256').update(fs.readFileSync(bundlePath)).digest('hex'),
      addressTagKey: KarmaProxy.POOL_TAG_KEY,
      addressTagValue: this.poolId,
      slotTagKey: KarmaProxy.SLOT_TAG_KEY,
      addressSlots: maxCapacity,
      healthUrl: `http://127.0.0.1:${effectiveMetricsPort}/healthz`,
      healthWaitSeconds: HEALTH_WAIT_SECONDS,
      // What the signal timeout leaves after the health wait and the rest of the boot (swap, dnf, the
      // bundle), so that a boot that fails says so, with its journal, before CloudFormation gives up.
      addressWaitSeconds: Math.max(60, Math.min(600, signalTimeout.toSeconds() - HEALTH_WAIT_SECONDS - BOOT_SECONDS)),
      envFile: renderEnvFile(this.runtimeEnvironment),
      unit: renderUnit({
        timeoutStopSec: Math.ceil(effectiveShutdownSeconds) + 15,
        limitNoFile: KarmaProxy.LIMIT_NOFILE,
      }),
    }));

    // EC2 refuses user data over 16 KB at launch, which a deploy learns only when its first instance does
    // not boot. Values known at deploy (the bundle's URL, the stack's name) are counted as 100 bytes each.
    const userDataBytes = Buffer.byteLength(this.userData.render().replace(/\$\{Token\[[^\]]*\]\}/g, 'x'.repeat(100)));
    if (userDataBytes > USER_DATA_LIMIT) {
      throw new InvalidPropsError(`KarmaProxy props (${this.node.path})`, [`the instances' user data would be about ${userDataBytes} bytes, ` +
        `over EC2's ${USER_DATA_LIMIT}: its settings (staticTargets, environment) are too long`]);
    }

    this.launchTemplate = new ec2.LaunchTemplate(this, 'LaunchTemplate', {
      instanceType,
      // Resolved from SSM by CloudFormation at deploy: synth needs no lookup.
      machineImage: props.machineImage ?? ec2.MachineImage.latestAmazonLinux2023({ cpuType: ec2.AmazonLinuxCpuType.ARM_64 }),
      userData: this.userData,
      role: this.role,
      securityGroup: this.securityGroup,
      // The instance reaches packages and AWS APIs through its own public address: there is no NAT.
      associatePublicIpAddress: true,
      requireImdsv2: true,
      // Only processes on the instance itself need the metadata service: no containers in between.
      httpPutResponseHopLimit: 1,
      blockDevices: [{
        deviceName: '/dev/xvda',
        volume: ec2.BlockDeviceVolume.ebs(rootVolumeSize, {
          volumeType: ec2.EbsDeviceVolumeType.GP3,
          encrypted: true,
          deleteOnTermination: true,
        }),
      }],
      instanceInitiatedShutdownBehavior: ec2.InstanceInitiatedShutdownBehavior.TERMINATE,
      spotOptions: props.spot
        ? { requestType: ec2.SpotRequestType.ONE_TIME, interruptionBehavior: ec2.SpotInstanceInterruption.TERMINATE }
        : undefined,
    });

    const fleetSubnets = props.vpcSubnets ?? { subnetType: ec2.SubnetType.PUBLIC };
    this.autoScalingGroup = new autoscaling.AutoScalingGroup(this, 'Fleet', {
      vpc: this.vpc,
      vpcSubnets: fleetSubnets,
      launchTemplate: this.launchTemplate,
      minCapacity,
      maxCapacity,
      signals: autoscaling.Signals.waitForMinCapacity({ timeout: signalTimeout }),
      // One instance at a time; a new bundle that never turns healthy fails its signal and is rolled back.
      // With a spare slot the new instance comes up before the old one goes; otherwise old goes first.
      updatePolicy: autoscaling.UpdatePolicy.rollingUpdate({
        maxBatchSize: 1,
        minInstancesInService: Math.min(minCapacity, maxCapacity - 1),
        waitOnResourceSignals: true,
        pauseTime: signalTimeout,
      }),
    });
    // The group grants cfn-signal on `AWS::StackId` in the role's own default policy: for a role of
    // another stack, that is the other stack's ID, and every boot's signal would be refused. Granted here
    // on this stack, in this construct's policy.
    if (Stack.of(this.role) !== stack && !dropsStatements(this.role)) {
      this.grantToRole(new iam.PolicyStatement({ sid: 'SignalThisStack', actions: ['cloudformation:SignalResource'], resources: [stack.stackId] }));
    }
    // Instances must find their permissions and their addresses in place when they boot, and must be gone
    // before an address is released at deletion.
    this.autoScalingGroup.node.addDependency(this.role);
    if (this.permissions instanceof iam.Policy) this.autoScalingGroup.node.addDependency(this.permissions);
    for (const eip of this.elasticIps) this.autoScalingGroup.node.addDependency(eip);
    // And the subnets' internet route: an instance booting before it cannot fetch packages, and one still
    // holding an address when the gateway is detached at deletion makes the detach fail (mapped public
    // addresses). (Nothing for imported subnets, whose route is not this stack's.)
    this.autoScalingGroup.node.addDependency(
      this.vpc.selectSubnets(fleetSubnets).internetConnectivityEstablished);
    if (this.droppedActions.length > 0) {
      // The group adds cfn-signal's permission to the same role, which drops it the same way.
      const actions = [...new Set([...this.droppedActions, 'cloudformation:SignalResource'])];
      Validations.of(this).addWarning('KarmaProxy:RoleNotGranted',
        `The role prop (${describeRole(this.role)}) takes no statements: it is immutable (Role.fromRoleArn(..., ` +
        '{ mutable: false }), or a role of another account). Grant it yourself: ' +
        `${actions.join(', ')}. Without them the instances fail their boot (bundle, ` +
        'address, signal) or find no targets; a synth without the role prop shows the exact statements.');
    }
    Validations.of(this.autoScalingGroup).acknowledge({
      id: 'AwsSolutions-AS3',
      reason: 'Scaling notifications would need a topic and a subscriber; CloudFormation events and the ASG activity history cover this small fleet.',
    });

    if (useRedis && maxCapacity === 1) {
      const price = PRICES.cacheNodes[redisNodeType];
      const message = 'redis is on while maxCapacity is 1: the cache shares discovery results between instances, and the ' +
        'workers of one instance already share them through its primary. The ElastiCache node ' +
        `(${redisNodeType}${price === undefined ? '' : `, $${price.toFixed(2)}/month`}) is cost without use: ` +
        'set redis to false, or raise maxCapacity.';
      // A warning when asked for in so many words; for the defaults (the cache is on, ready for a second
      // instance) a note, so that the default stack synthesizes without warnings.
      if (props.redis === true) Validations.of(this).addWarning('KarmaProxy:RedisWithOneInstance', message);
      else Annotations.of(this).addInfo(`[KarmaProxy:RedisWithOneInstance] ${message}`);
    }
    if (discovery === 'ecs' && !clusters?.length && !props.ports?.length && !environment.ALLOWED_PORTS?.trim()) {
      // The default, as an ALB's listener rules would not be: said, not refused (a first deploy works as is).
      Annotations.of(this).addInfo('[KarmaProxy:OpenRouting] Neither clusters nor ports is set: any client that ' +
        'names a service reaches any port of its RUNNING tasks, in any cluster of the account. Set clusters and ' +
        'ports to what you serve (ALLOWED_CLUSTERS, ALLOWED_PORTS).');
    }
    if (!props.vpc && discovery !== 'static') {
      // A note, not a warning: the default stack synthesizes without warnings. But private addresses of
      // another VPC are out of reach. Only awsvpc tasks can be reached at a public address
      // (IP_PREFERENCE=public): pools and bridge-mode tasks are found at their instances' private
      // addresses. Not set here: services placed in this very VPC are reached, and allowed in by
      // security group (connections.allowFrom), at their private addresses only.
      const reach = discovery === 'ecs'
        ? 'it reaches awsvpc tasks of another VPC only at their public addresses, with environment IP_PREFERENCE=public ' +
          '(proxyEnv in the app) and their security groups allowing the proxy\'s Elastic IPs (the Addresses output), ' +
          'and other targets only through peering you add'
        : 'it reaches your instances (found at their private addresses) only through peering you add';
      Annotations.of(this).addInfo(`[KarmaProxy:NewVpc] The proxy runs in a VPC of its own (no vpc given): ${reach}. ` +
        'Give the VPC of your services (vpc; vpcId and publicSubnetIds in the app) to reach them at their private addresses.');
    }
    if (minCapacity < maxCapacity) {
      Validations.of(this).addWarning('KarmaProxy:IdleAddresses',
        `minCapacity (${minCapacity}) is below maxCapacity (${maxCapacity}): the wildcard record lists all ` +
        `${maxCapacity} addresses, and clients that pick an address without an instance will time out.`);
    }

    // Each allowedCidrs entry is two inbound rules (80, 443); a group holds 60 per IP version by default, and
    // a rule naming a group or prefix list counts in both. Past it, the group's creation fails at deploy.
    const peerCidr = props.metricsPeer && cidrOfPeer(props.metricsPeer);
    for (const [version, isIt] of [['IPv4', (c: string) => !c.includes(':')], ['IPv6', (c: string) => c.includes(':')]] as const) {
      const peerRule = props.metricsPeer === undefined ? 0 : peerCidr === undefined || isIt(peerCidr) ? 1 : 0;
      const rules = 2 * allowedCidrs.filter(isIt).length + peerRule;
      if (rules > SG_RULES_DEFAULT_QUOTA) {
        Validations.of(this).addWarning('KarmaProxy:SecurityGroupRuleQuota',
          `allowedCidrs makes ${rules} inbound ${version} rules (two per CIDR: ports 80 and 443${props.metricsPeer === undefined ? '' : ', and one for metricsPeer'}), ` +
          `more than a security group's default quota of ${SG_RULES_DEFAULT_QUOTA}: raise the quota first, or the deploy fails; ` +
          'or merge the CIDRs into fewer, wider ones.');
      }
    }

    if (maxCapacity > EIP_DEFAULT_QUOTA) {
      Validations.of(this).addWarning('KarmaProxy:ElasticIpQuota',
        `maxCapacity (${maxCapacity}) makes ${maxCapacity} Elastic IPs, more than a region's default quota of ` +
        `${EIP_DEFAULT_QUOTA} (which other stacks share): raise the quota first, or the deploy fails.`);
    }

    // At synth, once every statement is in (a user may add to the role after this constructor): a role
    // whose inline policies IAM refuses fails the deploy and rolls it back.
    this.node.addValidation({ validate: () => this.policySizeProblems(maxCapacity, clusters?.length ?? 0) });

    // ---- DNS ----
    if (domain) this.wildcardDomainName = `*.${domain}`;
    if (props.hostedZone && domain) {
      this.wildcardRecord = new route53.ARecord(this, 'WildcardRecord', {
        zone: props.hostedZone,
        // A trailing dot: the name is final, whatever the zone object knows of its own name.
        recordName: `*.${domain}.`,
        target: route53.RecordTarget.fromIpAddresses(...this.addresses),
        ttl: recordTtl,
        comment: 'Karma Proxy fleet addresses',
      });
    }

    this.costEstimate = estimateMonthlyCost({
      instanceType: instanceType.toString(),
      instances: minCapacity,
      spot: props.spot ?? false,
      elasticIps: maxCapacity,
      volumeGb: rootVolumeSize,
      cacheNodeType: useRedis ? redisNodeType : undefined,
      hostedZone: this.wildcardRecord !== undefined,
    });
  }

  /**
   * A security group the user brings is used as given; synth says when it cannot work as the proxy's:
   * outbound traffic restricted (the proxy reaches targets on any port, AWS APIs and packages on 443:
   * the boot would fail, or no target would answer), or an imported group that keeps no rules
   * (`mutable: false`: ports 80 and 443 stay as they are).
   */
  private checkGivenSecurityGroup(sg: ec2.ISecurityGroup, rulesAdded: boolean): void {
    if (!sg.allowAllOutbound) {
      Validations.of(this).addWarning('KarmaProxy:SecurityGroupOutbound',
        `The securityGroup prop (${sg.node.path}) does not allow all outbound traffic: the proxy reaches its targets ` +
        'on their ports, and AWS APIs and packages on 443. Allow them, or every boot fails or no target answers.');
    }
    // A group of the app (a CfnSecurityGroup inside) holds its rules inline; an imported one holds them
    // as children (ours, or the same rules added before), unless immutable. (Not instanceof: the user's
    // aws-cdk-lib may be another copy.)
    const ingressRules = sg.node.children.filter((c) => CfnResource.isCfnResource(c) && c.cfnResourceType === 'AWS::EC2::SecurityGroupIngress');
    if (rulesAdded && sg.node.defaultChild === undefined && ingressRules.length === 0) {
      Validations.of(this).addWarning('KarmaProxy:SecurityGroupImmutable',
        `The securityGroup prop (${sg.node.path}) takes no rules (imported with mutable: false): open ports 80 and 443 ` +
        'to allowedCidrs (and the metrics port to metricsPeer) yourself, or no client reaches the proxy.');
    }
  }

  /** The policy-size warning has been said (validation runs at every synth of the app). */
  private policySizeSaid = false;

  /**
   * The role's inline policies as IAM will measure them (this construct's and the role's default policy),
   * deploy-time values at a typical length: a problem naming what makes them long when over IAM's bound.
   */
  private policySizeProblems(maxCapacity: number, clusters: number): string[] {
    if (Stack.of(this.role) !== Stack.of(this)) return [];
    const policies = [this.permissions, this.role.node.tryFindChild('DefaultPolicy')]
      .filter((p): p is iam.Policy => p instanceof iam.Policy)
      .map((p) => p.document as unknown);
    // A role of the app's own may hold inline policies of its own (inlinePolicies): they count too.
    const cfnRole = this.role.node.defaultChild;
    if (cfnRole instanceof iam.CfnRole && cfnRole.policies !== undefined) {
      const own = Stack.of(this).resolve(cfnRole.policies) as unknown;
      if (Array.isArray(own)) for (const p of own) policies.push((p as { policyDocument?: unknown }).policyDocument);
    }
    const measured = (region: string): number => policies.reduce<number>((sum, p) => sum + renderedLength(p, this, region), 0);
    const region = Stack.of(this).region;
    const known = !Token.isUnresolved(region);
    // A stack for any region: refused only when even the shortest region's ARNs are too long; when only
    // a long one's are, said.
    const length = measured(known ? region : SHORTEST_REGION);
    const cause = `each instance slot (maxCapacity, ${maxCapacity}) is an Elastic IP's ARN and each allowed cluster ` +
      `(clusters or ALLOWED_CLUSTERS, ${clusters}) two ARNs`;
    if (length <= ROLE_INLINE_POLICY_LIMIT) {
      const longest = known ? length : measured(LONGEST_REGION);
      // Validation runs at every synth of the app; the warning is said once.
      if (longest > ROLE_INLINE_POLICY_LIMIT && !this.policySizeSaid) {
        this.policySizeSaid = true;
        Validations.of(this).addWarning('KarmaProxy:PolicySize',
          `The role's inline policies would be about ${longest.toLocaleString('en-US')} characters in ${LONGEST_REGION}, over ` +
          `IAM's ${ROLE_INLINE_POLICY_LIMIT.toLocaleString('en-US')} for a role (about ${length.toLocaleString('en-US')} in ${SHORTEST_REGION}): ` +
          `${cause}. In a region with a long name (ap-southeast-2, GovCloud, China) the deploy would fail: lower ` +
          'maxCapacity or the clusters, or give the stack its region (env), which synth then measures.');
      }
      return [];
    }
    return [
      `The role's inline policies would be about ${length.toLocaleString('en-US')} characters, over IAM's ` +
      `${ROLE_INLINE_POLICY_LIMIT.toLocaleString('en-US')} for a role (the deploy would fail): ${cause}. Lower maxCapacity, ` +
      'or allow fewer clusters (without any, the role reads every cluster); or give, as role, one that takes no ' +
      'statements (role.withoutPolicyUpdates()) and holds these permissions in managed policies of yours.',
    ];
  }

  /** Adds a statement to the role, remembering its actions when the role does not keep it. */
  private grantToRole(statement: iam.PolicyStatement): void {
    if (this.permissions instanceof iam.Policy) {
      this.permissions.addStatements(statement);
      if (dropsStatements(this.role)) this.droppedActions.push(...statement.actions);
      return;
    }
    const { statementAdded } = this.role.addToPrincipalPolicy(statement);
    if (!statementAdded || dropsStatements(this.role)) this.droppedActions.push(...statement.actions);
  }

  /** The role may read exactly what the discovery mode reads. */
  private addDiscoveryPermissions(discovery: DiscoveryMode, clusters: string[] | undefined): void {
    const stack = Stack.of(this);
    const add = (sid: string, actions: string[], resources: string[], conditions?: Record<string, unknown>): void => {
      this.grantToRole(new iam.PolicyStatement({ sid, actions, resources, conditions }));
    };
    switch (discovery) {
      case 'ecs': {
        if (clusters?.length) {
          // Each name as given: the runtime asks ECS for an allowed cluster by its ALLOWED_CLUSTERS spelling,
          // not by the Host's lower case (IAM compares ARNs case-sensitively). A token (cluster.clusterName)
          // works alike.
          const names = [...new Set(clusters)];
          const clusterArns = names.map((c) => stack.formatArn({ service: 'ecs', resource: 'cluster', resourceName: c }));
          // ListTasks, ListServices and DescribeContainerInstances are authorized on the cluster through a
          // condition, not a resource. ListServices finds a service whose name differs from the Host's in case.
          add('EcsListInAllowedClusters', ['ecs:ListTasks', 'ecs:ListServices', 'ecs:DescribeContainerInstances'], ['*'],
            { ArnEquals: { 'ecs:cluster': clusterArns } });
          const taskArns = names.map((c) => stack.formatArn({ service: 'ecs', resource: 'task', resourceName: `${c}/*` }));
          add('EcsDescribeTasksInAllowedClusters', ['ecs:DescribeTasks'], taskArns);
          for (const arn of taskArns) {
            Validations.of(this.permissions).acknowledge({
              id: `AwsSolutions-IAM5[Resource::${nagText(arn, this)}]`,
              reason: 'Task IDs are not known in advance: DescribeTasks is limited to the tasks of the allowed clusters.',
            });
          }
        } else {
          add('EcsDiscovery', ['ecs:ListTasks', 'ecs:ListServices', 'ecs:DescribeTasks', 'ecs:DescribeContainerInstances'], ['*']);
          // Cluster names only: a Host is lower case, and ECS names (CloudFormation's MyStack-Cluster-1A2B)
          // need not be. Not with clusters: an allowed cluster is asked for as spelled there, never looked up.
          add('EcsFindClusterName', ['ecs:ListClusters'], ['*']);
        }
        add('Ec2DescribeForEcsTasks', ['ec2:DescribeNetworkInterfaces', 'ec2:DescribeInstances'], ['*']);
        break;
      }
      case 'tag':
        add('Ec2DescribeTaggedPool', ['ec2:DescribeInstances'], ['*']);
        break;
      case 'asg':
        add('AsgPoolDiscovery', ['autoscaling:DescribeAutoScalingGroups', 'ec2:DescribeInstances'], ['*']);
        break;
      case 'static':
        break;
    }
  }

  private defaultCacheSubnets(): ec2.SubnetSelection {
    if (this.vpc.isolatedSubnets.length > 0) return { subnetType: ec2.SubnetType.PRIVATE_ISOLATED };
    return { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS };
  }

  /** A value as CloudFormation will read it (its tokens resolved), or '' when it cannot be resolved yet. */
  private resolvedText(value: string): string {
    try {
      return JSON.stringify(Stack.of(this).resolve(value)) ?? '';
    } catch {
      return '';
    }
  }

  /** The allowed clusters' names, whether given as names or as ARNs, in clusters or in environment.ALLOWED_CLUSTERS. */
  private allowedClusters(props: KarmaProxyProps, environment: Readonly<Record<string, string>>): string[] | undefined {
    // ALLOWED_CLUSTERS given in environment instead (proxyEnv in the app) scopes the role as clusters would.
    const envClusters = environment.ALLOWED_CLUSTERS;
    return (props.clusters ?? (envClusters !== undefined && !Token.isUnresolved(envClusters)
      ? envClusters.split(',').map((c) => c.trim()).filter((c) => c !== '')
      : undefined))?.map((c) => clusterNameOf(c, this));
  }

  /** The proxy's env vars as the env file will say them: what the props set, then environment over them. */
  private runtimeEnv(props: KarmaProxyProps, v: {
    discovery: DiscoveryMode; metricsPort: number; shutdownTimeout: Duration; domain: string | undefined;
    environment: Readonly<Record<string, string>>;
  }, redis: { url: string; secretArn: string } | undefined): Record<string, string> {
    const env: Record<string, string> = {
      PORT: String(KarmaProxy.HTTP_PORT),
      NODE_FILTER: v.discovery,
      AWS_REGION: Aws.REGION,
      METRICS_PORT: numberText(v.metricsPort),
      SHUTDOWN_TIMEOUT: seconds(v.shutdownTimeout),
    };
    if (v.domain) env.DOMAIN = v.domain;
    // The role allows ListServices (and, without clusters, ListClusters): Hosts reach CloudFormation-named services too.
    if (v.discovery === 'ecs') env.ECS_CASE_LOOKUP = 'true';
    const clusters = this.allowedClusters(props, v.environment);
    if (clusters?.length) env.ALLOWED_CLUSTERS = clusters.join(',');
    if (props.ports?.length) env.ALLOWED_PORTS = props.ports.map((p) => String(p).trim()).join(',');
    if (props.asgName !== undefined) env.ASG_NAME = props.asgName;
    if (props.tagName !== undefined) env.TAG_NAME = props.tagName;
    if (props.tagValue !== undefined) env.TAG_VALUE = props.tagValue;
    if (props.staticTargets?.length) env.STATIC_TARGETS = props.staticTargets.join(',');
    if (props.targetPort !== undefined) env.TARGET_PORT = numberText(props.targetPort);
    if (props.discoveryInterval) env.NODE_CHECK_PERIOD = seconds(props.discoveryInterval);
    const hc = props.healthCheck ?? {};
    if (hc.path !== undefined) env.HEALTH_CHECK_PATH = hc.path;
    if (hc.protocol !== undefined) env.HEALTH_CHECK_PROTOCOL = hc.protocol;
    if (hc.interval) env.HEALTH_CHECK_PERIOD = seconds(hc.interval);
    if (hc.timeout) env.HEALTH_CHECK_TIMEOUT = seconds(hc.timeout);
    if (hc.healthyThreshold !== undefined) env.HEALTHY_THRESHOLD = numberText(hc.healthyThreshold);
    if (hc.unhealthyThreshold !== undefined) env.UNHEALTHY_THRESHOLD = numberText(hc.unhealthyThreshold);
    if (hc.healthyHttpCodes !== undefined) env.HEALTH_CHECK_MATCHER = hc.healthyHttpCodes;
    if (redis) {
      env.REDIS_URL = redis.url;
      env.REDIS_AUTH_SECRET_ARN = redis.secretArn;
    }
    Object.assign(env, v.environment);
    // The runtime lets loopback targets through when an AWS endpoint is on loopback (a local stand-in); on
    // an instance such an endpoint is a local forwarder, and loopback its own services: kept off unless asked.
    if (env.LOOPBACK_TARGETS === undefined && Object.keys(v.environment).some((k) => k.startsWith('AWS_ENDPOINT_URL'))) env.LOOPBACK_TARGETS = 'false';
    return env;
  }

  /** Every problem with the props, for the one error that names them. Tokens are not judged. */
  private validate(props: KarmaProxyProps, v: {
    instanceType: ec2.InstanceType; minCapacity: number; maxCapacity: number; discovery: DiscoveryMode;
    redisNodeType: string; metricsPort: number; allowedCidrs: string[]; bundlePath: string;
    rootVolumeSize: number; shutdownTimeout: Duration; domain: string | undefined;
    environment: Record<string, string>; useRedis: boolean; vpc: ec2.IVpc;
  }): string[] {
    const problems: string[] = [];
    // An entry of a list known only at deploy (a CommaDelimitedList parameter's valueAsList) is a token
    // too, spelled `#{Token[…]}`, which a string's check does not see.
    const listTokenEntry = (x: unknown): boolean => typeof x === 'string' && unresolved([x]);
    const known = (x: unknown): boolean => !unresolved(x) && !listTokenEntry(x);
    // Such a list as a whole: the proxy needs each entry (one security group rule, one IAM resource, one
    // setting each), and its length is known only at deploy.
    const lists: [string, readonly unknown[] | undefined][] = [['allowedCidrs', props.allowedCidrs], ['clusters', props.clusters], ['ports', props.ports], ['staticTargets', props.staticTargets]];
    for (const [name, list] of lists) {
      // The whole list, or spread among other entries ([...param.valueAsList, '10.0.0.0/8']).
      if (list?.some(listTokenEntry)) {
        problems.push(`${name} is a list known only at deploy (a CommaDelimitedList parameter): give a list whose entries may each be a token, such as [param.valueAsString]`);
      }
    }

    // /metrics names every route and target, and /healthz is the boot's readiness check: never public.
    // A CIDR as wide as 0.0.0.0/1 is the internet too: no monitoring network is wider than a /8 (or
    // IPv6's fc00::/7, every private address).
    // A CIDR peer (Peer.ipv4 checks its shape only; a prefix list or a security group has no CIDR).
    const metricsPeer = props.metricsPeer && cidrOfPeer(props.metricsPeer);
    const peerProblem = metricsPeer === undefined ? undefined : cidrProblem(metricsPeer);
    if (peerProblem) problems.push(`metricsPeer ${metricsPeer} ${peerProblem}${peerProblem === 'is not a CIDR' ? ' such as 10.0.0.0/16' : ''}`);
    else if (metricsPeer !== undefined && Number(metricsPeer.split('/')[1]) < (metricsPeer.includes(':') ? 7 : 8)) {
      problems.push(`metricsPeer ${metricsPeer} would open the metrics port to the internet: give your monitoring's own CIDR or security group`);
    }

    // Capacities size the address pool and the cost estimate, so they must be plain numbers at synth.
    if (!known(v.maxCapacity)) problems.push('maxCapacity must be a number at synth time (it is the number of Elastic IPs)');
    if (!known(v.minCapacity)) problems.push('minCapacity must be a number at synth time (it is the number of signals awaited)');
    if (known(v.minCapacity) && (!Number.isInteger(v.minCapacity) || v.minCapacity < 1)) {
      problems.push(`minCapacity (${v.minCapacity}) must be a whole number of at least 1`);
    }
    // Not given, maxCapacity is minCapacity: minCapacity's own problem says it all, and a bound names both.
    const maxGiven = props.maxCapacity !== undefined;
    if (maxGiven && known(v.maxCapacity) && (!Number.isInteger(v.maxCapacity) || v.maxCapacity < 1)) {
      problems.push(`maxCapacity (${v.maxCapacity}) must be a whole number of at least 1`);
    }
    if (known(v.maxCapacity) && v.maxCapacity > MAX_CAPACITY) {
      problems.push(`maxCapacity (${v.maxCapacity}${maxGiven ? '' : ', minCapacity\'s when not given'}) must be at most ${MAX_CAPACITY}: each instance slot is an Elastic IP, ` +
        "paid for whether used or not, and a line of the role's policy, whose size IAM limits");
    }
    if (known(v.minCapacity) && known(v.maxCapacity) && v.minCapacity > v.maxCapacity) {
      problems.push(`minCapacity (${v.minCapacity}) must not exceed maxCapacity (${v.maxCapacity})`);
    }

    const typeName = v.instanceType.toString();
    if (known(typeName)) {
      let arch: ec2.InstanceArchitecture | undefined;
      try {
        arch = v.instanceType.architecture;
      } catch {
        arch = undefined;
      }
      // EC2's names are lower case, a family and a size: `T4G.NANO` or `t4g` is no type at all, and
      // calling it "not Graviton" would send its author to the family they already chose.
      // Sizes may have a hyphen of their own: r8g.metal-24xl (ec2.InstanceSize.XLARGE24METAL).
      if (!/^[a-z][a-z0-9-]*\.[a-z0-9]+(?:-[a-z0-9]+)*$/.test(typeName)) {
        problems.push(`instanceType '${typeName}' is not an EC2 instance type: a family and a size in lower case, such as t4g.nano`);
      } else if (arch !== ec2.InstanceArchitecture.ARM_64) {
        problems.push(`instanceType '${typeName}' is not an ARM Graviton (arm64) type: the image and Node.js are arm64 (use t4g, c7g, m7g...)`);
      }
    }

    const imageProblem = props.machineImage && machineImageProblem(props.machineImage);
    if (imageProblem) problems.push(imageProblem);

    if (!DISCOVERY_MODES.includes(v.discovery)) {
      problems.push(`discovery '${v.discovery}' must be one of ${DISCOVERY_MODES.join(', ')}`);
    }

    const zoneName = props.hostedZone ? tryZoneName(props.hostedZone) : undefined;
    if (v.domain !== undefined && known(v.domain)) {
      if (!DNS_NAME.test(v.domain)) {
        // As given: v.domain is lower-cased, and the upper-case letters may be what the user must find.
        problems.push(`domain '${props.domain ?? v.domain}' is not a DNS name such as apps.example.com`);
      } else if (zoneName !== undefined && known(zoneName)) {
        const zone = stripDot(zoneName);
        if (v.domain !== zone && !v.domain.endsWith(`.${zone}`)) {
          problems.push(`domain '${v.domain}' is not inside hosted zone '${zone}'`);
        }
      }
    }
    const taken = props.hostedZone && v.domain !== undefined && known(v.domain) ? recordOwner(this, props.hostedZone, v.domain) : undefined;
    if (taken !== undefined) {
      problems.push(`domain '${v.domain}': ${taken} already has the record *.${v.domain} in this hosted zone, and Route53 ` +
        'keeps one record of a name: give each proxy a domain of its own');
    }
    const envDomain = v.environment.DOMAIN;
    if (v.discovery === 'ecs' && !v.domain && !envDomain) {
      problems.push("domain is required when discovery is 'ecs' (routes are <service>-<port>-<cluster>.<domain>)");
    }
    if (props.hostedZone && !v.domain) {
      problems.push("domain is required with a hostedZone whose name is not known (the record is *.<domain>)");
    }

    if (v.discovery === 'static' && !props.staticTargets?.length && !v.environment.STATIC_TARGETS) {
      problems.push("staticTargets is required when discovery is 'static' (host:port each)");
    }
    for (const t of props.staticTargets ?? []) {
      if (known(t) && !/^(\[[0-9a-fA-F:.]+\]|[^:\s,[\]]+):\d{1,5}$/.test(t)) {
        problems.push(`staticTargets entry '${t}' must be host:port`);
      }
    }
    if (props.redis === true && v.discovery === 'static') {
      // The runtime's static pool never opens a Redis: the node would be paid for and hold nothing.
      problems.push("redis only applies when discovery is not 'static' (static targets are not discovered: the cache would share nothing)");
    }
    for (const key of ['REDIS_URL', 'REDIS_AUTH_SECRET_ARN'] as const) {
      // A Redis of one's own alike: the runtime's static pool never opens one (its secret would be granted for nothing).
      if (v.discovery === 'static' && v.environment[key] !== undefined) {
        problems.push(`environment.${key} only applies when discovery is not 'static' (static targets are not discovered: a Redis would share nothing)`);
      }
    }
    if (props.clusters?.length && v.discovery !== 'ecs') {
      problems.push(`clusters only applies when discovery is 'ecs' (discovery is '${v.discovery}')`);
    }
    // Pool settings the runtime reads only in their own mode: set in another, they would be written and ignored.
    const modeOf: Record<string, readonly DiscoveryMode[]> = {
      staticTargets: ['static'], targetPort: ['asg', 'tag'], asgName: ['asg'], tagName: ['tag'], tagValue: ['tag'],
    };
    for (const [prop, modes] of Object.entries(modeOf)) {
      const value = (props as Record<string, unknown>)[prop];
      if (value === undefined || (Array.isArray(value) && value.length === 0) || modes.includes(v.discovery)) continue;
      problems.push(`${prop} only applies when discovery is ${modes.map((m) => `'${m}'`).join(' or ')} (discovery is '${v.discovery}')`);
    }
    // On the instance, loopback is the proxy itself (its metrics among it) and link-local is the instance
    // metadata service: a static target there would serve either to every client.
    for (const t of [...(props.staticTargets ?? []), ...(v.environment.STATIC_TARGETS ?? '').split(',')]) {
      const host = known(t) ? t.trim().replace(/:\d{1,5}$/, '').replace(/^\[(.*)\]$/, '$1').toLowerCase() : '';
      if (host && isInstanceLocal(host)) {
        problems.push(`static target '${t.trim()}' is on the instance itself (loopback or link-local, the metadata service): give the pool's own addresses`);
      }
    }
    const stack = Stack.of(this);
    for (const c of props.clusters ?? []) {
      if (known(c) && !CLUSTER_NAME.test(clusterNameOf(c, this))) problems.push(`clusters entry '${c}' is not an ECS cluster name or ARN`);
      // The role and the proxy read clusters of this stack's account and region: an ARN of another would
      // name a namesake here (or nothing).
      const arn = known(c) ? CLUSTER_ARN.exec(c) : null;
      if (arn) {
        const [, region, account] = arn;
        if (!unresolved(stack.region) && region !== stack.region) problems.push(`clusters entry '${c}' is in ${region}, not in this stack's region ${stack.region}`);
        if (!unresolved(stack.account) && account !== stack.account) problems.push(`clusters entry '${c}' is in account ${account}, not in this stack's account ${stack.account}`);
      }
    }
    for (const p of props.ports ?? []) {
      if (known(p) && !isPortSpec(p)) problems.push(`ports entry '${p}' must be a port (1-65535) or a range such as 8000-8100`);
    }
    if (props.targetPort !== undefined && known(props.targetPort) && !isPortSpec(props.targetPort)) {
      problems.push(`targetPort (${props.targetPort}) must be a port from 1 to 65535`);
    }

    for (const cidr of v.allowedCidrs) {
      const problem = known(cidr) ? cidrProblem(cidr) : undefined;
      if (problem) problems.push(`allowedCidrs entry '${cidr}' ${problem}${problem === 'is not a CIDR' ? ' such as 0.0.0.0/0 or 203.0.113.0/24' : ''}`);
    }
    if (known(v.metricsPort)) {
      if (!Number.isInteger(v.metricsPort) || v.metricsPort < 1 || v.metricsPort > 65535) {
        problems.push(`metricsPort (${v.metricsPort}) must be a port from 1 to 65535`);
      } else if (v.metricsPort === KarmaProxy.HTTP_PORT || v.metricsPort === KarmaProxy.HTTPS_PORT) {
        problems.push(`metricsPort (${v.metricsPort}) must differ from the proxy's ports 80 and 443`);
      }
    }

    if (v.useRedis && known(v.redisNodeType) && !/^cache\.[a-z0-9]+\.[a-z0-9]+$/.test(v.redisNodeType)) {
      problems.push(`redisNodeType '${v.redisNodeType}' is not a cache node type such as cache.t4g.micro`);
    }
    problems.push(...subnetProblems(v.vpc, props.vpcSubnets, v.useRedis ? props.cacheSubnets : undefined));
    if (v.useRedis && props.vpc && !props.cacheSubnets &&
        props.vpc.isolatedSubnets.length === 0 && props.vpc.privateSubnets.length === 0) {
      problems.push('vpc has no isolated or private subnets for the cache: give cacheSubnets, or set redis to false');
    }
    if (!v.useRedis && props.redisNodeType !== undefined) {
      problems.push(v.discovery === 'static' ? "redisNodeType only applies when discovery is not 'static' (a static pool gets no cache)" : 'redisNodeType is set but redis is false');
    }
    const signalSeconds = props.signalTimeout?.toSeconds({ integral: false });
    if (signalSeconds !== undefined && known(signalSeconds) && (signalSeconds < MIN_SIGNAL_SECONDS || signalSeconds > MAX_SIGNAL_SECONDS)) {
      problems.push(`signalTimeout (${props.signalTimeout?.toHumanString()}) must be from 5 minutes to 1 hour: ` +
        "CloudFormation pauses a rolling update at most an hour, and a shorter wait can end before a new instance's boot does");
    }
    if (known(v.rootVolumeSize) && (!Number.isInteger(v.rootVolumeSize) || v.rootVolumeSize < 8 || v.rootVolumeSize > 16384)) {
      problems.push(`rootVolumeSize (${v.rootVolumeSize}) must be a whole number of GB from 8 (the image's size) to 16384`);
    }

    const hc = props.healthCheck;
    if (hc?.interval && hc.timeout && known(hc.interval.toMilliseconds()) &&
        hc.timeout.toMilliseconds() > hc.interval.toMilliseconds()) {
      problems.push(`healthCheck.timeout (${seconds(hc.timeout)} s) must not exceed healthCheck.interval (${seconds(hc.interval)} s)`);
    }
    for (const k of ['healthyThreshold', 'unhealthyThreshold'] as const) {
      const n = hc?.[k];
      if (n !== undefined && known(n) && (!Number.isInteger(n) || n < 1 || n > 100)) {
        problems.push(`healthCheck.${k} (${n}) must be a whole number from 1 to 100`);
      }
    }
    if (hc?.path !== undefined && known(hc.path) && hc.path !== 'off' && !(typeof hc.path === 'string' && /^\/[\x21-\x7e]*$/.test(hc.path))) {
      problems.push(typeof hc.path === 'string' && hc.path.startsWith('/')
        ? `healthCheck.path '${hc.path}' must hold no spaces, control or non-ASCII characters (percent-encode them)`
        : `healthCheck.path '${hc.path}' must start with '/' (or be 'off')`);
    }
    if (hc?.healthyHttpCodes !== undefined && known(hc.healthyHttpCodes) &&
        !/^\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*$/.test(hc.healthyHttpCodes.replace(/\s/g, ''))) {
      problems.push(`healthCheck.healthyHttpCodes '${hc.healthyHttpCodes}' must look like 200, 200-399 or 200,204`);
    }

    for (const [key, value] of Object.entries(v.environment)) {
      if (!ENV_KEY.test(key)) problems.push(`environment key '${key}' is not an env var name (A-Z, 0-9, _)`);
      if (typeof value !== 'string') problems.push(`environment.${key} must be a string`);
      else if (known(value) && /[\n\r\0]/.test(value)) problems.push(`environment.${key} must be one line`);
      // A secret's value (secretValue, a secure parameter) is resolved by CloudFormation into the launch
      // template: readable by DescribeLaunchTemplateVersions and by anything on the instance through IMDS.
      else if (typeof value === 'string' && /\{\{resolve:(?:secretsmanager|ssm-secure):/.test(this.resolvedText(value))) {
        problems.push(`environment.${key} holds a secret's value, which CloudFormation would write into the user data in plain text: ` +
          'for the Redis AUTH token set environment.REDIS_AUTH_SECRET_ARN to the secret\'s ARN (the runtime reads it at start)');
      }
    }
    // Settings the construct derives its resources from: overriding them in environment would leave a
    // role, a record or a cluster policy for something else.
    const envNodeFilter = v.environment.NODE_FILTER;
    if (envNodeFilter !== undefined && known(envNodeFilter) && envNodeFilter.trim().toLowerCase() !== v.discovery) {
      problems.push(`environment.NODE_FILTER '${envNodeFilter}' differs from discovery '${v.discovery}': set discovery instead (the role's permissions follow it)`);
    }
    // The managed cache's URL and AUTH token are set for the runtime: a URL of one's own beside them would
    // get that token (in plain text to a bare host:port), and the cache would be paid for unused.
    if (v.useRedis && v.environment.REDIS_URL !== undefined) {
      problems.push("environment.REDIS_URL is set while redis is on (the stack's own cache, whose AUTH token the proxy would send to it): " +
        'set redis to false to use a Redis of your own');
    }
    if (v.useRedis && v.environment.REDIS_AUTH_SECRET_ARN !== undefined) {
      problems.push("environment.REDIS_AUTH_SECRET_ARN is set while redis is on (the stack's own cache, to which the proxy would send this secret's token): " +
        'set redis to false to use a Redis of your own');
    }
    const envRedis = v.environment.REDIS_URL;
    // Judged on the text with its tokens in place: `rediss://:${token}@host` carries a password all the same.
    if (typeof envRedis === 'string' && (/^[a-z][a-z0-9+.-]*:\/\/[^/]*:[^/]*@/i.test(envRedis.trim()) || /[?&]password=/i.test(envRedis))) {
      problems.push(
        'environment.REDIS_URL carries a password, which would be written into the template, the user data and the env file: ' +
          'put the token in a Secrets Manager secret and set environment.REDIS_AUTH_SECRET_ARN to its ARN (the role is granted its read)',
      );
    }
    const envSecret = v.environment.REDIS_AUTH_SECRET_ARN;
    if (envSecret !== undefined && known(envSecret) && !/^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+$/.test(envSecret.trim())) {
      problems.push(`environment.REDIS_AUTH_SECRET_ARN '${envSecret}' must be a Secrets Manager secret ARN (the role is granted GetSecretValue on it)`);
    }
    for (const key of CREDENTIAL_VARS) {
      if (v.environment[key] !== undefined) {
        problems.push(`environment.${key} cannot be set: the proxy takes its credentials from the instance role, and anything set here ` +
          'is written into the template, the user data and the env file (grant what it needs to the role instead)');
      }
    }
    if (v.environment.AWS_REGION !== undefined) {
      problems.push("environment.AWS_REGION cannot be set: the proxy discovers in the stack's region, where the role's permissions are");
    }
    if (envDomain !== undefined && known(envDomain) && v.domain !== undefined && known(v.domain) &&
        stripDot(envDomain.trim().toLowerCase()) !== v.domain.toLowerCase()) {
      problems.push(`environment.DOMAIN '${envDomain}' differs from domain '${v.domain}': the wildcard record and the routing would disagree; set domain`);
    }
    const envClusters = v.environment.ALLOWED_CLUSTERS;
    if (envClusters !== undefined && known(envClusters) && props.clusters?.length) {
      problems.push("environment.ALLOWED_CLUSTERS is set beside clusters: set clusters alone (the role's permissions follow it)");
    }
    const envMetrics = v.environment.METRICS_PORT;
    if (envMetrics !== undefined && known(envMetrics) &&
        (!/^\d{1,5}$/.test(envMetrics.trim()) || Number(envMetrics) < 1 || Number(envMetrics) > 65535)) {
      problems.push(`environment.METRICS_PORT '${envMetrics}' must be a port number from 1 to 65535 (the boot waits for /healthz on it)`);
    } else if (envMetrics !== undefined && known(envMetrics) && [KarmaProxy.HTTP_PORT, KarmaProxy.HTTPS_PORT].includes(Number(envMetrics.trim()))) {
      problems.push(`environment.METRICS_PORT (${envMetrics.trim()}) must differ from the proxy's ports ${KarmaProxy.HTTP_PORT} and ${KarmaProxy.HTTPS_PORT}`);
    }
    // The security group, the addresses and the health probe are wired for the proxy on port 80.
    const envPort = v.environment.PORT;
    if (envPort !== undefined && known(envPort) && envPort.trim() !== String(KarmaProxy.HTTP_PORT)) {
      problems.push(`environment.PORT '${envPort}' cannot move the proxy off port ${KarmaProxy.HTTP_PORT}: the security group and the health probe are wired for it`);
    }
    // The health probe asks the metrics listener: a proxy listening on loopback alone would pass it and
    // serve nobody.
    const envHost = v.environment.HOST;
    if (envHost !== undefined && known(envHost) && !['0.0.0.0', '::', '[::]'].includes(envHost.trim())) {
      problems.push(`environment.HOST '${envHost}' cannot narrow where the proxy listens: clients reach it on the instance's addresses (0.0.0.0 or :: only)`);
    }
    // The boot and the liveness timer ask http://127.0.0.1:<metrics port>/healthz.
    const envMetricsHost = v.environment.METRICS_HOST;
    if (envMetricsHost !== undefined && known(envMetricsHost) && !['0.0.0.0', '::', '[::]', '127.0.0.1'].includes(envMetricsHost.trim())) {
      problems.push(`environment.METRICS_HOST '${envMetricsHost}' must be 0.0.0.0, :: or 127.0.0.1: the boot and the liveness check ask 127.0.0.1 for /healthz ` +
        '(metricsPeer decides who else may reach it)');
    }
    const envShutdown = v.environment.SHUTDOWN_TIMEOUT;
    if (envShutdown !== undefined && known(envShutdown) && !/^\d+(\.\d+)?$/.test(envShutdown.trim())) {
      problems.push(`environment.SHUTDOWN_TIMEOUT '${envShutdown}' must be a number of seconds`);
    }

    if (known(v.bundlePath) && !fs.existsSync(v.bundlePath)) {
      problems.push(`bundle '${v.bundlePath}' does not exist: run 'npm run build' first (or set bundlePath)`);
    } else if (known(v.bundlePath) && (path.extname(v.bundlePath) !== '.js' || !fs.statSync(v.bundlePath).isFile())) {
      // The role reads the asset bucket's `*.js` objects: any other name would need the whole bucket.
      problems.push(`bundlePath '${v.bundlePath}' must be the bundle's .js file (the role may read only .js objects of the asset bucket)`);
    }

    return problems;
  }
}

/** Props the construct (or its stack) cannot build from: every problem, one line each. */
export class InvalidPropsError extends Error {
  constructor(what: string, readonly problems: readonly string[]) {
    super(`Invalid ${what}:\n  - ${problems.join('\n  - ')}`);
    this.name = 'InvalidPropsError';
  }
}

/** What stands in for a deploy-time value when the runtime's checks judge the env file at synth. */
const DEPLOY_TIME_STAND_INS: Readonly<Record<string, string>> = {
  AWS_REGION: 'us-east-1',
  REDIS_URL: 'rediss://cache.example.internal:6379',
  REDIS_AUTH_SECRET_ARN: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:karma-proxy-cache',
};

/**
 * `env` as the runtime's checks judge it at synth: each value known only at deploy put as a stand-in of
 * its kind, or left out (`dropped`) when it has none (a CfnParameter, a cluster's name from another
 * construct).
 */
function judgedEnv(env: Readonly<Record<string, string>>): { judged: Record<string, string>; dropped: string[] } {
  const judged: Record<string, string> = {};
  const dropped: string[] = [];
  for (const [key, value] of Object.entries(env)) {
    if (!unresolved(value)) judged[key] = value;
    else if (DEPLOY_TIME_STAND_INS[key] !== undefined) judged[key] = DEPLOY_TIME_STAND_INS[key];
    else dropped.push(key);
  }
  return { judged, dropped };
}

/** `problem` names one of `keys` (a setting left out of the judged env, whose absence it may be about). */
function names(problem: string, keys: readonly string[]): boolean {
  const words = new Set(problem.split(/[^A-Za-z0-9_]+/));
  return keys.some((key) => words.has(key));
}

/**
 * The problems the runtime's loadConfig finds in `env`, as it will read the env file. A value known only
 * at deploy is judged by a stand-in of its kind; one with none is left out, and a problem that names it
 * is not counted (the runtime still checks it at start).
 */
function runtimeRefusals(env: Readonly<Record<string, string>>): string[] {
  const { judged, dropped } = judgedEnv(env);
  try {
    loadConfig(judged);
    return [];
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.filter((p) => !names(p, dropped));
    throw err;
  }
}

/** A runtime refusal as a line of the construct's error. */
function asEnvironment(problem: string): string {
  return `the proxy would refuse this setting at start (props and environment become its env vars): ${problem}`;
}

/**
 * props.healthCheck is an ALB's, and an ALB refuses a check that may outlast its interval: so does the
 * construct, against the interval the proxy will use (the mode's default when none is given). The same
 * pair written as HEALTH_CHECK_TIMEOUT and HEALTH_CHECK_PERIOD in environment is the Stateless Load
 * Balancer's, and kept, as the runtime keeps it. Undefined when judged elsewhere or not at all.
 */
function albTimeoutProblem(props: KarmaProxyProps, env: Readonly<Record<string, string>>): string | undefined {
  const timeout = props.healthCheck?.timeout;
  if (!timeout || props.environment?.HEALTH_CHECK_TIMEOUT !== undefined || unresolved(timeout.toMilliseconds())) return undefined;
  const { judged, dropped } = judgedEnv(env);
  if (dropped.includes('NODE_FILTER') || dropped.includes('HEALTH_CHECK_PERIOD')) return undefined;
  let config;
  try {
    config = loadConfig(judged);
  } catch {
    return undefined; // a refusal is said as one (runtimeRefusals), or left to the runtime when it names a deploy-time setting
  }
  if (config.healthCheckTimeoutMs <= config.healthCheckPeriodMs) return undefined;
  return `healthCheck.timeout (${seconds(timeout)} s) must not exceed the health check interval (${config.healthCheckPeriodMs / 1000} s), as an ALB's`;
}

/**
 * A value as cdk-nag names it in a finding (`arn:<AWS::Partition>:s3:::bucket/*`), so that an
 * acknowledgment matches whatever the stack's environment and synthesizer make of it.
 */
function nagText(value: string, scope: Construct): string {
  const visit = (node: unknown): string => {
    if (node === undefined) return '';
    if (typeof node === 'string') return node.replace(/\$\{/g, '<').replace(/\}/g, '>');
    if (node && typeof node === 'object') {
      const o = node as Record<string, unknown>;
      if (Array.isArray(o['Fn::Join'])) {
        const [sep, items] = o['Fn::Join'] as [string, unknown[]];
        return items.map(visit).join(sep);
      }
      if (o['Fn::Sub'] !== undefined) return visit(o['Fn::Sub']);
      if (Array.isArray(o['Fn::GetAtt'])) {
        const [res, attr] = o['Fn::GetAtt'] as unknown[];
        return `<${visit(res)}.${visit(attr)}>`;
      }
      if (o.Ref !== undefined) return `<${visit(o.Ref)}>`;
    }
    return JSON.stringify(node);
  };
  return visit(Stack.of(scope).resolve(value));
}

/** The partition of a region (`aws` where the region is not known at synth: most accounts). */
function partitionOf(region: string): string {
  if (region.startsWith('us-gov-')) return 'aws-us-gov';
  if (region.startsWith('cn-')) return 'aws-cn';
  if (region.startsWith('us-isob-')) return 'aws-iso-b';
  if (region.startsWith('us-iso-')) return 'aws-iso';
  return 'aws';
}

/** An Elastic IP's allocation ID (`eipalloc-` and 17 hex digits). */
const RENDERED_ALLOCATION_ID = 'eipalloc-0123456789abcdef0';
/** Where nothing better is known: an ID, a name from another stack. */
const RENDERED_NAME = 'x'.repeat(40);
/** The region where the stack's is not known at synth: the shortest and the longest in common use. */
const SHORTEST_REGION = 'us-east-1';
const LONGEST_REGION = 'ap-southeast-2';

/**
 * A policy document's length as IAM counts it (JSON without whitespace), deploy-time values as
 * CloudFormation will make them: the stack's region and partition (`region` where the stack's is not
 * known), a resource's physical name (`<stack>-<logical ID>-<12 characters>`), its ARN, Fn::Select and
 * Fn::Split worked out (a cluster's name cut from its ARN).
 */
function renderedLength(document: unknown, scope: Construct, region: string): number {
  const stack = Stack.of(scope);
  const partition = partitionOf(region);
  const account = '123456789012';
  const refs: Readonly<Record<string, string>> = {
    'AWS::Partition': partition,
    'AWS::Region': region,
    'AWS::AccountId': account,
    'AWS::URLSuffix': partition === 'aws-cn' ? 'amazonaws.com.cn' : 'amazonaws.com',
    'AWS::StackName': stack.stackName,
    'AWS::StackId': `arn:${partition}:cloudformation:${region}:${account}:stack/${stack.stackName}/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d`,
  };
  // The stack's resources by logical ID, for what a Ref or an Arn of one gives.
  const types = new Map<string, string>();
  for (const c of stack.node.findAll()) {
    if (CfnResource.isCfnResource(c) && Stack.of(c) === stack) types.set(stack.resolve(c.logicalId) as string, c.cfnResourceType);
  }
  const physicalName = (id: string): string => `${stack.stackName}-${id}-ABCDEFGHIJKL`.slice(0, 128);
  const arnOf = (id: string): string => {
    const type = types.get(id) ?? '';
    const service = type.split('::')[1]?.toLowerCase() ?? 'service';
    const resource = type.split('::')[2]?.toLowerCase() ?? 'resource';
    if (type === 'AWS::SecretsManager::Secret') return `arn:${partition}:secretsmanager:${region}:${account}:secret:${id}-ABCDEFGHIJKL-AbCdEf`;
    return `arn:${partition}:${service}:${region}:${account}:${resource}/${types.has(id) ? physicalName(id) : RENDERED_NAME}`;
  };
  const render = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(render);
    if (node === null || typeof node !== 'object') return node;
    const o = node as Record<string, unknown>;
    if (Array.isArray(o['Fn::Join'])) {
      const [sep, items] = o['Fn::Join'] as [string, unknown];
      const parts = render(items);
      return Array.isArray(parts) ? parts.map(String).join(sep) : String(parts);
    }
    if (Array.isArray(o['Fn::Split'])) {
      const [sep, text] = o['Fn::Split'] as [string, unknown];
      return String(render(text)).split(sep);
    }
    if (Array.isArray(o['Fn::Select'])) {
      const [index, list] = o['Fn::Select'] as [unknown, unknown];
      const items = render(list);
      return Array.isArray(items) ? (items[Number(render(index))] ?? RENDERED_NAME) : RENDERED_NAME;
    }
    if (typeof o.Ref === 'string') {
      if (refs[o.Ref] !== undefined) return refs[o.Ref];
      // A secret's Ref is its ARN; another resource's, its physical name (a cluster's: its name).
      return types.get(o.Ref) === 'AWS::SecretsManager::Secret' ? arnOf(o.Ref) : types.has(o.Ref) ? physicalName(o.Ref) : RENDERED_NAME;
    }
    if (Array.isArray(o['Fn::GetAtt'])) {
      const [id, attribute] = (o['Fn::GetAtt'] as unknown[]).map(String);
      return attribute === 'AllocationId' ? RENDERED_ALLOCATION_ID : attribute.endsWith('Arn') ? arnOf(id) : RENDERED_NAME;
    }
    if (typeof o['Fn::Sub'] === 'string') {
      return (o['Fn::Sub'] as string).replace(/\$\{([^}]+)\}/g, (_m, name: string) => refs[name] ?? (types.has(name) ? physicalName(name) : RENDERED_NAME));
    }
    // Fn::ImportValue and the like: a value of another stack.
    if (Object.keys(o).some((k) => k.startsWith('Fn::'))) return RENDERED_NAME;
    return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, render(v)]));
  };
  return JSON.stringify(render(stack.resolve(document)) ?? {}).length;
}

/**
 * What is wrong with where the proxy and the cache would run. Without these checks a VPC without public
 * subnets, or a selection that matches nothing, fails deep in CDK with a message that names neither the
 * prop nor the fix, or not at all (an empty AZ filter gives the group no subnet).
 */
function subnetProblems(vpc: ec2.IVpc, vpcSubnets: ec2.SubnetSelection | undefined,
  cacheSubnets: ec2.SubnetSelection | undefined): string[] {
  const problems: string[] = [];
  const has = `it has ${describeSubnets(vpc)}`;
  /** Why the selection matches nothing, or undefined when it matches some subnet. */
  const mismatch = (name: string, selection: ec2.SubnetSelection): string | undefined => {
    let names = '';
    try {
      if (vpc.selectSubnets(selection).subnets.length > 0) return undefined;
    } catch (e) {
      // CDK's message is the one place that lists the VPC's subnet group names.
      const groups = /Available names: (.*)$/.exec((e as Error).message)?.[1];
      if (groups) names = `; its subnet groups are ${groups.split(',').join(', ')}`;
    }
    return `${name} (${describeSelection(selection)}) matches no subnet of vpc (${has}${names})`;
  };
  const onlyPublic = 'the proxy runs in public subnets, the only ones where its Elastic IPs are reachable and it ' +
    'reaches packages and AWS APIs without a NAT gateway';
  if (vpcSubnets === undefined) {
    if (vpc.publicSubnets.length === 0) {
      problems.push(`vpc has no public subnets (${has}): ${onlyPublic}. Give a VPC with public subnets ` +
        '(publicSubnetIds, when it is imported with Vpc.fromVpcAttributes)');
    }
  } else if (vpcSubnets.subnetType !== undefined && vpcSubnets.subnetType !== ec2.SubnetType.PUBLIC) {
    problems.push(`vpcSubnets selects subnetType ${subnetTypeName(vpcSubnets.subnetType)}: ${onlyPublic}. ` +
      'Select public subnets, or leave vpcSubnets out');
  } else {
    const why = mismatch('vpcSubnets', vpcSubnets);
    if (why) problems.push(`${why}: select public subnets it has, or leave vpcSubnets out`);
    else {
      // A group name or explicit subnets may pick the VPC's private or isolated ones (subnets it does not
      // know the kind of are taken as given).
      const notPublic = new Set([...vpc.privateSubnets, ...vpc.isolatedSubnets].map((sn) => sn.subnetId));
      const wrong = vpc.selectSubnets(vpcSubnets).subnets.filter((sn) => notPublic.has(sn.subnetId));
      if (wrong.length > 0) {
        problems.push(`vpcSubnets (${describeSelection(vpcSubnets)}) selects ${wrong.length} private or isolated subnet(s): ${onlyPublic}. ` +
          'Select public subnets, or leave vpcSubnets out');
      }
    }
  }
  if (cacheSubnets !== undefined) {
    const why = mismatch('cacheSubnets', cacheSubnets);
    if (why) problems.push(`${why}: select subnets it has, or leave cacheSubnets out`);
  }
  return problems;
}

function subnetTypeName(type: ec2.SubnetType): string {
  return Object.entries(ec2.SubnetType).find(([, value]) => value === type)?.[0] ?? String(type);
}

/** The wildcard records of the app's proxies: the app's root, then `<zone> *.<domain>` and who has it. */
const RECORDS = new WeakMap<IConstruct, Map<string, string>>();

/**
 * The path of another proxy of this app with the record `*.<domain>` in `zone`, or undefined (and the
 * record is this proxy's from now on). A zone is its id, or where it is in the app when that is a token.
 */
function recordOwner(proxy: Construct, zone: route53.IHostedZone, domain: string): string | undefined {
  // HostedZone.fromLookup's first pass gives every zone the id DUMMY: not judged until it is real.
  if (zone.hostedZoneId === 'DUMMY') return undefined;
  const root = proxy.node.root;
  const records = RECORDS.get(root) ?? new Map<string, string>();
  RECORDS.set(root, records);
  const zoneKey = Token.isUnresolved(zone.hostedZoneId) ? zone.node.path : zone.hostedZoneId;
  const key = `${zoneKey} *.${domain.toLowerCase()}`;
  const owner = records.get(key);
  if (owner !== undefined && owner !== proxy.node.path) return owner;
  records.set(key, proxy.node.path);
  return undefined;
}

/** `2 public (us-east-1a, us-east-1b), 0 private, 2 isolated subnets`: AZs when they are known at synth. */
function describeSubnets(vpc: ec2.IVpc): string {
  const kinds: [string, ec2.ISubnet[]][] = [
    ['public', vpc.publicSubnets], ['private', vpc.privateSubnets], ['isolated', vpc.isolatedSubnets],
  ];
  return kinds.map(([kind, subnets]) => {
    const azs = [...new Set(subnets.map((s) => s.availabilityZone))];
    const known = azs.length > 0 && azs.every((az) => !Token.isUnresolved(az));
    return `${subnets.length} ${kind}${known ? ` (${azs.join(', ')})` : ''}`;
  }).join(', ') + ' subnets';
}

/** A selection as its props read: `subnetGroupName 'Web', availabilityZones us-east-1z`. */
function describeSelection(selection: ec2.SubnetSelection): string {
  const parts: string[] = [];
  if (selection.subnetType !== undefined) parts.push(`subnetType ${subnetTypeName(selection.subnetType)}`);
  if (selection.subnetGroupName !== undefined) parts.push(`subnetGroupName '${selection.subnetGroupName}'`);
  if (selection.availabilityZones !== undefined) parts.push(`availabilityZones ${selection.availabilityZones.join(', ')}`);
  if (selection.subnets !== undefined) parts.push(`subnets ${selection.subnets.map((s) => s.subnetId).join(', ')}`);
  if (selection.subnetFilters !== undefined) parts.push(`${selection.subnetFilters.length} subnetFilters`);
  return parts.join(', ') || 'an empty selection';
}

/**
 * An immutable role (`Role.fromRoleArn(..., { mutable: false })`, a role of another account,
 * `withoutPolicyUpdates()`) answers `statementAdded: true` and keeps nothing, unless it was imported
 * with `addGrantsToResources`. aws-cdk-lib does not export its class: its property-injection ID names it.
 */
function dropsStatements(role: iam.IRole): boolean {
  return (role.constructor as { PROPERTY_INJECTION_ID?: string }).PROPERTY_INJECTION_ID === 'aws-cdk-lib.aws-iam.ImmutableRole';
}

/** The role's name, or its ARN, for a message; tokens say nothing to a reader. */
function describeRole(role: iam.IRole): string {
  const known = [role.roleName, role.roleArn].find((v) => !Token.isUnresolved(v));
  return known ? `'${known}'` : role.node.path;
}

/**
 * A cluster's name from its name or its ARN (`arn:aws:ecs:us-east-1:123456789012:cluster/prod`); a
 * token that stands for an ARN (`cluster.clusterArn`, a GetAtt or a formatted ARN) is cut to its name in
 * the template.
 */
function clusterNameOf(cluster: string, scope: IConstruct): string {
  if (!Token.isUnresolved(cluster)) return CLUSTER_ARN.exec(cluster)?.[3] ?? cluster;
  return standsForArn(Stack.of(scope).resolve(cluster)) ? Arn.extractResourceName(cluster, 'cluster') : cluster;
}

/**
 * What a machineImage says of itself at synth that rules it out: Windows, or, for an image named by an
 * SSM parameter (AWS's own, such as `latestAmazonLinux2023()`, whose CPU type defaults to x86_64), a
 * parameter name that says x86_64 or another distribution than Amazon Linux 2023. Read off the image, not asked with getImage(): that
 * adds to the stack it is given (a map, a parameter, a context lookup). An image given by its id says
 * neither, and is left to EC2.
 */
function machineImageProblem(image: ec2.IMachineImage): string | undefined {
  // The parameter's name is public on most of these images, amiParameterName on the ECS-optimized ones,
  // and in the props of Amazon Linux 2023's and 2's; a Windows image says so by its OS, a lookup by
  // `windows`, the ECS-optimized one by its version.
  const own = image as {
    parameterName?: unknown; amiParameterName?: unknown; os?: unknown; windowsVersion?: unknown;
    props?: { parameterName?: unknown; os?: unknown; windows?: unknown };
  };
  const name = [own.parameterName, own.amiParameterName, own.props?.parameterName].find((n): n is string => typeof n === 'string');
  const known = name !== undefined && !unresolved(name);
  const os = own.os ?? own.props?.os;
  if (os === ec2.OperatingSystemType.WINDOWS || own.props?.windows === true || own.windowsVersion !== undefined ||
      image instanceof ec2.GenericWindowsImage || (known && /ami-windows-latest\/|windows_server/i.test(name))) {
    return 'machineImage is a Windows image: the instances boot a Linux script (Amazon Linux 2023 arm64)';
  }
  if (!known) return undefined;
  // AWS's own parameters are read whole (their paths name the distribution and the CPU); a name of
  // one's own only by its last part, where such a name would say it (its folders may say anything).
  const judged = name.startsWith('/aws/service/') ? name : name.split('/').pop() ?? name;
  // The ECS-optimized images name their CPU only when it is not x86_64 (…/amazon-linux-2023/arm64/…).
  const ecsOptimized = /^\/aws\/service\/ecs\/optimized-ami\/([^/]+)\/(.*)$/.exec(name);
  if ((/x86_64|amd64/i.test(judged) && !/arm64|aarch64/i.test(judged)) || (ecsOptimized && !/(^|\/)arm64\//.test(ecsOptimized[2]))) {
    return `machineImage is an x86_64 image (SSM parameter ${name}): Graviton instances need arm64 ` +
      '(ec2.MachineImage.latestAmazonLinux2023({ cpuType: ec2.AmazonLinuxCpuType.ARM_64 }))';
  }
  // amzn2-ami-… (AWS's Amazon Linux 2 parameters), an ECS-optimized image of another distribution, Bottlerocket.
  if (/(^|\/)amzn2-/i.test(judged) || (ecsOptimized && ecsOptimized[1] !== 'amazon-linux-2023') || /^\/aws\/service\/bottlerocket\//.test(name)) {
    return `machineImage is not Amazon Linux 2023 (SSM parameter ${name}): the boot script needs it (dnf and its nodejs22 package)`;
  }
  return undefined;
}

/** A peer's CIDR (Peer.ipv4, Peer.ipv6), or undefined for a security group, a prefix list or a token. */
function cidrOfPeer(peer: ec2.IPeer): string | undefined {
  return /^[0-9a-f.:]+\/\d{1,3}$/i.test(peer.uniqueId) ? peer.uniqueId : undefined;
}

/** `{ 'Fn::GetAtt': [id, 'Arn'] }`, or a join that starts `arn:`; a Ref (a cluster's name) is not. */
function standsForArn(resolved: unknown): boolean {
  if (typeof resolved === 'string') return resolved.startsWith('arn:');
  if (typeof resolved !== 'object' || resolved === null) return false;
  const getAtt = (resolved as Record<string, unknown>)['Fn::GetAtt'];
  if (Array.isArray(getAtt)) return typeof getAtt[1] === 'string' && getAtt[1].endsWith('Arn');
  const join = (resolved as Record<string, unknown>)['Fn::Join'];
  if (Array.isArray(join) && Array.isArray(join[1])) return typeof join[1][0] === 'string' && join[1][0].startsWith('arn:');
  return false;
}

/** zoneName of an imported zone, or undefined when the zone object does not know it (fromHostedZoneId). */
function tryZoneName(zone: route53.IHostedZone): string | undefined {
  try {
    return zone.zoneName;
  } catch {
    return undefined;
  }
}
