/**
 * The route table: RouteKey to Pool, in memory.
 *
 * The hot path calls `get` (synchronous). Only the first request of an unknown route waits, on the
 * one discovery shared by all its concurrent requests (singleflight). A route with no target is
 * remembered as absent for NEGATIVE_CACHE_TTL, so junk Hosts cost one discovery, not one per request.
 * At most MAX_ROUTES routes are kept; unused ones are forgotten after ROUTE_IDLE_TTL; known ones are
 * refreshed in the background every NODE_CHECK_PERIOD, and keep their last targets when AWS fails.
 */
import { Pool, TargetRegistry } from './balancer';
import { errorFields, log, wasLogged } from './log';
import { discoveryDuration, discoveryErrors, forgetRoute, limitHits, routesKnown } from './metrics';
import { DiscoveryError, foundBy, Provider, RouteKey, routeId, setRecent, Target } from './types';

const sameIds = (a: readonly Target[], b: readonly Target[]): boolean => a.length === b.length && a.every((t, i) => t.id === b[i].id);

/** A route used this recently is not forgotten for MAX_TARGETS (routes.ts boundTargets). */
export const TARGETS_RESIDENCY_MS = 2000;

export interface RouteTableOptions {
  readonly negativeCacheTtlMs: number;
  readonly maxRoutes: number;
  /**
   * Most targets held over all routes: past it the least recently used routes are forgotten (not the
   * pinned pool, nor the route that brought the table past it). Each port a Host names is a route
   * holding every task of its service: without this, Hosts naming made-up ports of a service of
   * hundreds of tasks ran a worker out of heap. @default unlimited
   */
  readonly maxTargets?: number;
  readonly routeIdleTtlMs: number;
  readonly refreshMs: number;
  /** How long a failed first discovery is remembered, so an AWS outage is not hammered. */
  readonly errorCacheTtlMs?: number;
  /** Background refreshes running at once; ECS read APIs share one account-wide rate limit. */
  readonly refreshConcurrency?: number;
  /**
   * Discoveries of routes without targets that may start per second (a bucket of 4 s worth): each
   * costs AWS calls from the account-wide ECS budget, and a client can invent Hosts without end.
   * @default unlimited
   */
  readonly newRoutesPerSecond?: number;
  readonly now?: () => number;
}

interface Entry {
  /** The lookup answer for this entry's pool, made once rather than per request. */
  hit?: Lookup & { kind: 'pool' };
  readonly key: RouteKey;
  readonly id: string;
  /** Known route (possibly empty after a scale to zero); undefined while absent. */
  pool: Pool | undefined;
  /** Absent until this time (negative cache). */
  absentUntil: number;
  lastUsed: number;
  /** The one pool of static, tag and asg modes: never forgotten, however long it goes unused. */
  readonly pinned: boolean;
  inflight: Promise<Pool | undefined> | undefined;
  /** When the targets it holds were found (Date.now() clock), their age at the primary counted: due again a period later. */
  foundAt: number;
  /** Being rediscovered in the background: settles when it is done (true: the targets changed). */
  refreshing?: Promise<boolean>;
  /** That rediscovery is suspect()'s, asking past the caches. */
  refreshingEarly?: boolean;
  /** A target refused: no rediscovery for it before this time (suspect()). */
  earlyNotBefore?: number;
  /** The wait after the next rediscovery for a refusal, doubled while they find nothing new. */
  earlyGapMs?: number;
}

/**
 * The first wait between rediscoveries a refusing target asks for. Doubled, up to a period, while they
 * change nothing: a task that refuses but stays RUNNING must not cost an AWS call every second for good.
 */
export const EARLY_REFRESH_MS = 1000;
/**
 * How old a shared answer (the primary's, Redis's) may be to count as found since the refusal: one
 * another worker or proxy asked for on the same refusals a moment ago.
 */
export const EARLY_ANSWER_MAX_AGE_MS = 250;

/** Asks per second a worker may make for targets the primary holds, once NEW_ROUTE_RATE is spent. */
export const HELD_ASKS_PER_SECOND = 100;
/** A route the primary held nothing for is not asked for again for this long. */
export const NOT_HELD_MS = 1000;
const NOT_HELD: unique symbol = Symbol('not held');

/** A token bucket: `perSecond`, holding up to `seconds` worth. */
class Bucket {
  private tokens: number;
  private at: number;

