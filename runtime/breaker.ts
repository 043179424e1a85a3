/**
 * A circuit breaker for one target, fed by forwarding outcomes (passive health).
 *
 * closed ──threshold consecutive failures──▶ open ──timeoutMs──▶ half-open ──trial ok──▶ closed
 *                                             ▲                      │
 *                                             └────trial failed──────┘
 *
 * Time is read, never waited on: open turns half-open when someone next looks, so a breaker holds no
 * timer and a forgotten one costs nothing. One breaker belongs to one worker; Node runs it on one
 * thread, so there is no lock to get wrong (the predecessor wrote a shared map under a read lock).
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

export class CircuitBreaker {
  private readonly threshold: number;
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private readonly onChange: ((state: BreakerState) => void) | undefined;

  private current: BreakerState = 'closed';
  private failures = 0;
  private openedAt = 0;
  private trialOut = false;
  /** Bumped on every state change; permits and reported epochs compare against it. */
  private generation = 0;

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
  }

  get state(): BreakerState {
    if (this.current === 'open' && this.now() - this.openedAt >= this.timeoutMs) {
      this.trialOut = false;
      this.transition('half-open');
    }
    return this.current;
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

  canPass(): boolean {
    switch (this.state) {
      case 'closed':
        return true;
      case 'half-open':
        return !this.trialOut;
      case 'open':
        return false;
    }
  }

  tryAcquire(): boolean {
    switch (this.state) {
      case 'closed':
        return true;
      case 'half-open':
        if (this.trialOut) return false;
        this.trialOut = true;
        return true;
      case 'open':
        return false;
    }
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
        return;
      case 'half-open':
        // Without a trial out, this is a request admitted before the breaker opened: stale, ignored.
        if (!this.trialOut) return;
        this.trialOut = false;
        this.failures = 0;
        this.transition('closed');
        return;
      case 'open':
        // Stale too; only the trial decides whether the target is back.
        return;
    }
  }

  /** A failure; `epoch` as for onSuccess. */
  onFailure(epoch?: number): void {
    switch (this.stateFor(epoch)) {
      case 'closed':
        this.failures += 1;
        if (this.failures >= this.threshold) this.open();
        return;
      case 'half-open':
        if (!this.trialOut) return;
        this.trialOut = false;
        this.open();
        return;
      case 'open':
        // Stale: extending the timeout for requests sent before it opened would keep a recovered
        // target out longer than configured.
        return;
    }
  }

  /** An admitted request ended without a verdict; `epoch` as for onSuccess (a stale one frees no trial). */
  release(epoch?: number): void {
    // Closed and open hold no trial: a release there is a request that had nothing to give back.
    if (this.stateFor(epoch) === 'half-open') this.trialOut = false;
  }

  /** The state, or undefined for an outcome whose `epoch` (when given) the breaker has moved on from. */
  private stateFor(epoch: number | undefined): BreakerState | undefined {
    const state = this.state; // read first: it may turn open into half-open, a new epoch
    return epoch === undefined || epoch === this.generation ? state : undefined;
  }

  private open(): void {
    this.failures = 0;
    this.openedAt = this.now();
    this.transition('open');
  }

  private transition(next: BreakerState): void {
    if (next === this.current) return;
    this.current = next;
    this.generation += 1;
    this.onChange?.(next);
  }
}
