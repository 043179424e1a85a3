/**
 * A circuit breaker for one target, fed by forwarding outcomes (passive health).
 *
 * closed ──threshold consecutive failures──▶ open ──timeoutMs──▶ half-open ──trial ok──▶ closed
 *                                             ▲                      │
 *                                             └────trial failed──────┘
 *
 * Time is read, never waited on: open turns half-open when someone next looks, so a breaker holds no
 * timer and a forgotten one costs nothing. Node runs a breaker on one thread, so there is no lock to
 * get wrong (the predecessor wrote a shared map under a read lock).
 *
 * One target, one breaker, however many workers send to it: a worker's breaker linked to the primary
 * (BreakerLink) counts nothing itself. It reports failures and the successes that matter to the
 * primary's BreakerBoard, which holds the one count, and mirrors the state the board sends back to
 * every worker. Half-open, the board grants the one trial: a worker claims it and lets a request
 * through only once granted. The request path reads only local state, except where a verdict may be
 * on its way: a failure waits for the board's answer before the client hears of it (so the next request,
 * on any worker, already sees an opened breaker), and a request that finds no target but a half-open
 * one being claimed or tried waits for the board's answer before its 503. Unlinked (one process, or a
 * worker whose primary is gone), a breaker counts alone.
 *
 * An active health check that starts after a breaker opened and passes turns it half-open at once,
 * rather than after the timeout, when every failure that opened it was a refused connection: the check
 * has just connected and been answered, which is what those failures said could not happen. A target
 * restarted in a deploy is then back within a health-check period, not CIRCUIT_BREAKER_TIMEOUT later
 * (the ALB puts a target back once its checks pass). Opened by anything else, it keeps its timeout: a
 * connect timeout may be an accept queue that a check squeezed through, and a health path that answers
 * says nothing of resets or timeouts of real requests.
 *
 * Without active health checks (HEALTH_CHECK_PATH=off) every breaker keeps its timeout, as the
 * CIRCUIT_BREAKER_TIMEOUT setting says.
 */

export type BreakerState = 'closed' | 'open' | 'half-open';

/** Value of `karma_circuit_breaker_state` for each state. */
export const BREAKER_STATE_VALUE: Readonly<Record<BreakerState, number>> = Object.freeze({
  closed: 0,
  'half-open': 1,
  open: 2,
});

export function breakerStateValue(state: BreakerState): number {
  return BREAKER_STATE_VALUE[state];
}

export interface BreakerOptions {
  /** Consecutive failures that open the breaker (CIRCUIT_BREAKER_THRESHOLD), an integer >= 1. */
  threshold: number;
  /** How long the breaker stays open before one trial goes through (CIRCUIT_BREAKER_TIMEOUT). */
  timeoutMs: number;
  /** Clock in milliseconds; tests inject one. @default Date.now */
  now?: () => number;
  /** Called after every state change, including the lazy open → half-open. */
  onChange?: (state: BreakerState) => void;
  /** Called when a granted trial comes (+1) and when it is taken or lapses (-1): pools take it first. */
  onGrant?: (delta: 1 | -1) => void;
  /** The primary's board and this target's id there: the count and the trial are shared. */
  shared?: { readonly id: string; readonly link: BreakerLink };
}

/**
 * What a worker's breaker tells the board: a counted failure (`fail-refused`: the connection was refused)
 * or success, a trial taken or given back.
 */
export type BreakerEvent = 'fail' | 'fail-refused' | 'ok' | 'trial' | 'release' | 'renew';

/** The board's state of one target's breaker, as it sends it to the workers. */
export interface BreakerSnapshot {
  readonly id: string;
  readonly state: BreakerState;
  /** Failures were counted since the last success (closed): workers then report their successes. */
  readonly failing: boolean;
  /** The worker whose half-open trial is out, if one is. */
  readonly holder?: number;
  /** Open: milliseconds left until half-open. */
  readonly remainingMs?: number;
}

