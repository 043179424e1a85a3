/**
 * The client side on its own (runtime/downstream.ts): a DownstreamServer on 127.0.0.1 port 0 with a
 * handler chosen by each test, spoken to over raw sockets, so that framing, ordering and connection
 * handling are seen byte for byte.
 */
import * as net from 'node:net';
import { Writable } from 'node:stream';
import { DownstreamHandlers, DownstreamOptions, DownstreamServer, MAX_PIPELINED, NEW_CONNECTION_GRACE_MS, RECENT_ANSWER_GRACE_MS, Request, Response } from '../../runtime/downstream';
import { answer } from '../../runtime/forward';
import { rejectedRequests } from '../../runtime/metrics';
import { parseResponses, rawExchange, trickle } from '../hardening/support';
import { listen, pump, until } from '../support/net';

jest.setTimeout(20_000);

const OPTS = { maxHeaderSize: 16384, headersTimeoutMs: 1000, requestTimeoutMs: 3000, idleTimeoutMs: 2000, maxConnections: 100 };

/** `Name: value` lines of a short text answer. */
const textLines = (body: string): string => `Content-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n`;

function ok(res: Response, body: string): void {
  res.writeHead(200, undefined, textLines(body), true);
  res.end(body);
}

type Handle = (req: Request, res: Response) => void;

let server: DownstreamServer;
let port: number;
let handle: Handle;
let upgraded: { req: Request; socket: net.Socket; head: Buffer }[];

beforeEach(async () => {
  upgraded = [];
  handle = (req, res) => ok(res, `${req.method} ${req.url}`);
  const handlers: DownstreamHandlers = {
    request: (req, res) => handle(req, res),
    upgrade: (req, socket, head) => void upgraded.push({ req, socket, head }),
  };
  server = new DownstreamServer(OPTS, handlers);
  port = await listen(server.server);
});

afterEach(async () => {
  for (const u of upgraded) u.socket.destroy();
  await server.shutdown(100);
  await Promise.all(owned.splice(0).map((s) => s.shutdown(100)));
});

/** Servers tests made with options of their own (ownServer), shut down after each test. */
const owned: DownstreamServer[] = [];

/** A server with the test's own options and request handler: it and its port. */
async function ownServer(opts: Partial<DownstreamOptions>, request: Handle): Promise<{ own: DownstreamServer; ownPort: number }> {
  const own = new DownstreamServer({ ...OPTS, ...opts }, { request, upgrade: () => undefined });
  owned.push(own);
  return { own, ownPort: await listen(own.server) };
}

/** A raw client connection: write bytes, read what came so far. */
async function connect(): Promise<{ socket: net.Socket; received: () => string; closed: () => boolean }> {
  const socket = net.connect({ host: '127.0.0.1', port });
  const chunks: Buffer[] = [];
  let closed = false;
  socket.on('data', (d: Buffer) => chunks.push(d));
  socket.on('close', () => (closed = true));
  socket.on('error', () => undefined);
  await new Promise((r) => socket.once('connect', r));
  return { socket, received: () => Buffer.concat(chunks).toString('latin1'), closed: () => closed };
}

