/**
 * The log stays bounded in memory when nobody reads it: past LOG_BACKLOG_MAX_BYTES unwritten, lines are
 * dropped, counted, and said once the log is read again.
 */
import { hostForLog, targetForLog } from '../../runtime/server';
import { log, LogBudget, LOG_BACKLOG_MAX_BYTES, logProcessWarnings } from '../../runtime/log';
import { register } from '../../runtime/metrics';

/** Makes a stream look as if that many bytes wait unwritten (as a stalled pipe would hold them). */
function backlog(stream: NodeJS.WriteStream, bytes: () => number): () => void {
  Object.defineProperty(stream, 'writableLength', { get: bytes, configurable: true });
  return () => delete (stream as { writableLength?: number }).writableLength;
}

test('lines past the backlog bound are dropped and counted, and the count is said once the log drains', async () => {
  const out: string[] = [];
  const err: string[] = [];
  const stdout = jest.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => (out.push(String(c)), true));
  const stderr = jest.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => (err.push(String(c)), true));
  let waiting = LOG_BACKLOG_MAX_BYTES + 1;
  const restore = backlog(process.stdout, () => waiting);
  const dropped = async (): Promise<number> => (await register.getSingleMetric('karma_log_lines_dropped_total')!.get()).values[0]?.value ?? 0;
  try {
    const before = await dropped();
    for (let i = 0; i < 3; i++) log('info', 'access', { status: 200 });
    expect(out).toEqual([]);
    expect(await dropped()).toBe(before + 3);
    // Said on stderr, with the next line that goes out.
    waiting = 0;
    log('info', 'access', { status: 204 });
    expect(out.map((l) => JSON.parse(l).status)).toEqual([204]);
    expect(err.map((l) => JSON.parse(l))).toEqual([expect.objectContaining({ level: 'warn', msg: 'log lines dropped: the log was not read fast enough', dropped: 3 })]);
    log('info', 'access', { status: 200 });
    expect(err).toHaveLength(1);
  } finally {
    restore();
    stdout.mockRestore();
    stderr.mockRestore();
  }
});

/**
 * Runs `body` with stderr captured (each line as written), timers faked, and a clock the test moves
 * (`clock.t`, what performance.now() answers); everything is put back after.
 */
function withBudgetClock(body: (err: string[], clock: { t: number }) => void): void {
  const err: string[] = [];
  const stderr = jest.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => (err.push(String(c)), true));
  jest.useFakeTimers({ doNotFake: ['performance'] });
  const clock = { t: 1_000_000 };
  const now = jest.spyOn(performance, 'now').mockImplementation(() => clock.t);
  try {
    body(err, clock);
  } finally {
    jest.clearAllTimers();
    jest.useRealTimers();
    now.mockRestore();
    stderr.mockRestore();
  }
}

test('a log budget lets a burst through, then one line per period, and the next line says how many it held back', () => {
  withBudgetClock((err, clock) => {
    const budget = new LogBudget(3, 5000);
    for (let i = 0; i < 10; i++) budget.log('warn', 'target unhealthy', { target: `10.0.0.${i}:80` });
    expect(err.map((l) => JSON.parse(l).target)).toEqual(['10.0.0.0:80', '10.0.0.1:80', '10.0.0.2:80']);
    clock.t += 5000;
    budget.log('warn', 'target unhealthy', { target: '10.0.0.10:80' });
    expect(JSON.parse(err[3])).toMatchObject({ target: '10.0.0.10:80', heldBack: 7 });
    budget.log('warn', 'target unhealthy', { target: '10.0.0.11:80' });
    expect(err).toHaveLength(4);
  });
});

test('lines held back are said once the budget has room, even if no other line comes', () => {
  withBudgetClock((err, clock) => {
    const budget = new LogBudget(1, 5000);
    for (let i = 0; i < 3; i++) budget.log('warn', 'target unhealthy', { target: `10.0.1.${i}:80` });
    expect(err).toHaveLength(1);
    clock.t += 5000;
    jest.advanceTimersByTime(5000);
    expect(err.map((l) => JSON.parse(l))).toEqual([
      expect.objectContaining({ target: '10.0.1.0:80' }),
      expect.objectContaining({ level: 'warn', msg: 'log lines held back: too many at once (the metrics have every change)', heldBack: 2 }),
    ]);
    // Nothing more to say: the timer is not set again.
    clock.t += 50_000;
    jest.advanceTimersByTime(50_000);
    expect(err).toHaveLength(2);
  });
});

test("a line marked always (a target that was healthy going bad) is neither held back nor paid for", () => {
  withBudgetClock((err) => {
    const budget = new LogBudget(1, 5000);
    budget.log('warn', 'target unhealthy', { target: 'made-up:1' });
    budget.log('warn', 'target unhealthy', { target: 'made-up:2' }); // held back
    budget.log('warn', 'target unhealthy', { target: '10.0.0.5:8080' }, true);
    expect(err.map((l) => JSON.parse(l).target)).toEqual(['made-up:1', '10.0.0.5:8080']);
    expect(JSON.parse(err[1]).heldBack).toBeUndefined();
  });
});

