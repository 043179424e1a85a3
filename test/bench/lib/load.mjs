// Load generators: wrk when on PATH (C, one thread, microsecond latencies), else autocannon from the
// project's devDependencies (Node; its latency histogram counts whole milliseconds). For the latency
// scenarios, pace.c (an open-loop generator at a fixed rate, built here with the system's C compiler).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { onPath, spawnPinned } from './proc.mjs';
import { ROOT } from './subjects.mjs';

const wrkBin = onPath('wrk');
const autocannonBin = path.join(ROOT, 'node_modules', 'autocannon', 'autocannon.js');

/**
 * { name, bin, usPrecision }, and for autocannon `why` it drives the load: asked for, or no wrk; and
 * `instead` what to do to get wrk's microsecond latencies.
 */
export function loadGenerator() {
  const asked = process.env.BENCH_LOADGEN === 'autocannon';
  if (wrkBin && !asked) return { name: 'wrk', bin: wrkBin, usPrecision: true };
  if (fs.existsSync(autocannonBin)) {
    return asked
      ? { name: 'autocannon', bin: autocannonBin, usPrecision: false, why: `asked for by BENCH_LOADGEN=autocannon${wrkBin ? ', though wrk is installed' : ''}`, instead: wrkBin ? 'run without BENCH_LOADGEN=autocannon' : 'install wrk, and run without BENCH_LOADGEN=autocannon' }
      : { name: 'autocannon', bin: autocannonBin, usPrecision: false, why: 'wrk not found', instead: 'install wrk' };
  }
  return undefined;
}

/**
 * Builds pace.c into `dir` with cc (gcc, clang): { bin } or { why } when there is no compiler or the
 * build fails. wrk offers no rate, only a wait in whole milliseconds after each answer, which sends its
 * connections' requests in clumps on millisecond ticks; pace sends each request when it is due.
 */
export function buildPacer(dir) {
  const cc = onPath('cc') ?? onPath('gcc') ?? onPath('clang');
  if (!cc) return { why: 'no C compiler (cc) to build test/bench/lib/pace.c' };
  const bin = path.join(dir, 'pace');
  try {
    execFileSync(cc, ['-O2', '-o', bin, path.join(ROOT, 'test', 'bench', 'lib', 'pace.c'), '-lm'], { stdio: ['ignore', 'ignore', 'pipe'] });
    return { bin, name: 'pace (test/bench/lib/pace.c, open loop)' };
  } catch (e) {
    return { why: `building test/bench/lib/pace.c failed: ${String(e.stderr ?? e.message).trim().split('\n')[0]}` };
  }
}