const GET = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: a.example.com\r\n${extra}\r\n`;

describe('pipelining and keep-alive', () => {
  test('pipelined requests are answered in order, one at a time, the slowest first', async () => {
    const order: string[] = [];
    let inFlight = 0;
    let most = 0;
    handle = (req, res) => {
      order.push(req.url);
      most = Math.max(most, ++inFlight);
      setTimeout(() => {
        inFlight--;
        ok(res, req.url);
      }, req.url === '/slow' ? 150 : 5);
    };
    const r = await rawExchange(port, GET('/slow') + GET('/a') + GET('/b', 'Connection: close\r\n'));
    expect(r.responses.map((x) => x.body)).toEqual(['/slow', '/a', '/b']);
    expect(order).toEqual(['/slow', '/a', '/b']);
    expect(most).toBe(1);
    expect(r.closed).toBe(true);
    expect(r.rest).toBe('');
  });

  test.each([
    ['behind a GET', GET('/slow') + 'POST /charge HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n' + GET('/c')],
    // The body in line is held with no reader, which stops reads too; the one ahead was taken whole.
    ['with bodies, behind a POST whose body was taken', 'POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello' +
      'POST /charge HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n12345' + GET('/c')],
    // Parsing has stopped at the bad request: the requests before it are still to be answered.
    ['before a bad request', GET('/slow') + 'POST /charge HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n' + 'BAD\x01 / HTTP/1.1\r\n\r\n'],
  ])('a client that leaves while its pipelined requests wait (%s): none of them reaches a handler after the answer ahead', async (_name, input) => {
    const order: string[] = [];
    handle = (req, res) => {
      order.push(req.url);
      const answer = (): unknown => setTimeout(() => ok(res, req.url), req.url === '/slow' ? 300 : 5);
      if (!req.hasBody) return void answer();
      // A reader that stays open after the body, as a target's socket does.
      req.pipe(new Writable({ autoDestroy: false, write: (_c, _e, cb) => cb(), final: (cb) => (answer(), cb()) }));
    };
    const c = await connect();
    c.socket.write(input);
    await until('the first handled', () => order.length === 1, 5000, 5);
    c.socket.end(); // gone (its FIN) while the answer ahead is under way
    await until('the connection closed', () => c.closed(), 5000, 5);
    await new Promise((r) => setTimeout(r, 100));
    expect(order).toEqual(['/slow']);
  });

  test('a body in line behind several slow answers is held up to a bound, not a read more at each answer', async () => {
    let readAtItsTurn = -1;
    handle = (req, res) => {
      if (!req.hasBody) return void setTimeout(() => ok(res, req.url), 50);
      readAtItsTurn = req.socket.bytesRead;
      req.pipe(new Writable({ write: (_c, _e, cb) => cb(), final: (cb) => (ok(res, 'stored'), cb()) }));
    };
    const c = await connect();
    const heads = Array.from({ length: 8 }, (_, i) => GET(`/slow${i}`)).join('') + 'POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 8388608\r\n\r\n';
    c.socket.write(heads);
    pump(c.socket, 8 * 1024 * 1024, { end: false }); // as fast as it is taken
    await until('the upload stored', () => c.received().includes('stored'), 10_000, 10);
    c.socket.destroy();
    // Its first read, and a read more (at most 64 KiB each) while it held less than 64 KiB.
    expect(readAtItsTurn).toBeGreaterThan(0);
    expect(readAtItsTurn - heads.length).toBeLessThanOrEqual(3 * 64 * 1024);
  });

  test(`more than ${MAX_PIPELINED} requests ahead of their turn: those are answered, then the connection closes`, async () => {
    handle = (req, res) => setTimeout(() => ok(res, req.url), 1);
    const r = await rawExchange(port, Array.from({ length: MAX_PIPELINED + 20 }, (_, i) => GET(`/${i}`)).join(''));
    expect(r.responses.map((x) => x.body)).toEqual(Array.from({ length: MAX_PIPELINED + 1 }, (_, i) => `/${i}`));
    expect(r.closed).toBe(true);
  });

  test('a body that came with its head waits for its reader, and the connection then serves the next request', async () => {
    const bodies: string[] = [];
    handle = (req, res) => {
      if (!req.hasBody) return ok(res, 'next');
      // The reader comes later, as the target's connection does.
      setTimeout(() => {
        const parts: Buffer[] = [];
        req.pipe(
          new Writable({
            write: (c: Buffer, _e, cb) => (parts.push(c), cb()),
            final: (cb) => {
              bodies.push(Buffer.concat(parts).toString());
              ok(res, 'stored');
              cb();
            },
          }),
        );
      }, 20);
    };
    const c = await connect();
    c.socket.write(`POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello`);
    await until('the POST answered', () => c.received().includes('stored'), 5000, 5);
    c.socket.write(GET('/next'));
    await until('the GET answered', () => c.received().includes('next'), 5000, 5);
    expect(bodies).toEqual(['hello']);
    expect(parseResponses(c.received()).responses.map((x) => x.status)).toEqual([200, 200]);
    c.socket.destroy();
  });

  test('a request body nobody reads is read and dropped, and the connection serves the next request', async () => {
    handle = (req, res) => ok(res, req.hasBody ? 'refused' : 'next');
    const c = await connect();
    c.socket.write(`POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n${'x'.repeat(30_000)}`);
    await until('the POST answered', () => c.received().includes('refused'), 5000, 5);
    c.socket.write('x'.repeat(70_000) + GET('/next'));
    await until('the GET answered', () => c.received().includes('next'), 5000, 5);
    expect(c.closed()).toBe(false);
    c.socket.destroy();
  });

  test('a large body reaches a slow reader whole: the client is not read faster than the reader takes it', async () => {
    let got = 0;
    handle = (req, res) => {
      req.pipe(
        new Writable({
          highWaterMark: 16 * 1024,
          write: (c: Buffer, _e, cb) => {
            got += c.length;
            setTimeout(cb, 1);
          },
          final: (cb) => {
            ok(res, String(got));
            cb();
          },
        }),
      );
    };
    const size = 8 * 1024 * 1024;
    const r = await rawExchange(port, `POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: ${size}\r\nConnection: close\r\n\r\n${'y'.repeat(size)}`, { deadlineMs: 15_000 });
    expect(r.responses.map((x) => x.body)).toEqual([String(size)]);
  });

  test('a body whose last bytes its reader pushed back on, the reader then gone for good (a target that answered and closed): the next request is still read', async () => {
    // A sink that is full from its first write and never drains, as a closed target's socket.
    const stuck = { write: () => false, end: () => undefined, once: () => stuck };
    handle = (req, res) => {
      if (!req.hasBody) return ok(res, 'next');
      req.pipe(stuck);
      ok(res, 'refused');
    };
    const c = await connect();
    c.socket.write(`POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello`);
    await until('the POST answered', () => c.received().includes('refused'), 5000, 5);
    c.socket.write(GET('/next'));
    await until('the GET answered', () => c.received().includes('next'), 5000, 5);
    expect(c.closed()).toBe(false);
    c.socket.destroy();
  });

  test("a drain from a reader let go of does not start reads the current body's reader is holding back", async () => {
    // The first body's reader pushes back on its last bytes and drains later, once the second body's
    // reader (full from its first write, until released) holds the connection's reads.
    let releaseSecond = (): void => undefined;
    let secondWrites = 0;
    const drainLater = (ms: number) => {
      const sink = {
        write: () => false,
        end: () => undefined,
        once: (_e: string, fn: () => void) => (setTimeout(fn, ms), sink),
      };
      return sink;
    };
    handle = (req, res) => {
      if (req.url === '/first') {
        req.pipe(drainLater(300));
        return ok(res, 'first');
      }
      req.pipe({
        write: () => (secondWrites++, false),
        end: () => ok(res, 'second'),
        once: (_e: string, fn: () => void) => ((releaseSecond = fn), undefined),
      });
    };
    const c = await connect();
    c.socket.write(`POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello`);
    await until('the first answered', () => c.received().includes('first'), 5000, 5);
    c.socket.write(`POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 4000000\r\n\r\n`);
    c.socket.write(Buffer.alloc(4_000_000, 98));
    await until('the second body reaches its reader', () => secondWrites > 0, 5000, 5);
    await new Promise((r) => setTimeout(r, 600)); // the first reader's drain has come and gone
    expect(secondWrites).toBe(1);
    releaseSecond();
    await until('more of the second body once its reader drains', () => secondWrites > 1, 5000, 5);
    c.socket.destroy();
  });

  test("a client's FIN before its answer ends the connection: the answer's owner hears the client left", async () => {
    // A close and a half-close look the same; nginx, node:http and Go take both as the client leaving.
    let left = false;
    handle = (req, res) => {
      res.handler = { clientClosed: () => (left = true), clientStalled: () => undefined, responseFinished: () => undefined, shutdown: () => false };
      setTimeout(() => ok(res, 'too late'), 200);
    };
    const r = await rawExchange(port, (s) => s.end(GET('/x')));
    expect(r.responses).toEqual([]);
    expect(r.closed).toBe(true);
    expect(left).toBe(true);
  });

  test('a FIN between requests ends the connection after the answers given', async () => {
    handle = (req, res) => ok(res, 'at once');
    const r = await rawExchange(port, (s) => {
      s.write(GET('/x'));
      s.once('data', () => s.end());
    });
    expect(r.responses.map((x) => x.body)).toEqual(['at once']);
    expect(r.closed).toBe(true);
  });

  test('a parse error behind an answer under way waits for that answer, then is a 400 and the end', async () => {
    handle = (req, res) => setTimeout(() => ok(res, 'first'), 100);
    const r = await rawExchange(port, GET('/first') + 'NOT HTTP AT ALL\r\n\r\n');
    expect(r.responses.map((x) => [x.status, x.body.trim()])).toEqual([[200, 'first'], [400, 'Bad Request']]);
    expect(r.closed).toBe(true);
  });
});

describe('framing of answers', () => {
  const answerWith = (status: number, lines: string, body?: string): Handle => (req, res) => {
    res.writeHead(status, undefined, lines, /content-length/i.test(lines), /^date:/im.test(lines));
    if (body !== undefined) res.write(Buffer.from(body));
    res.end();
  };

  test('without Content-Length: chunked to HTTP/1.1 clients, delimited by the close for HTTP/1.0 ones', async () => {
    handle = answerWith(200, 'X-A: 1\r\n', 'streamed');
    const h11 = await rawExchange(port, GET('/', 'Connection: close\r\n'));
    expect(h11.data).toMatch(/\r\nTransfer-Encoding: chunked\r\n/);
    expect(h11.responses.map((x) => x.body)).toEqual(['streamed']);
    const h10 = await rawExchange(port, 'GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
    expect(h10.data).not.toMatch(/Transfer-Encoding/i);
    expect(h10.data).toMatch(/\r\nConnection: close\r\n/);
    expect(h10.data.endsWith('\r\n\r\nstreamed')).toBe(true);
    expect(h10.closed).toBe(true);
  });

  test('HTTP/1.0 with keep-alive is kept alive when the answer has a length', async () => {
    const c = await connect();
    c.socket.write('GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
    await until('the first answer', () => c.received().includes('GET /one'), 5000, 5);
    expect(c.received()).toMatch(/\r\nConnection: keep-alive\r\nKeep-Alive: timeout=2\r\n/);
    c.socket.write('GET /two HTTP/1.0\r\n\r\n');
    await until('the second answer and the close', () => c.received().includes('GET /two') && c.closed(), 5000, 5);
  });

  test.each([
    ['in one field', 'Connection: keep-alive, close\r\n'],
    ['in two fields', 'Connection: close\r\nConnection: keep-alive\r\n'],
  ])('HTTP/1.0 naming both keep-alive and close is closed, %s: close wins (RFC 9112 §9.3)', async (_, fields) => {
    const seen: string[] = [];
    handle = (req, res) => {
      seen.push(req.url);
      ok(res, `${req.method} ${req.url}`);
    };
    const c = await connect();
    c.socket.write(`GET /one HTTP/1.0\r\n${fields}\r\nGET /two HTTP/1.0\r\nConnection: keep-alive\r\n\r\n`);
    await until('the answer and the close', () => c.received().includes('GET /one') && c.closed(), 5000, 5);
    expect(c.received()).toMatch(/\r\nConnection: close\r\n/);
    expect(c.received()).not.toMatch(/keep-alive/i);
    expect(seen).toEqual(['/one']);
  });

  test('HTTP/1.0 with keep-alive is kept alive after a 204 or a HEAD answer without a length (they need none)', async () => {
    handle = (req, res) => {
      res.writeHead(req.url === '/204' ? 204 : 200, undefined, `X-Url: ${req.url}\r\n`, false);
      res.end();
    };
    const c = await connect();
    c.socket.write('GET /204 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
    await until('the 204', () => c.received().includes('X-Url: /204'), 5000, 5);
    c.socket.write('HEAD /head HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
    await until('the HEAD answer', () => c.received().includes('X-Url: /head'), 5000, 5);
    expect(c.received().match(/\r\nConnection: keep-alive\r\n/g)).toHaveLength(2);
    expect(c.closed()).toBe(false);
    c.socket.write('GET /last HTTP/1.0\r\n\r\n');
    await until('the last answer and the close', () => c.received().includes('X-Url: /last') && c.closed(), 5000, 5);
  });

  test('HEAD, 204 and 304 answers carry no body, whatever is written', async () => {
    handle = (req, res) => {
      const status = req.url === '/204' ? 204 : req.url === '/304' ? 304 : 200;
      res.writeHead(status, undefined, 'X-A: 1\r\n', false);
      res.write(Buffer.from('must not appear'));
      res.end();
    };
    for (const [method, path] of [['HEAD', '/'], ['GET', '/204'], ['GET', '/304']]) {
      const r = await rawExchange(port, `${method} ${path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`);
      expect(r.data).not.toContain('must not appear');
      expect(r.data).not.toMatch(/Transfer-Encoding/i);
      expect(r.data.endsWith('\r\n\r\n')).toBe(true);
    }
  });

  test("Date is added to an answer without one and kept on one with its own; Keep-Alive advertises IDLE_TIMEOUT", async () => {
    handle = answerWith(200, 'Content-Length: 2\r\n', 'hi');
    const without = await rawExchange(port, GET('/', 'Connection: close\r\n'));
    expect(without.responses[0].headers.date).toMatch(/^\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/);
    handle = answerWith(200, 'Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nContent-Length: 2\r\n', 'hi');
    const own = await rawExchange(port, GET('/'), { deadlineMs: 300 });
    expect(own.data.match(/Date:/g)).toHaveLength(1);
    expect(own.responses[0].headers.date).toBe('Tue, 01 Dec 2026 00:00:00 GMT');
    expect(own.responses[0].headers['keep-alive']).toBe('timeout=2');
  });

  test("the proxy's own answers are framed by their bytes, whatever their text", async () => {
    handle = (req, res) => answer(res, 503, req.url === '/ascii' ? 'no target' : 'no target — café');
    for (const [path, text] of [['/ascii', 'no target\n'], ['/utf8', 'no target — café\n']]) {
      const r = await rawExchange(port, GET(path, 'Connection: close\r\n'));
      expect(r.rest).toBe('');
      expect(Number(r.responses[0].headers['content-length'])).toBe(Buffer.byteLength(text));
      expect(Buffer.from(r.responses[0].body, 'latin1').toString('utf8')).toBe(text);
    }
  });

  test('the status line uses the reason given, or the standard one', async () => {
    handle = (req, res) => {
      res.writeHead(req.url === '/teapot' ? 418 : 299, req.url === '/teapot' ? undefined : 'Custom Reason', 'Content-Length: 0\r\n', true);
      res.end();
    };
    expect((await rawExchange(port, GET('/teapot', 'Connection: close\r\n'))).data).toMatch(/^HTTP\/1\.1 418 I'm a Teapot\r\n/i);
    expect((await rawExchange(port, GET('/x', 'Connection: close\r\n'))).data).toMatch(/^HTTP\/1\.1 299 Custom Reason\r\n/);
  });
});

describe('upgrades', () => {
  test('a WebSocket handshake hands the socket over with the bytes read past its head', async () => {
    const c = await connect();
    c.socket.write(GET('/ws', 'Connection: Upgrade\r\nUpgrade: websocket\r\n') + 'FIRST-FRAME');
    await until('the hand-over', () => upgraded.length === 1, 5000, 5);
    expect(upgraded[0].req.url).toBe('/ws');
    expect(upgraded[0].head.toString()).toBe('FIRST-FRAME');
    // The socket is the handler's now: what follows reaches it untouched.
    const more: Buffer[] = [];
    upgraded[0].socket.on('data', (d: Buffer) => more.push(d));
    c.socket.write('GET / HTTP/1.1\r\n\r\n');
    await until('raw bytes through', () => Buffer.concat(more).toString() === 'GET / HTTP/1.1\r\n\r\n', 5000, 5);
    c.socket.destroy();
  });

  test('a WebSocket handshake pipelined behind a request waits for its answer', async () => {
    let answered = false;
    handle = (req, res) => setTimeout(() => (ok(res, 'before'), (answered = true)), 100);
    const c = await connect();
    c.socket.write(GET('/plain') + GET('/ws', 'Connection: Upgrade\r\nUpgrade: websocket\r\n'));
    await until('the hand-over', () => upgraded.length === 1, 5000, 5);
    expect(answered).toBe(true);
    await until('the answer before it', () => c.received().includes('before'), 5000, 5);
    c.socket.destroy();
  });

  describe('an Upgrade other than WebSocket (h2c from Java\'s HttpClient or curl --http2) is ignored, and the connection kept', () => {
    const H2C = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n';
    const bodyReader: Handle = (req, res) => {
      if (!req.hasBody) return ok(res, `${req.method} ${req.url}`);
      const parts: Buffer[] = [];
      req.pipe(new Writable({
        write: (c: Buffer, _e, cb) => (parts.push(c), cb()),
        final: (cb) => (ok(res, `${req.method} ${req.url} ${Buffer.concat(parts).toString()}`), cb()),
      }));
    };

    test('one request after another, each with the Upgrade, on one connection', async () => {
      const c = await connect();
      for (const path of ['/one', '/two', '/three']) {
        c.socket.write(GET(path, H2C));
        await until(`${path} answered`, () => c.received().includes(`GET ${path}`), 5000, 5);
      }
      const { responses, rest } = parseResponses(c.received());
      expect(responses.map((x) => [x.status, x.headers.connection])).toEqual([[200, 'keep-alive'], [200, 'keep-alive'], [200, 'keep-alive']]);
      expect(rest).toBe('');
      expect(c.closed()).toBe(false);
      expect(upgraded).toEqual([]);
      c.socket.destroy();
    });

    test.each([
      ['a GET', GET('/up', H2C), ['GET /up']],
      ['a POST with its body', `POST /up HTTP/1.1\r\nHost: a\r\n${H2C}Content-Length: 5\r\n\r\nhello`, ['POST /up hello']],
      ['a PUT with a chunked body', `PUT /up HTTP/1.1\r\nHost: a\r\n${H2C}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`, ['PUT /up hello']],
    ])('%s pipelined with the next request in one write: both answered, in order', async (_what, first, answers) => {
      handle = bodyReader;
      const r = await rawExchange(port, first + GET('/after') + GET('/last', 'Connection: close\r\n'));
      expect(r.responses.map((x) => x.body)).toEqual([...answers, 'GET /after', 'GET /last']);
      expect(r.closed).toBe(true);
    });

    test.each([
      ['garbage', 'GARBAGE\r\n\r\n', 400],
      ['a header over MAX_HEADER_SIZE', GET('/', `X-Big: ${'b'.repeat(17_000)}\r\n`), 431],
      ['two Content-Lengths', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab', 400],
    ])('%s after it, in the same write or the next, is refused at once as after any request', async (_what, next, status) => {
      for (const split of [false, true]) {
        const r = await rawExchange(port, (sock) => {
          sock.write(GET('/up', H2C) + (split ? '' : next));
          if (split) setTimeout(() => sock.write(next), 50);
        });
        expect(r.responses.map((x) => x.status)).toEqual([200, status]);
        expect(r.closed).toBe(true);
        expect(r.ms).toBeLessThan(OPTS.headersTimeoutMs);
      }
    });
  });

  test('CONNECT is a 405 and the end of the connection', async () => {
    const r = await rawExchange(port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n');
    expect(r.responses.map((x) => x.status)).toEqual([405]);
    expect(r.responses[0].headers.allow).toContain('GET');
    expect(r.closed).toBe(true);
  });

  test.each([
    ['a request-target over MAX_HEADER_SIZE', GET(`/${'q'.repeat(17_000)}`), [414]],
    ['the same, pipelined behind a request', GET('/first') + GET(`/?${'q'.repeat(17_000)}`), [200, 414]],
    ['the same with bare LFs', `GET /${'q'.repeat(17_000)} HTTP/1.1\nHost: a\n\n`, [414]],
    ['one header over it', GET('/', `X-Big: ${'b'.repeat(17_000)}\r\n`), [431]],
    ['headers adding up past it', GET('/', Array.from({ length: 90 }, (_, i) => `X-H${i}: ${'c'.repeat(200)}\r\n`).join('')), [431]],
  ])('%s: a 414 for the request line alone (as nginx), else a 431', async (_what, bytes, statuses) => {
    const r = await rawExchange(port, bytes);
    expect(r.responses.map((x) => x.status)).toEqual(statuses);
    expect(r.closed).toBe(true);
  });

  test.each([
    ['sent in pieces', ['GET /', 'q'.repeat(6000), 'q'.repeat(6000), `${'q'.repeat(6000)} HTTP/1.1\r\nHost: a\r\n\r\n`], [414]],
    ['its method in one read and the rest in the next', ['GE', `T /${'q'.repeat(17_000)} HTTP/1.1\r\nHost: a\r\n\r\n`], [414]],
    ['pipelined behind a request, begun in its read', [GET('/first') + 'GET /', `${'q'.repeat(17_000)} HTTP/1.1\r\nHost: a\r\n\r\n`], [200, 414]],
    ['after a request line that ended in an earlier read', ['GET / HTTP/1.1\r\n', `X-Big: ${'b'.repeat(17_000)}\r\n\r\n`], [431]],
    ['a header that ended in an earlier read', ['GET / HTTP/1.1\r\nHost: a\r\n', `X-Big: ${'b'.repeat(17_000)}\r\n\r\n`], [431]],
    ['after an empty line, in one read', [`\r\nGET /${'q'.repeat(17_000)} HTTP/1.1\r\nHost: a\r\n\r\n`], [414]],
    ['after an empty line split from it', ['\r', `\nGET /${'q'.repeat(17_000)} HTTP/1.1\r\nHost: a\r\n\r\n`], [414]],
    ['behind a request whose blank line comes with it', ['GET /first HTTP/1.1\r\nHost: a\r\n', `\r\nGET /${'q'.repeat(17_000)} HTTP/1.1\r\nHost: a\r\n\r\n`], [200, 414]],
  ])('a request line over MAX_HEADER_SIZE across reads is a 414 too (%s); a header is a 431', async (_what, pieces, statuses) => {
    const r = await rawExchange(port, trickle(pieces, 30));
    expect(r.responses.map((x) => x.status)).toEqual(statuses);
    expect(r.closed).toBe(true);
  });

  test('a header line that began in an earlier read and overflows is a 431, even when it looks like a request line', async () => {
    const r = await rawExchange(port, (sock) => {
      sock.write('GET / HTTP/1.1\r\nHost: a\r\nX-Big: xyz ');
      setTimeout(() => sock.write(`ABC ${'a'.repeat(20_000)}\r\n\r\n`), 50);
    });
    expect(r.responses.map((x) => x.status)).toEqual([431]);
  });

  test("the server's own refusals (400, 431, 405) carry a Date and Cache-Control: no-store, as its other answers do", async () => {
    for (const bytes of ['NOT HTTP AT ALL\r\n\r\n', `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n']) {
      const r = await rawExchange(port, bytes);
      expect(r.responses).toHaveLength(1);
      const { status, headers } = r.responses[0];
      expect([400, 431, 405]).toContain(status);
      expect(Number.isNaN(Date.parse(String(headers.date)))).toBe(false);
      expect(headers['cache-control']).toBe('no-store');
    }
  });
});

