/**
 * The request path in one process: real backends and clients on 127.0.0.1, targets from a provider
 * given by the test.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { loadConfig } from '../../runtime/config';
import { Running, start } from '../../runtime/worker';
import { requestsTotal } from '../../runtime/metrics';
import { makeTarget, Provider, RouteKey, Target } from '../../runtime/types';
import { Backend, startBackend } from '../support/backend';
import { freePort, pump, request, until } from '../support/net';

const QUIET = { HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', LOG_CONNECTIONS: 'false' };

function fixed(targets: Target[]): Provider & { calls: RouteKey[] } {
  const calls: RouteKey[] = [];
  return { name: 'test', calls, discover: async (route) => (calls.push(route), targets) };
}

/** The access line a request for `path` left on stdout (spied on), once it is there. */
async function accessLine(stdout: jest.SpyInstance, path: string): Promise<Record<string, unknown>> {
  const line = await until('the access line', () =>
    stdout.mock.calls.map(([l]) => String(l)).find((l) => l.includes('"msg":"access"') && l.includes(path)),
  );
  return JSON.parse(line!);
}

async function proxy(env: Record<string, string>, provider: Provider): Promise<Running> {
  return start(loadConfig({ ...QUIET, PORT: '0', ...env }), { provider });
}

describe('forwarding to a static pool', () => {
  let backends: Backend[];
  let p: Running;
  beforeAll(async () => {
    backends = await Promise.all(['a', 'b', 'c'].map(startBackend));
    const targets = backends.map((b) => makeTarget('127.0.0.1', b.port));
    p = await proxy({ NODE_FILTER: 'static', STATIC_TARGETS: targets.map((t) => t.id).join(',') }, fixed(targets));
  });
  afterAll(async () => {
    await p.stop();
    await Promise.all(backends.map((b) => b.close()));
  });
  beforeEach(() => backends.forEach((b) => (b.seen.length = 0)));

  test('round-robin is exact over 3 backends', async () => {
    const names: string[] = [];
    for (let i = 0; i < 9; i++) names.push((await request(p.port)).body);
    const order = [...backends].sort((x, y) => (`127.0.0.1:${x.port}` < `127.0.0.1:${y.port}` ? -1 : 1)).map((b) => b.name);
    const start0 = order.indexOf(names[0]);
    const expected = Array.from({ length: 9 }, (_, i) => order[(start0 + i) % 3]);
    expect(names).toEqual(expected);
  });

  test("each client connection accepted is counted once, however many requests it carries (an ALB's NewConnectionCount)", async () => {
    const { acceptedConnections } = await import('../../runtime/metrics');
    const count = async (): Promise<number> => (await acceptedConnections.get()).values[0]?.value ?? 0;
    const before = await count();
    const answered = await Promise.all(Array.from({ length: 3 }, () => new Promise<number>((resolve) => {
      const s = net.connect(p.port, '127.0.0.1', () => s.write('GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n'));
      let text = '';
      s.on('data', (d) => (text += d));
      s.on('close', () => resolve(text.split('HTTP/1.1 200').length - 1));
    })));
    expect(answered).toEqual([2, 2, 2]);
    expect(await count()).toBe(before + 3);
  });

  test("every byte a client sends and receives is counted, heads and bodies (an ALB's ProcessedBytes), while its connection is open too", async () => {
    const { processedBytes } = await import('../../runtime/metrics');
    const bytes = async (): Promise<Record<string, number>> =>
      Object.fromEntries((await processedBytes.get()).values.map((v) => [String(v.labels.direction), v.value]));
    const before = await bytes();
    const sent = 'POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello';
    const s = net.connect(p.port, '127.0.0.1');
    let got = 0;
    s.on('data', (d: Buffer) => (got += d.length));
    s.write(sent);
    await until('the answer', () => got > 0 && got);
    await new Promise((r) => setTimeout(r, 50));
    // Still open: what it moved so far is in the reading already.
    const open = await bytes();
    expect([open.in - (before.in ?? 0), open.out - (before.out ?? 0)]).toEqual([sent.length, got]);
    const last = 'GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n';
    const answered = got;
    await new Promise<void>((resolve) => {
      s.on('close', () => resolve());
      s.write(last);
    });
    const after = await bytes();
    expect([after.in - (before.in ?? 0), after.out - (before.out ?? 0)]).toEqual([sent.length + last.length, got]);
    expect(got).toBeGreaterThan(answered);
  });

  test('round-robin stays fair with 50 concurrent clients', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 50 });
    const one = (): Promise<string> =>
      new Promise((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port: p.port, path: '/', agent }, (res) => {
            let body = '';
            res.on('data', (c) => (body += c));
            res.on('end', () => resolve(body));
          })
          .on('error', reject);
      });
    const bodies = await Promise.all(Array.from({ length: 50 }, async () => {
      const got: string[] = [];
      for (let i = 0; i < 6; i++) got.push(await one());
      return got;
    }));
    agent.destroy();
    const counts = bodies.flat().reduce<Record<string, number>>((m, n) => ((m[n] = (m[n] ?? 0) + 1), m), {});
    expect(counts).toEqual({ a: 100, b: 100, c: 100 });
  });

  test('Host is preserved, X-Forwarded-* set and appended, hop-by-hop headers dropped both ways', async () => {
    backends.forEach((b) => {
      b.handle = (_req, res) => {
        res.writeHead(200, { 'Keep-Alive': 'timeout=5', 'X-Secret-Hop': 'x', Connection: 'X-Secret-Hop', 'X-Kept': 'yes' });
        res.end('ok');
      };
    });
    const r = await request(p.port, {
      headers: {
        Host: 'app.example.com:6969',
        'X-Forwarded-For': '203.0.113.7',
        'X-Forwarded-Proto': 'https',
        Connection: 'keep-alive, X-Private',
        'X-Private': 'do not pass',
        'Keep-Alive': 'timeout=5',
        'Proxy-Authorization': 'Basic Zm9vOmJhcg==',
        TE: 'trailers',
        Forwarded: 'for=9.9.9.9;proto=https;host=evil.example',
        'X-Custom': 'kept',
      },
    });
    expect(r.status).toBe(200);
    expect(r.headers['x-kept']).toBe('yes');
    expect(r.headers['x-secret-hop']).toBeUndefined();
    expect(r.headers['keep-alive']).not.toBe('timeout=5'); // the proxy's own keep-alive, not the target's
    const seen = backends.flatMap((b) => b.seen)[0];
    expect(seen.headers.host).toBe('app.example.com:6969');
    expect(seen.headers['x-forwarded-for']).toBe('203.0.113.7, 127.0.0.1');
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-port']).toBe(String(p.port));
    expect(seen.headers['x-forwarded-host']).toBe('app.example.com:6969');
    expect(seen.headers['x-custom']).toBe('kept');
    // Forwarded (RFC 7239) is the client's invention: a target reading it first would believe it.
    for (const h of ['x-private', 'keep-alive', 'proxy-authorization', 'te', 'forwarded']) expect(seen.headers[h]).toBeUndefined();
  });

  test('Expect: 100-continue is answered with a 100 before the body, which then reaches the target whole', async () => {
    backends.forEach((b) => {
      b.handle = (req, res) => {
        let body = '';
        req.on('data', (c) => (body += c));
        req.on('end', () => res.end(`got ${body}`));
      };
    });
    const r = await new Promise<{ continued: boolean; status: number; body: string }>((resolve, reject) => {
      let continued = false;
      const req = http.request({ host: '127.0.0.1', port: p.port, method: 'PUT', path: '/upload', agent: false, headers: { Expect: '100-continue', 'Content-Length': '5' } });
      req.on('continue', () => {
        continued = true;
        req.end('hello');
      });
      req.on('response', (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ continued, status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.setTimeout(5000, () => req.destroy(new Error('client timeout')));
    });
    expect(r).toEqual({ continued: true, status: 200, body: 'got hello' });
    // The expectation was met here; the target is not asked to meet it again.
    expect(backends.flatMap((b) => b.seen)[0].headers.expect).toBeUndefined();
  });

  const exchange = (head: string): Promise<string> =>
    new Promise<string>((resolve) => {
      const s = net.connect(p.port, '127.0.0.1', () => s.write(head));
      let data = '';
      s.on('data', (d) => (data += d));
      s.on('close', () => resolve(data));
      s.setTimeout(5000, () => s.destroy());
    });

  test('an absolute-form request target naming an address is refused, never followed', async () => {
    const reply = await exchange('GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n');
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(backends.flatMap((b) => b.seen)).toHaveLength(0);
  });

  test.each([
    ['a path and query', 'http://App.example.com:8080/a/b?c=d', '/a/b?c=d', 'App.example.com:8080'],
    ['no path', 'HTTPS://app.example.com', '/', 'app.example.com'],
    ['only a query', 'http://app.example.com?x=1', '/?x=1', 'app.example.com'],
  ])('an absolute-form target with %s goes on in origin-form, its authority as Host (RFC 9112 §3.2.2)', async (_what, target, path, authority) => {
    const reply = await exchange(`GET ${target} HTTP/1.1\r\nHost: other.example.com\r\nConnection: close\r\n\r\n`);
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    const seen = backends.flatMap((b) => b.seen);
    expect(seen.map((x) => [x.url, x.headers.host, x.headers['x-forwarded-host']])).toEqual([[path, authority, authority]]);
    // The authority replaced the client's Host; it was not added beside it.
    expect(seen[0].rawHeaders.filter((_, i) => i % 2 === 0 && seen[0].rawHeaders[i].toLowerCase() === 'host')).toHaveLength(1);
  });

  test('TRACE is answered 405 by the proxy, with Allow, and reaches no target', async () => {
    const reply = await exchange('TRACE / HTTP/1.1\r\nHost: app.example.com\r\nCookie: session=secret\r\nConnection: close\r\n\r\n');
    expect(reply).toMatch(/^HTTP\/1\.1 405 /);
    expect(reply).toMatch(/\r\nAllow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\n/);
    expect(reply).not.toContain('secret');
    expect(backends.flatMap((b) => b.seen)).toHaveLength(0);
  });

  test('OPTIONS of an absolute-form URI without a path goes on as OPTIONS * (RFC 9112 §3.2.4)', async () => {
    const reply = await exchange('OPTIONS http://app.example.com HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n');
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    expect(backends.flatMap((b) => b.seen).map((x) => [x.method, x.url])).toEqual([['OPTIONS', '*']]);
  });

  test('an HTTP/1.0 absolute-form request without Host gets its authority as Host', async () => {
    const reply = await exchange('GET http://app.example.com/old HTTP/1.0\r\n\r\n');
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    expect(backends.flatMap((b) => b.seen).map((x) => [x.url, x.headers.host])).toEqual([['/old', 'app.example.com']]);
  });

  test.each([
    ['another scheme', 'ftp://app.example.com/'],
    ['userinfo', 'http://app.example.com@169.254.169.254/'],
    ['an empty authority', 'http:///path'],
    ['a decimal address', 'http://2852039166/'],
    ['a hexadecimal address', 'http://0xA9FEA9FE/'],
    ['localhost', 'http://localhost:22/'],
    ['an IPv6 literal', 'http://[::1]:22/'],
    ['a percent-encoded address', 'http://127.0.0.%31:22/'],
    ['authority-form', 'app.example.com:80'],
  ])('a request target with %s is a 400', async (_what, target) => {
    const reply = await exchange(`GET ${target} HTTP/1.1\r\nHost: app.example.com\r\n\r\n`);
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(backends.flatMap((b) => b.seen)).toHaveLength(0);
  });

  test('with an absolute-form target, a malformed Host header is still a 400', async () => {
    const reply = await exchange('GET http://app.example.com/ HTTP/1.1\r\nHost: a b\r\n\r\n');
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(backends.flatMap((b) => b.seen)).toHaveLength(0);
  });
});

