// CPU profile of Karma's worker under the small-GET load: `node test/bench/profile.mjs`. Needs no build first: it bundles runtime/ unminified for the run.
// Starts the backend and the bundle with --cpu-prof, drives small GETs with the harness's load
// generator, stops the proxy (the worker writes its profile on exit), and summarises self and
// inclusive time by function, naming the runtime/*.ts module of each bundle line.
//
// Env: PROFILE_SECONDS (default 10), PROFILE_BUNDLE (default: an unminified build of runtime/ made for
//      the run, so that every bundle line names its module; the minified dist/ bundle would not),
//      PROFILE_CONNECTIONS (default 50), PROFILE_INTERVAL_US (sampling interval, default 200),
//      PROFILE_SUBJECT (default karma; alt:node-http etc. profile an alternative for comparison),
//      PROFILE_OUT (default results/profile-latest.json), PROFILE_SCENARIO (small, 1mb, post64k or newconn;
//      default small).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bundleRuntime } from '../../scripts/build.mjs';
import { drive, loadGenerator } from './lib/load.mjs';
import { sleep } from './lib/proc.mjs';
import { BENCH_DIR, startBackend, subjectCatalog } from './lib/subjects.mjs';

const say = (s = '') => process.stdout.write(s + '\n');
const SECONDS = Number(process.env.PROFILE_SECONDS ?? 10);
const CONNECTIONS = Number(process.env.PROFILE_CONNECTIONS ?? 50);
const INTERVAL = Number(process.env.PROFILE_INTERVAL_US ?? 200);
/** What load is profiled: the benchmark's scenarios of the same names. */
const SCENARIOS = {
  small: { title: 'small GET', path: '/small' },
  '1mb': { title: '1 MB responses', path: '/1mb', connections: 10 },
  post64k: { title: 'POST 64 KB', path: '/post', method: 'POST', bodyBytes: 64 * 1024 },
  newconn: { title: 'new connection per request', path: '/small', close: true },
};
const SCENARIO = process.env.PROFILE_SCENARIO ?? 'small';