describe('timeouts and shutdown', () => {
  test('HEADERS_TIMEOUT runs from the first byte of a request pipelined after an answered one', async () => {
    // The second request's head trickles in a line at a time, each read well within the idle timer:
    // its own clock, not the connection's activity, must end it.
    const t0 = Date.now();
    const r = await rawExchange(
      port,
      (s) => {
        s.write(GET('/first') + 'GET /second HTTP/1.1\r\n');
        const tick = setInterval(() => (s.destroyed ? clearInterval(tick) : s.write('X-Slow: 1\r\n')), 100);
      },
      { deadlineMs: 6000 },
    );
    expect(r.responses.map((x) => x.status)).toEqual([200, 408]);
    expect(r.closed).toBe(true);
    expect(Date.now() - t0).toBeLessThan(OPTS.headersTimeoutMs + 1500);
  });

  test('a connection that sends nothing is closed quietly at HEADERS_TIMEOUT: no 408, no request counted or logged (a browser\'s preconnect)', async () => {
    const refused = jest.fn();
    const own = new DownstreamServer(OPTS, { request: (req, res) => ok(res, req.url), upgrade: () => undefined, refused });
    owned.push(own);
    const ownPort = await listen(own.server);
    const before = (await rejectedRequests.get()).values.reduce((n, v) => n + v.value, 0);
    const headTimeouts = async (): Promise<number> => (await rejectedRequests.get()).values.find((v) => v.labels.reason === 'head_timeout')?.value ?? 0;
    const timeoutsBefore = await headTimeouts();
    const t0 = Date.now();
    const [silent, emptyLines] = await Promise.all([
      rawExchange(ownPort, () => undefined, { deadlineMs: 6000 }),
      // Empty lines before a request are allowed (RFC 9112 §2.2) and begin none.
      rawExchange(ownPort, (sock) => sock.write('\r\n\r\n'), { deadlineMs: 6000 }),
    ]);
    for (const r of [silent, emptyLines]) {
      expect(r.closed).toBe(true);
      expect(r.data).toBe('');
    }
    expect(Date.now() - t0).toBeGreaterThanOrEqual(OPTS.headersTimeoutMs - 50);
    // A head begun and left is still a 408, counted and told.
    const stalled = await rawExchange(ownPort, (s) => s.write('GET /x HTTP/1.1\r\n'), { deadlineMs: 6000 });
    expect(stalled.responses.map((x) => x.status)).toEqual([408]);
    expect(refused.mock.calls.map((c) => c[0])).toEqual([408]);
    expect((await rejectedRequests.get()).values.reduce((n, v) => n + v.value, 0)).toBe(before + 1);
    // As a head timeout, not a malformed request.
    expect(await headTimeouts()).toBe(timeoutsBefore + 1);
  });

  test('a head pipelined behind a slow answer is not timed while it waits its turn', async () => {
    // The third request's head is half-read when reading stops for the answers ahead of it; those take
    // longer than HEADERS_TIMEOUT, and its rest comes soon after: all three are answered (node:http too).
    handle = (req, res) => setTimeout(() => ok(res, req.url), req.url === '/slow' ? OPTS.headersTimeoutMs + 800 : 5);
    const r = await rawExchange(
      port,
      (s) => {
        s.write(GET('/slow') + GET('/b') + 'GET /c HTTP/1.1\r\nHo');
        setTimeout(() => s.write('st: a.example.com\r\nConnection: close\r\n\r\n'), 100);
      },
      { deadlineMs: 8000 },
    );
    expect(r.responses.map((x) => `${x.status} ${x.body}`)).toEqual(['200 /slow', '200 /b', '200 /c']);
  });

  test('shutdown closes idle keep-alive connections at once and lets an answer under way finish, saying Connection: close', async () => {
    let pending: Response | undefined;
    const idle = await connect();
    idle.socket.write(GET('/first'));
    await until('the first answer', () => idle.received().includes('GET /first'), 5000, 5);
    await new Promise((r) => setTimeout(r, RECENT_ANSWER_GRACE_MS)); // idle, not just answered
    handle = (_req, res) => (pending = res);
    const busy = await connect();
    busy.socket.write(GET('/busy'));
    await until('the request in flight', () => pending !== undefined, 5000, 5);
    const stopped = server.shutdown(5000);
    await until('the idle connection closed', () => idle.closed(), 2000, 5);
    expect(busy.closed()).toBe(false);
    ok(pending!, 'done');
    await until('the busy one answered and closed', () => busy.closed(), 2000, 5);
    expect(parseResponses(busy.received()).responses[0].headers.connection).toBe('close');
    await stopped;
  });

  test('a busy keep-alive client, its next request on its way when shutdown begins right after an answer, has it answered with Connection: close, not reset', async () => {
    handle = (req, res) => ok(res, req.url);
    const c = await connect();
    let error = '';
    c.socket.on('error', (e) => (error = (e as NodeJS.ErrnoException).code ?? e.message));
    let asked = 0;
    let seen = 0;
    let stopped: Promise<void> | undefined;
    const ask = (): void => void (c.socket.writable && c.socket.write(GET(`/r${asked++}`)));
    c.socket.on('data', () => {
      const n = parseResponses(c.received()).responses.length;
      if (n === seen) return;
      seen = n;
      // Shutdown the moment the fifth answer is in: the connection is idle, and its next request comes 30 ms later.
      if (n === 5) stopped = server.shutdown(5000);
      setTimeout(ask, 30);
    });
    ask();
    await until('the connection closed', () => c.closed(), 5000, 5);
    await stopped;
    const answers = parseResponses(c.received()).responses;
    expect(error).toBe('');
    expect(answers).toHaveLength(6);
    expect(answers.at(-1)!.headers.connection).toBe('close');
    expect(answers.map((a) => a.body)).toEqual(answers.map((_a, i) => `/r${i}`));
  });

  test('a client that pipelines (always a request ahead of its answer) hears Connection: close at shutdown, on the answers to what was read, and is not reset', async () => {
    handle = (req, res) => setTimeout(() => ok(res, req.url), 20);
    const c = await connect();
    let asked = 0;
    let error = '';
    c.socket.on('error', (e) => (error = e.message));
    const ask = (): void => void (c.socket.writable && c.socket.write(GET(`/r${asked++}`)));
    ask();
    ask();
    // Each answer brings the next request: two are always on their way.
    let seen = 0;
    c.socket.on('data', () => {
      const n = parseResponses(c.received()).responses.length;
      for (; seen < n; seen++) ask();
    });
    await until('a few answers', () => seen >= 5, 5000, 5);
    const t0 = Date.now();
    const stopped = server.shutdown(5000);
    await until('the connection closed', () => c.closed(), 3000, 5);
    expect(Date.now() - t0).toBeLessThan(2000); // not at the 5 s deadline
    await stopped;
    const answers = parseResponses(c.received()).responses;
    expect(answers.at(-1)!.headers.connection).toBe('close');
    expect(answers.filter((a) => a.headers.connection === 'close')).toHaveLength(1);
    expect(answers.map((a) => a.body)).toEqual(answers.map((_a, i) => `/r${i}`)); // in order, none lost before the last
    expect(error).toBe('');
  });

  test('at the shutdown deadline, an answer delimited by the close (HTTP/1.0) is cut with a reset, not a FIN that would say it was whole', async () => {
    handle = (_req, res) => {
      res.writeHead(200, undefined, 'Content-Type: text/plain\r\n', false);
      res.write('the first part, and no more');
    };
    const c = await connect();
    let error = '';
    c.socket.on('error', (e) => (error = (e as NodeJS.ErrnoException).code ?? e.message));
    c.socket.write('GET /stream HTTP/1.0\r\nHost: a\r\n\r\n');
    await until('the first part', () => c.received().includes('the first part'), 5000, 5);
    await server.shutdown(200);
    await until('the connection closed', () => c.closed(), 3000, 5);
    expect(error).toBe('ECONNRESET');
  });

  test("shutdown does not cut the last answer of a keep-alive connection while it is still leaving for a slow reader", async () => {
    const size = 16 * 1024 * 1024;
    handle = (_req, res) => {
      res.writeHead(200, undefined, `Content-Length: ${size}\r\n`, true);
      res.end(Buffer.alloc(size, 122));
    };
    const c = await connect();
    c.socket.pause(); // reads nothing for now
    c.socket.write(GET('/big'));
    await new Promise((r) => setTimeout(r, 200)); // answered: all of it in the socket's buffer
    const stopped = server.shutdown(10_000);
    await new Promise((r) => setTimeout(r, 500)); // several sweeps of idle connections
    c.socket.resume();
    await until('the connection closed', () => c.closed(), 8000, 5);
    await stopped;
    const body = c.received().split('\r\n\r\n')[1] ?? '';
    expect(body.length).toBe(size);
  });

  test('a connection opened before shutdown gets its first request answered (Connection: close); one never used is closed later', async () => {
    const late = await connect();
    const silent = await connect();
    const opened = Date.now();
    const stopped = server.shutdown(10_000);
    await new Promise((r) => setTimeout(r, 200));
    expect(late.closed()).toBe(false);
    late.socket.write(GET('/late'));
    await until('the late request answered and its connection closed', () => late.closed(), 5000, 5);
    const [answer] = parseResponses(late.received()).responses;
    expect(answer).toMatchObject({ status: 200, body: 'GET /late' });
    expect(answer.headers.connection).toBe('close');
    expect(silent.closed()).toBe(false);
    // Closed by the grace, or by HEADERS_TIMEOUT (1 s here) if that comes first, as without a shutdown.
    await until('the silent one closed', () => silent.closed(), 5000, 5);
    expect(Date.now() - opened).toBeGreaterThanOrEqual(Math.min(NEW_CONNECTION_GRACE_MS, OPTS.headersTimeoutMs) - 50);
    await stopped;
  });
});

