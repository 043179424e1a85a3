// Prototypes of hot-path changes, measured without touching runtime/: each test/bench/prototypes/NAME.patch
// (a unified diff against runtime/, paths like a/runtime/forward.ts) is applied to a copy of runtime/,
// after the files under test/bench/prototypes/NAME/ (new modules, e.g. NAME/runtime/upstream.ts) are
// copied in, and bundled as scripts/build.mjs bundles the real one. A patch that no longer applies is
// skipped with its reason, since runtime/ keeps moving.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bundleRuntime } from '../../../scripts/build.mjs';
import { BENCH_DIR, ROOT } from './subjects.mjs';

export async function buildPrototypes(dir, say) {
  const pdir = path.join(BENCH_DIR, 'prototypes');
  if (!fs.existsSync(pdir)) return [];
  const only = process.env.BENCH_PROTOTYPE_NAMES ? new Set(process.env.BENCH_PROTOTYPE_NAMES.split(',')) : undefined;
  const out = [];
  for (const f of fs.readdirSync(pdir).filter((f) => f.endsWith('.patch')).sort()) {
    const name = f.replace(/\.patch$/, '');
    if (only && !only.has(name)) continue;
    const work = path.join(dir, `proto-${name}`);
    fs.cpSync(path.join(ROOT, 'runtime'), path.join(work, 'runtime'), { recursive: true });
    if (fs.existsSync(path.join(pdir, name))) fs.cpSync(path.join(pdir, name), work, { recursive: true });
    try {
      execFileSync('patch', ['-p1', '-s', '--no-backup-if-mismatch', '-d', work, '-i', path.join(pdir, f)], { stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      say(`- SKIPPED prototype ${name}: the patch no longer applies to runtime/ (${String(e.stdout ?? '').trim().split('\n')[0]})`);
      continue;
    }
    const bundle = path.join(dir, `karma-${name}.js`);
    await bundleRuntime({
      runtimeDir: path.join(work, 'runtime'),
      outfile: bundle,
      nodePaths: [path.join(ROOT, 'node_modules')],
      tsconfig: path.join(ROOT, 'tsconfig.json'),
    });
    out.push({ name, bundle });
  }
  return out;
}