test('with TRUST_FORWARDED_PROTO, the scheme a TLS terminator in front sent reaches the target', async () => {
  const backend = await startBackend('b');
  const p = await proxy({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, TRUST_FORWARDED_PROTO: 'true' }, fixed([makeTarget('127.0.0.1', backend.port)]));
  try {
    expect((await request(p.port, { headers: { 'X-Forwarded-Proto': 'https' } })).status).toBe(200);
    expect((await request(p.port)).status).toBe(200);
    expect(backend.seen.map((x) => [x.headers['x-forwarded-proto'], x.headers['x-forwarded-port']])).toEqual([
      ['https', '443'],
      ['http', String(p.port)],
    ]);
  } finally {
    await p.stop();
    await backend.close();
  }
});

test('a body trickled past REQUEST_TIMEOUT is a 408, and the access line says 408, not 499', async () => {
  const backend = await startBackend('b');
  backend.handle = (req, res) => {
    req.resume();
    req.on('end', () => res.end('done'));
  };
  const p = await proxy(
    { NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, REQUEST_TIMEOUT: '1', LOG_CONNECTIONS: 'true' },
    fixed([makeTarget('127.0.0.1', backend.port)]),
  );
  const stdout = jest.spyOn(process.stdout, 'write');
  try {
    const reply = await new Promise<string>((resolve) => {
      const s = net.connect(p.port, '127.0.0.1', () => s.write('POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n'));
      const drip = setInterval(() => s.writable && s.write('x'), 100);
      let data = '';
      s.on('data', (d) => (data += d));
      s.on('error', () => undefined);
      s.on('close', () => (clearInterval(drip), resolve(data)));
      s.setTimeout(5000, () => s.destroy());
    });
    expect(reply).toMatch(/^HTTP\/1\.1 408 /);
    expect(await accessLine(stdout, '/upload')).toMatchObject({ path: '/upload', status: 408 });
  } finally {
    stdout.mockRestore();
    await p.stop();
    await backend.close();
  }
});