test('the rest of a body after its answer is read on for a while, then the connection goes: a trickle after a 503 holds no place for good', async () => {
  const { ownPort: quickPort } = await ownServer({ idleTimeoutMs: 5000, bodyAfterAnswerMs: 500 }, (_req, res) => ok(res, 'answered before the body'));
  const socket = net.connect({ host: '127.0.0.1', port: quickPort });
  socket.on('error', () => undefined);
  let got = '';
  socket.on('data', (d) => (got += d));
  const closedAt = new Promise<number>((r) => socket.on('close', () => r(Date.now())));
  await new Promise((r) => socket.once('connect', r));
  socket.write('POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\nab');
  await until('the answer', () => got.includes('answered before the body'));
  const t0 = Date.now();
  const drip = setInterval(() => socket.writable && socket.write('x'), 100); // never pauses long enough for IDLE_TIMEOUT
  const at = await closedAt;
  clearInterval(drip);
  expect(at - t0).toBeGreaterThanOrEqual(400);
  expect(at - t0).toBeLessThan(3000);
});

test.each([
  ['Connection: close', 'HTTP/1.1', 'Connection: close\r\n'],
  ['HTTP/1.0', 'HTTP/1.0', ''],
])('an upload answered before its body is in, on a connection that ends after it (%s): the rest is read and dropped, and the connection ends with a FIN, not a reset under the answer', async (_name, version, extra) => {
  handle = (_req, res) => ok(res, 'refused early');
  // Sends all of its body whatever it hears, as curl does.
  const socket = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
  let got = '';
  let error = '';
  socket.on('data', (d) => (got += d));
  socket.on('error', (e) => (error = e.message));
  const closed = new Promise((r) => socket.on('close', r));
  await new Promise((r) => socket.once('connect', r));
  const total = 32 * 1024 * 1024;
  socket.write(`POST /x ${version}\r\nHost: a\r\n${extra}Content-Length: ${total}\r\n\r\n`);
  const sent = pump(socket, total);
  await closed;
  expect(error).toBe('');
  expect(sent()).toBe(total);
  expect(got).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nrefused early$/);
});

