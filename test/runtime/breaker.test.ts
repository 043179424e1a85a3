import { BREAKER_STATE_VALUE, BreakerState, CircuitBreaker, breakerStateValue } from '../../runtime/breaker';

/** CIRCUIT_BREAKER_TIMEOUT is in minutes; tests use a fraction of one, as an operator may. */
const TIMEOUT_MIN = 0.001;
const TIMEOUT_MS = TIMEOUT_MIN * 60_000; // 60 ms

function make(threshold = 3, timeoutMs = TIMEOUT_MS) {
  let t = 1_000_000;
  const changes: BreakerState[] = [];
  const breaker = new CircuitBreaker({
    threshold,
    timeoutMs,
    now: () => t,
    onChange: (s) => changes.push(s),
  });
  return {
    breaker,
    changes,
    advance: (ms: number) => {
      t += ms;
    },
  };
}

function fail(b: CircuitBreaker, n: number): void {
  for (let i = 0; i < n; i++) b.onFailure();
}

describe('CircuitBreaker', () => {
  it('starts closed and lets everything through', () => {
    const { breaker, changes } = make();
    expect(breaker.state).toBe('closed');
    expect(breaker.canPass()).toBe(true);
    for (let i = 0; i < 10; i++) expect(breaker.tryAcquire()).toBe(true);
    expect(changes).toEqual([]);
  });

  it.each([1, 2, 5])('opens after exactly %i consecutive failures, not one fewer', (threshold) => {
    const { breaker, changes } = make(threshold);
    fail(breaker, threshold - 1);
    expect(breaker.state).toBe('closed');
    expect(breaker.canPass()).toBe(true);
    breaker.onFailure();
    expect(breaker.state).toBe('open');
    expect(breaker.canPass()).toBe(false);
    expect(breaker.tryAcquire()).toBe(false);
    expect(changes).toEqual(['open']);
  });

  it('a success in between resets the failure count', () => {
    const { breaker } = make(3);
    fail(breaker, 2);
    breaker.onSuccess();
    expect(breaker.failureCount).toBe(0);
    fail(breaker, 2);
    expect(breaker.state).toBe('closed');
    breaker.onFailure();
    expect(breaker.state).toBe('open');
  });

  it('turns half-open lazily once the timeout (a fraction of a minute) has passed, and says so', () => {
    const { breaker, changes, advance } = make(1);
    breaker.onFailure();
    advance(TIMEOUT_MS - 1);
    expect(breaker.state).toBe('open');
    expect(breaker.canPass()).toBe(false);
    advance(1);
    expect(changes).toEqual(['open']); // nothing happens until someone looks
    expect(breaker.canPass()).toBe(true);
    expect(breaker.state).toBe('half-open');
    expect(changes).toEqual(['open', 'half-open']);
  });

  it('canPass has no side effect: it never takes the trial', () => {
    const { breaker, advance } = make(1);
    breaker.onFailure();
    advance(TIMEOUT_MS);
    for (let i = 0; i < 5; i++) expect(breaker.canPass()).toBe(true);
    expect(breaker.tryAcquire()).toBe(true);
    expect(breaker.canPass()).toBe(false);
  });

  it('lets only one trial through at a time', () => {
    const { breaker, advance } = make(1);
    breaker.onFailure();
    advance(TIMEOUT_MS);
    expect(breaker.tryAcquire()).toBe(true);
    expect(breaker.tryAcquire()).toBe(false);
    expect(breaker.tryAcquire()).toBe(false);
    expect(breaker.canPass()).toBe(false);
    expect(breaker.state).toBe('half-open');
    // Time passing does not hand out a second trial while the first has not reported.
    advance(TIMEOUT_MS * 10);
    expect(breaker.tryAcquire()).toBe(false);
  });

  it('a successful trial closes it and clears the count', () => {
    const { breaker, changes, advance } = make(2);
    fail(breaker, 2);
    advance(TIMEOUT_MS);
    expect(breaker.tryAcquire()).toBe(true);
    breaker.onSuccess();
    expect(breaker.state).toBe('closed');
    expect(breaker.canPass()).toBe(true);
    expect(changes).toEqual(['open', 'half-open', 'closed']);
    breaker.onFailure();
    expect(breaker.state).toBe('closed'); // the count started again from zero
    breaker.onFailure();
    expect(breaker.state).toBe('open');
  });

  it('a failed trial re-opens it with a fresh timeout', () => {
    const { breaker, changes, advance } = make(3);
    fail(breaker, 3);
    advance(TIMEOUT_MS + 500); // the trial goes long after the first timeout ended
    expect(breaker.tryAcquire()).toBe(true);
    breaker.onFailure(); // a single failure is enough in half-open
    expect(breaker.state).toBe('open');
    advance(TIMEOUT_MS - 1);
    expect(breaker.state).toBe('open');
    expect(breaker.tryAcquire()).toBe(false);
    advance(1);
    expect(breaker.state).toBe('half-open');
    expect(changes).toEqual(['open', 'half-open', 'open', 'half-open']);
  });

  it('release gives the trial back and stays half-open', () => {
    const { breaker, changes, advance } = make(1);
    breaker.onFailure();
    advance(TIMEOUT_MS);
    expect(breaker.tryAcquire()).toBe(true);
    breaker.release();
    expect(breaker.state).toBe('half-open');
    expect(breaker.canPass()).toBe(true);
    expect(breaker.tryAcquire()).toBe(true);
    expect(breaker.tryAcquire()).toBe(false);
    expect(changes).toEqual(['open', 'half-open']);
  });

  it('release outside half-open changes nothing', () => {
    const { breaker, changes } = make(2);
    breaker.onFailure();
    breaker.release();
    expect(breaker.state).toBe('closed');
    expect(breaker.failureCount).toBe(1);
    breaker.onFailure();
    breaker.release();
    expect(breaker.state).toBe('open');
    expect(changes).toEqual(['open']);
  });

  it('ignores outcomes reported while open: they belong to requests sent before it opened', () => {
    const { breaker, changes, advance } = make(1);
    breaker.onFailure();
    advance(TIMEOUT_MS - 10);
    breaker.onFailure(); // does not push the timeout back
    breaker.onSuccess(); // does not close without a trial
    expect(breaker.state).toBe('open');
    advance(10);
    expect(breaker.state).toBe('half-open');
    expect(changes).toEqual(['open', 'half-open']);
  });

  it('ignores outcomes reported in half-open when no trial is out', () => {
    const { breaker, advance } = make(1);
    breaker.onFailure();
    advance(TIMEOUT_MS);
    breaker.onSuccess();
    expect(breaker.state).toBe('half-open');
    breaker.onFailure();
    expect(breaker.state).toBe('half-open');
    expect(breaker.canPass()).toBe(true);
  });

  it('a zero timeout goes half-open at the next look', () => {
    const { breaker, changes } = make(1, 0);
    breaker.onFailure();
    expect(breaker.state).toBe('half-open');
    expect(changes).toEqual(['open', 'half-open']);
  });

  describe('outcomes given back with the epoch of their admission (what forwarding does)', () => {
    it('a success from before the breaker opened does not close it while the trial is out (the trial hangs)', () => {
      const { breaker, advance } = make(2);
      expect(breaker.tryAcquire()).toBe(true);
      const slow = breaker.epoch; // admitted while closed, answers much later
      breaker.onFailure(breaker.epoch);
      breaker.onFailure(breaker.epoch);
      expect(breaker.state).toBe('open');
      advance(TIMEOUT_MS);
      expect(breaker.tryAcquire()).toBe(true); // the trial, which hangs
      breaker.onSuccess(slow);
      expect(breaker.state).toBe('half-open');
      expect(breaker.tryAcquire()).toBe(false); // still one trial out, nothing else goes
    });

    it("a failure from before the breaker opened does not re-open it, and the trial's success closes it", () => {
      const { breaker, advance } = make(2);
      breaker.tryAcquire();
      const slow = breaker.epoch;
      fail(breaker, 2);
      advance(TIMEOUT_MS);
      expect(breaker.tryAcquire()).toBe(true);
      const trial = breaker.epoch;
      breaker.onFailure(slow); // the old request times out
      breaker.release(slow); // nor may a stale release free the trial's place
      expect(breaker.state).toBe('half-open');
      expect(breaker.tryAcquire()).toBe(false);
      breaker.onSuccess(trial);
      expect(breaker.state).toBe('closed');
    });

    it('a failure reported in the epoch it was admitted in counts as any other', () => {
      const { breaker } = make(2);
      breaker.onFailure(breaker.epoch);
      breaker.onFailure(breaker.epoch);
      expect(breaker.state).toBe('open');
    });
  });

  describe('permits', () => {
    it('report like the plain methods while the state has not changed', () => {
      const { breaker, advance } = make(2);
      breaker.acquire()!.failure();
      breaker.acquire()!.failure();
      expect(breaker.state).toBe('open');
      expect(breaker.acquire()).toBeUndefined();
      advance(TIMEOUT_MS);
      const trial = breaker.acquire()!;
      expect(trial).toBeDefined();
      expect(breaker.acquire()).toBeUndefined();
      trial.success();
      expect(breaker.state).toBe('closed');
    });

    it('from before a state change report into the void', () => {
      const { breaker, advance } = make(1);
      const slow = breaker.acquire()!; // admitted while closed, answers much later
      breaker.onFailure(); // opens
      advance(TIMEOUT_MS);
      const trial = breaker.acquire()!;
      slow.success(); // must not close the breaker in place of the trial
      expect(breaker.state).toBe('half-open');
      expect(breaker.canPass()).toBe(false);
      slow.failure();
      expect(breaker.state).toBe('half-open');
      trial.failure();
      expect(breaker.state).toBe('open');
    });

    it('count once, whatever the caller does', () => {
      const { breaker } = make(2);
      const p = breaker.acquire()!;
      p.failure();
      p.failure();
      expect(breaker.failureCount).toBe(1);
      expect(breaker.state).toBe('closed');
    });

    it('release hands the trial back', () => {
      const { breaker, advance } = make(1);
      breaker.onFailure();
      advance(TIMEOUT_MS);
      breaker.acquire()!.release();
      expect(breaker.canPass()).toBe(true);
    });
  });

  describe('a passing health check', () => {
    const failRefused = (b: CircuitBreaker, n: number): void => {
      for (let i = 0; i < n; i++) b.onFailure(undefined, undefined, true);
    };

    it('half-opens at once a breaker that refused connections opened: the check just connected', () => {
      const { breaker, changes } = make(3, 5 * 60_000);
      failRefused(breaker, 3);
      expect(breaker.state).toBe('open');
      expect(breaker.healthPassed()).toBe(true);
      expect(breaker.state).toBe('half-open');
      // One trial, as after the timeout; its success closes the breaker.
      const trial = breaker.acquire()!;
      expect(breaker.tryAcquire()).toBe(false);
      trial.success();
      expect(changes).toEqual(['open', 'half-open', 'closed']);
    });

    it('leaves alone a breaker that anything but refusals opened: a reset or a timeout anywhere in the streak', () => {
      for (const order of [['refused', 'refused', 'other'], ['other', 'refused', 'refused'], ['refused', 'other', 'refused']]) {
        const { breaker } = make(3, 5 * 60_000);
        for (const kind of order) breaker.onFailure(undefined, undefined, kind === 'refused');
        expect(breaker.state).toBe('open');
        expect(breaker.healthPassed()).toBe(false);
        expect(breaker.remainingMs).toBe(5 * 60_000);
      }
    });

    it('a success between failures starts the streak again', () => {
      const { breaker } = make(2, 5 * 60_000);
      fail(breaker, 1);
      breaker.onSuccess();
      failRefused(breaker, 2);
      expect(breaker.healthPassed()).toBe(true);
    });

    it('ignores a check that began before the breaker opened', () => {
      const { breaker, advance } = make(1, 5 * 60_000);
      const before = 1_000_000;
      advance(10);
      failRefused(breaker, 1);
      expect(breaker.healthPassed(before)).toBe(false);
      expect(breaker.healthPassed(before + 10)).toBe(true);
    });

    it('changes nothing closed or half-open, and a trial refused again re-opens it until the next pass', () => {
      const { breaker, advance } = make(1, 60_000);
      expect(breaker.healthPassed()).toBe(false);
      expect(breaker.state).toBe('closed');
      failRefused(breaker, 1);
      advance(60_000);
      expect(breaker.state).toBe('half-open');
      expect(breaker.healthPassed()).toBe(false);
      const trial = breaker.acquire()!;
      trial.failure(); // not a connection failure: the timeout again
      expect(breaker.healthPassed()).toBe(false);
      advance(60_000);
      breaker.acquire()!;
      breaker.onFailure(breaker.epoch, undefined, true);
      expect(breaker.state).toBe('open');
      expect(breaker.healthPassed()).toBe(true);
    });
  });

  it('opened by refused connections with no health check to say otherwise, it keeps the whole timeout, trial after trial', () => {
    let t = 1_000_000;
    const breaker = new CircuitBreaker({ threshold: 2, timeoutMs: 3000, now: () => t });
    const refused = (): void => breaker.onFailure(breaker.epoch, undefined, true);
    refused();
    refused();
    expect(breaker.state).toBe('open');
    for (let round = 0; round < 3; round++) {
      expect(breaker.remainingMs).toBe(3000);
      t += 2999;
      expect(breaker.state).toBe('open');
      t += 1;
      expect(breaker.state).toBe('half-open');
      expect(breaker.tryAcquire()).toBe(true);
      refused(); // the trial is refused too: open again, for the whole timeout
      expect(breaker.state).toBe('open');
    }
  });

  it('maps states to the metric values', () => {
    expect(BREAKER_STATE_VALUE).toEqual({ closed: 0, 'half-open': 1, open: 2 });
    expect(breakerStateValue('closed')).toBe(0);
    expect(breakerStateValue('half-open')).toBe(1);
    expect(breakerStateValue('open')).toBe(2);
  });

  it('uses the real clock by default', () => {
    const b = new CircuitBreaker({ threshold: 1, timeoutMs: 60_000 });
    b.onFailure();
    expect(b.state).toBe('open');
  });

  it.each([
    ['threshold must be an integer >= 1, got 0', { threshold: 0, timeoutMs: 1 }],
    ['threshold must be an integer >= 1, got 1.5', { threshold: 1.5, timeoutMs: 1 }],
    ['timeoutMs must be a finite number >= 0, got -1', { threshold: 1, timeoutMs: -1 }],
    ['timeoutMs must be a finite number >= 0, got NaN', { threshold: 1, timeoutMs: Number.NaN }],
  ])('rejects bad options: %s', (message, opts) => {
    expect(() => new CircuitBreaker(opts)).toThrow(message);
  });
});
