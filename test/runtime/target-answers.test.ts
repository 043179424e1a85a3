/**
 * What targets send, through the whole request path: raw targets on 127.0.0.1 write exactly the bytes
 * each test chooses (broken, stray, slow), and real clients see what comes out of the proxy.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { loadConfig } from '../../runtime/config';
import { upstreamErrors } from '../../runtime/metrics';
import { makeTarget } from '../../runtime/types';
import { Running, start } from '../../runtime/worker';
import { rawExchange } from '../hardening/support';
import { close, listen, request, until } from '../support/net';

jest.setTimeout(20_000);

interface RawTarget {
  readonly id: string;
  /** Request heads read, in order. */
  readonly heads: string[];
  readonly server: net.Server;
  readonly sockets: Set<net.Socket>;
}

/** A target that calls `answer` with each request head it reads (bodies are not looked at). */
async function rawTarget(answer: (head: string, socket: net.Socket, n: number) => void): Promise<RawTarget> {
  const heads: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    let buf = '';
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\r\n\r\n')) !== -1) {
        const head = buf.slice(0, i);
        buf = buf.slice(i + 4);
        heads.push(head);
        answer(head, socket, heads.length);
      }
    });
    socket.on('error', () => undefined);
  });
  const port = await listen(server);
  return { id: `127.0.0.1:${port}`, heads, server, sockets };
}

let targets: RawTarget[] = [];
let proxy: Running | undefined;
afterEach(async () => {
  await proxy?.stop();
  proxy = undefined;
  for (const t of targets) {
    for (const s of t.sockets) s.destroy();
    await close(t.server);
  }
  targets = [];
});

/** A proxy in front of `ts`. */
async function proxyFor(ts: RawTarget[], env: Record<string, string> = {}): Promise<number> {
  targets.push(...ts);
  const ids = ts.map((t) => makeTarget('127.0.0.1', Number(t.id.split(':')[1])).id).join(',');
  proxy = await start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: ids, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', ...env }), {});
  return proxy.port;
}

/** karma_upstream_errors_total{kind} so far. */
const errors = async (kind: string): Promise<number> => (await upstreamErrors.get()).values.find((v) => v.labels.kind === kind)?.value ?? 0;

