/**
 * `npx cdk synth` as a user runs it on a fresh clone: no context, no network, no dist/ yet. It runs in
 * a copy of the project (sharing node_modules) so that its bundle build does not rewrite the dist/
 * that other tests read, and in a network namespace of its own where the machine allows one.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');
const TIMEOUT_MS = 120_000;

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-proxy-synth-'));
  for (const entry of ['bin', 'lib', 'runtime', 'scripts', 'cdk.json', 'package.json', 'tsconfig.json']) {
    fs.cpSync(path.join(ROOT, entry), path.join(dir, entry), { recursive: true });
  }
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** An environment with nothing of the developer's: no AWS credentials or profile, no KARMA_* settings. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(AWS_|KARMA_|CDK_)/.test(k) || /proxy$/i.test(k)) continue;
    env[k] = v;
  }
  return {
    ...env,
    // If anything still tried the network, it would fail at once rather than hang.
    HTTPS_PROXY: 'http://127.0.0.1:9', HTTP_PROXY: 'http://127.0.0.1:9', NO_PROXY: '',
    AWS_EC2_METADATA_DISABLED: 'true',
    ...extra,
  };
}

const isolated = spawnSync('unshare', ['-n', 'true']).status === 0;

function synth(args: string[], env: NodeJS.ProcessEnv): { status: number | null; stdout: string; stderr: string; ms: number } {
  const start = Date.now();
  const cmd = ['npx', 'cdk', 'synth', ...args];
  const r = isolated
    ? spawnSync('unshare', ['-n', ...cmd], { cwd: dir, env, encoding: 'utf8', timeout: TIMEOUT_MS })
    : spawnSync(cmd[0], cmd.slice(1), { cwd: dir, env, encoding: 'utf8', timeout: TIMEOUT_MS });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', ms: Date.now() - start };
}

test('with no context at all it succeeds offline, with example values said in a warning', () => {
  expect(fs.existsSync(path.join(dir, 'dist'))).toBe(false);
  const r = synth([], cleanEnv());
  if (r.status !== 0) throw new Error(`cdk synth failed (${r.status}):\n${r.stderr}`);
  expect(r.ms).toBeLessThan(TIMEOUT_MS);

  const template = JSON.parse(fs.readFileSync(path.join(dir, 'cdk.out', 'KarmaProxy.template.json'), 'utf8'));
  expect(Object.values(template.Resources).map((res) => (res as { Type: string }).Type))
    .toEqual(expect.arrayContaining(['AWS::AutoScaling::AutoScalingGroup', 'AWS::Route53::RecordSet', 'AWS::ElastiCache::ReplicationGroup']));
  // The app built the bundle first.
  expect(fs.existsSync(path.join(dir, 'dist', 'karma-proxy.js'))).toBe(true);
  // The warning and the cost table go to stderr; stdout is the template alone.
  expect(r.stderr).toMatch(/warning: no domain and no hostedZoneId given: synthesizing with example values/);
  expect(r.stderr).toMatch(/Total \(Karma Proxy\)\s+\$19\.94/);
  expect(r.stdout).toMatch(/^Description: /);
  expect(template.Resources).not.toHaveProperty('CDKMetadata');
}, TIMEOUT_MS + 10_000);

test('context keys and KARMA_* env vars reach the template', () => {
  const out = path.join(dir, 'out-context');
  const r = synth(
    ['-o', out, '-c', 'domain=apps.acme.io', '-c', 'hostedZoneId=Z0ACME', '-c', 'hostedZoneName=acme.io', '-c', 'redis=false',
      '-c', 'instanceTpye=c7g.large'],
    cleanEnv({ KARMA_SPOT: 'true', KARMA_MAX_CAPACITY: '2', KARMA_INSTANCETYPE: 'c7g.large' }),
  );
  if (r.status !== 0) throw new Error(`cdk synth failed (${r.status}):\n${r.stderr}`);
  expect(r.stderr).not.toContain('example values');
  // Typos are ignored, as they must be, but not without a word.
  expect(r.stderr).toContain("warning: context 'instanceTpye' is not a setting of this app and is ignored; did you mean instanceType?");
  expect(r.stderr).toContain('warning: KARMA_INSTANCETYPE is not a setting of this app and is ignored; did you mean KARMA_INSTANCE_TYPE?');
  const template = JSON.parse(fs.readFileSync(path.join(out, 'KarmaProxy.template.json'), 'utf8'));
  const types = Object.values(template.Resources).map((res) => (res as { Type: string }).Type);
  expect(types).not.toContain('AWS::ElastiCache::ReplicationGroup');
  expect(types.filter((t) => t === 'AWS::EC2::EIP')).toHaveLength(2);
  const record = Object.values(template.Resources).find((res) => (res as { Type: string }).Type === 'AWS::Route53::RecordSet') as
    { Properties: { Name: string; HostedZoneId: string } };
  expect(record.Properties).toMatchObject({ Name: '*.apps.acme.io.', HostedZoneId: 'Z0ACME' });
  expect(JSON.stringify(template)).toContain('"MarketType":"spot"');
}, TIMEOUT_MS + 10_000);

test("bad settings of the app's and of the construct's are named in one error, and the synth fails", () => {
  const out = path.join(dir, 'out-bad');
  const r = synth(
    ['-o', out, '-c', 'domain=apps.acme.io', '-c', 'spot=maybe', '-c', 'minCapacity=3', '-c', 'maxCapacity=2', '-c', 'clusters=',
      '-c', 'proxyEnv=WORKERS=abc'],
    cleanEnv(),
  );
  expect(r.status).not.toBe(0);
  const message = r.stderr.slice(r.stderr.indexOf('karma-proxy: Invalid Karma Proxy settings:'));
  expect(message.split('\n').slice(0, 4)).toEqual([
    'karma-proxy: Invalid Karma Proxy settings:',
    "  - context 'spot' must be true or false (got 'maybe')",
    "  - context 'clusters' is empty: leave it out for the default (any cluster of the account), or name the clusters to serve",
    '  - minCapacity (3) must not exceed maxCapacity (2)',
  ]);
  expect(message).toContain('\n  - the proxy would refuse this setting at start (props and environment become its env vars): WORKERS must be');
  expect(fs.existsSync(path.join(out, 'KarmaProxy.template.json'))).toBe(false);
}, TIMEOUT_MS + 10_000);
