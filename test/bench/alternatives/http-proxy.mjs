// http-proxy 1.18 (the project's dependency for WebSockets) forwarding plain HTTP, keep-alive agent.
import * as http from 'node:http';
import { need, poolSize, ready, target } from './common.mjs';

const httpProxy = need('http-proxy');
const agent = new http.Agent({ keepAlive: true, maxSockets: poolSize, maxFreeSockets: poolSize, scheduling: 'lifo' });
const proxy = httpProxy.createProxyServer({ target: `http://${target.host}:${target.port}`, agent, xfwd: true });
proxy.on('error', (_e, _req, res) => {
  if (res.writeHead && !res.headersSent) res.writeHead(502).end();
  else res.destroy?.();
});
ready(http.createServer((req, res) => proxy.web(req, res)));
