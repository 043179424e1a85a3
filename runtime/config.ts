/**
 * The one table of runtime settings: every environment variable, its default and its check.
 *
 * The names are the contract with the CDK construct (it writes them to /etc/karma-proxy/env) and with
 * users of the two systems before us: the stateless load balancer's variables keep their name, meaning
 * and unit (seconds, and minutes for CIRCUIT_BREAKER_TIMEOUT); Karma's REDIS_URL keeps its forms.
 */
import * as os from 'node:os';
import { isIP } from 'node:net';
import { canonicalAddress, isLoopbackAddress, ownAddresses } from './address';
import { makeTarget, MAX_TIMER_MS, Target } from './types';

export type NodeFilter = 'ecs' | 'asg' | 'tag' | 'static';
export type Mode = 'http' | 'tcp';
export type IpPreference = 'private' | 'public';

/** An inclusive range of status codes or ports. */
export interface Range {
  readonly from: number;
  readonly to: number;
}

export interface Config {
  readonly port: number;
  readonly host: string;
  /** Lower-case, no leading or trailing dot; '' when unset (allowed outside ecs mode). */
  readonly domain: string;
  readonly nodeFilter: NodeFilter;
  readonly mode: Mode;
  readonly staticTargets: readonly Target[];
  readonly awsRegion: string | undefined;
  readonly tagName: string;
  readonly tagValue: string;
  readonly asgName: string;
  readonly targetPort: number;
  readonly nodeCheckPeriodMs: number;
  /** null when HEALTH_CHECK_PATH=off: no active checks. */
  readonly healthCheckPath: string | null;
  /** `tcp`: a check passes when a connection opens (targets that do not speak HTTP). */
  readonly healthCheckProtocol: 'http' | 'tcp';
  readonly healthCheckPeriodMs: number;
  readonly healthCheckTimeoutMs: number;
  readonly healthyThreshold: number;
  readonly unhealthyThreshold: number;
  readonly healthCheckMatcher: readonly Range[];
  readonly circuitBreakerThreshold: number;
  readonly circuitBreakerTimeoutMs: number;
  readonly retries: number;
  readonly poolSize: number;
  readonly poolTimeoutMs: number;
  readonly upstreamTimeoutMs: number;
  readonly shutdownTimeoutMs: number;
  readonly logConnections: boolean;
  readonly trustForwardedProto: boolean;
  readonly metricsPort: number;
  readonly metricsHost: string;
  readonly workers: number;
  readonly workerStuckTimeoutMs: number;
  /** Empty means any. Lower-case. */
  readonly allowedClusters: readonly string[];
  /** Empty means any. */
  readonly allowedPorts: readonly Range[];
  readonly healthyTasksOnly: boolean;
  readonly ecsCaseLookup: boolean;
  readonly loopbackTargets: boolean;
  readonly ipPreference: IpPreference;
  readonly negativeCacheTtlMs: number;
  readonly maxRoutes: number;
  readonly maxTargets: number;
  readonly newRouteRate: number;
  readonly routeIdleTtlMs: number;
  readonly redisUrl: string | undefined;
  readonly redisAuthSecretArn: string | undefined;
  readonly maxConnections: number;
  readonly idleTimeoutMs: number;
  readonly headersTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly maxHeaderSize: number;
  readonly maxHeaders: number;
}

type Env = Readonly<Record<string, string | undefined>>;

/** A default may depend on the discovery mode: ALB-like for ecs, the stateless load balancer's for pools. */
type Default<T> = T | { readonly ecs: T; readonly pool: T };

interface Setting<T> {
  readonly env: string;
  readonly doc: string;
  /** Shown in docs; the parse result of this text is the default. undefined = unset/optional. */
  readonly default: Default<string | undefined>;
  readonly parse: (raw: string) => T;
  /** What of a bad value the error may repeat, when the value can hold a secret. @default the value */
  readonly shown?: (raw: string) => string;
}

class Invalid extends Error {}

// ---- parsers: each throws Invalid with a message that completes "NAME must be ..." ----

/**
 * A whole number in decimal digits, a leading + allowed (Go's strconv.Atoi form). The Stateless Load
 * Balancer's viper also read Go literals (`0x10`, `1_000`, and `010` as octal 8): no setting is written
 * so, and those are refused rather than read another way, except that a leading zero stays decimal.
 */
/** POOL_SIZE's largest value, and what 0 stands for. */
const NO_POOL_CAP = 100_000;

const integer = (min: number, max: number) => (raw: string): number => {
  if (!/^\+?\d+$/.test(raw.trim())) throw new Invalid(`an integer from ${min} to ${max}`);
  const n = Number(raw.trim());
  if (n < min || n > max) throw new Invalid(`an integer from ${min} to ${max}`);
  return n;
};

/** A positive duration in `unit`, fractions allowed, returned in milliseconds. */
const duration = (unit: 'seconds' | 'minutes', opts: { zero?: boolean } = {}) => (raw: string): number => {
  const t = raw.trim();
  // Decimal forms as Go's ParseFloat reads them: 2, +2, 0.5, .5, 2., 1e3 (no minus, hex, Inf or NaN).
  if (!/^\+?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?$/i.test(t)) throw new Invalid(`a number of ${unit}${opts.zero ? '' : ' above 0'}`);
  const n = Number(t);
  if (!(n > 0 || (opts.zero && n === 0))) throw new Invalid(`a number of ${unit}${opts.zero ? '' : ' above 0'}`);
  const ms = Math.round(n * (unit === 'minutes' ? 60_000 : 1000));
  // Timers count whole milliseconds: a positive value that rounds to 0 would mean "never" to some of them.
  if (ms === 0 && n > 0) throw new Invalid(`${opts.zero ? '0 or ' : ''}at least ${unit === 'minutes' ? '0.00002' : '0.001'} ${unit}`);
  if (ms > MAX_TIMER_MS) throw new Invalid(`at most ${unit === 'minutes' ? 35_791 : 2_147_483} ${unit}`);
  return ms;
};