  constructor(
    private readonly perSecond: number,
    private readonly seconds: number,
    private readonly now: () => number,
  ) {
    this.tokens = perSecond * seconds;
    this.at = now();
  }

  /** One token; false when the bucket is empty for now. */
  take(): boolean {
    const now = this.now();
    this.tokens = Math.min(this.perSecond * this.seconds, this.tokens + ((now - this.at) * this.perSecond) / 1000);
    this.at = now;
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  }
}

export type Lookup =
  | { readonly kind: 'pool'; readonly pool: Pool }
  | { readonly kind: 'absent' }
  | { readonly kind: 'unknown' };

const ABSENT: Lookup = Object.freeze({ kind: 'absent' });
const UNKNOWN: Lookup = Object.freeze({ kind: 'unknown' });

export class RouteTable {
  private readonly entries = new Map<string, Entry>();
  private timer: NodeJS.Timeout | undefined;
  /** Rediscoveries of known routes under way. */
  private refreshing = 0;
  /** Whether routes in use were found to hold more than MAX_TARGETS (said once). */
  private saidTargetsInUse = false;
  private readonly now: () => number;
  private readonly abort = new AbortController();
  /** NEW_ROUTE_RATE's budget. */
  private readonly newRoutes: Bucket | undefined;
  /** Asks for targets the primary holds, past that budget (admitHeld): each is an IPC round trip. */
  private readonly heldAsks: Bucket;
  /** Those under way, one per route. */
  private readonly heldAsking = new Map<string, Promise<Pool | undefined | typeof NOT_HELD>>();
  /** Routes the primary held nothing for, not asked again until the time given. */
  private readonly notHeld = new Map<string, number>();

  constructor(
    private readonly provider: Provider,
    private readonly registry: TargetRegistry,
    private readonly opts: RouteTableOptions,
  ) {
    this.now = opts.now ?? Date.now;
    const rate = opts.newRoutesPerSecond;
    this.newRoutes = rate === undefined ? undefined : new Bucket(rate, 4, this.now);
    this.heldAsks = new Bucket(HELD_ASKS_PER_SECOND, 1, this.now);
  }

