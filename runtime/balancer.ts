/**
 * Targets and their state, and round-robin over them.
 *
 * A target's state (health verdict, circuit breaker, keep-alive agent, in-flight count) lives once in
 * the TargetRegistry, shared by every route that names it; a Pool is one route's ordered members.
 * The balancer knows targets and their state, not where they came from (discovery) nor how health
 * is judged (the health checker calls setStatus).
 */
import { CircuitBreaker, breakerStateValue, type BreakerLink } from './breaker';
import { breakerState, countersFromStart, countUnhealthyWith, failOpenTotal, forgetTarget, nodeHealthStatus, targetsPerRoute } from './metrics';
import { sortTargets, type StatusSetter, type Target } from './types';
import { UpstreamPool } from './upstream';

export interface TargetState {
  readonly target: Target;
  /** true healthy, false unhealthy, undefined not checked yet (or active checks are off). */
  healthy: boolean | undefined;
  readonly breaker: CircuitBreaker;
  /** Keep-alive connections: POOL_SIZE sockets at most to this target, more requests wait in line. */
  readonly pool: UpstreamPool;
  inflight: number;
  /** How many pools list this target; at 0 with nothing in flight it is forgotten (drained). */
  refs: number;
  /** The answer pick() gives for this target when it is not a fail-open one, made once. */
  picked?: Pick;
}

export interface RegistryOptions {
  readonly poolSize: number;
  readonly breakerThreshold: number;
  readonly breakerTimeoutMs: number;
  /** Free keep-alive sockets are closed after this idle time, before a typical upstream would close them. */
  readonly freeSocketTimeoutMs?: number;
  /** A request waits at most this long for one of a target's POOL_SIZE sockets (UPSTREAM_TIMEOUT). @default no bound */
  readonly maxWaitMs?: number;
  /** The primary's board, which keeps one breaker per target for all workers. @default each breaker counts alone */
  readonly breakers?: BreakerLink;
}

export class TargetRegistry implements StatusSetter {
  private readonly states = new Map<string, TargetState>();
  /** Half-open trials the primary granted to this worker that no request has taken yet (pick() takes them first). */
  grants = 0;
  private changed: (() => void) | undefined;

  constructor(private readonly opts: RegistryOptions) {}

  /** The primary's board, when the breakers are shared (several workers). */
  get breakers(): BreakerLink | undefined {
    return this.opts.breakers;
  }

  /** Called whenever the set of targets in use changes (the health checker re-syncs on it). */
  onChange(fn: () => void): void {
    this.changed = fn;
  }

  targets(): Target[] {
    return [...this.states.values()].map((s) => s.target);
  }

  get(id: string): TargetState | undefined {
    return this.states.get(id);
  }

  acquire(target: Target): TargetState {
    let s = this.states.get(target.id);
    if (!s) {
      const id = target.id;
      const link = this.opts.breakers;
      s = {
        target,
        healthy: undefined,
        breaker: new CircuitBreaker({
          threshold: this.opts.breakerThreshold,
          timeoutMs: this.opts.breakerTimeoutMs,
          onChange: (state) => breakerState.labels({ target: id }).set(breakerStateValue(state)),
          onGrant: (delta) => (this.grants += delta),
          shared: link && { id, link },
        }),
        pool: new UpstreamPool({
          host: target.host,
          port: target.port,
          maxSockets: this.opts.poolSize,
          maxFreeSockets: Math.min(this.opts.poolSize, 256),
          freeSocketTimeoutMs: this.opts.freeSocketTimeoutMs ?? 4000,
          maxWaitMs: this.opts.maxWaitMs,
        }),
        inflight: 0,
        refs: 0,
      };
      // A series from the start (0, closed), so dashboards see the target before anything goes wrong.
      breakerState.labels({ target: id }).set(breakerStateValue('closed'));
      countersFromStart(id);
      // A target another worker has seen fail: its breaker starts where the board's is.
      const last = link?.last(id);
      if (last) s.breaker.apply(last);
      this.states.set(id, s);
      this.changed?.();
    }
    s.refs++;
    return s;
  }

  release(s: TargetState): void {
    s.refs--;
    this.collect(s);
  }

  /** Called when a request to `s` ends; finishes draining a target that left every pool. */
  done(s: TargetState): void {
    s.inflight--;
    if (s.refs <= 0) this.collect(s);
  }

  private collect(s: TargetState): void {
    if (s.refs > 0 || this.states.get(s.target.id) !== s) return;
    // Draining: requests under way finish, done() comes back here; those still waiting for one of its
    // sockets go to another target.
    if (s.inflight > 0) return s.pool.leave();
    this.states.delete(s.target.id);
    s.breaker.giveBack();
    s.pool.destroy();
    breakerState.remove({ target: s.target.id });
    nodeHealthStatus.remove({ target: s.target.id });
    forgetTarget(s.target.id);
    this.changed?.();
  }

  setStatus(target: Target, up: boolean): void {
    const s = this.states.get(target.id);
    if (s) s.healthy = up;
  }

  /** A health check passed (one process, no primary): see CircuitBreaker.healthPassed. */
  passed(target: Target, startedAt: number): void {
    this.states.get(target.id)?.breaker.healthPassed(startedAt);
  }

  /** The primary is gone: every breaker counts alone from now on. */
  detachBreakers(): void {
    for (const s of this.states.values()) s.breaker.detach();
  }

