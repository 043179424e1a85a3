/**
 * The README's command to run the proxy locally, `npm run proxy`, as a newcomer types it, and stopped
 * as a supervisor stops it: a signal to the npm process. It runs in a copy of the project (sharing
 * node_modules), so that its build does not rewrite the dist/ that other tests start.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { startBackend, type Backend } from '../support/backend';
import { freePort, request, until } from '../support/net';

const ROOT = path.join(__dirname, '..', '..');

let dir: string;
let backend: Backend | undefined;
let npm: ChildProcess | undefined;
/** The proxy's own pid, from its ready line: killed at the end should npm have left it behind. */
let proxyPid: number | undefined;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-proxy-npm-'));
  for (const entry of ['bin', 'lib', 'runtime', 'scripts', 'package.json', 'tsconfig.json']) {
    fs.cpSync(path.join(ROOT, entry), path.join(dir, entry), { recursive: true });
  }
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
});
afterAll(async () => {
  if (npm && npm.exitCode === null && npm.signalCode === null) npm.kill('SIGKILL');
  if (proxyPid !== undefined) {
    try {
      process.kill(proxyPid, 'SIGKILL');
    } catch {
      // gone, as it should be
    }
  }
  await backend?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const refused = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });

test.each([
  ['a SIGTERM to npm', 'SIGTERM', false],
  ['a SIGINT to npm', 'SIGINT', false],
  ["a terminal's Ctrl-C (SIGINT to the whole group, npm passing its own on too)", 'SIGINT', true],
] as const)('`npm run proxy` serves, and %s stops the proxy itself, cleanly, its request in flight answered', async (_name, signal, group) => {
  backend ??= await startBackend('local');
  backend.handle = (_req, res) => setTimeout(() => res.end('local'), 500);
  const [port, metricsPort] = [await freePort(), await freePort()];
  const child = spawn('npm', ['run', 'proxy'], {
    cwd: dir,
    env: {
      ...process.env, NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off',
      PORT: String(port), METRICS_PORT: String(metricsPort), HOST: '127.0.0.1', WORKERS: '1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: group, // a process group of its own, as a terminal's foreground job
  });
  npm = child;
  let output = '';
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await until('the proxy ready', () => output.includes('"msg":"ready"'), 60_000, 100);
  proxyPid = Number(/"msg":"ready","pid":(\d+)/.exec(output)?.[1]);
  expect(await request(port)).toMatchObject({ status: 200, body: 'local' });

  const inFlight = request(port, { timeoutMs: 10_000 });
  await new Promise((r) => setTimeout(r, 100));
  if (group) process.kill(-child.pid!, signal);
  else child.kill(signal); // npm alone, as systemd or a test harness does
  const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(r, 15_000, 'still running'))]);
  expect(await inFlight).toMatchObject({ status: 200, body: 'local' });
  expect(code).toBe(0);
  expect(output).toContain(`"signal":"${signal}"`);
  // Nothing left holding the ports.
  expect(await refused(port)).toBe(true);
  expect(await refused(metricsPort)).toBe(true);
}, 90_000);
