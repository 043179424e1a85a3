/**
 * A worker asks for a young-generation collection as bodies pass through it (runtime/memory.ts): what
 * targets send, every 2 MB; request bodies, every 8 MB; WebSocket tunnels, both ways. `gc` is
 * stubbed before the runtime loads, as --expose-gc would provide it in a real worker.
 */
import * as http from 'node:http';
import { WebSocket, WebSocketServer } from 'ws';
import { close, listen } from '../support/net';

jest.setTimeout(30_000);

const MB = 1024 * 1024;
const gc = jest.fn();
(globalThis as { gc?: unknown }).gc = gc;
// Loaded after the stub: memory.ts takes `gc` when it loads.
const { loadConfig } = require('../../runtime/config') as typeof import('../../runtime/config');
const { makeTarget } = require('../../runtime/types') as typeof import('../../runtime/types');
const { start } = require('../../runtime/worker') as typeof import('../../runtime/worker');

afterAll(() => {
  delete (globalThis as { gc?: unknown }).gc;
});

async function through<T>(target: http.Server, work: (port: number) => Promise<T>): Promise<T> {
  const port = await listen(target);
  const t = makeTarget('127.0.0.1', port);
  const p = await start(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: t.id, PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off' }), {
    provider: { name: 'test', discover: async () => [t] },
  });
  try {
    return await work(p.port);
  } finally {
    await p.stop();
    await close(target);
  }
}

function get(port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let n = 0;
      res.on('data', (c: Buffer) => (n += c.length));
      res.on('end', () => resolve(n));
    }).on('error', reject);
  });
}

beforeEach(() => gc.mockClear());

test('a 20 MB response collects the young generation about every 2 MB, and arrives whole', async () => {
  const body = Buffer.alloc(20 * MB, 'x');
  const target = http.createServer((_req, res) => res.end(body));
  expect(await through(target, (port) => get(port, '/big'))).toBe(20 * MB);
  expect(gc.mock.calls.length).toBeGreaterThanOrEqual(9);
  expect(gc.mock.calls.length).toBeLessThanOrEqual(11);
  expect(gc).toHaveBeenCalledWith({ type: 'minor' });
});

test('a 40 MB upload collects every 8 MB only', async () => {
  const target = http.createServer((req, res) => {
    let n = 0;
    req.on('data', (c: Buffer) => (n += c.length));
    req.on('end', () => res.end(String(n)));
  });
  const answer = await through(
    target,
    (port) =>
      new Promise<string>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/up', agent: false, headers: { 'Content-Length': 40 * MB } }, (res) => {
          let s = '';
          res.on('data', (c) => (s += c));
          res.on('end', () => resolve(s));
        });
        req.on('error', reject);
        req.end(Buffer.alloc(40 * MB, 'y'));
      }),
  );
  expect(answer).toBe(String(40 * MB));
  // 40 MB at 8 MB each: five, or six with what the tests before left in the shared tally (at 2 MB
  // each it would be twenty).
  expect(gc.mock.calls.length).toBeGreaterThanOrEqual(5);
  expect(gc.mock.calls.length).toBeLessThanOrEqual(6);
});

test('a WebSocket tunnel counts both ways and still carries every message', async () => {
  const target = http.createServer();
  const wss = new WebSocketServer({ server: target });
  wss.on('connection', (sock) => sock.on('message', (m: Buffer) => sock.send(m)));
  const echoed = await through(
    target,
    (port) =>
      new Promise<number>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
        const message = Buffer.alloc(256 * 1024, 'z');
        let got = 0;
        ws.on('open', () => {
          for (let i = 0; i < 16; i++) ws.send(message);
        });
        ws.on('message', (m: Buffer) => {
          got += m.length;
          if (got === 16 * message.length) ws.close();
        });
        ws.on('close', () => resolve(got));
        ws.on('error', reject);
      }),
  );
  wss.close();
  // 4 MB each way, 8 MB in all: four collections (five with what the tests before left in the tally);
  // one way alone would make two or three.
  expect(echoed).toBe(4 * MB);
  expect(gc.mock.calls.length).toBeGreaterThanOrEqual(4);
  expect(gc.mock.calls.length).toBeLessThanOrEqual(5);
});
