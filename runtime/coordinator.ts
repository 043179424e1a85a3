/**
 * The primary's share of the work: one discovery and one health checker for all workers (see ipc.ts
 * for why), and /metrics gathered from every worker plus the primary itself.
 */
import type { Worker } from 'node:cluster';
import { BreakerBoard, type BreakerState } from './breaker';
import type { Config } from './config';
import { StaticProvider } from './discovery/static';
import { MetricsGather } from './gather';
import { HealthChecker } from './health';
import type { ToPrimary, ToWorker } from './ipc';
import { LogBudget, errorFields, log, markLogged, wasLogged } from './log';
import { discoveryErrors, memoryCacheLookups, nodeHealthStatus } from './metrics';
import { DISCOVERY_DEADLINE_MS, DiscoveryError, Found, foundBy, Provider, RouteKey, routeId, setRecent, sortTargets, StatusSetter, Target, within } from './types';

/**
 * The discovery provider of NODE_FILTER. The AWS SDK and the Redis client are loaded only by the modes
 * that use them: a static pool's processes stay tens of megabytes smaller.
 */
export async function providerFor(config: Config): Promise<Provider> {
  if (config.nodeFilter === 'static') return new StaticProvider(config.staticTargets);
  const { createProvider } = await import('./discovery');
  return createProvider(config);
}

/** The active health checker the settings ask for, or undefined with HEALTH_CHECK_PATH=off. */
export function healthCheckerFor(config: Config, setter: StatusSetter): HealthChecker | undefined {
  if (config.healthCheckPath === null) return undefined;
  return new HealthChecker(
    {
      path: config.healthCheckPath,
      protocol: config.healthCheckProtocol,
      periodMs: config.healthCheckPeriodMs,
      timeoutMs: config.healthCheckTimeoutMs,
      healthyThreshold: config.healthyThreshold,
      unhealthyThreshold: config.unhealthyThreshold,
      matcher: config.healthCheckMatcher,
    },
    setter,
    { onError: (err, target) => log('error', 'health status update failed', { target: target.id, ...errorFields(err) }) },
  );
}

interface Cached {
  readonly at: number;
  readonly targets: readonly Target[];
  /** When a failed discovery last kept these targets in use (the workers go on serving them). */
  keptAt?: number;
}

export { DISCOVERY_DEADLINE_MS };
/**
 * A route found before and due again: a worker that asks (one started since, one that never served the
 * route) waits this long for the new answer, then gets the last one, as the other workers keep serving
 * it. A slow or hanging AWS (throttled retries, a hang until DISCOVERY_DEADLINE_MS) must not turn a known
 * route into a 503 in one worker while the others serve it.
 */
export const STALE_ANSWER_AFTER_MS = 1000;
/** held() gives targets found at most this many NODE_CHECK_PERIODs ago. */
export const HELD_MAX_PERIODS = 2;
/** The first wait before a route whose first discovery failed is tried again; doubled while it fails, up to NEGATIVE_CACHE_TTL. */
export const FAILED_ROUTE_RETRY_MS = 1000;
/** Target health and breaker lines logged at once before the budget holds them back (a deploy's worth). */
export const TARGET_LINE_BURST = 60;
/** Then one such line per this many ms (720 an hour at most); the next one says how many were held back. */
export const TARGET_LINE_EVERY_MS = 5000;