/** Go's strconv.ParseBool forms (what the seeds read: 1, t, true, 0, f, false, any case), and yes/no, on/off. */
const bool = (raw: string): boolean => {
  const t = raw.trim().toLowerCase();
  if (['true', 't', '1', 'yes', 'on'].includes(t)) return true;
  if (['false', 'f', '0', 'no', 'off', ''].includes(t)) return false;
  throw new Invalid('true or false');
};

const oneOf = <T extends string>(...values: T[]) => (raw: string): T => {
  const t = raw.trim().toLowerCase() as T;
  if (!values.includes(t)) throw new Invalid(`one of ${values.join(', ')}`);
  return t;
};

const text = (raw: string): string => {
  if (raw.trim() === '') throw new Invalid('a non-empty string');
  return raw.trim();
};

const optionalText = (raw: string): string | undefined => (raw.trim() === '' ? undefined : raw.trim());

/** A region name as the SDK takes one (a host label: `eu-west-1`, `us-gov-west-1`), or unset. */
const region = (raw: string): string | undefined => {
  const t = optionalText(raw);
  if (t !== undefined && !/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(t)) throw new Invalid('a region name such as eu-west-1');
  return t;
};

const list = (raw: string): string[] =>
  raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');

/** `8080,9000-9100`: ports and inclusive ranges. */
export const parseRanges = (min: number, max: number, what: string) => (raw: string): Range[] =>
  list(raw).map((item) => {
    const m = /^(\d+)(?:-(\d+))?$/.exec(item);
    const from = m ? Number(m[1]) : NaN;
    const to = m ? Number(m[2] ?? m[1]) : NaN;
    if (!m || from < min || to > max || from > to) {
      throw new Invalid(`a comma-separated list of ${what} or ranges (${min}-${max}), and '${item}' is not one`);
    }
    return { from, to };
  });

/** An ECS cluster's name as ECS allows it: letters, digits, hyphens, underscores; up to 255. */
export const CLUSTER_NAME = /^[A-Za-z0-9_-]{1,255}$/;
/** An ECS cluster's ARN: its region, its account and its name. */
export const CLUSTER_ARN = /^arn:aws[a-z-]*:ecs:([a-z0-9-]*):(\d{12}):cluster\/(.+)$/;

/**
 * ECS cluster names, each as ECS names it, or its ARN, which stands for the name at its end: a Host
 * can only ever name the cluster, so an ARN kept whole would refuse every request.
 */
const clusterNames = (raw: string): string[] =>
  list(raw).map((item) => {
    const name = CLUSTER_ARN.exec(item)?.[3] ?? item;
    if (!CLUSTER_NAME.test(name)) {
      throw new Invalid(`a comma-separated list of ECS cluster names (letters, digits, - and _) or ARNs, and '${item}' is neither`);
    }
    return name;
  });

const hostnameRe = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;
/** Labels that are all numbers (`999.1.1.1`, `1.2`): a mistyped IPv4 address, never a host name. */
const numericLabels = (name: string): boolean => name.split('.').every((l) => /^\d+$/.test(l));

/** An address to listen on: an IPv4 or IPv6 literal, or a host name (resolved when listening). */
const listenAddress = (raw: string): string => {
  let t = raw.trim();
  // `[::]` as Go's net.Listen and URLs write an IPv6 address next to a port.
  if (t.startsWith('[') && t.endsWith(']') && isIP(t.slice(1, -1)) === 6) t = t.slice(1, -1);
  if (isIP(t) !== 0) return t;
  // All-numeric labels are a mistyped IPv4 (999.1.1.1), not a name.
  if (t.length > 253 || !hostnameRe.test(t.toLowerCase()) || numericLabels(t)) {
    throw new Invalid('an IP address (0.0.0.0, ::, 127.0.0.1) or a host name');
  }
  return t;
};

const domainName = (raw: string): string => {
  const d = raw.trim().toLowerCase().replace(/^\.+|\.+$/g, '');
  // Only dots (`..`) is a domain given wrong, not one left out.
  if (d === '' && raw.trim() !== '') throw new Invalid('a DNS domain such as example.com');
  if (d === '') return '';
  if (d.length > 253 || !hostnameRe.test(d)) throw new Invalid('a DNS domain such as example.com');
  return d;
};

/** `ip:port,[v6]:port,host:port`: the pool of static mode. Every entry that is not one is named. */
const staticTargets = (raw: string): Target[] => {
  const targets: Target[] = [];
  const bad: string[] = [];
  for (const item of list(raw)) {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]+)):(\d+)$/.exec(item);
    const port = m ? Number(m[3]) : NaN;
    const host = m ? (m[1] ?? m[2]).toLowerCase() : '';
    // A bracketed host is an IPv6 literal; an unbracketed one an IPv4 literal or a name, whose labels
    // are not all numbers (999.1.1.1 is a mistyped address, not a name).
    const hostOk = m && (m[1] ? isIP(host) === 6 : isIP(host) === 4 || (hostnameRe.test(host) && !numericLabels(host)));
    if (!m || port < 1 || port > 65535 || !hostOk) bad.push(`'${item}'`);
    else targets.push(makeTarget(host, port));
  }
  if (bad.length === 1) throw new Invalid(`a comma-separated list of host:port (ports 1-65535), and ${bad[0]} is not one`);
  if (bad.length > 1) throw new Invalid(`a comma-separated list of host:port (ports 1-65535), and ${bad.join(', ')} are not`);
  return targets;
};