/** A worker breaker's line to the primary's board. */
export interface BreakerLink {
  /** false once the primary is gone: the breaker then counts alone. */
  readonly up: boolean;
  /** This worker's id, as the board names a trial's holder. */
  readonly self: number;
  /**
   * Tells the board; `then`, when given, runs once the board has answered (its snapshot applied), and
   * the report's number is returned: the answer's snapshot comes with it (apply's `replyTo`).
   */
  report(id: string, ev: BreakerEvent, then?: () => void): number | undefined;
  /** Asks the board for the state of these targets; `then` runs once it is applied. */
  ask(ids: readonly string[], then: () => void): void;
  /** The board's last word on a target this worker does not use yet, for its new breaker. */
  last(id: string): BreakerSnapshot | undefined;
}

/**
 * One admitted request's way to report, bound to the breaker's state at admission. A permit taken
 * before a state change reports into the void: a slow request let through while closed cannot
 * close, re-open or count against a breaker that has since moved on.
 */
export interface BreakerPermit {
  success(): void;
  failure(): void;
  /** The request ended without a verdict (client went away). */
  release(): void;
}

/**
 * How long a worker keeps a granted half-open trial for a request to take before asking the board to
 * renew it: the board hands it to another worker whose claim it refused meanwhile, else grants it to
 * this worker again. Given back and claimed anew at each request instead, it was never taken where requests
 * come more than this apart: each claim sent its own request elsewhere, and the grant lapsed before the
 * next one (a target back after a blip stayed out of a quiet service for good).
 */
const GRANT_MS = 1000;

export class CircuitBreaker {
  private readonly threshold: number;
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private readonly onChange: ((state: BreakerState) => void) | undefined;
  private readonly onGrant: ((delta: 1 | -1) => void) | undefined;
  private readonly shared: { readonly id: string; readonly link: BreakerLink } | undefined;

  private current: BreakerState = 'closed';
  private failures = 0;
  private openedAt = 0;
  /** This breaker's own half-open trial is out. */
  private trialOut = false;
  /** Linked: another worker holds the half-open trial. */
  private trialElsewhere = false;
  /** Linked: which worker holds it, as the board last said, and the holder this worker has said it wants the trial of. */
  private holderSeen: number | undefined;
  private wantSaidTo: number | undefined;
  /** Linked: the number of this worker's claim on the trial, while the board has not answered it (0: none). */
  private claiming = 0;
  /** Linked: the board granted this worker the trial, and no request has taken it yet (see hasGrant). */
  private grantHeld = false;
  private grantTimer: NodeJS.Timeout | undefined;
  /** Linked: this worker's trial failed, and the board has not said open yet. */
  private failPending = false;
  /** Linked: the board has failures counted, so a success here must reach it (it resets the count). */
  private sharedFailing = false;
  /** Bumped on every state change; permits and reported epochs compare against it. */
  private generation = 0;
  /** Every failure counted since the last success was a refused connection. */
  private streakRefused = false;
  /** Opened by refused connections only: a passing health check half-opens it (healthPassed). */
  private openedByRefused = false;

  constructor(opts: BreakerOptions) {
    if (!Number.isInteger(opts.threshold) || opts.threshold < 1) {
      throw new RangeError(`circuit breaker threshold must be an integer >= 1, got ${opts.threshold}`);
    }
    if (!Number.isFinite(opts.timeoutMs) || opts.timeoutMs < 0) {
      throw new RangeError(`circuit breaker timeoutMs must be a finite number >= 0, got ${opts.timeoutMs}`);
    }
    this.threshold = opts.threshold;
    this.timeoutMs = opts.timeoutMs;
    this.now = opts.now ?? Date.now;
    this.onChange = opts.onChange;
    this.onGrant = opts.onGrant;
    this.shared = opts.shared;
  }

  get state(): BreakerState {
    if (this.current === 'open' && this.now() - this.openedAt >= this.timeoutMs) this.transition('half-open');
    return this.current;
  }

