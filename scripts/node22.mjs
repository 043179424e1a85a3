// Runs the test suite (or any command) on Node.js 22, the runtime the instance installs, from a machine
// whose own node is another version. The bundle reaches into Node's internals (runtime/llhttp.ts: the
// HTTP parser binding; runtime/acceptors.ts: listening handles; runtime/unpack.ts: vm), so a Node
// release can break it where Node 20 passes.
//
//   npm run test:node22                      # the whole jest suite on Node 22
//   npm run test:node22 -- test/runtime/bundle.test.ts
//   node scripts/node22.mjs --run npm run bench   # anything else, with Node 22 first on PATH
//
// Node 22 comes from the npm registry's per-platform binary package (node-<os>-<cpu>, the one the `node`
// package installs), kept under node_modules/.cache/node22. NODE22=/path/to/node uses that binary instead.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const VERSION = process.env.NODE22_VERSION ?? '22';

function node22() {
  if (process.env.NODE22) return process.env.NODE22;
  const pkg = `node-${process.platform}-${process.arch}`;
  const dir = path.join(ROOT, 'node_modules', '.cache', 'node22');
  const bin = path.join(dir, 'package', 'bin', 'node');
  if (!fs.existsSync(bin)) {
    fs.mkdirSync(dir, { recursive: true });
    console.error(`fetching ${pkg}@${VERSION} (~50 MB) into ${path.relative(ROOT, dir)}`);
    const tgz = execFileSync('npm', ['pack', `${pkg}@${VERSION}`, '--silent', '--pack-destination', dir], { encoding: 'utf8' }).trim().split('\n').pop();
    execFileSync('tar', ['xzf', path.join(dir, tgz), '-C', dir]);
    fs.rmSync(path.join(dir, tgz));
  }
  return bin;
}

const bin = node22();
const version = execFileSync(bin, ['-v'], { encoding: 'utf8' }).trim();
if (!version.startsWith('v22.')) {
  console.error(`${bin} is ${version}, not Node 22`);
  process.exit(2);
}
const args = process.argv.slice(2);
const run = args[0] === '--run' ? args.slice(1) : ['npx', 'jest', ...args];
console.error(`on Node ${version}: ${run.join(' ')}`);
// Node 22 first on PATH: jest runs on it, and so does every process the tests start (process.execPath).
const env = { ...process.env, PATH: `${path.dirname(bin)}${path.delimiter}${process.env.PATH ?? ''}` };
const r = spawnSync(run[0], run.slice(1), { cwd: ROOT, env, stdio: 'inherit' });
process.exit(r.status ?? 1);
