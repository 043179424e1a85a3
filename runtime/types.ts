/** The shapes every runtime module speaks. Kept free of I/O so any module can import them. */

/** One upstream endpoint. `id` is `host:port` (IPv6 in brackets) and is what metrics and logs name. */
export interface Target {
  readonly id: string;
  readonly host: string;
  readonly port: number;
}

/** What a Host header names in ecs mode. In pool modes (static, tag, asg) there is one route: POOL_ROUTE. */
export interface RouteKey {
  readonly service: string;
  readonly port: number;
  readonly cluster: string;
}

/** The single route of the pool modes; every Host goes to it. */
export const POOL_ROUTE: RouteKey = Object.freeze({ service: '*', port: 0, cluster: '*' });

/** Stable string form of a route, used as map key, Redis key part and metric label. */
export function routeId(key: RouteKey): string {
  return key === POOL_ROUTE || key.service === '*' ? 'pool' : `${key.service}-${key.port}-${key.cluster}`;
}

export function makeTarget(host: string, port: number): Target {
  const id = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  return { id, host, port };
}

/** Targets without duplicates, in a stable order (by id), so round-robin order survives refreshes. */
export function sortTargets(targets: Iterable<Target>): Target[] {
  const byId = new Map<string, Target>();
  for (const t of targets) byId.set(t.id, t);
  return [...byId.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/**
 * Sets `key` as the most recently used entry of `map` (a Map keeps insertion order, so the first key
 * is the least recently used), and drops the least recently used past `max`, telling `onDrop` each.
 */
export function setRecent<K, V>(map: Map<K, V>, key: K, value: V, max: number, onDrop?: (key: K) => void): void {
  map.delete(key);
  map.set(key, value);
  while (map.size > max) {
    const oldest = map.keys().next().value as K;
    map.delete(oldest);
    onDrop?.(oldest);
  }
}

/** The longest delay a Node timer takes (2^31 - 1 ms, about 24.8 days); longer ones fire at once. */
export const MAX_TIMER_MS = 2_147_483_647;

/** A delay made of settings and margins, kept within MAX_TIMER_MS: each setting is, their sum may not be. */
export const timerMs = (ms: number): number => Math.min(ms, MAX_TIMER_MS);

/**
 * `p`'s value, or undefined once `ms` have passed first (a wait that must not hold up what comes after
 * it: a shutdown, a retry, a start); the timer goes either way.
 */
export function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<undefined>((resolve) => (timer = setTimeout(resolve, ms, undefined)))]).finally(() => clearTimeout(timer));
}

/** A discovery's answer and how old it already is (one shared from a cache). */
export interface Found {
  readonly targets: Target[];
  readonly ageMs: number;
  /** The discovery failed, and these are the last targets found, kept in use (counted where it failed). */
  readonly stale?: boolean;
}

/** `provider`'s answer and its age: discoverAged where it has one, else discover's, 0 old. */
export async function foundBy(provider: Provider, route: RouteKey, signal?: AbortSignal, maxAgeMs?: number): Promise<Found> {
  return provider.discoverAged ? provider.discoverAged(route, signal, maxAgeMs) : { targets: await provider.discover(route, signal), ageMs: 0 };
}

/** The longest one discovery (every page and call of it) may take before it fails and can be tried again. */
export const DISCOVERY_DEADLINE_MS = 30_000;

/** One AWS attempt's bound, request and response (aws.ts), unless a client is given its own. */
export const AWS_ATTEMPT_TIMEOUT_MS = 10_000;

/**
 * A discovery error, with how long the route's failure holds before AWS is asked again (the primary's
 * backoff): a route whose discovery keeps failing must not be tried every second by every worker.
 */
export type DiscoveryError = Error & { retryInMs?: number };

/**
 * A discovery source. `discover` does the I/O and returns plain targets; it throws on an AWS or
 * network failure (the caller keeps the last known targets), and returns [] when the route or pool
 * exists but is empty or does not exist at all (both answer 503).
 */

export interface Provider {
  readonly name: string;
  /** Its failures are counted where it discovers (the primary, for a worker's line to it), not by the route table. */
  readonly countsFailures?: boolean;
  discover(route: RouteKey, signal?: AbortSignal): Promise<Target[]>;
  /**
   * The same, with how old the answer already is (one shared from a cache): the route is due a period
   * after it was found. `maxAgeMs`: no cached answer older than that will do (a route whose targets
   * refuse connections wants one found since).
   */
  discoverAged?(route: RouteKey, signal?: AbortSignal, maxAgeMs?: number): Promise<Found>;
  /**
   * The route's answer only if one is held already (no discovery, no AWS call), whatever its age;
   * undefined when none is, or it is empty.
   */
  held?(route: RouteKey): Promise<Found | undefined>;
  /** Release clients, timers, sockets. */
  close?(): Promise<void>;
}

/** The one method the health checker knows about the rest of the proxy (Traefik's SetStatus). */
export interface StatusSetter {
  setStatus(target: Target, up: boolean): void;
  /** A check of the target that began at `startedAt` (Date.now()) passed: each one, not only those that change its status. */
  passed?(target: Target, startedAt: number): void;
}