test('a request whose whole body came with its head, refused by its target (502), leaves its keep-alive connection serving the next', async () => {
  const t = makeTarget('127.0.0.1', await freePort()); // nothing listens: every connection is refused
  const p = await proxy({ NODE_FILTER: 'static', STATIC_TARGETS: t.id }, fixed([t]));
  try {
    const answers = await new Promise<string[]>((resolve) => {
      const s = net.connect(p.port, '127.0.0.1', () => s.write('POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello'));
      let data = '';
      let second = false;
      s.on('data', (d) => {
        data += d;
        // The first answer is whole (its body ends it): the next request goes on the same connection.
        if (!second && /\r\n\r\n[^]*\n$/.test(data)) {
          second = true;
          s.write('GET /next HTTP/1.1\r\nHost: a\r\n\r\n');
        }
        const heads = data.match(/^HTTP\/1\.1 \d{3}/gm) ?? [];
        if (heads.length === 2) (s.destroy(), resolve(heads));
      });
      s.on('error', () => undefined);
      s.setTimeout(3000, () => (s.destroy(), resolve(data.match(/^HTTP\/1\.1 \d{3}/gm) ?? [])));
    });
    expect(answers).toEqual(['HTTP/1.1 502', 'HTTP/1.1 502']);
  } finally {
    await p.stop();
  }
});

