/**
 * One breaker per target for all workers: workers' breakers linked to the primary's board through the
 * real Coordinator, over an in-memory channel that delivers each message on a later turn and in order,
 * as node:cluster's IPC pipe does.
 */
import type { Worker } from 'node:cluster';
import { EventEmitter } from 'node:events';
import { BreakerBoard, CircuitBreaker } from '../../runtime/breaker';
import { loadConfig } from '../../runtime/config';
import { Coordinator } from '../../runtime/coordinator';
import { PrimaryBreakers, ToPrimary, ToWorker } from '../../runtime/ipc';
import { until } from '../support/net';

const TARGET = '10.0.0.1:80';
const TIMEOUT_MS = 60; // CIRCUIT_BREAKER_TIMEOUT 0.001 minutes

/** Lets every message in flight arrive: each hop is one setImmediate, so a few turns, however slow the machine. */
async function settle(): Promise<void> {
  for (let turn = 0; turn < 20; turn++) await new Promise((r) => setImmediate(r));
}

interface FakeWorker {
  readonly id: number;
  readonly breaker: CircuitBreaker;
  readonly link: PrimaryBreakers;
  readonly emitter: EventEmitter & Worker;
  /** The worker breaker's state changes, as karma_circuit_breaker_state follows them. */
  readonly changes: string[];
  /** What it sent the primary, and a look at each message as it goes. */
  readonly sent: ToPrimary[];
  onSend?: (m: ToPrimary) => void;
  connected: boolean;
  /** It still has the target (false: its registry forgot it, and the board's word finds no breaker). */
  has: boolean;
}

function cluster(workers = 2) {
  let clock = 1_000_000;
  const config = loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: TARGET, HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_THRESHOLD: '3', CIRCUIT_BREAKER_TIMEOUT: '0.001' });
  const coordinator = new Coordinator(config, { name: 'test', discover: async () => [] }, () => clock);
  const all: FakeWorker[] = [];
  for (let id = 1; id <= workers; id++) {
    const emitter = new EventEmitter() as EventEmitter & Worker;
    const w = { id, emitter, connected: true, has: true, changes: [] as string[], sent: [] as ToPrimary[] } as FakeWorker;
    Object.assign(emitter, {
      id,
      isConnected: () => w.connected,
      send: (m: ToWorker) => setImmediate(() => w.link.receive(m as Extract<ToWorker, { t: 'breaker' }>, (t) => (t === TARGET && w.has ? w.breaker : undefined))),
    });
    const toPrimary = (m: ToPrimary): void => {
      w.sent.push(m);
      w.onSend?.(m);
      setImmediate(() => emitter.emit('message', m));
    };
    Object.assign(w, { link: new PrimaryBreakers(id, toPrimary, () => w.connected, 500) });
    Object.assign(w, { breaker: new CircuitBreaker({ threshold: 3, timeoutMs: TIMEOUT_MS, now: () => clock, onChange: (state) => w.changes.push(state), shared: { id: TARGET, link: w.link } }) });
    coordinator.add(emitter);
    all.push(w);
  }
  return { coordinator, workers: all, advance: (ms: number) => void (clock += ms) };
}

/** onFailure, resolved when the breaker lets the request go on (after the board's answer). */
const failOn = (w: FakeWorker): Promise<void> => new Promise((r) => w.breaker.onFailure(w.breaker.epoch, r));

