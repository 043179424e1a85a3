// http-proxy-3, the maintained TypeScript rewrite of http-proxy with the same API.
import * as http from 'node:http';
import { need, poolSize, ready, target } from './common.mjs';

const mod = need('http-proxy-3');
const createProxyServer = mod.createProxyServer ?? mod.default?.createProxyServer;
const agent = new http.Agent({ keepAlive: true, maxSockets: poolSize, maxFreeSockets: poolSize, scheduling: 'lifo' });
const proxy = createProxyServer({ target: `http://${target.host}:${target.port}`, agent, xfwd: true });
proxy.on('error', (_e, _req, res) => {
  if (res.writeHead && !res.headersSent) res.writeHead(502).end();
  else res.destroy?.();
});
ready(http.createServer((req, res) => proxy.web(req, res)));
