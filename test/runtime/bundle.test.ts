/**
 * The bundle (dist/karma-proxy.js) as the instance runs it: a child process with workers, real
 * backends and clients on 127.0.0.1.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { WebSocket, WebSocketServer } from 'ws';
import { rawExchange } from '../hardening/support';
import { Backend, startBackend } from '../support/backend';
import { startAwsStub } from '../support/aws-stub';
import { BUNDLE, Proxy, rssBytes, runBundle, startBundle } from '../support/bundle';
import { close, freePort, listen, pump, request, until } from '../support/net';

jest.setTimeout(60_000);

const MB = 1024 * 1024;

/** Samples the RSS of the proxy's workers every 20 ms while `work` runs; returns the peak growth. */
async function peakRssGrowth(p: Proxy, work: () => Promise<void>): Promise<{ growth: number; peak: number }> {
  const pids = p.workers();
  expect(pids.length).toBeGreaterThan(0);
  const base = Math.max(...pids.map(rssBytes));
  let peak = base;
  const timer = setInterval(() => {
    for (const pid of pids) {
      try {
        peak = Math.max(peak, rssBytes(pid));
      } catch {
        /* a worker gone mid-sample */
      }
    }
  }, 20);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  return { growth: peak - base, peak };
}

/** GETs /download and counts the body's bytes; a slow reader pauses after every chunk. */
function download(port: number, slow = false): Promise<number> {
  return new Promise((resolve, reject) => {
    let n = 0;
    http
      .get({ host: '127.0.0.1', port, path: '/download' }, (res) => {
        expect(res.statusCode).toBe(200);
        res.on('data', (c: Buffer) => {
          n += c.length;
          if (slow) {
            // The proxy must apply backpressure, not buffer the rest.
            res.pause();
            setTimeout(() => res.resume(), 1);
          }
        });
        res.on('end', () => resolve(n));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

describe('the bundle, on a static pool', () => {
  let backend: Backend;
  let p: Proxy;
  beforeAll(async () => {
    backend = await startBackend('big');
    p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off' });
  });
  afterAll(async () => {
    await p.stop();
    await backend.close();
  });

  test('a 50 MB download streams through without the proxy holding it', async () => {
    const chunk = crypto.randomBytes(MB);
    backend.handle = (_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': 50 * MB });
      pump(res, 50 * MB, { chunk });
    };
    // Warm up first (JIT, buffers, first sockets), so growth measures what the body costs.
    expect(await download(p.port)).toBe(50 * MB);
    let received = 0;
    const { growth } = await peakRssGrowth(p, async () => {
      received = await download(p.port, true);
    });
    expect(received).toBe(50 * MB);
    expect(growth).toBeLessThan(25 * MB);
  });

  test('a 50 MB upload streams through without the proxy holding it', async () => {
    backend.handle = (req, res) => {
      let n = 0;
      req.on('data', (c: Buffer) => (n += c.length));
      req.on('end', () => res.end(String(n)));
    };
    const chunk = crypto.randomBytes(MB);
    let answer = '';
    const { growth } = await peakRssGrowth(p, () =>
      new Promise<void>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: p.port, method: 'POST', path: '/upload', headers: { 'Content-Length': 50 * MB } }, (res) => {
          res.on('data', (c) => (answer += c));
          res.on('end', resolve);
        });
        req.on('error', reject);
        pump(req, 50 * MB, { chunk });
      }),
    );
    expect(answer).toBe(String(50 * MB));
    expect(growth).toBeLessThan(25 * MB);
  });

  test('a WebSocket upgrade is forwarded and echoes both ways, with no deprecation warning on stderr', async () => {
    const wsServer = http.createServer();
    const wss = new WebSocketServer({ server: wsServer });
    wss.on('connection', (sock, req) => {
      sock.send(`hello ${req.headers['x-forwarded-for']}`);
      sock.on('message', (m) => sock.send(`echo ${m.toString()}`));
    });
    const wsPort = await listen(wsServer);
    // Any deprecation warning would be a line of the log that is not JSON; --pending-deprecation shows
    // those Node has announced (http-proxy's url.parse). Node 22, the instance's, also warns of http-proxy's
    // util._extend, which Node 20 never does: the bundle must not contain it.
    const q = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${wsPort}`, HEALTH_CHECK_PATH: 'off', NODE_OPTIONS: '--pending-deprecation' });
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${q.port}/socket`);
      const got: string[] = [];
      await new Promise<void>((resolve, reject) => {
        ws.on('message', (m) => {
          got.push(m.toString());
          if (got.length === 1) ws.send('one');
          else if (got.length === 2) ws.send('two');
          else ws.close();
        });
        ws.on('close', () => resolve());
        ws.on('error', reject);
      });
      expect(got).toEqual(['hello 127.0.0.1', 'echo one', 'echo two']);
      expect(q.stderr).not.toMatch(/Deprecation/);
      expect(fs.readFileSync(BUNDLE, 'utf8')).not.toContain('_extend');
    } finally {
      await q.stop();
      wss.close();
      await close(wsServer);
    }
  });

  test('a worker that has proxied a request and a WebSocket never loaded https or tls', async () => {
    // Each worker writes the Node modules it loaded as it exits; https brings tls and OpenSSL's contexts
    // (~3 MiB of RSS), which only an https target would need.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-modules-'));
    const preload = path.join(dir, 'preload.js');
    fs.writeFileSync(
      preload,
      `if (require('node:cluster').isWorker) process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(dir)} + '/worker-' + process.pid, process.moduleLoadList.join('\\n')));`,
    );
    const wsServer = http.createServer((_req, res) => res.end('ok'));
    const wss = new WebSocketServer({ server: wsServer });
    wss.on('connection', (sock) => sock.send('hello'));
    const wsPort = await listen(wsServer);
    const q = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${wsPort}`, HEALTH_CHECK_PATH: 'off', NODE_OPTIONS: `--require=${preload}` });
    try {
      expect((await request(q.port)).body).toBe('ok');
      const ws = new WebSocket(`ws://127.0.0.1:${q.port}/socket`);
      const first = await new Promise<string>((resolve, reject) => {
        ws.on('message', (m) => resolve(m.toString()));
        ws.on('error', reject);
      });
      expect(first).toBe('hello');
      ws.close();
      expect(await q.stop()).toBe(0);
      const lists = fs.readdirSync(dir).filter((f) => f.startsWith('worker-'));
      expect(lists).toHaveLength(1);
      const loaded = fs.readFileSync(path.join(dir, lists[0]), 'utf8').split('\n');
      expect(loaded).toContain('NativeModule net');
      expect(loaded.filter((m) => /^NativeModule (https|tls|_tls_wrap)$/.test(m))).toEqual([]);
    } finally {
      await q.stop();
      wss.close();
      await close(wsServer);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a target has its connection counters at 0 before any traffic, as the seed\'s counters showed 0', async () => {
    const q = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', WORKERS: '2' });
    try {
      const series = (body: string, name: string) => new RegExp(`^${name}\\{target="127\\.0\\.0\\.1:${backend.port}"\\} (\\d+)$`, 'm').exec(body)?.[1];
      const m = (await until('the workers\' series', async () => {
        const body = (await request(q.metricsPort, { path: '/metrics' })).body;
        return series(body, 'load_balancer_failed_connections_total') !== undefined ? body : undefined;
      })) as string;
      expect(series(m, 'load_balancer_failed_connections_total')).toBe('0');
      expect(series(m, 'load_balancer_successful_connections_total')).toBe('0');
    } finally {
      await q.stop();
    }
  });

  test('/metrics has the five seed metric names and the request counters after traffic', async () => {
    backend.handle = (_req, res) => res.end('ok');
    for (let i = 0; i < 3; i++) expect((await request(p.port)).status).toBe(200);
    const m = await request(p.metricsPort, { path: '/metrics' });
    expect(m.status).toBe(200);
    expect(m.headers['content-type']).toMatch(/^text\/plain/);
    for (const name of [
      'load_balancer_active_connections',
      'load_balancer_health_check_latency_seconds',
      'load_balancer_failed_connections_total',
      'load_balancer_successful_connections_total',
      'load_balancer_node_health_status',
    ]) {
      expect(m.body).toMatch(new RegExp(`^# TYPE ${name} `, 'm'));
    }
    const ok = /^karma_requests_total\{route="pool",code="2xx"\} (\d+)$/m.exec(m.body);
    expect(Number(ok?.[1])).toBeGreaterThanOrEqual(3);
    expect(m.body).toMatch(/^load_balancer_successful_connections_total\{target="127\.0\.0\.1:\d+"\} \d+/m);
    expect(m.body).toMatch(/^karma_request_duration_seconds_count\{code="2xx"\} \d+/m);
    // The processes, summed over the primary and its workers: memory, descriptors, CPU, event loop stalls.
    const value = (name: string): number => Number(new RegExp(`^${name} ([\\d.e+-]+)$`, 'm').exec(m.body)?.[1]);
    expect(value('process_resident_memory_bytes')).toBeGreaterThan(20 * 1024 * 1024);
    expect(value('nodejs_heap_size_used_bytes')).toBeGreaterThan(1024 * 1024);
    expect(value('process_open_fds')).toBeGreaterThan(5);
    expect(value('process_cpu_seconds_total')).toBeGreaterThan(0);
    expect(value('nodejs_eventloop_stall_max_seconds')).toBeGreaterThanOrEqual(0);
    const h = await request(p.metricsPort, { path: '/healthz' });
    expect(h.status).toBe(200);
  });

  test('without active health checks, load_balancer_node_health_status still has each target, at 1 (in rotation)', async () => {
    const other = await startBackend('other');
    const q = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port},127.0.0.1:${other.port}`, HEALTH_CHECK_PATH: 'off', WORKERS: '2' });
    try {
      const m = await until('both series', async () => {
        const r = await request(q.metricsPort, { path: '/metrics' });
        return (r.body.match(/^load_balancer_node_health_status\{/gm) ?? []).length === 2 ? r : undefined;
      });
      for (const port of [backend.port, other.port]) {
        expect(m!.body).toMatch(new RegExp(`^load_balancer_node_health_status\\{target="127\\.0\\.0\\.1:${port}"\\} 1$`, 'm'));
      }
    } finally {
      await q.stop();
      await other.close();
    }
  });

  test("each route's unhealthy targets are a series of their own (an ALB's UnHealthyHostCount), read once for all workers, not added up", async () => {
    const sick = await startBackend('sick');
    sick.healthStatus = 500;
    const q = await startBundle({
      NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port},127.0.0.1:${sick.port}`, HEALTH_CHECK_PATH: '/health',
      HEALTH_CHECK_PERIOD: '1', UNHEALTHY_THRESHOLD: '2', HEALTHY_THRESHOLD: '2', WORKERS: '2',
    });
    const unhealthy = async (): Promise<string | undefined> =>
      /^karma_route_unhealthy_targets\{route="pool"\} (\d+)$/m.exec((await request(q.metricsPort, { path: '/metrics' })).body)?.[1];
    try {
      await until('one unhealthy target', async () => ((await unhealthy()) === '1' ? true : undefined), 15_000);
      sick.healthStatus = 200;
      await until('none unhealthy', async () => ((await unhealthy()) === '0' ? true : undefined), 15_000);
    } finally {
      await q.stop();
      await sick.close();
    }
  });

  test('/metrics and /healthz answer HEAD as GET without the body, and another method with 405 and Allow', async () => {
    for (const path of ['/metrics', '/healthz']) {
      const head = await request(p.metricsPort, { path, method: 'HEAD' });
      expect(head).toMatchObject({ status: 200, body: '' });
      expect(head.headers['content-type']).toBeDefined();
      const post = await request(p.metricsPort, { path, method: 'POST', body: 'x' });
      expect(post.status).toBe(405);
      expect(post.headers.allow).toBe('GET, HEAD');
    }
    expect((await request(p.metricsPort, { path: '/other', method: 'HEAD' })).status).toBe(404);
  });

  test('the metrics endpoint holds at most 64 connections: silent ones cannot starve /healthz, and close after 10 s', async () => {
    const opened: net.Socket[] = [];
    const closedAt: number[] = [];
    const t0 = Date.now();
    try {
      for (let i = 0; i < 70; i++) {
        const s = net.connect({ host: '127.0.0.1', port: p.metricsPort });
        s.on('error', () => undefined);
        s.on('close', () => closedAt.push(Date.now() - t0));
        opened.push(s);
        await new Promise((r) => s.once('connect', r));
      }
      // Past the bound each new connection takes the place of the oldest silent one.
      await until('the oldest six closed', () => closedAt.length >= 6 || undefined, 2000);
      expect(opened.slice(0, 6).every((s) => s.destroyed)).toBe(true);
      expect(opened.slice(6).some((s) => s.destroyed)).toBe(false);
      // A liveness probe while 64 silent connections are held is answered, at once.
      expect(await request(p.metricsPort, { path: '/healthz' })).toMatchObject({ status: 200 });
      expect(Date.now() - t0).toBeLessThan(5000);
      await new Promise((r) => setTimeout(r, 11_000));
      expect(closedAt.length).toBe(70);
      expect((await request(p.metricsPort, { path: '/healthz' })).status).toBe(200);
    } finally {
      for (const s of opened) s.destroy();
    }
  }, 25_000);
});

