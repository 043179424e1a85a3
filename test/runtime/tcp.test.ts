import { execFileSync } from 'node:child_process';
import * as net from 'node:net';
import { loadConfig } from '../../runtime/config';
import { failOpenTotal, nodeHealthStatus } from '../../runtime/metrics';
import { makeTarget, Provider, Target } from '../../runtime/types';
import { Running, start } from '../../runtime/worker';
import { close, freePort, listen, until } from '../support/net';

/** A TCP echo server that names itself first, and ends its side when the client ends its own. */
async function echo(name: string): Promise<{ server: net.Server; port: number }> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.write(`${name}:`);
    s.on('data', (d) => s.write(d));
    s.on('end', () => s.end(':bye'));
    s.on('error', () => undefined); // a TCP health check closes its connection without reading the name
  });
  return { server, port: await listen(server) };
}

/** Connects, sends `text`, half-closes, and collects everything until the server closes. */
function exchange(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => s.end(text));
    let got = '';
    s.on('data', (d) => (got += d));
    s.on('close', () => resolve(got));
    s.on('error', reject);
    s.setTimeout(5000, () => s.destroy(new Error('timeout')));
  });
}

const fixed = (targets: Target[]): Provider => ({ name: 'test', discover: async () => targets });

describe('MODE=tcp', () => {
  let p: Running;
  const servers: net.Server[] = [];
  afterEach(async () => {
    await p?.stop();
    await Promise.all(servers.map(close));
    servers.length = 0;
  });

  test('round-robins raw connections and passes half-close both ways', async () => {
    const a = await echo('a');
    const b = await echo('b');
    servers.push(a.server, b.server);
    const targets = [makeTarget('127.0.0.1', a.port), makeTarget('127.0.0.1', b.port)];
    p = await start(loadConfig({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: targets.map((t) => t.id).join(','), PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off' }), { provider: fixed(targets) });
    const { processedBytes } = await import('../../runtime/metrics');
    const bytes = async (): Promise<Record<string, number>> =>
      Object.fromEntries((await processedBytes.get()).values.map((v) => [String(v.labels.direction), v.value]));
    const before = await bytes();
    const replies = [];
    for (let i = 0; i < 4; i++) replies.push(await exchange(p.port, `hi${i}`));
    // Every byte each way, counted as an ALB's ProcessedBytes.
    const after = await bytes();
    expect([after.in - (before.in ?? 0), after.out - (before.out ?? 0)]).toEqual([4 * 'hi0'.length, replies.join('').length]);
    const names = replies.map((r) => r.split(':')[0]);
    expect(names.filter((n) => n === 'a')).toHaveLength(2);
    expect(names.filter((n) => n === 'b')).toHaveLength(2);
    expect(names[0]).not.toBe(names[1]);
    expect(replies[0]).toMatch(/^[ab]:hi0:bye$/);
  });

  test('a target that resets mid-stream is a reset for the client, not a close that says the stream ended whole', async () => {
    const server = net.createServer((sock) => {
      sock.on('error', () => undefined);
      sock.write('partial', () => setTimeout(() => sock.resetAndDestroy(), 20));
    });
    const port = await listen(server);
    servers.push(server);
    const targets = [makeTarget('127.0.0.1', port)];
    p = await start(loadConfig({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: targets[0].id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off' }), { provider: fixed(targets) });
    const seen = await new Promise<{ got: string; how: string }>((resolve) => {
      const c = net.connect({ port: p.port, host: '127.0.0.1' });
      let got = '';
      c.on('data', (d) => (got += d));
      c.on('end', () => resolve({ got, how: 'end' }));
      c.on('error', (e: NodeJS.ErrnoException) => resolve({ got, how: e.code ?? 'error' }));
      c.setTimeout(5000, () => resolve({ got, how: 'timeout' }));
    });
    expect(seen).toEqual({ got: 'partial', how: 'ECONNRESET' });
  });

  test('a client that resets is a reset for the target, not a close, and its line says reset', async () => {
    let heard: string | undefined;
    let connections = 0;
    const server = net.createServer({ allowHalfOpen: true }, (sock) => {
      connections++;
      sock.on('end', () => (heard ??= 'end'));
      sock.on('error', (e: NodeJS.ErrnoException) => (heard ??= e.code));
    });
    const port = await listen(server);
    servers.push(server);
    const targets = [makeTarget('127.0.0.1', port)];
    const lines: string[] = [];
    const spy = jest.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    try {
      p = await start(loadConfig({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: targets[0].id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', LOG_CONNECTIONS: 'true' }), { provider: fixed(targets) });
      const c = net.connect({ port: p.port, host: '127.0.0.1' });
      c.on('error', () => undefined);
      await new Promise<void>((r) => c.once('connect', () => c.write('hello', () => r())));
      await until('the target connected', () => connections === 1);
      await new Promise((r) => setTimeout(r, 50));
      c.resetAndDestroy();
      await until('the target heard it', () => heard !== undefined);
      expect(heard).toBe('ECONNRESET');
      await until('the line', () => lines.some((l) => l.includes('tcp connection closed')), 2000);
      expect(JSON.parse(lines.find((l) => l.includes('tcp connection closed'))!)).toMatchObject({ error: 'reset' });
    } finally {
      spy.mockRestore();
    }
  });

  test("a half-open target's trial whose client left while it connected still counts: the target is not shut out", async () => {
    const port = await freePort();
    const targets = [makeTarget('127.0.0.1', port)];
    p = await start(loadConfig({
      NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: targets[0].id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off',
      CIRCUIT_BREAKER_THRESHOLD: '1', CIRCUIT_BREAKER_TIMEOUT: '0.005', IDLE_TIMEOUT: '0.1', RETRIES: '0',
    }), { provider: fixed(targets) });
    // Nothing listens: one refused connection opens the breaker (the client is closed, or reset with 'x' unread).
    expect(await exchange(p.port, 'x').catch(() => '')).toBe('');
    const target = net.createServer({ allowHalfOpen: true }, (sock) => {
      sock.write('t:');
      sock.on('data', (d) => sock.write(d));
      sock.on('end', () => sock.end(':bye'));
      sock.on('error', () => undefined);
    });
    await new Promise<void>((r) => target.listen(port, '127.0.0.1', () => r()));
    servers.push(target);
    await new Promise((r) => setTimeout(r, 400)); // half-open after 0.3 s
    // The trial's connection completes in the same loop turn as its client's idle timer fires.
    const realConnect = net.Socket.prototype.connect;
    let held = 0;
    net.Socket.prototype.connect = function (this: net.Socket, ...args: unknown[]) {
      const sock = (realConnect as (...a: unknown[]) => net.Socket).apply(this, args);
      // net.connect passes its normalized arguments as one array.
      const opts = (Array.isArray(args[0]) ? args[0][0] : args[0]) as net.TcpNetConnectOpts | undefined;
      if (opts?.port === port) {
        held++;
        const end = Date.now() + 200;
        while (Date.now() < end); // hold the loop
      }
      return sock;
    } as typeof realConnect;
    const c = net.connect({ port: p.port, host: '127.0.0.1' });
    c.on('error', () => undefined);
    try {
      await until('the trial connection made', () => held > 0);
    } finally {
      net.Socket.prototype.connect = realConnect;
    }
    await new Promise((r) => setTimeout(r, 100));
    c.destroy();
    // The trial passed: clients are served again.
    await until('served again', async () => (await exchange(p.port, 'hi').catch(() => '')) === 't:hi:bye');
  });

  test("a client's own junk that makes the target reset does not count against the target: its breaker stays closed for the others", async () => {
    // A server that reads a 4-byte command and closes on any other: closing with input unread, the kernel
    // sends a reset. In tcp mode the client's bytes reach the target unparsed, so the client chose it.
    const server = net.createServer((sock) => {
      sock.on('error', () => undefined);
      sock.once('readable', () => {
        const cmd = sock.read(4);
        if (cmd?.toString() === 'PING') sock.end('PONG');
        else sock.destroy();
      });
    });
    const port = await listen(server);
    servers.push(server);
    const targets = [makeTarget('127.0.0.1', port)];
    p = await start(loadConfig({
      NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: targets[0].id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off',
      CIRCUIT_BREAKER_THRESHOLD: '2', CIRCUIT_BREAKER_TIMEOUT: '5',
    }), { provider: fixed(targets) });
    // 1 MiB, more than the target reads before it closes: the rest is left unread.
    for (let i = 0; i < 6; i++) await exchange(p.port, 'x'.repeat(1 << 20)).catch(() => '');
    for (let i = 0; i < 3; i++) expect(await exchange(p.port, 'PING')).toBe('PONG');
  });

  test('a dead target is skipped: the connection is retried on the next one', async () => {
    const a = await echo('a');
    servers.push(a.server);
    const targets = [makeTarget('127.0.0.1', a.port), makeTarget('127.0.0.1', await freePort())];
    p = await start(loadConfig({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: targets.map((t) => t.id).join(','), PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off' }), { provider: fixed(targets) });
    for (let i = 0; i < 4; i++) expect(await exchange(p.port, 'x')).toBe('a:x:bye');
  });

  test('the one pool is kept however long no connection comes: past ROUTE_IDLE_TTL the next one is served as the first was', async () => {
    const a = await echo('a');
    servers.push(a.server);
    const t = makeTarget('127.0.0.1', a.port);
    p = await start(loadConfig({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: t.id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off',
      ROUTE_IDLE_TTL: '0.3', NODE_CHECK_PERIOD: '0.1' }), { provider: fixed([t]) });
    expect(await exchange(p.port, 'x')).toBe('a:x:bye');
    await new Promise((r) => setTimeout(r, 1000)); // idle past ROUTE_IDLE_TTL, with refresh passes every 50 ms
    expect(await exchange(p.port, 'y')).toBe('a:y:bye');
  });

  test('a target that answers and closes its side first, then reads an upload slowly, gets all of it: what was queued is not dropped at the client\'s close', async () => {
    const SIZE = 4 * 1024 * 1024 + 5000; // a last chunk short of the write buffer's mark: written without waiting
    let got = -1;
    const server = net.createServer({ allowHalfOpen: true }, (sock) => {
      sock.on('error', () => undefined);
      let n = 0;
      sock.end('ready');
      // Nothing read for a while, then slowly: the proxy's writes to it wait in its queue.
      sock.pause();
      setTimeout(() => sock.resume(), 300);
      sock.on('data', (d) => {
        n += d.length;
        sock.pause();
        setTimeout(() => sock.resume(), 10);
      });
      sock.on('end', () => (got = n));
    });
    const port = await listen(server);
    servers.push(server);
    const targets = [makeTarget('127.0.0.1', port)];
    p = await start(loadConfig({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: targets[0].id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off' }), { provider: fixed(targets) });
    await new Promise<void>((resolve, reject) => {
      const c = net.connect({ port: p.port, host: '127.0.0.1', allowHalfOpen: true }, () => c.end(Buffer.alloc(SIZE, 7)));
      c.resume();
      c.on('close', () => resolve());
      c.on('error', reject);
      c.setTimeout(20_000, () => c.destroy(new Error('timeout')));
    });
    await until('the target read to its end', () => got >= 0, 20_000);
    expect(got).toBe(SIZE);
  });

  test.each([
    ['at IDLE_TIMEOUT', 'idle_timeout'],
    ['at SHUTDOWN_TIMEOUT', 'cut_at_shutdown'],
  ])('a tunnel the proxy cuts %s is a reset for both sides, not an end that says the stream ended whole, and its line says why', async (_when, why) => {
    let targetHeard: string | undefined;
    const server = net.createServer({ allowHalfOpen: true }, (sock) => {
      sock.write('ready');
      sock.on('end', () => (targetHeard ??= 'end'));
      sock.on('error', (e: NodeJS.ErrnoException) => (targetHeard ??= e.code));
    });
    const port = await listen(server);
    servers.push(server);
    const targets = [makeTarget('127.0.0.1', port)];
    const lines: string[] = [];
    const spy = jest.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    try {
      const idle = why === 'idle_timeout' ? '0.3' : '0';
      p = await start(loadConfig({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: targets[0].id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', IDLE_TIMEOUT: idle, SHUTDOWN_TIMEOUT: '0.2', LOG_CONNECTIONS: 'true' }), { provider: fixed(targets) });
      const c = net.connect({ port: p.port, host: '127.0.0.1', allowHalfOpen: true });
      let clientHeard: string | undefined;
      c.on('end', () => (clientHeard ??= 'end'));
      c.on('error', (e: NodeJS.ErrnoException) => (clientHeard ??= e.code));
      await new Promise((r) => c.once('data', r)); // the tunnel is up
      c.write('half of a file'); // then nothing more, and no end
      if (why === 'cut_at_shutdown') void p.stop();
      await until('both sides heard', () => clientHeard !== undefined && targetHeard !== undefined, 5000);
      expect([clientHeard, targetHeard]).toEqual(['ECONNRESET', 'ECONNRESET']);
      await until('the line', () => lines.some((l) => l.includes('tcp connection closed')), 2000);
      expect(JSON.parse(lines.find((l) => l.includes('tcp connection closed'))!)).toMatchObject({ error: why });
      c.destroy();
    } finally {
      spy.mockRestore();
    }
  });

  test('both sockets of a tunnel send keep-alive probes: with IDLE_TIMEOUT=0 a peer that vanished without a word is found', async () => {
    const a = await echo('a');
    servers.push(a.server);
    const t = makeTarget('127.0.0.1', a.port);
    p = await start(loadConfig({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: t.id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', IDLE_TIMEOUT: '0' }), { provider: fixed([t]) });
    const c = net.connect(p.port, '127.0.0.1');
    c.on('error', () => undefined);
    try {
      await new Promise((r) => c.once('data', r)); // the tunnel is up
      // The kernel's view (ss -o shows each socket's timer): the proxy's side towards the client, and its
      // connection to the target.
      const timers = (filter: string): string => execFileSync('ss', ['-tnoH', 'state', 'established', filter], { encoding: 'utf8' });
      expect(timers(`( sport = :${p.port} )`)).toMatch(/timer:\(keepalive/);
      expect(timers(`( dport = :${a.port} )`)).toMatch(/timer:\(keepalive/);
    } finally {
      c.destroy();
    }
  });

  test('IDLE_TIMEOUT=0: an idle tunnel (a database connection between queries) stays open, as with the Stateless Load Balancer', async () => {
    const a = await echo('a');
    servers.push(a.server);
    const t = makeTarget('127.0.0.1', a.port);
    const open = async (idle: string): Promise<boolean> => {
      p = await start(loadConfig({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: t.id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', IDLE_TIMEOUT: idle }), { provider: fixed([t]) });
      const s = net.connect(p.port, '127.0.0.1');
      s.on('error', () => undefined);
      await new Promise((r) => s.once('data', r)); // the target's name: the tunnel is up
      let closed = false;
      s.on('close', () => (closed = true));
      await new Promise((r) => setTimeout(r, 800)); // idle
      const stillOpen = !closed;
      s.destroy();
      await p.stop();
      return stillOpen;
    };
    expect(await open('0.3')).toBe(false); // cut at its idle timeout
    expect(await open('0')).toBe(true);
  });

  /**
   * With the one place `limit` leaves taken by a tunnel held open, how a second client's connection ends
   * ('ECONNRESET', 'end', 'close'), and the access log's `tcp connection refused` lines.
   */
  async function secondClient(limit: Record<string, string>): Promise<{ how: string; refused: { why?: string; client?: string }[] }> {
    const a = await echo('a');
    servers.push(a.server);
    const targets = [makeTarget('127.0.0.1', a.port)];
    const lines: string[] = [];
    const spy = jest.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
    const held: net.Socket[] = [];
    let how: string;
    try {
      p = await start(loadConfig({ NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: targets[0].id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off', LOG_CONNECTIONS: 'true', ...limit }), { provider: fixed(targets) });
      const first = net.connect({ port: p.port, host: '127.0.0.1', allowHalfOpen: true });
      held.push(first);
      await new Promise((r) => first.once('data', r)); // the one place is taken
      how = await new Promise<string>((resolve) => {
        const c = net.connect({ port: p.port, host: '127.0.0.1' });
        held.push(c);
        c.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
        c.on('end', () => resolve('end'));
        c.on('close', () => resolve('close'));
      });
      await until('the line', () => lines.some((l) => l.includes('tcp connection refused')), 2000);
    } finally {
      spy.mockRestore();
      for (const c of held) c.destroy();
    }
    const refused = lines.map((l) => JSON.parse(l) as { msg: string; why?: string; client?: string }).filter((l) => l.msg === 'tcp connection refused');
    return { how, refused };
  }

  test('with every target full (POOL_SIZE) or dead, the client is reset, as an NLB does, and the access log says why', async () => {
    const { how, refused } = await secondClient({ POOL_SIZE: '1' });
    expect(how).toBe('ECONNRESET');
    expect(refused).toMatchObject([{ why: 'every target full (POOL_SIZE)' }]);
  });

  test('a client over MAX_CONNECTIONS is closed, counted, and the access log says why', async () => {
    const { refused } = await secondClient({ MAX_CONNECTIONS: '1' });
    expect(refused).toMatchObject([{ why: 'MAX_CONNECTIONS reached', client: '127.0.0.1' }]);
  });

  test('HEALTH_CHECK_PROTOCOL=tcp: targets that do not speak HTTP pass their checks, and a stopped one is left out', async () => {
    const a = await echo('a');
    const b = await echo('b');
    servers.push(a.server);
    const targets = [makeTarget('127.0.0.1', a.port), makeTarget('127.0.0.1', b.port)];
    const env = { NODE_FILTER: 'static', MODE: 'tcp', STATIC_TARGETS: targets.map((t) => t.id).join(','), PORT: '0', HOST: '127.0.0.1' };
    p = await start(loadConfig({ ...env, HEALTH_CHECK_PROTOCOL: 'tcp', HEALTH_CHECK_PERIOD: '0.1', UNHEALTHY_THRESHOLD: '1' }), { provider: fixed(targets) });
    const health = async (t: Target): Promise<number | undefined> => (await nodeHealthStatus.get()).values.find((v) => v.labels.target === t.id)?.value;
    const failOpen = async (): Promise<number> => (await failOpenTotal.get()).values.reduce((n, v) => n + v.value, 0);
    await until('both checked', async () => (await health(targets[0])) === 1 && (await health(targets[1])) === 1);
    const before = await failOpen();
    const names = [];
    for (let i = 0; i < 4; i++) names.push((await exchange(p.port, 'x')).split(':')[0]);
    expect(names.sort()).toEqual(['a', 'a', 'b', 'b']);
    expect(await failOpen()).toBe(before);
    // b stops listening: its next check fails, and connections go to a only.
    await close(b.server);
    await until('b unhealthy', async () => (await health(targets[1])) === 0);
    for (let i = 0; i < 4; i++) expect(await exchange(p.port, 'x')).toBe('a:x:bye');
  });
});