/** Bundle line → the source module esbuild wrote above it (`// runtime/forward.ts`). */
function moduleMap(bundle) {
  const marks = [];
  const lines = fs.readFileSync(bundle, 'utf8').split('\n');
  lines.forEach((l, i) => {
      const m = /^\/\/ ((?:runtime|node_modules)\/\S+)$/.exec(l);
      if (m) marks.push([i, m[1].replace(/^node_modules\//, '')]);
    });
  const find = (line) => {
    let lo = 0;
    let hi = marks.length - 1;
    let found = '?';
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (marks[mid][0] <= line) {
        found = marks[mid][1];
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  };
  // Anonymous functions are named by the start of their line (`up.on("response", (upRes) => {`).
  return { find, code: (line) => (lines[line] ?? '').trim().slice(0, 48) };
}

function area(mod, fn) {
  if (fn === '(garbage collector)') return 'GC';
  if (fn === '(program)') return 'native (program)';
  if (fn === '(idle)') return 'idle';
  if (mod.startsWith('runtime/')) return mod;
  if (mod.startsWith('prom-client')) return 'prom-client';
  if (mod.startsWith('http-proxy')) return 'http-proxy';
  if (/^node:_http_(server|incoming)/.test(mod)) return 'node:http server side';
  if (/^node:_http_(client|agent)/.test(mod)) return 'node:http client side (ClientRequest, Agent)';
  if (/^node:_http_(outgoing|common)/.test(mod)) return 'node:http outgoing/common';
  if (/^node:(net|stream|internal\/streams)/.test(mod)) return 'node: net and streams';
  if (/^node:internal\/(timers|process\/task_queues)|^node:timers/.test(mod)) return 'node: timers and microtasks';
  if (/^node:(events|internal\/event_target)/.test(mod)) return 'node: events';
  if (mod.startsWith('node:')) return 'node: other';
  return mod || 'native';
}

export function summarise(profile, bundle, window) {
  const modules = moduleMap(bundle);
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const keyOf = new Map();
  const info = new Map();
  for (const n of profile.nodes) {
    const cf = n.callFrame;
    const inBundle = cf.url.endsWith(path.basename(bundle));
    const fn = cf.functionName || (inBundle ? `(anonymous) ${modules.code(cf.lineNumber)}` : '(anonymous)');
    const mod = inBundle ? modules.find(cf.lineNumber) : cf.url.replace(/^file:\/\//, '');
    const key = `${fn} ${mod}:${cf.lineNumber + 1}`;
    keyOf.set(n.id, key);
    if (!info.has(key)) info.set(key, { fn, mod, line: cf.lineNumber + 1, area: area(mod, fn) });
  }
  const self = new Map();
  const incl = new Map();
  let total = 0;
  let idle = 0;
  const { samples, timeDeltas } = profile;
  let at = profile.startTime;
  for (let i = 0; i < samples.length; i++) {
    at += timeDeltas[i];
    // V8 stamps samples with the monotonic clock process.hrtime reads: keep the measured window only.
    if (window && (at < window[0] || at > window[1])) continue;
    const dt = (timeDeltas[i + 1] ?? timeDeltas[i] ?? 0) / 1000; // ms until the next sample
    const key = keyOf.get(samples[i]);
    total += dt;
    if (info.get(key)?.area === 'idle') idle += dt;
    self.set(key, (self.get(key) ?? 0) + dt);
    const seen = new Set();
    for (let id = samples[i]; id !== undefined; id = parent.get(id)) {
      const k = keyOf.get(id);
      if (seen.has(k)) continue;
      seen.add(k);
      incl.set(k, (incl.get(k) ?? 0) + dt);
    }
  }
  const busy = total - idle;
  const pct = (ms) => (100 * ms) / busy;
  const rows = (m) =>
    [...m.entries()]
      .filter(([k]) => info.get(k).area !== 'idle' && !['(root)'].includes(info.get(k).fn))
      .sort((a, b) => b[1] - a[1])
      .map(([k, ms]) => ({ ...info.get(k), ms, pct: pct(ms) }));
  const areas = new Map();
  for (const [k, ms] of self) {
    const a = info.get(k).area;
    if (a === 'idle') continue;
    areas.set(a, (areas.get(a) ?? 0) + ms);
  }
  return {
    busyMs: busy,
    idleMs: idle,
    self: rows(self).slice(0, 40),
    inclusiveOurs: rows(incl).filter((r) => r.mod.startsWith('runtime/')).slice(0, 30),
    inclusiveAll: rows(incl).slice(0, 40),
    areas: [...areas.entries()].sort((a, b) => b[1] - a[1]).map(([a, ms]) => ({ area: a, ms, pct: pct(ms) })),
  };
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-prof-'));
  fs.chmodSync(dir, 0o755);
  const bundle = path.join(dir, 'karma-proxy.js');
  if (process.env.PROFILE_BUNDLE) fs.copyFileSync(process.env.PROFILE_BUNDLE, bundle);
  else await bundleRuntime({ outfile: bundle, minify: false });
  const profDir = path.join(dir, 'prof');
  fs.mkdirSync(profDir);
  const gen = loadGenerator();
  const backend = await startBackend(dir, '0');
  const subjectId = process.env.PROFILE_SUBJECT ?? 'karma';
  const karma = subjectCatalog({ dir, core: '1', backendPort: backend.port, bundle, karmaEnv: {} }).find((s) => s.id === subjectId);
  if (!karma) throw new Error(`no subject ${subjectId}`);
  const inst = await karma.start({}, ['--cpu-prof', `--cpu-prof-dir=${profDir}`, `--cpu-prof-interval=${INTERVAL}`]);
  const sc = SCENARIOS[SCENARIO];
  if (!sc) throw new Error(`PROFILE_SCENARIO must be one of ${Object.keys(SCENARIOS).join(', ')}`);
  const url = `http://127.0.0.1:${inst.port}${sc.path}`;
  const load = { url, connections: process.env.PROFILE_CONNECTIONS ? CONNECTIONS : (sc.connections ?? CONNECTIONS), method: sc.method, bodyBytes: sc.bodyBytes, close: sc.close, dir, core: '0' };
  await drive(gen, { ...load, seconds: 2 });
  const t0 = Number(process.hrtime.bigint() / 1000n);
  const r = await drive(gen, { ...load, seconds: SECONDS });
  const window = [t0, Number(process.hrtime.bigint() / 1000n)];
  await inst.stop();
  await backend.stop();
  await sleep(300);
  // The worker is the process that did the work: its profile has the most busy time.
  const profiles = fs
    .readdirSync(profDir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => {
      const p = JSON.parse(fs.readFileSync(path.join(profDir, f), 'utf8'));
      return { f, p, s: summarise(p, bundle, window) };
    })
    .sort((a, b) => b.s.busyMs - a.s.busyMs);
  if (!profiles.length) throw new Error('no .cpuprofile written');
  const s = profiles[0].s;
  const outDir = path.join(BENCH_DIR, 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const kept = path.join(outDir, `${subjectId.replace(/[^a-z0-9-]/gi, '_')}-worker.cpuprofile`);
  fs.copyFileSync(path.join(profDir, profiles[0].f), kept);

  const f = (x) => x.toFixed(1);
  const md = [];
  md.push(`### CPU profile of ${subjectId}'s worker, ${sc.title} (${Math.round(r.rps)} req/s under the profiler, ${load.connections} connections, ${SECONDS} s)`);
  md.push('');
  const us = (s.busyMs * 1000) / r.requests;
  md.push(`Busy ${Math.round(s.busyMs)} ms, idle ${Math.round(s.idleMs)} ms over the ${SECONDS} s measured (start-up excluded): ${us.toFixed(1)} µs of CPU per request under the profiler. Percentages are of busy time; µs are per request.`);
  md.push('');
  md.push('| where (self time) | % | µs/request |');
  md.push('|---|--:|--:|');
  for (const a of s.areas.slice(0, 16)) md.push(`| ${a.area} | ${f(a.pct)} | ${f((a.pct * us) / 100)} |`);
  md.push('');
  md.push('| top self time: function | module:line | % | µs/request |');
  md.push('|---|---|--:|--:|');
  for (const x of s.self.slice(0, 25)) md.push(`| ${x.fn} | ${x.mod}:${x.line} | ${f(x.pct)} | ${f((x.pct * us) / 100)} |`);
  md.push('');
  md.push('| inclusive time of our functions | module:line | % | µs/request |');
  md.push('|---|---|--:|--:|');
  for (const x of s.inclusiveOurs.slice(0, 25)) md.push(`| ${x.fn} | ${x.mod}:${x.line} | ${f(x.pct)} | ${f((x.pct * us) / 100)} |`);
  md.push('');
  const text = md.join('\n');
  say(text);
  const summary = process.env.PROFILE_OUT ?? path.join(outDir, 'profile-latest.json');
  fs.writeFileSync(summary, JSON.stringify({ date: new Date().toISOString(), subject: subjectId, load: r, usPerRequest: us, ...s, markdown: text }, null, 2) + '\n');
  say(`Profile: ${path.relative(process.cwd(), kept)} (open in Chrome DevTools), summary in ${path.relative(process.cwd(), summary)}`);
  fs.rmSync(dir, { recursive: true, force: true });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => {
    say(`profile failed: ${e.stack ?? e}`);
    process.exit(1);
  });
}
