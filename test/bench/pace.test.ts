/**
 * pace.c, the benchmark's open-loop load generator (test/bench/lib/pace.c): requests leave when they
 * are due, latency counts from then, and a server's close or error answer is counted, not fatal.
 * Built here with the system's C compiler, as `npm run bench` builds it.
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

const compiler = ['cc', 'gcc', 'clang'].find((c) => {
  try {
    execFileSync(c, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
});

interface Result {
  requests: number;
  bytes: number;
  errors: number;
  non2xx: number;
  rps: number;
  p50: number;
  p99: number;
  max: number;
}

interface Backend {
  port: number;
  arrivals: number[];
  /** Connections accepted. */
  accepted(): number;
  close(): Promise<void>;
}

/**
 * A loopback HTTP/1.1 server that answers each request after `delayMs` (the first `slowFirst` after
 * `slowMs`), closing after every `closeEvery`th.
 */
function backend(opts: { delayMs?: number; status?: number; closeEvery?: number; slowFirst?: number; slowMs?: number } = {}): Promise<Backend> {
  const arrivals: number[] = [];
  const sockets = new Set<net.Socket>();
  let answered = 0;
  let accepted = 0;
  const server = net.createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = '';
    let queue = Promise.resolve();
    socket.on('data', (d) => {
      buf += d.toString('latin1');
      let end;
      while ((end = buf.indexOf('\r\n\r\n')) >= 0) {
        buf = buf.slice(end + 4);
        arrivals.push(performance.now());
        const delayMs = arrivals.length <= (opts.slowFirst ?? 0) ? opts.slowMs : opts.delayMs;
        queue = queue.then(async () => {
          if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
          const close = opts.closeEvery !== undefined && ++answered % opts.closeEvery === 0;
          const body = 'ok\n';
          socket.write(`HTTP/1.1 ${opts.status ?? 200} X\r\nContent-Length: ${body.length}\r\n${close ? 'Connection: close\r\n' : ''}\r\n${body}`);
          if (close) socket.end();
        });
      }
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: (server.address() as net.AddressInfo).port,
        arrivals,
        accepted: () => accepted,
        close: () =>
          new Promise((done) => {
            for (const s of sockets) s.destroy();
            server.close(() => done());
          }),
      }),
    ),
  );
}

const d = compiler ? describe : describe.skip;

d('pace, the open-loop load generator', () => {
  let dir: string;
  let bin: string;
  let server: Backend | undefined;

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pace-test-'));
    bin = path.join(dir, 'pace');
    execFileSync(compiler!, ['-O2', '-Wall', '-Werror', '-o', bin, path.join(__dirname, 'lib', 'pace.c'), '-lm']);
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  /**
   * Runs pace; `paused` stops it (SIGSTOP) over [from, to) ms after its start, as a busy machine might;
   * `warmup` seconds are sent before the `seconds` counted.
   */
  const pace = (port: number, connections: number, rate: number, seconds: number, arrivals = 'uniform', trace?: string, paused?: [number, number], warmup = 0): Promise<Result> =>
    new Promise((resolve, reject) => {
      const child = spawn(bin, ['127.0.0.1', String(port), '/small', String(connections), String(rate), String(seconds), String(warmup), arrivals], {
        env: { ...process.env, ...(trace ? { PACE_TRACE: trace } : {}) },
      });
      let out = '';
      let err = '';
      const timer = setTimeout(() => child.kill('SIGKILL'), (warmup + seconds + 10) * 1000);
      const pauses = paused ? [setTimeout(() => child.kill('SIGSTOP'), paused[0]), setTimeout(() => child.kill('SIGCONT'), paused[1])] : [];
      child.stdout.on('data', (c) => (out += c));
      child.stderr.on('data', (c) => (err += c));
      child.on('exit', (code) => {
        clearTimeout(timer);
        for (const t of pauses) clearTimeout(t);
        if (code === 0) resolve(JSON.parse(out) as Result);
        else reject(new Error(`pace exited ${code}: ${err}`));
      });
    });

  test('sends the rate asked for, spread over time rather than in clumps', async () => {
    server = await backend();
    const trace = path.join(dir, 'sent.txt');
    const r = await pace(server.port, 4, 200, 1, 'uniform', trace);
    expect(r).toMatchObject({ requests: 200, errors: 0, non2xx: 0 });
    expect(r.bytes).toBe(200 * 'HTTP/1.1 200 X\r\nContent-Length: 3\r\n\r\nok\n'.length);
    expect(server.arrivals).toHaveLength(200);
    // Evenly spaced at 200/s is a request every 5 ms; wrk's whole-millisecond waits would send the four
    // connections' requests together. Judged on pace's own send times (PACE_TRACE, µs), not on when a
    // server inside a busy test run got round to reading them. Loose bounds: this checks the spacing,
    // not the machine's timing.
    const sent = fs.readFileSync(trace, 'utf8').trim().split('\n').map(Number);
    expect(sent).toHaveLength(200);
    const gaps = sent.slice(1).map((t, i) => (t - sent[i]) / 1000);
    const median = [...gaps].sort((a, b) => a - b)[Math.floor(gaps.length / 2)];
    expect(median).toBeGreaterThan(3);
    expect(median).toBeLessThan(7);
    expect(gaps.filter((g) => g < 1).length).toBeLessThan(gaps.length / 4);
    expect(sent[sent.length - 1] / 1e6).toBeGreaterThan(0.9);
  });

  test('still sends the requests due before the end when it wakes up after it (a stalled machine), and counts their wait', async () => {
    server = await backend();
    // Stopped from 0.8 s to 1.3 s of a 1 s run at 100/s: the ~20 requests due in between go when it wakes.
    const r = await pace(server.port, 2, 100, 1, 'uniform', undefined, [800, 1300]);
    expect(r).toMatchObject({ requests: 100, errors: 0 });
    expect(server.arrivals).toHaveLength(100);
    expect(r.max).toBeGreaterThan(300);
  });

  test('counts latency from when a request was due, so a slow server shows its queue', async () => {
    // One connection, a request due every 25 ms, answers taking 50 ms: a closed-loop client would
    // report ~50 ms for every request; the later ones here waited for the earlier ones.
    server = await backend({ delayMs: 50 });
    const r = await pace(server.port, 1, 40, 1);
    expect(r.requests).toBe(40);
    expect(r.p50).toBeGreaterThan(200);
    expect(r.max).toBeGreaterThan(600);
  });

  test('warms up on the connections it measures, counting none of the warm-up', async () => {
    // The first two answers take 300 ms, and the requests due meanwhile wait for them: all within the
    // 0.6 s warm-up, so the 0.5 s counted see none of it. The harness relies on this to measure a load,
    // not the opening of the connections that carry it.
    server = await backend({ slowFirst: 2, slowMs: 300 });
    const r = await pace(server.port, 2, 40, 0.5, 'uniform', undefined, undefined, 0.6);
    expect(r).toMatchObject({ requests: 20, errors: 0 });
    expect(server.arrivals).toHaveLength(44);
    expect(server.accepted()).toBe(2);
    expect(r.max).toBeLessThan(150);
  });

  test('opens a new connection when the server closes one, losing no request', async () => {
    server = await backend({ closeEvery: 3 });
    const r = await pace(server.port, 2, 100, 1, 'poisson');
    expect(r.errors).toBe(0);
    expect(r.requests).toBeGreaterThan(50);
  });

  test('counts answers other than 2xx', async () => {
    server = await backend({ status: 503 });
    const r = await pace(server.port, 2, 50, 1);
    expect(r).toMatchObject({ requests: 50, non2xx: 50, errors: 0 });
  });
});