test.each([
  ['Connection: close', 'HTTP/1.1', 'Connection: close\r\n'],
  ['HTTP/1.0', 'HTTP/1.0', ''],
])('a reader that answered early and reads on gets the whole body on a connection that ends after it (%s); the end follows the body, with a FIN', async (_name, version, extra) => {
  let taken = 0;
  let ended = false;
  const { ownPort: quickPort } = await ownServer({ idleTimeoutMs: 5000, bodyAfterAnswerMs: 3000 }, (req, res) => {
    req.pipe(new Writable({ write: (c: Buffer, _e, cb) => ((taken += c.length), cb()), final: (cb) => ((ended = true), cb()) }));
    ok(res, 'answered early');
  });
  const r = await rawExchange(quickPort, (sock) => {
    sock.write(`POST /x ${version}\r\nHost: a\r\n${extra}Content-Length: 300000\r\n\r\n` + 'a'.repeat(100_000));
    setTimeout(() => sock.write('b'.repeat(100_000)), 150); // after its answer
    setTimeout(() => sock.write('c'.repeat(100_000)), 300);
  }, { deadlineMs: 4000 });
  expect(r.responses.map((x) => [x.status, x.body])).toEqual([[200, 'answered early']]);
  expect(r.closed).toBe(true);
  expect({ taken, ended }).toEqual({ taken: 300_000, ended: true });
});