test("the time a target holds an upload back is not the client's: REQUEST_TIMEOUT does not count it", async () => {
  const backend = await startBackend('b');
  backend.handle = (req, res) => {
    req.pause(); // busy for 5 s: the proxy's writes fill the sockets' buffers, and it stops reading the client
    setTimeout(() => {
      let n = 0;
      req.on('data', (d: Buffer) => (n += d.length));
      req.on('end', () => res.end(`got ${n}`));
      req.resume();
    }, 5000);
  };
  // Held back longer than REQUEST_TIMEOUT, which leaves the client's own sending of 64 MB (client, proxy
  // and target share this process's one core) room on a busy machine.
  const p = await proxy(
    { NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, REQUEST_TIMEOUT: '3' },
    fixed([makeTarget('127.0.0.1', backend.port)]),
  );
  try {
    const size = 64 * 1024 * 1024;
    const reply = await new Promise<{ status?: number; body: string }>((resolve, reject) => {
      const req = http.request({ port: p.port, host: '127.0.0.1', method: 'POST', path: '/upload', headers: { 'content-length': size } }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      });
      req.on('error', reject);
      req.setTimeout(15_000, () => req.destroy(new Error('no answer in 15 s')));
      pump(req, size, { chunk: Buffer.alloc(1024 * 1024, 'x') });
    });
    expect(reply).toEqual({ status: 200, body: `got ${64 * 1024 * 1024}` });
  } finally {
    await p.stop();
    await backend.close();
  }
});

