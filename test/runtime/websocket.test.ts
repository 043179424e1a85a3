import * as http from 'node:http';
import * as net from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { loadConfig } from '../../runtime/config';
import { TUNNEL_HALF_CLOSE_GRACE_MS } from '../../runtime/forward';
import { LINGER_MS } from '../../runtime/downstream';
import { activeConnections, register, requestsTotal } from '../../runtime/metrics';
import { makeTarget, Target } from '../../runtime/types';
import { Running, start } from '../../runtime/worker';
import { rawExchange } from '../hardening/support';
import { close, listen, request, until } from '../support/net';

/** A raw target that calls `onHead` with each request head it reads (bodies are not looked at). */
function rawTarget(onHead: (head: string, s: net.Socket) => void): net.Server {
  return net.createServer((s) => {
    s.on('error', () => undefined);
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\r\n\r\n')) !== -1) {
        const head = buf.slice(0, i);
        buf = buf.slice(i + 4);
        onHead(head, s);
      }
    });
  });
}

/** Sends `text` on an open WebSocket; what comes back. */
function echoOf(ws: WebSocket, text: string): Promise<string> {
  return new Promise((resolve) => {
    ws.once('message', (m) => resolve(String(m)));
    ws.send(text);
  });
}

/** A proxy (in this process) in front of `target` alone, without health checks unless `env` says. */
async function proxyFor(target: net.Server, env: Record<string, string> = {}): Promise<Running> {
  const t = makeTarget('127.0.0.1', await listen(target));
  return start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: t.id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', ...env }), {});
}

/** Opens a WebSocket; resolves with it once open, or with the HTTP status that refused it. */
function open(port: number): Promise<WebSocket | number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
    });
    ws.once('error', reject);
  });
}

test('a handshake reaches the target with X-Forwarded-* of ours, and without the client’s Forwarded', async () => {
  const server = http.createServer();
  const wss = new WebSocketServer({ server });
  const seen: http.IncomingHttpHeaders[] = [];
  wss.on('connection', (sock, req) => {
    seen.push(req.headers);
    sock.close();
  });
  const t = makeTarget('127.0.0.1', await listen(server));
  const p = await start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: t.id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off' }), {});
  try {
    const ws = new WebSocket(`ws://127.0.0.1:${p.port}/`, { headers: { Forwarded: 'for=9.9.9.9;proto=https', 'X-Forwarded-Proto': 'https', 'X-Forwarded-For': '203.0.113.7' } });
    await new Promise((resolve, reject) => {
      ws.once('close', resolve);
      ws.once('error', reject);
    });
    expect(seen).toHaveLength(1);
    expect(seen[0].forwarded).toBeUndefined();
    expect([seen[0]['x-forwarded-proto'], seen[0]['x-forwarded-for']]).toEqual(['http', '203.0.113.7, 127.0.0.1']);
    // The target answered the handshake: a successful connection, as an answered GET is.
    const successes = (await register.getMetricsAsJSON()).find((m) => m.name === 'load_balancer_successful_connections_total') as unknown as
      { values: { labels: { target?: string }; value: number }[] };
    expect(successes.values.find((v) => v.labels.target === t.id)?.value).toBe(1);
  } finally {
    await p.stop();
    wss.close();
    await close(server);
  }
});

/** The head lines of the 101 a client gets through the proxy when the target switches with `answer`. */
async function switchHeadVia(answer: string): Promise<string[]> {
  const target = net.createServer((s) => {
    s.on('error', () => undefined);
    s.once('data', () => s.write(answer));
  });
  const p = await proxyFor(target);
  try {
    const r = await rawExchange(p.port, 'GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n', { deadlineMs: 1000 });
    return r.data.slice(0, r.data.indexOf('\r\n\r\n')).split('\r\n');
  } finally {
    await p.stop();
    await close(target);
  }
}

test("the target's 101 reaches the client with its header names as the target spelt them, repeated ones kept", async () => {
  // What node's parser gives in lower case: hand-written clients and devices may compare names case-sensitively.
  const head = await switchHeadVia('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-CamelCase: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n__proto__: x\r\n\r\n');
  expect(head[0]).toBe('HTTP/1.1 101 Switching Protocols');
  expect(head.slice(1)).toEqual(expect.arrayContaining([
    'Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=', 'X-CamelCase: 1',
    'Set-Cookie: a=1', 'Set-Cookie: b=2', '__proto__: x',
  ]));
});