test('an early answer that only the close ends (no length, to HTTP/1.0) ends at once, its body not awaited', async () => {
  const { ownPort: quickPort } = await ownServer({ idleTimeoutMs: 5000, bodyAfterAnswerMs: 3000 }, (req, res) => {
    req.pipe(new Writable({ write: (_c, _e, cb) => cb() }));
    res.writeHead(413, undefined, 'Content-Type: text/plain\r\n', false);
    res.end('too large\n');
  });
  const t0 = Date.now();
  const r = await rawExchange(quickPort, (sock) => sock.write('POST /up HTTP/1.0\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n' + 'a'.repeat(100_000)), { deadlineMs: 4000 });
  expect(r.closed).toBe(true);
  expect(r.data).toMatch(/^HTTP\/1\.1 413 [^]*\r\n\r\ntoo large\n$/);
  expect(Date.now() - t0).toBeLessThan(2000);
});

test('a body that is all in soon after its answer keeps its keep-alive connection', async () => {
  const { ownPort: quickPort } = await ownServer({ bodyAfterAnswerMs: 500 }, (req, res) => ok(res, `answered ${req.url}`));
  const r = await rawExchange(quickPort, (s) => {
    s.write('POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab');
    setTimeout(() => s.write('cd'), 100); // the rest of the body, after its answer
    setTimeout(() => s.write(GET('/next')), 900); // past bodyAfterAnswerMs: the timer ended with the body
  }, { deadlineMs: 2000 });
  expect(r.responses.map((x) => x.body)).toEqual(['answered /x', 'answered /next']);
});


