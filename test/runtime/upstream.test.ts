import * as http from 'node:http';
import * as net from 'node:net';
import { Readable, Writable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import { keepAliveHintMs, MAX_INTERIM_ANSWERS, UpstreamPool, type UpstreamRequest, type UpstreamRequestOptions } from '../../runtime/upstream';

interface Got {
  status: number;
  message: string;
  raw: string[];
  body: string;
  reused: boolean;
  queued: boolean;
}

function sink(chunks: Buffer[]): Writable {
  return new Writable({
    write(c: Buffer, _e, cb) {
      chunks.push(c);
      cb();
    },
  });
}

/** Sends one request and collects the whole answer. */
function send(up: UpstreamRequest, body?: Readable | string): Promise<Got> {
  return new Promise((resolve, reject) => {
    up.setTimeout(3000, () => up.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
    up.on('error', reject);
    up.on('socket', () => {
      if (body instanceof Readable) body.pipe(up as unknown as NodeJS.WritableStream);
      else up.end(body);
    });
    up.on('response', (res) => {
      const chunks: Buffer[] = [];
      const w = sink(chunks);
      res.on('aborted', () => reject(new Error('aborted')));
      res.pipe(w);
      w.on('finish', () =>
        resolve({ status: res.statusCode, message: res.statusMessage, raw: res.rawHeaders, body: Buffer.concat(chunks).toString(), reused: up.reusedSocket, queued: up.queued }),
      );
    });
  });
}

const servers: net.Server[] = [];
const pools: UpstreamPool[] = [];
afterEach(async () => {
  for (const p of pools.splice(0)) p.destroy();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

async function listen(s: net.Server): Promise<number> {
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  if (s instanceof http.Server) s.keepAliveTimeout = 10_000;
  return (s.address() as AddressInfo).port;
}

/** A server writing `answer` (raw bytes) for each request head it reads; `end` closes after it. */
async function rawServer(answer: (head: string) => string, end = false): Promise<number> {
  const s = net.createServer((sock) => {
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\r\n\r\n')) !== -1) {
        const head = buf.slice(0, i);
        buf = buf.slice(i + 4);
        sock.write(answer(head));
        if (end) sock.end();
      }
    });
    sock.on('error', () => undefined);
  });
  return listen(s);
}

function pool(port: number, maxSockets = 10, freeSocketTimeoutMs = 4000, maxWaitMs = 0): UpstreamPool {
  const p = new UpstreamPool({ host: '127.0.0.1', port, maxSockets, maxFreeSockets: maxSockets, freeSocketTimeoutMs, maxWaitMs });
  pools.push(p);
  return p;
}

const get = (path = '/', method = 'GET', headers: string[] = ['Host', 'x']): UpstreamRequestOptions => ({ method, path, headers, body: false });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(check: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await sleep(5);
  }
}