function run(core, cmd, args) {
  return new Promise((resolve, reject) => {
    const child = spawnPinned(core, cmd, args);
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${path.basename(cmd)} exited ${code}: ${err.trim().slice(-500)}`))));
  });
}

const luaString = (s) => JSON.stringify(s); // a JSON string literal is a valid Lua string literal here

/**
 * One load run. opts: { url, connections, seconds, method, bodyBytes, close, delayMs, randomDelay, rate, dir,
 * core, pacer, arrivals, warmupSeconds }. With pacer (from buildPacer), GETs are sent at `rate` per second by
 * pace, evenly spaced or with `arrivals: 'poisson'` at exponentially distributed intervals, for
 * warmupSeconds (default 0) not counted and then `seconds` counted, on the same connections. With randomDelay, each wait after an answer is drawn from an exponential distribution of mean
 * delayMs (wrk only; autocannon's -R rate is used otherwise).
 * Returns { requests, seconds, rps, bytes, p50, p90, p99, p999, max (ms), errors, non2xx }.
 */
export async function drive(gen, opts) {
  if (opts.pacer) {
    // Open loop: opts.rate requests a second over opts.connections, evenly spaced or (poisson) at random.
    const u = new URL(opts.url);
    const out = await run(opts.core, opts.pacer.bin, [u.hostname, u.port, u.pathname, String(opts.connections), String(opts.rate), String(opts.seconds), String(opts.warmupSeconds ?? 0), opts.arrivals ?? 'uniform']);
    const j = JSON.parse(out.trim().split('\n').pop());
    return { ...j, errorDetail: { errors: j.errors } };
  }
  if (gen.name === 'wrk') {
    const script = path.join(opts.dir, `wrk-${process.pid}-${Math.random().toString(36).slice(2)}.lua`);
    const lines = [];
    if (opts.method && opts.method !== 'GET') lines.push(`wrk.method = ${luaString(opts.method)}`);
    if (opts.bodyBytes) {
      lines.push(`wrk.body = string.rep("x", ${opts.bodyBytes})`);
      lines.push(`wrk.headers["Content-Type"] = "application/octet-stream"`);
    }
    if (opts.close) lines.push(`wrk.headers["Connection"] = "close"`);
    if (opts.delayMs && opts.randomDelay) {
      lines.push(`math.randomseed(${Date.now() % 1e9})`, `function delay() return math.floor(-${opts.delayMs} * math.log(1 - math.random()) + 0.5) end`);
    } else if (opts.delayMs) lines.push(`function delay() return ${Math.max(1, Math.round(opts.delayMs))} end`);
    lines.push(
      'done = function(s, l, r)',
      '  io.write(string.format("\\nBENCHJSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,\\"p50\\":%d,\\"p90\\":%d,\\"p99\\":%d,\\"p999\\":%d,\\"max\\":%d}\\n",',
      '    s.requests, s.duration, s.bytes, s.errors.connect, s.errors.read, s.errors.write, s.errors.status, s.errors.timeout,',
      '    l:percentile(50), l:percentile(90), l:percentile(99), l:percentile(99.9), l.max))',
      'end',
    );
    fs.writeFileSync(script, lines.join('\n') + '\n');
    const out = await run(opts.core, gen.bin, ['-t1', `-c${opts.connections}`, `-d${opts.seconds}s`, '--timeout', '10s', '-s', script, opts.url]);
    fs.rmSync(script, { force: true });
    const m = /BENCHJSON (\{.*\})/.exec(out);
    if (!m) throw new Error(`wrk printed no result: ${out.slice(-300)}`);
    const j = JSON.parse(m[1]);
    const seconds = j.duration_us / 1e6;
    // wrk counts a socket closed by a Connection: close exchange as neither error nor request loss.
    const errors = j.connect + j.read + j.write + j.timeout;
    return {
      requests: j.requests,
      seconds,
      rps: j.requests / seconds,
      bytes: j.bytes,
      p50: j.p50 / 1000,
      p90: j.p90 / 1000,
      p99: j.p99 / 1000,
      p999: j.p999 / 1000,
      max: j.max / 1000,
      errors,
      errorDetail: { connect: j.connect, read: j.read, write: j.write, timeout: j.timeout },
      non2xx: j.status,
    };
  }
  const args = ['-j', '-c', String(opts.connections), '-d', String(opts.seconds), '-t', '10'];
  if (opts.method && opts.method !== 'GET') args.push('-m', opts.method);
  if (opts.bodyBytes) {
    const file = path.join(opts.dir, `body-${opts.bodyBytes}`);
    if (!fs.existsSync(file)) fs.writeFileSync(file, Buffer.alloc(opts.bodyBytes, 'x'));
    args.push('-i', file, '-H', 'Content-Type=application/octet-stream');
  }
  if (opts.close) args.push('-H', 'Connection=close');
  if (opts.rate) args.push('-R', String(Math.round(opts.rate)));
  args.push(opts.url);
  const out = await run(opts.core, process.execPath, [gen.bin, ...args]);
  const j = JSON.parse(out.slice(out.indexOf('{')));
  return {
    requests: j.requests.total,
    seconds: j.duration,
    rps: j.requests.total / j.duration,
    bytes: j.throughput.total,
    p50: j.latency.p50,
    p90: j.latency.p90,
    p99: j.latency.p99,
    p999: j.latency.p99_9,
    max: j.latency.max,
    errors: j.errors + j.timeouts,
    errorDetail: { errors: j.errors, timeouts: j.timeouts },
    non2xx: j.non2xx,
  };
}