test('a target that answers an upload early and reads on gets the whole body, also from a client that asked for the close (urllib, HTTP/1.0)', async () => {
  const backend = await startBackend('b');
  const received: number[] = [];
  backend.handle = (req, res) => {
    let n = 0;
    res.end('stored as it comes');
    req.on('data', (c: Buffer) => (n += c.length));
    req.on('end', () => received.push(n));
  };
  const p = await proxy({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}` }, fixed([makeTarget('127.0.0.1', backend.port)]));
  try {
    for (const [version, extra] of [['HTTP/1.1', 'Connection: close\r\n'], ['HTTP/1.0', '']]) {
      const s = net.connect(p.port, '127.0.0.1');
      s.on('error', () => undefined);
      let got = '';
      s.on('data', (d) => (got += d));
      const closed = new Promise((r) => s.on('close', r));
      await new Promise((r) => s.once('connect', r));
      s.write(`POST /up ${version}\r\nHost: a\r\n${extra}Content-Length: 3000000\r\n\r\n` + 'a'.repeat(1_000_000));
      await until('the early answer', () => got.includes('stored as it comes'));
      s.write('b'.repeat(1_000_000)); // the rest, after the answer
      s.write('c'.repeat(1_000_000));
      await closed;
      await until('the whole body at the target', () => received.length > 0);
      expect(received.splice(0)).toEqual([3_000_000]);
    }
  } finally {
    await p.stop();
    await backend.close();
  }
});

test('a client that leaves a long poll cancels it at the target at once, frees its socket, and is logged 499', async () => {
  // One socket per target (POOL_SIZE=1): a long poll held for a client that left would keep the next
  // request waiting until the poll's answer (10 s here).
  const backend = await startBackend('b');
  let cancelledAfterMs: number | undefined;
  backend.handle = (req, res) => {
    if (req.url !== '/poll') return void res.end('quick');
    const t0 = Date.now();
    const answer = setTimeout(() => res.end('too late'), 10_000);
    res.on('close', () => {
      clearTimeout(answer);
      if (!res.writableFinished) cancelledAfterMs = Date.now() - t0;
    });
  };
  const p = await proxy(
    { NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, POOL_SIZE: '1', LOG_CONNECTIONS: 'true' },
    fixed([makeTarget('127.0.0.1', backend.port)]),
  );
  const stdout = jest.spyOn(process.stdout, 'write');
  try {
    // As curl does when its --max-time passes, or a browser when a tab closes: a close, which sends a FIN.
    const s = net.connect(p.port, '127.0.0.1', () => s.write('GET /poll HTTP/1.1\r\nHost: a\r\n\r\n'));
    s.on('error', () => undefined);
    await until('the poll at the target', () => backend.seen.some((r) => r.url === '/poll'));
    s.end();
    await until('the poll cancelled at the target', () => cancelledAfterMs !== undefined, 5000);
    expect(cancelledAfterMs).toBeLessThan(5000);
    const quick = await request(p.port, { path: '/quick' });
    expect([quick.status, quick.body]).toEqual([200, 'quick']);
    expect(await accessLine(stdout, '/poll')).toMatchObject({ path: '/poll', status: 499 });
  } finally {
    stdout.mockRestore();
    await p.stop();
    await backend.close();
  }
});

/** How a request after a retry ends without its target's answer: the client leaves it, or its body stalls. */
interface EndedHere {
  readonly status: number;
  readonly env: Record<string, string>;
  readonly handle: Backend['handle'];
  /** Sends the request for `path`, and ends it the client's way once it is at the target (or at once). */
  readonly send: (s: net.Socket, path: string, backend: Backend) => Promise<void>;
}
const LEFT_A_LONG_POLL: EndedHere = {
  status: 499,
  env: {},
  handle: () => undefined, // never answers
  send: async (s, path, backend) => {
    s.write(`GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`);
    await until('the poll at the target', () => backend.seen.some((r) => r.url === path));
    s.end();
  },
};
const STALLED_ITS_BODY: EndedHere = {
  status: 408,
  env: { IDLE_TIMEOUT: '1' },
  handle: (req, res) => void req.resume().on('end', () => res.end('stored')), // answers once the whole body is in
  send: async (s, path) => void s.write(`POST ${path} HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc`),
};

test.each([
  ['a 499 (the client left a long poll)', LEFT_A_LONG_POLL],
  ['a 408 (its body stalled)', STALLED_ITS_BODY],
])("%s after a retry carries no error of the target tried before: the line's error is the last try's", async (_name, how) => {
  const backend = await startBackend('b');
  backend.handle = how.handle;
  const dead = await freePort(); // nothing listens: refused, and retried on the other target
  const p = await proxy(
    { NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${dead},127.0.0.1:${backend.port}`, LOG_CONNECTIONS: 'true', ...how.env },
    fixed([makeTarget('127.0.0.1', dead), makeTarget('127.0.0.1', backend.port)]),
  );
  const stdout = jest.spyOn(process.stdout, 'write');
  try {
    // Round-robin: of two requests, one starts at the dead target.
    for (const path of ['/r-1', '/r-2']) {
      const s = net.connect(p.port, '127.0.0.1');
      s.on('error', () => undefined);
      await new Promise((r) => s.once('connect', r));
      await how.send(s, path, backend);
      await accessLine(stdout, path);
      s.destroy();
    }
    const lines = [await accessLine(stdout, '/r-1'), await accessLine(stdout, '/r-2')];
    expect(lines.map((l) => l.status)).toEqual([how.status, how.status]);
    expect(lines.map((l) => l.attempts).sort()).toEqual([1, 2]);
    for (const l of lines) expect(l).not.toHaveProperty('error');
  } finally {
    stdout.mockRestore();
    await p.stop();
    await backend.close();
  }
});

