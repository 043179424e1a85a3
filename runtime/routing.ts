/**
 * Host header to route: pure, allocation-light, the first step of the request path.
 *
 * `<service>-<port>-<cluster>.<domain>`: the port is the first all-digit label between dashes, so
 * service and cluster may contain dashes (`my-api-8080-prod-eu` is my-api, 8080, prod-eu). The Karma
 * seed split on every dash, ignored the domain and accepted any port; this is where that ends.
 */
import type { Config, Range } from './config';
import type { RouteKey } from './types';

export type RouteResult =
  | { readonly ok: true; readonly key: RouteKey }
  | { readonly ok: false; readonly status: 400 | 403; readonly reason: string; readonly message: string };

// ECS service and cluster names: letters, digits, hyphens, underscores (lower-cased here).
const NAME = /^[a-z0-9_]+(?:-[a-z0-9_]+)*$/;
const DIGITS = /^\d+$/;

const fail = (status: 400 | 403, reason: string, message: string): RouteResult => ({ ok: false, status, reason, message });

export function inRanges(n: number, ranges: readonly Range[]): boolean {
  for (const r of ranges) if (n >= r.from && n <= r.to) return true;
  return false;
}

export interface RoutingRules {
  readonly domain: string;
  readonly allowedClusters: readonly string[];
  readonly allowedPorts: readonly Range[];
}

export function rulesFrom(config: Config): RoutingRules {
  // A Host's names are lower case: the allow-list matches them in any case.
  return { domain: config.domain, allowedClusters: config.allowedClusters.map((c) => c.toLowerCase()), allowedPorts: config.allowedPorts };
}

/** Strips a `:port` suffix; undefined when the authority is malformed (e.g. an IPv6 literal or junk after ':'). */
function hostname(host: string): string | undefined {
  const colon = host.indexOf(':');
  if (colon === -1) return host;
  const port = host.slice(colon + 1);
  // A port as URL parsers take one: none (`host:`, which RFC 3986 allows), or up to 65535.
  if (port !== '' && (!DIGITS.test(port) || port.length > 5 || Number(port) > 65535)) return undefined;
  return host.slice(0, colon);
}

/** Parses a Host header in ecs mode. Never throws. */
export function parseHost(host: string | undefined, rules: RoutingRules): RouteResult {
  if (host === undefined || host === '') return fail(400, 'no_host', 'missing Host header');
  const name = hostname(host.trim().toLowerCase());
  if (name === undefined) return fail(400, 'bad_host', 'malformed Host header');
  const fqdn = name.endsWith('.') ? name.slice(0, -1) : name;
  const suffix = '.' + rules.domain;
  if (!fqdn.endsWith(suffix) || fqdn.length === suffix.length) {
    return fail(400, 'wrong_domain', `Host must be <service>-<port>-<cluster>.${rules.domain}`);
  }
  const label = fqdn.slice(0, fqdn.length - suffix.length);
  if (label.length > 255 || !NAME.test(label)) {
    return fail(400, 'bad_host', `Host must be <service>-<port>-<cluster>.${rules.domain}`);
  }
  const parts = label.split('-');
  let at = -1;
  for (let i = 1; i < parts.length - 1; i++) {
    if (DIGITS.test(parts[i])) {
      at = i;
      break;
    }
  }
  if (at === -1) return fail(400, 'no_port', 'Host has no port label: expected <service>-<port>-<cluster>');
  // Leading zeros read as Go's Atoi read them in the Karma Proxy seed (030080 is 30080); the route is the number.
  const digits = parts[at].replace(/^0+(?=\d)/, '');
  const port = digits.length > 5 ? 0 : Number(digits);
  if (port < 1 || port > 65535) return fail(400, 'bad_port', 'port in Host must be 1-65535');
  const service = parts.slice(0, at).join('-');
  const cluster = parts.slice(at + 1).join('-');
  if (rules.allowedClusters.length > 0 && !rules.allowedClusters.includes(cluster)) {
    return fail(403, 'cluster_not_allowed', `cluster '${cluster}' is not allowed`);
  }
  if (rules.allowedPorts.length > 0 && !inRanges(port, rules.allowedPorts)) {
    return fail(403, 'port_not_allowed', `port ${port} is not allowed`);
  }
  return { ok: true, key: { service, port, cluster } };
}
