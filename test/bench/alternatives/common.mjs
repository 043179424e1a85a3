// What every alternative forwarder shares: where to listen, where to forward, how to load an optional
// package (from the project, or from test/bench/.deps: npm install --prefix test/bench/.deps undici http-proxy-3),
// and the readiness line the harness waits for.
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const [host, port] = (process.env.TARGET ?? '127.0.0.1:8080').split(':');
export const target = { host, port: Number(port) };
export const listenPort = Number(process.env.PORT ?? 0);
/** Upstream keep-alive sockets, as Karma's POOL_SIZE default. */
export const poolSize = 100;

/** Loads an npm package, or exits 3 with a line the harness prints as the reason for skipping. */
export function need(name) {
  for (const from of [path.join(here, '..', '..', '..', 'package.json'), path.join(here, '..', '.deps', 'package.json')]) {
    try {
      return createRequire(from)(name);
    } catch {
      // try the next place
    }
  }
  process.stderr.write(`missing package ${name}: npm install --no-save ${name} (or npm install --prefix test/bench/.deps ${name})\n`);
  process.exit(3);
}

export function ready(server) {
  server.listen(listenPort, '127.0.0.1', () => process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n'));
  process.on('SIGTERM', () => process.exit(0));
}

// The X-Forwarded-For every forwarder here appends, as Karma does, so none is measured doing less.
export function clientIp(req) {
  const a = req.socket.remoteAddress ?? '';
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}
