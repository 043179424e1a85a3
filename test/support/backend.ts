/**
 * Real HTTP backends on 127.0.0.1 port 0. Each answers with its own name and remembers what it saw,
 * and can be switched to misbehave (slow, down) at a chosen moment.
 */
import * as http from 'node:http';
import { close, listen } from './net';

export interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  bodyBytes: number;
}

export interface Backend {
  readonly name: string;
  readonly port: number;
  readonly server: http.Server;
  /** Requests seen, health checks excluded (User-Agent karma-proxy-health-check). */
  readonly seen: Seen[];
  healthChecks: number;
  /** Status of the health path. */
  healthStatus: number;
  /** Replaces the request handler (health checks still answered with healthStatus). */
  handle: (req: http.IncomingMessage, res: http.ServerResponse) => void;
  close(): Promise<void>;
}

export async function startBackend(name: string): Promise<Backend> {
  const b: Backend = {
    name,
    port: 0,
    server: undefined as unknown as http.Server,
    seen: [],
    healthChecks: 0,
    healthStatus: 200,
    handle: (req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain', 'X-Backend': name });
      res.end(name);
    },
    close: async () => close(b.server),
  };
  const server = http.createServer((req, res) => {
    if (req.headers['user-agent'] === 'karma-proxy-health-check') {
      b.healthChecks++;
      req.resume();
      res.writeHead(b.healthStatus);
      res.end();
      return;
    }
    const seen: Seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, bodyBytes: 0 };
    b.seen.push(seen);
    req.on('data', (c: Buffer) => (seen.bodyBytes += c.length));
    b.handle(req, res);
  });
  (b as { server: http.Server }).server = server;
  (b as { port: number }).port = await listen(server);
  return b;
}