  /** The link to the board, while the board is there. */
  private get link(): BreakerLink | undefined {
    const link = this.shared?.link;
    return link?.up ? link : undefined;
  }

  /** Half-open, linked, with a claim unanswered or another worker's trial out: the board's word may change it. */
  get awaitsBoard(): boolean {
    return this.state === 'half-open' && (this.claiming !== 0 || this.trialElsewhere) && !!this.link;
  }

  /**
   * The state's generation, read right after a request is admitted (tryAcquire). Given back with its
   * outcome, it makes that outcome count only if the breaker has not moved on since: a slow request let
   * through before the breaker opened must not close, re-open or count against it later (the trial's
   * verdict is the trial's). As acquire()'s permits do, without an object per request.
   */
  get epoch(): number {
    return this.generation;
  }

  /** Consecutive failures counted while closed. */
  get failureCount(): number {
    return this.failures;
  }

  /** Open: milliseconds since it opened, here or on the board (Infinity otherwise). */
  get openedMsAgo(): number {
    return this.state === 'open' ? this.now() - this.openedAt : Infinity;
  }

  /** Open: milliseconds until half-open (0 otherwise). */
  get remainingMs(): number {
    return this.state === 'open' ? Math.max(0, this.timeoutMs - (this.now() - this.openedAt)) : 0;
  }

  canPass(): boolean {
    switch (this.state) {
      case 'closed':
        return true;
      case 'half-open':
        return this.link ? this.grantHeld : !this.trialOut;
      case 'open':
        return false;
    }
  }

  tryAcquire(): boolean {
    switch (this.state) {
      case 'closed':
        return true;
      case 'half-open': {
        const link = this.link;
        if (!link) {
          if (this.trialOut) return false;
          this.trialOut = true;
          return true;
        }
        if (this.grantHeld) {
          this.granted = false;
          this.trialOut = true;
          return true;
        }
        // Not yet: claim the trial from the board; a later request (or this one, waiting) takes the grant.
        if (!this.trialOut && !this.trialElsewhere && this.claiming === 0) this.claim(link);
        else if (this.trialElsewhere && this.wantSaidTo !== this.holderSeen) {
          // Held by another worker: the board is told once that this one wants it (the holder's next
          // renewal hands it over, should no request of the holder's take it).
          this.wantSaidTo = this.holderSeen;
          link.report(this.shared!.id, 'trial');
        }
        return false;
      }
      case 'open':
        return false;
    }
  }

  private claim(link: BreakerLink): void {
    const n: number | undefined = link.report(this.shared!.id, 'trial', () => {
      // No answer in time, or the primary is gone: the claim is over.
      if (this.claiming === n) this.claiming = 0;
    });
    this.claiming = n ?? 0;
  }

  /**
   * tryAcquire() that returns a permit instead of a boolean, or undefined when the breaker refuses.
   * Prefer it when requests can outlive a state change (long upstream timeouts).
   */
  acquire(): BreakerPermit | undefined {
    if (!this.tryAcquire()) return undefined;
    const epoch = this.generation;
    let used = false;
    const once = (fn: (epoch: number) => void) => (): void => {
      if (used) return;
      used = true;
      fn(epoch);
    };
    return {
      success: once((e) => this.onSuccess(e)),
      failure: once((e) => this.onFailure(e)),
      release: once((e) => this.release(e)),
    };
  }

  /** A success; `epoch` (from admission), when given, drops it if the breaker has moved on since. */
  onSuccess(epoch?: number): void {
    switch (this.stateFor(epoch)) {
      case 'closed':
        this.failures = 0;
        if (this.sharedFailing && this.link) {
          // Once: the board resets its count and says so to every worker.
          this.sharedFailing = false;
          this.link.report(this.shared!.id, 'ok');
        }
        return;
      case 'half-open':
        // Without a trial out, this is a request admitted before the breaker opened: stale, ignored.
        if (!this.trialOut) return;
        this.trialOut = false;
        this.failures = 0;
        this.transition('closed');
        this.link?.report(this.shared!.id, 'ok');
        return;
      case 'open':
        // Stale too; only the trial decides whether the target is back.
        return;
    }
  }

