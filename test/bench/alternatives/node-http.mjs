// The bare node:http forwarder: what Karma's forward.ts does minus routing, retries, breakers,
// timers and metrics. The floor a node:http-based proxy cannot go under.
import * as http from 'node:http';
import { clientIp, poolSize, ready, target } from './common.mjs';

const agent = new http.Agent({ keepAlive: true, maxSockets: poolSize, maxFreeSockets: poolSize, scheduling: 'lifo' });
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

const server = http.createServer((req, res) => {
  const raw = req.rawHeaders;
  const headers = [];
  for (let i = 0; i < raw.length; i += 2) if (!HOP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1]);
  headers.push('X-Forwarded-For', clientIp(req));
  const up = http.request({ host: target.host, port: target.port, method: req.method, path: req.url, headers, agent, setHost: false });
  up.on('response', (r) => {
    const out = [];
    const rh = r.rawHeaders;
    for (let i = 0; i < rh.length; i += 2) if (!HOP.has(rh[i].toLowerCase())) out.push(rh[i], rh[i + 1]);
    res.writeHead(r.statusCode, r.statusMessage, out);
    r.pipe(res);
  });
  up.on('error', () => {
    if (!res.headersSent) res.writeHead(502).end();
    else res.destroy();
  });
  req.pipe(up);
});
ready(server);
