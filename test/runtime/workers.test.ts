/**
 * Several workers under one primary: discovery and health checks happen once for all of them, and
 * what the primary learns reaches every worker.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import { ACCEPT_HANDLES } from '../../runtime/acceptors';
import { workerV8Flags } from '../../runtime/memory';
import { rawExchange } from '../hardening/support';
import { startAwsStub } from '../support/aws-stub';
import { startBackend } from '../support/backend';
import { startBundle } from '../support/bundle';
import { freePort, request, until } from '../support/net';

jest.setTimeout(60_000);

test('each target is health-checked once per period, not once per worker, and a verdict reaches every worker', async () => {
  const good = await startBackend('good');
  const sick = await startBackend('sick');
  sick.healthStatus = 500;
  const p = await startBundle({
    NODE_FILTER: 'static',
    STATIC_TARGETS: `127.0.0.1:${good.port},127.0.0.1:${sick.port}`,
    WORKERS: '2',
    HEALTH_CHECK_PATH: '/health',
    HEALTH_CHECK_PERIOD: '0.2',
    HEALTH_CHECK_TIMEOUT: '0.1',
    UNHEALTHY_THRESHOLD: '2',
  });
  try {
    await until('the sick one judged', async () => {
      const m = await request(p.metricsPort, { path: '/metrics' });
      return new RegExp(`load_balancer_node_health_status\\{target="127.0.0.1:${sick.port}"\\} 0`).test(m.body);
    });
    const before = good.healthChecks;
    await new Promise((r) => setTimeout(r, 2000));
    const checks = good.healthChecks - before;
    // One checker: about 10 checks in 2 s at 0.2 s (±10% jitter). One per worker would be about 20.
    expect(checks).toBeGreaterThanOrEqual(7);
    expect(checks).toBeLessThanOrEqual(13);
    // New connections spread over both workers; none of them sends to the sick target.
    sick.seen.length = 0;
    for (let i = 0; i < 20; i++) expect((await request(p.port)).body).toBe('good');
    expect(sick.seen).toHaveLength(0);
    const m = await request(p.metricsPort, { path: '/metrics' });
    expect(Number(/^karma_requests_total\{route="pool",code="2xx"\} (\d+)$/m.exec(m.body)?.[1])).toBe(20);
    // The primary says it once, not once per worker.
    expect(p.stderr.split('\n').filter((l) => l.includes('"msg":"target unhealthy"') && l.includes(`127.0.0.1:${sick.port}`))).toHaveLength(1);
    // A period under a second is allowed, and said (the seeds' periods are seconds; 0.2 may be meant as ms).
    expect(p.stderr).toContain('"msg":"HEALTH_CHECK_PERIOD is 0.2 s (it is in seconds): every target is checked that often"');
  } finally {
    await p.stop();
    await good.close();
    await sick.close();
  }
});

test("a target's health verdict outlives the only worker that used it: a recovering target still needs HEALTHY_THRESHOLD passing checks", async () => {
  const good = await startBackend('good');
  const sick = await startBackend('sick');
  sick.healthStatus = 500;
  // A set port: with one worker the listening socket closes with it, and PORT=0 would pick another.
  const port = String(await freePort());
  const p = await startBundle({
    NODE_FILTER: 'static',
    STATIC_TARGETS: `127.0.0.1:${good.port},127.0.0.1:${sick.port}`,
    WORKERS: '1',
    PORT: port,
    HEALTH_CHECK_PATH: '/health',
    HEALTH_CHECK_PERIOD: '0.2',
    HEALTH_CHECK_TIMEOUT: '0.1',
    UNHEALTHY_THRESHOLD: '2',
    HEALTHY_THRESHOLD: '20',
  });
  try {
    await until('the sick one judged', async () => {
      const m = await request(p.metricsPort, { path: '/metrics' });
      return new RegExp(`load_balancer_node_health_status\\{target="127.0.0.1:${sick.port}"\\} 0`).test(m.body);
    });
    // It recovers, and the worker dies: 20 passing checks (about 4 s) still stand between it and traffic.
    sick.healthStatus = 200;
    const [w] = p.workers();
    process.kill(w, 'SIGKILL');
    await until('a replacement serving', () => p.workers().length === 1 && !p.workers().includes(w) && request(p.port).then(() => true, () => false));
    const checksBefore = sick.healthChecks;
    // Requests while the new worker is still well under the threshold (counted in checks, not in time: a
    // loaded machine may take longer than 4 s over these), each to the good one: the verdict was not
    // forgotten and rebuilt.
    let sent = 0;
    for (; sent < 10 && sick.healthChecks - checksBefore < 15; sent++) {
      expect((await request(p.port)).body).toBe('good');
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(sent).toBeGreaterThanOrEqual(3);
    expect(sick.seen).toHaveLength(0);
  } finally {
    await p.stop();
    await good.close();
    await sick.close();
  }
});

test('concurrent requests for a new route on two workers make one ECS discovery', async () => {
  const backend = await startBackend('task');
  const stub = await startAwsStub({ clusters: { prod: { api: [{ ip: '127.0.0.1' }] } } });
  const p = await startBundle({ ...stub.env(), DOMAIN: 'example.com', WORKERS: '2', HEALTH_CHECK_PATH: 'off' });
  try {
    const replies = await Promise.all(
      Array.from({ length: 40 }, () => request(p.port, { headers: { Host: `api-${backend.port}-prod.example.com` } })),
    );
    expect(replies.every((r) => r.status === 200 && r.body === 'task')).toBe(true);
    expect(stub.count('ListTasks')).toBe(1);
    expect(stub.count('DescribeTasks')).toBe(1);
  } finally {
    await p.stop();
    await stub.close();
    await backend.close();
  }
});

test('workers killed while /metrics is scraped are replaced; the primary, whose messages to them fail, stays up', async () => {
  const backend = await startBackend('ok');
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', WORKERS: '4' });
  let scraping = true;
  const scrapes = Array.from({ length: 6 }, async () => {
    while (scraping) await request(p.metricsPort, { path: '/metrics', timeoutMs: 5000 }).catch(() => undefined);
  });
  try {
    for (let i = 0; i < 12; i++) {
      await until('four workers', () => p.workers().length === 4, 15_000);
      const ws = p.workers();
      process.kill(ws[i % ws.length], 'SIGKILL');
      await new Promise((r) => setTimeout(r, 150));
    }
    scraping = false;
    await Promise.all(scrapes);
    expect(p.child.exitCode).toBeNull();
    expect(p.stderr).not.toContain('Unhandled');
    await until('four workers again', () => p.workers().length === 4, 15_000);
    expect((await request(p.port)).status).toBe(200);
    expect((await request(p.metricsPort, { path: '/metrics' })).status).toBe(200);
  } finally {
    scraping = false;
    await p.stop('SIGKILL');
    await backend.close();
  }
});

test('a worker that dies is replaced, and the proxy keeps serving meanwhile', async () => {
  const backend = await startBackend('ok');
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, WORKERS: '2', HEALTH_CHECK_PATH: 'off' });
  try {
    const before = p.workers();
    expect(before).toHaveLength(2);
    process.kill(before[0], 'SIGKILL');
    for (let i = 0; i < 10; i++) expect((await request(p.port)).status).toBe(200);
    const after = await until('a replacement worker', () => {
      const now = p.workers();
      return now.length === 2 && !now.includes(before[0]) ? now : undefined;
    });
    expect(after).toContain(before[1]);
    await until('the replacement serving', async () => (await request(p.metricsPort, { path: '/healthz' })).body.includes('"workers":2'));
    expect(p.stderr).toContain('worker died; replacing it');
    // Counted, so that a crash can be alerted on from /metrics.
    expect((await request(p.metricsPort, { path: '/metrics' })).body).toMatch(/^karma_worker_restarts_total 1$/m);
    await p.stop();
    // A shutdown the primary leads is no primary lost.
    expect(p.stderr).not.toContain('the primary is gone');
  } finally {
    await p.stop();
    await backend.close();
  }
});

test('a hang-up (SIGHUP to the primary and its workers, as a closed terminal sends) is said once and ignored: the same processes serve on', async () => {
  const backend = await startBackend('ok');
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, WORKERS: '2', HEALTH_CHECK_PATH: 'off' });
  try {
    const workers = p.workers();
    expect(workers).toHaveLength(2);
    for (const pid of [p.child.pid as number, ...workers]) process.kill(pid, 'SIGHUP');
    await until('the hang-up said', () => p.stdout.includes('SIGHUP ignored'));
    for (let i = 0; i < 10; i++) expect((await request(p.port)).body).toBe('ok');
    expect(p.workers()).toEqual(workers);
    expect(p.stderr).not.toContain('worker died');
    expect(p.stdout.split('SIGHUP ignored').length - 1).toBe(1);
  } finally {
    await p.stop();
    await backend.close();
  }
});

test('a worker whose event loop is stuck (stopped) is killed after WORKER_STUCK_TIMEOUT and replaced; busy ones are not', async () => {
  const backend = await startBackend('ok');
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, WORKERS: '2', HEALTH_CHECK_PATH: 'off', WORKER_STUCK_TIMEOUT: '1' });
  try {
    // Two seconds of steady requests: answering the watchdog while serving, no worker is taken for stuck.
    const until2s = Date.now() + 2000;
    while (Date.now() < until2s) expect((await request(p.port)).status).toBe(200);
    expect(p.stderr).not.toContain('event loop is stuck');
    // The primary itself stalled (stopped for twice the timeout): its workers' answers wait unread, and
    // none of them is taken for stuck when it goes on.
    const workersBefore = p.workers().sort();
    process.kill(p.child.pid!, 'SIGSTOP');
    await new Promise((r) => setTimeout(r, 2000));
    process.kill(p.child.pid!, 'SIGCONT');
    await new Promise((r) => setTimeout(r, 1500));
    expect(p.stderr).not.toContain('event loop is stuck');
    expect(p.workers().sort()).toEqual(workersBefore);
    const [stuck, other] = p.workers();
    process.kill(stuck, 'SIGSTOP'); // alive, holding its connections, answering nothing
    const after = await until('the stuck worker replaced', () => {
      const now = p.workers();
      return now.length === 2 && !now.includes(stuck) ? now : undefined;
    });
    expect(after).toContain(other);
    expect(p.stderr).toMatch(new RegExp(`"msg":"a worker has not answered the primary: its event loop is stuck; killing it".*"workerPid":${stuck}[,}]`));
    await until('the replacement serving', async () => (await request(p.metricsPort, { path: '/healthz' })).body.includes('"workers":2'));
    for (let i = 0; i < 6; i++) expect((await request(p.port)).status).toBe(200);
  } finally {
    await p.stop();
    await backend.close();
  }
});

test('a scrape does not wait long for a worker that does not answer: its last counts stand in', async () => {
  const backend = await startBackend('ok');
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, WORKERS: '2', HEALTH_CHECK_PATH: 'off' });
  const [stopped] = p.workers();
  try {
    for (let i = 0; i < 10; i++) expect((await request(p.port, { headers: { Connection: 'close' } })).status).toBe(200);
    await request(p.metricsPort, { path: '/metrics' }); // every worker's counts taken once
    process.kill(stopped, 'SIGSTOP');
    const t0 = Date.now();
    const text = (await request(p.metricsPort, { path: '/metrics' })).body;
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(Number(/^karma_requests_total\{route="pool",code="2xx"\} (\d+)$/m.exec(text)?.[1])).toBe(10);
  } finally {
    process.kill(stopped, 'SIGCONT');
    await p.stop();
    await backend.close();
  }
});

test('a worker killed outright between scrapes takes at most the last few seconds of its counts with it', async () => {
  const backend = await startBackend('ok');
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, WORKERS: '1', HEALTH_CHECK_PATH: 'off' });
  try {
    for (let i = 0; i < 30; i++) expect((await request(p.port)).status).toBe(200);
    // No scrape meanwhile: the primary takes the worker's counts by itself, every 5 s (two periods, so
    // that one whole exchange surely falls between the last request and the kill).
    await new Promise((r) => setTimeout(r, 10_500));
    const [worker] = p.workers();
    process.kill(worker, 'SIGKILL');
    await until('a replacement worker', () => p.workers().length === 1 && !p.workers().includes(worker));
    const text = (await request(p.metricsPort, { path: '/metrics' })).body;
    const count = Number(/^karma_requests_total\{route="pool",code="2xx"\} (\d+)$/m.exec(text)?.[1]);
    expect(count).toBe(30);
  } finally {
    await p.stop();
    await backend.close();
  }
});

test('no worker is started once shutdown has begun, even a replacement the crash-loop brake had put off', async () => {
  const backend = await startBackend('ok');
  backend.handle = (_req, res) => void setTimeout(() => res.end('slow'), 2500);
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, WORKERS: '2', HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '5' });
  try {
    // Six deaths in ten seconds: the next replacement waits a second.
    for (let i = 0; i < 6; i++) {
      const [pid] = p.workers();
      process.kill(pid, 'SIGKILL');
      await until('a replacement worker', () => p.workers().length === 2 && !p.workers().includes(pid), 5000);
      await until('both serving', async () => (await request(p.metricsPort, { path: '/healthz' })).body.includes('"workers":2'));
    }
    // Slow requests on both workers keep the drain (and the primary) going past that second.
    const slow = Array.from({ length: 6 }, () => request(p.port, { headers: { Connection: 'close' } }).catch(() => undefined));
    await until('the slow requests at the target', () => backend.seen.length === 6);
    const [dying, survivor] = p.workers();
    process.kill(dying, 'SIGKILL');
    await until('the crash noticed', () => p.stderr.split('worker died; replacing it').length - 1 === 7);
    const forked = new Set<number>();
    const watch = setInterval(() => p.workers().forEach((pid) => pid !== survivor && forked.add(pid)), 20);
    const code = await p.stop('SIGTERM', 15_000);
    clearInterval(watch);
    await Promise.all(slow);
    expect(code).toBe(0);
    expect([...forked]).toEqual([]);
  } finally {
    await p.stop('SIGKILL');
    await backend.close();
  }
});

test('a worker that does not stop within SHUTDOWN_TIMEOUT is killed 5 s later, said so, and the exit code is 1', async () => {
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: '127.0.0.1:9', WORKERS: '1', HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '0.5' });
  try {
    const [worker] = p.workers();
    process.kill(worker, 'SIGSTOP');
    const started = Date.now();
    expect(await p.stop('SIGTERM', 15_000)).toBe(1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(5000);
    expect(p.stderr).toContain('"msg":"workers did not stop within SHUTDOWN_TIMEOUT; killed"');
  } finally {
    await p.stop('SIGKILL');
  }
});

test('a worker that dies while draining is said, and the exit code is 1; the same drain without it exits 0 and says nothing of it', async () => {
  const slow = await startBackend('slow');
  // Long enough that the drain is still on when the worker is killed, however loaded the machine.
  slow.handle = (_req, res) => setTimeout(() => res.end('late'), 3000);
  try {
    for (const killOne of [true, false]) {
      const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${slow.port}`, WORKERS: '2', HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '5' });
      try {
        await until('two workers', () => p.workers().length === 2);
        const inFlight = [request(p.port).catch((e: Error) => e), request(p.port).catch((e: Error) => e)];
        await until('both requests at the target', () => slow.seen.length >= 2);
        slow.seen.length = 0;
        const exited = p.stop('SIGTERM', 15_000);
        await new Promise((r) => setTimeout(r, 300));
        // A worker still draining (both requests may have gone to one worker, and an idle one is gone already).
        const killed = killOne && p.workers().some((w) => {
          try {
            process.kill(w, 'SIGKILL');
            return true;
          } catch {
            return false; // exited meanwhile
          }
        });
        expect(killed).toBe(killOne);
        expect(await exited).toBe(killOne ? 1 : 0);
        await Promise.all(inFlight);
        expect(p.stderr.includes('"msg":"a worker died while shutting down; its requests in flight were cut"')).toBe(killOne);
      } finally {
        await p.stop('SIGKILL');
      }
    }
  } finally {
    await slow.close();
  }
});

test('a second SIGINT (Ctrl-C twice) stops at once, cutting what is in flight, with exit code 130', async () => {
  const slow = await startBackend('slow');
  slow.handle = (_req, res) => setTimeout(() => res.end('late'), 10_000);
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${slow.port}`, WORKERS: '1', HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '30' });
  try {
    const inFlight = request(p.port).catch((e: Error) => e);
    await until('the request at the target', () => slow.seen.length >= 1);
    const exited = p.stop('SIGINT', 15_000);
    await until('the drain', () => p.stdout.includes('"msg":"shutting down"'));
    await new Promise((r) => setTimeout(r, 400)); // a second keypress, not the first one delivered twice
    const t0 = Date.now();
    p.child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(Date.now() - t0).toBeLessThan(3000); // not SHUTDOWN_TIMEOUT's 30 s, nor the request's 10 s
    expect(p.stderr).toContain('"msg":"second SIGINT: stopping now, cutting what is in flight"');
    expect(await inFlight).toMatchObject({ message: expect.any(String) }); // cut, not answered
  } finally {
    await p.stop('SIGKILL');
    await slow.close();
  }
});

test('one Ctrl-C delivered twice at once (the terminal to the group, npm to its child) is one: what is in flight finishes', async () => {
  const slow = await startBackend('slow');
  slow.handle = (_req, res) => setTimeout(() => res.end('finished'), 1500);
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${slow.port}`, WORKERS: '1', HEALTH_CHECK_PATH: 'off' });
  try {
    const inFlight = request(p.port, { timeoutMs: 10_000 });
    await until('the request at the target', () => slow.seen.length >= 1);
    p.child.kill('SIGINT');
    p.child.kill('SIGINT');
    expect(await inFlight).toMatchObject({ status: 200, body: 'finished' });
    expect(await p.stop('SIGTERM', 15_000)).toBe(0);
    expect(p.stderr).not.toContain('second SIGINT');
    expect(p.stdout).toContain('"msg":"already shutting down"');
  } finally {
    await p.stop('SIGKILL');
    await slow.close();
  }
});

/** Whether process `pid` is still alive. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('when the primary is killed, workers finish the requests in flight, then exit', async () => {
  const backend = await startBackend('ok');
  backend.handle = (_req, res) => void setTimeout(() => res.end('slow'), 1500);
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, WORKERS: '1', HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '10' });
  const [worker] = p.workers();
  try {
    const inFlight = [request(p.port), request(p.port)];
    await until('the requests at the target', () => backend.seen.length === 2);
    process.kill(p.child.pid!, 'SIGKILL');
    const replies = await Promise.all(inFlight);
    expect(replies.map((r) => [r.status, r.body])).toEqual([[200, 'slow'], [200, 'slow']]);
    await until('the worker gone', () => !alive(worker), 5000);
    const warned = (): unknown[] => p.stderr.split('\n').filter((l) => l.includes('"msg":"the primary is gone: draining and exiting"')).map((l) => JSON.parse(l).pid);
    expect(warned()).toEqual([worker]);
  } finally {
    try {
      process.kill(worker, 'SIGKILL');
    } catch {
      // gone already
    }
    await p.stop('SIGKILL');
    await backend.close();
  }
});

/** How many of `pid`'s descriptors are the socket of `inode` (listening: its accept handles). */
function descriptorsOf(pid: number, inode: string): number {
  let n = 0;
  try {
    for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === `socket:[${inode}]`) n++;
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    // gone
  }
  return n;
}