  /**
   * A failure; `epoch` as for onSuccess. `then`, when given, runs once the failure is counted where it
   * counts: at once unlinked, after the board's answer linked (the client's answer waits for it, so
   * that a breaker this failure opened is open in every worker before the client can send again).
   * `refused`: the target refused the connection (see healthPassed).
   */
  onFailure(epoch?: number, then?: () => void, refused = false): void {
    const link = this.link;
    const ev: BreakerEvent = refused ? 'fail-refused' : 'fail';
    switch (this.stateFor(epoch)) {
      case 'closed':
        if (link) {
          link.report(this.shared!.id, ev, then);
          return;
        }
        this.streakRefused = (this.failures === 0 || this.streakRefused) && refused;
        this.failures += 1;
        if (this.failures >= this.threshold) this.open(this.streakRefused);
        break;
      case 'half-open':
        if (!this.trialOut) break;
        // Linked, the trial stays out (no second one from here) until the board's open arrives.
        if (link) {
          this.failPending = true;
          link.report(this.shared!.id, ev, then);
          return;
        }
        this.open(refused);
        break;
      case 'open':
      case undefined:
        // Stale: extending the timeout for requests sent before it opened would keep a recovered
        // target out longer than configured.
        break;
    }
    then?.();
  }

  /**
   * An active health check of the target passed: a breaker that refused connections opened turns
   * half-open now (true when it did). `startedAt` (this breaker's clock) is when the check began: one
   * under way before the breaker opened proves nothing. Linked, the board decides, and tells every worker.
   */
  healthPassed(startedAt?: number): boolean {
    if (this.link || this.state !== 'open' || !this.openedByRefused) return false;
    if (startedAt !== undefined && startedAt < this.openedAt) return false;
    this.openedAt = this.now() - this.timeoutMs;
    return (this.state as BreakerState) === 'half-open';
  }

  /** An admitted request ended without a verdict; `epoch` as for onSuccess (a stale one frees no trial). */
  release(epoch?: number): void {
    // Closed and open hold no trial: a release there is a request that had nothing to give back.
    if (this.stateFor(epoch) !== 'half-open' || !this.trialOut) return;
    this.trialOut = false;
    this.link?.report(this.shared!.id, 'release');
  }

  /**
   * The board's state for this target. `replyTo` is the number of this worker's report or ask that the
   * snapshot answers (undefined for a broadcast): only the answer to a claim, or a later one, grants.
   */
  apply(snap: BreakerSnapshot, replyTo?: number): void {
    this.sharedFailing = snap.failing;
    switch (snap.state) {
      case 'closed':
        this.failures = 0;
        this.transition('closed');
        return;
      case 'open':
        // The board's remaining time, on this breaker's clock (a mirror, opened by nobody here).
        this.openedByRefused = false;
        this.openedAt = this.now() - (this.timeoutMs - (snap.remainingMs ?? this.timeoutMs));
        this.transition('open');
        return;
      case 'half-open': {
        this.transition('half-open');
        const mine = snap.holder !== undefined && snap.holder === this.shared?.link.self;
        this.trialElsewhere = snap.holder !== undefined && !mine;
        // A new holder (or none) is told anew that this worker wants the trial: the board forgets its wanted list.
        if (snap.holder !== this.holderSeen) this.wantSaidTo = undefined;
        this.holderSeen = snap.holder;
        if (this.claiming !== 0 && replyTo !== undefined && replyTo >= this.claiming) {
          this.claiming = 0;
          if (mine && !this.trialOut) this.grant();
        } else if (mine && !this.grantHeld && !this.trialOut) {
          // Granted on a claim this worker stopped waiting for (the primary was slow), or handed over at
          // another worker's renewal (it refused this worker's claim meanwhile): held for a request.
          this.grant();
        } else if (!mine && this.grantHeld) {
          // Handed to a worker that asked meanwhile (renewal): not this one's to give any more.
          this.granted = false;
        }
        return;
      }
    }
  }

