/**
 * The limits that keep a 512 MiB instance standing: client connections (MAX_CONNECTIONS), routes
 * (MAX_ROUTES), sockets per target (POOL_SIZE), header count and size (MAX_HEADERS, MAX_HEADER_SIZE).
 * Each is a setting with a default, holds against the real bundle, and counts
 * `karma_limit_hits_total{limit}` when it is reached. The server's timeouts are set explicitly, and
 * SECURITY.md states every one of these with its default.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { TargetRegistry } from '../../runtime/balancer';
import { loadConfig, SETTINGS } from '../../runtime/config';
import { Forwarder } from '../../runtime/forward';
import { IDLE_EVICT_MS } from '../../runtime/downstream';
import { RouteTable } from '../../runtime/routes';
import { createProxyServer } from '../../runtime/server';
import { Proxy, startBundle } from '../support/bundle';
import { AwsStub, startAwsStub } from '../support/aws-stub';
import { close, listen, request, until } from '../support/net';
import { metric, rawExchange, RecordingBackend, startRecordingBackend } from './support';

jest.setTimeout(60_000);

const LIMITS = ['MAX_CONNECTIONS', 'MAX_ROUTES', 'POOL_SIZE', 'MAX_HEADERS', 'MAX_HEADER_SIZE'] as const;
const TIMEOUTS = ['HEADERS_TIMEOUT', 'REQUEST_TIMEOUT', 'IDLE_TIMEOUT', 'UPSTREAM_TIMEOUT', 'POOL_TIMEOUT'] as const;

const settingOf = (env: string): { env: string; default: unknown } => Object.values(SETTINGS).find((s) => s.env === env)!;

/** Opens a connection and completes one request on it, leaving it idle and open (keep-alive). */
function idleConnection(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => s.write('GET /hold HTTP/1.1\r\nHost: app.example.com\r\n\r\n'));
    s.once('data', () => resolve(s));
    s.once('error', reject);
    s.once('close', () => reject(new Error('closed before answering')));
  });
}

describe('defaults', () => {
  test('every limit and timeout is a setting with a default, and the defaults fit a 512 MiB instance', () => {
    const c = loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: '127.0.0.1:8080' });
    for (const env of [...LIMITS, ...TIMEOUTS]) expect(typeof settingOf(env).default).toBe('string');
    expect(c).toMatchObject({
      maxConnections: 2048,
      maxRoutes: 1000,
      poolSize: 100,
      maxHeaders: 100,
      maxHeaderSize: 16_384,
      headersTimeoutMs: 10_000,
      requestTimeoutMs: 0,
      idleTimeoutMs: 60_000,
      upstreamTimeoutMs: 60_000,
      poolTimeoutMs: 2000,
    });
  });

  test('SECURITY.md states each limit and timeout with its default', () => {
    const doc = fs.readFileSync(path.join(__dirname, '..', '..', 'SECURITY.md'), 'utf8');
    for (const env of [...LIMITS, ...TIMEOUTS]) {
      const row = doc.split('\n').find((l) => l.startsWith(`| \`${env}\` |`));
      expect({ env, row: row !== undefined }).toEqual({ env, row: true });
      expect(row).toContain(`\`${String(settingOf(env).default)}\``);
    }
  });

  test('the client-facing server takes its timeouts and limits from the settings, none left to defaults', async () => {
    const config = loadConfig({
      NODE_FILTER: 'static',
      STATIC_TARGETS: '127.0.0.1:8080',
      HEADERS_TIMEOUT: '7',
      REQUEST_TIMEOUT: '70',
      IDLE_TIMEOUT: '17',
      MAX_CONNECTIONS: '123',
      MAX_HEADER_SIZE: '4096',
    });
    const registry = new TargetRegistry({ poolSize: 1, breakerThreshold: 5, breakerTimeoutMs: 1000 });
    const routes = new RouteTable({ name: 'none', discover: async () => [] }, registry, { negativeCacheTtlMs: 1000, maxRoutes: 1, routeIdleTtlMs: 1000, refreshMs: 60_000 });
    const forwarder = new Forwarder(registry, { connectTimeoutMs: 1000, upstreamTimeoutMs: 1000, retries: 0, listenPort: () => 0 });
    const { server, front } = createProxyServer(config, routes, forwarder);
    try {
      expect(front.opts).toEqual({ headersTimeoutMs: 7000, requestTimeoutMs: 70_000, idleTimeoutMs: 17_000, maxConnections: 123, maxHeaderSize: 4096 });
      // One past the limit reaches the server, which gives it a long-idle connection's place or closes it.
      expect(server.maxConnections).toBe(123 + 1);
      // Idle keep-alive connections are told IDLE_TIMEOUT (and closed a second after it).
      expect(front.keepAliveLines).toBe('Connection: keep-alive\r\nKeep-Alive: timeout=17\r\n');
    } finally {
      routes.close();
      forwarder.close();
      registry.close();
    }
  });
});

