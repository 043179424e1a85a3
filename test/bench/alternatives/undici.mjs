// node:http server in front, undici Pool behind (what fastify-reply-from uses): the upstream side
// parsed by undici's llhttp-in-wasm client instead of node:http's ClientRequest.
import * as http from 'node:http';
import { clientIp, need, poolSize, ready, target } from './common.mjs';

const { Pool } = need('undici');
const pool = new Pool(`http://${target.host}:${target.port}`, { connections: poolSize, pipelining: 1, keepAliveTimeout: 4000 });
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);

const server = http.createServer((req, res) => {
  const raw = req.rawHeaders;
  const headers = [];
  for (let i = 0; i < raw.length; i += 2) if (!HOP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1]);
  headers.push('host', req.headers.host ?? '', 'x-forwarded-for', clientIp(req));
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool.stream(
    { path: req.url, method: req.method, headers, body: hasBody ? req : null },
    ({ statusCode, headers: h }) => {
      // undici hands headers as an object; hop-by-hop ones are dropped, the rest copied.
      for (const k of Object.keys(h)) if (!HOP.has(k)) res.setHeader(k, h[k]);
      res.statusCode = statusCode;
      return res;
    },
    (err) => {
      if (!err) return;
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    },
  );
});
ready(server);
