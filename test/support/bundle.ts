/**
 * Starts the real bundle (dist/karma-proxy.js, built by `npm test` before Jest runs) as a child
 * process, waits for its `ready` line, and always kills it at the end.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { until } from './net';

export const BUNDLE = path.join(__dirname, '..', '..', 'dist', 'karma-proxy.js');

export interface Proxy {
  readonly child: ChildProcess;
  readonly port: number;
  readonly metricsPort: number;
  stdout: string;
  stderr: string;
  /** Resolves with the exit code (or the signal name) once the process has exited. */
  readonly exited: Promise<number | string>;
  /** JSON log lines printed so far. */
  lines(): Record<string, unknown>[];
  /** Sends a signal and waits for the exit, killing hard after `timeoutMs`. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | string>;
  /** Worker pids (children of the primary). */
  workers(): number[];
}

/**
 * Where the bundle runs unless a test says: an empty directory, since the proxy reads `./.env` (a
 * developer's own in the checkout must not leak into the tests).
 */
let emptyDir: string | undefined;
const defaultCwd = (): string => (emptyDir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'karma-cwd-')));

const running = new Set<ChildProcess>();
afterAll(() => {
  for (const c of running) c.kill('SIGKILL');
  if (emptyDir) fs.rmSync(emptyDir, { recursive: true, force: true });
  emptyDir = undefined;
});

/** Runs the bundle to completion (for configurations that must not start). */
export function runBundle(env: Record<string, string>, timeoutMs = 15_000, cwd = defaultCwd()): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    if (!fs.existsSync(BUNDLE)) return reject(new Error(`${BUNDLE} is missing: run npm run build`));
    const child = spawn(process.execPath, [BUNDLE], { cwd, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d));
    child.stderr!.on('data', (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * Starts the bundle; env overrides the test defaults (one worker, loopback). Unless given, PORT and
 * METRICS_PORT are 0 and the ports are read from the `ready` line: two "free" ports picked in advance
 * can be the same one.
 */
export async function startBundle(env: Record<string, string>, timeoutMs = 20_000, cwd = defaultCwd()): Promise<Proxy> {
  if (!fs.existsSync(BUNDLE)) throw new Error(`${BUNDLE} is missing: run npm run build`);
  const port = env.PORT ?? '0';
  const metricsPort = env.METRICS_PORT ?? '0';
  const fullEnv: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOST: '127.0.0.1',
    METRICS_HOST: '127.0.0.1',
    WORKERS: '1',
    // Keep tests off any real AWS: no credentials, no region lookups through instance metadata.
    AWS_EC2_METADATA_DISABLED: 'true',
    ...env,
    PORT: port,
    METRICS_PORT: metricsPort,
  };
  const child = spawn(process.execPath, [BUNDLE], { cwd, env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  const exited = new Promise<number | string>((resolve) =>
    child.on('exit', (code, signal) => {
      running.delete(child);
      resolve(code ?? signal ?? -1);
    }),
  );
  const p: Proxy = {
    child,
    port: Number(port),
    metricsPort: Number(metricsPort),
    stdout: '',
    stderr: '',
    exited,
    lines: () =>
      p.stdout
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    stop: async (signal = 'SIGTERM', ms = 20_000) => {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), ms);
      const r = await exited;
      clearTimeout(timer);
      return r;
    },
    workers: () => {
      try {
        return fs
          .readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8')
          .trim()
          .split(/\s+/)
          .filter(Boolean)
          .map(Number);
      } catch {
        return [];
      }
    },
  };
  child.stdout!.on('data', (d: Buffer) => (p.stdout += d));
  child.stderr!.on('data', (d: Buffer) => (p.stderr += d));
  let early: unknown;
  void exited.then((code) => (early = code));
  await until(
    'the bundle to be ready',
    () => {
      if (early !== undefined) throw new Error(`bundle exited (${String(early)}) before ready:\n${p.stderr}\n${p.stdout}`);
      return p.stdout.includes('"msg":"ready"');
    },
    timeoutMs,
  );
  const ready = p.lines().find((l) => l.msg === 'ready')!;
  Object.assign(p, { port: Number(ready.port), metricsPort: Number(ready.metricsPort) });
  return p;
}

/** Resident memory of a process in bytes, from /proc (Linux). */
export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}