export class Coordinator {
  private readonly workers = new Map<number, Worker>();
  /** When each worker was last heard from (any message), for the watchdog; none before its first. */
  private readonly heard = new Map<number, number>();
  /** When the watchdog last looked (performance.now()). */
  private lastWatch: number | undefined;
  private readonly inUse = new Map<number, readonly Target[]>();
  private readonly verdicts = new Map<string, boolean>();
  /** Targets whose breaker opened and has not closed since (for the log). */
  private readonly opened = new Set<string>();
  /**
   * Without active checks (HEALTH_CHECK_PATH=off), the targets in use, each reported healthy in
   * load_balancer_node_health_status (1: in rotation): the seed's gauge, that dashboards are built on,
   * does not go blank.
   */
  private readonly unchecked = new Set<string>();
  /**
   * Health and breaker lines: a few at once, then one per TARGET_LINE_EVERY_MS. Hosts naming new ports
   * of a service are new targets that fail their checks, each a line: clients must not fill the journal.
   */
  private readonly targetLines = new LogBudget(TARGET_LINE_BURST, TARGET_LINE_EVERY_MS);
  private readonly health: HealthChecker | undefined;
  /** One circuit breaker per target for every worker (breaker.ts). */
  private readonly breakers: BreakerBoard;
  private readonly periodMs: number;
  /** Results younger than this serve every worker's request for the route: one discovery per period. */
  private readonly freshMs: number;
  /** An empty result is kept no longer than NEGATIVE_CACHE_TTL, so a new service shows up as promised. */
  private readonly emptyFreshMs: number;
  private readonly fresh = new Map<string, Cached>();
  /** Routes remembered at most: MAX_ROUTES for each worker. */
  private readonly maxRoutes: number;
  /** Targets remembered at most over those routes' answers, MAX_TARGETS for each worker, and how many are. */
  private readonly maxTargets: number;
  private freshTargets = 0;
  /** When a worker last asked for each route: what prune() goes by, since a route's last answer may be old. */
  private readonly asked = new Map<string, number>();
  private readonly inflight = new Map<string, Promise<Found>>();
  /** When a failed discovery of each route was last logged: said once a period for all the workers. */
  private readonly failureSaid = new Map<string, number>();
  /**
   * Routes without targets whose discovery failed: answered with that failure until `until`, the wait
   * doubling with each failure in a row (FAILED_ROUTE_RETRY_MS up to NEGATIVE_CACHE_TTL). A refused or
   * failing AWS must not be asked for every such route every second by every worker.
   */
  private readonly failed = new Map<string, { readonly until: number; readonly waitMs: number; readonly err: DiscoveryError }>();
  private readonly negativeCacheTtlMs: number;
  /** A /metrics gather under way, which scrapes arriving meanwhile share. */
  private scrape: Promise<string> | undefined;
  /** /metrics summed over this process and its workers. */
  private readonly gather = new MetricsGather(() => ({ routes: this.asked, targets: new Set(this.kept().map((t) => t.id)) }));

  constructor(
    config: Config,
    private readonly provider: Provider,
    private readonly now: () => number = Date.now,
    private readonly deadlineMs: number = DISCOVERY_DEADLINE_MS,
  ) {
    this.maxRoutes = config.maxRoutes * config.workers;
    this.maxTargets = config.maxTargets * config.workers;
    this.periodMs = config.nodeCheckPeriodMs;
    this.freshMs = config.nodeCheckPeriodMs * 0.9;
    this.emptyFreshMs = Math.min(this.freshMs, config.negativeCacheTtlMs * 0.9);
    this.negativeCacheTtlMs = config.negativeCacheTtlMs;
    this.health = healthCheckerFor(config, { setStatus: (target, up) => this.verdict(target.id, up), passed: (target, startedAt) => this.healthPassed(target.id, startedAt) });
    this.breakers = new BreakerBoard({ threshold: config.circuitBreakerThreshold, timeoutMs: config.circuitBreakerTimeoutMs, now });
  }

  add(worker: Worker): void {
    this.workers.set(worker.id, worker);
    worker.on('message', (m: ToPrimary) => {
      this.heard.set(worker.id, performance.now());
      this.onMessage(worker, m);
    });
  }

  /**
   * The watchdog's turn (every third of WORKER_STUCK_TIMEOUT): a worker not heard from for `stuckMs`
   * has an event loop that no longer turns (a bug looping, a stall): every connection it holds hangs,
   * and nothing else would end it. It is killed, and the primary's 'exit' handler replaces it. The
   * others are pinged, so that an idle worker is heard from too. Silence is judged on a monotonic
   * clock, after the messages already waiting are read (setImmediate), and not at all after a stall of
   * the primary itself (a turn late by more than a third of the timeout): its workers' answers may be
   * waiting unread, and they are heard from again first.
   */
  watchdog(stuckMs: number): void {
    const now = performance.now();
    const late = this.lastWatch !== undefined && now - this.lastWatch > stuckMs * (2 / 3);
    this.lastWatch = now;
    if (late) for (const id of this.heard.keys()) this.heard.set(id, now);
    setImmediate(() => {
      const at = performance.now();
      for (const w of this.workers.values()) {
        if (!w.isConnected()) continue;
        // Judged once it has spoken: a worker still starting (slow on a loaded machine) is left to start.
        const heard = this.heard.get(w.id);
        const silentMs = heard === undefined ? 0 : at - heard;
        if (silentMs > stuckMs) {
          log('error', 'a worker has not answered the primary: its event loop is stuck; killing it', { worker: w.id, workerPid: w.process.pid, silentMs: Math.round(silentMs) });
          this.heard.delete(w.id);
          w.process.kill('SIGKILL');
        } else {
          this.send(w, { t: 'ping' });
        }
      }
    });
  }

