/**
 * From CDK context (`-c key=value`, cdk.json) and `KARMA_*` env vars to the stack's props. Context wins
 * over the env var. Values from the command line are strings; values from cdk.json may be typed: both
 * are read. Every problem is collected into one error.
 */
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { ENV_NAMES, likelyMeant } from '../runtime/config';
import { canonicalV6Cidr, type DiscoveryMode } from './karma-proxy';
import type { KarmaProxyStackProps } from './karma-proxy-stack';

type Kind = 'string' | 'int' | 'bool' | 'list' | 'env';

/** Every context key the app reads, what it holds, its default, and what it means (the README's table). */
export const CONTEXT_KEYS = {
  domain: { kind: 'string', default: 'hostedZoneName; example value proxy.example.com when neither is given', doc: 'Routes are <service>-<port>-<cluster>.<domain>; the record is *.<domain>.' },
  hostedZoneId: { kind: 'string', default: 'none (no DNS record)', doc: 'Route53 hosted zone that receives the wildcard record.' },
  hostedZoneName: { kind: 'string', default: 'the domain', doc: 'Name of that zone (no lookup is made).' },
  vpcId: { kind: 'string', default: 'a new VPC, no NAT gateway', doc: 'Existing VPC; needs publicSubnetIds (and isolatedSubnetIds or privateSubnetIds with redis).' },
  publicSubnetIds: { kind: 'list', default: 'none', doc: 'Public subnets of vpcId, for the proxy.' },
  isolatedSubnetIds: { kind: 'list', default: 'none', doc: 'Isolated subnets of vpcId, for the cache.' },
  privateSubnetIds: { kind: 'list', default: 'none', doc: 'Private subnets of vpcId, for the cache when there are no isolated ones.' },
  availabilityZones: { kind: 'list', default: "the region's first AZs", doc: 'AZs of those subnets, in order.' },
  instanceType: { kind: 'string', default: 't4g.nano', doc: 'ARM Graviton instance type.' },
  minCapacity: { kind: 'int', default: '1', doc: 'Instances in steady state.' },
  maxCapacity: { kind: 'int', default: 'minCapacity', doc: 'Most instances (at most 50); one Elastic IP each.' },
  spot: { kind: 'bool', default: 'false', doc: 'Run on Spot.' },
  redis: { kind: 'bool', default: 'true (false with discovery static)', doc: 'ElastiCache Redis shared by the fleet; false keeps state in memory.' },
  redisNodeType: { kind: 'string', default: 'cache.t4g.micro', doc: 'Cache node type.' },
  allowedCidrs: { kind: 'list', default: '0.0.0.0/0', doc: 'Who may reach ports 80 and 443.' },
  metricsCidr: { kind: 'string', default: 'none', doc: 'CIDR allowed to reach the metrics port (6970).' },
  discovery: { kind: 'string', default: 'ecs', doc: 'ecs, asg, tag or static (NODE_FILTER).' },
  clusters: { kind: 'list', default: 'any', doc: 'ECS clusters that may be routed to (ALLOWED_CLUSTERS).' },
  ports: { kind: 'list', default: 'any', doc: 'Target ports or ranges that may be routed to (ALLOWED_PORTS).' },
  staticTargets: { kind: 'list', default: 'none', doc: 'host:port targets with discovery static (STATIC_TARGETS).' },
  proxyEnv: { kind: 'env', default: 'none', doc: 'Runtime env vars: JSON object or KEY=value,KEY=value; overrides the rest.' },
  stackName: { kind: 'string', default: 'KarmaProxy', doc: 'Name of the CloudFormation stack.' },
} satisfies Record<string, { kind: Kind; default: string; doc: string }>;

export type ContextKey = keyof typeof CONTEXT_KEYS;

/** What the app uses when no domain and no hosted zone are given: synth works, deploy would not. */
export const EXAMPLE_CONTEXT = {
  domain: 'proxy.example.com',
  hostedZoneId: 'Z0123456789EXAMPLE',
  hostedZoneName: 'example.com',
} as const;

/**
 * Keys whose default opens the proxy wide, so that an empty value (a template's unset variable) is
 * refused rather than read as that default; what the default is.
 */
const EMPTY_IS_WIDE: Partial<Record<ContextKey, string>> = {
  allowedCidrs: 'the default (0.0.0.0/0), or give [] to open ports 80 and 443 to no one',
  clusters: 'the default (any cluster of the account), or name the clusters to serve',
  ports: 'the default (any port), or name the ports to serve',
};