describe('REQUEST_TIMEOUT on a body', () => {
  const rejected = async (reason: string): Promise<number> => (await rejectedRequests.get()).values.find((v) => v.labels.reason === reason)?.value ?? 0;

  test.each([
    ['its reader takes it: a 408, counted as a body timeout (as a body stalled past IDLE_TIMEOUT is)', true],
    ['answered before it was in: the connection ends, no 408, no rejection counted', false],
  ])('a body trickled past REQUEST_TIMEOUT, %s', async (_name, taken) => {
    const { ownPort: slowPort } = await ownServer({ requestTimeoutMs: 600, idleTimeoutMs: 5000 }, (req, res) => {
        if (!taken) return ok(res, 'answered early');
        req.pipe(new Writable({ write: (_c, _e, cb) => cb(), final: (cb) => (ok(res, 'stored'), cb()) }));
      });
    const before = { body: await rejected('body_timeout'), client: await rejected('client_error') };
    const r = await rawExchange(slowPort, (sock) => {
      sock.write('POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n');
      const drip = setInterval(() => (sock.destroyed ? clearInterval(drip) : sock.write('x')), 100);
    }, { deadlineMs: 4000 });
    expect(r.closed).toBe(true);
    expect(r.responses.map((x) => x.status)).toEqual(taken ? [408] : [200]);
    expect(await rejected('body_timeout')).toBe(before.body + (taken ? 1 : 0));
    expect(await rejected('client_error')).toBe(before.client);
  });
});

