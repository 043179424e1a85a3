/**
 * A target that answers before the request's body has all come (an early 413, nginx's `return`): the
 * bundle keeps sending the body (a target may read on), but never reuses that socket, and never holds
 * the socket, or the client, for a body that cannot arrive or go anywhere.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { Proxy, startBundle } from '../support/bundle';
import { close, listen, pump, request } from '../support/net';

jest.setTimeout(30_000);

const QUIET = { NODE_FILTER: 'static', HEALTH_CHECK_PATH: 'off' };

/** A GET on a fresh connection, timed. */
function timedGet(port: number): Promise<{ status: number; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const req = http.get({ port, host: '127.0.0.1', path: '/', agent: false }, (r) => {
      r.resume();
      r.on('end', () => resolve({ status: r.statusCode!, ms: Date.now() - t0 }));
    });
    req.on('error', reject);
    req.setTimeout(15_000, () => req.destroy(new Error('no answer in 15 s')));
  });
}

let p: Proxy | undefined;
const servers: net.Server[] = [];
afterEach(async () => {
  await p?.stop();
  p = undefined;
  await Promise.all(servers.splice(0).map(close));
});

/** Writes `total` body bytes to `c` as fast as it takes them, keeping it open; the getter says when all have left. */
function upload(c: net.Socket, total: number): () => boolean {
  const sent = pump(c, total, { end: false });
  return () => sent() >= total && c.writableLength === 0;
}

/** Whether `check` comes true within `ms`. */
function within(ms: number, check: () => boolean): Promise<boolean> {
  return new Promise((resolve) => {
    const end = Date.now() + ms;
    const t = setInterval(() => {
      if (check()) resolve(true);
      else if (Date.now() < end) return;
      else resolve(false);
      clearInterval(t);
    }, 20);
  });
}

async function target(onConnection: (s: net.Socket) => void): Promise<number> {
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    onConnection(s);
  });
  servers.push(server);
  return listen(server);
}

test('a client that leaves mid-upload after an early answer frees its target socket at once, not at UPSTREAM_TIMEOUT', async () => {
  // Answers a POST at once (413, keep-alive) and reads and drops its body; anything else 200.
  const port = await target((s) => {
    s.once('data', (d: Buffer) => {
      s.write(d.toString('latin1').startsWith('POST') ? 'HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig' : 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      s.on('data', () => undefined);
    });
  });
  p = await startBundle({ ...QUIET, STATIC_TARGETS: `127.0.0.1:${port}`, POOL_SIZE: '1', UPSTREAM_TIMEOUT: '8' });
  const c = net.connect(p.port, '127.0.0.1');
  c.on('error', () => undefined);
  c.write('POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n');
  c.write(Buffer.alloc(100_000, 97));
  await new Promise((r) => c.once('data', r)); // the 413
  c.destroy(); // 9.9 MB of the body will never come
  await new Promise((r) => setTimeout(r, 300));
  // POOL_SIZE=1: the next request needs that one socket (or its place, on a new connection).
  const r = await timedGet(p.port);
  expect(r.status).toBe(200);
  expect(r.ms).toBeLessThan(4000); // not UPSTREAM_TIMEOUT's 8 s
});

test('a target that answers early and then closes: the rest of the upload is read and dropped, and the connection serves on', async () => {
  // Answers at once (keep-alive), and closes 100 ms later without reading the body.
  let connections = 0;
  const port = await target((s) => {
    connections++;
    s.once('data', () => {
      s.write('HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig');
      setTimeout(() => s.destroy(), 100);
    });
  });
  p = await startBundle({ ...QUIET, STATIC_TARGETS: `127.0.0.1:${port}`, IDLE_TIMEOUT: '6' });
  const total = 64 * 1024 * 1024;
  const c = net.connect(p.port, '127.0.0.1');
  c.on('error', () => undefined);
  let answer = '';
  c.on('data', (d) => (answer += d));
  const t0 = Date.now();
  c.write(`POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${total}\r\n\r\n`);
  const uploaded = upload(c, total);
  const uploadedMs = await new Promise<number>((resolve) => {
    const t = setInterval(() => {
      if (uploaded()) (clearInterval(t), resolve(Date.now() - t0));
    }, 20);
    c.on('close', () => (clearInterval(t), resolve(-1)));
  });
  expect(answer).toMatch(/^HTTP\/1\.1 413 /);
  expect(uploadedMs).toBeGreaterThan(0); // all sent, the connection still open
  expect(uploadedMs).toBeLessThan(5000); // not paused until IDLE_TIMEOUT's 6 s
  // The same connection serves the next request.
  answer = '';
  c.write('GET /next HTTP/1.1\r\nHost: x\r\n\r\n');
  await new Promise<void>((resolve) => {
    const t = setInterval(() => /\r\n\r\nbig$/.test(answer) && (clearInterval(t), resolve()), 20);
  });
  expect(answer).toMatch(/^HTTP\/1\.1 413 /);
  expect(connections).toBe(2);
  c.destroy();
});

test('a small body the client sends with its head goes to the target with the head: a target answering from the head alone (nginx\'s return) keeps its socket', async () => {
  // Answers each head at once, then reads and drops its body by Content-Length, keeping the connection
  // (as nginx's `return 200` does). Sent after the answer, a body would cost the socket (see above).
  let connections = 0;
  let bodyBytes = 0;
  const port = await target((s) => {
    connections++;
    let buf = Buffer.alloc(0);
    let left = 0;
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (left > 0) {
          const n = Math.min(left, buf.length);
          left -= n;
          bodyBytes += n;
          buf = buf.subarray(n);
          if (left > 0) return;
        }
        const end = buf.indexOf('\r\n\r\n');
        if (end === -1) return;
        left = Number(/content-length: *(\d+)/i.exec(buf.subarray(0, end).toString('latin1'))?.[1] ?? 0);
        buf = buf.subarray(end + 4);
        s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      }
    });
  });
  p = await startBundle({ ...QUIET, STATIC_TARGETS: `127.0.0.1:${port}` });
  const c = net.connect(p.port, '127.0.0.1');
  c.on('error', () => undefined);
  let answer = '';
  c.on('data', (d) => (answer += d));
  const body = Buffer.alloc(64 * 1024, 97); // more than the proxy reads at once: it comes in two reads or more
  try {
    for (let i = 1; i <= 10; i++) {
      c.write(Buffer.concat([Buffer.from(`POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n`), body]));
      expect(await within(5000, () => answer.split('\r\n\r\nok').length - 1 === i)).toBe(true);
    }
  } finally {
    c.destroy();
  }
  expect(await within(5000, () => bodyBytes === 10 * body.length)).toBe(true);
  expect(connections).toBe(1);
});