  remove(worker: Worker): void {
    this.workers.delete(worker.id);
    this.heard.delete(worker.id);
    this.gather.gone(worker.id);
    if (this.inUse.delete(worker.id)) this.syncHealth();
    // A trial the worker held is given back, or the target would stay half-open with nobody to try it.
    const freed = this.breakers.workerGone(worker.id);
    if (freed.length) this.broadcast({ t: 'breaker', snaps: freed });
  }

  private onMessage(worker: Worker, m: ToPrimary): void {
    switch (m.t) {
      case 'discover':
        void (m.heldOnly ? this.held(m.route) : this.discoverAged(m.route, m.maxAgeMs)).then(
          ({ targets, ageMs, stale }) => {
            // Breakers other workers opened come first: the worker's new targets start in that state.
            const snaps = this.breakers.snapshots(new Set(targets.map((t) => t.id)));
            if (snaps.length) this.send(worker, { t: 'breaker', snaps });
            this.send(worker, { t: 'discovered', n: m.n, targets, ageMs, ...(stale ? { stale } : {}) });
          },
          (err: unknown) => {
            const { error, code } = errorFields(err);
            const retryInMs = (err as DiscoveryError).retryInMs;
            this.send(worker, {
              t: 'discovered', n: m.n, error: String(error),
              ...(typeof code === 'string' ? { code } : {}), ...(wasLogged(err) ? { logged: true } : {}), ...(retryInMs === undefined ? {} : { retryInMs }),
            });
          },
        );
        break;
      case 'in-use': {
        this.inUse.set(worker.id, m.targets);
        // Verdicts the worker has not heard yet (its targets may have been checked for another worker).
        const known = m.targets.filter((t) => this.verdicts.has(t.id)).map((t) => [t.id, this.verdicts.get(t.id)!] as const);
        if (known.length) this.send(worker, { t: 'health', verdicts: known });
        // Likewise breakers it has not heard of (a replacement worker), and none kept for targets nobody uses.
        const snaps = this.breakers.snapshots(new Set(m.targets.map((t) => t.id)));
        if (snaps.length) this.send(worker, { t: 'breaker', snaps });
        this.syncHealth();
        break;
      }
      case 'breaker': {
        // A worker already removed holds nothing: a trial granted to it would be held by nobody.
        if (!this.workers.has(worker.id)) break;
        const { snap, changed } = this.breakers.report(worker.id, m.id, m.ev);
        if (changed) {
          this.logBreaker(snap.id, snap.state);
          this.broadcast({ t: 'breaker', snaps: [snap] }, worker);
          if (snap.state === 'open') this.halfOpenAfter(snap.id, snap.remainingMs ?? 0);
        }
        // The reporter hears last, after every other worker: its client's answer waits for this. A claim
        // on the trial is always answered (granted, held elsewhere, or still open by the board's clock).
        if (changed || m.n !== undefined) this.send(worker, { t: 'breaker', snaps: [snap], n: m.n });
        break;
      }
      case 'breakers?':
        this.send(worker, { t: 'breaker', snaps: m.ids.map((id) => this.breakers.snapshot(id)), n: m.n });
        break;
      case 'metrics':
        if (this.workers.has(worker.id)) this.gather.answered(worker.id, m.n, m.json);
        break;
      default:
        break;
    }
  }

  /**
   * The targets held for a route, never a discovery: what a worker whose NEW_ROUTE_RATE is spent may
   * still take (a route it forgot to Hosts made up, or never served: a replacement's), since it costs
   * AWS nothing. None (an empty answer, made without an Error: Hosts made up ask this at the rate they
   * come) when none are held, or only ones older than HELD_MAX_PERIODS periods. Targets a failing
   * discovery keeps in use are as old as that last failure: the others serve them, and so may this one.
   */
  held(route: RouteKey): Promise<Found> {
    const id = routeId(route);
    const hit = this.fresh.get(id);
    // Not one so old its tasks may be long gone (a route no worker asked for since, kept ROUTE_IDLE_TTL).
    if (!hit || hit.targets.length === 0 || this.now() - Math.max(hit.at, hit.keptAt ?? -Infinity) > HELD_MAX_PERIODS * this.periodMs) return Promise.resolve({ targets: [], ageMs: 0 });
    setRecent(this.asked, id, this.now(), this.maxRoutes, (oldest) => this.forgetRoute(oldest));
    return Promise.resolve({ targets: [...hit.targets], ageMs: this.now() - hit.at });
  }

