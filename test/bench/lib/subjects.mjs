// What the benchmark starts: the backend, and the subjects (a proxy, or "direct" for no proxy at all).
// Every subject answers { port, pids(), workers(), stop() } once it serves GET /small with a 200.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { freePort, onPath, sleep, spawnPinned, stopChild, tree } from './proc.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BENCH_DIR = path.join(here, '..');
export const ROOT = path.join(BENCH_DIR, '..', '..');

/** Whether an alternative's package resolves where alternatives/common.mjs `need` looks: the project, then test/bench/.deps. */
function installed(name) {
  return [path.join(ROOT, 'package.json'), path.join(BENCH_DIR, '.deps', 'package.json')].some((from) => {
    try {
      createRequire(from).resolve(name);
      return true;
    } catch {
      return false;
    }
  });
}
export const SMALL_BODY = 'hello '.repeat(17).trimEnd() + '\n'; // 102 bytes

function get(port, p) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve(0));
    req.setTimeout(2000, () => req.destroy());
  });
}

async function until(port, child, what, ms = 15000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) throw new Error(`${what} exited with code ${child.exitCode}`);
    if ((await get(port, '/small')) === 200) return;
    await sleep(100);
  }
  throw new Error(`${what} did not answer GET /small with 200 within ${ms} ms`);
}

/**
 * Waits for a just-spawned child to be ready (`ready()`), and stops it (waiting for its exit) when it
 * never is: a subject or backend that fails to start must not outlive the run, nor keep it from ending.
 */
async function readyOrStopped(child, ready) {
  try {
    return await ready();
  } catch (e) {
    await stopChild(child, 'SIGTERM', 5000); // nginx, HAProxy and Karma's primary all stop at once on SIGTERM
    throw e;
  }
}

function collect(child) {
  const out = { text: '' };
  child.stdout?.on('data', (d) => (out.text += d));
  child.stderr?.on('data', (d) => (out.text += d));
  return out;
}

function firstJsonLine(child, what, ms = 15000) {
  return new Promise((resolve, reject) => {
    let buf = '';
    let err = '';
    const t = setTimeout(() => reject(new Error(`${what}: no readiness line within ${ms} ms. ${err}`)), ms);
    child.stderr.on('data', (d) => (err += d));
    child.stdout.on('data', (d) => {
      buf += d;
      for (const line of buf.split('\n').slice(0, -1)) {
        try {
          const j = JSON.parse(line);
          if (j.port || j.msg === 'ready') {
            clearTimeout(t);
            return resolve(j);
          }
        } catch {
          // not JSON
        }
      }
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      const e = new Error(`${what} exited with code ${code}: ${err.trim().split('\n').slice(-3).join(' | ')}`);
      e.exitCode = code;
      reject(e);
    });
  });
}

// ---------------------------------------------------------------- backend

/**
 * The start of every nginx configuration here: one worker, files under `dir` named after `name`, and
 * temp paths prefixed by `t` (each nginx of a run has its own), up to `http {` and its first settings.
 */
function nginxPrologue(dir, name, t) {
  return `worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid ${dir}/${name}.pid;
error_log ${dir}/${name}-error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path ${dir}/${t}-body; proxy_temp_path ${dir}/${t}-proxy; fastcgi_temp_path ${dir}/${t}-fcgi;
  uwsgi_temp_path ${dir}/${t}-uwsgi; scgi_temp_path ${dir}/${t}-scgi;
  keepalive_requests 1000000;`;
}

function nginxBackendConf(dir, port) {
  return `${nginxPrologue(dir, 'backend', 'b')}
  keepalive_timeout 65s;
  client_max_body_size 0;
  sendfile on;
  server {
    listen 127.0.0.1:${port} backlog=4096;
    root ${dir}/www;
    location = /small { default_type text/plain; return 200 "${SMALL_BODY.replace('\n', '\\n')}"; }
    location = /post { default_type text/plain; return 200 "ok\\n"; }
    location / { default_type application/octet-stream; }
  }
}
`;
}