test('a body that breaks after its target answered early gets no second answer, and the request is logged and counted once', async () => {
  const port = await target((s) => {
    s.once('data', () => {
      s.write('HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig');
      s.on('data', () => undefined);
    });
  });
  p = await startBundle({ ...QUIET, STATIC_TARGETS: `127.0.0.1:${port}`, LOG_CONNECTIONS: 'true' });
  const c = net.connect(p.port, '127.0.0.1');
  c.on('error', () => undefined);
  let got = '';
  c.on('data', (d) => (got += d));
  const closed = new Promise((r) => c.on('close', r));
  c.write('POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
  await new Promise<void>((resolve) => {
    const t = setInterval(() => got.includes('\r\n\r\nbig') && (clearInterval(t), resolve()), 20);
  });
  c.write('zz-not-a-chunk-size\r\n'); // the rest of the body, broken
  await closed;
  expect(got.match(/HTTP\/1\.1 \d{3}/g)).toEqual(['HTTP/1.1 413']);
  await new Promise((r) => setTimeout(r, 200));
  expect(p.lines().filter((l) => l.msg === 'access').map((l) => [l.path, l.status])).toEqual([['/upload', 413]]);
  const metrics = (await getBody(p.metricsPort, '/metrics'));
  expect(metrics).not.toMatch(/karma_requests_total\{route="none"/);
});

function getBody(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ port, host: '127.0.0.1', path, agent: false }, (r) => {
      let b = '';
      r.on('data', (d) => (b += d));
      r.on('end', () => resolve(b));
    }).on('error', reject);
  });
}

test('a target that answers early with Connection: close and stops reading: the rest of the upload is read and dropped, and the connection serves on', async () => {
  // Reads a POST's head and nothing more; 300 ms later (the proxy's writes to it long stuck) answers
  // 413 with Connection: close and closes. Anything else is a 200.
  const port = await target((s) => {
    s.once('data', (d: Buffer) => {
      if (!d.toString('latin1').startsWith('POST')) return void s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok');
      s.pause();
      setTimeout(() => s.end('HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig', () => s.destroy()), 300);
    });
  });
  p = await startBundle({ ...QUIET, STATIC_TARGETS: `127.0.0.1:${port}`, IDLE_TIMEOUT: '8' });
  const total = 32 * 1024 * 1024; // far more than loopback buffers hold
  const c = net.connect(p.port, '127.0.0.1');
  c.on('error', () => undefined);
  let answer = '';
  c.on('data', (d) => (answer += d));
  c.write(`POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${total}\r\n\r\n`);
  const uploaded = upload(c, total);
  const allSent = await within(6000, uploaded);
  expect(answer).toMatch(/^HTTP\/1\.1 413 /);
  expect(allSent).toBe(true); // not held until IDLE_TIMEOUT's 8 s by a target that will never read
  answer = '';
  c.write('GET /next HTTP/1.1\r\nHost: x\r\n\r\n');
  expect(await within(5000, () => /\r\n\r\nok$/.test(answer))).toBe(true);
  expect(answer).toMatch(/^HTTP\/1\.1 200 /);
  c.destroy();
});

