import * as http from 'node:http';
import { WebSocket, WebSocketServer } from 'ws';
import { loadConfig } from '../../runtime/config';
import { limitHits } from '../../runtime/metrics';
import { makeTarget } from '../../runtime/types';
import { start } from '../../runtime/worker';
import { close, listen } from '../support/net';

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

test('at most POOL_SIZE WebSockets are open to one target; past it a 503, counted', async () => {
  const server = http.createServer();
  const wss = new WebSocketServer({ server });
  wss.on('connection', (sock) => sock.on('message', (m) => sock.send(m)));
  const port = await listen(server);
  const t = makeTarget('127.0.0.1', port);
  const p = await start(
    loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: t.id, POOL_SIZE: '2', PORT: '0', HOST: '127.0.0.1', HEALTH_CHECK_PATH: 'off' }),
    { provider: { name: 'test', discover: async () => [t] } },
  );
  const hits = async (): Promise<number> =>
    (await limitHits.get()).values.find((v) => v.labels.limit === 'target_sockets')?.value ?? 0;
  try {
    const before = await hits();
    const a = await open(p.port);
    const b = await open(p.port);
    expect(a).toBeInstanceOf(WebSocket);
    expect(b).toBeInstanceOf(WebSocket);
    expect(await open(p.port)).toBe(503);
    expect(await hits()).toBe(before + 1);
    await new Promise<void>((r) => {
      (a as WebSocket).once('close', () => r());
      (a as WebSocket).close();
    });
    await new Promise((r) => setTimeout(r, 50));
    const c = await open(p.port);
    expect(c).toBeInstanceOf(WebSocket);
    (b as WebSocket).close();
    (c as WebSocket).close();
  } finally {
    await p.stop();
    wss.close();
    await close(server);
  }
});