test("a pipelined request's wait for its turn is not the client's: REQUEST_TIMEOUT does not count it", async () => {
  const { ownPort: slowPort } = await ownServer({ requestTimeoutMs: 600, idleTimeoutMs: 5000 }, (req, res) => {
    // Takes the body whole, then answers: the first a moment later (a target's connection being made), and late.
    const slow = req.url === '/slow';
    const store = (): unknown => req.pipe(new Writable({ write: (_c, _e, cb) => cb(), final: (cb) => (setTimeout(() => ok(res, slow ? 'slow' : 'stored'), slow ? 1400 : 0), cb()) }));
    if (slow) setTimeout(store, 100);
    else store();
  });
  const r = await rawExchange(slowPort, (sock) => {
    // Behind it, in the same write, a head and part of its body; the rest a moment later, which is read
    // only once the answer ahead is out, 1.5 s on.
    sock.write('POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\naaaaaPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello');
    setTimeout(() => sock.write('world'), 150);
  }, { deadlineMs: 2500 });
  expect(r.responses.map((x) => x.status)).toEqual([200, 200]);
  expect(r.responses.map((x) => x.body)).toEqual(['slow', 'stored']);
});

describe('a body collected for another try (a target failed before it took the body)', () => {
  test('held in line up to its bound and never taken: the rest is read, and the copy has all of it', async () => {
    let whole: boolean | undefined;
    let replayed = -1;
    const size = 1 << 20;
    handle = (req, res) => {
      if (!req.hasBody) return void setTimeout(() => ok(res, 'slow'), 100);
      req.keepBody(size);
      // Its try failed before it took the body (a kept socket the target had just closed).
      setTimeout(() => req.collectRest((w) => {
        whole = w;
        let n = 0;
        req.replay(new Writable({ write: (c: Buffer, _e, cb) => ((n += c.length), cb()), final: (cb) => ((replayed = n), ok(res, 'stored'), cb()) }));
      }), 20);
    };
    const c = await connect();
    // Behind a slow answer, so that it holds what it may with no reader before its turn.
    c.socket.write(`${GET('/slow')}PUT /b HTTP/1.1\r\nHost: a\r\nContent-Length: ${size}\r\n\r\n`);
    pump(c.socket, size, { end: false });
    await until('the body collected and sent again', () => c.received().includes('stored'), 5000, 10);
    c.socket.destroy();
    expect(whole).toBe(true);
    expect(replayed).toBe(size);
  });

  test('read before any of it was taken, the rest coming later: the copy has all of it', async () => {
    let replayed = -1;
    handle = (req, res) => {
      req.keepBody(65536);
      req.readAhead(65536);
      setTimeout(() => req.collectRest(() => {
        let n = 0;
        req.replay(new Writable({ write: (c: Buffer, _e, cb) => ((n += c.length), cb()), final: (cb) => ((replayed = n), ok(res, 'stored'), cb()) }));
      }), 50);
    };
    const c = await connect();
    c.socket.write('PUT /b HTTP/1.1\r\nHost: a\r\nContent-Length: 60000\r\n\r\n' + 'x'.repeat(1000));
    await new Promise((r) => setTimeout(r, 150));
    c.socket.write('y'.repeat(59000));
    await until('the body sent again', () => c.received().includes('stored'), 5000, 10);
    c.socket.destroy();
    expect(replayed).toBe(60000);
  });
});

describe('the end of a connection (lingering close)', () => {
  test.each([
    ['Connection: close', 'HTTP/1.1', 'Connection: close\r\n'],
    ['HTTP/1.0', 'HTTP/1.0', ''],
  ])('a last answer (%s) reaches a client that reads it long after it was written, whole', async (_name, version, extra) => {
    const size = 16 * 1024 * 1024; // far more than loopback buffers hold
    const { ownPort: quickPort } = await ownServer({ idleTimeoutMs: 5000, lingerMs: 200 }, (_req, res) => {
        res.writeHead(200, undefined, `Content-Length: ${size}\r\n`, true);
        res.end(Buffer.alloc(size, 122));
      });
    const socket = net.connect({ host: '127.0.0.1', port: quickPort });
    socket.on('error', () => undefined);
    let got = 0;
    socket.on('data', (d: Buffer) => (got += d.length));
    const closed = new Promise((r) => socket.on('close', r));
    await new Promise((r) => socket.once('connect', r));
    socket.write(`GET /big ${version}\r\nHost: a\r\n${extra}\r\n`);
    await new Promise((r) => socket.once('data', r));
    socket.pause();
    await new Promise((r) => setTimeout(r, 1000)); // five times lingerMs
    socket.resume();
    await closed;
    const head = 'HTTP/1.1 200 OK\r\n'.length; // at least; the whole head is a little more
    expect(got).toBeGreaterThan(size + head);
  });

  test('a client that asked for the close and owes nothing more holds no connection once its answer has left, even keeping its side open', async () => {
    const { own: quick, ownPort: quickPort } = await ownServer({ idleTimeoutMs: 10_000, lingerMs: 10_000 }, (_req, res) => ok(res, 'bye'));
    const socket = net.connect({ host: '127.0.0.1', port: quickPort, allowHalfOpen: true });
    socket.on('error', () => undefined);
    let got = '';
    socket.on('data', (d) => (got += d));
    await new Promise((r) => socket.once('connect', r));
    socket.write('GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    await until('the answer', () => got.endsWith('bye'), 5000, 5);
    await until('its connection let go', () => quick.conns.size === 0, 2000, 5);
    socket.destroy();
  });

  test('shutdown with an answer that went out keep-alive before it: the client that keeps its side open after the FIN holds the drain for lingerMs, not SHUTDOWN_TIMEOUT', async () => {
    const { own: quick, ownPort: quickPort } = await ownServer({ lingerMs: 300 }, (_req, res) => {
        res.writeHead(200, undefined, 'Content-Length: 4\r\n', true);
        res.flush();
        setTimeout(() => res.end('done'), 300);
      });
    // Keeps its side open after the proxy's FIN, as an idle pooled connection of urllib3 does.
    const socket = net.connect({ host: '127.0.0.1', port: quickPort, allowHalfOpen: true });
    socket.on('error', () => undefined);
    let got = '';
    socket.on('data', (d) => (got += d));
    await new Promise((r) => socket.once('connect', r));
    socket.write(GET('/slow'));
    await until('the head', () => got.includes('keep-alive'), 5000, 5);
    const t0 = Date.now();
    await quick.shutdown(5000);
    expect(Date.now() - t0).toBeLessThan(2500);
    expect(got).toMatch(/\r\n\r\ndone$/);
    socket.destroy();
  });
});
