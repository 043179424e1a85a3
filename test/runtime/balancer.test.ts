import { Pool, TargetRegistry } from '../../runtime/balancer';
import type { BreakerLink } from '../../runtime/breaker';
import { breakerState, countSuccess, failedConnections, successfulConnections } from '../../runtime/metrics';
import { makeTarget } from '../../runtime/types';

const registry = (): TargetRegistry => new TargetRegistry({ poolSize: 4, breakerThreshold: 3, breakerTimeoutMs: 60_000 });
const targets = ['10.0.0.3:80', '10.0.0.1:80', '10.0.0.2:80'].map((id) => makeTarget(id.split(':')[0], 80));
const picks = (pool: Pool, n: number): string[] => Array.from({ length: n }, () => pool.pick()!.state.target.id);

describe('round-robin', () => {
  let reg: TargetRegistry;
  beforeEach(() => (reg = registry()));
  afterEach(() => reg.close());

  test('visits each target exactly once per round, in a stable order', () => {
    const pool = new Pool('r', reg);
    pool.update(targets);
    expect(picks(pool, 7)).toEqual(['10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80', '10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80', '10.0.0.1:80']);
  });

  test('a refresh with the same members (in another order) does not reset the rotation', () => {
    const pool = new Pool('r', reg);
    pool.update(targets);
    expect(picks(pool, 2)).toEqual(['10.0.0.1:80', '10.0.0.2:80']);
    pool.update([...targets].reverse());
    expect(picks(pool, 2)).toEqual(['10.0.0.3:80', '10.0.0.1:80']);
  });

  test('a change of members goes on from the target due next: one leaving before it skips nobody, one joining before it repeats nobody', () => {
    const t = (n: number) => makeTarget(`10.0.0.${n}`, 80);
    const pool = new Pool('r', reg);
    pool.update([t(1), t(2), t(3), t(4)]);
    expect(picks(pool, 2)).toEqual(['10.0.0.1:80', '10.0.0.2:80']); // .3 is due
    pool.update([t(2), t(3), t(4)]);
    expect(picks(pool, 3)).toEqual(['10.0.0.3:80', '10.0.0.4:80', '10.0.0.2:80']);
    pool.update([t(1), t(2), t(3), t(4)]); // .3 is due again
    expect(picks(pool, 4)).toEqual(['10.0.0.3:80', '10.0.0.4:80', '10.0.0.1:80', '10.0.0.2:80']);
    // The target due next leaves: the one after it in the order is due, wrapping round past the last.
    expect(picks(pool, 3)).toEqual(['10.0.0.3:80', '10.0.0.4:80', '10.0.0.1:80']); // .2 is due
    pool.update([t(1), t(3), t(4)]);
    expect(picks(pool, 1)).toEqual(['10.0.0.3:80']);
    expect(picks(pool, 1)).toEqual(['10.0.0.4:80']); // .1 is due
    pool.update([t(3), t(4)]);
    expect(picks(pool, 2)).toEqual(['10.0.0.3:80', '10.0.0.4:80']);
  });

  test('healthy targets first; not-yet-checked ones only while none is healthy; unhealthy ones as a last resort (fail open)', () => {
    const pool = new Pool('r', reg);
    pool.update(targets);
    // Nothing checked yet: all serve.
    expect(new Set(picks(pool, 3)).size).toBe(3);
    reg.setStatus(targets[1], true); // 10.0.0.1 healthy, the others unchecked
    expect(picks(pool, 3)).toEqual(['10.0.0.1:80', '10.0.0.1:80', '10.0.0.1:80']);
    reg.setStatus(targets[1], false);
    reg.setStatus(targets[2], false);
    reg.setStatus(targets[0], false);
    const r = pool.pick()!;
    expect(r.failOpen).toBe(true);
    expect(new Set(picks(pool, 3)).size).toBe(3);
  });

  test('an excluded target (already failed for this request) is skipped', () => {
    const pool = new Pool('r', reg);
    pool.update(targets);
    const first = pool.pick()!.state;
    const second = pool.pick(new Set([first]))!.state;
    expect(second).not.toBe(first);
    expect(pool.pick(new Set([reg.get('10.0.0.1:80')!, reg.get('10.0.0.2:80')!, reg.get('10.0.0.3:80')!]))).toBeUndefined();
  });

  test('a retry takes the next target without moving the rotation: first tries still visit each target once per round', () => {
    const pool = new Pool('r', reg);
    pool.update(targets);
    const firsts: string[] = [];
    const retries: string[] = [];
    for (let i = 0; i < 6; i++) {
      const first = pool.pick()!.state;
      firsts.push(first.target.id);
      // Every request that lands on 10.0.0.1 fails there and is tried again elsewhere.
      if (first.target.id === '10.0.0.1:80') retries.push(pool.pick(new Set([first]))!.state.target.id);
    }
    expect(firsts).toEqual(['10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80', '10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80']);
    expect(retries).toEqual(['10.0.0.2:80', '10.0.0.2:80']);
  });

  test('an open breaker takes a target out of rotation', () => {
    const pool = new Pool('r', reg);
    pool.update(targets);
    const s = reg.get('10.0.0.2:80')!;
    for (let i = 0; i < 3; i++) s.breaker.onFailure();
    expect(picks(pool, 4)).toEqual(['10.0.0.1:80', '10.0.0.3:80', '10.0.0.1:80', '10.0.0.3:80']);
  });

  test('an empty pool picks nothing', () => {
    const pool = new Pool('r', reg);
    pool.update([]);
    expect(pool.pick()).toBeUndefined();
  });

  test('a target that leaves every pool is drained: forgotten only after its in-flight requests end', () => {
    const pool = new Pool('r', reg);
    pool.update(targets);
    const s = pool.pick()!.state;
    s.inflight++;
    pool.update(targets.filter((t) => t.id !== s.target.id));
    expect(picks(pool, 4)).not.toContain(s.target.id);
    expect(reg.get(s.target.id)).toBe(s);
    reg.done(s);
    expect(reg.get(s.target.id)).toBeUndefined();
  });
});