describe('upstream client', () => {
  test('Content-Length answers on one keep-alive socket, reused', async () => {
    const port = await listen(http.createServer((req, res) => res.end(`hi ${req.url}`)));
    const p = pool(port);
    const a = await send(p.request(get('/a')));
    const b = await send(p.request(get('/b')));
    expect([a.status, a.body, a.reused]).toEqual([200, 'hi /a', false]);
    expect([b.status, b.body, b.reused]).toEqual([200, 'hi /b', true]);
    expect(p.sockets).toBe(1);
  });

  test('chunked answers, then the socket serves the next request', async () => {
    const port = await listen(
      http.createServer((_req, res) => {
        res.write('one,');
        setTimeout(() => res.end('two'), 5);
      }),
    );
    const p = pool(port);
    expect((await send(p.request(get()))).body).toBe('one,two');
    expect(await send(p.request(get()))).toMatchObject({ body: 'one,two', reused: true });
  });

  test('a close-delimited answer ends when the target closes, and its socket is not kept', async () => {
    const port = await rawServer(() => 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end', true);
    const p = pool(port);
    expect(await send(p.request(get()))).toMatchObject({ status: 200, body: 'until the end' });
    await sleep(20);
    expect(p.sockets).toBe(0);
  });

  test('HEAD has no body despite Content-Length (and its socket is not reused); 204 and 304 none either, their socket usable', async () => {
    const port = await listen(
      http.createServer((req, res) => {
        if (req.url === '/204') res.writeHead(204).end();
        else if (req.url === '/304') res.writeHead(304, { ETag: '"x"' }).end();
        else res.writeHead(200, { 'Content-Length': '5' }).end(req.method === 'HEAD' ? undefined : 'hello');
      }),
    );
    const p = pool(port);
    expect(await send(p.request(get('/', 'HEAD')))).toMatchObject({ status: 200, body: '' });
    expect(await send(p.request(get('/204')))).toMatchObject({ status: 204, body: '', reused: false });
    expect(await send(p.request(get('/304')))).toMatchObject({ status: 304, body: '', reused: true });
    expect(await send(p.request(get('/')))).toMatchObject({ status: 200, body: 'hello', reused: true });
    expect(p.sockets).toBe(1);
  });

  test("a HEAD asks the target to close, and its socket waits for the target's FIN: the TIME_WAIT is the target's, not ours", async () => {
    let head = '';
    let ourFinFirst: boolean | undefined;
    const s = net.createServer((sock) => {
      sock.on('error', () => undefined);
      let theirs = false;
      sock.on('end', () => (ourFinFirst ??= !theirs));
      sock.once('data', (d) => {
        head = d.toString('latin1');
        sock.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n');
        // A moment later, as a target closing after its answer: the proxy must not have closed first.
        setTimeout(() => ((theirs = true), sock.end()), 100);
      });
    });
    const p = pool(await listen(s));
    expect(await send(p.request(get('/', 'HEAD')))).toMatchObject({ status: 200, body: '' });
    expect(head).toMatch(/\r\nConnection: close\r\n/i);
    await until(() => ourFinFirst !== undefined);
    expect(ourFinFirst).toBe(false);
  });

  test('a target that says close and does not close holds no place in the pool meanwhile', async () => {
    const s = net.createServer((sock) => {
      sock.on('error', () => undefined);
      sock.on('data', () => sock.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok')); // and stays open
    });
    const p = pool(await listen(s), 1);
    const t0 = Date.now();
    for (let i = 0; i < 4; i++) expect(await send(p.request(get('/')))).toMatchObject({ status: 200, body: 'ok' });
    expect(Date.now() - t0).toBeLessThan(1000); // not a second each, waiting for FINs that never come
  });

  test('1xx informational answers are skipped until the final one', async () => {
    const port = await rawServer(
      () => 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok',
    );
    const p = pool(port);
    const a = await send(p.request(get()));
    expect([a.status, a.message, a.raw, a.body]).toEqual([201, 'Created', ['Content-Length', '2'], 'ok']);
    expect(await send(p.request(get()))).toMatchObject({ status: 201, reused: true });
  });

  test('repeated headers and header-name case come through as sent', async () => {
    const port = await rawServer(() => 'HTTP/1.1 200 Fine\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-MiXeD-Case: v\r\nContent-Length: 0\r\n\r\n');
    const a = await send(pool(port).request(get()));
    expect(a.raw).toEqual(['Set-Cookie', 'a=1', 'set-cookie', 'b=2', 'X-MiXeD-Case', 'v', 'Content-Length', '0']);
    expect(a.message).toBe('Fine');
  });

  test('more than 32 header lines are all kept', async () => {
    const lines = Array.from({ length: 50 }, (_, i) => `X-H${i}: ${i}\r\n`).join('');
    const port = await rawServer(() => `HTTP/1.1 200 OK\r\n${lines}Content-Length: 0\r\n\r\n`);
    const a = await send(pool(port).request(get()));
    expect(a.raw.length).toBe(102);
    expect(a.raw.slice(98)).toEqual(['X-H49', '49', 'Content-Length', '0']);
  });

  test('trailers are dropped, and never become the next answer’s headers on the same socket', async () => {
    let n = 0;
    const port = await rawServer(() =>
      n++ === 0
        ? 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Set-Cookie\r\n\r\n2\r\nok\r\n0\r\nSet-Cookie: session=first-client\r\ngrpc-status: 0\r\n\r\n'
        : 'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext',
    );
    const p = pool(port);
    const first = await send(p.request(get()));
    expect([first.body, first.raw]).toEqual(['ok', ['Transfer-Encoding', 'chunked', 'Trailer', 'Set-Cookie']]);
    const second = await send(p.request(get()));
    expect([second.body, second.reused, second.raw]).toEqual(['next', true, ['Content-Length', '4']]);
  });

  describe('bytes after the end of an answer are nobody’s answer: the socket is dropped, not handed on', () => {
    const injected = 'HTTP/1.1 200 OK\r\nX-Injected: yes\r\nContent-Length: 8\r\n\r\nINJECTED';
    const real = 'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal';

    /** A HEAD on a pool of one socket, a GET waiting in line for it: the GET's answer must be its own. */
    async function headThenNext(port: number): Promise<void> {
      const p = pool(port, 1);
      const head = send(p.request(get('/', 'HEAD')));
      const next = p.request(get('/next'));
      expect(next.queued).toBe(true);
      expect(await head).toMatchObject({ status: 200, body: '' });
      const got = await send(next);
      expect([got.body, got.raw, got.reused]).toEqual(['real', ['Content-Length', '4'], false]);
    }

    test('in the same read: a body on a HEAD answer, with the next request waiting for the socket', async () => {
      await headThenNext(await rawServer((head) => (head.startsWith('HEAD') ? `HTTP/1.1 200 OK\r\nContent-Length: ${injected.length}\r\n\r\n${injected}` : real)));
    });

    test('a read later: a body on a HEAD answer, sent a moment after its head, with the next request waiting for the socket', async () => {
      const s = net.createServer((sock) => {
        sock.on('data', (d) => {
          if (!d.toString('latin1').startsWith('HEAD')) return void setTimeout(() => sock.writable && sock.write(real), 150);
          sock.write(`HTTP/1.1 200 OK\r\nContent-Length: ${injected.length}\r\n\r\n`);
          setTimeout(() => sock.writable && sock.write(injected), 50); // the body a buggy target sends anyway
        });
        sock.on('error', () => undefined);
      });
      await headThenNext(await listen(s));
    });

    test('split over reads: the start of a second answer, its rest after the next request could have gone out', async () => {
      const s = net.createServer((sock) => {
        let buf = '';
        sock.on('data', (d) => {
          buf += d.toString('latin1');
          if (!buf.includes('\r\n\r\n')) return;
          const first = buf.startsWith('GET /first');
          buf = '';
          if (!first) return void sock.write(real);
          sock.write(`${real}${injected.slice(0, 20)}`);
          setTimeout(() => sock.writable && sock.write(injected.slice(20)), 50);
        });
        sock.on('error', () => undefined);
      });
      const port = await listen(s);
      const p = pool(port, 1);
      expect(await send(p.request(get('/first')))).toMatchObject({ body: 'real' });
      const got = await send(p.request(get('/second')));
      expect([got.body, got.raw, got.reused]).toEqual(['real', ['Content-Length', '4'], false]);
    });
  });

  test('a target that sent bytes past an answer on a kept socket gets a connection per request from then on (Connection: close), said once', async () => {
    const heads: string[] = [];
    const s = net.createServer((sock) => {
      sock.on('data', (d) => {
        const head = d.toString('latin1');
        heads.push(head);
        sock.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        // A second answer nobody asked for, a moment after the first: as another client's, had a request gone out.
        if (head.startsWith('GET /first')) setTimeout(() => sock.writable && sock.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!'), 30);
      });
      sock.on('error', () => undefined);
    });
    const port = await listen(s);
    const p = pool(port);
    const warn = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(await send(p.request(get('/first')))).toMatchObject({ body: 'ok' });
      await sleep(100);
      expect(p.sockets).toBe(0);
      for (const path of ['/second', '/third']) expect(await send(p.request(get(path)))).toMatchObject({ body: 'ok', reused: false });
      expect(heads.filter((h) => /^GET \/(second|third) /.test(h)).every((h) => /\r\nConnection: close\r\n/i.test(h))).toBe(true);
      expect(warn.mock.calls.filter(([l]) => String(l).includes('sent bytes past the end of an answer'))).toHaveLength(1);
    } finally {
      warn.mockRestore();
    }
  });

  test('a 408 a target sends on an idle connection it closes (RFC 9110 §15.5.9) is no such bytes: its connections stay reusable', async () => {
    const s = net.createServer((sock) => {
      sock.on('data', () => {
        sock.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        // In two segments, as TCP may deliver it.
        setTimeout(() => sock.writable && sock.write('HTTP/1.1 40'), 30);
        setTimeout(() => sock.writable && sock.end('8 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n'), 50);
      });
      sock.on('error', () => undefined);
    });
    const p = pool(await listen(s));
    await send(p.request(get()));
    await sleep(100);
    expect(p.reusable).toBe(true);
    await send(p.request(get()));
    expect(await send(p.request(get()))).toMatchObject({ body: 'ok', reused: true });
  });

  test('Connection: close from the target: the socket is not reused', async () => {
    const port = await listen(http.createServer((_req, res) => res.writeHead(200, { Connection: 'close' }).end('x')));
    const p = pool(port);
    await send(p.request(get()));
    expect(await send(p.request(get()))).toMatchObject({ reused: false });
  });

  test.each([
    ['in one field', 'Connection: keep-alive, close\r\n'],
    ['in two fields', 'Connection: close\r\nConnection: keep-alive\r\n'],
  ])('an HTTP/1.0 answer naming both keep-alive and close, %s: close wins, the socket is not reused', async (_, fields) => {
    const port = await rawServer(() => `HTTP/1.0 200 OK\r\n${fields}Content-Length: 2\r\n\r\nok`);
    const p = pool(port);
    expect(await send(p.request(get()))).toMatchObject({ status: 200, body: 'ok' });
    expect(await send(p.request(get()))).toMatchObject({ status: 200, reused: false });
  });

  test('an HTTP/1.0 answer with keep-alive alone keeps its socket', async () => {
    const port = await rawServer(() => 'HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok');
    const p = pool(port);
    await send(p.request(get()));
    expect(await send(p.request(get()))).toMatchObject({ status: 200, reused: true });
  });

  describe("a target's Keep-Alive: timeout= hint", () => {
    const hinted = (hint: string) => (head: string) => `HTTP/1.1 200 OK\r\nContent-Length: 1\r\nKeep-Alive: ${hint}\r\n\r\n${head.length % 10}`;

    test('a socket idle for the hint less a second is not reused: the target may be closing it', async () => {
      const port = await rawServer(hinted('timeout=2, max=100'));
      const p = pool(port);
      await send(p.request(get()));
      expect(await send(p.request(get()))).toMatchObject({ status: 200, reused: true });
      await sleep(1100);
      expect(await send(p.request(get()))).toMatchObject({ status: 200, reused: false });
      expect(p.sockets).toBe(1);
    });

    test('timeout=1 (or 0): the socket is never reused', async () => {
      const port = await rawServer(hinted('timeout=1'));
      const p = pool(port);
      await send(p.request(get()));
      expect(await send(p.request(get()))).toMatchObject({ status: 200, reused: false });
    });

    test.each([
      [['Keep-Alive', 'timeout=5, max=1000'], 4000],
      [['keep-alive', 'max=5; TIMEOUT = "3"'], 2000],
      [['Keep-Alive', 'timeout=0'], 0],
      [['Keep-Alive', 'max=5'], -1],
      [['Keep-Alive', 'xtimeout=5'], -1],
      [['Connection', 'keep-alive'], -1],
    ])('%j reads as %d ms', (raw, ms) => {
      expect(keepAliveHintMs(raw)).toBe(ms);
    });
  });

  test('a socket the target closed while idle is not handed out again', async () => {
    const port = await listen(
      http.createServer((req, res) => {
        res.end('x', () => req.socket.destroy());
      }),
    );
    const p = pool(port);
    await send(p.request(get()));
    await sleep(30);
    expect(p.sockets).toBe(0);
    expect(await send(p.request(get()))).toMatchObject({ body: 'x', reused: false });
  });

  test('a target that answers before the body is all sent (and reads the rest, as nginx does) gets the whole body, and the socket is reused after', async () => {
    const bodies: number[] = [];
    const s = net.createServer((sock) => {
      let buf = Buffer.alloc(0);
      let need = -1; // body bytes still to discard, or -1 while reading a head
      let got = 0;
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        for (;;) {
          if (need < 0) {
            const i = buf.indexOf('\r\n\r\n');
            if (i === -1) return;
            const head = buf.subarray(0, i).toString('latin1');
            buf = buf.subarray(i + 4);
            need = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
            got = 0;
            sock.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'); // before reading any of the body
          }
          const take = Math.min(need, buf.length);
          got += take;
          need -= take;
          buf = buf.subarray(take);
          if (need > 0) return;
          bodies.push(got);
          need = -1;
          if (buf.length === 0) return;
        }
      });
      sock.on('error', () => undefined);
    });
    const port = await listen(s);
    const p = pool(port);
    const big = 'x'.repeat(256 * 1024);
    const post = (): UpstreamRequestOptions => ({ method: 'POST', path: '/', headers: ['Host', 'x', 'Content-Length', String(big.length)], body: true });
    expect(await send(p.request(post()), Readable.from([big.slice(0, 100_000), big.slice(100_000)]))).toMatchObject({ status: 200, body: 'ok' });
    await until(() => bodies.length === 1);
    expect(await send(p.request(get()))).toMatchObject({ status: 200, body: 'ok', reused: true });
    expect(bodies).toEqual([big.length, 0]);
    expect(p.sockets).toBe(1);
  });

  test('a target that answers early with Connection: close and stops reading lets the body go: a write waiting for drain gets it', async () => {
    const s = net.createServer((sock) => {
      sock.once('data', () => {
        sock.pause(); // reads the head (and what came with it), nothing more
        setTimeout(() => sock.end('HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n', () => sock.destroy()), 300);
      });
      sock.on('error', () => undefined);
    });
    const p = pool(await listen(s));
    const size = 32 * 1024 * 1024; // far more than loopback buffers hold
    const up = p.request({ method: 'POST', path: '/', headers: ['Host', 'x', 'Content-Length', String(size)], body: true });
    let status = 0;
    let drained = false;
    up.on('error', () => undefined);
    up.on('response', (res) => ((status = res.statusCode), res.resume()));
    up.on('socket', () => {
      expect(up.write(Buffer.alloc(size, 97))).toBe(false);
      up.once('drain', () => (drained = true));
    });
    await until(() => status === 413);
    await until(() => drained);
    expect(up.destroyed).toBe(true);
    expect(up.write(Buffer.from('the rest'))).toBe(true); // dropped, not waiting for a socket long gone
  });

  test('idle sockets close after the free-socket timeout', async () => {
    const port = await listen(http.createServer((_req, res) => res.end('x')));
    const p = pool(port, 10, 100);
    await send(p.request(get()));
    expect(p.sockets).toBe(1);
    await sleep(300);
    expect(p.sockets).toBe(0);
  });

  test('request bodies: Content-Length as sent, chunked when the client had no length, large ones with backpressure', async () => {
    const seen: { te?: string; cl?: string; len: number }[] = [];
    const port = await listen(
      http.createServer((req, res) => {
        let len = 0;
        req.on('data', (d: Buffer) => (len += d.length));
        req.on('end', () => {
          seen.push({ te: req.headers['transfer-encoding'], cl: req.headers['content-length'], len });
          res.end(String(len));
        });
      }),
    );
    const p = pool(port);
    const withLength = await send(p.request({ method: 'POST', path: '/', headers: ['Host', 'x', 'Content-Length', '5'], body: true }), Readable.from([Buffer.from('hello')]));
    expect(withLength.body).toBe('5');
    const big = Buffer.alloc(4 * 1024 * 1024, 'a');
    const parts = Array.from({ length: 64 }, (_, i) => big.subarray(i * 65536, (i + 1) * 65536));
    const chunked = await send(p.request({ method: 'PUT', path: '/', headers: ['Host', 'x'], body: true }), Readable.from([Buffer.alloc(0), ...parts]));
    expect(chunked.body).toBe(String(big.length));
    expect(seen).toEqual([
      { te: undefined, cl: '5', len: 5 },
      { te: 'chunked', cl: undefined, len: big.length },
    ]);
    expect(chunked.reused).toBe(true);
  });

  test('POOL_SIZE sockets at most; the others wait in FIFO order and get the freed sockets', async () => {
    const held: http.ServerResponse[] = [];
    const port = await listen(http.createServer((_req, res) => held.push(res)));
    const p = pool(port, 2);
    const order: string[] = [];
    const reqs = ['a', 'b', 'c', 'd'].map((id) => {
      const up = p.request(get(`/${id}`));
      return { id, up, done: send(up).then((g) => (order.push(id), g)) };
    });
    expect(reqs.map((r) => r.up.queued)).toEqual([false, false, true, true]);
    expect(p.queued).toBe(2);
    const release = async () => {
      while (held.length === 0) await sleep(5);
      held.shift()!.end('x');
    };
    for (let i = 0; i < 4; i++) await release();
    const got = await Promise.all(reqs.map((r) => r.done));
    expect(order).toEqual(['a', 'b', 'c', 'd']);
    expect(got.map((g) => g.reused)).toEqual([false, false, true, true]);
    expect(p.sockets).toBe(2);
  });

  test('a request that gives up while in line leaves it', async () => {
    const held: http.ServerResponse[] = [];
    const port = await listen(http.createServer((_req, res) => held.push(res)));
    const p = pool(port, 1);
    const first = send(p.request(get('/1')));
    const waiting = p.request(get('/2'));
    expect(waiting.queued).toBe(true);
    waiting.destroy();
    expect(p.queued).toBe(0);
    while (held.length === 0) await sleep(5);
    held[0].end('x');
    expect((await first).body).toBe('x');
  });

  test('a request that waits maxWaitMs for a socket leaves the line and is told so; the next in line keeps its place', async () => {
    const held: http.ServerResponse[] = [];
    const port = await listen(http.createServer((_req, res) => held.push(res)));
    const p = pool(port, 1, 4000, 200);
    const first = send(p.request(get('/1')));
    const t0 = Date.now();
    const waited = send(p.request(get('/2'))).catch((e: NodeJS.ErrnoException) => ({ code: e.code, ms: Date.now() - t0 }));
    await sleep(150);
    const later = p.request(get('/3'));
    const laterDone = send(later);
    expect(await waited).toMatchObject({ code: 'POOL_TIMEOUT' });
    expect((await waited as { ms: number }).ms).toBeGreaterThanOrEqual(190);
    expect(p.queued).toBe(1);
    while (held.length === 0) await sleep(5);
    held.shift()!.end('one');
    expect((await first).body).toBe('one');
    while (held.length === 0) await sleep(5);
    held.shift()!.end('three');
    expect((await laterDone).body).toBe('three');
  });

  test('a request moved from the line of a target that left (queuedSince) keeps its place and its deadline', async () => {
    const held: http.ServerResponse[] = [];
    const port = await listen(http.createServer((_req, res) => held.push(res)));
    const p = pool(port, 1, 4000, 300);
    const first = send(p.request(get('/1')));
    const newer = p.request(get('/new'));
    const t0 = Date.now();
    // It began waiting 250 ms ago at the target that left: ahead of /new, and out of the line 50 ms on.
    const moved = send(p.request({ ...get('/moved'), queuedSince: t0 - 250 })).catch((e: NodeJS.ErrnoException) => ({ code: e.code, ms: Date.now() - t0 }));
    expect(await moved).toMatchObject({ code: 'POOL_TIMEOUT' });
    expect((await moved as { ms: number }).ms).toBeLessThan(250);
    expect(p.queued).toBe(1); // /new waits on
    newer.destroy();
    while (held.length === 0) await sleep(5);
    held.shift()!.end('one');
    expect((await first).body).toBe('one');
  });

  test('a socket closed while others wait: the next in line gets a new connection', async () => {
    const port = await listen(http.createServer((req, res) => (req.url === '/die' ? req.socket.destroy() : res.end('ok'))));
    const p = pool(port, 1);
    const dying = send(p.request(get('/die'))).catch((e: NodeJS.ErrnoException) => e.code);
    const next = p.request(get('/next'));
    expect(next.queued).toBe(true);
    expect(await dying).toBe('ECONNRESET');
    expect(await send(next)).toMatchObject({ body: 'ok', reused: false });
  });

  test('garbage is an error with an llhttp code', async () => {
    const garbage = await rawServer(() => 'THIS IS NOT HTTP\r\n\r\n');
    await expect(send(pool(garbage).request(get()))).rejects.toMatchObject({ code: expect.stringMatching(/^HPE_/) });
  });

  test('a 101 to a plain request is an error with an llhttp code', async () => {
    const upgrade = await rawServer(() => 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    await expect(send(pool(upgrade).request(get()))).rejects.toMatchObject({ code: expect.stringMatching(/^HPE_/) });
  });

  test(`interim (1xx) answers without end are an error after ${MAX_INTERIM_ANSWERS}, not a request held for good`, async () => {
    const storm = await rawServer(() => 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n'.repeat(MAX_INTERIM_ANSWERS + 1));
    await expect(send(pool(storm).request(get()))).rejects.toMatchObject({ code: 'HPE_TOO_MANY_INTERIM' });
    const some = await rawServer(() => 'HTTP/1.1 102 Processing\r\n\r\n'.repeat(50) + 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    expect(await send(pool(some).request(get()))).toMatchObject({ status: 200, body: 'ok' });
  });

  test('a one-off connection says Connection: close and is not pooled', async () => {
    let conn: string | undefined;
    const port = await listen(http.createServer((req, res) => ((conn = req.headers.connection), res.end('x'))));
    const p = pool(port);
    expect(await send(p.fresh(get()))).toMatchObject({ body: 'x' });
    expect(conn).toBe('close');
    expect(p.sockets).toBe(0);
  });

  test('refused connections are errors with the socket code', async () => {
    const s = net.createServer();
    const port = await listen(s);
    await new Promise((r) => s.close(r));
    servers.length = 0;
    await expect(send(pool(port).request(get()))).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });
});