test('a worker whose primary is killed while it exchanges accept handles with it (Node then emits no disconnect) still exits', async () => {
  const backend = await startBackend('ok');
  /** Lets a stopped process run for about `us` microseconds, then stops it again. */
  const pulse = (pid: number, us: number): void => {
    process.kill(pid, 'SIGCONT');
    const until = process.hrtime.bigint() + BigInt(us * 1000);
    while (process.hrtime.bigint() < until) {
      // spin: a timer is a millisecond at best
    }
    process.kill(pid, 'SIGSTOP');
  };
  let caught = 0;
  try {
    // The window is a few milliseconds of a replacement's start, met by letting the primary run in
    // slices of 200 us while the replacement's descriptors are counted; frozen in it, the primary has
    // not always read the worker's last handle: three times over (each time, the worker must go).
    for (let attempt = 0; attempt < 10 && caught < 3; attempt++) {
      // A port of its own: the replacement listens on it again (with PORT=0 it would be another).
      const port = await freePort();
      const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, WORKERS: '1', HEALTH_CHECK_PATH: 'off', PORT: String(port) });
      const primary = p.child.pid!;
      let pid: number | undefined;
      try {
        const [first] = p.workers();
        process.kill(first, 'SIGKILL');
        pid = (await until('a replacement forked', () => p.workers().find((w) => w !== first), 10_000, 1)) as number;
        process.kill(primary, 'SIGSTOP');
        let n = 0;
        for (let i = 0; i < 5000 && (n === 0 || n >= ACCEPT_HANDLES); i++) {
          if (n >= ACCEPT_HANDLES) break;
          pulse(primary, 200);
          // The worker runs on meanwhile: its next step waits on the primary.
          await new Promise((r) => setTimeout(r, 2));
          const inode = listeningInode(port);
          n = inode === undefined ? 0 : descriptorsOf(pid, inode);
        }
        if (n >= 1 && n < ACCEPT_HANDLES) {
          process.kill(primary, 'SIGKILL');
          caught++;
          await until('the replacement gone, its primary killed mid-exchange', () => !alive(pid!), 5000, 50);
        } else process.kill(primary, 'SIGCONT');
      } finally {
        if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGKILL');
        await p.stop('SIGKILL');
      }
    }
    expect(caught).toBe(3);
  } finally {
    await backend.close();
  }
});