/** A Redis host: an IP literal (`[v6]`) or a DNS name, `_` allowed (a compose service's); no stray quote. */
const redisHostRe = /^(?:\[[0-9a-f:.]+\]|[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?)$/i;

/** A host as Karma's bare `host:port` writes it (no scheme, userinfo or path; IPv6 in brackets): alone, and with its port. */
const BARE_REDIS_HOST = '[^/:@\\s\\[\\]]+|\\[[0-9a-fA-F:.]+\\]';
const bareRedisHostRe = new RegExp(`^(?:${BARE_REDIS_HOST})$`);
const bareRedisAddressRe = new RegExp(`^(${BARE_REDIS_HOST}):(\\d{1,5})$`);

/** A Redis host: redisHostRe's, and all-numeric labels only as an IPv4 address (`1.2`, `999.1.1.1` are mistyped ones). */
const redisHost = (h: string): boolean => redisHostRe.test(h) && (isIP(h) !== 0 || !numericLabels(h.replace(/\.$/, '')));

/**
 * Karma's bare `host:port` (`[v6]:port` too), or a redis:// / rediss:// URL (user and password allowed).
 * `:port` is this machine, as go-redis dialled it. A host alone is on Redis's port, 6379, when it is
 * plainly a host (a dotted name, localhost, an IP address): a single word is refused, as it may be a
 * token pasted in the wrong place (which a look-up would send to DNS) or `true` meant as "on".
 */
const redisUrl = (raw: string): string | undefined => {
  let t = raw.trim();
  if (t === '') return undefined;
  // The seed's README wrote REDIS_URL="..." for its .env file, which drops the quotes; docker's
  // --env-file and a unit's Environment= of the wrong shape keep them.
  if (/^(["']).*\1$/s.test(t)) throw new Invalid('a redis:// or rediss:// URL, or host:port, without the quotes around it');
  if (/^:\d{1,5}$/.test(t)) t = `127.0.0.1${t}`;
  else if (bareRedisHostRe.test(t) && redisHost(t) && (/^\[|\./.test(t) || t.toLowerCase() === 'localhost')) t = `${t}:6379`;
  const bare = bareRedisAddressRe.exec(t);
  if (bare) {
    if (!redisHost(bare[1])) throw new Invalid(`host:port whose host is an IP address or a DNS name, and '${bare[1]}' is not one`);
    if (Number(bare[2]) < 1 || Number(bare[2]) > 65535) throw new Invalid('a redis:// or rediss:// URL, or host:port with a port from 1 to 65535');
    return `redis://${t}`;
  }
  let u: URL;
  try {
    u = new URL(t);
  } catch {
    throw new Invalid('a redis:// or rediss:// URL, or host:port');
  }
  if ((u.protocol !== 'redis:' && u.protocol !== 'rediss:') || u.hostname === '') {
    throw new Invalid('a redis:// or rediss:// URL, or host:port');
  }
  if (u.hostname.length > 253 || !redisHost(u.hostname)) throw new Invalid('a redis:// or rediss:// URL whose host is an IP address or a DNS name');
  // The path is the database number (redis://host:6379/2): anything else the client would send as
  // SELECT NaN, whose refusal it throws where nobody catches it.
  if (u.pathname !== '' && u.pathname !== '/' && !/^\/\d{1,9}$/.test(u.pathname)) {
    throw new Invalid('a redis:// or rediss:// URL whose path, if any, is a database number such as /0');
  }
  // The client percent-decodes user and password: a token with a bare `%` (or `#`, `@`, `/`, which end
  // the password early) must be written encoded, or it fails only at connect, far from its cause.
  try {
    decodeURIComponent(u.username);
    decodeURIComponent(u.password);
  } catch {
    throw new Invalid('a URL whose user and password are percent-encoded (% as %25), or the token in REDIS_AUTH_SECRET_ARN');
  }
  return t;
};

/**
 * A Redis URL as an error may show it: everything before its last `@` (user and password, with or
 * without a scheme) and any `password=` value left out.
 */
const withoutCredentials = (raw: string): string => {
  // Quoted, it is masked as the same value unquoted would be (a quoted host:port is shown whole).
  const quoted = /^(\s*)(["'])(.*)\2(\s*)$/s.exec(raw);
  if (quoted) return `${quoted[1]}${quoted[2]}${withoutCredentials(quoted[3])}${quoted[2]}${quoted[4]}`;
  const at = raw.lastIndexOf('@');
  const scheme = /^[a-z][a-z0-9+.-]*:\/*/i.exec(raw)?.[0] ?? '';
  // Without an @, only a plain host[:port][/db] is shown: `redis://:token` (its @ lost, or cut at a
  // `#` in .env), or a token pasted alone, is a password all the same.
  // A single word with neither scheme, dot nor port may be a token pasted alone: not shown either.
  if (at === -1) return /^([a-z][a-z0-9+.-]*:\/\/)?[a-z0-9.-]*(:\d*)?(\/\d*)?$/i.test(raw.trim()) && /[.:/]/.test(raw) ? raw : `${scheme}***`;
  const rest = `${at >= scheme.length ? scheme : ''}***${raw.slice(at)}`;
  return rest.replace(/(password=)[^&#]*/gi, '$1***');
};

/**
 * An error's text with the userinfo of any value in it masked (`http://user:password@host`, or
 * `user:password@host` in a list), up to the value's last `@`: a URL pasted where an address belongs may
 * carry a password. (server.ts's withoutUserinfo masks one URL's, stopping at its path.)
 */
const userinfoMasked = (text: string): string =>
  text.replace(/((?:^|[\s,'])(?:[a-z][a-z0-9+.-]*:\/\/)?)[^\s,']*@/gi, '$1***@');

/** IDLE_TIMEOUT's default with MODE=tcp: a Network Load Balancer's TCP idle timeout (350 s). */
export const TCP_IDLE_TIMEOUT_MS = 350_000;

const cpus = String(typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length);

/**
 * Every setting, its default and its check. Order is the order of the README's table.
 * Defaults with { ecs, pool } differ by NODE_FILTER: ALB-like for ecs, the stateless load balancer's
 * for the pool modes (asg, tag, static).
 */
export const SETTINGS = {
  port: { env: 'PORT', doc: 'Port the proxy listens on.', default: '6969', parse: integer(0, 65535) },
  host: { env: 'HOST', doc: 'Address the proxy listens on.', default: '0.0.0.0', parse: listenAddress },
  domain: {
    env: 'DOMAIN',
    doc: 'Domain under which `<service>-<port>-<cluster>.<DOMAIN>` is routed. Required in ecs mode.',
    default: undefined,
    parse: domainName,
  },
  nodeFilter: {
    env: 'NODE_FILTER',
    doc: 'Discovery: `ecs` (route by Host to ECS services), `asg`, `tag` or `static` (one pool).',
    default: 'ecs',
    parse: oneOf<NodeFilter>('ecs', 'asg', 'tag', 'static'),
  },
  mode: {
    env: 'MODE',
    doc: '`http`, or `tcp` to forward raw TCP to a pool (static, tag, asg): half-closes and resets are passed on both ways.',
    default: 'http',
    parse: oneOf<Mode>('http', 'tcp'),
  },
  staticTargets: {
    env: 'STATIC_TARGETS',
    doc: 'The pool of static mode: `ip:port,ip:port`.',
    default: undefined,
    parse: staticTargets,
  },
  awsRegion: {
    env: 'AWS_REGION',
    doc: 'AWS region of the ECS clusters and EC2 instances. Unset: `AWS_DEFAULT_REGION` (checked alike), else the SDK chain (shared config, the instance\'s region; a warning at start says none is set).',
    default: undefined,
    parse: region,
  },
  tagName: { env: 'TAG_NAME', doc: 'Tag key of the EC2 pool in tag mode.', default: 'Name', parse: text },
  tagValue: { env: 'TAG_VALUE', doc: 'Tag value of the EC2 pool in tag mode, matched as an EC2 filter matches it: `*` and `?` are wildcards (`web-*`), `\\*` and `\\?` a literal star or question mark.', default: 'worker-node', parse: text },
  asgName: { env: 'ASG_NAME', doc: 'Auto Scaling group of the pool in asg mode.', default: 'worker-nodes', parse: text },
  targetPort: {
    env: 'TARGET_PORT',
    doc: 'Port of the EC2 pool targets (tag, asg).',
    default: '30080',
    parse: integer(1, 65535),
  },
  nodeCheckPeriodMs: {
    env: 'NODE_CHECK_PERIOD',
    doc: 'Seconds between discovery refreshes of known routes and pools.',
    default: { ecs: '30', pool: '10' },
    parse: duration('seconds'),
  },
  healthCheckPath: {
    env: 'HEALTH_CHECK_PATH',
    doc: 'Path of active HTTP health checks; `off` disables them.',
    default: { ecs: '/', pool: '/ping' },
    parse: (raw: string): string | null => {
      const t = raw.trim();
      if (t.toLowerCase() === 'off') return null;
      if (!/^\/[\x21-\x7e]*$/.test(t)) throw new Invalid("a path starting with '/', or off");
      return t;
    },
  },
  healthCheckProtocol: {
    env: 'HEALTH_CHECK_PROTOCOL',
    doc: '`http`: a check is a GET of `HEALTH_CHECK_PATH` that passes on `HEALTH_CHECK_MATCHER`; `tcp`: it passes when a connection opens (as an NLB checks; for `MODE=tcp` pools that do not speak HTTP).',
    default: 'http',
    parse: oneOf<'http' | 'tcp'>('http', 'tcp'),
  },
  healthCheckPeriodMs: {
    env: 'HEALTH_CHECK_PERIOD',
    doc: 'Seconds between health checks of a target.',
    default: { ecs: '30', pool: '2' },
    parse: duration('seconds'),
  },
  healthCheckTimeoutMs: {
    env: 'HEALTH_CHECK_TIMEOUT',
    doc: 'Seconds a health check may take; left unset, never more than `HEALTH_CHECK_PERIOD`. `0` (no timeout, as the Stateless Load Balancer read it): up to `HEALTH_CHECK_PERIOD`.',
    default: { ecs: '5', pool: '2' },
    parse: duration('seconds', { zero: true }),
  },
  healthyThreshold: {
    env: 'HEALTHY_THRESHOLD',
    doc: 'Consecutive passing checks that make an unhealthy target healthy.',
    default: { ecs: '5', pool: '2' },
    parse: integer(1, 100),
  },
  unhealthyThreshold: {
    env: 'UNHEALTHY_THRESHOLD',
    doc: 'Consecutive failing checks that make a healthy target unhealthy.',
    default: '2',
    parse: integer(1, 100),
  },
  healthCheckMatcher: {
    env: 'HEALTH_CHECK_MATCHER',
    doc: 'Status codes that pass a health check: `200`, `200-399`, `200,204`.',
    default: { ecs: '200-399', pool: '200' },
    parse: (raw: string): Range[] => {
      const r = parseRanges(100, 599, 'status codes')(raw);
      if (r.length === 0) throw new Invalid('a comma-separated list of status codes or ranges (100-599)');
      return r;
    },
  },
  circuitBreakerThreshold: {
    env: 'CIRCUIT_BREAKER_THRESHOLD',
    doc: 'Consecutive forwarding failures that open a target\'s circuit breaker. `0` is read as `5`, as the Stateless Load Balancer did (it ignored the setting).',
    default: '5',
    parse: integer(0, 1_000_000),
  },
  circuitBreakerTimeoutMs: {
    env: 'CIRCUIT_BREAKER_TIMEOUT',
    doc: 'Minutes (fractions allowed) an open breaker waits before letting one trial request through; one that only refused connections opened tries at the next passing health check instead (with HEALTH_CHECK_PATH=off it keeps the timeout). `0` is read as `5`, as the Stateless Load Balancer did (it ignored the setting).',
    default: '5',
    parse: duration('minutes', { zero: true }),
  },
  retries: {
    env: 'RETRIES',
    doc: 'How many times a failed request is retried on another target.',
    default: '2',
    parse: integer(0, 10),
  },
  poolSize: {
    env: 'POOL_SIZE',
    doc: 'Maximum sockets per target in each worker (keep-alive pool; tcp mode: connections per target in each worker). WebSocket tunnels are not counted (`MAX_CONNECTIONS` bounds them). `0`: no cap (as the Stateless Load Balancer read it; `MAX_CONNECTIONS` still bounds them).',
    default: '100',
    // 0 is the seed's "no cap": as many as a worker may have connections at all.
    parse: (raw) => integer(0, NO_POOL_CAP)(raw) || NO_POOL_CAP,
  },
  poolTimeoutMs: {
    env: 'POOL_TIMEOUT',
    doc: 'Seconds to connect to a target. `0` (no timeout, as the Stateless Load Balancer read it): up to `UPSTREAM_TIMEOUT`.',
    default: '2',
    parse: duration('seconds', { zero: true }),
  },
  upstreamTimeoutMs: {
    env: 'UPSTREAM_TIMEOUT',
    doc: 'Seconds a target may stay silent (before its response or within it) before a 504 / abort, like the ALB idle timeout.',
    default: '60',
    parse: duration('seconds'),
  },
  shutdownTimeoutMs: {
    env: 'SHUTDOWN_TIMEOUT',
    doc: 'Seconds in-flight requests get to finish after SIGTERM or SIGINT.',
    default: '30',
    parse: duration('seconds', { zero: true }),
  },
  logConnections: {
    env: 'LOG_CONNECTIONS',
    doc: 'Log one JSON access line per request (and per TCP connection in tcp mode: `tcp connection closed`, or `tcp connection refused` with why).',
    default: 'false',
    parse: bool,
  },
  trustForwardedProto: {
    env: 'TRUST_FORWARDED_PROTO',
    doc: "Keep the X-Forwarded-Proto (`http` or `https`) and X-Forwarded-Port a client sends instead of `http` and the proxy's port: only when a TLS terminator of yours (CloudFront, another load balancer) is the only way in, since any other client could claim `https`.",
    default: 'false',
    parse: bool,
  },
  metricsPort: {
    env: 'METRICS_PORT',
    doc: 'Port of `/metrics` and `/healthz`.',
    default: '6970',
    parse: integer(0, 65535),
  },
  metricsHost: {
    env: 'METRICS_HOST',
    doc: 'Address of the metrics endpoint. Default: `HOST`\'s (a proxy kept to one address keeps its metrics there too).',
    default: undefined,
    parse: listenAddress,
  },
  workers: {
    env: 'WORKERS',
    doc: 'Worker processes sharing the port. Default: the number of CPUs.',
    default: cpus,
    parse: integer(1, 256),
  },
  workerStuckTimeoutMs: {
    env: 'WORKER_STUCK_TIMEOUT',
    doc: 'Seconds a worker may go without answering the primary before it is killed and replaced (its event loop is stuck); 0: never.',
    default: '30',
    parse: (raw: string): number => {
      const ms = duration('seconds', { zero: true })(raw);
      // Pings go every third of it: below a second, a worker busy for a moment would be taken for stuck.
      if (ms !== 0 && ms < 1000) throw new Invalid('0 (off) or at least 1 second');
      return ms;
    },
  },
  allowedClusters: {
    env: 'ALLOWED_CLUSTERS',
    doc: 'Comma-separated ECS clusters (names, or ARNs for the name at their end) that may be routed to; empty means any. A Host matches them in any case (it is lower case); ECS is asked for the name as spelled here (`MyStack-Cluster-1A2B`), which a role limited to that cluster allows. One that ECS does not know (a wrong `AWS_REGION`, a typo) is logged, once until it is found.',
    default: '',
    parse: clusterNames,
  },
  allowedPorts: {
    env: 'ALLOWED_PORTS',
    doc: 'Comma-separated ports or ranges (`80,8000-8100`) that may be routed to; empty means any.',
    default: '',
    parse: parseRanges(1, 65535, 'ports'),
  },
  healthyTasksOnly: {
    env: 'HEALTHY_TASKS_ONLY',
    doc: 'Route only to ECS tasks whose container health check says HEALTHY.',
    default: 'false',
    parse: bool,
  },
  ecsCaseLookup: {
    env: 'ECS_CASE_LOOKUP',
    doc: 'When ECS knows no cluster or service of a Host\'s (lower-case) name, look up one that differs only in case (`MyStack-ApiService-1A2B`) with ListClusters and ListServices, which the role must allow (ListClusters only without ALLOWED_CLUSTERS, whose clusters are asked for as spelled there). The construct turns it on.',
    default: 'false',
    parse: bool,
  },
  loopbackTargets: {
    env: 'LOOPBACK_TARGETS',
    doc: 'Let discovery (AWS or Redis) give loopback addresses (127.0.0.0/8, ::1): only for running against a local AWS stand-in, never on an instance. Unset, it is on when an `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_ECS`, `_EC2` or `_AUTO_SCALING` names a loopback address (AWS is then a local stand-in, whose tasks are local too). Link-local and metadata addresses are refused always.',
    default: 'false',
    parse: bool,
  },
  ipPreference: {
    env: 'IP_PREFERENCE',
    doc: '`private` (in-VPC traffic is free) or `public` (falls back to private) for awsvpc tasks. With `public`, should `DescribeNetworkInterfaces` fail (throttled, refused), the public IPs this proxy knows from earlier lookups stand (logged once a minute at most); with a task whose it does not know, the discovery fails rather than give a private address that may be out of reach (a known route keeps its last targets).',
    default: 'private',
    parse: oneOf<IpPreference>('private', 'public'),
  },
  negativeCacheTtlMs: {
    env: 'NEGATIVE_CACHE_TTL',
    doc: 'Seconds a route that has no task is answered 503 without asking AWS again.',
    default: '10',
    parse: duration('seconds'),
  },
  maxRoutes: { env: 'MAX_ROUTES', doc: 'Most routes kept in memory.', default: '1000', parse: integer(1, 1_000_000) },
  maxTargets: {
    env: 'MAX_TARGETS',
    doc: 'Most targets a worker holds over all its routes (each a few KiB, in the worker and the primary): past it the least recently used routes are forgotten (not one used in the last 2 s: routes in steady use that hold more are kept, and said once), so that Hosts naming made-up ports of a large service cannot run a worker out of memory.',
    default: '10000',
    parse: integer(1, 10_000_000),
  },
  newRouteRate: {
    env: 'NEW_ROUTE_RATE',
    doc: 'Routes per second (bursts of 4 s worth) a worker may start discovering; past it unknown Hosts get 503, so junk Hosts cannot spend the account\'s ECS API rate limit.',
    default: '5',
    parse: integer(1, 100_000),
  },
  routeIdleTtlMs: {
    env: 'ROUTE_IDLE_TTL',
    doc: 'Seconds after which an unused route is forgotten (`ecs` mode; the one pool of the other modes is kept).',
    default: '600',
    parse: duration('seconds'),
  },
  redisUrl: {
    env: 'REDIS_URL',
    doc: 'Optional Redis to share discovery: `redis://[user:pass@]host:port[/db]` (user and password percent-encoded; a database this Redis does not have is logged and sharing stays off), `rediss://…` (TLS) or `host:port` (a host name with a dot, `localhost` or an IP address alone is port 6379; `:port` is this machine, as go-redis read it); not cluster mode.',
    default: undefined,
    parse: redisUrl,
    shown: withoutCredentials,
  },
  redisAuthSecretArn: {
    env: 'REDIS_AUTH_SECRET_ARN',
    doc: 'Secrets Manager secret holding the Redis AUTH token, read once at start.',
    default: undefined,
    parse: optionalText,
  },
  maxConnections: {
    env: 'MAX_CONNECTIONS',
    doc: 'Most open client connections per worker; past it a keep-alive connection idle for 5 s or more gives its place to a new one (the longest open first), and otherwise new connections are closed.',
    // ~28 KiB per proxied connection (measured): two workers of 2048 stay within a t4g.nano's 512 MiB
    // beside an ~87 MiB primary and two ~47 MiB workers; 10000 would not (see SECURITY.md).
    default: '2048',
    parse: integer(1, 1_000_000),
  },
  idleTimeoutMs: {
    env: 'IDLE_TIMEOUT',
    doc: 'Seconds an idle client connection (keep-alive or stalled) is kept open, like the ALB idle timeout; with `MODE=tcp` 350 unless set, like an NLB, and `0` keeps idle tunnels open for good, as the Stateless Load Balancer did (TCP keep-alive probes do not count as activity here, as they do for an NLB).',
    default: '60',
    parse: duration('seconds', { zero: true }),
  },
  headersTimeoutMs: {
    env: 'HEADERS_TIMEOUT',
    doc: 'Seconds a client has to send the request line and headers (a `408` after); a new connection that sends nothing in that time is closed without an answer, as nginx closes it.',
    default: '10',
    parse: duration('seconds'),
  },
  requestTimeoutMs: {
    env: 'REQUEST_TIMEOUT',
    doc: 'Seconds a client has to send a whole request, body included (time its target holds the body back is not counted); 0, the default, sets no limit: as with an ALB or nginx, a body takes as long as it keeps coming, and one that stalls for `IDLE_TIMEOUT` is cut.',
    default: '0',
    parse: duration('seconds', { zero: true }),
  },
  maxHeaderSize: {
    env: 'MAX_HEADER_SIZE',
    doc: 'Most bytes of request line and headers; larger is a 431 (a 414 when the request line alone is).',
    default: '16384',
    parse: integer(1024, 1_048_576),
  },
  maxHeaders: {
    env: 'MAX_HEADERS',
    doc: 'Most request header fields; more is a 431.',
    default: '100',
    parse: integer(1, 2000),
  },
} satisfies { [K in keyof Config]: Setting<Config[K]> };

/** An IP literal as the kernel sees it (IPv4-mapped IPv6 is IPv4); undefined for a host name. */
function canonicalIp(h: string): { family: 4 | 6; text: string } | undefined {
  const family = isIP(h);
  if (family === 4) return { family, text: h };
  if (family !== 6) return undefined;
  let text = h.toLowerCase();
  try {
    text = new URL(`http://[${h}]/`).hostname.slice(1, -1); // ::0 and 0:0:0:0:0:0:0:0 are ::
  } catch {
    // A zone index (fe80::1%eth0): compared as written.
  }
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(text);
  if (!mapped) return { family: 6, text };
  const [hi, lo] = [parseInt(mapped[1]!, 16), parseInt(mapped[2]!, 16)];
  return { family: 4, text: `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}` };
}

/**
 * Whether one port cannot be listened on at both addresses: the same address, or a wildcard that
 * covers the other (0.0.0.0 every IPv4 address and any name; ::, which Node opens dual-stack, every
 * address and name). Otherwise names are compared as written: what they resolve to is only known when
 * listening.
 */
function clash(a: string, b: string): boolean {
  // localhost is the loopback of either family, whichever the resolver gives first.
  if (a.toLowerCase() === 'localhost' && b.toLowerCase() !== 'localhost') return clash('127.0.0.1', b) || clash('::1', b);
  if (b.toLowerCase() === 'localhost' && a.toLowerCase() !== 'localhost') return clash(a, '127.0.0.1') || clash(a, '::1');
  const x = canonicalIp(a);
  const y = canonicalIp(b);
  if ((x?.family === 6 && x.text === '::') || (y?.family === 6 && y.text === '::')) return true;
  // A name may resolve to any address: the IPv4 wildcard covers it.
  if ((!x && y?.text === '0.0.0.0') || (!y && x?.text === '0.0.0.0')) return true;
  if (!x || !y) return a.toLowerCase() === b.toLowerCase();
  if (x.family !== y.family) return false;
  return x.text === y.text || (x.family === 4 && (x.text === '0.0.0.0' || y.text === '0.0.0.0'));
}

/** The SDK's endpoint settings (AWS_ENDPOINT_URL and its per-service forms) for the clients the proxy makes. */
const AWS_ENDPOINT_VARS = ['AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_ECS', 'AWS_ENDPOINT_URL_EC2', 'AWS_ENDPOINT_URL_AUTO_SCALING'];

/**
 * An AWS endpoint is set to this machine (a loopback address, `localhost`, the unspecified address): AWS
 * is a local stand-in (a test, a development set-up). Not when the SDK is told to ignore those settings.
 */
function awsEndpointOnLoopback(env: Env): boolean {
  if (/^(?:1|t|true)$/i.test(env.AWS_IGNORE_CONFIGURED_ENDPOINT_URLS?.trim() ?? '')) return false;
  return AWS_ENDPOINT_VARS.some((name) => {
    const value = env[name]?.trim();
    if (!value) return false;
    let host: string;
    try {
      host = new URL(value).hostname.toLowerCase();
    } catch {
      return false;
    }
    if (host === 'localhost' || host.endsWith('.localhost')) return true;
    const ip = canonicalIp(host.replace(/^\[(.*)\]$/, '$1'));
    if (!ip) return false;
    return ip.family === 4 ? ip.text.startsWith('127.') || ip.text === '0.0.0.0' : ip.text === '::1' || ip.text === '::';
  });
}

/** LOOPBACK_TARGETS not set, and turned on by an AWS endpoint on loopback (a local stand-in). */
export function loopbackTargetsByEndpoint(env: Env): boolean {
  return (env.LOOPBACK_TARGETS ?? '').trim() === '' && awsEndpointOnLoopback(env);
}

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration: ${problems.join('; ')}`);
    this.name = 'ConfigError';
  }
}

function defaultFor(setting: Setting<unknown>, filter: NodeFilter): string | undefined {
  const d = setting.default;
  if (d !== undefined && typeof d === 'object') return filter === 'ecs' ? d.ecs : d.pool;
  return d;
}

/** Edit distance (Levenshtein): how many letters to add, drop or change to turn one short name into the other. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length];
}

/** The name of `among` that `name` is likely a slip for: the same but for case, else one or two letters away. */
export function likelyMeant(name: string, among: readonly string[]): string | undefined {
  const lower = name.toLowerCase();
  return among.find((k) => k.toLowerCase() === lower) ??
    among.find((k) => Math.abs(k.length - name.length) <= 2 && editDistance(k.toLowerCase(), lower) <= 2);
}

/** `a` is `b` with two letters side by side swapped (`PROT`, `PORT`). */
function swapped(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  const i = [...a].findIndex((c, k) => c !== b[k]);
  return i !== -1 && i + 1 < a.length && a[i] === b[i + 1] && a[i + 1] === b[i] && a.slice(i + 2) === b.slice(i + 2);
}

/**
 * Variables in `env` that are none of our settings but one letter or two away from one
 * (`HEALTH_CHECK_PAHT`, `SHUTDOWN_TIMOUT`): a typo would otherwise leave the default in force without a
 * word. Names under 6 letters only when two letters of a setting are swapped (`PROT`, `HSOT`, `MDOE`):
 * any other slip that short is as likely another program's variable (`HOME`, `USER` are not `HOST`).
 */
export function mistypedSettings(env: Env): { readonly name: string; readonly meant: string }[] {
  const out: { name: string; meant: string }[] = [];
  for (const name of Object.keys(env)) {
    if (ENV_NAMES.includes(name) || !/^[A-Z][A-Z0-9_]*$/.test(name)) continue;
    const meant = name.length < 6 ? ENV_NAMES.find((k) => swapped(name, k)) : likelyMeant(name, ENV_NAMES);
    if (meant) out.push({ name, meant });
  }
  return out;
}

/**
 * HOST and METRICS_HOST as the names they give (not IP addresses), for a look-up at start: each one
 * that is well formed, METRICS_HOST's default (HOST's) included, under the first setting that gives it.
 */
export function listenNames(env: Env): { readonly env: string; readonly name: string }[] {
  const parsed = (raw: string | undefined): string | undefined => {
    if ((raw ?? '').trim() === '') return undefined;
    try {
      return listenAddress(raw!);
    } catch {
      return undefined; // malformed: loadConfig says so
    }
  };
  const host = parsed(env.HOST) ?? SETTINGS.host.default;
  const metricsHost = (env.METRICS_HOST ?? '').trim() === '' ? host : parsed(env.METRICS_HOST);
  const named: { env: string; name: string }[] = [];
  for (const [name, value] of [['HOST', host], ['METRICS_HOST', metricsHost]] as const) {
    if (value !== undefined && isIP(value) === 0 && !named.some((n) => n.name.toLowerCase() === value.toLowerCase())) named.push({ env: name, name: value });
  }
  return named;
}

/**
 * STATIC_TARGETS that are the proxy itself: its PORT or METRICS_PORT at an address its listener is
 * reached at (the one address it listens on, or with 0.0.0.0 / `::` loopback, the unspecified address
 * and this machine's own), which would send every request, in MODE=tcp every connection, back into it
 * until POOL_SIZE runs out. It reads this machine's interfaces, so it is the running proxy's check
 * (main.ts), never loadConfig's: a synth elsewhere must not judge by its own addresses. Only IP
 * literals and `localhost` are judged; other names are the operator's.
 */
export function selfTargets(config: Config): Target[] {
  if (config.nodeFilter !== 'static') return [];
  const listeners = ([[config.port, config.host], [config.metricsPort, config.metricsHost]] as const).filter(([port]) => port > 0);
  let own: Set<string> | undefined;
  const ownAddressSet = (): Set<string> => {
    if (own === undefined) {
      try {
        own = ownAddresses();
      } catch {
        own = new Set(); // interfaces unreadable (some sandboxes): loopback and unspecified are still judged
      }
    }
    return own;
  };
  const reaches = (listenHost: string, targetHost: string): boolean => {
    const host = targetHost.toLowerCase() === 'localhost' ? '127.0.0.1' : targetHost;
    if (isIP(host) === 0 || isIP(listenHost) === 0) return false;
    const t = canonicalAddress(host);
    const l = canonicalAddress(listenHost);
    const anyV4 = l === '0.0.0.0';
    const anyV6 = l === '0:0:0:0:0:0:0:0';
    // A listener on one address is reached at that address only (127.0.0.2 is not 127.0.0.1).
    if (!anyV4 && !anyV6) return t === l;
    // On every address: 0.0.0.0 takes IPv4 only (an IPv4-mapped target is its IPv4 address), `::` both.
    if (anyV4 && isIP(t) === 6) return false;
    return t === '0.0.0.0' || t === '0:0:0:0:0:0:0:0' || isLoopbackAddress(t) || ownAddressSet().has(t);
  };
  return config.staticTargets.filter((t) => listeners.some(([port, host]) => t.port === port && reaches(host, t.host)));
}

/** Reads and checks every setting; throws one ConfigError naming every bad or missing variable. */
export function loadConfig(env: Env = process.env): Config {
  const problems: string[] = [];
  const out: Record<string, unknown> = {};
  // An empty value means the default, as in viper.
  const isSet = (name: string): boolean => (env[name] ?? '').trim() !== '';
  const read = (key: keyof Config, filter: NodeFilter): void => {
    const s = SETTINGS[key] as Setting<unknown>;
    const given = env[s.env];
    const raw = isSet(s.env) ? given : defaultFor(s, filter);
    if (raw === undefined) {
      out[key] = undefined;
      return;
    }
    try {
      out[key] = s.parse(raw);
    } catch (e) {
      if (!(e instanceof Invalid)) throw e;
      problems.push(s.shown ? `${s.env} must be ${e.message} (got '${s.shown(given ?? '')}')` : userinfoMasked(`${s.env} must be ${e.message} (got '${given}')`));
    }
  };
  read('nodeFilter', 'ecs');
  const filter = (out.nodeFilter as NodeFilter | undefined) ?? 'ecs';
  for (const key of Object.keys(SETTINGS) as (keyof Config)[]) if (key !== 'nodeFilter') read(key, filter);

  // Settings that depend on each other. A NODE_FILTER that is not one of ours is the problem on its
  // own: nothing that only ecs mode needs is asked for.
  const filterValid = !problems.some((p) => p.startsWith('NODE_FILTER '));
  if (filterValid && filter === 'ecs' && !out.domain && !problems.some((p) => p.startsWith('DOMAIN '))) {
    // The Stateless Load Balancer defaulted to asg; its users who never set NODE_FILTER land here.
    problems.push(
      'DOMAIN is required when NODE_FILTER=ecs (routes are <service>-<port>-<cluster>.<DOMAIN>); ' +
        `for one EC2 pool set NODE_FILTER=asg, tag or static${isSet('NODE_FILTER') ? '' : ' (ecs is the default)'}`,
    );
  }
  if (filter === 'static' && !(out.staticTargets as Target[] | undefined)?.length &&
      !problems.some((p) => p.startsWith('STATIC_TARGETS '))) {
    problems.push('STATIC_TARGETS is required when NODE_FILTER=static (ip:port,ip:port)');
  }
  if (filterValid && out.mode === 'tcp' && filter === 'ecs') {
    problems.push('MODE=tcp needs a pool: NODE_FILTER must be static, tag or asg (ecs routes by Host, which is HTTP)');
  }
  // Zeros the Stateless Load Balancer took, where Go read 0 as "no timeout" (or, for the breaker, ignored
  // the setting): bounded here by the clock that already bounds them, and the seed's 5 minutes.
  if (out.healthCheckTimeoutMs === 0 && typeof out.healthCheckPeriodMs === 'number') out.healthCheckTimeoutMs = out.healthCheckPeriodMs;
  if (out.poolTimeoutMs === 0 && typeof out.upstreamTimeoutMs === 'number') out.poolTimeoutMs = out.upstreamTimeoutMs;
  if (out.circuitBreakerTimeoutMs === 0) out.circuitBreakerTimeoutMs = 5 * 60_000;
  if (out.circuitBreakerThreshold === 0) out.circuitBreakerThreshold = 5;
  if (out.metricsHost === undefined && typeof out.host === 'string') out.metricsHost = out.host;
  if (typeof out.healthCheckTimeoutMs === 'number' && typeof out.healthCheckPeriodMs === 'number' &&
      out.healthCheckTimeoutMs > out.healthCheckPeriodMs) {
    // The default timeout shrinks to a shorter period. One that was set stays: the Stateless Load
    // Balancer took any pair, and its settings must keep working; a target's checks never overlap (the
    // next one starts when a slow one ends), so the period then stretches to the slow check.
    if (!isSet('HEALTH_CHECK_TIMEOUT')) out.healthCheckTimeoutMs = out.healthCheckPeriodMs;
  }
  // AWS_DEFAULT_REGION, as the AWS CLI and the seeds' Go SDK read it when AWS_REGION is unset: checked as
  // AWS_REGION is (a stray space or a comment in it was every discovery's "Region not accepted"), and the
  // region used.
  if (!isSet('AWS_REGION') && isSet('AWS_DEFAULT_REGION')) {
    try {
      out.awsRegion = region(env.AWS_DEFAULT_REGION!);
    } catch (e) {
      if (!(e instanceof Invalid)) throw e;
      problems.push(`AWS_DEFAULT_REGION must be ${e.message} (got '${env.AWS_DEFAULT_REGION}')`);
    }
  }
  // The SDK's own retry settings, which it reads itself and would take a typo of without a word
  // (AWS_MAX_ATTEMPTS=abc ran with its default): checked here with the rest.
  const attempts = env.AWS_MAX_ATTEMPTS?.trim();
  if (attempts && !(/^\d{1,3}$/.test(attempts) && Number(attempts) >= 1)) {
    problems.push(`AWS_MAX_ATTEMPTS must be a whole number of attempts from 1 to 999 (got '${attempts}')`);
  }
  // Compared as the SDK compares it (as written: ' adaptive ' or 'ADAPTIVE' would be standard there);
  // JavaScript's SDK knows no 'legacy'.
  const retryMode = env.AWS_RETRY_MODE;
  if (retryMode !== undefined && retryMode !== '' && retryMode !== 'standard' && retryMode !== 'adaptive') {
    problems.push(`AWS_RETRY_MODE must be standard or adaptive (got '${retryMode}')`);
  }
  // A local AWS stand-in answers with local addresses: its tasks and instances are the operator's own.
  if (loopbackTargetsByEndpoint(env)) out.loopbackTargets = true;
  // Raw TCP carries protocols with long quiet spells (databases, SSH): an NLB's idle timeout, not an ALB's.
  if (out.mode === 'tcp' && !isSet('IDLE_TIMEOUT')) out.idleTimeoutMs = TCP_IDLE_TIMEOUT_MS;
  // HTTP needs an idle timeout (it is what Keep-Alive: timeout= says, and what cuts a stalled body).
  if (out.idleTimeoutMs === 0 && out.mode !== 'tcp') problems.push("IDLE_TIMEOUT may be 0 (no idle timeout) only with MODE=tcp (got '0')");
  if (typeof out.port === 'number' && out.port !== 0 && out.port === out.metricsPort && typeof out.host === 'string' && typeof out.metricsHost === 'string' &&
      clash(out.host, out.metricsHost)) {
    problems.push(`METRICS_PORT must differ from PORT where HOST (${out.host}) and METRICS_HOST (${out.metricsHost}) overlap`);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  out.staticTargets ??= [];
  return Object.freeze(out) as unknown as Config;
}

/** Env var names, for the README and for the construct's contract test. */
export const ENV_NAMES: readonly string[] = Object.values(SETTINGS).map((s) => s.env);
