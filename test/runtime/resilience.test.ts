/**
 * Health checks, circuit breaker, retries, fail-open and draining, through the real request path
 * with real backends on 127.0.0.1 that the tests break at chosen moments.
 */
import { spawn } from 'node:child_process';
import * as http from 'node:http';
import * as net from 'node:net';
import { loadConfig } from '../../runtime/config';
import { failedConnections, nodeHealthStatus, retriesTotal, targetsPerRoute, upstreamErrors } from '../../runtime/metrics';
import { makeTarget, Provider, Target } from '../../runtime/types';
import { RECENT_OPEN_MS, REDISCOVERY_WAIT_MS, STALE_RESET_WITHIN_MS } from '../../runtime/forward';
import { Running, start } from '../../runtime/worker';
import { Backend, startBackend } from '../support/backend';
import { request, until } from '../support/net';

jest.setTimeout(30_000);

const idOf = (b: Backend): string => `127.0.0.1:${b.port}`;

/** A provider whose pool the test can change. */
function mutable(targets: Target[]): Provider & { set(t: Target[]): void } {
  let now = targets;
  return { name: 'test', discover: async () => now, set: (t) => (now = t) };
}

async function proxyFor(backends: Backend[], env: Record<string, string>, provider?: Provider): Promise<Running> {
  const targets = backends.map((b) => makeTarget('127.0.0.1', b.port));
  return start(
    loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: targets.map((t) => t.id).join(','), PORT: '0', HOST: '127.0.0.1', ...env }),
    { provider: provider ?? mutable(targets) },
  );
}

/** A backend handler that answers `<word> <the request body>`, so a test sees the body that arrived. */
function answersWithBody(word: string): Backend['handle'] {
  return (req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => res.end(`${word} ${body}`));
  };
}

/** Kills a backend the hard way: no new connections, open ones reset. */
function kill(b: Backend): void {
  b.server.close();
  b.server.closeAllConnections();
}

async function metricValue(metric: { get(): Promise<{ values: { labels: Record<string, unknown>; value: number }[] }> }, target: string): Promise<number | undefined> {
  const m = await metric.get();
  return m.values.find((v) => v.labels.target === target)?.value;
}

const HEALTH = { HEALTH_CHECK_PATH: '/health', HEALTH_CHECK_PERIOD: '0.2', HEALTH_CHECK_TIMEOUT: '0.15', UNHEALTHY_THRESHOLD: '2', HEALTHY_THRESHOLD: '2' };

describe('one bad target never turns into client errors', () => {
  let backends: Backend[] = [];
  let p: Running | undefined;
  afterEach(async () => {
    await p?.stop();
    p = undefined;
    await Promise.all(backends.map((b) => b.close()));
    backends = [];
  });

  test('three backends under 200 concurrent GETs, one killed mid-run: no client error, and the dead one is left alone within UNHEALTHY_THRESHOLD × HEALTH_CHECK_PERIOD', async () => {
    backends = await Promise.all(['a', 'b', 'c'].map(startBackend));
    p = await proxyFor(backends, HEALTH);
    const victim = backends[1];
    const agent = new http.Agent({ keepAlive: true, maxSockets: 200 });
    const statuses: number[] = [];
    const errors: string[] = [];
    let running = true;
    const client = async (): Promise<void> => {
      while (running) {
        await new Promise<void>((resolve) => {
          http
            .get({ host: '127.0.0.1', port: p!.port, path: '/', agent }, (res) => {
              statuses.push(res.statusCode ?? 0);
              res.resume();
              res.on('end', resolve);
            })
            .on('error', (e) => {
              errors.push(e.message);
              resolve();
            });
        });
      }
    };
    const load = Promise.all(Array.from({ length: 200 }, client));
    await until('traffic on every backend', () => backends.every((b) => b.seen.length > 50));
    kill(victim);
    const killedAt = Date.now();
    // UNHEALTHY_THRESHOLD × HEALTH_CHECK_PERIOD = 0.4 s, plus one period of jitter and slack.
    await new Promise((r) => setTimeout(r, 400 + 400));
    const triedAfterWindow = await metricValue(failedConnections, idOf(victim));
    await new Promise((r) => setTimeout(r, 600));
    running = false;
    await load;
    agent.destroy();
    expect(errors).toEqual([]);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect(triedAfterWindow).toBeGreaterThan(0); // in-flight requests did hit it (and were retried)
    expect(await metricValue(failedConnections, idOf(victim))).toBe(triedAfterWindow);
    expect(await metricValue(nodeHealthStatus, idOf(victim))).toBe(0);
    expect(Date.now() - killedAt).toBeGreaterThan(0);
  });

  test('a backend whose health path turns 500 leaves rotation after the threshold and returns after HEALTHY_THRESHOLD passing checks', async () => {
    backends = await Promise.all(['a', 'b'].map(startBackend));
    p = await proxyFor(backends, HEALTH);
    const [a, b] = backends;
    await until('both healthy', async () => (await metricValue(nodeHealthStatus, idOf(a))) === 1 && (await metricValue(nodeHealthStatus, idOf(b))) === 1);
    b.healthStatus = 500;
    const checksAtFlip = b.healthChecks;
    await until('b unhealthy', async () => (await metricValue(nodeHealthStatus, idOf(b))) === 0);
    expect(b.healthChecks - checksAtFlip).toBeGreaterThanOrEqual(2);
    b.seen.length = 0;
    for (let i = 0; i < 10; i++) expect((await request(p.port)).body).toBe('a');
    expect(b.seen).toHaveLength(0);
    b.healthStatus = 200;
    const checksAtRecovery = b.healthChecks;
    await until('b healthy again', async () => (await metricValue(nodeHealthStatus, idOf(b))) === 1);
    expect(b.healthChecks - checksAtRecovery).toBeGreaterThanOrEqual(2);
    const names = [];
    for (let i = 0; i < 4; i++) names.push((await request(p.port)).body);
    expect(names.sort()).toEqual(['a', 'a', 'b', 'b']);
  });

  test('when every target is unhealthy, requests still reach them (fail open)', async () => {
    backends = await Promise.all(['a', 'b'].map(startBackend));
    backends.forEach((b) => (b.healthStatus = 503));
    p = await proxyFor(backends, HEALTH);
    await until('both unhealthy', async () => (await metricValue(nodeHealthStatus, idOf(backends[0]))) === 0 && (await metricValue(nodeHealthStatus, idOf(backends[1]))) === 0);
    const names = [];
    for (let i = 0; i < 4; i++) {
      const r = await request(p.port);
      expect(r.status).toBe(200);
      names.push(r.body);
    }
    expect(names.sort()).toEqual(['a', 'a', 'b', 'b']);
  });
});