/** nginx (worker_processes 1) when installed, else test/bench/backend.mjs; pinned to `core`. */
export async function startBackend(dir, core) {
  const port = await freePort();
  const nginx = onPath('nginx');
  if (nginx && process.env.BENCH_BACKEND !== 'node') {
    fs.mkdirSync(path.join(dir, 'www'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'www', '1mb'), Buffer.alloc(1 << 20, 'x'));
    const big = fs.openSync(path.join(dir, 'www', '1gb'), 'w');
    fs.ftruncateSync(big, 1 << 30); // sparse: no GiB written to disk
    fs.closeSync(big);
    fs.writeFileSync(path.join(dir, 'backend.conf'), nginxBackendConf(dir, port));
    const child = spawnPinned(core, nginx, ['-p', dir, '-c', path.join(dir, 'backend.conf')]);
    const log = collect(child);
    await readyOrStopped(child, () => until(port, child, `nginx backend (${log.text})`));
    return { kind: `nginx ${version(nginx, ['-v'])} (worker_processes 1)`, port, pids: () => tree(child.pid), stop: () => stopChild(child, 'SIGQUIT') };
  }
  const child = spawnPinned(core, process.execPath, [path.join(BENCH_DIR, 'backend.mjs')], { env: { ...process.env, PORT: String(port) } });
  await readyOrStopped(child, () => firstJsonLine(child, 'node backend'));
  return { kind: `node:http ${process.version} (test/bench/backend.mjs)`, port, pids: () => tree(child.pid), stop: () => stopChild(child) };
}

export function version(bin, args) {
  try {
    // nginx -v prints on stderr, wrk -v exits 1: read both streams, whatever the exit code.
    const out = execFileSync('sh', ['-c', '"$0" "$@" 2>&1; true', bin, ...args], { encoding: 'utf8' });
    return out.trim().split('\n')[0];
  } catch (e) {
    return String(e.stderr ?? '').trim().split('\n')[0];
  }
}

// ---------------------------------------------------------------- subjects

function nginxProxyConf(dir, port, backendPort) {
  return `${nginxPrologue(dir, 'peer-nginx', 'p')}
  keepalive_timeout 60s;
  client_max_body_size 0;
  client_body_buffer_size 128k;
  upstream backend { server 127.0.0.1:${backendPort}; keepalive 100; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_max_temp_file_size 0;
      ${process.env.BENCH_NGINX_EXTRA ?? ''}
    }
  }
}
`;
}

function haproxyConf(port, backendPort) {
  return `global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:${port} backlog 4096
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Port %[dst_port]
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend be
backend be
  server s1 127.0.0.1:${backendPort}
`;
}

/**
 * Every subject the harness knows, in table order. `available()` says why one is skipped.
 * kind: 'baseline' | 'karma' | 'peer' | 'alternative' | 'prototype'.
 */