test("the target's 101 reaches the client without hop-by-hop headers or those its Connection names, but for the switch's own", async () => {
  const head = await switchHeadVia('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\n' +
    'X-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-End: 2\r\n\r\n');
  expect(head[0]).toBe('HTTP/1.1 101 Switching Protocols');
  expect(head.slice(1).sort()).toEqual(['Connection: Upgrade', 'Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=', 'Upgrade: websocket', 'X-End: 2']);
});

test('a handshake reaches the target without hop-by-hop headers, those its Connection names, or underscore spellings of guarded ones', async () => {
  const heads: string[] = [];
  const target = rawTarget((head, s) => {
    heads.push(head);
    s.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
  });
  const p = await proxyFor(target);
  try {
    const r = await rawExchange(
      p.port,
      'GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Secret\r\nX-Secret: 1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n' +
        'X_Forwarded_For: 6.6.6.6\r\nTransfer_Encoding: chunked\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\nX-Forwarded-For: 203.0.113.7\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n',
    );
    expect(r.responses.map((x) => x.status)).toEqual([403]);
    expect(heads).toHaveLength(1);
    const lines = heads[0].split('\r\n').slice(1).map((l) => l.toLowerCase());
    const names = lines.map((l) => l.slice(0, l.indexOf(':')));
    for (const gone of ['x-secret', 'x_forwarded_for', 'transfer_encoding', 'keep-alive', 'proxy-connection', 'te', 'proxy-authorization', 'transfer-encoding', 'content-length']) {
      expect(names).not.toContain(gone);
    }
    expect(lines).toEqual(expect.arrayContaining(['connection: upgrade', 'upgrade: websocket', 'x-forwarded-for: 203.0.113.7, 127.0.0.1', 'cookie: a=1; b=2', 'sec-websocket-version: 13']));
    // Names as the client wrote them, as on the plain path (a case-sensitive target reads them so).
    expect(heads[0].split('\r\n')).toEqual(expect.arrayContaining(['Host: a', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13', 'Cookie: a=1; b=2']));
  } finally {
    await p.stop();
    await close(target);
  }
});

test("a handshake's request-target reaches the target as the client sent it, as a plain request's does, with the ALB's trace header", async () => {
  const heads: string[] = [];
  const target = rawTarget((head, s) => {
    heads.push(head);
    s.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
  });
  const p = await proxyFor(target);
  const paths = ['//a//b/../c;x=1?x=%2F&y=//z', '/go/http:/x', '/s/https:/y//z'];
  try {
    for (const path of paths) {
      const r = await rawExchange(p.port, `GET ${path} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
      expect(r.responses.map((x) => x.status)).toEqual([403]);
    }
    expect(heads.map((h) => h.slice(0, h.indexOf('\r\n')))).toEqual(paths.map((path) => `GET ${path} HTTP/1.1`));
    expect(heads[0]).toMatch(/\r\nX-Amzn-Trace-Id: Root=1-[0-9a-f]{8}-[0-9a-f]{24}(\r\n|$)/);
  } finally {
    await p.stop();
    await close(target);
  }
});

test('Proxy-Connection: upgrade is no Connection: upgrade: the request is a plain GET, and the connection stays HTTP (no tunnel a front proxy would not know of)', async () => {
  const heads: string[] = [];
  const target = rawTarget((head, s) => {
    heads.push(head);
    s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
  });
  const p = await proxyFor(target);
  try {
    const r = await rawExchange(p.port,
      'GET /chat HTTP/1.1\r\nHost: a\r\nProxy-Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n' +
      'GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', { deadlineMs: 5000 });
    expect(r.responses.map((x) => [x.status, x.body])).toEqual([[200, 'ok'], [200, 'ok']]);
    expect(heads.map((h) => h.split('\r\n')[0])).toEqual(['GET /chat HTTP/1.1', 'GET /next HTTP/1.1']);
    expect(heads[0]).not.toMatch(/^connection:.*upgrade/im);
  } finally {
    await p.stop();
    await close(target);
  }
});

test('bytes a client sends right behind its handshake reach the target after its 101, before what the client sends next, once', async () => {
  let after = '';
  let afterAt101 = '';
  const target = net.createServer((s) => {
    s.on('error', () => undefined);
    let buf = '';
    let switched = false;
    s.on('data', (d) => {
      if (switched) return void (after += d.toString('latin1'));
      buf += d.toString('latin1');
      if (!buf.includes('\r\n\r\n')) return;
      switched = true;
      after = buf.slice(buf.indexOf('\r\n\r\n') + 4); // nothing yet: the proxy holds them until the 101
      setTimeout(() => {
        afterAt101 = after;
        s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
      }, 200);
    });
  });
  const p = await proxyFor(target);
  try {
    const c = net.connect(p.port, '127.0.0.1', () => c.write('GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nEARLY'));
    c.on('error', () => undefined);
    let got = '';
    c.on('data', (d) => {
      got += d.toString('latin1');
      if (got.startsWith('HTTP/1.1 101') && !got.includes('sent')) {
        got += ' sent';
        c.write('LATER');
      }
    });
    await until('both at the target', () => after === 'EARLYLATER' || after.length > 10);
    expect([afterAt101, after]).toEqual(['', 'EARLYLATER']);
    c.destroy();
  } finally {
    await p.stop();
    await close(target);
  }
});

test('a handshake announcing a body is a 400 that reaches no target (a target would wait for it)', async () => {
  let connections = 0;
  const target = net.createServer((s) => {
    connections++;
    s.destroy();
  });
  const p = await proxyFor(target);
  try {
    for (const framing of ['Content-Length: 1\r\n', 'Transfer-Encoding: chunked\r\n']) {
      const r = await rawExchange(p.port, `GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${framing}\r\n`, { deadlineMs: 3000 });
      expect(r.responses.map((x) => x.status)).toEqual([400]);
    }
    expect(connections).toBe(0);
  } finally {
    await p.stop();
    await close(target);
  }
});

test('a handshake with Content-Length 0, spelt 0 or 00, announces no body and reaches its target', async () => {
  const heads: string[] = [];
  const target = net.createServer((s) => {
    s.once('data', (d) => {
      heads.push(d.toString('latin1'));
      s.end('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n');
    });
  });
  const p = await proxyFor(target);
  try {
    for (const length of ['0', '00']) {
      const r = await rawExchange(p.port, `GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: ${length}\r\n\r\n`, { deadlineMs: 3000 });
      expect(r.responses.map((x) => x.status)).toEqual([101]);
    }
    expect(heads).toHaveLength(2);
  } finally {
    await p.stop();
    await close(target);
  }
});

test('WebSockets are not held to POOL_SIZE (the keep-alive pool): a chat app on one task takes more than it, and requests still go', async () => {
  // An ALB does not cap them per target either; MAX_CONNECTIONS bounds them, as every client connection.
  const server = http.createServer((req, res) => res.end('plain'));
  const wss = new WebSocketServer({ server });
  wss.on('connection', (sock) => sock.on('message', (m) => sock.send(m)));
  const port = await listen(server);
  const t = makeTarget('127.0.0.1', port);
  const p = await start(
    loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: t.id, POOL_SIZE: '2', PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off' }),
    { provider: { name: 'test', discover: async () => [t] } },
  );
  const sockets: WebSocket[] = [];
  try {
    for (let i = 0; i < 5; i++) {
      const ws = await open(p.port);
      expect(ws).toBeInstanceOf(WebSocket);
      sockets.push(ws as WebSocket);
    }
    // Every tunnel works, the last as the first.
    const echoed = await Promise.all(sockets.map((ws, i) => new Promise<string>((r) => {
      ws.once('message', (m) => r(String(m)));
      ws.send(`hello ${i}`);
    })));
    expect(echoed).toEqual(['hello 0', 'hello 1', 'hello 2', 'hello 3', 'hello 4']);
    const r = await request(p.port);
    expect([r.status, r.body]).toEqual([200, 'plain']);
  } finally {
    for (const ws of sockets) ws.terminate();
    await p.stop();
    wss.close();
    await close(server);
  }
});

describe('a handshake whose answer ends the connection does not keep it', () => {
  const HANDSHAKE = 'GET /chat HTTP/1.1\r\nHost: HOST\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
  const open = async (): Promise<number> => (await activeConnections.get()).values[0]?.value ?? 0;

  /**
   * Clients that send one byte more once they have their answer: `closing` of them then close their
   * side, the others never do. The server must see each close, and close the others itself.
   */
  function handshakes(port: number, host: string, n: number, closing: boolean): Promise<string[]> {
    return Promise.all(Array.from({ length: n }, () => new Promise<string>((resolve) => {
      const c = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
      let got = '';
      c.on('error', () => undefined);
      c.write(HANDSHAKE.replace('HOST', host));
      c.on('data', (d) => {
        if (!got) {
          c.write('X');
          if (closing) c.end();
        }
        got += d.toString('latin1');
      });
      c.on('end', () => resolve(got.split('\r\n')[0]));
      sockets.push(c);
    })));
  }
  let sockets: net.Socket[] = [];
  afterEach(() => {
    for (const s of sockets) s.destroy();
    sockets = [];
  });

  test.each([
    ['refused before any target (a bad Host)', 'a b', 'HTTP/1.1 400 Bad Request', (_s: net.Socket) => undefined],
    ["refused by the target (its answer passed on)", 'a', 'HTTP/1.1 403 Forbidden', (s: net.Socket) => s.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno')],
    ['failed at the target (its answer garbled)', 'a', 'HTTP/1.1 502 Bad Gateway', (s: net.Socket) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nno')],
  ])('%s: a client that sends a byte more and closes is gone at once; one that never closes goes after LINGER_MS', async (_what, host, statusLine, answer) => {
    const target = net.createServer((s) => {
      s.on('error', () => undefined);
      s.once('data', () => answer(s));
    });
    // A breaker that opens would turn the target's 502s into 503s: not what this is about.
    const p = await proxyFor(target, { RETRIES: '0', CIRCUIT_BREAKER_THRESHOLD: '1000' });
    try {
      const before = await open();
      expect(await handshakes(p.port, host, 20, true)).toEqual(Array(20).fill(statusLine));
      // Well before LINGER_MS: their closes were read.
      await until('the closed connections to be let go', async () => (await open()) === before, LINGER_MS - 2000);
      expect(await handshakes(p.port, host, 5, false)).toEqual(Array(5).fill(statusLine));
      expect(await open()).toBe(before + 5);
      await until('the silent connections to be let go', async () => (await open()) === before, LINGER_MS + 3000);
    } finally {
      await p.stop();
      await close(target);
    }
  }, 20_000);
});

test("a handshake's answer is held to the limits of a plain request's, and under HTTP checks its failures are no mark against the target's breaker", async () => {
  const bigHead = Array.from({ length: 200 }, (_, i) => `X-Header-${i}: ${'v'.repeat(100)}\r\n`).join('');
  // Plain requests (and health checks) are answered; a handshake gets a 22 KB head, or a garbled answer.
  const target = rawTarget((head, s) => {
    if (!/upgrade: websocket/i.test(head)) s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    else if (head.startsWith('GET /big ')) s.end(`HTTP/1.1 200 OK\r\n${bigHead}Content-Length: 2\r\n\r\nok`);
    else if (head.startsWith('GET /huge ')) s.end(`HTTP/1.1 200 OK\r\n${bigHead.repeat(4)}Content-Length: 2\r\n\r\nok`);
    else s.end('HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nno');
  });
  const p = await proxyFor(target, { HEALTH_CHECK_PATH: '/ping', RETRIES: '0', CIRCUIT_BREAKER_THRESHOLD: '2' });
  const handshake = (path: string) =>
    `GET ${path} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;
  try {
    await until('the target to pass its check', async () => (await request(p.port)).status === 200);
    const big = await rawExchange(p.port, handshake('/big'), { deadlineMs: 5000 });
    expect(big.responses.map((r) => [r.status, r.headers['x-header-199']])).toEqual([[200, 'v'.repeat(100)]]);
    // Past 64 KiB, what a plain request gets: the same 502, said the same way, and no mark.
    const huge = await rawExchange(p.port, handshake('/huge'), { deadlineMs: 5000 });
    expect(huge.responses.map((r) => [r.status, r.body])).toEqual([[502, 'upstream response headers too large\n']]);
    for (let i = 0; i < 4; i++) {
      const r = await rawExchange(p.port, handshake('/garbled'), { deadlineMs: 5000 });
      expect(r.responses.map((x) => x.status)).toEqual([502]);
    }
    // Twice the threshold, and the target still takes requests.
    expect((await request(p.port)).status).toBe(200);
  } finally {
    await p.stop();
    await close(target);
  }
});

describe('handshakes a target does not complete', () => {
  const HANDSHAKE = 'GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
  let target: net.Server;
  let sockets: net.Socket[] = [];
  let proxy: Running | undefined;

  /** A raw target that calls `onHandshake` once it has read a handshake's head. */
  async function proxyTo(onHandshake: (s: net.Socket) => void, env: Record<string, string> = {}, allowHalfOpen = false): Promise<number> {
    target = net.createServer({ allowHalfOpen }, (s) => {
      sockets.push(s);
      s.on('error', () => undefined);
      let buf = '';
      s.on('data', (d) => {
        buf += d.toString('latin1');
        if (buf.includes('\r\n\r\n')) {
          buf = '';
          onHandshake(s);
        }
      });
    });
    const t = makeTarget('127.0.0.1', await listen(target));
    proxy = await start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: t.id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', ...env }), {
      provider: { name: 'test', discover: async () => [t] },
    });
    return proxy.port;
  }

  afterEach(async () => {
    await proxy?.stop();
    proxy = undefined;
    for (const s of sockets) s.destroy();
    sockets = [];
    await close(target);
  });

  test('no answer to the handshake within UPSTREAM_TIMEOUT is a 504', async () => {
    const port = await proxyTo(() => undefined, { UPSTREAM_TIMEOUT: '1' });
    const r = await rawExchange(port, HANDSHAKE, { deadlineMs: 5000 });
    expect(r.responses.map((x) => x.status)).toEqual([504]);
    expect(r.closed).toBe(true);
    expect(r.ms).toBeLessThan(4000);
  });

  test('a refusal with a chunked body reaches the client as a well-framed answer, without hop-by-hop headers', async () => {
    const port = await proxyTo((s) =>
      s.end('HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Why: version\r\n\r\n5\r\nhello\r\n0\r\n\r\n'),
    );
    const r = await rawExchange(port, HANDSHAKE);
    expect(r.responses).toHaveLength(1);
    const [refusal] = r.responses;
    expect([refusal.status, refusal.headers['x-why'], refusal.headers.connection]).toEqual([426, 'version', 'close']);
    expect(refusal.headers['transfer-encoding']).toBeUndefined();
    expect(refusal.headers['keep-alive']).toBeUndefined();
    // Without a length, the body runs to the close.
    expect(refusal.headers['content-length']).toBeUndefined();
    expect([r.data.slice(r.data.indexOf('\r\n\r\n') + 4), r.closed]).toEqual(['hello', true]);
  });

  /** The access line of the handshake to `path` (LOG_CONNECTIONS), once written to the spied stdout. */
  const handshakeLine = (stdout: jest.SpyInstance, path: string): Promise<Record<string, unknown> | undefined> =>
    until('the access line', () => {
      const line = stdout.mock.calls.map(([l]) => String(l)).find((l) => l.includes('"msg":"access"') && l.includes(`"path":"${path}"`));
      return line === undefined ? undefined : (JSON.parse(line) as Record<string, unknown>);
    });

  test.each([
    ['a FIN', '', (c: net.Socket) => c.end()],
    ['a reset', '', (c: net.Socket) => c.resetAndDestroy()],
    // RFC 6455 has a client wait for the 101; bytes sent before it are kept, and must not hide the FIN.
    ['a FIN after bytes sent early', 'EARLY', (c: net.Socket) => c.end()],
  ])('a client that leaves with %s before the target answers calls the handshake off there, and is logged 499', async (_how, early, leave) => {
    let targetSaw: string | undefined;
    const port = await proxyTo((s) => {
      const t0 = Date.now();
      s.once('end', () => (targetSaw ??= `end after ${Date.now() - t0} ms`));
      s.once('close', () => (targetSaw ??= `close after ${Date.now() - t0} ms`));
      // A 101 far later, that nobody should get: the target may not hold a socket for a client gone.
      setTimeout(() => s.writable && s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'), 10_000).unref();
    }, { LOG_CONNECTIONS: 'true' });
    const stdout = jest.spyOn(process.stdout, 'write');
    try {
      const c = net.connect(port, '127.0.0.1', () => c.write(HANDSHAKE + early));
      c.on('error', () => undefined);
      await until('the handshake at the target', () => sockets.length > 0);
      leave(c);
      await until('the target told', () => targetSaw, 5000);
      expect(targetSaw).toMatch(/after \d+ ms/);
      expect(await handshakeLine(stdout, '/chat')).toMatchObject({ status: 499 });
    } finally {
      stdout.mockRestore();
    }
  });

  test.each([
    ['a FIN', (c: net.Socket) => c.end()],
    ['a reset', (c: net.Socket) => c.resetAndDestroy()],
  ])('a client that leaves with %s while its route is looked up is logged 499 at once, with its address, and nothing goes to a target', async (_how, leave) => {
    target = net.createServer((s) => sockets.push(s));
    const t = makeTarget('127.0.0.1', await listen(target));
    let found: (targets: Target[]) => void = () => undefined;
    // Routes by Host (ECS mode), each looked up when its first request comes.
    proxy = await start(loadConfig({ DOMAIN: 'example.com', PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', LOG_CONNECTIONS: 'true' }), {
      provider: { name: 'test', discover: () => new Promise<Target[]>((resolve) => (found = resolve)) },
    });
    const stdout = jest.spyOn(process.stdout, 'write');
    try {
      const c = net.connect(proxy.port, '127.0.0.1', () => c.write(HANDSHAKE.replace('Host: a', `Host: chat-${t.port}-prod.example.com`)));
      c.on('error', () => undefined);
      await new Promise((r) => setTimeout(r, 200)); // the route is being looked up (it never is)
      const left = Date.now();
      leave(c);
      expect(await handshakeLine(stdout, '/chat')).toMatchObject({ status: 499, client: '127.0.0.1' });
      expect(Date.now() - left).toBeLessThan(5000); // not at the discovery wait's end (12 s)
      found([t]);
      await new Promise((r) => setTimeout(r, 200));
      expect(sockets).toHaveLength(0);
    } finally {
      stdout.mockRestore();
    }
  });

  test('a handshake cut at SHUTDOWN_TIMEOUT before its target answered is logged 503, not 101', async () => {
    const port = await proxyTo(() => undefined, { LOG_CONNECTIONS: 'true', SHUTDOWN_TIMEOUT: '0.5' });
    const stdout = jest.spyOn(process.stdout, 'write');
    try {
      const c = net.connect(port, '127.0.0.1', () => c.write(HANDSHAKE));
      c.on('error', () => undefined);
      await until('the handshake at the target', () => sockets.length > 0);
      await proxy!.stop();
      proxy = undefined;
      expect(await handshakeLine(stdout, '/chat')).toMatchObject({ status: 503, error: 'cut_at_shutdown' });
      c.destroy();
    } finally {
      stdout.mockRestore();
    }
  });

  test("a refusal gets a Date when its target sent none, and keeps the target's own", async () => {
    const without = await proxyTo((s) => s.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno'));
    const [plain] = (await rawExchange(without, HANDSHAKE)).responses;
    expect(plain.status).toBe(401);
    expect(Math.abs(Date.parse(plain.headers.date as string) - Date.now())).toBeLessThan(60_000);
    await proxy?.stop();
    await close(target);
    const own = await proxyTo((s) => s.end('HTTP/1.1 401 Unauthorized\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\nContent-Length: 2\r\n\r\nno'));
    const r = await rawExchange(own, HANDSHAKE);
    expect(r.responses[0].headers.date).toBe('Tue, 01 Dec 2026 10:00:00 GMT');
    expect(r.data.match(/\r\nDate:/gi)).toHaveLength(1);
  });

  test("a refusal its target cuts short with a FIN (before its Content-Length) is cut: the client's connection goes", async () => {
    const port = await proxyTo((s) => s.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 100\r\n\r\nshort'));
    const r = await rawExchange(port, HANDSHAKE, { deadlineMs: 4000 });
    expect(r.data.startsWith('HTTP/1.1 401 Unauthorized\r\n')).toBe(true);
    expect(r.data.endsWith('\r\n\r\nshort')).toBe(true);
    expect(r.closed).toBe(true);
  });

  test('a refusal with an invalid status is a 502', async () => {
    const port = await proxyTo((s) => s.end('HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nno'));
    const r = await rawExchange(port, HANDSHAKE);
    expect(r.responses.map((x) => x.status)).toEqual([502]);
  });

  test('a refusal whose target falls silent mid-body is cut, with no answer of ours spliced into it', async () => {
    const port = await proxyTo((s) => s.write('HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nno'), { UPSTREAM_TIMEOUT: '1' });
    const r = await rawExchange(port, HANDSHAKE, { deadlineMs: 5000 });
    expect(r.closed).toBe(true);
    expect(r.data.match(/HTTP\/1\.1/g)).toHaveLength(1);
    expect(r.data.endsWith('\r\n\r\nno')).toBe(true);
  });

  test('a client that ends its side of a tunnel whose target ignores the FIN: both are closed shortly after, and the slot is free', async () => {
    const SWITCH = 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n';
    // The target keeps its side open whatever comes (a raw socket server, allowHalfOpen).
    const port = await proxyTo((s) => s.write(SWITCH), { POOL_SIZE: '1' }, true);
    for (let i = 0; i < 3; i++) {
      // Each tunnel is opened, then ended by the client with a FIN only; the next needs its slot (POOL_SIZE=1).
      const client = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      client.on('error', () => undefined);
      let got = '';
      client.on('data', (d) => (got += d.toString('latin1')));
      const closed = new Promise<void>((r) => client.once('close', () => r()));
      client.write(HANDSHAKE);
      await until('the switch', () => got.startsWith('HTTP/1.1 101 '), 5000);
      const ended = Date.now();
      client.end();
      await closed;
      expect(Date.now() - ended).toBeGreaterThanOrEqual(TUNNEL_HALF_CLOSE_GRACE_MS - 100);
      expect(Date.now() - ended).toBeLessThan(TUNNEL_HALF_CLOSE_GRACE_MS + 1500);
    }
  });

  test('a tunnel the target resets after switching closes, with no HTTP answer written into it', async () => {
    const port = await proxyTo((s) => {
      s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi', 'latin1');
      setTimeout(() => s.resetAndDestroy(), 100);
    });
    const r = await rawExchange(port, HANDSHAKE);
    expect(r.closed).toBe(true);
    expect(r.data.startsWith('HTTP/1.1 101 Switching Protocols\r\n')).toBe(true);
    expect(r.data.endsWith('\r\n\r\n\x81\x02hi')).toBe(true);
    expect(r.data.match(/HTTP\/1\.1/g)).toHaveLength(1);
  });
});

test('a handshake that finds every breaker open just after the old targets refused waits for the rediscovery and opens on the new one (a deploy)', async () => {
  const echo = http.createServer();
  const wss = new WebSocketServer({ server: echo });
  wss.on('connection', (sock) => sock.on('message', (m) => sock.send(m)));
  const fresh = makeTarget('127.0.0.1', await listen(echo));
  const gone = net.createServer();
  const old = makeTarget('127.0.0.1', await listen(gone));
  await close(gone); // the old task stopped: its port refuses
  let deployed = false;
  // After the deploy the discovery takes a moment (AWS), then finds only the new task.
  const discover = (): Promise<Target[]> => (deployed ? new Promise((r) => setTimeout(() => r([fresh]), 300)) : Promise.resolve([old]));
  const p = await start(
    loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: old.id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_THRESHOLD: '1', NODE_CHECK_PERIOD: '60' }),
    { provider: { name: 'test', discover } },
  );
  try {
    expect((await request(p.port)).status).toBe(502); // refused: the breaker opens, the rediscovery still finds it
    deployed = true;
    await new Promise((r) => setTimeout(r, 1100)); // past the wait between rediscoveries for refusals
    const ws = await open(p.port);
    expect(ws).toBeInstanceOf(WebSocket);
    expect(await echoOf(ws as WebSocket, 'on the new task')).toBe('on the new task');
    (ws as WebSocket).close();
  } finally {
    await p.stop();
    wss.close();
    await close(echo);
  }
});

test('at SHUTDOWN_TIMEOUT a handshake still waiting for its route gets a 503 with Retry-After: 1, counted as one; an open WebSocket is cut', async () => {
  const server = http.createServer();
  const wss = new WebSocketServer({ server });
  wss.on('connection', (sock) => sock.on('message', (m) => sock.send(m)));
  const t = makeTarget('127.0.0.1', await listen(server));
  // The `slow` route's discovery lasts until the test lets it go; every other route has the echo target.
  const discovering: string[] = [];
  let release!: (targets: Target[]) => void;
  const slow = new Promise<Target[]>((r) => (release = r));
  const p = await start(loadConfig({ DOMAIN: 'example.com', PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', SHUTDOWN_TIMEOUT: '0.5' }), {
    provider: {
      name: 'test',
      discover: async (route) => {
        discovering.push(route.service);
        return route.service === 'slow' ? slow : [t];
      },
    },
  });
  const fiveHundreds = async (): Promise<number> =>
    (await requestsTotal.get()).values.find((v) => v.labels.route === 'none' && v.labels.code === '5xx')?.value ?? 0;
  try {
    const open = new WebSocket(`ws://127.0.0.1:${p.port}/`, { headers: { Host: `echo-${t.port}-prod.example.com` } });
    open.on('error', () => undefined);
    await new Promise((r) => open.once('open', r));
    const cut = new Promise<number>((r) => open.once('close', (code) => r(code)));
    const before = await fiveHundreds();
    const handshake = 'GET /chat HTTP/1.1\r\nHost: slow-80-prod.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
    const waiting = rawExchange(p.port, handshake, { deadlineMs: 5000 });
    await until('the slow discovery under way', () => discovering.includes('slow'), 5000, 5);
    const started = Date.now();
    await p.stop();
    const r = await waiting;
    expect(r.responses.map((x) => [x.status, x.headers.connection, x.headers['retry-after']])).toEqual([[503, 'close', '1']]);
    expect(r.closed).toBe(true);
    expect(r.ms).toBeGreaterThanOrEqual(400);
    expect(Date.now() - started).toBeLessThan(3000);
    // The WebSocket its target has is cut, as before: no answer of ours goes into it.
    expect(await cut).toBe(1006);
    expect(await fiveHundreds()).toBe(before + 1);
    // The discovery ending later sends the handshake nowhere and counts nothing more.
    release([t]);
    await new Promise((r) => setTimeout(r, 50));
    expect(await fiveHundreds()).toBe(before + 1);
  } finally {
    release([]);
    await p.stop();
    // The proxy's side of a tunnel it cut is the process exit's to close: here, the target closes it.
    for (const c of wss.clients) c.terminate();
    wss.close();
    await close(server);
  }
});

describe('a handshake whose connection fails before the target answers is tried on the next target', () => {
  /** A WebSocket echo target, and a port that refuses, ordered so that the refusing one is picked first. */
  async function deadFirst(env: Record<string, string> = {}): Promise<{ p: Running; echo: http.Server; wss: WebSocketServer; dead: Target }> {
    const echo = http.createServer();
    const wss = new WebSocketServer({ server: echo });
    wss.on('connection', (sock) => sock.on('message', (m) => sock.send(m)));
    const live = makeTarget('127.0.0.1', await listen(echo));
    let dead: Target;
    // A closed port whose id sorts before the live one's: targets are tried in id order from the first.
    for (;;) {
      const probe = net.createServer();
      dead = makeTarget('127.0.0.1', await listen(probe));
      await close(probe);
      if (dead.id < live.id) break;
    }
    const targets = [dead, live];
    const p = await start(
      loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: targets.map((t) => t.id).join(','), PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', ...env }),
      { provider: { name: 'test', discover: async () => targets } },
    );
    return { p, echo, wss, dead };
  }

  test('refused by the first target, the WebSocket opens on the second and carries messages', async () => {
    const { p, echo, wss } = await deadFirst();
    try {
      const ws = await open(p.port);
      expect(ws).toBeInstanceOf(WebSocket);
      expect(await echoOf(ws as WebSocket, 'hello after a retry')).toBe('hello after a retry');
      (ws as WebSocket).close();
    } finally {
      await p.stop();
      wss.close();
      await close(echo);
    }
  });

  test('a frame sent right behind the handshake reaches the second target once, after its 101', async () => {
    const { p, echo, wss } = await deadFirst({ SHUTDOWN_TIMEOUT: '1' });
    try {
      // A masked text frame "early", as a client that does not wait for the 101 sends it.
      const mask = Buffer.from([1, 2, 3, 4]);
      const payload = Buffer.from('early');
      const frame = Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))]);
      const handshake = 'GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
      const c = net.connect(p.port, '127.0.0.1', () => c.write(Buffer.concat([Buffer.from(handshake), frame])));
      c.on('error', () => undefined);
      let got = Buffer.alloc(0);
      c.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
      await until('the echo', () => got.includes('early'));
      await new Promise((r) => setTimeout(r, 200)); // a second echo would come by now
      const text = got.toString('latin1');
      expect(text.startsWith('HTTP/1.1 101')).toBe(true);
      // Once, as the echo server sends what it gets: a binary frame.
      expect([...text.slice(text.indexOf('\r\n\r\n') + 4)].map((ch) => ch.charCodeAt(0))).toEqual([0x82, 5, ...Buffer.from('early')]);
      c.destroy();
    } finally {
      await p.stop();
      for (const client of wss.clients) client.terminate();
      wss.close();
      await close(echo);
    }
  });

  test('with RETRIES=0 the refusal is the answer: a 502', async () => {
    const { p, echo, wss } = await deadFirst({ RETRIES: '0' });
    try {
      expect(await open(p.port)).toBe(502);
    } finally {
      await p.stop();
      wss.close();
      await close(echo);
    }
  });
});