describe('against the bundle', () => {
  let backend: RecordingBackend;
  beforeAll(async () => {
    backend = await startRecordingBackend();
  });
  afterAll(async () => {
    await backend.close();
  });

  test('MAX_CONNECTIONS: connections past the limit are closed at once and counted; freeing one lets the next in', async () => {
    const p = await startBundle({
      NODE_FILTER: 'static',
      STATIC_TARGETS: `127.0.0.1:${backend.port}`,
      HEALTH_CHECK_PATH: 'off',
      MAX_CONNECTIONS: '5',
      IDLE_TIMEOUT: '30',
    });
    const held: net.Socket[] = [];
    try {
      for (let i = 0; i < 5; i++) held.push(await idleConnection(p.port));
      await until('five open connections', async () => (await metric(p.metricsPort, 'load_balancer_active_connections')) === 5);
      const t0 = Date.now();
      const over = await rawExchange(p.port, 'GET /over HTTP/1.1\r\nHost: app.example.com\r\n\r\n', { deadlineMs: 5000 });
      expect({ closed: over.closed, data: over.data }).toEqual({ closed: true, data: '' });
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(backend.bytes()).not.toContain('/over');
      await until('the drop to be counted', async () => (await metric(p.metricsPort, 'karma_limit_hits_total', { limit: 'connections' })) >= 1);
      // The held connections still work.
      held[0].write('GET /still HTTP/1.1\r\nHost: app.example.com\r\n\r\n');
      await new Promise((r) => held[0].once('data', r));
      held.pop()!.destroy();
      await until('a free slot', async () => (await metric(p.metricsPort, 'load_balancer_active_connections')) === 4);
      expect((await request(p.port, { path: '/after' })).status).toBe(200);
    } finally {
      for (const s of held) s.destroy();
      await p.stop('SIGKILL');
    }
  });

  test('MAX_CONNECTIONS: at the limit, a keep-alive connection idle for IDLE_EVICT_MS gives its place to a new client, the longest open first', async () => {
    const p = await startBundle({
      NODE_FILTER: 'static',
      STATIC_TARGETS: `127.0.0.1:${backend.port}`,
      HEALTH_CHECK_PATH: 'off',
      MAX_CONNECTIONS: '3',
      IDLE_TIMEOUT: '60',
    });
    const held: net.Socket[] = [];
    try {
      for (let i = 0; i < 3; i++) held.push(await idleConnection(p.port));
      const closed = held.map((s) => new Promise<boolean>((r) => { s.once('close', () => r(true)); setTimeout(() => r(false), IDLE_EVICT_MS + 3000); }));
      await new Promise((r) => setTimeout(r, IDLE_EVICT_MS + 300));
      // Idle ever since their one request: the oldest makes room, the others stay.
      expect(await request(p.port, { path: '/newcomer' })).toMatchObject({ status: 200 });
      expect(await closed[0]).toBe(true);
      held[1].write('GET /still HTTP/1.1\r\nHost: app.example.com\r\n\r\n');
      await new Promise((r) => held[1].once('data', r));
      expect(await metric(p.metricsPort, 'karma_limit_hits_total', { limit: 'connections' })).toBeGreaterThanOrEqual(1);
    } finally {
      for (const s of held) s.destroy();
      await p.stop('SIGKILL');
    }
  });

  test('POOL_SIZE: at most that many sockets to a target; the requests past it wait their turn, counted, and all succeed', async () => {
    let open = 0;
    let peak = 0;
    const waiting: (() => void)[] = [];
    const slow = http.createServer((req, res) => {
      req.resume();
      waiting.push(() => res.end('done'));
    });
    slow.on('connection', (s) => {
      open++;
      peak = Math.max(peak, open);
      s.on('close', () => open--);
    });
    const port = await listen(slow);
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${port}`, HEALTH_CHECK_PATH: 'off', POOL_SIZE: '2' });
    try {
      const replies = Array.from({ length: 6 }, (_, i) => request(p.port, { path: `/queued/${i}` }));
      await until('two requests at the target', () => waiting.length === 2);
      await until('four requests queued and counted', async () => (await metric(p.metricsPort, 'karma_limit_hits_total', { limit: 'target_sockets' })) === 4);
      expect(peak).toBe(2);
      // Release them one at a time: each frees a socket for the next in line.
      for (let released = 0; released < 6; released++) {
        await until(`request ${released + 1} at the target`, () => waiting.length > 0);
        waiting.shift()!();
      }
      expect((await Promise.all(replies)).map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200]);
      expect(peak).toBe(2);
    } finally {
      await p.stop('SIGKILL');
      for (const w of waiting) w();
      await close(slow);
    }
  });

  test('POOL_SIZE: a request that cannot get a socket within UPSTREAM_TIMEOUT is a 503 with Retry-After, never a hang', async () => {
    // The one socket stays busy with a response that streams a byte every 200 ms: never silent, never done.
    const timers: NodeJS.Timeout[] = [];
    const busy = http.createServer((req, res) => {
      req.resume();
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      timers.push(setInterval(() => res.write('.'), 200));
    });
    const port = await listen(busy);
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${port}`, HEALTH_CHECK_PATH: 'off', POOL_SIZE: '1', UPSTREAM_TIMEOUT: '1' });
    const streaming = await new Promise<http.IncomingMessage>((resolve, reject) =>
      http.get({ host: '127.0.0.1', port: p.port, path: '/stream', agent: false }, resolve).on('error', reject),
    );
    try {
      expect(streaming.statusCode).toBe(200);
      const t0 = Date.now();
      const queued = await request(p.port, { path: '/queued' });
      expect(queued.status).toBe(503);
      expect(queued.headers['retry-after']).toBeDefined();
      expect(Date.now() - t0).toBeLessThan(1000 + 1500);
      expect(await metric(p.metricsPort, 'karma_limit_hits_total', { limit: 'target_sockets' })).toBe(1);
    } finally {
      streaming.destroy();
      await p.stop('SIGKILL');
      for (const t of timers) clearInterval(t);
      await close(busy);
    }
  });

  test('POOL_SIZE with every target full: the 503 comes after one UPSTREAM_TIMEOUT, not one per target', async () => {
    const timers: NodeJS.Timeout[] = [];
    const busy = (): http.Server => http.createServer((req, res) => {
      req.resume();
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      timers.push(setInterval(() => res.write('.'), 200));
    });
    const [a, b] = [busy(), busy()];
    const ports = [await listen(a), await listen(b)];
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: ports.map((x) => `127.0.0.1:${x}`).join(','), HEALTH_CHECK_PATH: 'off', POOL_SIZE: '1', UPSTREAM_TIMEOUT: '2' });
    const streams: http.IncomingMessage[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        streams.push(await new Promise<http.IncomingMessage>((resolve, reject) =>
          http.get({ host: '127.0.0.1', port: p.port, path: `/stream${i}`, agent: false }, resolve).on('error', reject)));
      }
      const t0 = Date.now();
      const queued = await request(p.port, { path: '/queued' });
      expect(queued.status).toBe(503);
      expect(Date.now() - t0).toBeLessThan(2000 + 1500); // not 2 × 2 s
    } finally {
      for (const s of streams) s.destroy();
      await p.stop('SIGKILL');
      for (const t of timers) clearInterval(t);
      await Promise.all([close(a), close(b)]);
    }
  });

  test('MAX_HEADERS and MAX_HEADER_SIZE: a 431 and a count, and the next client is served', async () => {
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', MAX_HEADERS: '10', MAX_HEADER_SIZE: '2048' });
    try {
      const many = await rawExchange(p.port, `GET /many HTTP/1.1\r\nHost: a\r\n${Array.from({ length: 10 }, (_, i) => `X-${i}: y\r\n`).join('')}\r\n`);
      const big = await rawExchange(p.port, `GET /big HTTP/1.1\r\nHost: a\r\nX-Big: ${'b'.repeat(3000)}\r\n\r\n`);
      expect(many.responses.map((r) => r.status)).toEqual([431]);
      expect(big.responses.map((r) => r.status)).toEqual([431]);
      expect(await metric(p.metricsPort, 'karma_limit_hits_total', { limit: 'headers' })).toBe(2);
      expect((await request(p.port, { path: '/fine' })).status).toBe(200);
      expect(backend.bytes()).not.toMatch(/\/many|\/big/);
    } finally {
      await p.stop('SIGKILL');
    }
  });

  test('POOL_SIZE in MODE=tcp: a target holds that many connections; past it the client is closed, counted', async () => {
    const held = new Set<net.Socket>();
    const target = net.createServer((s) => {
      held.add(s);
      s.on('close', () => held.delete(s));
      s.write('hello');
    });
    const port = await listen(target);
    const p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${port}`, HEALTH_CHECK_PATH: 'off', MODE: 'tcp', POOL_SIZE: '2' });
    const clients: net.Socket[] = [];
    const open = (): Promise<{ socket: net.Socket; greeting: string }> =>
      new Promise((resolve) => {
        const socket = net.connect({ host: '127.0.0.1', port: p.port });
        clients.push(socket);
        let greeting = '';
        socket.on('data', (d) => {
          greeting += d;
          if (greeting === 'hello') resolve({ socket, greeting });
        });
        socket.on('error', () => undefined);
        socket.on('close', () => resolve({ socket, greeting }));
      });
    try {
      expect((await open()).greeting).toBe('hello');
      expect((await open()).greeting).toBe('hello');
      const third = await open();
      expect(third.greeting).toBe('');
      expect(third.socket.destroyed).toBe(true);
      expect(held.size).toBe(2);
      expect(await metric(p.metricsPort, 'karma_limit_hits_total', { limit: 'target_sockets' })).toBe(1);
      clients[0].destroy();
      await until('a free slot at the target', () => held.size === 1);
      expect((await open()).greeting).toBe('hello');
    } finally {
      for (const c of clients) c.destroy();
      await p.stop('SIGKILL');
      for (const s of held) s.destroy();
      await new Promise<void>((r) => target.close(() => r()));
    }
  });

  describe('MAX_ROUTES (ecs mode)', () => {
    let stub: AwsStub;
    beforeAll(async () => {
      stub = await startAwsStub({ clusters: { prod: Object.fromEntries(['a', 'b', 'c', 'd', 'e'].map((s) => [s, [{ ip: '127.0.0.1' }]])) } });
    });
    afterAll(async () => {
      await stub.close();
    });

    test('no more routes than the limit are held; the least recently used one makes room, counted, and every route is still served', async () => {
      const p: Proxy = await startBundle({ ...stub.env(), DOMAIN: 'example.com', HEALTH_CHECK_PATH: 'off', MAX_ROUTES: '2' });
      try {
        for (const svc of ['a', 'b', 'c', 'd', 'e', 'a']) {
          expect((await request(p.port, { headers: { Host: `${svc}-${backend.port}-prod.example.com` } })).status).toBe(200);
        }
        expect(await metric(p.metricsPort, 'karma_limit_hits_total', { limit: 'routes' })).toBe(4);
        const held = (await metric(p.metricsPort, 'karma_routes', { state: 'known' })) + (await metric(p.metricsPort, 'karma_routes', { state: 'absent' }));
        expect(held).toBeLessThanOrEqual(2);
      } finally {
        await p.stop('SIGKILL');
      }
    });
  });
});