test('a client that leaves an event stream under way is logged with the status it was sent and error client_gone', async () => {
  const backend = await startBackend('b');
  let cancelled = false;
  backend.handle = (_req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.write('data: first\n\n');
    const more = setInterval(() => res.write('data: more\n\n'), 50);
    res.on('close', () => ((cancelled = true), clearInterval(more)));
  };
  const p = await proxy(
    { NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, LOG_CONNECTIONS: 'true' },
    fixed([makeTarget('127.0.0.1', backend.port)]),
  );
  const stdout = jest.spyOn(process.stdout, 'write');
  try {
    const s = net.connect(p.port, '127.0.0.1', () => s.write('GET /events HTTP/1.1\r\nHost: a\r\n\r\n'));
    s.on('error', () => undefined);
    await new Promise((r) => s.once('data', r)); // the head and a first event
    s.destroy();
    await until('the stream cancelled at the target', () => cancelled, 5000);
    expect(await accessLine(stdout, '/events')).toMatchObject({ path: '/events', status: 200, error: 'client_gone' });
  } finally {
    stdout.mockRestore();
    await p.stop();
    await backend.close();
  }
});

test.each([
  ['HTTP/1.1', '/big'],
  ['HTTP/1.0', '/stream'],
])('a client that takes none of its answer for IDLE_TIMEOUT is cut by the proxy, logged error client_timeout, not client_gone (%s %s)', async (version, path) => {
  const backend = await startBackend('b');
  const size = 64 * 1024 * 1024; // far more than loopback buffers hold
  backend.handle = (req, res) => {
    if (req.url === '/big') res.setHeader('Content-Length', size); // else chunked: close-delimited to an HTTP/1.0 client
    pump(res, size);
  };
  const p = await proxy(
    { NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, LOG_CONNECTIONS: 'true', IDLE_TIMEOUT: '1' },
    fixed([makeTarget('127.0.0.1', backend.port)]),
  );
  const stdout = jest.spyOn(process.stdout, 'write');
  try {
    const s = net.connect(p.port, '127.0.0.1', () => s.write(`GET ${path} ${version}\r\nHost: a\r\n\r\n`));
    s.on('error', () => undefined);
    await new Promise((r) => s.once('data', r));
    s.pause(); // takes nothing more
    expect(await accessLine(stdout, path)).toMatchObject({ path, status: 200, error: 'client_timeout' });
    s.resume();
    await until('the connection closed', () => s.destroyed, 5000);
  } finally {
    stdout.mockRestore();
    await p.stop();
    await backend.close();
  }
});