test("what a library prints with console (ioredis's ready-check notice) is a JSON line like any other", () => {
  const saved = { log: console.log, info: console.info, debug: console.debug, warn: console.warn, error: console.error };
  const warnings = process.listeners('warning');
  const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
  const stdout = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
  try {
    logProcessWarnings();
    console.warn('Skipping the ready check because INFO command fails: "%s".\nYou can disable it.', 'NOPERM');
    console.log('plain', 42);
    const [line] = stderr.mock.calls.map(([l]) => String(l));
    expect(JSON.parse(line)).toMatchObject({ level: 'warn', from: 'console', msg: 'Skipping the ready check because INFO command fails: "NOPERM". You can disable it.' });
    expect(JSON.parse(String(stdout.mock.calls[0][0]))).toMatchObject({ level: 'info', msg: 'plain 42' });
  } finally {
    stderr.mockRestore();
    stdout.mockRestore();
    Object.assign(console, saved);
    process.removeAllListeners('warning');
    for (const l of warnings) process.on('warning', l as (w: Error) => void);
  }
});

test("a line never holds a raw C1 control or line separator: a client's U+009B would start a terminal escape in whoever tails the log", () => {
  const stdout = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
  try {
    log('info', 'access', { host: '\u009b2J\u009b31mFORGED.x', path: '/a\u007f\u2028b', plain: 'é ü' });
    const line = String(stdout.mock.calls[0][0]);
    expect(line).not.toMatch(/[\u007f-\u009f\u2028\u2029]/);
    expect(line).toContain('\\u009b2J');
    expect(line.endsWith('\n')).toBe(true);
    expect(line.slice(0, -1)).not.toContain('\n');
    // Still the same JSON: a reader gets the value back.
    expect(JSON.parse(line)).toMatchObject({ host: '\u009b2J\u009b31mFORGED.x', path: '/a\u007f\u2028b', plain: 'é ü' });
  } finally {
    stdout.mockRestore();
  }
});

describe('what the access log keeps of a request target', () => {
  test.each([
    ['/a?b=1', '/a?b=1'],
    ['/callback?access_token=eyJhbGciOi&state=xyz', '/callback?access_token=***&state=xyz'],
    ['/o/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F20261204&X-Amz-Signature=abc123&X-Amz-Security-Token=IQo', '/o/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***'],
    ['/login?user=bob&password=hunter2', '/login?user=bob&password=***'],
    ['/x?api_key=1&apikey=2&api-key=3&client_secret=4&auth=5&Authorization=6&sig=7&pwd=8', '/x?api_key=***&apikey=***&api-key=***&client_secret=***&auth=***&Authorization=***&sig=***&pwd=***'],
    ['/books?author=bob&page=2', '/books?author=bob&page=2'], // named so, not credentials
    ['/cb?code=4%2F0Ad&state=xyz', '/cb?code=***&state=xyz'], // an OAuth authorization code
    ['/maps?key=AIzaSy&q=x&jwt=eyJ&sid=1&session=2&PHPSESSID=3', '/maps?key=***&q=x&jwt=***&sid=***&session=***&PHPSESSID=***'],
    ['/x?%74oken=1', '/x?%74oken=***'], // the name as decoded
    ['/x?token', '/x?token'], // no value to hide
    ['http://user:secret@169.254.169.254/latest?token=1', 'http://***@169.254.169.254/latest?token=***'],
    ['/s?private_key=1&access_key=2&pass=3&ticket=4&bearer=5&passage=6', '/s?private_key=***&access_key=***&pass=***&ticket=***&bearer=***&passage=6'],
    ['/s2?a=1;token=2;b=3&sid=4', '/s2?a=1;token=***;b=3&sid=***'], // `;` separates parameters too
    ['/keys?monkey=1&keyword=2&page;x=1', '/keys?monkey=1&keyword=2&page;x=1'],
    ['/s3?token=abc;rest&b=1', '/s3?token=***;***&b=1'], // the rest of a value with a raw `;` in it
    ['/cart;jsessionid=SECRET123/items;v=2?q=1', '/cart;jsessionid=***/items;v=2?q=1'], // path parameters
    ['/cart;JSESSIONID=S', '/cart;JSESSIONID=***'],
    ['/a;b/c', '/a;b/c'],
    ['/a;token=abc;def/b', '/a;token=***;***/b'], // a raw `;` in a path parameter's value too
  ])('%s is logged as %s', (target, logged) => {
    expect(targetForLog(target)).toBe(logged);
  });
});

describe('what the access log keeps of a Host header', () => {
  test.each([
    ['web-8080-prod.example.com', 'web-8080-prod.example.com'],
    ['user:HOSTSECRET@web-8080-prod.example.com', '***@web-8080-prod.example.com'],
    ['a@b@web-8080-prod.example.com:80', '***@web-8080-prod.example.com:80'],
    [undefined, undefined],
  ])('%s is logged as %s', (host, logged) => {
    expect(hostForLog(host)).toBe(logged);
  });
});