describe('karma_circuit_breaker_state', () => {
  const series = async (id: string): Promise<number | undefined> => (await breakerState.get()).values.find((v) => v.labels.target === id)?.value;

  test('has a series (0, closed) for every target in use from the start, gone with the target', async () => {
    const reg = registry();
    const pool = new Pool('r', reg);
    pool.update(targets);
    expect(await series('10.0.0.2:80')).toBe(0);
    for (let i = 0; i < 3; i++) pool.pick()!.state.breaker.onFailure();
    expect(await series('10.0.0.2:80')).toBe(0);
    expect(await series('10.0.0.1:80')).toBe(0);
    const s = reg.get('10.0.0.3:80')!;
    for (let i = 0; i < 3; i++) s.breaker.onFailure();
    expect(await series('10.0.0.3:80')).toBe(2);
    pool.clear();
    expect(await series('10.0.0.3:80')).toBeUndefined();
    reg.close();
  });
});

test('a target that leaves every pool takes its connection counters with it: Hosts naming new ports cannot pile up series', async () => {
  const has = async (counter: typeof failedConnections, id: string): Promise<boolean> =>
    (await counter.get()).values.some((v) => v.labels.target === id);
  const reg = registry();
  const pool = new Pool('api-31337-prod', reg);
  pool.update([makeTarget('10.9.0.1', 31337)]);
  failedConnections.labels({ target: '10.9.0.1:31337' }).inc();
  countSuccess('10.9.0.1:31337');
  expect(await has(failedConnections, '10.9.0.1:31337')).toBe(true);
  expect(await has(successfulConnections, '10.9.0.1:31337')).toBe(true);
  pool.clear();
  expect(await has(failedConnections, '10.9.0.1:31337')).toBe(false);
  expect(await has(successfulConnections, '10.9.0.1:31337')).toBe(false);
  reg.close();
});

describe('a half-open trial the primary granted (several workers)', () => {
  test('is taken by the very next pick, whatever the rotation: waiting for it could outlast the grant', () => {
    const answers: (() => void)[] = [];
    let n = 0;
    const link: BreakerLink = {
      up: true,
      self: 1,
      report: (id, ev, then) => {
        if (ev !== 'trial') return undefined;
        const mine = ++n;
        answers.push(() => {
          reg.get(id)!.breaker.apply({ id, state: 'half-open', failing: false, holder: 1 }, mine);
          then?.();
        });
        return mine;
      },
      ask: (_ids, then) => then(),
      last: () => undefined,
    };
    const reg = new TargetRegistry({ poolSize: 4, breakerThreshold: 3, breakerTimeoutMs: 60_000, breakers: link });
    const pool = new Pool('r', reg);
    pool.update(targets);
    reg.get('10.0.0.2:80')!.breaker.apply({ id: '10.0.0.2:80', state: 'half-open', failing: false });
    expect(picks(pool, 2)).toEqual(['10.0.0.1:80', '10.0.0.3:80']); // 10.0.0.2 claimed its trial, and was passed over
    expect(answers).toHaveLength(1);
    answers[0](); // granted
    expect(reg.grants).toBe(1);
    expect(picks(pool, 1)).toEqual(['10.0.0.2:80']); // the rotation would say 10.0.0.1
    expect(reg.grants).toBe(0);
    expect(picks(pool, 2)).toEqual(['10.0.0.1:80', '10.0.0.3:80']); // its one trial is out
    reg.close();
  });
});