describe('errors map to statuses', () => {
  test('a dead target is a 502', async () => {
    const dead = makeTarget('127.0.0.1', await freePort());
    const p = await proxy({ NODE_FILTER: 'static', STATIC_TARGETS: dead.id, RETRIES: '0' }, fixed([dead]));
    try {
      const r = await request(p.port);
      expect(r.status).toBe(502);
    } finally {
      await p.stop();
    }
  });

  test('a target that does not answer within UPSTREAM_TIMEOUT is a 504', async () => {
    const slow = await startBackend('slow');
    slow.handle = () => undefined; // never answers
    const t = makeTarget('127.0.0.1', slow.port);
    const p = await proxy({ NODE_FILTER: 'static', STATIC_TARGETS: t.id, UPSTREAM_TIMEOUT: '0.3' }, fixed([t]));
    try {
      const r = await request(p.port);
      expect(r.status).toBe(504);
      expect(slow.seen).toHaveLength(1); // a timeout is not retried
    } finally {
      await p.stop();
      await slow.close();
    }
  });

  test.each([
    ['a Host that names no route', 'PUT', 'not-a-route.example.com', '100-continue', 400],
    ['a route with no target', 'PUT', 'api-8080-prod.example.com', '100-continue', 503],
    ['TRACE', 'TRACE', 'api-8080-prod.example.com', '100-continue', 405],
    ['an expectation beside 100-continue', 'PUT', 'api-8080-prod.example.com', '100-continue, teapot', 417],
  ])('Expect: 100-continue refused before any target (%s) is answered without the 100, and the connection ends after it', async (_name, method, host, expectation, status) => {
    const p = await proxy({ DOMAIN: 'example.com' }, fixed([]));
    try {
      const s = net.connect(p.port, '127.0.0.1');
      s.on('error', () => undefined);
      let got = '';
      s.on('data', (d) => (got += d));
      const closed = new Promise((r) => s.on('close', r));
      // As curl sends an upload over 1 MB: the head, then the body only after a 100 (or a second).
      s.write(`${method} /upload HTTP/1.1\r\nHost: ${host}\r\nExpect: ${expectation}\r\nContent-Length: 10000000\r\n\r\n`);
      await until('the answer', () => got.includes('\r\n\r\n'), 5000);
      expect(got).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
      expect(got).toMatch(/\r\nConnection: close\r\n/i);
      await closed;
      expect(got).not.toContain('100 Continue');
    } finally {
      await p.stop();
    }
  });

  test('a route with no target is a 503 with Retry-After, and is not rediscovered within NEGATIVE_CACHE_TTL', async () => {
    const provider = fixed([]);
    const p = await proxy({ DOMAIN: 'example.com' }, provider);
    try {
      for (let i = 0; i < 3; i++) {
        const r = await request(p.port, { headers: { Host: 'api-8080-prod.example.com' } });
        expect(r.status).toBe(503);
        expect(r.headers['retry-after']).toBeDefined();
      }
      expect(provider.calls).toEqual([{ service: 'api', port: 8080, cluster: 'prod' }]);
    } finally {
      await p.stop();
    }
  });

  test('invented Hosts add no metric series: only routes with targets get their own, and a forgotten route’s series go', async () => {
    const backend = await startBackend('api');
    const api = makeTarget('127.0.0.1', backend.port);
    const provider: Provider = { name: 'test', discover: async (route) => (route.service === 'api' ? [api] : []) };
    const p = await proxy({ DOMAIN: 'example.com', NEW_ROUTE_RATE: '1000', ROUTE_IDLE_TTL: '0.3', NODE_CHECK_PERIOD: '0.1' }, provider);
    // Earlier tests' routes may still be counted: only this test's are looked at.
    const ours = /^(made-up|api-)/;
    const routesCounted = async (): Promise<string[]> =>
      [...new Set((await requestsTotal.get()).values.map((v) => String(v.labels.route)))].filter((r) => ours.test(r) || r === 'none').sort();
    try {
      for (let i = 0; i < 200; i++) expect((await request(p.port, { headers: { Host: `made-up${i}-80-prod.example.com` } })).status).toBe(503);
      expect((await request(p.port, { headers: { Host: 'api-80-prod.example.com' } })).status).toBe(200);
      expect(await routesCounted()).toEqual(['api-80-prod', 'none']);
      // Idle past ROUTE_IDLE_TTL: the route is forgotten at the next refresh, and its series with it.
      await new Promise((r) => setTimeout(r, 800));
      expect(await routesCounted()).toEqual(['none']);
    } finally {
      await p.stop();
      await backend.close();
    }
  });

  test('ecs mode: a bad Host is a 400 naming the problem, a cluster outside the allow-list a 403, and neither asks discovery', async () => {
    const provider = fixed([]);
    const p = await proxy({ DOMAIN: 'example.com', ALLOWED_CLUSTERS: 'prod' }, provider);
    try {
      const bad = await request(p.port, { headers: { Host: 'api.example.com' } });
      expect(bad.status).toBe(400);
      expect(bad.body).toMatch(/port/);
      const wrong = await request(p.port, { headers: { Host: 'api-8080-prod.evil.com' } });
      expect(wrong.status).toBe(400);
      const forbidden = await request(p.port, { headers: { Host: 'api-8080-staging.example.com' } });
      expect(forbidden.status).toBe(403);
      expect(provider.calls).toEqual([]);
    } finally {
      await p.stop();
    }
  });
});