export function subjectCatalog(opts) {
  const { dir, core, backendPort, bundle, karmaEnv, karmaNodeArgs = [], prototypes = [] } = opts;
  const alt = (name, file, desc, pkg) => ({
    id: `alt:${name}`,
    kind: 'alternative',
    label: `alt: ${desc}`,
    available: () => (!pkg || installed(pkg) ? undefined : `${pkg} is not installed (npm install --prefix test/bench/.deps ${pkg})`),
    async start(extraEnv = {}, nodeArgs = []) {
      const child = spawnPinned(core, process.execPath, [...nodeArgs, path.join(BENCH_DIR, 'alternatives', file)], {
        env: { ...process.env, TARGET: `127.0.0.1:${backendPort}`, PORT: '0' },
      });
      const { port } = await readyOrStopped(child, () => firstJsonLine(child, name));
      return { port, pids: () => tree(child.pid), workers: () => [child.pid], stop: () => stopChild(child) };
    },
  });
  const karma = (id, label, file, kind) => ({
    id,
    kind,
    label,
    available: () => (fs.existsSync(file) ? undefined : `${file} is missing (npm run build)`),
    async start(extraEnv = {}, nodeArgs = []) {
      const port = await freePort();
      const metricsPort = await freePort();
      const env = {
        PATH: process.env.PATH ?? '',
        NODE_FILTER: 'static',
        STATIC_TARGETS: `127.0.0.1:${backendPort}`,
        PORT: String(port),
        METRICS_PORT: String(metricsPort),
        HOST: '127.0.0.1',
        METRICS_HOST: '127.0.0.1',
        WORKERS: '1',
        HEALTH_CHECK_PATH: 'off',
        ...karmaEnv,
        ...extraEnv,
      };
      // Workers inherit the primary's node flags (cluster's execArgv), so --cpu-prof reaches them.
      const child = spawnPinned(core, process.execPath, [...karmaNodeArgs, ...nodeArgs, file], { env });
      await readyOrStopped(child, async () => {
        await firstJsonLine(child, id, 20000);
        await until(port, child, id);
      });
      const workers = () => tree(child.pid).slice(1);
      return { port, pids: () => tree(child.pid), workers, stop: () => stopChild(child, 'SIGTERM', 8000) };
    },
  });
  const nginx = onPath('nginx');
  const haproxy = onPath('haproxy');
  return [
    {
      id: 'direct',
      kind: 'baseline',
      label: 'direct (no proxy)',
      available: () => undefined,
      async start() {
        return { port: backendPort, pids: () => [], workers: () => [], stop: async () => undefined };
      },
    },
    karma('karma', 'Karma Proxy (dist bundle, 1 worker)', bundle, 'karma'),
    ...prototypes.map((p) => karma(`proto:${p.name}`, `prototype: Karma + ${p.name}`, p.bundle, 'prototype')),
    {
      id: 'nginx',
      kind: 'peer',
      label: 'nginx proxy_pass',
      available: () => (nginx ? undefined : 'nginx is not installed (not on PATH nor in /usr/sbin, /sbin, /usr/local/sbin; apt-get install nginx)'),
      async start() {
        const port = await freePort();
        const conf = path.join(dir, `peer-nginx-${port}.conf`);
        fs.writeFileSync(conf, nginxProxyConf(dir, port, backendPort));
        const child = spawnPinned(core, nginx, ['-p', dir, '-c', conf]);
        const log = collect(child);
        await readyOrStopped(child, () => until(port, child, `nginx peer ${log.text}`));
        return { port, pids: () => tree(child.pid), workers: () => tree(child.pid).slice(1), stop: () => stopChild(child, 'SIGQUIT') };
      },
    },
    {
      id: 'haproxy',
      kind: 'peer',
      label: 'HAProxy',
      available: () => (haproxy ? undefined : 'haproxy is not installed (not on PATH nor in /usr/sbin, /sbin, /usr/local/sbin; apt-get install haproxy)'),
      async start() {
        const port = await freePort();
        const conf = path.join(dir, `peer-haproxy-${port}.cfg`);
        fs.writeFileSync(conf, haproxyConf(port, backendPort));
        const child = spawnPinned(core, haproxy, ['-db', '-f', conf]);
        const log = collect(child);
        await readyOrStopped(child, () => until(port, child, `haproxy ${log.text}`));
        return { port, pids: () => tree(child.pid), workers: () => [child.pid], stop: () => stopChild(child, 'SIGUSR1') };
      },
    },
    alt('node-http', 'node-http.mjs', 'bare node:http forwarder'),
    alt('undici', 'undici.mjs', 'node:http + undici Pool', 'undici'),
    alt('http-proxy', 'http-proxy.mjs', 'http-proxy 1.18', 'http-proxy'),
    alt('http-proxy-3', 'http-proxy-3.mjs', 'http-proxy-3', 'http-proxy-3'),
    alt('raw-upstream', 'raw-upstream.mjs', 'node:http server + own llhttp upstream pool'),
    alt('raw-both', 'raw-both.mjs', 'sketch: llhttp on both sides, no node:http'),
  ];
}