test("a keep-alive client whose 200 KB POSTs a target refuses at once (node:http, Connection: close, body unread) has each next request answered", async () => {
  const t = http.createServer((req, res) => {
    if (req.method === 'POST') return void res.writeHead(413, { connection: 'close' }).end();
    res.end('plain');
  });
  servers.push(t);
  const port = await listen(t);
  p = await startBundle({ ...QUIET, STATIC_TARGETS: `127.0.0.1:${port}` });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const send = (method: string, body?: Buffer): Promise<string> =>
    new Promise((resolve) => {
      const r = http.request({ port: p!.port, host: '127.0.0.1', method, path: '/', agent, headers: { 'content-length': body?.length ?? 0 } }, (a) => {
        a.resume();
        a.on('end', () => resolve(String(a.statusCode)));
      });
      r.setTimeout(3000, () => r.destroy(new Error('no answer in 3 s')));
      r.on('error', (e) => resolve(e.message));
      r.end(body);
    });
  const body = Buffer.alloc(200_000, 97);
  const seen: string[] = [];
  for (let i = 0; i < 30; i++) seen.push(`${await send('POST', body)} ${await send('GET')}`);
  agent.destroy();
  expect(seen.filter((s) => s !== '413 200')).toEqual([]);
});

test('a target gets a request head before any of its body has come, and may answer from the head alone', async () => {
  // Answers each head as soon as it is in, body or not (a 401 before an upload, a stream answering a stream).
  const port = await target((s) => {
    let buf = '';
    let answered = 0;
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (const heads = buf.split('\r\n\r\n').length - 1; answered < heads; answered++) s.write('HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope');
    });
  });
  p = await startBundle({ ...QUIET, STATIC_TARGETS: `127.0.0.1:${port}` });
  const c = net.connect(p.port, '127.0.0.1');
  c.on('error', () => undefined);
  try {
    let answer = '';
    c.on('data', (d) => (answer += d));
    c.write('POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n'); // the body is not sent yet
    expect(await within(3000, () => answer.endsWith('nope'))).toBe(true);
    expect(answer).toMatch(/^HTTP\/1\.1 401 /);
    c.write('hello'); // the body, late
    answer = '';
    c.write('POST /again HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n');
    expect(await within(3000, () => answer.endsWith('nope'))).toBe(true);
  } finally {
    c.destroy();
  }
});

test('an early answer delimited by the close, its target resetting under the upload, is never passed on as a whole answer cut short', async () => {
  const BODY = 100_000;
  // An HTTP/1.0-style answer (no length: it ends where the connection does) sent as soon as the head is
  // in, then the connection reset with the upload unread: the target's kernel drops what it had not sent.
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    let head = '';
    let answered = false;
    s.on('data', (d: Buffer) => {
      if (answered) return;
      head += d.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      answered = true;
      s.pause();
      s.write(Buffer.concat([Buffer.from('HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n'), Buffer.alloc(BODY, 'a')]), () => s.destroy());
    });
  });
  servers.push(server);
  const port = await listen(server);
  p = await startBundle({ ...QUIET, STATIC_TARGETS: `127.0.0.1:${port}`, RETRIES: '0', UPSTREAM_TIMEOUT: '10', CIRCUIT_BREAKER_THRESHOLD: '1000000' });
  const outcomes: string[] = [];
  for (let i = 0; i < 60; i++) {
    outcomes.push(await new Promise<string>((resolve) => {
      const req = http.request({ port: p!.port, host: '127.0.0.1', method: 'POST', path: '/up', agent: false, headers: { 'Transfer-Encoding': 'chunked' } }, (res) => {
        let got = 0;
        res.on('data', (c: Buffer) => (got += c.length));
        res.on('end', () => resolve(got === BODY ? 'whole' : `ended short at ${got}`));
        res.on('aborted', () => resolve('cut'));
        res.on('error', () => resolve('cut'));
      });
      req.on('error', () => resolve('cut'));
      pump(req, 8 << 20);
    }));
  }
  // Whole, or visibly cut (a reset): never a clean end short of the body.
  expect(outcomes.filter((o) => o.startsWith('ended short'))).toEqual([]);
});

