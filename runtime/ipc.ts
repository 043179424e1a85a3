/**
 * What the primary and its workers say to each other over node:cluster's IPC channel.
 *
 * Discovery and health checks run once, in the primary: with one of each per worker, every target
 * would be probed WORKERS times, AWS would see WORKERS times the calls (its read APIs share one
 * account-wide rate limit), and every worker would carry the SDK in memory. Workers keep the request
 * path in memory and ask the primary only when a route is new or due for a refresh.
 */
import type { TargetRegistry } from './balancer';
import type { BreakerEvent, BreakerLink, BreakerSnapshot } from './breaker';
import { markLogged } from './log';
import { register } from './metrics';
import { DISCOVERY_DEADLINE_MS, type DiscoveryError, type Found, type Provider, type RouteKey, type Target } from './types';

/**
 * How long a worker waits for the primary's answer to a discovery: past the primary's own deadline, so
 * that a hung AWS is answered (and logged, and counted) by the primary, as a failure of AWS, and the
 * worker's own timeout means only what it says: the primary did not answer.
 */
export const PRIMARY_ANSWER_TIMEOUT_MS = DISCOVERY_DEADLINE_MS + 5000;

export type ToPrimary =
  | { readonly t: 'ready'; readonly port: number }
  | { readonly t: 'fatal'; readonly error: string }
  | { readonly t: 'discover'; readonly n: number; readonly route: RouteKey; readonly maxAgeMs?: number; readonly heldOnly?: true }
  /** Every target this worker has in use now (the health checker checks the union). */
  | { readonly t: 'in-use'; readonly targets: readonly Target[] }
  | { readonly t: 'metrics'; readonly n: number; readonly json: unknown }
  /** With the listening handle: send it back (acceptors.ts). */
  | { readonly t: 'acceptor'; readonly n: number }
  /** A breaker's report to the board (breaker.ts); with `n`, the answer is awaited. */
  | { readonly t: 'breaker'; readonly id: string; readonly ev: BreakerEvent; readonly n?: number }
  | { readonly t: 'breakers?'; readonly n: number; readonly ids: readonly string[] }
  /** The answer to a ping: this worker's event loop turns. */
  | { readonly t: 'pong' };

export type ToWorker =
  | {
    readonly t: 'discovered'; readonly n: number; readonly targets?: readonly Target[]; readonly ageMs?: number; readonly stale?: boolean;
    readonly error?: string; readonly code?: string; readonly logged?: boolean; readonly retryInMs?: number;
  }
  | { readonly t: 'health'; readonly verdicts: readonly (readonly [string, boolean])[] }
  | { readonly t: 'metrics?'; readonly n: number }
  /** Is your event loop turning? (the primary's watchdog, WORKER_STUCK_TIMEOUT) */
  | { readonly t: 'ping' }
  /** The board's snapshots: a change, the state of a worker's targets, or (with `n`) the answer to a report or ask. */
  | { readonly t: 'breaker'; readonly snaps: readonly BreakerSnapshot[]; readonly n?: number };

type Send = (m: ToPrimary) => void;
type Listen = (fn: (m: ToWorker) => void) => void;

// Once the primary is gone (a worker draining after it died) there is nobody to tell: sending then
// would raise an 'error' event on process, which nothing handles.
const send: Send = (m) => {
  if (process.connected) process.send?.(m);
};
const listen: Listen = (fn) => process.on('message', (m: ToWorker) => fn(m));

/** A worker's discovery: asks the primary, which shares one discovery among all workers. */
export class PrimaryProvider implements Provider {
  /** The primary discovers, and counts its failures (karma_discovery_errors_total) once for all workers. */
  readonly countsFailures = true;
  private n = 0;
  private readonly waiting = new Map<number, { resolve: (found: Found) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  constructor(
    /** The discovery mode the primary runs (ecs, tag, asg, static), for metrics and logs. */
    readonly name: string,
    private readonly timeoutMs = PRIMARY_ANSWER_TIMEOUT_MS,
    private readonly out: Send = send,
  ) {}

  /** Feeds the primary's answers in. */
  receive(m: ToWorker): void {
    if (m.t !== 'discovered') return;
    const w = this.waiting.get(m.n);
    if (!w) return;
    this.waiting.delete(m.n);
    clearTimeout(w.timer);
    // The AWS error's name (AccessDeniedException, ThrottlingException) travels with its message, for the log.
    // `logged`: the primary said it already, once for every worker.
    // `retryInMs`: the primary's wait before it asks AWS for this route again.
    if (m.error !== undefined) {
      const err: DiscoveryError = Object.assign(new Error(m.error), m.code === undefined ? {} : { code: m.code }, m.retryInMs === undefined ? {} : { retryInMs: m.retryInMs });
      w.reject(m.logged ? markLogged(err) : err);
    }
    else w.resolve({ targets: [...(m.targets ?? [])], ageMs: Math.max(0, m.ageMs ?? 0), ...(m.stale ? { stale: true } : {}) });
  }

  async discover(route: RouteKey): Promise<Target[]> {
    return (await this.discoverAged(route)).targets;
  }

  /** The primary's answer, and how old it was there (one it shared from its cache). */
  discoverAged(route: RouteKey, _signal?: AbortSignal, maxAgeMs?: number): Promise<Found> {
    return this.ask(route, maxAgeMs, false);
  }

  /** The targets the primary holds for the route already, if any (undefined: none): it asks AWS nothing for this. */
  held(route: RouteKey): Promise<Found | undefined> {
    return this.ask(route, undefined, true).then(
      (found) => (found.targets.length ? found : undefined),
      () => undefined,
    );
  }

  private ask(route: RouteKey, maxAgeMs: number | undefined, heldOnly: boolean): Promise<Found> {
    const n = ++this.n;
    return new Promise<Found>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(n);
        reject(new Error('the primary did not answer a discovery request'));
      }, this.timeoutMs);
      timer.unref();
      this.waiting.set(n, { resolve, reject, timer });
      // Infinity does not survive IPC's JSON: only a bound is sent.
      this.out({ t: 'discover', n, route, ...(maxAgeMs !== undefined && Number.isFinite(maxAgeMs) ? { maxAgeMs } : {}), ...(heldOnly ? { heldOnly } : {}) });
    });
  }

  async close(): Promise<void> {
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(Object.assign(new Error('closing'), { closing: true }));
    }
    this.waiting.clear();
  }
}