test("counters do not go down when a worker dies: its last counts stay in the sums", async () => {
  const backend = await startBackend('ok');
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, WORKERS: '2', HEALTH_CHECK_PATH: 'off' });
  const total = async (name: string): Promise<number> => {
    const body = (await request(p.metricsPort, { path: '/metrics' })).body;
    return [...body.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+)$`, 'gm'))].reduce((n, m) => n + Number(m[1]), 0);
  };
  try {
    await until('both serving', async () => (await request(p.metricsPort, { path: '/healthz' })).body.includes('"workers":2'));
    // Separate connections, so that both workers take some.
    for (let i = 0; i < 40; i++) expect((await request(p.port, { headers: { Connection: 'close' } })).status).toBe(200);
    const requests = await total('karma_requests_total');
    const successes = await total('load_balancer_successful_connections_total');
    expect(requests).toBe(40);
    expect(successes).toBe(40);
    const [first] = p.workers();
    process.kill(first, 'SIGKILL');
    await until('the replacement serving', async () => !p.workers().includes(first) && (await request(p.metricsPort, { path: '/healthz' })).body.includes('"workers":2'));
    expect(await total('karma_requests_total')).toBe(40);
    expect(await total('load_balancer_successful_connections_total')).toBe(40);
    for (let i = 0; i < 10; i++) await request(p.port, { headers: { Connection: 'close' } });
    expect(await total('karma_requests_total')).toBe(50);
  } finally {
    await p.stop();
    await backend.close();
  }
});

test('a mistyped setting is named at start with the one it is likely meant to be; the proxy starts with the default', async () => {
  const backend = await startBackend('ok');
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, WORKERS: '1', HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMOUT: '5' });
  try {
    expect((await request(p.port)).status).toBe(200);
    expect(p.stderr).toContain('"msg":"SHUTDOWN_TIMOUT is not a setting and is ignored; did you mean SHUTDOWN_TIMEOUT?"');
  } finally {
    await p.stop();
    await backend.close();
  }
});

test('a request head left unfinished (408) and an HTTP/0.9 line (400) are logged and counted once, the 408 with the time it took', async () => {
  const backend = await startBackend('ok');
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', LOG_CONNECTIONS: 'true', HEADERS_TIMEOUT: '0.6' });
  try {
    const slow = await rawExchange(p.port, 'GET /slow HTTP/1.1\r\nHost: x\r\n', { deadlineMs: 5000 });
    expect(slow.responses[0]?.status).toBe(408);
    const old = await rawExchange(p.port, 'GET /\r\n');
    expect(old.responses[0]?.status).toBe(400);
    const lines = await until('both lines', () => {
      const l = p.lines().filter((x) => x.msg === 'access');
      return l.length >= 2 ? l : undefined;
    });
    await new Promise((r) => setTimeout(r, 200));
    const access = p.lines().filter((x) => x.msg === 'access');
    expect(access.map((l) => l.status).sort()).toEqual([400, 408]);
    expect(Number(lines!.find((l) => l.status === 408)!.ms)).toBeGreaterThanOrEqual(500);
    const metrics = (await request(p.metricsPort, { path: '/metrics' })).body;
    expect(metrics).toMatch(/karma_requests_total\{route="none",code="4xx"\} 2\n/);
  } finally {
    await p.stop();
    await backend.close();
  }
});

test("a pool run with a default that differs from the Stateless Load Balancer's (HTTP, not raw TCP) is told so at start", async () => {
  const backend = await startBackend('ok');
  const pool = { NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off' };
  const note = 'MODE is http (the Stateless Load Balancer forwarded raw TCP: set MODE=tcp';
  try {
    const unset = await startBundle(pool);
    await unset.stop();
    expect(unset.stdout).toContain(note);
    expect(unset.stdout).not.toContain('PORT is'); // set (to 0 here)
    const set = await startBundle({ ...pool, MODE: 'http' });
    await set.stop();
    expect(set.stdout).not.toContain(note);
  } finally {
    await backend.close();
  }
});

test('LOG_CONNECTIONS=true writes one JSON access line per request; the default is quiet', async () => {
  const backend = await startBackend('ok');
  const loud = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', LOG_CONNECTIONS: 'true' });
  const quiet = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off' });
  try {
    await request(loud.port, { path: '/a?b=1' });
    await request(quiet.port, { path: '/a' });
    const access = (await until('the access line', () => {
      const lines = loud.lines().filter((l) => l.msg === 'access');
      return lines.length > 0 ? lines : undefined;
    }))!;
    expect(access).toHaveLength(1);
    expect(access[0]).toMatchObject({ level: 'info', method: 'GET', path: '/a?b=1', status: 200, target: `127.0.0.1:${backend.port}` });
    expect(typeof access[0].ms).toBe('number');
    // The trace ID its target got (X-Amzn-Trace-Id), as an ALB's access log has it.
    expect(access[0].trace).toMatch(/^Root=1-[0-9a-f]{8}-[0-9a-f]{24}$/);
    expect(backend.seen[0].headers['x-amzn-trace-id']).toBe(access[0].trace);
    // The body bytes each way, as an ALB's received_bytes and sent_bytes: a 1,000-byte upload answered
    // with 'ok' (chunked there: the count is of body bytes, not of their framing).
    await request(loud.port, { method: 'POST', path: '/upload', body: Buffer.alloc(1000, 'u') });
    const upload = (await until('its access line', () => loud.lines().find((l) => l.msg === 'access' && l.path === '/upload')))!;
    expect(upload).toMatchObject({ status: 200, bytesIn: 1000, bytesOut: 2 });
    expect(access[0]).toMatchObject({ bytesIn: 0, bytesOut: 2 });
    // A refused absolute-form target keeps no credentials in the log.
    const raw = await rawExchange(loud.port, 'GET http://user:secret@169.254.169.254/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(raw.responses[0].status).toBe(400);
    const refused = (await until('its access line', () => loud.lines().find((l) => l.msg === 'access' && l.status === 400)))!;
    expect(refused.path).toBe('http://***@169.254.169.254/latest');
    // Nor a credential in a query parameter named as one (an OAuth callback, a presigned URL).
    await request(loud.port, { path: '/callback?access_token=tok-s3cr3t&state=1' });
    const callback = (await until('its access line', () => loud.lines().find((l) => l.msg === 'access' && String(l.path).startsWith('/callback'))))!;
    expect(callback.path).toBe('/callback?access_token=***&state=1');
    // Nor userinfo in a Host header (refused with a 400).
    const hosted = await rawExchange(loud.port, 'GET /h HTTP/1.1\r\nHost: user:hostsecret@app.example.com\r\nConnection: close\r\n\r\n');
    expect(hosted.responses[0].status).toBe(400);
    const hostLine = (await until('its access line', () => loud.lines().find((l) => l.msg === 'access' && l.path === '/h')))!;
    expect(hostLine.host).toBe('***@app.example.com');
    expect(JSON.stringify(loud.lines())).not.toContain('hostsecret');
    expect(JSON.stringify(loud.lines())).not.toContain('secret');
    expect(JSON.stringify(loud.lines())).not.toContain('s3cr3t');
    // What the HTTP server refuses before any route (a smuggling shape, non-HTTP bytes, CONNECT) has its line too.
    // Its bytesOut is the body of the proxy's answer, as for any other answer.
    const answered = [
      await rawExchange(loud.port, 'POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'),
      await rawExchange(loud.port, '\x16\x03\x01 not http\r\n\r\n'),
      await rawExchange(loud.port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n'),
    ].map((r) => r.responses[0]);
    const refusedLines = await until('their access lines', () => {
      const lines = loud.lines().filter((l) => l.msg === 'access' && l.route === 'none' && [400, 405].includes(Number(l.status)) && l.path !== 'http://***@169.254.169.254/latest' && l.path !== '/h');
      return lines.length >= 3 ? lines : undefined;
    });
    expect(refusedLines!.map((l) => l.status).sort()).toEqual([400, 400, 405]);
    expect(refusedLines!.every((l) => l.client === '127.0.0.1')).toBe(true);
    expect(refusedLines!.find((l) => l.status === 405)).toMatchObject({ method: 'CONNECT' });
    const bodyBytes = (status: number) => Buffer.byteLength(answered.find((r) => r.status === status)!.body);
    expect(bodyBytes(400)).toBeGreaterThan(0);
    expect(refusedLines!.map((l) => l.bytesOut)).toEqual(refusedLines!.map((l) => bodyBytes(Number(l.status))));
    await new Promise((r) => setTimeout(r, 100));
    expect(quiet.lines().filter((l) => l.msg === 'access')).toEqual([]);
  } finally {
    await Promise.all([loud.stop(), quiet.stop()]);
    await backend.close();
  }
});

test("workers start with the bundle's memory settings (a small V8 heap, two malloc arenas)", async () => {
  const target = await startBackend('target');
  const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${target.port}`, HEALTH_CHECK_PATH: 'off', WORKERS: '1' });
  try {
    const [pid] = p.workers();
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const env = fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
    expect(argv).toEqual(expect.arrayContaining(['--max-semi-space-size=2', '--heap-growing-percent=50', '--max-old-space-size=256', '--incremental-marking-soft-trigger=30', '--incremental-marking-hard-trigger=60', '--expose-gc']));
    expect(env).toContain('MALLOC_ARENA_MAX=2');
    expect((await request(p.port, { path: '/' })).status).toBe(200);
  } finally {
    await p.stop('SIGKILL');
    await target.close();
  }
});

