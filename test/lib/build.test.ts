/**
 * The bundle is the CDK asset the instances run: its bytes name the asset and go into the user data, so
 * a bundle that differs with no change in the source replaces every instance at the next deploy.
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

jest.setTimeout(120_000);

const ROOT = path.resolve(__dirname, '..', '..');

/** Builds the bundle from the checkout at `root` into a new file; its SHA-256 and its text. */
function build(root: string, dir: string, name: string, cwd = root): { sha: string; text: string } {
  const out = path.join(dir, `${name}.js`);
  const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'build.mjs'), out], { cwd, encoding: 'utf8', timeout: 100_000 });
  expect(r.status).toBe(0);
  const text = fs.readFileSync(out, 'utf8');
  return { sha: createHash('sha256').update(text).digest('hex'), text };
}

test('the same source gives the same bundle, build after build and from any folder, naming no path of the checkout', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-build-'));
  try {
    const builds = [build(ROOT, dir, 'a'), build(ROOT, dir, 'b'), build(ROOT, dir, 'c'), build(ROOT, dir, 'from-root', '/'), build(ROOT, dir, 'from-lib', path.join(ROOT, 'lib'))];
    expect(new Set(builds.map((b) => b.sha)).size).toBe(1);
    // Another checkout (CI's clone, a laptop's) gives the same bytes only if none of this one's path is in them.
    expect(builds[0].text).not.toContain(ROOT.slice(1));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
