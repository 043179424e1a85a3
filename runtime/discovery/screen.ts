/**
 * The last check on what discovery hands the proxy (AWS answers, and what other proxies shared through
 * Redis): only unicast IP literals outside loopback, link-local (the metadata service), unspecified and
 * multicast addresses, on a port from 1 to 65535. A task or instance record, or a cache entry, naming
 * anything else is left out and counted: neither a broken API answer nor a poisoned cache may point the proxy at its own
 * listeners (PORT, METRICS_PORT on any of its addresses), a loopback-only service or the metadata service. Its host's
 * other addresses stay targets on other ports: a proxy on an ECS container instance serves that host's bridge-mode
 * tasks there. STATIC_TARGETS are the operator's own and are not screened.
 */
import { isIP } from 'node:net';
import { canonicalAddress, groupsOf, isLoopbackAddress, isV6InstanceServices, isV6LinkLocal, isV6Loopback, mappedV4, ownAddresses } from '../address';
import { log } from '../log';
import { tasksSkipped } from '../metrics';
import type { Found, Provider, RouteKey, Target } from '../types';

function usableV4(host: string, loopback: boolean): boolean {
  const [a, b] = host.split('.').map(Number);
  return !(a === 0 || (a === 127 && !loopback) || (a === 169 && b === 254) || a >= 224);
}

/**
 * An address discovery may give: a unicast IP literal, none of the instance's own or special ones
 * (loopback only with `loopback`, for a local AWS stand-in: LOOPBACK_TARGETS).
 */
export function usableAddress(host: string, loopback = false): boolean {
  const version = isIP(host);
  if (version === 4) return usableV4(host, loopback);
  if (version !== 6) return false; // a name would be resolved through DNS: not what AWS gives
  const g = groupsOf(host);
  if (g === undefined) return false;
  if (g[0] === 0) {
    // ::/16: unspecified, loopback, and the forms that carry an IPv4 address (IPv4-mapped is judged as
    // that address; IPv4-compatible and IPv4-translated are never what AWS gives).
    if (isV6Loopback(g)) return loopback;
    const v4 = mappedV4(g);
    if (v4 !== undefined) return usableV4(v4, loopback);
    return false;
  }
  return !(
    (g[0] === 0x64 && g[1] === 0xff9b) || // NAT64: an IPv4 address behind a translator
    g[0] === 0x2002 || // 6to4: an IPv4 address in bits 16-47 (2002:a9fe:a9fe:: carries 169.254.169.254)
    (g[0] === 0x2001 && g[1] === 0) || // Teredo: an IPv4 server and client inside
    isV6LinkLocal(g) ||
    (g[0] & 0xffc0) === 0xfec0 || // site-local (deprecated)
    (g[0] & 0xff00) === 0xff00 || // multicast
    isV6InstanceServices(g)
  );
}

/** A port a target may have: a whole number from 1 to 65535 (a broken answer's 31001.5 or 70000 is not). */
export function usablePort(port: number): boolean {
  return Number.isInteger(port) && port >= 1 && port <= 65535;
}

/**
 * `inner` with every result screened by usableAddress and usablePort, and never the proxy itself: one
 * of `ownPorts` (PORT, METRICS_PORT) on one of this machine's addresses would serve its metrics to
 * clients, or loop requests back into it (a poisoned shared entry, a broken answer).
 */
export class ScreenedProvider implements Provider {
  readonly name: string;

  constructor(
    /** The provider screened (the SharedProvider when REDIS_URL is set). */
    readonly inner: Provider,
    private readonly loopback = false,
    private readonly ownPorts: readonly number[] = [],
  ) {
    this.name = inner.name;
  }

  async discover(route: RouteKey, signal?: AbortSignal): Promise<Target[]> {
    return this.screen(route, await this.inner.discover(route, signal));
  }

  /** The inner provider's answer screened, its age (one shared through Redis) passed on. */
  async discoverAged(route: RouteKey, signal?: AbortSignal, maxAgeMs?: number): Promise<Found> {
    if (!this.inner.discoverAged) return { targets: await this.discover(route, signal), ageMs: 0 };
    const found = await this.inner.discoverAged(route, signal, maxAgeMs);
    return { targets: this.screen(route, found.targets), ageMs: found.ageMs };
  }

  private screen(route: RouteKey, targets: Target[]): Target[] {
    const kept: Target[] = [];
    const badAddress: Target[] = [];
    const badPort: Target[] = [];
    const own = this.ownPorts.length > 0 && targets.some((t) => this.ownPorts.includes(t.port)) ? ownAddresses() : undefined;
    for (const t of targets) {
      if (!usableAddress(t.host, this.loopback) || (own && this.ownPorts.includes(t.port) && (own.has(canonicalAddress(t.host)) || isLoopbackAddress(t.host)))) badAddress.push(t);
      else if (!usablePort(t.port)) badPort.push(t);
      else kept.push(t);
    }
    if (kept.length === targets.length) return targets;
    const name = `${route.service}-${route.port}-${route.cluster}`;
    if (badAddress.length > 0) {
      tasksSkipped.inc({ reason: 'bad_address' }, badAddress.length);
      log('warn', 'discovery gave addresses the proxy does not use', { route: name, left: badAddress.map((t) => t.id).slice(0, 5) });
    }
    if (badPort.length > 0) {
      tasksSkipped.inc({ reason: 'bad_port' }, badPort.length);
      log('warn', 'discovery gave ports outside 1-65535', { route: name, left: badPort.map((t) => t.id).slice(0, 5) });
    }
    return kept;
  }

  close(): Promise<void> {
    return this.inner.close?.() ?? Promise.resolve();
  }
}