describe('the bundle answers failures with the right status', () => {
  test('a slow target gives 504, a dead one 502', async () => {
    const slow = await startBackend('slow');
    slow.handle = () => undefined;
    const dead = await freePort();
    const a = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${slow.port}`, UPSTREAM_TIMEOUT: '0.5', HEALTH_CHECK_PATH: 'off' });
    const b = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${dead}`, HEALTH_CHECK_PATH: 'off' });
    try {
      expect((await request(a.port)).status).toBe(504);
      expect((await request(b.port)).status).toBe(502);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
      await slow.close();
    }
  });

  test('a streamed upload to a target that resets every connection gets its 502 at once, never a 504 after UPSTREAM_TIMEOUT', async () => {
    const resetting = net.createServer((sock) => {
      sock.on('error', () => undefined);
      sock.resetAndDestroy();
    });
    const port = await listen(resetting);
    const p = await startBundle({
      NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${port}`, HEALTH_CHECK_PATH: 'off', WORKERS: '1',
      UPSTREAM_TIMEOUT: '5', RETRIES: '0', CIRCUIT_BREAKER_THRESHOLD: '1000000',
    });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const seen: { status: number; ms: number }[] = [];
      // The reset meets the body's writes in every order; some once left the try waiting for an end
      // that was read but never said (a failed write marks the read side errored), until the timeout.
      for (let i = 0; i < 400; i++) {
        seen.push(await new Promise((resolve, reject) => {
          const t0 = Date.now();
          const req = http.request({ host: '127.0.0.1', port: p.port, method: 'POST', path: '/upload', agent, headers: { 'Transfer-Encoding': 'chunked' } }, (res) => {
            res.resume();
            res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: Date.now() - t0 }));
          });
          req.on('error', reject);
          req.write('x'.repeat(50_000));
          setTimeout(() => req.end('y'.repeat(50_000)), 2);
        }));
      }
      expect(seen.filter((r) => r.status !== 502)).toEqual([]);
      expect(Math.max(...seen.map((r) => r.ms))).toBeLessThan(2000);
    } finally {
      agent.destroy();
      await p.stop();
      await close(resetting);
    }
  }, 60_000);

  test('a service with no running task gives 503 with Retry-After', async () => {
    // A minimal ECS endpoint (awsJson1_1) whose services have no task.
    const ecs = http.createServer((req, res) => {
      req.resume();
      res.writeHead(200, { 'Content-Type': 'application/x-amz-json-1.1' });
      res.end(JSON.stringify({ taskArns: [] }));
    });
    const ecsPort = await listen(ecs);
    const p = await startBundle({
      DOMAIN: 'example.com',
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'test',
      AWS_SECRET_ACCESS_KEY: 'test',
      AWS_ENDPOINT_URL_ECS: `http://127.0.0.1:${ecsPort}`,
      AWS_ENDPOINT_URL_EC2: `http://127.0.0.1:${ecsPort}`,
    });
    try {
      const r = await request(p.port, { headers: { Host: 'api-8080-prod.example.com' } });
      expect(r.status).toBe(503);
      expect(r.headers['retry-after']).toBeDefined();
    } finally {
      await p.stop();
      await close(ecs);
    }
  });
});