test("after an early answer the rest of the body goes on, but the socket never serves another request: a target that reads no body cannot take it as the next client's", async () => {
  // A naive keep-alive server (as Python's http.server is): it answers every head at once with its path
  // and the connection's number, reads no body, and so takes whatever comes after a head as the next request.
  const seen: string[] = [];
  let connections = 0;
  const port = await target((s) => {
    const n = ++connections;
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (let i = buf.indexOf('\r\n\r\n'); i !== -1; i = buf.indexOf('\r\n\r\n')) {
        const line = buf.slice(0, buf.indexOf('\r\n'));
        buf = buf.slice(i + 4);
        seen.push(`${n} ${line}`);
        const body = `${line.split(' ')[1] ?? '?'}`;
        s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      }
    });
  });
  // One socket to the target at a time: the next client's request would go on the one the early answer came on.
  p = await startBundle({ ...QUIET, STATIC_TARGETS: `127.0.0.1:${port}`, POOL_SIZE: '1' });
  const a = net.connect(p.port, '127.0.0.1');
  a.on('error', () => undefined);
  let answerA = '';
  a.on('data', (d) => (answerA += d));
  const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
  a.write(`POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${smuggled.length}\r\n\r\n`);
  expect(await within(5000, () => answerA.endsWith('\r\n\r\n/upload'))).toBe(true);
  // The next client's request comes while the upload's body is still due (with one socket, it waited
  // for that socket before, and went out on it right behind the body).
  const b = request(p.port, { path: '/b' });
  await new Promise((r) => setTimeout(r, 200));
  // The body, after the answer: to this target, a request of the client's own.
  a.write(smuggled);
  // Each gets its own answer, on sockets of their own; so does client A's next request.
  expect((await b).body).toBe('/b');
  answerA = '';
  a.write('GET /next HTTP/1.1\r\nHost: x\r\n\r\n');
  expect(await within(5000, () => answerA.endsWith('\r\n\r\n/next'))).toBe(true);
  a.destroy();
  // Whatever the target made of the body, it made of it on the upload's own socket, which served nothing after.
  expect(seen.filter((l) => l.startsWith('1 '))).toEqual(['1 POST /upload HTTP/1.1', '1 GET /smuggled HTTP/1.1']);
  expect(seen.filter((l) => l.endsWith('/b HTTP/1.1') || l.endsWith('/next HTTP/1.1')).every((l) => !l.startsWith('1 '))).toBe(true);
  expect(seen).toHaveLength(4);
  // Its answer to the body reached no one, and does not cost the target its kept sockets: requests one
  // after another still share one.
  for (let i = 0; i < 3; i++) expect((await timedGet(p.port)).status).toBe(200);
  expect(new Set(seen.slice(4).map((l) => l.split(' ')[0])).size).toBe(1);
});

test('a socket still sending the body of an early answer holds its place under POOL_SIZE until it is closed', async () => {
  // Answers each upload at its head and reads on, and closes 300 ms after the proxy has sent it all:
  // the proxy's socket is open until then.
  let open = 0;
  let most = 0;
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    most = Math.max(most, ++open);
    s.on('error', () => undefined);
    s.once('data', () => s.write('HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig'));
    s.on('data', () => undefined);
    s.on('end', () => setTimeout(() => (open--, s.end()), 300));
  });
  servers.push(server);
  const port = await listen(server);
  p = await startBundle({ ...QUIET, STATIC_TARGETS: `127.0.0.1:${port}`, POOL_SIZE: '2' });
  const body = 'x'.repeat(20_000);
  const uploads = Array.from({ length: 5 }, () => new Promise<string>((resolve, reject) => {
    const c = net.connect(p!.port, '127.0.0.1');
    let got = '';
    c.on('error', reject);
    c.on('data', (d) => {
      got += d;
      // The rest of the body, once the early answer is in.
      if (got.endsWith('\r\n\r\nbig')) c.end(body.slice(1000));
    });
    c.on('close', () => resolve(got));
    c.write(`POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 1000)}`);
  }));
  for (const got of await Promise.all(uploads)) expect(got).toMatch(/^HTTP\/1\.1 413 /);
  expect(most).toBeLessThanOrEqual(2);
});