  /** One discovery per route at a time, and one per period however many workers ask. */
  async discover(route: RouteKey): Promise<Target[]> {
    return (await this.discoverAged(route)).targets;
  }

  /**
   * The same, with the answer's age: one shared from the cache is that old already, and the worker that
   * takes it refreshes it a period after it was found, not a period after it asked. A fresh answer, or
   * the last one kept when AWS failed, is 0 old (the next try is a period away).
   */
  discoverAged(route: RouteKey, maxAgeMs = Infinity): Promise<Found> {
    const id = routeId(route);
    // Most recently asked last; as many routes as all the workers can hold, the oldest going first
    // (Hosts naming ever new routes churn the workers' tables, and would otherwise grow these maps).
    setRecent(this.asked, id, this.now(), this.maxRoutes, (oldest) => this.forgetRoute(oldest));
    const hit = this.fresh.get(id);
    const now = this.now();
    if (hit && now - hit.at < Math.min(hit.targets.length ? this.freshMs : this.emptyFreshMs, maxAgeMs)) {
      memoryCacheLookups.inc({ result: 'hit' });
      return Promise.resolve({ targets: [...hit.targets], ageMs: now - hit.at });
    }
    const failed = this.failed.get(id);
    if (failed && failed.until > now && !hit) {
      memoryCacheLookups.inc({ result: 'hit' });
      const { message, name, code } = failed.err as DiscoveryError & { code?: string };
      return Promise.reject(Object.assign(new Error(message), { name, code, logged: true, retryInMs: failed.until - now }));
    }
    memoryCacheLookups.inc({ result: 'miss' });
    const found = this.fetch(route, id, maxAgeMs);
    // Not for an ask that wants a young answer (its targets refused): that worker serves its own meanwhile.
    // Nor an empty one: a worker holds that as absent for NEGATIVE_CACHE_TTL, past the task that is
    // coming back. The last answer goes as old as it is, so the worker asks again at its next turn; the
    // discovery goes on.
    if (!hit || hit.targets.length === 0 || maxAgeMs !== Infinity) return found;
    return within(found, STALE_ANSWER_AFTER_MS).then((f) => f ?? { targets: [...hit.targets], ageMs: this.now() - hit.at });
  }

  private fetch(route: RouteKey, id: string, maxAgeMs: number): Promise<Found> {
    let p = this.inflight.get(id);
    if (!p) {
      // A deadline for the whole discovery: an AWS answer that stalls mid-body, or pages without end,
      // must not leave the route's one discovery pending for good (every later ask joins it).
      const deadline = AbortSignal.timeout(this.deadlineMs);
      // Raced as well as passed on: whatever part of a provider does not heed the signal cannot hold it.
      const aborted = new Promise<never>((_, reject) => deadline.addEventListener('abort', () => reject(new Error(`discovery took over ${this.deadlineMs / 1000} s`)), { once: true }));
      aborted.catch(() => undefined);
      const found = foundBy(this.provider, route, deadline, maxAgeMs);
      p = Promise.race([found, aborted]).then(
        (f) => {
          this.inflight.delete(id);
          // A route forgotten while its discovery ran (the cap) is not remembered again behind prune's back.
          // Found as long ago as the answer is old (one shared through Redis): fresh no longer than that.
          if (this.asked.has(id)) this.keepFresh(id, { at: this.now() - f.ageMs, targets: f.targets });
          this.failureSaid.delete(id);
          this.failed.delete(id);
          return f;
        },
        (err: unknown) => {
          this.inflight.delete(id);
          // A worker that starts while AWS fails (one replaced after a crash) must get what the others
          // keep serving, not an empty route: the last answer stands until one succeeds.
          const last = this.fresh.get(id);
          if (!last) {
            // Logged here for every worker (each would say it once a period), and counted by each.
            const before = this.failed.get(id)?.waitMs;
            const waitMs = before === undefined ? FAILED_ROUTE_RETRY_MS : Math.min(2 * before, Math.max(FAILED_ROUTE_RETRY_MS, this.negativeCacheTtlMs));
            this.sayFailure(id, 'discovery failed; the route has no targets yet', { route: id, retryInMs: waitMs, ...errorFields(err) });
            const failure = markLogged(err) as DiscoveryError;
            if (this.asked.has(id)) this.failed.set(id, { until: this.now() + waitMs, waitMs, err: failure });
            throw Object.assign(failure, { retryInMs: waitMs });
          }
          // The workers keep serving the last targets: the failure is counted here, where it happened.
          last.keptAt = this.now();
          discoveryErrors.labels({ provider: this.provider.name }).inc();
          this.sayFailure(id, 'discovery failed: the last targets found stay in use', { route: id, targets: last.targets.length, ...errorFields(err) });
          return { targets: [...last.targets], ageMs: 0, stale: true };
        },
      );
      this.inflight.set(id, p);
    }
    return p.then((f) => ({ targets: [...f.targets], ageMs: f.ageMs, ...(f.stale ? { stale: true } : {}) }));
  }