describe('one breaker per target across workers', () => {
  test('failures on different workers add up: the threshold opens it in every worker, before the failing request goes on', async () => {
    const { workers: [a, b] } = cluster();
    await failOn(a);
    await failOn(b);
    expect([a.breaker.state, b.breaker.state]).toEqual(['closed', 'closed']);
    await failOn(a);
    // The answer to a's third failure comes after b has heard: b refuses before a's client is answered.
    expect(b.breaker.state).toBe('open');
    expect(a.breaker.state).toBe('open');
    expect(b.breaker.tryAcquire()).toBe(false);
  });

  test('a success on any worker resets the shared count (consecutive failures of the target, not of one worker)', async () => {
    const { workers: [a, b] } = cluster();
    await failOn(a);
    await failOn(a);
    await settle();
    b.breaker.onSuccess(b.breaker.epoch); // b heard the count is running, so it tells the board
    await settle();
    await failOn(a);
    await failOn(b);
    expect(a.breaker.state).toBe('closed');
    await failOn(b);
    expect([a.breaker.state, b.breaker.state]).toEqual(['open', 'open']);
  });

  test('successes while nothing is counted stay in the worker', () => {
    const { workers: [a] } = cluster();
    const sent: unknown[] = [];
    a.emitter.on('message', (m) => sent.push(m));
    for (let i = 0; i < 100; i++) a.breaker.onSuccess(a.breaker.epoch);
    return settle().then(() => expect(sent).toEqual([]));
  });

  /** Half-open: `w` claims the trial (its first look refuses), and takes it once the board grants it. */
  async function trialOn(w: FakeWorker): Promise<number> {
    expect(w.breaker.tryAcquire()).toBe(false);
    await settle();
    expect(w.breaker.tryAcquire()).toBe(true);
    return w.breaker.epoch;
  }

  test('half-open lets one trial through for all workers, granted by the primary; its success closes the breaker everywhere', async () => {
    const { workers: [a, b], advance } = cluster();
    for (const w of [a, b, a]) await failOn(w);
    advance(TIMEOUT_MS);
    const epoch = await trialOn(a);
    await settle();
    expect(b.breaker.state).toBe('half-open');
    expect(b.breaker.tryAcquire()).toBe(false);
    expect(b.breaker.awaitsBoard).toBe(true);
    expect(a.breaker.tryAcquire()).toBe(false); // one trial, not one per request either
    a.breaker.onSuccess(epoch);
    await settle();
    expect([a.breaker.state, b.breaker.state]).toEqual(['closed', 'closed']);
    expect(b.breaker.tryAcquire()).toBe(true);
  });

  test('a failed trial re-opens the breaker in every worker for another timeout', async () => {
    const { workers: [a, b], advance } = cluster();
    for (const w of [a, b, a]) await failOn(w);
    advance(TIMEOUT_MS);
    await trialOn(b);
    await failOn(b);
    expect([a.breaker.state, b.breaker.state]).toEqual(['open', 'open']);
    advance(TIMEOUT_MS - 1);
    expect([a.breaker.canPass(), b.breaker.canPass()]).toEqual([false, false]);
    advance(1);
    expect(a.breaker.state).toBe('half-open');
  });

  test('every worker claiming the trial in the same instant (a request each, under load): exactly one is granted it', async () => {
    const { workers, advance } = cluster(4);
    for (const w of [workers[0], workers[1], workers[2]]) await failOn(w);
    advance(TIMEOUT_MS);
    for (const w of workers) expect(w.breaker.tryAcquire()).toBe(false); // four claims, before any answer
    await settle();
    const took = workers.map((w) => w.breaker.tryAcquire());
    expect(took.filter(Boolean)).toHaveLength(1);
    const loser = workers[took.indexOf(false)];
    expect(loser.breaker.state).toBe('half-open');
    expect(loser.breaker.awaitsBoard).toBe(true);
    // The winner's verdict decides for all: a success closes every worker's breaker.
    const winner = workers[took.indexOf(true)];
    winner.breaker.onSuccess(winner.breaker.epoch);
    await settle();
    expect(workers.map((w) => w.breaker.state)).toEqual(['closed', 'closed', 'closed', 'closed']);
  });

  test('an open breaker turns half-open in every worker at its time, with no request to find out (the state metric says so)', async () => {
    const { workers: [a, b], advance } = cluster();
    for (const w of [a, b, a]) await failOn(w);
    expect(b.changes).toEqual(['open']);
    advance(TIMEOUT_MS);
    await until('the half-open broadcast', () => b.changes.length === 2, 2000, 5); // the primary's timer, on the real clock
    expect(b.changes).toEqual(['open', 'half-open']);
  });

  test('the trial of a worker that dies is given back, so another worker can try', async () => {
    const { coordinator, workers: [a, b], advance } = cluster();
    for (const w of [a, b, a]) await failOn(w);
    advance(TIMEOUT_MS);
    await trialOn(a);
    await settle();
    expect(b.breaker.tryAcquire()).toBe(false); // b says it wants the trial too
    a.connected = false;
    coordinator.remove(a.emitter);
    await settle();
    // a's trial given back before b's word came: b's word claimed it, and b holds it.
    expect(b.breaker.hasGrant).toBe(true);
    expect(b.breaker.tryAcquire()).toBe(true);
  });

  test("a grant that comes after the worker stopped waiting for it (a slow primary) is held for the worker's next request, not lost", () => {
    const sent: string[] = [];
    let gaveUp: (() => void) | undefined;
    const link = {
      up: true,
      self: 1,
      report: (_id: string, ev: string, then?: () => void) => {
        sent.push(ev);
        gaveUp = then;
        return then ? 7 : undefined;
      },
      ask: () => undefined,
      last: () => undefined,
    };
    const b = new CircuitBreaker({ threshold: 1, timeoutMs: 0, shared: { id: TARGET, link } });
    b.apply({ id: TARGET, state: 'half-open', failing: false });
    expect(b.tryAcquire()).toBe(false); // the claim
    gaveUp!(); // its wait runs out (PrimaryBreakers' waitMs)
    b.apply({ id: TARGET, state: 'half-open', failing: false, holder: 1 }, 7); // the primary's late grant
    expect(sent).toEqual(['trial']);
    expect(b.hasGrant).toBe(true);
    expect(b.tryAcquire()).toBe(true); // the trial
  });

  test('a granted trial no request takes is kept while nobody else asks: a quiet worker\'s next request, seconds later, is the trial', async () => {
    // One request every 1.5 s: each used to claim the trial (and go elsewhere), and each grant lapsed
    // before the next came, so a target back after a blip stayed out of a quiet service for good.
    const { workers: [a, b], advance } = cluster();
    for (const w of [a, b, a]) await failOn(w);
    advance(TIMEOUT_MS);
    expect(a.breaker.tryAcquire()).toBe(false); // claimed; this request goes to another target
    await new Promise((r) => setTimeout(r, 2500)); // past two renewals
    expect(a.breaker.tryAcquire()).toBe(true);
    await settle();
    a.breaker.onSuccess(a.breaker.epoch);
    await settle();
    expect([a.breaker.state, b.breaker.state]).toEqual(['closed', 'closed']);
  });

  test('a granted trial no request takes goes, at its renewal, to a worker that asked for it meanwhile', async () => {
    const { workers: [a, b], advance } = cluster();
    for (const w of [a, b, a]) await failOn(w);
    advance(TIMEOUT_MS);
    expect(a.breaker.tryAcquire()).toBe(false); // claimed, then the route's traffic goes elsewhere
    await settle();
    expect(a.breaker.hasGrant).toBe(true);
    expect(b.breaker.tryAcquire()).toBe(false); // b asks too: a holds it
    await until('the grant handed to b', () => b.breaker.hasGrant, 3000, 20);
    expect(a.breaker.hasGrant).toBe(false);
    expect(b.breaker.tryAcquire()).toBe(true);
    expect(a.breaker.tryAcquire()).toBe(false); // one trial for all workers
  });

  /** Two workers, the breaker opened by three failures and its timeout past: half-open. */
  async function halfOpen() {
    const c = cluster();
    const [a, b] = c.workers;
    for (const w of [a, b, a]) await failOn(w);
    c.advance(TIMEOUT_MS);
    return c;
  }
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  /** A busy worker: a request every 20 ms for `ms`, until one takes the trial. */
  async function takesTrial(w: FakeWorker, ms: number): Promise<boolean> {
    for (let waited = 0; waited < ms; waited += 20) {
      if (w.breaker.tryAcquire()) return true;
      await sleep(20);
    }
    return false;
  }

  test('after a hand-over each way, a busy worker still says it wants the trial, and gets it from a quiet holder', async () => {
    const { workers: [a, b] } = await halfOpen();
    expect(a.breaker.tryAcquire()).toBe(false);
    await settle();
    expect(a.breaker.hasGrant).toBe(true);
    expect(b.breaker.tryAcquire()).toBe(false); // b wants (wantSaidTo = a)
    await settle();
    await sleep(1100);
    expect(b.breaker.hasGrant).toBe(true); // handed to b
    expect(a.breaker.tryAcquire()).toBe(false); // a wants (wantSaidTo = b)
    await settle();
    await sleep(1100);
    expect(a.breaker.hasGrant).toBe(true); // handed back to a; a now quiet
    // b is busy: 50 requests a second for 4 s, each finds a holding it
    expect(await takesTrial(b, 4000)).toBe(true);
  }, 20_000);

  test('a trial handed to a worker that has forgotten the target since it asked is given back, not held by nobody', async () => {
    const { workers: [a, b] } = await halfOpen();
    expect(a.breaker.tryAcquire()).toBe(false);
    await settle();
    expect(b.breaker.tryAcquire()).toBe(false); // b wants
    await settle();
    b.has = false; // b's registry collects the target (route forgotten): no grant held, nothing sent
    await sleep(1200); // a's renewal hands it to b
    expect(await takesTrial(a, 3000)).toBe(true);
  }, 20_000);

  test('a request on the holder while its renewal is under way is no second trial beside the one handed on', async () => {
    const { workers: [a, b] } = await halfOpen();
    expect(a.breaker.tryAcquire()).toBe(false);
    await settle();
    expect(b.breaker.tryAcquire()).toBe(false);
    await settle();
    let tookA = false;
    // a's request comes just as its renewal has gone to the board, which hands the trial to b.
    a.onSend = (m) => {
      if (m.t === 'breaker' && m.ev === 'renew') setImmediate(() => (tookA = a.breaker.tryAcquire()));
    };
    await sleep(1100);
    await settle();
    const tookB = b.breaker.tryAcquire();
    expect(tookA && tookB).toBe(false);
  }, 20_000);

  test('after a trial given back (its client left), a busy worker says again that it wants the next one', async () => {
    const { workers: [a, b] } = await halfOpen();
    expect(a.breaker.tryAcquire()).toBe(false);
    await settle();
    expect(b.breaker.tryAcquire()).toBe(false); // b wants (wantSaidTo = a)
    await settle();
    expect(a.breaker.tryAcquire()).toBe(true); // a's request takes the trial
    a.breaker.release(a.breaker.epoch); // its client went away: no verdict; board holder none, wanted cleared
    await settle();
    expect(a.breaker.tryAcquire()).toBe(false); // a's next request claims again first; goes elsewhere
    await settle();
    expect(a.breaker.hasGrant).toBe(true);
    expect(await takesTrial(b, 3000)).toBe(true);
  }, 20_000);

  test('the primary gone: a worker waiting on another\'s trial tries on its own, and a trial whose failure the primary never heard opens the breaker', async () => {
    const { workers: [a, b], advance } = cluster();
    for (const w of [a, b, a]) await failOn(w);
    advance(TIMEOUT_MS);
    const epoch = await trialOn(a);
    await settle();
    a.connected = b.connected = false;
    // What worker.ts does on 'disconnect': the breakers are detached, then what waited goes on.
    b.breaker.detach();
    expect(b.breaker.tryAcquire()).toBe(true);
    a.connected = true;
    const failed = new Promise<void>((r) => a.breaker.onFailure(epoch, r)); // reported, never answered
    a.connected = false;
    a.breaker.detach();
    a.link.flush();
    await failed;
    expect(a.breaker.state).toBe('open');
  });

  test('without its primary a worker breaker counts alone, and a failure goes on at once', () => {
    const { workers: [a] } = cluster(1);
    a.connected = false;
    let went = 0;
    for (let i = 0; i < 3; i++) a.breaker.onFailure(a.breaker.epoch, () => went++);
    expect(went).toBe(3);
    expect(a.breaker.state).toBe('open');
  });
});