test("workers, which parse what clients send, do not hold Redis's address and password: only the primary talks to it", async () => {
  const target = await startBackend('target');
  const closed = await freePort();
  const p = await startBundle({
    NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${target.port}`, HEALTH_CHECK_PATH: 'off', WORKERS: '1',
    REDIS_URL: `redis://:hunter2@127.0.0.1:${closed}`,
  });
  try {
    const environ = (pid: number): string[] => fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
    expect(environ(p.child.pid!)).toContain(`REDIS_URL=redis://:hunter2@127.0.0.1:${closed}`);
    const [pid] = p.workers();
    expect(environ(pid).filter((v) => v.startsWith('REDIS_'))).toEqual([]);
    expect((await request(p.port, { path: '/' })).status).toBe(200);
  } finally {
    await p.stop('SIGKILL');
    await target.close();
  }
});

test('a worker allowed many connections gets an old space to match: 64 KiB per connection, never less than 256 MB', () => {
  const oldSpace = (maxConnections: number) => workerV8Flags({ maxConnections }).find((f) => f.startsWith('--max-old-space-size='));
  expect(oldSpace(2048)).toBe('--max-old-space-size=256');
  expect(oldSpace(1)).toBe('--max-old-space-size=256');
  expect(oldSpace(20_000)).toBe('--max-old-space-size=1250');
});

