/**
 * The boot script and the files it writes are checked by the tools that will read them: bash parses
 * the script, systemd verifies the unit (where systemd-analyze exists), and the runtime's own table of
 * env var names covers every key the construct writes.
 */
import { execFile, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { App, Duration, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { KarmaProxy, type KarmaProxyProps } from '../../lib';
import { INSTANCE_PATHS, SWAP_DEFAULTS, type BootstrapOptions, renderBootstrap, renderEnvFile, renderLivenessScript, renderLivenessUnits, renderSwapSetup, renderUnit } from '../../lib/user-data';
import { ENV_NAMES } from '../../runtime/config';
import { heredocBody, makeStack, parseEnvFile, userDataText } from './helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-proxy-user-data-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function bashSyntax(script: string, name: string): { status: number | null; stderr: string } {
  const file = path.join(tmp, `${name}.sh`);
  fs.writeFileSync(file, script);
  const r = spawnSync('bash', ['-n', file], { encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
}

const configs = {
  default: makeStack({}).stack,
  'redis false, spot, every runtime setting': makeStack({
    redis: false,
    spot: true,
    clusters: ['prod'],
    ports: [80, '8000-8100'],
    healthCheck: { path: '/healthz?full=1', interval: Duration.seconds(10), timeout: Duration.seconds(3) },
    // Values that shell and systemd quoting must survive.
    environment: { LOG_CONNECTIONS: 'true', TAG_VALUE: `it's "quoted" $HOME \`x\` \\ end`, HEALTH_CHECK_MATCHER: '200,204' },
  }).stack,
};

describe.each(Object.entries(configs))('%s', (name, stack) => {
  const script = userDataText(Template.fromStack(stack));

  test('the rendered user data passes bash -n', () => {
    expect(bashSyntax(script, name.replace(/\W+/g, '-'))).toEqual({ status: 0, stderr: '' });
  });

  test('the env file carries exactly the construct\'s runtime settings, readable by root alone', () => {
    const env = parseEnvFile(heredocBody(script, 'KARMA_PROXY_ENV'));
    expect(Object.keys(env).sort()).toEqual(Object.keys(stack.proxy.runtimeEnvironment).sort());
    // Made empty with its mode before it is written: never readable by others, not even for a moment.
    expect(script).toContain(`install -m 0600 /dev/null ${INSTANCE_PATHS.envFile}\ncat > ${INSTANCE_PATHS.envFile} <<'KARMA_PROXY_ENV'`);
  });

  test('every key the construct writes is a runtime env var (runtime/config.ts)', () => {
    const unknown = Object.keys(stack.proxy.runtimeEnvironment).filter((k) => !ENV_NAMES.includes(k));
    expect(unknown).toEqual([]);
  });

  test('no secret in the user data', () => {
    expect(script).not.toMatch(/password|AUTH_TOKEN=|rediss:\/\/[^\s:]*@/i);
  });
});

test('every setting the props can write is a runtime env var', () => {
  const common = {
    domain: 'apps.example.com', discoveryInterval: Duration.seconds(5), shutdownTimeout: Duration.seconds(10), redis: true,
    healthCheck: { path: '/', interval: Duration.seconds(10), timeout: Duration.seconds(2), healthyThreshold: 2, unhealthyThreshold: 2, healthyHttpCodes: '200' },
  };
  // Each mode with the settings of its own (others are refused in it).
  const byMode: KarmaProxyProps[] = [
    { discovery: 'ecs', clusters: ['prod'], ports: [80] },
    { discovery: 'asg', asgName: 'a', targetPort: 8080 },
    { discovery: 'tag', tagName: 'b', tagValue: 'c', targetPort: 8080 },
    // A static pool is not discovered: no cache to point it at.
    { discovery: 'static', staticTargets: ['10.0.0.1:80'], redis: false },
  ];
  const written = new Set<string>();
  for (const props of byMode) {
    const proxy = new KarmaProxy(new Stack(new App(), 'Test'), 'Proxy', { ...common, ...props });
    for (const k of Object.keys(proxy.runtimeEnvironment)) written.add(k);
  }
  expect(written.size).toBeGreaterThanOrEqual(20);
  expect([...written].filter((k) => !ENV_NAMES.includes(k))).toEqual([]);
  for (const k of ['ALLOWED_CLUSTERS', 'ASG_NAME', 'TAG_NAME', 'TAG_VALUE', 'TARGET_PORT', 'STATIC_TARGETS']) expect(written).toContain(k);
});

test('awkward values reach the runtime intact through systemd quoting', () => {
  const text = renderEnvFile({ A: 'plain', B: `it's "quoted" $HOME \`x\` \\ end`, C: 'a b', D: '' });
  expect(text).toBe([
    'A=plain',
    'B="it\'s \\"quoted\\" \\$HOME \\`x\\` \\\\ end"',
    'C="a b"',
    'D=',
    '',
  ].join('\n'));
});

test('a here-document body that would end it early is refused', () => {
  expect(() => renderBootstrap({
    stackName: 's', signalResource: 'r', region: 'r', bundleUrl: 's3://b/k', bundleSha256: 'ab'.repeat(32), addressTagKey: 'k', addressTagValue: 'v', slotTagKey: 's', addressSlots: 2,
    healthUrl: 'http://127.0.0.1:1/healthz', healthWaitSeconds: 1, addressWaitSeconds: 1,
    envFile: 'A=1\nKARMA_PROXY_ENV\n', unit: renderUnit({ timeoutStopSec: 45, limitNoFile: 65536 }),
  })).toThrow('contains the line KARMA_PROXY_ENV');
});

/** What renderBootstrap is given in the boot tests below, unless a test says otherwise. */
const BOOT: BootstrapOptions = {
  stackName: 'Stack', signalResource: 'ProxyGroup', region: 'eu-west-1', bundleUrl: 's3://b/k', bundleSha256: 'ab'.repeat(32),
  addressTagKey: 'karma-proxy:pool', addressTagValue: 'Stack.c8abc', slotTagKey: 'karma-proxy:slot', addressSlots: 2,
  healthUrl: 'http://127.0.0.1:1/healthz', healthWaitSeconds: 1, addressWaitSeconds: 1,
  envFile: 'A=1\n', unit: renderUnit({ timeoutStopSec: 45, limitNoFile: 65536 }),
};

/**
 * A boot script run for real by bash, with stand-ins on PATH for what the instance has (each records how
 * it was called), the instance's directories under a temporary root, and a host big enough to need no
 * swap (the tests may run as root).
 */
function bootHarness() {
  const bin = fs.mkdtempSync(path.join(tmp, 'bin-'));
  const calls = path.join(bin, 'calls');
  const meminfo = path.join(bin, 'meminfo');
  fs.writeFileSync(meminfo, 'MemTotal:       16384000 kB\nSwapTotal:             0 kB\n');
  fs.writeFileSync(path.join(bin, 'node-22'), '', { mode: 0o755 });
  const root = fs.mkdtempSync(path.join(tmp, 'root-'));
  fs.mkdirSync(path.join(root, '/etc/systemd/system'), { recursive: true });
  return {
    bin,
    /** A command that records its call, runs `body`, and exits with `rc`. */
    stub(name: string, rc: number, body = ''): void {
      fs.writeFileSync(path.join(bin, name), `#!/bin/bash\necho "${name} $*" >> ${calls}\n${body}exit ${rc}\n`, { mode: 0o755 });
    },
    /** The metadata service (IMDSv2) as curl reaches it: a token, then the instance's ID; anything else answers. */
    imds(): void {
      fs.writeFileSync(path.join(bin, 'curl'), '#!/bin/bash\ncase "$*" in *api/token*) echo tok;; *instance-id*) echo i-0123456789abcdef0;; esac\nexit 0\n', { mode: 0o755 });
    },
    /** Writes the script (BOOT with `options`, then `edit`) and runs it. */
    boot(name: string, options: Partial<BootstrapOptions> = {}, edit = (text: string): string => text) {
      let text = renderBootstrap({ ...BOOT, ...options }).replaceAll(SWAP_DEFAULTS.meminfo, meminfo).replaceAll('/usr/bin/node-22', path.join(bin, 'node-22'));
      for (const dir of ['/opt/karma-proxy', '/etc/karma-proxy', '/etc/systemd/system']) text = text.replaceAll(dir, path.join(root, dir));
      const file = path.join(tmp, `${name}.sh`);
      fs.writeFileSync(file, edit(text));
      return spawnSync('bash', [file], { encoding: 'utf8', env: { PATH: `${bin}:/usr/bin:/bin` }, timeout: 10_000 });
    },
    /** The stand-ins' calls so far, one line each; forget() starts again. */
    calls: (): string[] => fs.readFileSync(calls, 'utf8').trim().split('\n'),
    forget: (): void => fs.rmSync(calls, { force: true }),
  };
}

const SIGNALLED_FAILURE = 'cfn-signal -e 1 --stack Stack --resource ProxyGroup --region eu-west-1';

test('a boot that fails signals failure and powers the instance off, so that the group replaces it', () => {
  // dnf fails for good.
  const h = bootHarness();
  h.stub('dnf', 1);
  for (const name of ['sleep', 'cfn-signal', 'shutdown']) h.stub(name, 0);
  expect(h.boot('failing-boot').status).toBe(1);
  expect(h.calls().filter((l) => l.startsWith('dnf'))).toHaveLength(5);
  expect(h.calls().slice(-2)).toEqual([SIGNALLED_FAILURE, 'shutdown -h +1']);
});

test('a boot whose dnf failed, so that there is no cfn-signal, signals failure through the AWS CLI', () => {
  const h = bootHarness();
  h.stub('dnf', 1);
  for (const name of ['sleep', 'shutdown', 'aws']) h.stub(name, 0);
  h.imds();
  // No cfn-signal anywhere: not on PATH, and not where aws-cfn-bootstrap would have put it.
  const r = h.boot('no-cfn-signal-boot', {}, (text) => text.replaceAll('/opt/aws/bin/cfn-signal', path.join(h.bin, 'missing-cfn-signal')));
  expect(r.status).toBe(1);
  expect(h.calls().slice(-2)).toEqual([
    'aws cloudformation signal-resource --region eu-west-1 --stack-name Stack --logical-resource-id ProxyGroup ' +
      '--unique-id i-0123456789abcdef0 --status FAILURE',
    'shutdown -h +1',
  ]);
});

test('a downloaded bundle that is not the one synth hashed fails the boot', () => {
  const h = bootHarness();
  for (const name of ['dnf', 'cfn-signal', 'shutdown', 'systemctl']) h.stub(name, 0);
  // What S3 hands over: not the bundle synth saw (it is written to the last argument, the destination).
  h.stub('aws', 0, 'echo tampered > "${@: -1}"\n');
  const bundleSha256 = crypto.createHash('sha256').update('the real bundle\n').digest('hex');
  const r = h.boot('tampered-boot', { bundleSha256 });
  expect(r.status).toBe(1);
  expect(r.stderr).toContain('the bundle does not match its SHA-256');
  expect(h.calls().some((l) => l.startsWith('systemctl'))).toBe(false); // never started
  expect(h.calls().slice(-2)).toEqual([SIGNALLED_FAILURE, 'shutdown -h +1']);
  // The same boot with the real bundle gets past the check (and on to the unit).
  h.stub('aws', 0, "printf 'the real bundle\\n' > \"${@: -1}\"\n");
  h.forget();
  expect(h.boot('untampered-boot', { bundleSha256 }).stderr).not.toContain('does not match');
  expect(h.calls()).toContain('systemctl daemon-reload');
});

test('a boot claims a free address of its own slots only (1 to maxCapacity), then signals success', () => {
  // The proxy is healthy at once, and EC2 lists two free addresses.
  const h = bootHarness();
  for (const name of ['dnf', 'cfn-signal', 'shutdown', 'systemctl', 'sleep']) h.stub(name, 0);
  h.stub('aws', 0, [
    'case "$1 $2" in',
    '  "s3 cp") printf \'bundle\\n\' > "${@: -1}";;',
    '  "ec2 describe-addresses") if [[ "$*" == *instance-id* ]]; then echo None; else echo "eipalloc-0a eipalloc-0b"; fi;;',
    'esac',
    '',
  ].join('\n'));
  h.imds();
  const r = h.boot('claiming-boot', { bundleSha256: crypto.createHash('sha256').update('bundle\n').digest('hex'), addressWaitSeconds: 5 });
  expect(r.stderr).toContain('claimed eipalloc-0');
  expect(r.status).toBe(0);
  const lines = h.calls();
  // The free addresses asked for are this fleet's, of slots 1 and 2: not the address of a slot that a lower
  // maxCapacity is removing, which CloudFormation could not release while an instance held it.
  expect(lines).toContain('aws ec2 describe-addresses --region eu-west-1 --output text --filters ' +
    'Name=tag:karma-proxy:pool,Values=Stack.c8abc Name=tag:karma-proxy:slot,Values=1,2 --query Addresses[?AssociationId==null].AllocationId');
  expect(lines.find((l) => l.startsWith('aws ec2 associate-address'))).toMatch(
    /^aws ec2 associate-address --region eu-west-1 --instance-id i-0123456789abcdef0 --allocation-id eipalloc-0[ab] --no-allow-reassociation/);
  expect(lines[lines.length - 1]).toBe('cfn-signal -e 0 --stack Stack --resource ProxyGroup --region eu-west-1');
});

describe('swap on a small instance', () => {
  // The swap section alone, on files in a temporary directory, with mkswap, swapon and sysctl stood in for.
  const root = fs.mkdtempSync(path.join(tmp, 'swap-'));
  const bin = path.join(root, 'bin');
  fs.mkdirSync(bin);
  const calls = path.join(root, 'calls');
  for (const name of ['mkswap', 'swapon', 'sysctl']) {
    fs.writeFileSync(path.join(bin, name), `#!/bin/bash\necho "${name} $*" >> ${calls}\n`, { mode: 0o755 });
  }
  const o = {
    sizeMib: 2,
    file: path.join(root, 'swapfile'),
    meminfo: path.join(root, 'meminfo'),
    fstab: path.join(root, 'fstab'),
    sysctlFile: path.join(root, 'swappiness.conf'),
  };
  const script = path.join(root, 'swap.sh');
  fs.writeFileSync(script, `set -euo pipefail\nlog() { echo "$*" >&2; }\n${renderSwapSetup(o)}\necho done\n`);

  /** One boot with this much memory and swap (MiB); the commands it ran. */
  function boot(memMib: number, swapMib: number): string[] {
    fs.writeFileSync(o.meminfo, `MemTotal:       ${memMib * 1024} kB\nMemFree:          1000 kB\nSwapTotal:       ${swapMib * 1024} kB\n`);
    fs.rmSync(calls, { force: true });
    const r = spawnSync('bash', [script], { encoding: 'utf8', env: { PATH: `${bin}:/usr/bin:/bin` } });
    expect(r.stdout).toBe('done\n');
    expect(r.status).toBe(0);
    return fs.existsSync(calls) ? fs.readFileSync(calls, 'utf8').trim().split('\n') : [];
  }
  beforeEach(() => {
    for (const f of [o.file, o.fstab, o.sysctlFile]) fs.rmSync(f, { force: true });
    fs.writeFileSync(o.fstab, 'UUID=root / xfs defaults 0 0\n');
  });

  test('a t4g.nano (MemTotal ~450 MiB) with no swap gets a private swap file, on now and at every boot', () => {
    expect(boot(450, 0)).toEqual([`mkswap ${o.file}`, `swapon ${o.file}`, 'sysctl -q -w vm.swappiness=10']);
    const stat = fs.statSync(o.file);
    expect(stat.size).toBe(2 * 1024 * 1024);
    expect(stat.mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(o.fstab, 'utf8')).toBe(`UUID=root / xfs defaults 0 0\n${o.file} none swap defaults 0 0\n`);
    expect(fs.readFileSync(o.sysctlFile, 'utf8')).toBe('vm.swappiness = 10\n');
  });

  test('run again, it adds nothing twice; with the swap on, it does nothing', () => {
    boot(450, 0);
    const inode = fs.statSync(o.file).ino;
    boot(450, 0);
    expect(fs.statSync(o.file).ino).toBe(inode);
    expect(fs.readFileSync(o.fstab, 'utf8').split('\n').filter((l) => l.startsWith(o.file))).toHaveLength(1);
    expect(boot(450, 2)).toEqual([]);
  });

  test('a file left short by an interrupted boot is made again', () => {
    fs.writeFileSync(o.file, 'x', { mode: 0o644 });
    boot(450, 0);
    expect(fs.statSync(o.file).size).toBe(2 * 1024 * 1024);
    expect(fs.statSync(o.file).mode & 0o777).toBe(0o600);
  });

  test('an instance of 2 GiB, or one that already has swap, is left alone', () => {
    expect(boot(1900, 0)).toEqual([]);
    expect(boot(450, 512)).toEqual([]);
    expect(fs.existsSync(o.file)).toBe(false);
    expect(fs.readFileSync(o.fstab, 'utf8')).toBe('UUID=root / xfs defaults 0 0\n');
  });
});

describe('the liveness check a timer runs every 15 s', () => {
  let server: http.Server;
  let status = 200;
  let url = '';
  const dir = path.join(tmp, 'liveness');
  const calls = path.join(dir, 'systemctl-calls');
  const state = path.join(dir, 'state');
  const unitState = path.join(dir, 'unit-state');
  const unitIs = (what: string): void => fs.writeFileSync(unitState, `${what}\n`);
  beforeEach(() => {
    fs.rmSync(calls, { force: true });
    fs.rmSync(state, { force: true });
    unitIs('active');
  });
  beforeAll(async () => {
    fs.mkdirSync(dir, { recursive: true });
    // systemctl and shutdown as stand-ins that write down how they were called; is-active answers what
    // the test says the unit is.
    fs.writeFileSync(path.join(dir, 'systemctl'),
      `#!/bin/bash\nif [ "$1" = is-active ]; then cat ${unitState}; exit 0; fi\necho "$*" >> ${calls}\n`, { mode: 0o755 });
    fs.writeFileSync(path.join(dir, 'shutdown'), `#!/bin/bash\necho "shutdown $*" >> ${calls}\n`, { mode: 0o755 });
    server = http.createServer((_req, res) => res.writeHead(status).end());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/healthz`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const check = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const script = path.join(dir, 'liveness.sh');
      fs.writeFileSync(script, renderLivenessScript({ healthUrl: url, stateFile: state }), { mode: 0o755 });
      execFile('bash', [script], { env: { PATH: `${dir}:${process.env.PATH}` }, timeout: 10_000 }, (err) => (err ? reject(err) : resolve()));
    });
  const restarts = (): string[] => (fs.existsSync(calls) ? fs.readFileSync(calls, 'utf8').trim().split('\n') : []);

  test('restarts a running proxy once /healthz has failed four checks in a row, and a pass in between starts the count again', async () => {
    status = 503;
    for (let i = 0; i < 3; i++) await check();
    expect(restarts()).toEqual([]);
    status = 200;
    await check();
    expect(fs.existsSync(state)).toBe(false);
    status = 503;
    for (let i = 0; i < 3; i++) await check();
    expect(restarts()).toEqual([]);
    await check();
    // try-restart: a proxy an operator stopped stays stopped.
    expect(restarts()).toEqual([`try-restart ${INSTANCE_PATHS.unitName}`]);
  });

  test('when restarts do not help for five minutes (20 checks), the instance powers off to be replaced', async () => {
    status = 503;
    for (let i = 0; i < 19; i++) await check();
    expect(restarts()).toEqual(Array(4).fill(`try-restart ${INSTANCE_PATHS.unitName}`));
    await check();
    expect(restarts().slice(4)).toEqual(['shutdown -h now']);
  });

  test('a power-off that fails leaves the restarts going, and is tried again five minutes on', async () => {
    status = 503;
    fs.writeFileSync(path.join(dir, 'shutdown'), `#!/bin/bash\necho "shutdown $*" >> ${calls}\nexit 1\n`, { mode: 0o755 });
    try {
      for (let i = 0; i < 40; i++) await check();
      const restart = `try-restart ${INSTANCE_PATHS.unitName}`;
      expect(restarts()).toEqual([...Array(4).fill(restart), 'shutdown -h now', restart, ...Array(4).fill(restart), 'shutdown -h now', restart]);
    } finally {
      fs.writeFileSync(path.join(dir, 'shutdown'), `#!/bin/bash\necho "shutdown $*" >> ${calls}\n`, { mode: 0o755 });
    }
  });

  test('a proxy an operator stopped is left alone, and one draining on its way to a restart is not counted', async () => {
    status = 503;
    // A stop that ended in an error (a worker lost while draining, a SIGKILL at TimeoutStopSec) is "failed".
    for (const stopped of ['inactive', 'failed']) {
      unitIs(stopped);
      for (let i = 0; i < 25; i++) await check();
      expect(restarts()).toEqual([]);
      expect(fs.existsSync(state)).toBe(false);
    }
    // A stop or restart under way is not counted.
    unitIs('activating');
    for (let i = 0; i < 3; i++) await check();
    unitIs('deactivating');
    for (let i = 0; i < 25; i++) await check();
    expect(restarts()).toEqual([]);
    unitIs('activating');
    await check();
    expect(restarts()).toEqual([`try-restart ${INSTANCE_PATHS.unitName}`]);
  });

  test('a crash loop whose checks often land while systemd stops what is left still powers off', async () => {
    status = 503;
    // The primary dies, its workers drain (deactivating), it comes back and dies again, over and over.
    for (let i = 0; i < 45; i++) {
      unitIs(i % 3 === 0 ? 'activating' : i % 3 === 1 ? 'active' : 'deactivating');
      await check();
    }
    expect(restarts()).toContain('shutdown -h now');
  });

  test('the boot enables its timer once the proxy is healthy, and the script parses', () => {
    const script = userDataText(Template.fromStack(configs.default));
    expect(script.indexOf(`systemctl enable --now ${INSTANCE_PATHS.livenessTimerName}`)).toBeGreaterThan(script.indexOf('log "healthy"'));
    expect(heredocBody(script, 'KARMA_PROXY_LIVENESS_TIMER')).toBe(renderLivenessUnits().timer);
    expect(bashSyntax(heredocBody(script, 'KARMA_PROXY_LIVENESS'), 'liveness')).toEqual({ status: 0, stderr: '' });
  });
});

describe('systemd-analyze verify', () => {
  const tool = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => fs.existsSync(p));
  const unit = heredocBody(userDataText(Template.fromStack(configs.default)), 'KARMA_PROXY_UNIT');

  (tool ? test : test.skip)('the unit the user data writes verifies clean', () => {
    // Node 22 and the env file are not on this machine: point the copy at files that exist, keep the rest.
    const envFile = path.join(tmp, 'env');
    fs.writeFileSync(envFile, 'PORT=80\n');
    const file = path.join(tmp, 'karma-proxy.service');
    const copy = unit
      .replace('ExecStart=/usr/bin/node-22 /opt/karma-proxy/karma-proxy.js', `ExecStart=/bin/true ${envFile}`)
      .replace('EnvironmentFile=/etc/karma-proxy/env', `EnvironmentFile=${envFile}`);
    expect(copy).not.toBe(unit);
    fs.writeFileSync(file, copy);
    const r = spawnSync(tool!, ['verify', file], { encoding: 'utf8' });
    // verify exits 0 on unknown keys and bad values and only warns: any line about our file is a failure.
    const complaints = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.includes('karma-proxy.service'));
    expect(complaints).toEqual([]);
    expect(r.status).toBe(0);
  });

  (tool ? test : test.skip)('and it would notice a mistake (the check is not blind)', () => {
    const file = path.join(tmp, 'broken-karma-proxy.service');
    fs.writeFileSync(file, unit.replace('Restart=always', 'Restart=sometimes').replace(/^ExecStart=.*$/m, 'ExecStart=/bin/true'));
    const r = spawnSync(tool!, ['verify', file], { encoding: 'utf8' });
    expect(`${r.stdout}${r.stderr}`).toMatch(/broken-karma-proxy\.service.*restart/i);
  });
});