  /**
   * A route's failed discovery, logged once a period however many workers ask (each asks once a period,
   * each at its own time, and each ask tries AWS again).
   */
  private sayFailure(id: string, msg: string, fields: Record<string, unknown>): void {
    const now = this.now();
    const said = this.failureSaid.get(id);
    if (said !== undefined && now - said < this.freshMs) return;
    this.failureSaid.set(id, now);
    log('warn', msg, fields);
  }

  /** Forgets cached results no worker asked for in a while (routes expire in the workers too). */
  prune(maxAgeMs: number): void {
    const now = this.now();
    let pruned = false;
    for (const [id, at] of this.asked) {
      if (now - at <= maxAgeMs) continue;
      this.asked.delete(id);
      pruned = this.forgetRoute(id) || pruned;
    }
    if (pruned) this.syncHealth();
  }

  /**
   * Keeps a route's answer; past MAX_TARGETS targets for each worker over all answers kept, the routes
   * asked for least recently whose targets no worker uses are forgotten (not this one): what the primary
   * remembers, and health-checks, stays bounded as the workers' tables are (which bound what they use),
   * whatever Hosts name. A route a worker serves is asked for once a period only, and Hosts made up many
   * times a second: by ask alone, those would push it out, and a worker that forgot it with its
   * NEW_ROUTE_RATE spent could not take it back from here (held()).
   */
  private keepFresh(id: string, cached: Cached): void {
    this.freshTargets += cached.targets.length - (this.fresh.get(id)?.targets.length ?? 0);
    this.fresh.set(id, cached);
    if (this.freshTargets <= this.maxTargets) return;
    const used = new Set<string>();
    for (const targets of this.inUse.values()) for (const t of targets) used.add(t.id);
    let pruned = false;
    for (const old of this.asked.keys()) {
      if (this.freshTargets <= this.maxTargets) break;
      const answer = this.fresh.get(old);
      // A route's targets are all used or none (a worker holds a route whole).
      if (old === id || !answer || (answer.targets.length > 0 && used.has(answer.targets[0].id))) continue;
      this.asked.delete(old);
      pruned = this.forgetRoute(old) || pruned;
    }
    if (pruned) this.syncHealth();
  }

  /** Drops what is kept of a route no worker asks for; true when it had an answer. */
  private forgetRoute(id: string): boolean {
    this.failureSaid.delete(id);
    this.failed.delete(id);
    this.freshTargets -= this.fresh.get(id)?.targets.length ?? 0;
    return this.fresh.delete(id);
  }

  /**
   * The targets the primary keeps what it knows of (metric series, checks, breakers): those in use, and
   * those found for routes still asked for. A worker that died, and its replacement (which reports its
   * targets only as requests come), must not take them along: a dead worker's series would drop, and a
   * target whose breaker is open would get requests again.
   */
  private kept(): Target[] {
    return sortTargets([...this.inUse.values(), ...[...this.fresh.values()].map((c) => c.targets)].flat());
  }