describe('requests waiting for a socket (POOL_SIZE) of a target that leaves its route', () => {
  // POOL_SIZE=1 and both targets busy: a third request waits in the line of the rotation's turn, the
  // target whose id sorts first. Then that one leaves discovery (its task stopped).
  async function leaving(stays: 'other' | 'none'): Promise<{ body: string; line: Record<string, unknown>; leftSaw: string[] }> {
    const backends = await Promise.all([startBackend('x'), startBackend('y')]);
    const id = (x: Backend): string => makeTarget('127.0.0.1', x.port).id;
    const [first, second] = [...backends].sort((u, v) => (id(u) < id(v) ? -1 : 1));
    for (const x of backends) x.handle = (req, res) => void setTimeout(() => res.end(x === first ? 'first' : 'second'), req.url === '/slow' ? 1500 : 0);
    let targets = [first, second].map((x) => makeTarget('127.0.0.1', x.port));
    const provider: Provider = { name: 'test', discover: async () => targets };
    const p = await proxy({ NODE_FILTER: 'static', STATIC_TARGETS: targets.map((t) => t.id).join(','), POOL_SIZE: '1', NODE_CHECK_PERIOD: '0.2', LOG_CONNECTIONS: 'true' }, provider);
    const stdout = jest.spyOn(process.stdout, 'write');
    try {
      const slow = [request(p.port, { path: '/slow' }), request(p.port, { path: '/slow' })];
      await until('both targets busy', () => first.seen.length === 1 && second.seen.length === 1);
      const waiting = request(p.port, { path: '/waits' });
      await new Promise((r) => setTimeout(r, 100));
      targets = stays === 'other' ? [makeTarget('127.0.0.1', second.port)] : [];
      const { body } = await waiting;
      expect((await Promise.all(slow)).map((r) => r.body).sort()).toEqual(['first', 'second']); // drained
      return { body, line: await accessLine(stdout, '/waits'), leftSaw: first.seen.map((r) => r.url!) };
    } finally {
      stdout.mockRestore();
      await p.stop();
      await Promise.all(backends.map((x) => x.close()));
    }
  }

  test('go to a target still in it, not to the one that left, and the access line shows one attempt', async () => {
    const { body, line, leftSaw } = await leaving('other');
    expect(body).toBe('second');
    expect(leftSaw).toEqual(['/slow']);
    expect(line).toMatchObject({ status: 200, attempts: 1 });
  });

  test('stay in its line when it was the route\'s last (a 503 for a request the target is still there to answer would be worse)', async () => {
    const { body, leftSaw } = await leaving('none');
    expect(body).toBe('first');
    expect(leftSaw).toEqual(['/slow', '/waits']);
  });
});