describe('PrimaryBreakers (a worker\'s line to the board)', () => {
  test('a failure waits for the board at most waitMs, and not at all once the primary is gone', async () => {
    const link = new PrimaryBreakers(1, () => undefined, () => true, 50);
    const started = Date.now();
    await new Promise<void>((r) => link.report(TARGET, 'fail', r));
    expect(Date.now() - started).toBeGreaterThanOrEqual(45);
    let went = false;
    link.report(TARGET, 'fail', () => (went = true));
    link.flush();
    expect(went).toBe(true);
  });

  test('requests asking about the same targets share one question and its answer', () => {
    const sent: ToPrimary[] = [];
    const link = new PrimaryBreakers(1, (m) => sent.push(m), () => true);
    let answered = 0;
    link.ask([TARGET], () => answered++);
    link.ask([TARGET], () => answered++);
    link.ask(['10.0.0.2:80'], () => answered++);
    expect(sent).toEqual([{ t: 'breakers?', n: 1, ids: [TARGET] }, { t: 'breakers?', n: 2, ids: ['10.0.0.2:80'] }]);
    link.receive({ t: 'breaker', snaps: [{ id: TARGET, state: 'closed', failing: false }], n: 1 }, () => undefined);
    expect(answered).toBe(2);
    link.ask([TARGET], () => answered++); // a new question once the last is answered
    expect(sent).toHaveLength(3);
    link.flush();
    expect(answered).toBe(4);
  });

  test('keeps what the board said about targets it has no breaker for, the time left counting down', () => {
    let now = 0;
    jest.spyOn(Date, 'now').mockImplementation(() => now);
    try {
      const link = new PrimaryBreakers(1, () => undefined, () => true);
      link.receive({ t: 'breaker', snaps: [{ id: TARGET, state: 'open', failing: false, remainingMs: 1000 }] }, () => undefined);
      now = 400;
      expect(link.last(TARGET)).toEqual({ id: TARGET, state: 'open', failing: false, remainingMs: 600 });
      link.receive({ t: 'breaker', snaps: [{ id: TARGET, state: 'closed', failing: false }] }, () => undefined);
      expect(link.last(TARGET)).toBeUndefined();
    } finally {
      jest.restoreAllMocks();
    }
  });
});