/** A zone id as `aws route53 list-hosted-zones` prints it (`/hostedzone/Z0123...`), as CloudFormation takes it (`Z0123...`). */
export function withoutZonePrefix(id: string): string {
  return id.replace(/^\/hostedzone\//, '');
}

/**
 * What is wrong with a hosted zone id (its `/hostedzone/` taken off), or undefined: Route53 zone ids are
 * upper-case letters and digits (Z0123456789ABCDEFGHIJ); a zone's name is a common slip. The app's
 * context and the stack's props alike.
 */
export function hostedZoneIdProblem(id: string): string | undefined {
  if (/^[A-Z0-9]{1,32}$/.test(id)) return undefined;
  return `hostedZoneId '${id}' is not a Route53 hosted zone id such as Z0123456789ABCDEFGHIJ` +
    (id.includes('.') ? ' (that looks like the zone\'s name: give it as hostedZoneName)' : '');
}

/** `hostedZoneId` -> `KARMA_HOSTED_ZONE_ID`. */
export function envVarName(key: string): string {
  return `KARMA_${key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()}`;
}

/** Reads one context key, e.g. `(key) => app.node.tryGetContext(key)`. */
export type ContextReader = (key: string) => unknown;

/** What the app builds its stack from, read from context and env vars. */
export interface ContextResult {
  /** Name of the CloudFormation stack (`stackName`). */
  readonly stackName: string;
  /** The stack's props; unset keys are left out, so that the construct's defaults apply. */
  readonly props: KarmaProxyStackProps;
  /** True when the example domain and zone were used. */
  readonly usedExamples: boolean;
  /** Things to tell the user (not errors). */
  readonly warnings: string[];
}

// As the runtime reads its own (config.ts's bool), Go's `t` and `f` too: one spelling of a boolean works everywhere.
const TRUE = ['true', 't', '1', 'yes', 'on'];
const FALSE = ['false', 'f', '0', 'no', 'off'];

/**
 * What the app would ignore without a word: a context key (`-c instanceTpye=c7g.large`) or a `KARMA_*`
 * env var that is none of its settings. CDK's own keys (`@aws-cdk/...`, `aws:cdk:...`, `cli-telemetry`)
 * hold a `/`, a `:` or a dash, and are left alone.
 */
export function straySettings(contextKeys: readonly string[], env: Readonly<Record<string, string | undefined>>): string[] {
  const keys = Object.keys(CONTEXT_KEYS);
  const envNames = keys.map(envVarName);
  const out: string[] = [];
  for (const key of contextKeys) {
    if (keys.includes(key)) continue;
    if (!/^[A-Za-z][A-Za-z0-9_]*$/.test(key)) {
      // CDK's own keys (`@aws-cdk/...`, `aws:cdk:...`, `cli-telemetry`) are none of ours; one of ours spelt
      // in kebab or dotted case (`instance-type`) is.
      const flat = key.replace(/[-.]/g, '').toLowerCase();
      const meant = keys.find((k) => k.toLowerCase() === flat);
      if (meant) out.push(`context '${key}' is not a setting of this app and is ignored; did you mean ${meant}?`);
      continue;
    }
    const setting = proxySetting(key);
    const meant = setting ? undefined : likelyMeant(key, keys);
    const hint = setting ? settingHint(setting, (k) => k, `-c proxyEnv='${setting}=...'`) : meant && `did you mean ${meant}?`;
    out.push(`context '${key}' is not a setting of this app and is ignored${hint ? `; ${hint}` : ''}`);
  }
  for (const name of Object.keys(env)) {
    if (!name.startsWith('KARMA_') || envNames.includes(name) || env[name] === undefined) continue;
    const setting = proxySetting(name.slice('KARMA_'.length));
    const meant = setting ? undefined : likelyMeant(name, envNames);
    const hint = setting ? settingHint(setting, envVarName, `KARMA_PROXY_ENV='${setting}=...'`) : meant && `did you mean ${meant}?`;
    out.push(`${name} is not a setting of this app and is ignored${hint ? `; ${hint}` : ''}`);
  }
  return out;
}

/**
 * The proxy's settings that are keys of this app under another name: a seed user's `-c nodeFilter=tag`
 * (or `NODE_FILTER`) means `discovery`, whose IAM permissions follow it.
 */
const SETTING_KEYS: Readonly<Record<string, ContextKey>> = {
  NODE_FILTER: 'discovery',
  ALLOWED_CLUSTERS: 'clusters',
  ALLOWED_PORTS: 'ports',
  STATIC_TARGETS: 'staticTargets',
  DOMAIN: 'domain',
};

/** The proxy's env var a stray key names (`nodeFilter`, `NODE_FILTER`, `node_filter`), if any. */
function proxySetting(key: string): string | undefined {
  const name = key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
  return ENV_NAMES.includes(name) ? name : undefined;
}

/** The proxy's settings that the deployment fixes: what it is there, in place of a key that would be refused. */
const FIXED_BY_THE_STACK: Readonly<Record<string, string>> = {
  PORT: 'the deployed proxy listens on port 80 (its security group and health probe are wired for it)',
  HOST: "the deployed proxy listens on every address of its instance",
  AWS_REGION: "the proxy discovers in the stack's region: deploy the stack there",
  AWS_DEFAULT_REGION: "the proxy discovers in the stack's region: deploy the stack there",
  REDIS_URL: "a Redis of your own is redis=false with REDIS_URL in proxyEnv (the stack's own cache is the default)",
  REDIS_AUTH_SECRET_ARN: 'its secret goes with a Redis of your own: redis=false with REDIS_URL and REDIS_AUTH_SECRET_ARN in proxyEnv',
};

/** Where a stray key that names one of the proxy's settings goes instead: the app's key for it, or proxyEnv. */
function settingHint(setting: string, keyName: (key: ContextKey) => string, throughProxyEnv: string): string {
  const key = SETTING_KEYS[setting];
  if (key) return `did you mean ${keyName(key)}?`;
  return FIXED_BY_THE_STACK[setting] ?? `did you mean ${throughProxyEnv} (the proxy's own setting)?`;
}

/** Reads every key; throws one error naming every bad one. */
export function propsFromContext(
  readContext: ContextReader,
  env: Readonly<Record<string, string | undefined>> = process.env,
): ContextResult {
  const { result, problems } = contextSettings(readContext, env);
  if (problems.length > 0) throw new Error(`Invalid Karma Proxy settings:\n  - ${problems.join('\n  - ')}`);
  return result;
}

/**
 * Reads every key: the props from what is good, and every problem with the rest (its key left out), so
 * that the app can also learn what the stack would refuse of the good ones, and say all in one error;
 * `settled` false when discovery, the domain or its zone is refused, on which the stack's checks hang.
 */
export function contextSettings(
  readContext: ContextReader,
  env: Readonly<Record<string, string | undefined>> = process.env,
): { result: ContextResult; problems: string[]; settled: boolean } {
  const problems: string[] = [];
  /** What everything else hangs on (discovery, the domain and its zone) is refused: the rest is not judged. */
  let unsettled = false;
  const warnings: string[] = [];

  const raw = (key: ContextKey): { value: unknown; from: string } | undefined => {
    const c = readContext(key);
    if (c !== undefined && c !== null && c !== '') return { value: c, from: `context '${key}'` };
    // `-c allowedCidrs=` (or `-c clusters=$UNSET`) reads as nothing given, whose default opens the proxy
    // to everyone (or to every cluster and port): not what an empty value asks for. Said, not guessed.
    const wide = EMPTY_IS_WIDE[key];
    if (c === '' && wide) {
      problems.push(`context '${key}' is empty: leave it out for ${wide}`);
      return undefined;
    }
    const name = envVarName(key);
    const e = env[name];
    if (e !== undefined && e.trim() !== '') return { value: e, from: name };
    if (c === undefined && e !== undefined && wide) problems.push(`${name} is empty: unset it for ${wide}`);
    return undefined;
  };

  const str = (key: ContextKey): string | undefined => {
    const r = raw(key);
    if (!r) return undefined;
    if (typeof r.value !== 'string' && typeof r.value !== 'number') {
      problems.push(`${r.from} must be a string`);
      if (key === 'domain' || key === 'hostedZoneId' || key === 'hostedZoneName' || key === 'discovery') unsettled = true;
      return undefined;
    }
    return String(r.value).trim();
  };
  const int = (key: ContextKey): number | undefined => {
    const r = raw(key);
    if (!r) return undefined;
    const s = String(r.value).trim();
    // `[2]` in cdk.json prints as 2, but is a list.
    if ((typeof r.value !== 'string' && typeof r.value !== 'number') || !/^\d+$/.test(s)) {
      problems.push(`${r.from} must be a whole number (got '${s}')`);
      return undefined;
    }
    return Number(s);
  };
  const bool = (key: ContextKey): boolean | undefined => {
    const r = raw(key);
    if (!r) return undefined;
    if (typeof r.value === 'boolean') return r.value;
    const s = String(r.value).trim().toLowerCase();
    if (TRUE.includes(s)) return true;
    if (FALSE.includes(s)) return false;
    problems.push(`${r.from} must be true or false (got '${String(r.value)}')`);
    return undefined;
  };
  const list = (key: ContextKey): string[] | undefined => {
    const r = raw(key);
    if (!r) return undefined;
    let v: unknown = r.value;
    // A JSON list, unless it is a comma-separated list of IPv6 targets ([fd00::1]:80,[fd00::2]:80).
    if (typeof v === 'string' && v.trim().startsWith('[') && !/^\[[0-9a-f:.]+\]:\d+(\s*,\s*\S+)*$/i.test(v.trim())) {
      try {
        v = JSON.parse(v);
      } catch {
        problems.push(`${r.from} is not a JSON list nor a comma-separated list`);
        return undefined;
      }
    }
    let items: string[] | undefined;
    if (Array.isArray(v)) items = v.map((x) => String(x).trim()).filter((x) => x !== '');
    else if (typeof v === 'string' || typeof v === 'number') items = String(v).split(',').map((x) => x.trim()).filter((x) => x !== '');
    // An allow-list of nothing would allow everything (the construct reads an empty list as "not set").
    if (items?.length === 0 && (key === 'clusters' || key === 'ports')) {
      problems.push(`${r.from} is an empty list: leave it out for ${EMPTY_IS_WIDE[key]}`);
      return undefined;
    }
    if (items) return items;
    problems.push(`${r.from} must be a list (a,b,c or a JSON list)`);
    return undefined;
  };
  const envMap = (key: ContextKey): Record<string, string> | undefined => {
    const r = raw(key);
    if (!r) return undefined;
    let v: unknown = r.value;
    if (typeof v === 'string' && v.trim().startsWith('{')) {
      try {
        v = JSON.parse(v);
      } catch {
        problems.push(`${r.from} is not valid JSON`);
        return undefined;
      }
    }
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      // Numbers and booleans read as they print; an object or null would become '[object Object]' or 'null'.
      const bad = Object.entries(v).filter(([, x]) => !['string', 'number', 'boolean'].includes(typeof x)).map(([k]) => k);
      if (bad.length > 0) problems.push(`${r.from}: ${bad.join(', ')} must be a string, a number or a boolean`);
      return Object.fromEntries(Object.entries(v).filter(([k]) => !bad.includes(k)).map(([k, x]) => [k, String(x)]));
    }
    if (typeof v === 'string') {
      const out: Record<string, string> = {};
      // Split before each NAME= (upper case, as env var names are), so that a value may itself hold
      // commas, and lower-case query keys: ALLOWED_PORTS=80,8080, HEALTH_CHECK_PATH=/health?a=1,b=2.
      for (const pair of v.split(/[,;\n](?=\s*[A-Z_][A-Z0-9_]*=)/)) {
        const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(pair);
        if (!m) {
          if (pair.trim() !== '') problems.push(`${r.from}: '${pair.trim()}' is not KEY=value`);
          continue;
        }
        out[m[1]] = m[2].trim();
      }
      return out;
    }
    problems.push(`${r.from} must be a JSON object or KEY=value,KEY=value`);
    return undefined;
  };

  let domain = str('domain');
  let hostedZoneId = str('hostedZoneId');
  if (hostedZoneId !== undefined) hostedZoneId = withoutZonePrefix(hostedZoneId);
  let hostedZoneName = str('hostedZoneName');
  let usedExamples = false;
  const zoneIdProblem = hostedZoneId === undefined ? undefined : hostedZoneIdProblem(hostedZoneId);
  if (zoneIdProblem) {
    unsettled = true;
    problems.push(zoneIdProblem);
  }
  // A pool (asg, tag, static) serves every Host: it needs no domain, and no record unless one is asked for.
  const discovery = str('discovery');
  const pool = discovery === 'asg' || discovery === 'tag' || discovery === 'static';
  if (!domain && !hostedZoneId && hostedZoneName) {
    unsettled = true;
    problems.push('hostedZoneName needs hostedZoneId (context hostedZoneId or KARMA_HOSTED_ZONE_ID): no lookup is made');
  } else if (!domain && !hostedZoneId && pool) {
    warnings.push(`no domain and no hostedZoneId: no DNS record is created; clients reach the ${discovery} pool on the Addresses output.`);
  } else if (!domain && !hostedZoneId) {
    usedExamples = true;
    domain = EXAMPLE_CONTEXT.domain;
    hostedZoneId = EXAMPLE_CONTEXT.hostedZoneId;
    hostedZoneName = hostedZoneName ?? EXAMPLE_CONTEXT.hostedZoneName;
    warnings.push(
      `no domain and no hostedZoneId given: synthesizing with example values (domain=${EXAMPLE_CONTEXT.domain}, ` +
      `hostedZoneId=${EXAMPLE_CONTEXT.hostedZoneId}, hostedZoneName=${hostedZoneName}). Deploy with ` +
      '`npx cdk deploy -c domain=<your domain> -c hostedZoneId=<your zone id>`, or set KARMA_DOMAIN and KARMA_HOSTED_ZONE_ID.');
  } else if (!domain && hostedZoneName) {
    // The record is then *.<zone name>, as the README's table says.
    domain = hostedZoneName;
  } else if (!domain) {
    unsettled = true;
    problems.push('hostedZoneId needs domain or hostedZoneName (context domain, hostedZoneName, or KARMA_DOMAIN)');
  } else if (!hostedZoneId) {
    warnings.push(`no hostedZoneId: no DNS record is created; point *.${domain} at the Addresses output yourself.`);
  }

  const instanceTypeName = str('instanceType');
  if (discovery !== undefined && !['ecs', 'asg', 'tag', 'static'].includes(discovery)) {
    unsettled = true;
    problems.push(`discovery must be ecs, asg, tag or static (got '${discovery}')`);
  }
  const metricsCidr = str('metricsCidr');
  const peer = (cidr: string): ec2.IPeer | undefined => {
    try {
      const v6 = cidr.includes(':');
      // Peer checks the shape only: a prefix past the address's length would fail at deploy, not here.
      if (Number(cidr.split('/')[1]) > (v6 ? 128 : 32)) throw new Error('prefix too long');
      return v6 ? ec2.Peer.ipv6(canonicalV6Cidr(cidr)) : ec2.Peer.ipv4(cidr);
    } catch {
      problems.push(`metricsCidr '${cidr}' is not a CIDR such as 10.0.0.0/16`);
      return undefined;
    }
  };
  const ports = list('ports')?.map((p) => (/^\d+$/.test(p) ? Number(p) : p));

  const props: KarmaProxyStackProps = {
    domain,
    hostedZoneId,
    hostedZoneName,
    vpcId: str('vpcId'),
    publicSubnetIds: list('publicSubnetIds'),
    isolatedSubnetIds: list('isolatedSubnetIds'),
    privateSubnetIds: list('privateSubnetIds'),
    availabilityZones: list('availabilityZones'),
    instanceType: instanceTypeName ? new ec2.InstanceType(instanceTypeName) : undefined,
    minCapacity: int('minCapacity'),
    maxCapacity: int('maxCapacity'),
    spot: bool('spot'),
    redis: bool('redis'),
    redisNodeType: str('redisNodeType'),
    allowedCidrs: list('allowedCidrs'),
    metricsPeer: metricsCidr ? peer(metricsCidr) : undefined,
    discovery: discovery as DiscoveryMode | undefined,
    clusters: list('clusters'),
    ports,
    staticTargets: list('staticTargets'),
    environment: envMap('proxyEnv'),
  };
  let stackName = str('stackName') ?? 'KarmaProxy';
  if (!/^[A-Za-z][A-Za-z0-9-]{0,127}$/.test(stackName)) {
    problems.push(`stackName '${stackName}' must start with a letter and hold only letters, digits and dashes`);
    stackName = 'KarmaProxy';
  }

  // Leave unset keys out, so that the construct's defaults apply.
  const defined = Object.fromEntries(Object.entries(props).filter(([, v]) => v !== undefined)) as KarmaProxyStackProps;
  return { result: { stackName, props: defined, usedExamples, warnings }, problems, settled: !unsettled };
}