describe('the bundle against a local AWS stand-in', () => {
  /** A minimal ECS endpoint (awsJson1_1) whose every service has one RUNNING awsvpc task at 127.0.0.1. */
  const oneTaskOnLoopback = () => http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const op = String(req.headers['x-amz-target']).split('.').pop();
      const arn = 'arn:aws:ecs:us-east-1:123456789012:task/prod/0123456789abcdef';
      const body = op === 'ListTasks'
        ? { taskArns: [arn] }
        : {
          tasks: [{
            taskArn: arn, lastStatus: 'RUNNING', desiredStatus: 'RUNNING', healthStatus: 'UNKNOWN',
            attachments: [{ type: 'ElasticNetworkInterface', status: 'ATTACHED', details: [{ name: 'privateIPv4Address', value: '127.0.0.1' }] }],
          }],
          failures: [],
        };
      res.writeHead(200, { 'Content-Type': 'application/x-amz-json-1.1' });
      res.end(JSON.stringify(body));
    });
  });
  const stubEnv = (port: number): Record<string, string> => ({
    DOMAIN: 'example.com',
    HEALTH_CHECK_PATH: 'off',
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    AWS_ENDPOINT_URL_ECS: `http://127.0.0.1:${port}`,
  });

  test('routes to the RUNNING task the stand-in reports on loopback, with no setting beyond the endpoint', async () => {
    const backend = await startBackend('task');
    const ecs = oneTaskOnLoopback();
    const ecsPort = await listen(ecs);
    const p = await startBundle(stubEnv(ecsPort));
    try {
      const r = await request(p.port, { headers: { Host: `web-${backend.port}-prod.example.com` } });
      expect(r).toMatchObject({ status: 200, body: 'task' });
      expect(backend.seen).toHaveLength(1);
      // Said at start: on an instance, loopback would be its own services.
      expect(p.stderr.split('"msg":"LOOPBACK_TARGETS is on: an AWS endpoint is on loopback').length - 1).toBe(1);
    } finally {
      await p.stop();
      await close(ecs);
      await backend.close();
    }
  });

  test('LOOPBACK_TARGETS=false still refuses the stand-in\'s loopback task', async () => {
    const backend = await startBackend('task');
    const ecs = oneTaskOnLoopback();
    const ecsPort = await listen(ecs);
    const p = await startBundle({ ...stubEnv(ecsPort), LOOPBACK_TARGETS: 'false' });
    try {
      const r = await request(p.port, { headers: { Host: `web-${backend.port}-prod.example.com` } });
      expect(r.status).toBe(503);
      expect(backend.seen).toHaveLength(0);
      expect(p.stderr).not.toContain('LOOPBACK_TARGETS is on');
    } finally {
      await p.stop();
      await close(ecs);
      await backend.close();
    }
  });
});