describe('answers that are not HTTP/1.x as a client may receive it are a 502', () => {
  test.each([
    ['a status of 000', 'HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok'],
    ['a status of 099', 'HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok'],
    ['a status of 600', 'HTTP/1.1 600 High\r\nContent-Length: 2\r\n\r\nok'],
    ['an HTTP/2.0 status line', 'HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok'],
    ['Transfer-Encoding: gzip, close-delimited', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n\x1f\x8b\x08\x00'],
    ['Transfer-Encoding: gzip, chunked', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n'],
    // Bad framing in the body, read with the head: a bad answer, not a reset of the connection.
    ['a chunk size that is no number', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2x\r\nok\r\n0\r\n\r\n'],
    ['a chunk size past 64 bits', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nok\r\n0\r\n\r\n'],
    ['a chunk line ended by a bare LF', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n'],
  ])('%s', async (_what, bytes) => {
    const t = await rawTarget((_h, s) => s.end(bytes, 'latin1'));
    const port = await proxyFor([t]);
    const [resets, bad] = [await errors('reset'), await errors('bad_response')];
    expect(await request(port)).toMatchObject({ status: 502, body: expect.stringContaining('upstream sent an invalid response') });
    expect([await errors('reset') - resets, await errors('bad_response') - bad]).toEqual([0, 1]);
  });

  test('under HTTP health checks, one URL the application answers with bare LFs or two Content-Lengths does not open the breakers of the targets: the others are served', async () => {
    const answer = (head: string, s: net.Socket): void => {
      if (head.startsWith('GET /lf ')) s.write('HTTP/1.1 200 OK\nContent-Length: 2\n\nok', 'latin1');
      else if (head.startsWith('GET /twice ')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok', 'latin1');
      else s.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood', 'latin1');
    };
    const pair = await Promise.all([rawTarget(answer), rawTarget(answer)]);
    const port = await proxyFor(pair, { CIRCUIT_BREAKER_THRESHOLD: '2', HEALTH_CHECK_PATH: '/health', HEALTH_CHECK_PERIOD: '60' });
    for (let i = 0; i < 6; i++) {
      expect(await request(port, { path: i % 2 ? '/lf' : '/twice', headers: { Connection: 'close' } })).toMatchObject({ status: 502 });
    }
    // Each was tried on both targets (a garbled answer may be one target's), and neither is taken out.
    const garbled = (t: RawTarget): number => t.heads.filter((h) => /^GET \/(lf|twice) /.test(h)).length;
    expect(pair.map(garbled)).toEqual([6, 6]);
    for (let i = 0; i < 4; i++) expect(await request(port, { path: '/fine' })).toMatchObject({ status: 200, body: 'good' });
  });

  test.each([
    ['without health checks', { HEALTH_CHECK_PATH: 'off' }],
    ['under TCP health checks', { HEALTH_CHECK_PATH: '/health', HEALTH_CHECK_PROTOCOL: 'tcp', HEALTH_CHECK_PERIOD: '60' }],
  ])('%s, one URL every target answers with malformed HTTP does not open their breakers, whoever asks for it', async (_what, env) => {
    const answer = (head: string, s: net.Socket): void => {
      if (head.startsWith('GET /twice ')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok', 'latin1');
      else s.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood', 'latin1');
    };
    const pair = await Promise.all([rawTarget(answer), rawTarget(answer)]);
    const port = await proxyFor(pair, { CIRCUIT_BREAKER_THRESHOLD: '2', ...env });
    for (let i = 0; i < 6; i++) expect(await request(port, { path: '/twice', headers: { Connection: 'close' } })).toMatchObject({ status: 502 });
    for (let i = 0; i < 4; i++) expect(await request(port, { path: '/fine' })).toMatchObject({ status: 200, body: 'good' });
    expect(pair.map((t) => t.heads.filter((h) => h.startsWith('GET /fine ')).length)).toEqual([2, 2]);
  });

  test('without health checks, a target whose every answer is malformed HTTP stays in, and what it garbles is tried on the next', async () => {
    const bad = await rawTarget((_h, s) => s.write('HTTP/1.1 200 OK\nContent-Length: 2\n\nok', 'latin1'));
    const good = await rawTarget((_h, s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood', 'latin1'));
    const port = await proxyFor([bad, good], { CIRCUIT_BREAKER_THRESHOLD: '2' });
    for (let i = 0; i < 10; i++) expect(await request(port, { headers: { Connection: 'close' } })).toMatchObject({ status: 200, body: 'good' });
    expect(bad.heads).toHaveLength(5);
  });

  test('an answer that is no HTTP at all (another protocol on the port) is a 502 of its own kind, not_http', async () => {
    const t = await rawTarget((_h, s) => s.end('SSH-2.0-OpenSSH_9.6\r\n', 'latin1'));
    const port = await proxyFor([t]);
    const [notHttp, bad] = [await errors('not_http'), await errors('bad_response')];
    expect(await request(port)).toMatchObject({ status: 502, body: expect.stringContaining('upstream sent an invalid response') });
    expect([await errors('not_http') - notHttp, await errors('bad_response') - bad]).toEqual([1, 0]);
  });

  test('without health checks, a target that speaks no HTTP at all is taken out by its breaker', async () => {
    const other = await rawTarget((_h, s) => s.end('SSH-2.0-OpenSSH_9.6\r\n', 'latin1'));
    const good = await rawTarget((_h, s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood', 'latin1'));
    const port = await proxyFor([other, good], { CIRCUIT_BREAKER_THRESHOLD: '2' });
    for (let i = 0; i < 10; i++) expect(await request(port, { headers: { Connection: 'close' } })).toMatchObject({ status: 200, body: 'good' });
    // Two marks open its breaker: it hears no more after them.
    expect(other.heads).toHaveLength(2);
  });
});

test('a trailer section over the head limit is a bad answer, not a reset', async () => {
  const trailers = Array.from({ length: 700 }, (_, i) => `X-T-${i}: ${'t'.repeat(100)}\r\n`).join('');
  const t = await rawTarget((_h, s) => s.end(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n${trailers}\r\n`, 'latin1'));
  const port = await proxyFor([t]);
  const [resets, bad] = [await errors('reset'), await errors('bad_response')];
  await rawExchange(port, 'GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
  expect([await errors('reset') - resets, await errors('bad_response') - bad]).toEqual([0, 1]);
});

describe('what the chunk grammar allows in an answer is accepted, and reaches the client framed anew', () => {
  test.each([
    ['a space before a chunk extension (BWS, RFC 9112 §7.1.1)', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3 ;ext=1\r\nhel\r\n2\t;x\r\nlo\r\n0\r\n\r\n'],
  ])('%s', async (_what, bytes) => {
    const t = await rawTarget((_h, s) => s.write(bytes, 'latin1'));
    const port = await proxyFor([t]);
    for (let i = 0; i < 2; i++) {
      // Twice on the same keep-alive connections: the answer's end was found where it is.
      const r = await request(port);
      expect(r).toMatchObject({ status: 200, body: 'hello' });
    }
    const raw = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(raw.responses.map((x) => x.status)).toEqual([200]);
    expect(raw.data).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(raw.data).not.toMatch(/[^\r]\n/);
  });

  test.each([
    ['a bare CR', 'HTTP/1.1 200 OK\rContent-Length: 2\r\n\r\nok'],
    // A target that echoes a client's bare LF into a header would let that client add headers.
    ['bare LF line ends', 'HTTP/1.1 200 OK\nContent-Length: 2\nX-A: 1\n\nok'],
    ['a header value with a bare LF in it', 'HTTP/1.1 200 OK\r\nX-Echo: a\nSet-Cookie: injected=1\r\nContent-Length: 2\r\n\r\nok'],
  ])('%s is still not a line end: a 502', async (_what, bytes) => {
    const t = await rawTarget((_h, s) => s.end(bytes, 'latin1'));
    const port = await proxyFor([t]);
    expect(await request(port)).toMatchObject({ status: 502 });
  });
});

describe('informational answers: 103 Early Hints is passed on ahead of the final answer (RFC 9110 §15.2)', () => {
  const hints = 'HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nContent-Length: 0\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n';
  const final = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok';

  test('an HTTP/1.1 client gets the 103 with its Link, without hop-by-hop or length headers, then the 200', async () => {
    const t = await rawTarget((_h, s) => {
      s.write(hints + 'HTTP/1.1 100 Continue\r\n\r\n', 'latin1');
      setTimeout(() => s.write(final, 'latin1'), 50);
    });
    const port = await proxyFor([t]);
    const raw = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    const cut = raw.data.indexOf('\r\n\r\n') + 4;
    const [early, rest] = [raw.data.slice(0, cut), raw.data.slice(cut)];
    expect(early).toBe('HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n');
    // The target's 100 is not passed on: a 100 is the proxy's to give, for the client's Expect.
    expect(rest).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nok$/);
  });

  test('a target that sends hints without end has four of them passed on, then its answer', async () => {
    const t = await rawTarget((_h, s) => s.write(hints.repeat(10) + final, 'latin1'));
    const port = await proxyFor([t]);
    const raw = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(raw.data.split('HTTP/1.1 103 ').length - 1).toBe(4);
    expect(raw.data).toMatch(/HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nok$/);
  });

  test('an HTTP/1.0 client gets the final answer only', async () => {
    const t = await rawTarget((_h, s) => s.write(hints + final, 'latin1'));
    const port = await proxyFor([t]);
    const raw = await rawExchange(port, 'GET / HTTP/1.0\r\nHost: a\r\n\r\n');
    expect(raw.data).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nok$/);
  });
});

describe('a head reaches the client when it comes, not with the first body bytes', () => {
  test('a stream whose first event comes later: the client has status and headers before it', async () => {
    let eventSent = false;
    const t = await rawTarget((_h, s) => {
      s.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n');
      setTimeout(() => {
        eventSent = true;
        s.write('c\r\ndata: hello\n\r\n0\r\n\r\n');
      }, 1000);
    });
    const port = await proxyFor([t]);
    const got = await new Promise<{ eventSentAtHead: boolean; body: string }>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path: '/events', agent: false }, (res) => {
          const eventSentAtHead = eventSent;
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ eventSentAtHead, body }));
        })
        .on('error', reject);
    });
    expect(got).toEqual({ eventSentAtHead: false, body: 'data: hello\n' });
  });

  test('an answer garbled in the read that brought its head never reached the client: a GET goes to the next target', async () => {
    // Whichever target gets the first request garbles it; every later answer is good.
    let answered = 0;
    const answer = (_h: string, s: net.Socket): void => {
      if (answered++ === 0) s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n', 'latin1');
      else s.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood');
    };
    const pair = await Promise.all([rawTarget(answer), rawTarget(answer)]);
    const port = await proxyFor(pair);
    expect(await request(port)).toMatchObject({ status: 200, body: 'good' });
    expect(pair.map((t) => t.heads.length)).toEqual([1, 1]);
  });
});

describe('one client never gets what a target sent for another', () => {
  test('trailers of one answer (a Set-Cookie among them) do not become the next client’s headers', async () => {
    const t = await rawTarget((_h, s, n) =>
      s.write(
        n === 1
          ? 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nSet-Cookie: session=first-client\r\ngrpc-status: 0\r\n\r\n'
          : 'HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond',
      ),
    );
    const port = await proxyFor([t], { POOL_SIZE: '1' });
    expect(await request(port)).toMatchObject({ status: 200, body: 'ok' });
    const second = await request(port);
    expect(second).toMatchObject({ status: 200, body: 'second' });
    expect(second.headers['set-cookie']).toBeUndefined();
    expect(second.headers['grpc-status']).toBeUndefined();
    expect(t.heads).toHaveLength(2);
  });

  test('a body on a HEAD answer is not the answer of the request waiting for that socket', async () => {
    const injected = 'HTTP/1.1 200 OK\r\nX-Injected: yes\r\nContent-Length: 8\r\n\r\nINJECTED';
    const t = await rawTarget((h, s) => {
      if (h.startsWith('HEAD')) setTimeout(() => s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${injected.length}\r\n\r\n${injected}`), 200);
      else s.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal');
    });
    const port = await proxyFor([t], { POOL_SIZE: '1' });
    const head = request(port, { method: 'HEAD' });
    await new Promise((r) => setTimeout(r, 50)); // the HEAD has the only socket; the GET waits for it
    const get = await request(port);
    expect(await head).toMatchObject({ status: 200, body: '' });
    expect(get).toMatchObject({ status: 200, body: 'real' });
    expect(get.headers['x-injected']).toBeUndefined();
  });
});

describe('a client held back by its target is not blamed for it, nor a target held back by its client', () => {
  test('a client that stops reading for longer than UPSTREAM_TIMEOUT still gets the whole answer: the target is not silent, we stopped reading it', async () => {
    const size = 16 * 1024 * 1024;
    const t = await rawTarget((_h, s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${size}\r\n\r\n`);
      s.write(Buffer.alloc(size, 'x'));
    });
    const port = await proxyFor([t], { UPSTREAM_TIMEOUT: '1', IDLE_TIMEOUT: '10' });
    const r = await rawExchange(
      port,
      (s) => {
        s.write('GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
        s.pause();
        setTimeout(() => s.resume(), 2500);
      },
      { deadlineMs: 10_000 },
    );
    expect(r.responses.map((x) => [x.status, x.body.length])).toEqual([[200, size]]);
  });

  test('a stream whose target is silent between events for longer than IDLE_TIMEOUT (within UPSTREAM_TIMEOUT) reaches the client whole', async () => {
    const t = await rawTarget((_h, s) => {
      s.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nevent 1\r\n');
      setTimeout(() => s.write('7\r\nevent 2\r\n0\r\n\r\n'), 1800);
    });
    const port = await proxyFor([t], { IDLE_TIMEOUT: '1', UPSTREAM_TIMEOUT: '5' });
    const r = await rawExchange(port, 'GET /events HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', { deadlineMs: 8000 });
    expect(r.responses.map((x) => [x.status, x.body])).toEqual([[200, 'event 1event 2']]);
  });

  test('a client that takes nothing of an answer for IDLE_TIMEOUT is cut (and the target let go)', async () => {
    const size = 64 * 1024 * 1024;
    const t = await rawTarget((_h, s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${size}\r\n\r\n`);
      s.write(Buffer.alloc(size, 'x'));
    });
    const port = await proxyFor([t], { IDLE_TIMEOUT: '1', UPSTREAM_TIMEOUT: '30' });
    const client = net.connect({ host: '127.0.0.1', port });
    client.on('error', () => undefined);
    try {
      client.write('GET /big HTTP/1.1\r\nHost: a\r\n\r\n');
      client.pause(); // never reads: what the proxy writes backs up
      await until('the target connection', () => t.sockets.size === 1, 5000);
      // The proxy cuts the client and closes its target connection: long before UPSTREAM_TIMEOUT.
      await until('the target connection closed', () => t.sockets.size === 0, 8000);
    } finally {
      client.destroy();
    }
  });

  test('an upload to a target that stopped reading is a 504 when UPSTREAM_TIMEOUT passes, not a 408 at IDLE_TIMEOUT', async () => {
    // The target reads the head, then nothing: the body backs up, and reading the client stops.
    const t = await rawTarget((_h, s) => s.pause());
    const port = await proxyFor([t], { IDLE_TIMEOUT: '1', UPSTREAM_TIMEOUT: '2.5' });
    const body = Buffer.alloc(32 * 1024 * 1024, 'x');
    const r = await rawExchange(
      port,
      (s) => {
        s.write(`POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: ${body.length}\r\n\r\n`);
        s.write(body);
        s.once('data', () => setTimeout(() => s.destroy(), 100)); // the answer is all we wait for
      },
      { deadlineMs: 8000 },
    );
    expect(r.responses.map((x) => x.status)).toEqual([504]);
  });
});

describe('what goes upstream is valid HTTP/1.1', () => {
  test('an HTTP/1.0 request without Host reaches the target with the target’s address as Host', async () => {
    const t = await rawTarget((_h, s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
    const port = await proxyFor([t]);
    const r = await rawExchange(port, 'GET /old HTTP/1.0\r\nUser-Agent: old\r\n\r\n');
    expect(r.responses.map((x) => `${x.status} ${x.body}`)).toEqual(['200 ok']);
    const hosts = t.heads[0].split('\r\n').filter((l) => /^host:/i.test(l));
    expect([t.heads[0].split('\r\n')[0], hosts]).toEqual(['GET /old HTTP/1.1', [`Host: ${t.id}`]]);
  });

  test('a request with a Host keeps it as the client sent it', async () => {
    const t = await rawTarget((_h, s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
    const port = await proxyFor([t]);
    await rawExchange(port, 'GET /new HTTP/1.0\r\nHost: app.example.com\r\n\r\n');
    expect(t.heads[0].split('\r\n').filter((l) => /^host:/i.test(l))).toEqual(['Host: app.example.com']);
  });
});

describe('what a target gets wrong in small ways is mended, not passed on', () => {
  test('a 204 loses the Content-Length it should not have; its body is never read as one', async () => {
    const t = await rawTarget((_h, s) => s.write('HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\n'));
    const port = await proxyFor([t]);
    const r = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(r.responses.map((x) => [x.status, x.headers['content-length'], x.headers['x-kept']])).toEqual([[204, undefined, 'yes']]);
    expect(r.rest).toBe('');
  });

  test("an answer's Content-Length with leading zeros reaches the client without them (never read as octal)", async () => {
    const t = await rawTarget((_h, s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 010\r\n\r\n0123456789'));
    const port = await proxyFor([t]);
    const r = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(r.data).toMatch(/\r\nContent-Length: 10\r\n/);
    expect(r.responses.map((x) => x.body)).toEqual(['0123456789']);
  });

  test('a status with no standard phrase keeps the target\'s, even none, rather than one made up', async () => {
    const t = await rawTarget((h, s) => s.write(h.startsWith('GET /none') ? 'HTTP/1.1 299\r\nContent-Length: 0\r\n\r\n' : 'HTTP/1.1 599 Network Read Timeout\r\nContent-Length: 0\r\n\r\n'));
    const port = await proxyFor([t]);
    expect((await rawExchange(port, 'GET /none HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')).data.split('\r\n')[0]).toBe('HTTP/1.1 299 ');
    expect((await rawExchange(port, 'GET /own HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')).data.split('\r\n')[0]).toBe('HTTP/1.1 599 Network Read Timeout');
  });

  test('a reason phrase with a control character is replaced by the standard one', async () => {
    const t = await rawTarget((_h, s) => s.write('HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok', 'latin1'));
    const port = await proxyFor([t]);
    const r = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(r.data.split('\r\n')[0]).toBe('HTTP/1.1 200 OK');
  });
});

describe('an answer head of up to 64 KiB (cookies, security headers) is passed on; a larger one is a 502 that does not count against the target', () => {
  /** A head with `n` 1,000-byte Set-Cookie lines. */
  const bigHead = (n: number): string => {
    let h = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n';
    for (let i = 0; i < n; i++) h += `Set-Cookie: c${i}=${'x'.repeat(1000)}; Path=/\r\n`;
    return `${h}\r\nok`;
  };
  /** A GET read by a client that allows heads of 128 KiB (node:http's own stops at 16). */
  const get = (port: number, path: string): Promise<{ status: number; cookies: number; body: string }> =>
    new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path, agent: false, maxHeaderSize: 128 * 1024 }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, cookies: res.headers['set-cookie']?.length ?? 0, body }));
        })
        .on('error', reject);
    });

  test('20 KiB of Set-Cookie lines arrive, every one', async () => {
    const t = await rawTarget((_h, s) => s.write(bigHead(20), 'latin1'));
    const port = await proxyFor([t]);
    expect(await get(port, '/')).toEqual({ status: 200, cookies: 20, body: 'ok' });
  });

  test('70 KiB is a 502 that says why, not retried, and ten of them in a row leave the target in rotation', async () => {
    const t = await rawTarget((h, s) => s.write(h.startsWith('GET /big') ? bigHead(70) : 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', 'latin1'));
    const port = await proxyFor([t], { CIRCUIT_BREAKER_THRESHOLD: '3', RETRIES: '2' });
    const before = t.heads.length;
    for (let i = 0; i < 10; i++) {
      const r = await get(port, `/big${i}`);
      expect(r).toMatchObject({ status: 502, body: expect.stringContaining('upstream response headers too large') });
    }
    expect(t.heads.length - before).toBe(10);
    expect(await get(port, '/small')).toEqual({ status: 200, cookies: 0, body: 'ok' });
  });
});

describe('the circuit breaker hears each request in the state it was let through in', () => {
  test('a slow answer to a request sent before the breaker opened does not close it while the half-open trial is out', async () => {
    let slowSocket: net.Socket | undefined;
    const t = await rawTarget((head, s) => {
      if (head.startsWith('GET /slow')) slowSocket = s;
      else if (head.startsWith('GET /reset')) s.destroy();
      else if (!head.startsWith('GET /hang')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    });
    // Threshold 2, open for 60 ms, no retries, no health checks: only the breaker decides.
    const port = await proxyFor([t], { CIRCUIT_BREAKER_THRESHOLD: '2', CIRCUIT_BREAKER_TIMEOUT: '0.001', RETRIES: '0' });
    const slow = request(port, { path: '/slow' });
    await until('the slow request at the target', () => slowSocket);
    expect((await request(port, { path: '/reset1' })).status).toBe(502);
    expect((await request(port, { path: '/reset2' })).status).toBe(502);
    expect((await request(port, { path: '/while-open' })).status).toBe(503);
    await new Promise((r) => setTimeout(r, 100));
    const trial = request(port, { path: '/hang', timeoutMs: 3000 }).catch(() => undefined);
    await until('the trial at the target', () => t.heads.some((h) => h.startsWith('GET /hang')));
    slowSocket!.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow');
    expect(await slow).toMatchObject({ status: 200, body: 'slow' });
    // The trial still hangs: nothing else may go to the target.
    expect((await request(port, { path: '/after' })).status).toBe(503);
    expect(t.heads.some((h) => h.startsWith('GET /after'))).toBe(false);
    for (const s of t.sockets) s.destroy();
    await trial;
  });
});

describe('an answer its target cuts mid-body reaches the client as cut, never as whole', () => {
  /** What a raw client sees of one request: the bytes, and whether the connection ended cleanly or was reset. */
  function ending(port: number, request: string): Promise<{ data: string; how: 'end' | 'reset' | 'other error' }> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      let data = '';
      const timer = setTimeout(() => reject(new Error('no end within 5 s')), 5000);
      const done = (how: 'end' | 'reset' | 'other error'): void => {
        clearTimeout(timer);
        socket.destroy();
        resolve({ data, how });
      };
      socket.on('data', (d: Buffer) => (data += d.toString('latin1')));
      socket.on('end', () => done('end'));
      socket.on('error', (e: NodeJS.ErrnoException) => done(e.code === 'ECONNRESET' ? 'reset' : 'other error'));
      socket.write(request, 'latin1');
    });
  }
  /** A target that sends a head without a length and part of a body, then resets its connection. */
  const cutting = (_h: string, s: net.Socket): void => {
    s.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart of it', 'latin1', () => setTimeout(() => s.resetAndDestroy(), 50));
  };

  test('HTTP/1.0, where the close ends the body: the client connection is reset, not closed', async () => {
    const port = await proxyFor([await rawTarget(cutting)]);
    const got = await ending(port, 'GET / HTTP/1.0\r\nHost: a\r\n\r\n');
    expect(got.how).toBe('reset');
  });

  test('HTTP/1.1: the chunked answer lacks its last chunk, and its access line says what cut it', async () => {
    const lines: string[] = [];
    const stdout = jest.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    try {
      const port = await proxyFor([await rawTarget(cutting)], { LOG_CONNECTIONS: 'true' });
      const got = await ending(port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n');
      expect(got.data).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*Transfer-Encoding: chunked\r\n\r\na\r\npart of it\r\n$/);
      expect(got.data).not.toContain('0\r\n\r\n');
      const access = await until('its access line', () => lines.map((l) => JSON.parse(l)).find((l) => l.msg === 'access'));
      expect(access).toMatchObject({ status: 200, error: 'reset' });
    } finally {
      stdout.mockRestore();
    }
  });

  test('HTTP/1.0 with an answer that ends as it should: a clean close', async () => {
    const t = await rawTarget((_h, s) => s.end('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it', 'latin1'));
    const port = await proxyFor([t]);
    const got = await ending(port, 'GET / HTTP/1.0\r\nHost: a\r\n\r\n');
    expect(got).toMatchObject({ how: 'end' });
    expect(got.data).toMatch(/\r\n\r\nall of it$/);
  });
});

describe('a target that refuses an upload early (413 and close, the body unread) is heard, not taken for a broken one', () => {
  test('each large upload gets the 413, and the breaker stays closed for the GETs after', async () => {
    const server = http.createServer((req, res) => {
      if (req.method === 'POST') {
        // Answers at the head and closes: the rest of the body is never read (the kernel resets it).
        res.writeHead(413, { 'Content-Type': 'text/plain', Connection: 'close', 'Content-Length': '9' });
        res.end('too large');
        return;
      }
      res.end('fine');
    });
    const port = await listen(server);
    const target = makeTarget('127.0.0.1', port);
    proxy = await start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: target.id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', CIRCUIT_BREAKER_THRESHOLD: '3' }), {});
    try {
      const body = Buffer.alloc(16 * 1024 * 1024, 'x');
      const statuses: number[] = [];
      for (let i = 0; i < 6; i++) {
        statuses.push(
          await new Promise<number>((resolve) => {
            const req = http.request({ host: '127.0.0.1', port: proxy!.port, method: 'POST', path: '/upload', agent: false, headers: { 'Content-Length': body.length } }, (res) => {
              res.resume();
              resolve(res.statusCode ?? 0);
            });
            req.on('error', () => resolve(-1));
            req.end(body);
          }),
        );
      }
      expect(statuses).toEqual([413, 413, 413, 413, 413, 413]);
      expect(await request(proxy.port)).toMatchObject({ status: 200, body: 'fine' });
    } finally {
      server.closeAllConnections();
      await close(server);
    }
  });

  test('a target that resets mid-upload without answering: a 502 at once, and no socket of its pool kept', async () => {
    const server = net.createServer((sock) => {
      sock.on('error', () => undefined);
      let seen = 0;
      sock.on('data', (d: Buffer) => {
        if (d.toString('latin1').startsWith('GET ')) return void sock.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine');
        seen += d.length;
        if (seen > 64 * 1024) sock.resetAndDestroy();
      });
    });
    const port = await listen(server);
    const target = makeTarget('127.0.0.1', port);
    proxy = await start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: target.id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', RETRIES: '0', POOL_SIZE: '2', UPSTREAM_TIMEOUT: '20', CIRCUIT_BREAKER_THRESHOLD: '1000' }), {});
    try {
      const body = Buffer.alloc(4 * 1024 * 1024, 'x');
      const started = Date.now();
      for (let i = 0; i < 6; i++) {
        const status = await new Promise<number>((resolve) => {
          const req = http.request({ host: '127.0.0.1', port: proxy!.port, method: 'POST', path: '/upload', agent: false, headers: { 'Content-Length': body.length } }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          });
          req.on('error', () => resolve(-1)); // the proxy may close before the client finished sending
          req.end(body);
        });
        expect([502, -1]).toContain(status);
      }
      // Well within UPSTREAM_TIMEOUT: no try waited for an answer that could not come.
      expect(Date.now() - started).toBeLessThan(10_000);
      // POOL_SIZE=2: a socket kept from any of the six would leave no room for these.
      for (let i = 0; i < 3; i++) expect(await request(proxy.port)).toMatchObject({ status: 200, body: 'fine' });
    } finally {
      await close(server);
    }
  });
});


test("the proxy's own 5xx are counted apart from the targets' (an ALB's HTTPCode_ELB_5XX): a target's 500 or 503 is not, a 502, 503 or 504 of ours is", async () => {
  const { proxyErrors } = await import('../../runtime/metrics');
  const ours = async (): Promise<Record<string, number>> =>
    Object.fromEntries((await proxyErrors.get()).values.map((v) => [String(v.labels.code), v.value]));
  const answers = await rawTarget((head, s) => {
    if (head.startsWith('GET /500 ')) s.write('HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n');
    else if (head.startsWith('GET /503 ')) s.write('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n');
    else if (head.startsWith('GET /bad ')) s.end('HTTP/1.1 999 What\r\n\r\n');
    // GET /slow: no answer at all.
  });
  const port = await proxyFor([answers], { RETRIES: '0', UPSTREAM_TIMEOUT: '1', CIRCUIT_BREAKER_THRESHOLD: '2' });
  const before = await ours();
  const delta = async (): Promise<Record<string, number>> => {
    const now = await ours();
    return Object.fromEntries(Object.entries(now).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, v]) => v !== 0));
  };
  expect((await request(port, { path: '/500' })).status).toBe(500);
  expect((await request(port, { path: '/503' })).status).toBe(503);
  expect(await delta()).toEqual({});
  expect((await request(port, { path: '/bad', headers: { Connection: 'close' } })).status).toBe(502);
  expect((await request(port, { path: '/slow', headers: { Connection: 'close' } })).status).toBe(504);
  expect(await delta()).toEqual({ 502: 1, 504: 1 });
  // A WebSocket handshake the proxy refuses, once the target is gone: a 502 (refused) written raw.
  await close(answers.server);
  for (const s of answers.sockets) s.destroy();
  const r = await rawExchange(port, 'GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
  expect(r.responses.map((x) => x.status)).toEqual([502]);
  expect(await delta()).toEqual({ 502: 2, 504: 1 });
  // Two failures opened the target's breaker: no target is left, a 503 of ours.
  expect((await request(port, { path: '/', headers: { Connection: 'close' } })).status).toBe(503);
  expect(await delta()).toEqual({ 502: 2, 503: 1, 504: 1 });
});

test('a request its target still held at SHUTDOWN_TIMEOUT, cut with nothing answered, is a 503 of the proxy\'s in both counts', async () => {
  const { proxyErrors, requestsTotal } = await import('../../runtime/metrics');
  const ours503 = async (): Promise<number> => (await proxyErrors.get()).values.find((v) => v.labels.code === '503')?.value ?? 0;
  const all5xx = async (): Promise<number> => (await requestsTotal.get()).values.filter((v) => v.labels.code === '5xx').reduce((n, v) => n + v.value, 0);
  const silent = await rawTarget(() => undefined);
  const port = await proxyFor([silent], { SHUTDOWN_TIMEOUT: '0.3', UPSTREAM_TIMEOUT: '30' });
  const [ours, all] = [await ours503(), await all5xx()];
  const held = request(port, { path: '/held' }).then(() => 'answered', () => 'cut');
  await until('the target has it', () => silent.heads.length === 1);
  await proxy!.stop();
  expect(await held).toBe('cut');
  expect([await ours503() - ours, await all5xx() - all]).toEqual([1, 1]);
});