/**
 * A worker's breakers' line to the primary's board (breaker.ts). Reports go out as they come; a request
 * waits only where the breaker asks it to (a failure's answer, a 503 that a trial elsewhere may undo),
 * for at most `waitMs`, and not at all once the primary is gone.
 */
export class PrimaryBreakers implements BreakerLink {
  private n = 0;
  private readonly waiting = new Map<number, { readonly thens: (() => void)[]; readonly timer: NodeJS.Timeout; readonly ask?: string }>();
  /** Asks under way, by the targets they name: requests that ask the same share one answer. */
  private readonly asking = new Map<string, number>();
  /** The board's breakers that are not closed and clean, with when each was heard. */
  private readonly known = new Map<string, { readonly snap: BreakerSnapshot; readonly at: number }>();

  constructor(
    readonly self: number,
    private readonly out: Send = send,
    private readonly connected: () => boolean = () => process.connected === true,
    private readonly waitMs = 250,
  ) {}

  get up(): boolean {
    return this.connected();
  }

  report(id: string, ev: BreakerEvent, then?: () => void): number | undefined {
    if (!then) {
      this.out({ t: 'breaker', id, ev });
      return undefined;
    }
    const n = this.await(then);
    this.out({ t: 'breaker', id, ev, n });
    return n;
  }

  ask(ids: readonly string[], then: () => void): void {
    const key = ids.join(',');
    const pending = this.asking.get(key);
    if (pending !== undefined) {
      this.waiting.get(pending)?.thens.push(then);
      return;
    }
    const n = this.await(then, key);
    this.asking.set(key, n);
    this.out({ t: 'breakers?', n, ids });
  }

  last(id: string): BreakerSnapshot | undefined {
    const k = this.known.get(id);
    if (!k) return undefined;
    if (k.snap.remainingMs === undefined) return k.snap;
    return { ...k.snap, remainingMs: Math.max(0, k.snap.remainingMs - (Date.now() - k.at)) };
  }

  /** The board's snapshots, applied to the breakers this worker has (`lookup`) and kept for later ones. */
  receive(m: Extract<ToWorker, { t: 'breaker' }>, lookup: (id: string) => { apply(snap: BreakerSnapshot, replyTo?: number): void } | undefined): void {
    for (const snap of m.snaps) {
      if (snap.state === 'closed' && !snap.failing) this.known.delete(snap.id);
      else this.known.set(snap.id, { snap, at: Date.now() });
      const b = lookup(snap.id);
      if (b) b.apply(snap, m.n);
      // A trial handed to this worker for a target it no longer has: nobody here will take it.
      else if (snap.state === 'half-open' && snap.holder === this.self) this.out({ t: 'breaker', id: snap.id, ev: 'release' });
    }
    if (m.n !== undefined) this.answered(m.n);
  }

  /** Runs whatever waits for the board (the primary is gone). */
  flush(): void {
    for (const n of [...this.waiting.keys()]) this.answered(n);
  }

  private await(then: () => void, ask?: string): number {
    const n = ++this.n;
    this.waiting.set(n, { thens: [then], timer: setTimeout(() => this.answered(n), this.waitMs), ask });
    return n;
  }

  private answered(n: number): void {
    const w = this.waiting.get(n);
    if (!w) return;
    this.waiting.delete(n);
    if (w.ask !== undefined) this.asking.delete(w.ask);
    clearTimeout(w.timer);
    for (const then of w.thens) then();
  }
}

/**
 * Connects a worker to its primary: discovery answers to `provider`, health verdicts to `registry`,
 * the board's breaker snapshots to `breakers`, the targets in use back to the primary, and this
 * worker's metrics on request.
 */
export function joinPrimary(provider: PrimaryProvider, registry: TargetRegistry, breakers?: PrimaryBreakers, out: Send = send, on: Listen = listen): void {
  let queued = false;
  const report = (): void => {
    if (queued) return;
    queued = true;
    // Pools change several targets at once: report the set once they are done.
    setImmediate(() => {
      queued = false;
      out({ t: 'in-use', targets: registry.targets() });
    });
  };
  registry.onChange(report);
  on((m) => {
    if (m.t === 'discovered') provider.receive(m);
    else if (m.t === 'breaker') breakers?.receive(m, (id) => registry.get(id)?.breaker);
    else if (m.t === 'health') {
      // setStatus reads only the id.
      for (const [id, up] of m.verdicts) registry.setStatus({ id, host: '', port: 0 }, up);
    }
    else if (m.t === 'ping') out({ t: 'pong' });
    else if (m.t === 'metrics?') {
      void register.getMetricsAsJSON().then(
        (json) => out({ t: 'metrics', n: m.n, json }),
        () => out({ t: 'metrics', n: m.n, json: [] }),
      );
    }
  });
  report();
}

export { send as sendToPrimary };