  private syncHealth(): void {
    const all = this.kept();
    const ids = new Set(all.map((t) => t.id));
    // Workers keep the board's word on targets they do not use (for when they do): let them drop it too.
    const forgotten = this.breakers.retain(ids);
    for (const id of this.opened) if (!ids.has(id)) this.opened.delete(id);
    if (forgotten.length) this.broadcast({ t: 'breaker', snaps: forgotten });
    if (!this.health) {
      for (const id of this.unchecked) {
        if (ids.has(id)) continue;
        this.unchecked.delete(id);
        nodeHealthStatus.remove({ target: id });
      }
      for (const id of ids) {
        if (this.unchecked.has(id)) continue;
        this.unchecked.add(id);
        nodeHealthStatus.labels({ target: id }).set(1);
      }
      return;
    }
    for (const id of this.verdicts.keys()) if (!ids.has(id)) this.verdicts.delete(id);
    this.health.sync(all);
  }

  private verdict(id: string, up: boolean): void {
    const before = this.verdicts.get(id);
    // Said once per change for the fleet of workers: a target leaving rotation, and coming back. One that
    // was healthy is no target a client made up (a Host naming a port nothing listens on): said whatever
    // the budget.
    if (!up) this.targetLines.log('warn', 'target unhealthy', { target: id }, before === true);
    else if (before === false) this.targetLines.log('info', 'target healthy again', { target: id });
    this.verdicts.set(id, up);
    for (const w of this.workers.values()) {
      if (this.inUse.get(w.id)?.some((t) => t.id === id)) this.send(w, { t: 'health', verdicts: [[id, up]] });
    }
  }

  /** A breaker's opening, and its closing after it, said once for all workers. */
  private logBreaker(id: string, state: BreakerState): void {
    if (state === 'open' && !this.opened.has(id)) {
      this.opened.add(id);
      this.targetLines.log('warn', 'circuit breaker open: target gets no requests until a trial succeeds', { target: id }, this.verdicts.get(id) === true);
    } else if (state === 'closed' && this.opened.delete(id)) {
      this.targetLines.log('info', 'circuit breaker closed: target back in rotation', { target: id });
    }
  }

  private send(worker: Worker, m: ToWorker): void {
    if (worker.isConnected()) worker.send(m);
  }

  /** A health check passed: a breaker that refused connections opened is half-open now, in every worker. */
  private healthPassed(id: string, startedAt: number): void {
    const snap = this.breakers.healthPassed(id, startedAt);
    if (snap) this.broadcast({ t: 'breaker', snaps: [snap] });
  }

  /**
   * Tells every worker when an open breaker turns half-open (each would find out only when a request
   * looks), so that karma_circuit_breaker_state says so without traffic. A re-opened breaker's earlier
   * timer finds it still open and says nothing.
   */
  private halfOpenAfter(id: string, ms: number): void {
    setTimeout(() => {
      const snap = this.breakers.snapshot(id);
      if (snap.state === 'half-open' && snap.holder === undefined) this.broadcast({ t: 'breaker', snaps: [snap] });
    }, ms + 1).unref();
  }

  private broadcast(m: ToWorker, except?: Worker): void {
    for (const w of this.workers.values()) if (w !== except) this.send(w, m);
  }

  /** Asks every worker for its metrics, between scrapes: what a worker killed outright loses (gather.ts). */
  refreshMetrics(): void {
    for (const w of this.workers.values()) if (w.isConnected()) this.send(w, { t: 'metrics?', n: this.gather.nextNumber() });
  }

  /**
   * Prometheus text of every worker and the primary, summed (see gather.ts). A worker that has not
   * answered within `timeoutMs` (a loaded one answers in milliseconds; a stuck one never, until the
   * watchdog replaces it) counts with its last answer, so that a scrape is not held up with it.
   */
  metrics(timeoutMs = 1500): Promise<string> {
    // Scrapes at the same time share one gather: each costs the primary CPU in proportion to the series
    // (a fifth of a second near MAX_ROUTES), and the primary also runs discovery and the health checks.
    if (this.scrape) return this.scrape;
    const live = [...this.workers.values()].filter((w) => w.isConnected());
    const scrape = this.gather.text(this.workers.keys(), live.map((w) => ({ id: w.id, send: (n: number) => this.send(w, { t: 'metrics?', n }) })), timeoutMs);
    this.scrape = scrape;
    void scrape.finally(() => (this.scrape = undefined)).catch(() => undefined);
    return scrape;
  }

  async close(): Promise<void> {
    this.health?.stop();
    await this.provider.close?.();
  }
}