  /** The primary is gone: from now on this breaker counts alone. A trial whose failure the board never heard fails here. */
  detach(): void {
    if (this.current !== 'half-open') return;
    if (this.failPending) {
      this.open();
      return;
    }
    this.trialElsewhere = false;
    this.claiming = 0;
    this.granted = false;
  }

  /**
   * The board's grant, kept for a request to take; after GRANT_MS untaken, put to the board to renew
   * (its answer grants it here again, or it went to a worker that asked meanwhile).
   */
  private grant(): void {
    if (this.grantHeld) return;
    this.granted = true;
    this.grantTimer = setTimeout(() => {
      if (!this.grantHeld) return;
      const link = this.link;
      if (!link || this.current !== 'half-open') return this.giveBack();
      // Not taken while the board decides: it may hand the trial on, and a request here meanwhile would
      // be a second trial.
      this.granted = false;
      link.report(this.shared!.id, 'renew', () => undefined);
    }, GRANT_MS);
    this.grantTimer.unref?.();
  }

  /** A grant no request took (lapsed, or the target is forgotten) goes back to the board for another worker. */
  giveBack(): void {
    if (!this.grantHeld) return;
    this.granted = false;
    this.link?.report(this.shared!.id, 'release');
  }

  /** A granted trial no request has taken yet: the next pick of a pool with this target should take it. */
  get hasGrant(): boolean {
    return this.grantHeld;
  }

  /** Holds or drops the grant, telling onGrant, and its timer going with it. */
  private set granted(held: boolean) {
    if (held === this.grantHeld) return;
    this.grantHeld = held;
    if (!held) clearTimeout(this.grantTimer);
    this.onGrant?.(held ? 1 : -1);
  }

  /** The state, or undefined for an outcome whose `epoch` (when given) the breaker has moved on from. */
  private stateFor(epoch: number | undefined): BreakerState | undefined {
    const state = this.state; // read first: it may turn open into half-open, a new epoch
    return epoch === undefined || epoch === this.generation ? state : undefined;
  }

  private open(byRefused = false): void {
    this.failures = 0;
    this.openedAt = this.now();
    this.openedByRefused = byRefused;
    this.transition('open');
  }

  private transition(next: BreakerState): void {
    if (next === this.current) return;
    this.current = next;
    this.generation += 1;
    // A new state holds no trial of any kind: the previous state's belong to its generation.
    this.trialOut = this.trialElsewhere = this.failPending = false;
    this.holderSeen = this.wantSaidTo = undefined;
    this.granted = false;
    this.claiming = 0;
    this.onChange?.(next);
  }
}

/** A closed breaker with nothing counted: what the board holds no entry for. */
const clean = (id: string): BreakerSnapshot => ({ id, state: 'closed', failing: false });

/**
 * The primary's breakers, one per target for all workers: the one failure count and the one half-open
 * trial. Workers report (BreakerLink); every change goes back to all of them as a snapshot. A target
 * with a closed breaker and nothing counted has no entry.
 */
export class BreakerBoard {
  /** `wanted`: workers whose claim on the trial was refused while `holder` held it, in order: handed it at a renewal. */
  private readonly entries = new Map<string, { readonly breaker: CircuitBreaker; holder: number | undefined; readonly wanted: number[] }>();

  constructor(private readonly opts: Omit<BreakerOptions, 'onChange' | 'shared'>) {}