/** The inode of the socket listening on `port`, from /proc/net/tcp (state 0A is LISTEN). */
function listeningInode(port: number): string | undefined {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!fs.existsSync(file)) continue;
    for (const line of fs.readFileSync(file, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 9 && f[1].endsWith(`:${hex}`) && f[3] === '0A') return f[9];
    }
  }
  return undefined;
}

describe('a worker accepts on several handles of its one listening socket (libuv accepts one connection per handle per loop turn)', () => {
  test('it holds ACCEPT_HANDLES descriptors of the socket; MAX_CONNECTIONS counts the connections of all of them; in-flight requests on any finish on SIGTERM', async () => {
    const slow = http.createServer((req, res) => {
      req.resume();
      setTimeout(() => res.end(`done ${req.url}`), req.url?.startsWith('/slow') ? 700 : 0);
    });
    await new Promise<void>((r) => slow.listen(0, '127.0.0.1', r));
    const slowPort = (slow.address() as AddressInfo).port;
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${slowPort}`, HEALTH_CHECK_PATH: 'off', WORKERS: '1', MAX_CONNECTIONS: '20', IDLE_TIMEOUT: '30' });
    const sockets: net.Socket[] = [];
    try {
      const [pid] = p.workers();
      const inode = listeningInode(p.port);
      expect(inode).toBeDefined();
      const handles = fs.readdirSync(`/proc/${pid}/fd`).filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === `socket:[${inode}]`;
        } catch {
          return false;
        }
      });
      expect(handles.length).toBe(ACCEPT_HANDLES);

      // 60 connections at once, each with one request: 20 are served and stay open, the rest are closed.
      const outcomes = await Promise.all(
        Array.from({ length: 60 }, (_, i) =>
          new Promise<'served' | 'closed'>((resolve) => {
            const s = net.connect(p.port, '127.0.0.1', () => s.write(`GET /c${i} HTTP/1.1\r\nHost: app.example.com\r\n\r\n`));
            sockets.push(s);
            s.on('data', () => resolve('served'));
            s.on('close', () => resolve('closed'));
            s.on('error', () => resolve('closed'));
          }),
        ),
      );
      expect(outcomes.filter((o) => o === 'served').length).toBe(20);
      await until('20 open connections', async () => /load_balancer_active_connections 20\b/.test((await request(p.metricsPort, { path: '/metrics' })).body));
      for (const s of sockets.splice(0)) s.destroy();
      await until('all closed', async () => /load_balancer_active_connections 0\b/.test((await request(p.metricsPort, { path: '/metrics' })).body));

      // Twenty slow requests at once (spread over the handles), then SIGTERM: every one finishes.
      const inFlight = Array.from({ length: 20 }, (_, i) => request(p.port, { path: `/slow/${i}` }));
      await new Promise((r) => setTimeout(r, 200));
      const stopped = p.stop('SIGTERM', 10_000);
      const replies = await Promise.all(inFlight);
      expect(replies.map((r) => r.status)).toEqual(Array(20).fill(200));
      expect(await stopped).toBe(0);
    } finally {
      for (const s of sockets) s.destroy();
      await p.stop('SIGKILL');
      await new Promise((r) => slow.close(r));
    }
  });
});
