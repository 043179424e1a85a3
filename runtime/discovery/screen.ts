/**
 * The last check on what discovery hands the proxy (AWS answers, and what other proxies shared through
 * Redis): only unicast IP literals outside loopback, link-local (the metadata service), unspecified and
 * multicast addresses. A task or instance record, or a cache entry, naming anything else is left out
 * and counted: neither a broken API answer nor a poisoned cache may point the proxy at the instance
 * itself or its metadata service. STATIC_TARGETS are the operator's own and are not screened.
 */
import { isIP } from 'node:net';
import { log } from '../log';
import { tasksSkipped } from '../metrics';
import type { Provider, RouteKey, Target } from '../types';

/** The metadata service's IPv6 address on Nitro instances (not link-local, so named). */
const METADATA_V6 = 'fd00:ec2::254';

/**
 * An address discovery may give: a unicast IP literal, none of the instance's own or special ones
 * (loopback only with `loopback`, for a local AWS stand-in: LOOPBACK_TARGETS).
 */
export function usableAddress(host: string, loopback = false): boolean {
  const version = isIP(host);
  if (version === 4) {
    const [a, b] = host.split('.').map(Number);
    return !(a === 0 || (a === 127 && !loopback) || (a === 169 && b === 254) || a >= 224);
  }
  if (version !== 6) return false; // a name would be resolved through DNS: not what AWS gives
  const h = host.toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(h);
  if (mapped) return usableAddress(mapped[1], loopback);
  return !(h === '::' || (h === '::1' && !loopback) || /^fe[89ab]/.test(h) || h.startsWith('ff') || h === METADATA_V6);
}

/** `inner` with every result screened by usableAddress. */
export class ScreenedProvider implements Provider {
  readonly name: string;

  constructor(
    /** The provider screened (the SharedProvider when REDIS_URL is set). */
    readonly inner: Provider,
    private readonly loopback = false,
  ) {
    this.name = inner.name;
  }

  async discover(route: RouteKey, signal?: AbortSignal): Promise<Target[]> {
    const targets = await this.inner.discover(route, signal);
    const kept = targets.filter((t) => usableAddress(t.host, this.loopback));
    if (kept.length !== targets.length) {
      tasksSkipped.inc({ reason: 'bad_address' }, targets.length - kept.length);
      log('warn', 'discovery gave addresses the proxy does not use', { route: `${route.service}-${route.port}-${route.cluster}`, left: targets.filter((t) => !usableAddress(t.host, this.loopback)).map((t) => t.id).slice(0, 5) });
    }
    return kept;
  }

  close(): Promise<void> {
    return this.inner.close?.() ?? Promise.resolve();
  }
}