  /** Applies one worker's report: the target's snapshot after it, and whether that changed. */
  report(worker: number, id: string, ev: BreakerEvent): { readonly snap: BreakerSnapshot; readonly changed: boolean } {
    let e = this.entries.get(id);
    if (!e) {
      // Only a failure or a trial starts a story; anything else about a closed, clean breaker is news to nobody.
      if (ev !== 'fail' && ev !== 'fail-refused' && ev !== 'trial') return { snap: clean(id), changed: false };
      e = { breaker: new CircuitBreaker(this.opts), holder: undefined, wanted: [] };
      this.entries.set(id, e);
    }
    const before = this.snapshotOf(id, e);
    const b = e.breaker;
    const state = b.state;
    const trial = state === 'half-open' && e.holder === worker;
    switch (ev) {
      case 'fail':
      case 'fail-refused':
        if (state === 'closed' || trial) b.onFailure(undefined, undefined, ev === 'fail-refused');
        break;
      case 'ok':
        if (state === 'closed' || trial) b.onSuccess();
        break;
      case 'trial':
        if (state === 'half-open' && e.holder === undefined && b.tryAcquire()) e.holder = worker;
        else if (state === 'half-open' && e.holder !== undefined && e.holder !== worker && !e.wanted.includes(worker)) e.wanted.push(worker);
        break;
      case 'release':
        if (trial) {
          b.release();
          e.holder = undefined;
        }
        break;
      case 'renew':
        // A grant no request of its holder took: to the first worker that asked meanwhile, if one did.
        if (trial && e.wanted.length > 0) e.holder = e.wanted.shift();
        break;
    }
    if (b.state !== 'half-open') e.holder = undefined;
    if (e.holder === undefined) e.wanted.length = 0;
    const snap = this.snapshotOf(id, e);
    if (snap.state === 'closed' && !snap.failing) this.entries.delete(id);
    const changed = snap.state !== before.state || snap.failing !== before.failing || snap.holder !== before.holder;
    return { snap, changed };
  }

  /** Every breaker that is not closed and clean (for a worker that has not heard of them). */
  snapshots(ids?: { has(id: string): boolean }): BreakerSnapshot[] {
    const out: BreakerSnapshot[] = [];
    for (const [id, e] of this.entries) if (!ids || ids.has(id)) out.push(this.snapshotOf(id, e));
    return out;
  }

  snapshot(id: string): BreakerSnapshot {
    const e = this.entries.get(id);
    return e ? this.snapshotOf(id, e) : clean(id);
  }

  /** An active health check of the target passed (CircuitBreaker.healthPassed): its snapshot when that half-opened it. */
  healthPassed(id: string, startedAt?: number): BreakerSnapshot | undefined {
    const e = this.entries.get(id);
    return e?.breaker.healthPassed(startedAt) ? this.snapshotOf(id, e) : undefined;
  }

  /** A worker is gone: a trial it held is given back. The snapshots that changed. */
  workerGone(worker: number): BreakerSnapshot[] {
    const out: BreakerSnapshot[] = [];
    for (const [id, e] of this.entries) {
      const i = e.wanted.indexOf(worker);
      if (i !== -1) e.wanted.splice(i, 1);
      if (e.holder !== worker) continue;
      const { snap, changed } = this.report(worker, id, 'release');
      if (changed) out.push(snap);
    }
    return out;
  }

  /** Forgets the breakers of targets no worker uses any more; the closed snapshots to tell the workers so. */
  retain(ids: { has(id: string): boolean }): BreakerSnapshot[] {
    const gone: BreakerSnapshot[] = [];
    for (const id of this.entries.keys()) {
      if (ids.has(id)) continue;
      this.entries.delete(id);
      gone.push(clean(id));
    }
    return gone;
  }

  private snapshotOf(id: string, e: { readonly breaker: CircuitBreaker; holder: number | undefined; readonly wanted: number[] }): BreakerSnapshot {
    const b = e.breaker;
    const state = b.state;
    return {
      id,
      state,
      failing: b.failureCount > 0,
      ...(e.holder !== undefined ? { holder: e.holder } : {}),
      ...(state === 'open' ? { remainingMs: b.remainingMs } : {}),
    };
  }
}