  /** Takes one token of the new-route budget; false when it is spent for now. */
  private mayDiscoverNew(): boolean {
    return this.newRoutes?.take() ?? true;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The hot path: no await, no I/O. */
  get(key: RouteKey, id: string = routeId(key)): Lookup {
    const e = this.entries.get(id);
    if (!e) return UNKNOWN;
    const now = this.now();
    e.lastUsed = now;
    if (e.pool) return e.hit?.pool === e.pool ? e.hit : (e.hit = { kind: 'pool', pool: e.pool });
    if (e.absentUntil > now) return ABSENT;
    return UNKNOWN;
  }

  /** Discovers a route not known yet; concurrent callers share one discovery. Never rejects. */
  resolve(key: RouteKey, id: string = routeId(key)): Promise<Pool | undefined> {
    let e = this.entries.get(id);
    if (e?.inflight) return e.inflight;
    if (e?.pool) return Promise.resolve(e.pool);
    if (!this.mayDiscoverNew()) return this.admitHeld(key, id);
    if (!e) {
      e = this.newEntry(key, id);
      if (!e) return Promise.resolve(undefined);
    }
    const entry = e;
    entry.inflight = this.discover(entry).then(
      (targets) => {
        entry.inflight = undefined;
        if (targets.length === 0) {
          entry.absentUntil = this.now() + this.opts.negativeCacheTtlMs;
          this.gauge();
          return undefined;
        }
        if (this.entries.get(id) !== entry) return undefined; // forgotten meanwhile
        return this.admit(entry, targets);
      },
      (err: DiscoveryError) => {
        entry.inflight = undefined;
        // As long as the primary holds the failure (its backoff), else errorCacheTtlMs.
        entry.absentUntil = this.now() + (err?.retryInMs ?? this.opts.errorCacheTtlMs ?? 1000);
        this.gauge();
        return undefined;
      },
    );
    return entry.inflight;
  }

  /** A place in the table for a route, another forgotten for it at MAX_ROUTES; undefined when none can go. */
  private newEntry(key: RouteKey, id: string): Entry | undefined {
    if (this.entries.size >= this.opts.maxRoutes && !this.evictOne()) {
      limitHits.labels({ limit: 'routes' }).inc();
      return undefined;
    }
    const e: Entry = { key, id, pool: undefined, absentUntil: 0, lastUsed: this.now(), inflight: undefined, foundAt: 0, pinned: false };
    this.entries.set(id, e);
    return e;
  }

  private admit(e: Entry, targets: Target[]): Pool {
    e.pool = new Pool(e.id, this.registry);
    e.pool.update(targets);
    this.boundTargets(e);
    this.gauge();
    return e.pool;
  }

  /**
   * Forgets the least recently used routes while the table holds more than maxTargets targets: not
   * `kept`, not the pinned pool, not one being discovered, and not one used in the last
   * TARGETS_RESIDENCY_MS (routes in steady use that hold more than the bound would otherwise be found
   * again at nearly every request): past the bound then, said once.
   */
  private boundTargets(kept: Entry): void {
    const max = this.opts.maxTargets;
    if (max === undefined) return;
    let total = 0;
    for (const e of this.entries.values()) total += e.pool?.targets.length ?? 0;
    if (total <= max) return;
    const settled = this.now() - TARGETS_RESIDENCY_MS;
    const victims = [...this.entries.values()]
      .filter((e) => e !== kept && !e.pinned && !e.inflight && e.pool && e.pool.targets.length > 0 && e.lastUsed < settled)
      .sort((a, b) => a.lastUsed - b.lastUsed);
    for (const victim of victims) {
      if (total <= max) break;
      total -= victim.pool!.targets.length;
      limitHits.labels({ limit: 'targets' }).inc();
      this.forget(victim);
    }
    this.gauge();
    if (total > max && !this.saidTargetsInUse) {
      this.saidTargetsInUse = true;
      log('warn', 'the routes in use hold more targets than MAX_TARGETS: raise it, or routes are found again and again (said once)', { maxTargets: max, targets: total });
    }
  }

  /**
   * With the new-route budget spent, a route still comes in when the primary holds its targets already
   * (no AWS call): one this worker forgot to Hosts made up, or never served (a replacement worker's, in
   * a flood of junk Hosts). Hosts the primary knows nothing of are answered 503 (`new_routes`), without
   * a place in the table, so that they forget no route.
   */
  private admitHeld(key: RouteKey, id: string): Promise<Pool | undefined> {
    const refused = (): undefined => {
      limitHits.labels({ limit: 'new_routes' }).inc();
      return undefined;
    };
    // Each request refused is a hit, those that share one ask too.
    const answered = (ask: Promise<Pool | undefined | typeof NOT_HELD>): Promise<Pool | undefined> => ask.then((a) => (a === NOT_HELD ? refused() : a));
    const asking = this.heldAsking.get(id);
    if (asking) return answered(asking);
    // Hosts made up come at any rate: each is asked once a while at most, and all of them within a budget.
    if (!this.provider.held || (this.notHeld.get(id) ?? 0) > this.now() || !this.heldAsks.take()) return Promise.resolve(refused());
    const ask: Promise<Pool | undefined | typeof NOT_HELD> = this.provider.held(key).then(
      (found): Pool | undefined | typeof NOT_HELD | Promise<Pool | undefined> => {
        this.heldAsking.delete(id);
        if (!found) {
          setRecent(this.notHeld, id, this.now() + NOT_HELD_MS, this.opts.maxRoutes);
          return NOT_HELD;
        }
        const e = this.entries.get(id) ?? this.newEntry(key, id);
        if (!e) return undefined;
        if (e.pool) return e.pool; // found meanwhile
        if (e.inflight) return e.inflight;
        e.foundAt = this.now() - found.ageMs;
        return this.admit(e, found.targets);
      },
      (): typeof NOT_HELD => (this.heldAsking.delete(id), NOT_HELD),
    );
    this.heldAsking.set(id, ask);
    return answered(ask);
  }

  /** Adds a route that is always kept (the one pool of static, tag and asg modes) and discovers it. */
  async pin(key: RouteKey): Promise<Pool> {
    const id = routeId(key);
    const pool = new Pool(id, this.registry);
    // lastUsed moves with every request (get() stays one store); pinned is what keeps it.
    const e: Entry = { key, id, pool, absentUntil: 0, lastUsed: this.now(), inflight: undefined, foundAt: 0, pinned: true };
    this.entries.set(id, e);
    this.gauge();
    // As a refresh: the refresh loop does not start another while this one runs (a start that waits
    // no longer for it, POOL_START_WAIT_MS, must not have two answers race). A failure is logged and
    // counted in discover(), and the loop tries again.
    await this.refreshOne(e);
    return pool;
  }

  /**
   * Refreshes each route a period after its targets were found, not on one clock for all: a route found
   * just after a shared tick would otherwise wait for the tick after next (the primary answers from its
   * cache for most of a period), and a change in AWS could take almost two periods to arrive.
   */
  start(): void {
    const tickMs = Math.min(1000, Math.max(50, this.opts.refreshMs / 10));
    const tick = (): void => {
      this.timer = setTimeout(() => {
        // Not awaited: a pass holds only the routes it rediscovers, and the next tick may start others.
        void this.refresh({ dueOnly: true });
        if (!this.abort.signal.aborted) tick();
      }, tickMs);
      this.timer.unref();
    };
    tick();
  }

  stop(): void {
    this.abort.abort();
    if (this.timer) clearTimeout(this.timer);
  }

  /**
   * One refresh pass: expire idle and negative entries, rediscover the known routes (with dueOnly, those
   * a period old; one without targets as soon as NEGATIVE_CACHE_TTL, as a new route would be) that are
   * not being rediscovered already, oldest first, in the slots of refreshConcurrency still free. A
   * route whose discovery hangs holds its own slot until the discovery deadline, not the whole pass:
   * the next tick goes on with the others.
   */
  async refresh(opts: { dueOnly?: boolean } = {}): Promise<void> {
    const now = this.now();
    const due: Entry[] = [];
    for (const e of this.entries.values()) {
      if (!e.pinned && now - e.lastUsed > this.opts.routeIdleTtlMs && !e.inflight && !e.refreshing) this.forget(e);
      else if (!e.pool && e.absentUntil <= now && !e.inflight) this.forget(e);
      else if (e.pool && !e.refreshing && (!opts.dueOnly || now - e.foundAt >= this.periodOf(e.pool))) due.push(e);
    }
    this.gauge();
    due.sort((a, b) => a.foundAt - b.foundAt);
    const free = (this.opts.refreshConcurrency ?? 4) - this.refreshing;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < due.length && !this.abort.signal.aborted) {
        const e = due[next++];
        // Not one rediscovered meanwhile (by suspect()), or forgotten.
        if (!e.refreshing && this.entries.get(e.id) === e && (!opts.dueOnly || this.now() - e.foundAt >= this.periodOf(e.pool!))) await this.refreshOne(e);
      }
    };
    await Promise.all(Array.from({ length: Math.min(Math.max(free, 0), due.length) }, worker));
  }

  /** A route's targets are due again a period after they were found; an empty route's sooner. */
  private periodOf(pool: Pool): number {
    return pool.size === 0 ? Math.min(this.opts.refreshMs, this.opts.negativeCacheTtlMs) : this.opts.refreshMs;
  }

  private refreshOne(e: Entry, maxAgeMs?: number): Promise<boolean> {
    const p = this.rediscover(e, maxAgeMs);
    e.refreshing = p;
    return p;
  }

  private async rediscover(e: Entry, maxAgeMs?: number): Promise<boolean> {
    this.refreshing++;
    try {
      const targets = await this.discover(e, maxAgeMs);
      if (!e.pool || this.entries.get(e.id) !== e) return false;
      const before = e.pool.targets;
      // A service scaled to zero becomes empty (503), not stale.
      e.pool.update(targets);
      if (e.pool.targets.length > before.length) this.boundTargets(e);
      return !sameIds(before, e.pool.targets);
    } catch {
      // Stale on error: the last known targets keep serving.
      return false;
    } finally {
      this.refreshing--;
      e.refreshing = undefined;
      e.refreshingEarly = false;
    }
  }

  /**
   * A target of the route `id` refused a connection, or took none within POOL_TIMEOUT: it may have left
   * (a task stopped in a rolling deploy; ECS stops the old tasks once the new ones run, and a load
   * balancer it does not know of hears nothing). The route is rediscovered now rather than at its next
   * period, with an answer no older than EARLY_ANSWER_MAX_AGE_MS, and at most once per EARLY_REFRESH_MS, a gap
   * that doubles up to a period while rediscoveries find nothing new.
   */
  suspect(id: string): Promise<unknown> | undefined {
    const e = this.entries.get(id);
    const now = this.now();
    if (!e?.pool || this.abort.signal.aborted) return undefined;
    // suspect()'s own under way is the one to wait for. The period's may answer from a cache nearly a
    // period old: unless it changes the targets, an early one follows it.
    if (e.refreshing) return e.refreshingEarly ? e.refreshing : e.refreshing.then((changed) => (changed ? undefined : this.suspect(id)));
    if ((e.earlyNotBefore ?? 0) > now) return undefined;
    // Every target of every route refusing at once (the network, not a deploy) must not become a
    // discovery of every route at once: no more than refreshConcurrency beside the period's.
    if (this.refreshing >= 2 * (this.opts.refreshConcurrency ?? 4)) return undefined;
    const gap = e.earlyGapMs ?? EARLY_REFRESH_MS;
    e.earlyNotBefore = Infinity; // until this one is done
    const early = this.refreshOne(e, EARLY_ANSWER_MAX_AGE_MS);
    e.refreshingEarly = true;
    return early.then((changed) => {
      e.earlyGapMs = changed ? EARLY_REFRESH_MS : Math.min(gap * 2, this.opts.refreshMs);
      e.earlyNotBefore = this.now() + (changed ? EARLY_REFRESH_MS : gap);
    });
  }

  private async discover(e: Entry, maxAgeMs?: number): Promise<import('./types').Target[]> {
    const started = process.hrtime.bigint();
    const seconds = (): number => Number(process.hrtime.bigint() - started) / 1e9;
    try {
      const found = await foundBy(this.provider, e.key, this.abort.signal, maxAgeMs);
      e.foundAt = this.now() - found.ageMs;
      // A failure the primary answered with the last targets (it counted the error) is still a failure.
      discoveryDuration.labels({ provider: this.provider.name, outcome: found.stale ? 'error' : 'ok' }).observe(seconds());
      return found.targets;
    } catch (err) {
      // An ask the stop cut short (aborted, or the primary's line closed) is no failure of discovery, to
      // count or to say; AWS failing during the drain still is.
      const cut = (err as { name?: unknown } | undefined)?.name === 'AbortError' || (err as { closing?: unknown } | undefined)?.closing === true;
      if (cut && this.abort.signal.aborted) throw err;
      // Tried again a period later, as the last targets would have been refreshed.
      e.foundAt = this.now();
      discoveryDuration.labels({ provider: this.provider.name, outcome: 'error' }).observe(seconds());
      // Once per failure: with workers, the primary counts it (every worker that asks would count it again).
      if (!this.provider.countsFailures) discoveryErrors.labels({ provider: this.provider.name }).inc();
      // Not again when the primary said it already, for every worker.
      if (!wasLogged(err)) {
        log('warn', e.pool?.size ? 'discovery failed; keeping the last known targets' : 'discovery failed; the route has no targets yet', { route: e.id, ...errorFields(err) });
      }
      throw err;
    }
  }

  /** Frees one slot: a negative entry first, else the least recently used route. */
  private evictOne(): boolean {
    let victim: Entry | undefined;
    for (const e of this.entries.values()) {
      if (e.inflight || e.pinned) continue;
      if (!e.pool) {
        victim = e;
        break;
      }
      if (!victim || e.lastUsed < victim.lastUsed) victim = e;
    }
    if (!victim) return false;
    limitHits.labels({ limit: 'routes' }).inc();
    this.forget(victim);
    return true;
  }

  private forget(e: Entry): void {
    this.entries.delete(e.id);
    e.pool?.clear();
    forgetRoute(e.id);
  }

  /** The route is in the table with targets found (now or before): its requests are counted under its id. */
  known(id: string): boolean {
    return this.entries.get(id)?.pool !== undefined;
  }

  private gauge(): void {
    let known = 0;
    for (const e of this.entries.values()) if (e.pool) known++;
    routesKnown.labels({ state: 'known' }).set(known);
    routesKnown.labels({ state: 'absent' }).set(this.entries.size - known);
  }

  close(): void {
    this.stop();
    for (const e of this.entries.values()) e.pool?.clear();
    this.entries.clear();
  }
}