describe('the bundle starts and stops cleanly', () => {
  test('SIGTERM during a 2 s request: the request completes and the process exits 0', async () => {
    const backend = await startBackend('slowish');
    backend.handle = (_req, res) => setTimeout(() => res.end('finished'), 2000);
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', WORKERS: '2' });
    try {
      const inflight = request(p.port, { timeoutMs: 10_000 });
      await new Promise((r) => setTimeout(r, 300));
      expect(backend.seen).toHaveLength(1);
      const exit = p.stop('SIGTERM');
      // A second SIGTERM (an impatient operator, a supervisor) changes nothing, and is said.
      await new Promise((r) => setTimeout(r, 200));
      const again = p.stop('SIGTERM');
      const reply = await inflight;
      expect(reply).toMatchObject({ status: 200, body: 'finished' });
      expect(await exit).toBe(0);
      expect(await again).toBe(0);
      expect(p.lines().filter((l) => l.msg === 'already shutting down')).toEqual([expect.objectContaining({ signal: 'SIGTERM' })]);
    } finally {
      await p.stop('SIGKILL');
      await backend.close();
    }
  });

  test('the longest SHUTDOWN_TIMEOUT accepted is a long wait, not none: an idle proxy still stops cleanly at once', async () => {
    const backend = await startBackend('idle');
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '2147483' });
    try {
      expect(await p.stop('SIGTERM', 10_000)).toBe(0);
      expect(p.lines().filter((l) => l.level !== 'info')).toEqual([]); // no timer overflow, no workers killed
    } finally {
      await p.stop('SIGKILL');
      await backend.close();
    }
  });

  test('at SHUTDOWN_TIMEOUT a request no target has seen gets a 503 and Connection: close; one a target has is cut', async () => {
    const backend = await startBackend('slow');
    backend.handle = (_req, res) => void setTimeout(() => res.end('too late'), 10_000);
    // One socket to the target: the POST holds it, the GET waits in line for it.
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '1', UPSTREAM_TIMEOUT: '30', POOL_SIZE: '1', LOG_CONNECTIONS: 'true' });
    try {
      const posted = request(p.port, { method: 'POST', path: '/order', body: 'pay once', timeoutMs: 10_000 }).then(() => 'answered', (err: Error) => `cut: ${err.message}`);
      await until('the POST at the target', () => backend.seen.length === 1);
      const queued = request(p.port, { path: '/queued', timeoutMs: 10_000 });
      await new Promise((r) => setTimeout(r, 100));
      const started = Date.now();
      const exit = p.stop('SIGTERM');
      const reply = await queued;
      expect(reply.status).toBe(503);
      expect(reply.headers.connection).toBe('close');
      expect(reply.headers['retry-after']).toBe('1');
      expect(Date.now() - started).toBeGreaterThanOrEqual(900);
      // The target has the POST and may act on it: no 503 inviting the client to send it again.
      expect(await posted).toMatch(/^cut: /);
      expect(backend.seen).toHaveLength(1);
      expect(await exit).toBe(0);
      // Both are in the access log before the process exits: the 503, and the cut one, which the proxy
      // cut (not the client: no 499), as a 503 saying so.
      const access = p.lines().filter((l) => l.msg === 'access').map((l) => [l.method, l.path, l.status, l.error]);
      expect(access).toEqual(expect.arrayContaining([['GET', '/queued', 503, undefined], ['POST', '/order', 503, 'cut_at_shutdown']]));
      // The 503's bytes, as for the proxy's other answers; none for the one cut.
      const bytesOut = Object.fromEntries(p.lines().filter((l) => l.msg === 'access').map((l) => [l.path, l.bytesOut]));
      expect(bytesOut).toEqual({ '/queued': Buffer.byteLength(reply.body), '/order': 0 });
    } finally {
      await p.stop('SIGKILL');
      await backend.close();
    }
  });

  test('a WebSocket still open at SHUTDOWN_TIMEOUT is closed, and its access line says the proxy cut it', async () => {
    const wsServer = http.createServer();
    const wss = new WebSocketServer({ server: wsServer });
    wss.on('connection', (sock) => sock.send('hello'));
    const wsPort = await listen(wsServer);
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${wsPort}`, HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '0.5', LOG_CONNECTIONS: 'true' });
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${p.port}/live`);
      ws.on('error', () => undefined);
      const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
      await new Promise<void>((resolve) => ws.once('message', () => resolve()));
      expect(await p.stop('SIGTERM')).toBe(0);
      expect(await closed).toBe(1006); // cut, not closed by either peer
      expect(p.lines().filter((l) => l.msg === 'access').map((l) => [l.path, l.status, l.error])).toEqual([['/live', 101, 'cut_at_shutdown']]);
    } finally {
      await p.stop('SIGKILL');
      for (const c of wss.clients) c.terminate();
      wss.close();
      await close(wsServer);
    }
  });

  test('a stream still under way at SHUTDOWN_TIMEOUT is cut visibly (no last chunk) and logged with its status and the cut', async () => {
    const backend = await startBackend('stream');
    let ticker: NodeJS.Timeout | undefined;
    backend.handle = (_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      ticker = setInterval(() => res.write('data: tick\n\n'), 50);
    };
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '0.5', LOG_CONNECTIONS: 'true' });
    try {
      const got = rawExchange(p.port, 'GET /events HTTP/1.1\r\nHost: a\r\n\r\n', { deadlineMs: 10_000 });
      await until('the stream at the target', () => backend.seen.length === 1);
      expect(await p.stop('SIGTERM')).toBe(0);
      const r = await got;
      expect(r.data).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*Transfer-Encoding: chunked\r\n/);
      expect(r.data).toContain('data: tick');
      expect(r.data.endsWith('0\r\n\r\n')).toBe(false);
      expect(p.lines().filter((l) => l.msg === 'access').map((l) => [l.path, l.status, l.error])).toEqual([['/events', 200, 'cut_at_shutdown']]);
    } finally {
      clearInterval(ticker);
      await p.stop('SIGKILL');
      await backend.close();
    }
  });

  test('a request cut at SHUTDOWN_TIMEOUT, and a TCP tunnel cut then, are logged before the process exits', async () => {
    const backend = await startBackend('slow');
    backend.handle = (_req, res) => void setTimeout(() => res.end('too late'), 10_000);
    const http1 = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '0.5', LOG_CONNECTIONS: 'true' });
    let echoHeard: string | undefined;
    const echo = net.createServer((s) => {
      s.pipe(s);
      s.on('end', () => (echoHeard ??= 'end'));
      s.on('error', (e: NodeJS.ErrnoException) => (echoHeard ??= e.code));
    });
    const echoPort = await listen(echo);
    const tcp = await startBundle({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: `127.0.0.1:${echoPort}`, HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '0.5', LOG_CONNECTIONS: 'true' });
    const tunnel = net.connect(tcp.port, '127.0.0.1');
    tunnel.on('error', () => undefined);
    const connected = new Promise<void>((r) => tunnel.once('connect', () => r()));
    try {
      const cut = request(http1.port, { path: '/slow', timeoutMs: 10_000 }).catch(() => undefined);
      await until('the request at the target', () => backend.seen.length === 1);
      await connected;
      tunnel.write('ping');
      await new Promise<void>((r) => tunnel.once('data', () => r()));
      expect(await Promise.all([http1.stop('SIGTERM'), tcp.stop('SIGTERM')])).toEqual([0, 0]);
      await cut;
      expect(http1.lines().filter((l) => l.msg === 'access').map((l) => [l.path, l.status, l.error])).toEqual([['/slow', 503, 'cut_at_shutdown']]);
      const closed = tcp.lines().filter((l) => l.msg === 'tcp connection closed');
      expect(closed).toHaveLength(1);
      // Who it was, though the socket is gone by the time the line is written.
      expect(closed[0]).toMatchObject({ client: '127.0.0.1', target: `127.0.0.1:${echoPort}`, bytesIn: 4, error: 'cut_at_shutdown' });
      // Cut, and told so: a reset, not the end of a stream that ended whole.
      await until('the target heard', () => echoHeard !== undefined);
      expect(echoHeard).toBe('ECONNRESET');
    } finally {
      tunnel.destroy();
      await Promise.all([http1.stop('SIGKILL'), tcp.stop('SIGKILL')]);
      await close(echo);
      await backend.close();
    }
  });

  test('a bad configuration exits 2 with one message naming each bad variable', async () => {
    const r = await runBundle({ PORT: 'eighty', NODE_FILTER: 'static', POOL_SIZE: '-3', LOG_CONNECTIONS: 'sometimes', HEALTH_CHECK_TIMOUT: '5' });
    expect(r.code).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    for (const name of ['PORT', 'POOL_SIZE', 'LOG_CONNECTIONS', 'STATIC_TARGETS']) expect(lines[0]).toContain(name);
    expect(lines[0]).not.toContain('NODE_FILTER must');
    // A likely typo is in the same message, not left for the next start.
    expect(lines[0]).toContain('HEALTH_CHECK_TIMOUT is not a setting and is ignored; did you mean HEALTH_CHECK_TIMEOUT?');
  });

  test('a HOST named but resolving to nothing is a bad setting: exit 2 naming it, not a failed listen', async () => {
    // `.invalid` never resolves (RFC 2606); the metrics endpoint listens there too (METRICS_HOST defaults to HOST).
    const r = await runBundle({ NODE_FILTER: 'static', STATIC_TARGETS: '127.0.0.1:9', HEALTH_CHECK_PATH: 'off', HOST: 'nosuch.invalid', PORT: '0', METRICS_PORT: '0', WORKERS: '1' });
    expect(r.code).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain("HOST must be an IP address (0.0.0.0, ::, 127.0.0.1) or a host name this machine resolves (got 'nosuch.invalid', which resolves to nothing)");
    expect(lines[0]).not.toContain('METRICS_HOST');
  });

  test('STATIC_TARGETS naming the proxy itself stops the start (exit 2) rather than looping every connection back into it', async () => {
    const port = await freePort();
    const r = await runBundle({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: `127.0.0.1:${port}`, HEALTH_CHECK_PATH: 'off', HOST: '127.0.0.1', PORT: String(port), METRICS_HOST: '127.0.0.1', METRICS_PORT: '0', WORKERS: '1' });
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringContaining(`STATIC_TARGETS must not name the proxy itself (127.0.0.1:${port}: its own PORT or METRICS_PORT at an address it listens on)`)]);
  });

  test('STATIC_TARGETS naming the proxy itself is named with the other bad settings, in one message', async () => {
    const port = await freePort();
    const r = await runBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${port}`, HEALTH_CHECK_PATH: 'off', HOST: '127.0.0.1', PORT: String(port), METRICS_PORT: '0', WORKERS: '1', RETRIES: '99', IDLE_TIMEOUT: 'abc' });
    expect(r.code).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    for (const named of ['RETRIES', 'IDLE_TIMEOUT', `STATIC_TARGETS must not name the proxy itself (127.0.0.1:${port}`]) expect(lines[0]).toContain(named);
  });

  test('a HOST resolving to nothing is named in the same message as the other bad settings, not at the next start', async () => {
    const r = await runBundle({ NODE_FILTER: 'static', STATIC_TARGETS: '127.0.0.1:9', HEALTH_CHECK_PATH: 'off', HOST: 'nosuch.invalid', PORT: 'abc', METRICS_HOST: 'other.invalid', METRICS_PORT: '0', WORKERS: '1' });
    expect(r.code).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain("PORT must be");
    expect(lines[0]).toContain("HOST must be an IP address (0.0.0.0, ::, 127.0.0.1) or a host name this machine resolves (got 'nosuch.invalid', which resolves to nothing)");
    expect(lines[0]).toContain("METRICS_HOST must be an IP address (0.0.0.0, ::, 127.0.0.1) or a host name this machine resolves (got 'other.invalid', which resolves to nothing)");
  });

  test('a METRICS_PORT that is taken stops the proxy with exit 1 and a message naming it: /healthz lives there', async () => {
    const taken = net.createServer();
    const port = await listen(taken);
    try {
      const r = await runBundle({ NODE_FILTER: 'static', STATIC_TARGETS: '127.0.0.1:9', HEALTH_CHECK_PATH: 'off', HOST: '127.0.0.1', PORT: '0', METRICS_HOST: '127.0.0.1', METRICS_PORT: String(port), WORKERS: '1' });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`"msg":"metrics endpoint cannot listen","pid":\\d+,"port":${port}`));
      // The seeds had no such port: two of their processes on one host never met on it.
      expect(r.stderr).toContain('"hint":"another process has this port (a second proxy on this host?): give each its own METRICS_PORT"');
      // No signal came: the stop says why it is, not a SIGTERM nobody sent.
      expect(r.stdout).toContain('"msg":"shutting down","pid":');
      expect(r.stdout).toContain('"reason":"metrics endpoint cannot listen"');
      expect(r.stderr + r.stdout).not.toContain('"signal":"SIGTERM"');
    } finally {
      await close(taken);
    }
  });

  test('a PORT that is taken stops every worker with exit 1, said once, and no request is said to be cut', async () => {
    const taken = net.createServer();
    const port = await listen(taken);
    try {
      const r = await runBundle({ NODE_FILTER: 'static', STATIC_TARGETS: '127.0.0.1:9', HEALTH_CHECK_PATH: 'off', HOST: '127.0.0.1', PORT: String(port), METRICS_HOST: '127.0.0.1', METRICS_PORT: '0', WORKERS: '2' });
      expect(r.code).toBe(1);
      expect((r.stdout + r.stderr).match(/"msg":"worker cannot start"/g)).toHaveLength(1);
      // No worker was serving: there was nothing in flight to cut.
      expect(r.stdout + r.stderr).not.toContain('requests in flight were cut');
    } finally {
      await close(taken);
    }
  });

  /** A SIGTERM now stops the starting proxy cleanly: exit 0, said, and never ready. */
  async function stoppedBeforeReady(child: import('node:child_process').ChildProcess, exited: Promise<number | string>, out: () => string): Promise<void> {
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    expect(await exited).toBe(0);
    clearTimeout(timer);
    expect(out()).toContain('"msg":"shutting down"');
    expect(out()).not.toContain('"msg":"ready"');
  }

  test('a SIGTERM during start-up, before the workers serve, is a clean stop: exit 0, nothing said to be cut', async () => {
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, [BUNDLE], {
      cwd: os.tmpdir(),
      env: { PATH: process.env.PATH ?? '', NODE_FILTER: 'static', STATIC_TARGETS: '127.0.0.1:9', HEALTH_CHECK_PATH: 'off', HOST: '127.0.0.1', PORT: '0', METRICS_HOST: '127.0.0.1', METRICS_PORT: '0', WORKERS: '2' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d));
    child.stderr!.on('data', (d: Buffer) => (out += d));
    const exited = new Promise<number | string>((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal ?? -1)));
    try {
      // The primary forks once its own handlers are set: signal it as soon as a worker exists, while
      // that worker is still loading.
      const children = (): string => {
        try {
          return fs.readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim();
        } catch {
          return '';
        }
      };
      await until('a worker forked', () => children() !== '', 10_000, 1);
      await stoppedBeforeReady(child, exited, () => out);
      expect(out).not.toContain('requests in flight were cut');
    } finally {
      child.kill('SIGKILL');
    }
  });

  test('a SIGTERM while discovery is still loading (the AWS SDK) stops the proxy cleanly: exit 0, and no worker is started', async () => {
    const { spawn } = await import('node:child_process');
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-home-')); // no shared AWS config: no region
    const child = spawn(process.execPath, [BUNDLE], {
      cwd: os.tmpdir(),
      env: {
        PATH: process.env.PATH ?? '', HOME: home, DOMAIN: 'example.com', AWS_EC2_METADATA_DISABLED: 'true',
        HOST: '127.0.0.1', PORT: '0', METRICS_HOST: '127.0.0.1', METRICS_PORT: '0', WORKERS: '2',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d));
    child.stderr!.on('data', (d: Buffer) => (out += d));
    const exited = new Promise<number | string>((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal ?? -1)));
    let forked = false;
    // Watched every millisecond until the exit: a worker forked and stopped at once still lives for a few.
    const watch = setInterval(() => {
      try {
        forked ||= fs.readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim() !== '';
      } catch {
        // exited
      }
    }, 1);
    try {
      // The missing region is said just before the primary loads the SDK behind ECS discovery, which
      // takes a few hundred milliseconds: the signal comes while it loads.
      await until('the missing region said', () => out.includes('AWS_REGION is not set'), 10_000, 1);
      await stoppedBeforeReady(child, exited, () => out);
      expect(forked).toBe(false);
    } finally {
      clearInterval(watch);
      child.kill('SIGKILL');
      fs.rmSync(home, { recursive: true, force: true });
    }
  });

  describe('the AWS region', () => {
    let home: string;
    beforeAll(() => (home = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-home-')))); // no shared AWS config
    afterAll(() => fs.rmSync(home, { recursive: true, force: true }));

    test('none set is said once at start, and the proxy still serves what needs no discovery', async () => {
      // ecs mode: a Host outside the domain is refused before any discovery, region or not.
      const p = await startBundle({ HOME: home, DOMAIN: 'example.com', AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' });
      try {
        expect((await request(p.port, { headers: { Host: 'localhost' } })).status).toBe(400);
        expect(p.stderr.split('AWS_REGION is not set').length - 1).toBe(1);
      } finally {
        await p.stop();
      }
    });

    test('a malformed AWS_REGION is a bad setting', async () => {
      const r = await runBundle({ HOME: home, NODE_FILTER: 'asg', AWS_REGION: 'EU West 1' });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('AWS_REGION must be a region name');
    });

    test.each([
      ['AWS_DEFAULT_REGION (the AWS CLI and the seeds read it)', 'eu-west-1', false],
      ['the instance metadata service (IMDSv2, as on EC2)', 'eu-west-3', true],
    ])('comes from %s when AWS_REGION is unset', async (_from, region, fromImds) => {
      const stub = await startAwsStub({ asgs: { web: [] } });
      const tokens: string[] = [];
      const imds = http.createServer((req, res) => {
        if (req.method === 'PUT' && req.url === '/latest/api/token') {
          tokens.push(String(req.headers['x-aws-ec2-metadata-token-ttl-seconds']));
          res.end('imds-token');
        } else if (req.url === '/latest/meta-data/placement/region' && req.headers['x-aws-ec2-metadata-token'] === 'imds-token') res.end(region);
        else res.writeHead(401).end();
      });
      const imdsPort = await listen(imds);
      const { AWS_REGION: _unset, ...env } = stub.env();
      const p = await startBundle({
        ...env,
        HOME: home,
        NODE_FILTER: 'asg',
        ASG_NAME: 'web',
        HEALTH_CHECK_PATH: 'off',
        ...(fromImds
          ? { AWS_EC2_METADATA_DISABLED: '', AWS_EC2_METADATA_SERVICE_ENDPOINT: `http://127.0.0.1:${imdsPort}` }
          : { AWS_DEFAULT_REGION: region }),
      });
      try {
        await until('a discovery call', () => stub.calls.some((c) => c.api === 'DescribeAutoScalingGroups'));
        expect([...new Set(stub.calls.map((c) => c.region))]).toEqual([region]);
        expect(tokens.length > 0).toBe(fromImds);
      } finally {
        await p.stop('SIGKILL');
        await Promise.all([stub.close(), close(imds)]);
      }
    });
  });

  test('AWS_DEFAULT_PROFILE names the profile when AWS_PROFILE is unset, as the AWS CLI and the seeds\' Go SDK read it: its credentials and region; keys in the environment come first', async () => {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-profile-'));
    fs.mkdirSync(path.join(home, '.aws'));
    fs.writeFileSync(path.join(home, '.aws', 'config'), '[default]\nregion = sa-east-1\n[profile seedprof]\nregion = ap-south-1\n');
    fs.writeFileSync(path.join(home, '.aws', 'credentials'), '[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = x\n[seedprof]\naws_access_key_id = AKIDSEEDPROF\naws_secret_access_key = y\n');
    const stub = await startAwsStub({ asgs: { web: [] } });
    const { AWS_REGION: _r, AWS_ACCESS_KEY_ID: _k, AWS_SECRET_ACCESS_KEY: _s, ...env } = stub.env();
    const base = { ...env, HOME: home, NODE_FILTER: 'asg', ASG_NAME: 'web', HEALTH_CHECK_PATH: 'off' };
    /** Who signed the discovery calls of a proxy started with `extra`, and for which region. */
    const signers = async (extra: Record<string, string>): Promise<string[]> => {
      stub.resetCalls();
      const p = await startBundle({ ...base, ...extra });
      try {
        await until('a discovery call', () => stub.calls.some((c) => c.api === 'DescribeAutoScalingGroups'));
        return [...new Set(stub.calls.map((c) => `${c.accessKeyId}@${c.region}`))];
      } finally {
        await p.stop('SIGKILL');
      }
    };
    try {
      expect(await signers({ AWS_DEFAULT_PROFILE: 'seedprof' })).toEqual(['AKIDSEEDPROF@ap-south-1']);
      // As with the AWS CLI and the Go SDK, keys in the environment are read before any profile, even
      // one that does not exist.
      expect(await signers({ AWS_DEFAULT_PROFILE: 'ghost', AWS_REGION: 'eu-west-1', AWS_ACCESS_KEY_ID: 'AKIDENV', AWS_SECRET_ACCESS_KEY: 'z' })).toEqual(['AKIDENV@eu-west-1']);
    } finally {
      await stub.close();
      fs.rmSync(home, { recursive: true, force: true });
    }
  });

  test("settings in ./.env are read, as the Karma Proxy seed read them; variables already set win", async () => {
    const backend = await startBackend('dotenv');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-dotenv-'));
    // The seed README's own format: quoted values, a comment.
    const evil = path.join(dir, 'evil.js');
    fs.writeFileSync(evil, "require('fs').writeFileSync(__filename + '.ran', '')");
    // Not settings: never taken from a file in the working directory (NODE_OPTIONS would run code in every worker).
    const foreign = `NODE_OPTIONS="--require ${evil}"\nAWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:1\n`;
    // A value made of another line's, as godotenv expands it.
    fs.writeFileSync(path.join(dir, '.env'), `# settings\nNODE_FILTER="static"\nBACKEND=127.0.0.1\nSTATIC_TARGETS="\${BACKEND}:${backend.port}"\nHEALTH_CHECK_PATH=off\nWORKERS=3\nSHUTDOWN_TIMOUT=5\n${foreign}`);
    const p = await startBundle({ WORKERS: '1' }, 20_000, dir);
    try {
      expect((await request(p.port)).body).toBe('dotenv');
      expect(p.lines().find((l) => l.msg === 'ready')).toMatchObject({ workers: 1, nodeFilter: 'static' });
      expect(p.lines().find((l) => l.msg === 'settings read from .env (variables already set win)')).toMatchObject({
        file: path.join(dir, '.env'),
        ignored: expect.arrayContaining(['BACKEND', 'NODE_OPTIONS', 'AWS_EC2_METADATA_SERVICE_ENDPOINT']),
      });
      expect(fs.existsSync(`${evil}.ran`)).toBe(false);
      // A typo in the file is said as one in the environment is.
      expect(p.stderr).toContain('"msg":"SHUTDOWN_TIMOUT in .env is not a setting and is ignored; did you mean SHUTDOWN_TIMEOUT?"');
    } finally {
      await p.stop();
      await backend.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a PORT from ./.env is said to move the listener: the Karma Proxy seed ignored it (its .env templates carry the app's)", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-dotenv-'));
    try {
      fs.writeFileSync(path.join(dir, '.env'), 'PORT=3000\nJWT_SECRET=x\nNODE_FILTER=static\n'); // no STATIC_TARGETS: it stops after reading
      const r = await runBundle({}, 15_000, dir);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('"msg":"PORT=3000 from .env: the proxy listens there (the Karma Proxy seed ignored PORT and always listened on 6969)"');
      // Set in the environment, it is the user's own: nothing said.
      fs.writeFileSync(path.join(dir, '.env'), 'PORT=3000\nNODE_FILTER=static\n');
      expect((await runBundle({ PORT: '3000' }, 15_000, dir)).stderr).not.toContain('from .env: the proxy listens there');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a .env line that is no setting stops the start with its number, never its text; godotenv\'s KEY: value is read', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-dotenv-'));
    try {
      // A space for the '=': Node 20's parser would take it into the next line's name and lose PORT.
      fs.writeFileSync(path.join(dir, '.env'), 'NODE_FILTER=static\nREDIS_URL redis://:Sup3rS3cret@10.0.0.5:6379\nPORT=1\nMULTI="a\nb"\nWORKERS 2\nPOOL_TIMEOUT=abc\n');
      const r = await runBundle({ STATIC_TARGETS: '10.0.0.1:80', HEALTH_CHECK_PATH: 'nope' }, 15_000, dir);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`${path.join(dir, '.env')} line 2 is not KEY=value (its text is not shown)`);
      expect(r.stderr).toContain('.env line 6 is not KEY=value');
      expect(r.stderr).not.toMatch(/line [13457] /);
      // The other bad settings in the same message, the file's own among them.
      expect(r.stderr).toContain('HEALTH_CHECK_PATH');
      expect(r.stderr).toContain("POOL_TIMEOUT must be");
      expect(r.stderr + r.stdout).not.toContain('Sup3rS3cret');

      const backend = await startBackend('yaml-ish');
      try {
        fs.writeFileSync(path.join(dir, '.env'), `NODE_FILTER: static\nexport STATIC_TARGETS: 127.0.0.1:${backend.port}\nHEALTH_CHECK_PATH: off\n`);
        const p = await startBundle({}, 20_000, dir);
        try {
          expect((await request(p.port)).body).toBe('yaml-ish');
        } finally {
          await p.stop();
        }
      } finally {
        await backend.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('DOMAIN is required in ecs mode', async () => {
    const r = await runBundle({ NODE_FILTER: 'ecs' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('DOMAIN is required');
  });
});

describe('the bundle at start, with default health checks', () => {
  test('serves round-robin over 3 backends exactly from its first request', async () => {
    const backends = await Promise.all(['a', 'b', 'c'].map(startBackend));
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: backends.map((b) => `127.0.0.1:${b.port}`).join(',') });
    try {
      const names: string[] = [];
      for (let i = 0; i < 9; i++) names.push((await request(p.port)).body);
      const counts = names.reduce<Record<string, number>>((m, n) => ((m[n] = (m[n] ?? 0) + 1), m), {});
      expect(counts).toEqual({ a: 3, b: 3, c: 3 });
      expect(new Set(names.slice(0, 3)).size).toBe(3);
      expect(backends.every((b) => b.healthChecks >= 1)).toBe(true); // checked on /ping before serving
    } finally {
      await p.stop();
      await Promise.all(backends.map((b) => b.close()));
    }
  });
});