  close(): void {
    for (const s of this.states.values()) s.pool.destroy();
    this.states.clear();
  }
}

export interface Pick {
  readonly state: TargetState;
  /** Every target of the route was unhealthy, so an unhealthy one was chosen (as the ALB does). */
  readonly failOpen: boolean;
}

// Preference tiers: healthy first; targets not checked yet only when none is healthy; unhealthy
// ones only when nothing else is left (fail open).
const HEALTHY = 0;
const UNCHECKED = 1;
const UNHEALTHY = 2;
const tier = (s: TargetState): number => (s.healthy === true ? HEALTHY : s.healthy === undefined ? UNCHECKED : UNHEALTHY);

/** Pools with members, for karma_route_unhealthy_targets. */
const livePools = new Set<Pool>();
countUnhealthyWith(function* () {
  for (const pool of livePools) yield [pool.id, pool.unhealthy] as const;
});

/** One route's members, in a stable order, and its round-robin cursor. */
export class Pool {
  private members: TargetState[] = [];
  private cursor = 0;

  constructor(
    readonly id: string,
    private readonly registry: TargetRegistry,
  ) {}

  get size(): number {
    return this.members.length;
  }

  /** Members that health checks judge unhealthy. */
  get unhealthy(): number {
    let n = 0;
    for (const s of this.members) if (s.healthy === false) n++;
    return n;
  }

  /**
   * Some target's breaker opened within the last `ms` (on any worker: a breaker mirrors the board's
   * time): its targets just began to fail, as a deploy's old tasks do when they stop.
   */
  openedWithin(ms: number): boolean {
    return this.members.some((m) => m.breaker.openedMsAgo <= ms);
  }

  get targets(): readonly Target[] {
    return this.members.map((m) => m.target);
  }

  /**
   * Replaces the members, idempotently: a target already present keeps its state, and the rotation
   * goes on where it was: the target due next stays due, or, if it left, the one after it in the
   * order (members are sorted by id), so a change of targets neither skips one nor repeats one.
   * Leaving targets are drained (no new requests; in-flight ones finish).
   */
  update(targets: readonly Target[]): void {
    const next = sortTargets(targets);
    const same = next.length === this.members.length && next.every((t, i) => t.id === this.members[i].target.id);
    if (same) return;
    const old = this.members;
    const due = old.length > 0 ? old[this.cursor].target.id : undefined;
    this.members = next.map((t) => this.registry.acquire(t));
    for (const s of old) this.registry.release(s);
    const at = due === undefined ? -1 : next.findIndex((t) => t.id >= due);
    this.cursor = at === -1 ? 0 : at;
    targetsPerRoute.labels({ route: this.id }).set(this.members.length);
    if (this.members.length > 0) livePools.add(this);
    else livePools.delete(this);
  }

  /**
   * Asks the primary's board about the members whose half-open breaker waits on it (a claim on the trial
   * unanswered, or another worker's trial out), and calls `then` once it has answered: true. With none
   * such, false and nothing asked.
   */
  askBoard(then: () => void): boolean {
    const ids: string[] = [];
    for (const s of this.members) if (s.breaker.awaitsBoard) ids.push(s.target.id);
    if (ids.length === 0) return false;
    this.registry.breakers!.ask(ids, then);
    return true;
  }

  /** Drops every member (the route is forgotten). */
  clear(): void {
    this.update([]);
    targetsPerRoute.remove({ route: this.id });
  }

  /**
   * Round-robin over the best tier of targets whose breaker lets a request through, skipping
   * `exclude` (targets this request already failed on). Exact: with all targets healthy, N picks
   * visit each target once per N. Synchronous, so concurrent requests never share a cursor value.
   */
  pick(exclude?: ReadonlySet<TargetState>): Pick | undefined {
    // A half-open trial the primary granted this worker goes first: waiting for the rotation to come
    // round to it could outlast the grant (one request a second to one of five targets), and the
    // target would never be tried.
    if (this.registry.grants > 0) {
      for (const s of this.members) {
        if (s.breaker.hasGrant && s.healthy !== false && !exclude?.has(s) && s.breaker.tryAcquire()) return (s.picked ??= { state: s, failOpen: false });
      }
    }
    const n = this.members.length;
    for (let want = HEALTHY; want <= UNHEALTHY; want++) {
      // A target whose POOL_SIZE sockets are all busy is passed over while another of the tier can take
      // the request now (nginx's max_conns, HAProxy's maxconn): it would otherwise wait in that target's
      // line beside an idle one. When every one is full, the rotation's turn waits as before.
      let skippedFull = false;
      for (let pass = 0; pass < 2; pass++) {
        for (let k = 0; k < n; k++) {
          const i = (this.cursor + k) % n;
          const s = this.members[i];
          if (tier(s) !== want || exclude?.has(s)) continue;
          if (pass === 0 && s.pool.full) {
            skippedFull = true;
            continue;
          }
          if (!s.breaker.tryAcquire()) continue;
          // A retry takes the next target without moving the rotation: first tries go round exactly,
          // and a failing target is not given every other request (the one after a retry's).
          if (!exclude?.size) this.cursor = i + 1 === n ? 0 : i + 1;
          if (want === UNHEALTHY) {
            failOpenTotal.labels({ route: this.id }).inc();
            return { state: s, failOpen: true };
          }
          return (s.picked ??= { state: s, failOpen: false });
        }
        if (!skippedFull) break;
      }
    }
    return undefined;
  }
}