describe('BreakerBoard', () => {
  test('keeps no entry for a closed breaker with nothing counted, and forgets targets nobody uses', () => {
    const board = new BreakerBoard({ threshold: 2, timeoutMs: 1000, now: () => 5_000 });
    expect(board.report(1, TARGET, 'ok')).toEqual({ snap: { id: TARGET, state: 'closed', failing: false }, changed: false });
    expect(board.report(1, TARGET, 'fail').snap).toEqual({ id: TARGET, state: 'closed', failing: true });
    expect(board.snapshots()).toHaveLength(1);
    board.report(2, TARGET, 'ok');
    expect(board.snapshots()).toEqual([]);
    board.report(1, TARGET, 'fail');
    board.report(2, TARGET, 'fail');
    expect(board.snapshot(TARGET)).toMatchObject({ state: 'open', remainingMs: 1000 });
    expect(board.retain(new Set([TARGET]))).toEqual([]);
    expect(board.retain(new Set())).toEqual([{ id: TARGET, state: 'closed', failing: false }]);
    expect(board.snapshot(TARGET)).toEqual({ id: TARGET, state: 'closed', failing: false });
  });

  test('a passing health check half-opens a breaker that refused connections opened, from whichever workers they came', () => {
    const board = new BreakerBoard({ threshold: 2, timeoutMs: 300_000, now: () => 5_000 });
    expect(board.healthPassed(TARGET)).toBeUndefined(); // nothing counted: nothing to change
    board.report(1, TARGET, 'fail-refused');
    board.report(2, TARGET, 'fail-refused');
    expect(board.snapshot(TARGET)).toMatchObject({ state: 'open', remainingMs: 300_000 });
    expect(board.healthPassed(TARGET, 4_999)).toBeUndefined(); // a check begun before it opened proves nothing
    expect(board.healthPassed(TARGET, 5_000)).toEqual({ id: TARGET, state: 'half-open', failing: false });
    // One trial, granted to one worker, as after the timeout.
    expect(board.report(2, TARGET, 'trial').snap).toMatchObject({ state: 'half-open', holder: 2 });
    expect(board.report(1, TARGET, 'trial').snap).toMatchObject({ holder: 2 });
    // Opened by a reset the next time: the check does not shorten that.
    board.report(2, TARGET, 'fail');
    expect(board.snapshot(TARGET)).toMatchObject({ state: 'open' });
    expect(board.healthPassed(TARGET)).toBeUndefined();
  });

  test('one failure other than a refusal in the streak (a timeout on another worker) keeps the timeout', () => {
    let t = 5_000;
    const board = new BreakerBoard({ threshold: 3, timeoutMs: 300_000, now: () => t });
    board.report(1, TARGET, 'fail');
    board.report(2, TARGET, 'fail-refused');
    board.report(2, TARGET, 'fail-refused');
    expect(board.snapshot(TARGET)).toMatchObject({ state: 'open' });
    t += 1000;
    expect(board.healthPassed(TARGET, t)).toBeUndefined();
  });
});
