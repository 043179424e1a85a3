/**
 * A real redis-server for tests, on an ephemeral loopback port, never the system one on 6379.
 * No persistence (`--save '' --appendonly no`), and a directory of its own for what it writes anyway (a
 * replica's copy of its primary). kill/restart/pause keep the same port so clients can
 * reconnect by themselves. Always stop() it in afterAll.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { freePort } from './net';

// Found on PATH (.ci/run installs it when missing); REDIS_SERVER_BIN picks another build.
export const REDIS_SERVER = process.env.REDIS_SERVER_BIN ?? 'redis-server';

export interface RedisServer {
  readonly port: number;
  /** redis://127.0.0.1:<port> */
  readonly url: string;
  /** SIGKILL: the server dies as in a crash; resolves when the process has exited. */
  kill(): Promise<void>;
  /** Starts it again on the same port; resolves when it answers PING. */
  restart(): Promise<void>;
  /** SIGSTOP / SIGCONT: a server that accepts bytes and answers nothing (slow, not down). */
  pause(): void;
  resume(): void;
  /** Stops it for good (idempotent). */
  stop(): Promise<void>;
}

/** Answers true once the server replies +PONG (or -NOAUTH: it is up, just protected). */
function ping(port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('error', () => done(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => done(/^(\+PONG|-NOAUTH)/.test(d.toString())));
  });
}

/** Starts redis-server with `args` added; resolves once it is ready to accept connections. */
export async function startRedisServer(args: readonly string[] = [], port?: number): Promise<RedisServer> {
  const p = port ?? (await freePort());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-redis-'));
  let child: ChildProcess | undefined;

  const launch = async (): Promise<void> => {
    const c = spawn(REDIS_SERVER, ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = c;
    let out = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`redis-server did not start on ${p}: ${out}`)), 10_000);
      const onData = (d: Buffer) => {
        out += d.toString();
        if (out.includes('Ready to accept connections')) {
          clearTimeout(timer);
          c.stdout?.off('data', onData);
          c.stdout?.resume();
          resolve();
        }
      };
      c.stdout?.on('data', onData);
      c.stderr?.on('data', (d: Buffer) => (out += d.toString()));
      c.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      c.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`redis-server exited with ${code}: ${out}`));
      });
    });
    if (!(await ping(p))) throw new Error(`redis-server on ${p} does not answer PING`);
  };

  const exit = async (signal: NodeJS.Signals): Promise<void> => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGCONT'); // a paused server must be able to die
    c.kill(signal);
    await exited;
  };

  await launch();
  return {
    port: p,
    url: `redis://127.0.0.1:${p}`,
    kill: () => exit('SIGKILL'),
    async restart() {
      await exit('SIGKILL');
      await launch();
    },
    pause() {
      child?.kill('SIGSTOP');
    },
    resume() {
      child?.kill('SIGCONT');
    },
    stop: () => exit('SIGKILL').finally(() => fs.rmSync(dir, { recursive: true, force: true })),
  };
}