describe('circuit breaker', () => {
  test('opens after exactly CIRCUIT_BREAKER_THRESHOLD failures, half-opens after the timeout, re-opens on failure and closes on success', async () => {
    const good = await startBackend('good');
    const bad = await startBackend('bad');
    let broken = true;
    bad.handle = (req, res) => (broken ? req.socket.destroy() : res.end('bad'));
    // 0.005 min = 300 ms. No active checks: only forwarding outcomes count here.
    const p = await proxyFor([good, bad], { HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_THRESHOLD: '3', CIRCUIT_BREAKER_TIMEOUT: '0.005', RETRIES: '0' });
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 12; i++) statuses.push((await request(p.port, { method: 'POST', body: 'x' })).status);
      expect(bad.seen).toHaveLength(3); // exactly the threshold, then no traffic
      expect(statuses.filter((s) => s === 502)).toHaveLength(3);
      await new Promise((r) => setTimeout(r, 350));
      // Half-open: one trial goes through, fails, and the breaker re-opens for another timeout.
      for (let i = 0; i < 6; i++) await request(p.port, { method: 'POST', body: 'x' });
      expect(bad.seen).toHaveLength(4);
      broken = false;
      await new Promise((r) => setTimeout(r, 350));
      const names = [];
      for (let i = 0; i < 6; i++) names.push((await request(p.port)).body);
      expect(bad.seen.length).toBeGreaterThanOrEqual(6); // closed again: back in rotation
      expect(names.filter((n) => n === 'bad').length).toBeGreaterThanOrEqual(2);
    } finally {
      await p.stop();
      await good.close();
      await bad.close();
    }
  });

  test('a URL that resets whatever serves it counts against the first target each request tried, not every target its retries reached: CIRCUIT_BREAKER_THRESHOLD such requests do not close the route', async () => {
    const backends = await Promise.all(['a', 'b', 'c'].map(startBackend));
    for (const b of backends) b.handle = (req, res) => (req.url === '/bad' ? req.socket.destroy() : res.end('ok'));
    // RETRIES=2: each bad GET reaches all three targets.
    const p = await proxyFor(backends, { HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_THRESHOLD: '5', RETRIES: '2' });
    try {
      const bad = await Promise.all(Array.from({ length: 5 }, () => request(p.port, { path: '/bad', headers: { Connection: 'close' } })));
      expect(bad.map((r) => r.status)).toEqual([502, 502, 502, 502, 502]);
      expect(backends.reduce((n, b) => n + b.seen.length, 0)).toBe(15); // every target tried by each
      // Before, every breaker had 5 failures and the route answered 503 for CIRCUIT_BREAKER_TIMEOUT.
      for (let i = 0; i < 6; i++) expect(await request(p.port, { path: '/ok' })).toMatchObject({ status: 200, body: 'ok' });
      // A target that fails every request, retried elsewhere, still opens its breaker at the threshold.
      backends[0].handle = (req) => req.socket.destroy();
      const before = backends[0].seen.length;
      for (let i = 0; i < 30; i++) expect(await request(p.port, { path: '/ok' })).toMatchObject({ status: 200 });
      // (One more when a reset on a kept-alive socket is the keep-alive race, tried again on a fresh one.)
      expect(backends[0].seen.length - before).toBeLessThanOrEqual(6);
    } finally {
      await p.stop();
      await Promise.all(backends.map((b) => b.close()));
    }
  });

  test('POSTs reset on warm keep-alive sockets: one is excused as a keep-alive race, then the threshold counts', async () => {
    // A reset on a kept socket may be the target closing it just as the request came; a POST is not sent
    // again, so each warm socket would have been one more excused 502.
    const bad = await startBackend('bad');
    let broken = false;
    bad.handle = (req, res) => (broken ? req.socket.destroy() : setTimeout(() => res.end('warm'), 50));
    const p = await proxyFor([bad], { HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_THRESHOLD: '3', CIRCUIT_BREAKER_TIMEOUT: '1', RETRIES: '0' });
    try {
      // Ten sockets to the target, kept alive in the proxy's pool.
      expect((await Promise.all(Array.from({ length: 10 }, () => request(p.port)))).map((r) => r.body)).toEqual(Array(10).fill('warm'));
      broken = true;
      const statuses: number[] = [];
      for (let i = 0; i < 8; i++) statuses.push((await request(p.port, { method: 'POST', body: 'x' })).status);
      expect(statuses).toEqual([502, 502, 502, 502, 503, 503, 503, 503]);
      // The one the breaker excused still failed with this target, as its clients saw.
      expect(await metricValue(failedConnections, idOf(bad))).toBe(4);
    } finally {
      await p.stop();
      await bad.close();
    }
  });

  test('a reset on a warm keep-alive socket long after the request went out is no keep-alive race: with RETRIES=0, no second target gets it', async () => {
    // The target read the request, worked on it, then reset: it may have acted on it (a PUT, a DELETE).
    const [x, y] = await Promise.all(['x', 'y'].map(startBackend));
    let broken = false;
    const handle = (req: http.IncomingMessage, res: http.ServerResponse) => (broken ? setTimeout(() => req.socket.destroy(), STALE_RESET_WITHIN_MS + 300) : res.end('warm'));
    x.handle = handle;
    y.handle = handle;
    const p = await proxyFor([x, y], { HEALTH_CHECK_PATH: 'off', RETRIES: '0' });
    try {
      for (let i = 0; i < 4; i++) expect((await request(p.port)).body).toBe('warm'); // warm sockets to both
      broken = true;
      const before = x.seen.length + y.seen.length;
      expect((await request(p.port, { method: 'DELETE', path: '/item/1' })).status).toBe(502);
      expect(x.seen.length + y.seen.length - before).toBe(1);
    } finally {
      await p.stop();
      await Promise.all([x.close(), y.close()]);
    }
  });

  /**
   * One target that closes a kept connection as a second request arrives on it (its idle timeout meeting
   * the request), answering `got <body>` otherwise: with a reset, or (`with408`) with the 408 a server
   * may send as it closes an idle connection (RFC 9110 §15.5.9), then its FIN.
   */
  async function racingTarget(with408 = false): Promise<{ port: number; bodies: string[]; close(): Promise<unknown> }> {
    const bodies: string[] = [];
    const server = net.createServer((sock) => {
      let buf = Buffer.alloc(0);
      let answered = 0;
      sock.on('error', () => undefined);
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        for (;;) {
          const end = buf.indexOf('\r\n\r\n');
          if (end === -1) return;
          if (answered > 0 && with408) return void sock.end('HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
          if (answered > 0) return void sock.resetAndDestroy();
          const length = Number(/content-length: *(\d+)/i.exec(buf.subarray(0, end).toString('latin1'))?.[1] ?? 0);
          if (buf.length < end + 4 + length) return;
          const body = buf.subarray(end + 4, end + 4 + length).toString();
          buf = buf.subarray(end + 4 + length);
          bodies.push(body);
          answered++;
          sock.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length + 4}\r\n\r\ngot ${body}`);
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { port: (server.address() as net.AddressInfo).port, bodies, close: () => new Promise((r) => server.close(r)) };
  }

  /** A PUT whose head goes at once and whose 5-byte body follows after `bodyAfterMs` (never, for -1). */
  function slowPut(port: number, bodyAfterMs: number): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, method: 'PUT', path: '/item', agent: false, headers: { 'Content-Length': '5' } }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      });
      req.on('error', reject);
      req.setTimeout(5000, () => req.destroy(new Error('no answer in 5 s')));
      req.flushHeaders(); // the head now, the body after
      if (bodyAfterMs >= 0) setTimeout(() => req.end('hello'), bodyAfterMs);
    });
  }

  test.each([0, 50])('a small PUT whose body follows its head by %i ms, reset by the keep-alive race, goes again whole on a fresh connection, even with RETRIES=0', async (bodyAfterMs) => {
    // The reset comes back once the head has gone, before the body has.
    const target = await racingTarget();
    const p = await start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${target.port}`, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', RETRIES: '0' }), { provider: mutable([makeTarget('127.0.0.1', target.port)]) });
    try {
      expect((await request(p.port, { method: 'PUT', body: 'warm' })).body).toBe('got warm'); // a warm socket
      expect(await slowPut(p.port, bodyAfterMs)).toEqual({ status: 200, body: 'got hello' });
      expect(target.bodies).toEqual(['warm', 'hello']);
    } finally {
      await p.stop();
      await target.close();
    }
  });

  test("a 408 the target sends as it closes a kept connection, crossing the next request, is the keep-alive race: a GET and a small PUT go again on a fresh connection, even with RETRIES=0; a POST, whose body is not kept, gets the 408", async () => {
    const target = await racingTarget(true);
    const p = await start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${target.port}`, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', RETRIES: '0' }), { provider: mutable([makeTarget('127.0.0.1', target.port)]) });
    try {
      expect((await request(p.port, { method: 'PUT', body: 'warm' })).body).toBe('got warm'); // a warm socket
      expect(await request(p.port)).toMatchObject({ status: 200, body: 'got ' });
      expect(await request(p.port, { method: 'PUT', body: 'again' })).toMatchObject({ status: 200, body: 'got again' });
      expect((await request(p.port, { method: 'POST', body: 'once' })).status).toBe(408);
      expect(target.bodies).toEqual(['warm', '', 'again']);
    } finally {
      await p.stop();
      await target.close();
    }
  });

  test.each(['PUT', 'POST'])("a 408 closing the kept socket a %s with a body was given, before anything was sent on it, is the keep-alive race too: the request goes on a fresh connection", async (method) => {
    // The target answers `got <body>`; its kept connection is the one the next request picks.
    const socks: net.Socket[] = [];
    const server = net.createServer((sock) => {
      socks.push(sock);
      let buf = Buffer.alloc(0);
      sock.on('error', () => undefined);
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf('\r\n\r\n');
        if (end === -1) return;
        const length = Number(/content-length: *(\d+)/i.exec(buf.subarray(0, end).toString('latin1'))?.[1] ?? 0);
        if (buf.length < end + 4 + length) return;
        const body = buf.subarray(end + 4, end + 4 + length).toString();
        buf = buf.subarray(end + 4 + length);
        sock.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length + 4}\r\n\r\ngot ${body}`);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const p = await start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${port}`, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off' }), { provider: mutable([makeTarget('127.0.0.1', port)]) });
    const client = net.connect(p.port, '127.0.0.1');
    let got = '';
    client.on('data', (d) => (got += d.toString('latin1')));
    client.on('error', () => undefined);
    const send = (m: string, body: string): void => void client.write(`${m} /x HTTP/1.1\r\nHost: a\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
    try {
      await new Promise((r) => client.once('connect', r));
      send('PUT', 'warm');
      await until('the warm answer', () => got.includes('got warm'));
      await new Promise((r) => setTimeout(r, 50)); // the target socket idle in the pool
      const before = got.length;
      send(method, 'again');
      // Once the proxy's poll has read that request and picked the kept socket, before it sends on it
      // (it waits a poll first when the body cannot be sent again): the target's goodbye.
      setImmediate(() => socks[0].end('HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n'));
      await until('the answer', () => /\r\n\r\n/.test(got.slice(before)));
      await new Promise((r) => setTimeout(r, 50));
      expect(got.slice(before)).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*got again$/);
    } finally {
      client.destroy();
      await p.stop();
      for (const s of socks) s.destroy();
      await new Promise((r) => server.close(r));
    }
  });

  test('at SHUTDOWN_TIMEOUT, a PUT still waiting for the rest of its body to go again after the keep-alive race gets a 503 (no target is acting on it)', async () => {
    const target = await racingTarget();
    const p = await start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${target.port}`, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '0.5' }), { provider: mutable([makeTarget('127.0.0.1', target.port)]) });
    try {
      expect((await request(p.port, { method: 'PUT', body: 'warm' })).body).toBe('got warm'); // a warm socket
      const put = slowPut(p.port, -1); // its body never comes
      await new Promise((r) => setTimeout(r, 200));
      const stopped = p.stop();
      expect(await put).toMatchObject({ status: 503 });
      await stopped;
      expect(target.bodies).toEqual(['warm']);
    } finally {
      await p.stop();
      await target.close();
    }
  });

  test('a reset read late only because the worker was busy is still the keep-alive race: the GET goes again, even with RETRIES=0', async () => {
    const x = await startBackend('x');
    let resets = 0;
    x.handle = (req, res) => {
      if (resets === 1) {
        resets++;
        // The proxy runs in this process: its loop stalls here for longer than the race's window.
        const until = Date.now() + STALE_RESET_WITHIN_MS + 150;
        while (Date.now() < until);
        req.socket.destroy();
      } else res.end('warm');
    };
    const p = await proxyFor([x], { HEALTH_CHECK_PATH: 'off', RETRIES: '0' });
    try {
      expect((await request(p.port)).body).toBe('warm'); // a warm socket
      resets = 1;
      expect(await request(p.port)).toMatchObject({ status: 200, body: 'warm' });
    } finally {
      await p.stop();
      await x.close();
    }
  });

  test('one process: a target whose connections were refused is back at its first passing health check', async () => {
    const app = await startBackend('app');
    const port = app.port;
    const p = await proxyFor([app], { HEALTH_CHECK_PATH: '/ping', HEALTH_CHECK_PERIOD: '0.3', HEALTH_CHECK_TIMEOUT: '0.3', CIRCUIT_BREAKER_THRESHOLD: '2', CIRCUIT_BREAKER_TIMEOUT: '5', RETRIES: '0' });
    const again = http.createServer((_req, res) => res.end('back'));
    try {
      await app.close();
      expect([(await request(p.port)).status, (await request(p.port)).status, (await request(p.port)).status]).toEqual([502, 502, 503]);
      await new Promise<void>((resolve) => again.listen(port, '127.0.0.1', resolve));
      await until('an answer from the restarted target', async () => (await request(p.port)).body === 'back');
    } finally {
      await p.stop();
      again.closeAllConnections();
      await new Promise((r) => again.close(r));
    }
  });
});

describe('retry on another target', () => {
  /** Two backends; the one with the lower id (picked first by a fresh proxy) resets every request. */
  async function resettingFirst(): Promise<{ resetting: Backend; good: Backend; p: Running }> {
    const pair = (await Promise.all(['x', 'y'].map(startBackend))).sort((m, n) => (idOf(m) < idOf(n) ? -1 : 1));
    const [resetting, good] = pair;
    resetting.handle = (req) => req.socket.destroy();
    good.handle = (req, res) => {
      req.resume();
      req.on('end', () => res.end('good'));
    };
    return { resetting, good, p: await proxyFor(pair, { HEALTH_CHECK_PATH: 'off' }) };
  }

  test('a GET reset before its response is retried on the next target', async () => {
    const { resetting, good, p } = await resettingFirst();
    try {
      expect(await request(p.port)).toMatchObject({ status: 200, body: 'good' });
      expect(resetting.seen).toHaveLength(1);
      expect(good.seen).toHaveLength(1);
    } finally {
      await p.stop();
      await Promise.all([resetting.close(), good.close()]);
    }
  });

  test('a target whose POOL_SIZE sockets are all busy is passed over while another is free, not queued behind', async () => {
    const [slow, fast] = await Promise.all(['slow', 'fast'].map(startBackend));
    slow.handle = (_req, res) => void setTimeout(() => res.end('slow'), 1500);
    const p = await proxyFor([slow, fast], { POOL_SIZE: '1', HEALTH_CHECK_PATH: 'off' });
    try {
      const timed = async (): Promise<{ body: string; ms: number }> => {
        const t0 = Date.now();
        const r = await request(p.port);
        return { body: r.body, ms: Date.now() - t0 };
      };
      const results = await Promise.all(Array.from({ length: 6 }, (_, i) => new Promise((r) => setTimeout(r, i * 50)).then(timed)));
      // One request holds the slow target's only socket; the rest go to the free one at once.
      expect(results.filter((r) => r.body === 'slow')).toHaveLength(1);
      expect(results.filter((r) => r.body === 'fast').every((r) => r.ms < 1000)).toBe(true);
      expect(slow.seen).toHaveLength(1);
    } finally {
      await p.stop();
      await Promise.all([slow.close(), fast.close()]);
    }
  });

  test('karma_retries_total counts the retries that reached a target, not those wanted when none was left', async () => {
    // Two targets that both reset every request, and a retry budget of five: one retry can happen.
    const resets = await Promise.all(['r1', 'r2'].map(startBackend));
    for (const b of resets) b.handle = (req) => req.socket.destroy();
    const p = await proxyFor(resets, { RETRIES: '5', HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_THRESHOLD: '100' });
    try {
      const before = (await retriesTotal.get()).values[0]?.value ?? 0;
      expect((await request(p.port)).status).toBe(502);
      expect(resets.map((b) => b.seen.length)).toEqual([1, 1]);
      expect(((await retriesTotal.get()).values[0]?.value ?? 0) - before).toBe(1);
    } finally {
      await p.stop();
      await Promise.all(resets.map((b) => b.close()));
    }
  });

  test('a target that never accepts, under an UPSTREAM_TIMEOUT shorter than POOL_TIMEOUT, is a connect timeout, tried on the next target', async () => {
    // A listener in a stopped process: the kernel fills its accept queue (backlog 1), then drops SYNs.
    const child = spawn(process.execPath, ['-e', "require('net').createServer().listen(0, '127.0.0.1', 1, function () { console.log(this.address().port) })"]);
    const good = await startBackend('good');
    const fillers: net.Socket[] = [];
    let p: Running | undefined;
    try {
      const port = await new Promise<number>((resolve, reject) => {
        child.stdout.once('data', (d: Buffer) => resolve(Number(String(d).trim())));
        child.once('exit', () => reject(new Error('listener exited')));
      });
      process.kill(child.pid!, 'SIGSTOP');
      for (let i = 0; i < 4; i++) {
        const f = net.connect({ host: '127.0.0.1', port });
        f.on('error', () => undefined);
        fillers.push(f);
      }
      await new Promise((r) => setTimeout(r, 200));
      const stalled = makeTarget('127.0.0.1', port);
      const targets = [stalled, makeTarget('127.0.0.1', good.port)];
      p = await start(
        loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: targets.map((t) => t.id).join(','), PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', UPSTREAM_TIMEOUT: '0.3', POOL_TIMEOUT: '2', RETRIES: '1' }),
        { provider: mutable(targets) },
      );
      const kinds = async (): Promise<Record<string, number>> =>
        Object.fromEntries((await upstreamErrors.get()).values.map((v) => [String(v.labels.kind), v.value]));
      const before = await kinds();
      const statuses = [];
      for (let i = 0; i < 4; i++) statuses.push((await request(p.port)).status);
      expect(statuses).toEqual([200, 200, 200, 200]);
      // Counted as what it was: the breaker and the metrics tell a connect timeout from a silent target.
      const after = await kinds();
      expect((after.connect_timeout ?? 0) - (before.connect_timeout ?? 0)).toBeGreaterThanOrEqual(1);
      expect((after.timeout ?? 0) - (before.timeout ?? 0)).toBe(0);
    } finally {
      await p?.stop();
      for (const f of fillers) f.destroy();
      child.kill('SIGKILL');
      await good.close();
    }
  });

  test('a POST whose body was streamed is not retried after bytes were sent', async () => {
    const { resetting, good, p } = await resettingFirst();
    try {
      const post = await new Promise<number>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: p.port, method: 'POST', path: '/upload', headers: { 'Transfer-Encoding': 'chunked' } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        req.write('first bytes of a streamed body');
        setTimeout(() => req.end('rest'), 100);
      });
      expect(post).toBe(502);
      expect(resetting.seen).toHaveLength(1);
      expect(good.seen).toHaveLength(0);
    } finally {
      await p.stop();
      await Promise.all([resetting.close(), good.close()]);
    }
  });

  test('a PUT whose whole (small) body had arrived, reset before its answer, is retried with that body on the next target', async () => {
    const { resetting, good, p } = await resettingFirst();
    good.handle = answersWithBody('stored');
    try {
      const body = 'x'.repeat(10_000) + '-end';
      expect(await request(p.port, { method: 'PUT', path: '/item/7', body })).toMatchObject({ status: 200, body: `stored ${body}` });
      expect(resetting.seen).toHaveLength(1);
      expect(good.seen).toHaveLength(1);
      expect(good.seen[0]).toMatchObject({ method: 'PUT', url: '/item/7', bodyBytes: body.length });
    } finally {
      await p.stop();
      await Promise.all([resetting.close(), good.close()]);
    }
  });

  test('a PUT whose small body was still arriving when its target reset is retried with the whole body once the rest has come', async () => {
    const { resetting, good, p } = await resettingFirst();
    good.handle = answersWithBody('stored');
    try {
      const status = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: p.port, method: 'PUT', path: '/item/8', headers: { 'Content-Length': '20' } }, (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.write('0123456789');
        // The rest comes after the first target has reset.
        void until('the reset', () => resetting.seen.length === 1).then(() => setTimeout(() => req.end('abcdefghij'), 100));
      });
      expect(status).toEqual({ status: 200, body: 'stored 0123456789abcdefghij' });
      expect(good.seen).toHaveLength(1);
      expect(good.seen[0]).toMatchObject({ method: 'PUT', url: '/item/8', bodyBytes: 20 });
    } finally {
      await p.stop();
      await Promise.all([resetting.close(), good.close()]);
    }
  });

  test('a client that leaves while the rest of its body is awaited for a retry is let go, and nothing is sent on', async () => {
    const { resetting, good, p } = await resettingFirst();
    try {
      const s = net.connect(p.port, '127.0.0.1', () => s.write('PUT /item/9 HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n0123456789'));
      s.on('error', () => undefined);
      await until('the reset', () => resetting.seen.length === 1);
      await new Promise((r) => setTimeout(r, 100));
      s.destroy();
      await new Promise((r) => setTimeout(r, 200));
      expect(good.seen).toHaveLength(0);
      // The proxy serves on.
      expect((await request(p.port)).status).toBe(200);
    } finally {
      await p.stop();
      await Promise.all([resetting.close(), good.close()]);
    }
  });

  test.each<[string, (port: number) => Promise<number>]>([
    ['a PUT whose body is streamed (chunked)', (port) => new Promise<number>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, method: 'PUT', path: '/item', headers: { 'Transfer-Encoding': 'chunked' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end('a chunked body');
    })],
    ['a POST, however small', async (port) => (await request(port, { method: 'POST', body: 'tiny' })).status],
  ])('not retried after it was sent: %s', async (_name, send) => {
    const { resetting, good, p } = await resettingFirst();
    try {
      expect(await send(p.port)).toBe(502);
      expect(resetting.seen).toHaveLength(1);
      expect(good.seen).toHaveLength(0);
    } finally {
      await p.stop();
      await Promise.all([resetting.close(), good.close()]);
    }
  });

  test('a POST to a target that refuses the connection is retried with its body on the next one', async () => {
    const good = await startBackend('good');
    const dead = await startBackend('dead');
    await dead.close();
    good.handle = answersWithBody('got');
    const p = await proxyFor([good, dead], { HEALTH_CHECK_PATH: 'off' });
    try {
      for (let i = 0; i < 4; i++) {
        expect(await request(p.port, { method: 'POST', body: `payload-${i}` })).toMatchObject({ status: 200, body: `got payload-${i}` });
      }
    } finally {
      await p.stop();
      await good.close();
    }
  });
});

describe('draining', () => {
  test('in an outage (every target refusing for good, still listed) a request that finds every breaker open is answered 503 at once, not after a rediscovery', async () => {
    const [a, b] = [await startBackend('a'), await startBackend('b')];
    const targets = [a, b].map((x) => makeTarget('127.0.0.1', x.port));
    await Promise.all([a.close(), b.close()]);
    let calls = 0;
    // The first two discoveries answer; every later one hangs (AWS slow): a request that waited for one
    // would take REDISCOVERY_WAIT_MS.
    const provider: Provider = { name: 'test', discover: () => (++calls <= 2 ? Promise.resolve(targets) : new Promise<Target[]>(() => undefined)) };
    const p = await proxyFor([], { NODE_FILTER: 'static', STATIC_TARGETS: targets.map((t) => t.id).join(','), HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_THRESHOLD: '1', NODE_CHECK_PERIOD: '60' }, provider);
    try {
      expect((await request(p.port)).status).toBe(502); // both refused: both breakers open
      await new Promise((r) => setTimeout(r, RECENT_OPEN_MS + 300));
      const t0 = Date.now();
      expect((await request(p.port)).status).toBe(503);
      expect(Date.now() - t0).toBeLessThan(REDISCOVERY_WAIT_MS / 2);
    } finally {
      await p.stop();
    }
  });
  /** A route's discovery: the old backends until deploy(), then, after a moment (AWS), only the fresh one. */
  function deploying(olds: { port: number }[], fresh: { port: number }): { provider: Provider; deploy(): void } {
    let deployed = false;
    const before = olds.map((b) => makeTarget('127.0.0.1', b.port));
    const provider: Provider = {
      name: 'test',
      discover: () => (deployed ? new Promise<Target[]>((r) => setTimeout(() => r([makeTarget('127.0.0.1', fresh.port)]), 300)) : Promise.resolve(before)),
    };
    return { provider, deploy: () => (deployed = true) };
  }

  test('a request that finds every target refused and their route being rediscovered waits for the new targets, not a 503 (a deploy that replaced them)', async () => {
    const [oldA, oldB] = [await startBackend('oldA'), await startBackend('oldB')];
    const fresh = await startBackend('fresh');
    const { provider, deploy } = deploying([oldA, oldB], fresh);
    const p = await proxyFor([oldA, oldB], { HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_THRESHOLD: '1', NODE_CHECK_PERIOD: '60' }, provider);
    try {
      expect((await request(p.port)).status).toBe(200);
      // The old tasks stop before discovery says so: their refusals open both breakers, and the
      // rediscovery those refusals ask for still finds them (the 502 of the request that met them).
      await Promise.all([oldA.close(), oldB.close()]);
      expect((await request(p.port)).status).toBe(502);
      deploy();
      await new Promise((r) => setTimeout(r, 1100)); // past the wait between rediscoveries for refusals
      // Every breaker open: this request starts the rediscovery and waits for it.
      expect(await request(p.port)).toMatchObject({ status: 200, body: 'fresh' });
    } finally {
      await p.stop();
      await fresh.close();
    }
  });

  /**
   * The answer to a request a moment after a deploy replaced `count` old tasks with a new one, ECS having
   * stopped the old ones before the proxy rediscovered (the old ones refuse, the rediscovery takes 300 ms).
   */
  async function acrossDeploy(count: number, env: Record<string, string> = {}): Promise<{ status: number; body: string }> {
    const olds = await Promise.all(Array.from({ length: count }, (_, i) => startBackend(`old${i + 1}`)));
    const fresh = await startBackend('fresh');
    const { provider, deploy } = deploying(olds, fresh);
    const p = await proxyFor(olds, { HEALTH_CHECK_PATH: 'off', NODE_CHECK_PERIOD: '60', ...env }, provider);
    try {
      expect((await request(p.port)).status).toBe(200);
      await Promise.all(olds.map((b) => b.close()));
      deploy();
      await new Promise((r) => setTimeout(r, 1100)); // past the wait between rediscoveries for refusals
      return await request(p.port);
    } finally {
      await p.stop();
      await fresh.close();
    }
  }

  test('a deploy that replaced more tasks than RETRIES: the request whose retries all met old tasks refusing waits for the rediscovery and goes to a new task, not a 502', async () => {
    // Three tries (RETRIES=2) meet three of the five old tasks refusing; the first refusal began the rediscovery.
    expect(await acrossDeploy(5)).toMatchObject({ status: 200, body: 'fresh' });
  });

  test('with RETRIES=0 a request whose target refused is a 502 at once, not a wait for the rediscovery (no second try asked for)', async () => {
    // Waiting for the rediscovery, it would have gone to the new task.
    expect((await acrossDeploy(1, { RETRIES: '0' })).status).toBe(502);
  });

  test('a retry waiting for its route to be rediscovered, its target having refused, is answered 503 at SHUTDOWN_TIMEOUT, not cut', async () => {
    const dead = await startBackend('dead');
    await dead.close();
    let calls = 0;
    // The first discovery finds the dead target; the rediscovery its refusal asks for never answers.
    const provider: Provider = { name: 'test', discover: () => (++calls === 1 ? Promise.resolve([makeTarget('127.0.0.1', dead.port)]) : new Promise<Target[]>(() => undefined)) };
    const p = await proxyFor([dead], { HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '0.3' }, provider);
    try {
      const reply = request(p.port);
      await until('the rediscovery asked for', () => calls === 2);
      const stopped = p.stop();
      expect(await reply).toMatchObject({ status: 503 });
      await stopped;
    } finally {
      await p.stop();
    }
  });

  test("a target that left the discovered set and then fails its last request leaves no series behind", async () => {
    // Its failure is counted before the target is forgotten, not after (which would bring the series back for good).
    const a = await startBackend('a');
    const b = await startBackend('b');
    let cut: (() => void) | undefined;
    b.handle = (req) => void (cut = () => req.socket.destroy());
    const provider = mutable([makeTarget('127.0.0.1', a.port), makeTarget('127.0.0.1', b.port)]);
    const p = await proxyFor([a, b], { HEALTH_CHECK_PATH: 'off', NODE_CHECK_PERIOD: '0.1', RETRIES: '0' }, provider);
    const inRoute = async (): Promise<number | undefined> => (await targetsPerRoute.get()).values.find((v) => v.labels.route === 'pool')?.value;
    try {
      const replies = [request(p.port, { method: 'POST', body: 'x' }), request(p.port, { method: 'POST', body: 'x' })];
      await until('b has its request', () => cut !== undefined);
      expect(await metricValue(failedConnections, idOf(b))).toBe(0); // a series from its discovery, at 0
      provider.set([makeTarget('127.0.0.1', a.port)]);
      await until('b out of the route', async () => (await inRoute()) === 1);
      cut!();
      expect((await Promise.all(replies)).map((r) => r.status).sort()).toEqual([200, 502]);
      expect(await metricValue(failedConnections, idOf(b))).toBeUndefined();
    } finally {
      await p.stop();
      await a.close();
      await b.close();
    }
  });

  test('a target that leaves the discovered set gets no new request, and its in-flight one finishes', async () => {
    const a = await startBackend('a');
    const b = await startBackend('b');
    b.handle = (_req, res) => setTimeout(() => res.end('b-slow'), 600);
    const provider = mutable([makeTarget('127.0.0.1', a.port), makeTarget('127.0.0.1', b.port)]);
    const p = await proxyFor([a, b], { HEALTH_CHECK_PATH: 'off', NODE_CHECK_PERIOD: '0.1' }, provider);
    try {
      const replies = [request(p.port), request(p.port)];
      await until('b has its request', () => b.seen.length === 1);
      provider.set([makeTarget('127.0.0.1', a.port)]);
      await new Promise((r) => setTimeout(r, 250)); // two refreshes
      const after = [];
      for (let i = 0; i < 4; i++) after.push((await request(p.port)).body);
      expect(after).toEqual(['a', 'a', 'a', 'a']);
      expect((await Promise.all(replies)).map((r) => r.body).sort()).toEqual(['a', 'b-slow']);
      expect(b.seen).toHaveLength(1);
    } finally {
      await p.stop();
      await a.close();
      await b.close();
    }
  });
});
