/**
 * Wiring: the primary process checks the configuration, forks WORKERS workers that share the port,
 * replaces any that dies, serves /metrics (summed over all workers) and /healthz, and on SIGTERM or
 * SIGINT lets every worker finish its in-flight requests before it exits 0. SIGHUP is ignored.
 */
// First: signals are held from before the rest of the bundle is evaluated (see held-signals.ts).
import { heldSignals } from './held-signals';
import cluster, { Worker } from 'node:cluster';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as http from 'node:http';
import { lookup } from 'node:dns/promises';
import type { AddressInfo, Socket } from 'node:net';
import { Config, ConfigError, ENV_NAMES, listenNames, loadConfig, loopbackTargetsByEndpoint, mistypedSettings, selfTargets, SETTINGS } from './config';
import { answerAcceptorRequest } from './acceptors';
import { parseDotEnv } from './dotenv';
import { Coordinator, providerFor } from './coordinator';
import type { ToPrimary } from './ipc';
import { errorFields, log, logProcessWarnings } from './log';
import { register, watchEventLoop, workerRestarts } from './metrics';
import { workerEnv, workerV8Flags } from './memory';
import { timerMs, within } from './types';

const EXIT_BAD_CONFIG = 2;
/** How long HOST or METRICS_HOST given as a name is looked up for at start (unresolvedListenNames). */
const LISTEN_NAME_LOOKUP_MS = 2_000;
/** The metrics endpoint: connections at once, and seconds a connection may be silent or a request take. */
const METRICS_MAX_CONNECTIONS = 64;
const METRICS_TIMEOUT_MS = 10_000;
/** How often the primary takes every worker's counts between scrapes (what a killed worker can lose). */
const METRICS_REFRESH_MS = 5_000;

/**
 * The settings, or exit 2 with one message naming every bad one: the .env file's bad lines first, then
 * the settings', then HOST or METRICS_HOST named but resolving to nothing (`nameProblems`, the primary's).
 */
function configOrExit(dotEnvProblems: readonly string[] = [], nameProblems: readonly string[] = []): Config {
  const problems = [...dotEnvProblems];
  let config: Config | undefined;
  try {
    config = loadConfig(process.env);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems.push(...e.problems);
  }
  problems.push(...nameProblems);
  // Judged by this machine's addresses: the running proxy's check, not the settings' (selfTargets). With
  // another setting bad, on the settings it reads alone, so that one start still names every problem.
  const judged = config ?? listenersAndPool(process.env);
  const selves = judged && cluster.isPrimary ? selfTargets(judged) : [];
  if (selves.length > 0) {
    problems.push(`STATIC_TARGETS must not name the proxy itself (${selves.map((t) => t.id).join(', ')}: its own PORT or METRICS_PORT at an address it listens on), which would send every request back into it`);
  }
  if (config === undefined || problems.length > 0) {
    // A likely typo is said with the problems: it may be why a setting is missing (HEALTH_CHECK_TIMOUT).
    for (const { name, meant } of mistypedSettings(process.env)) problems.push(`${name} is not a setting and is ignored; did you mean ${meant}?`);
    // Readable by a person and a log parser alike.
    process.stderr.write(`karma-proxy: ${new ConfigError(problems).message}\n`);
    process.exit(EXIT_BAD_CONFIG);
  }
  // Said once, by the primary (workers read the same environment).
  if (cluster.isPrimary) for (const { name, meant } of mistypedSettings(process.env)) log('warn', `${name} is not a setting and is ignored; did you mean ${meant}?`);
  return config;
}

/** The settings selfTargets reads. */
const SELF_TARGET_SETTINGS = [SETTINGS.nodeFilter, SETTINGS.staticTargets, SETTINGS.port, SETTINGS.host, SETTINGS.metricsPort, SETTINGS.metricsHost].map((s) => s.env);

/** Those settings alone, when each is good (a bad one is named already), else undefined. */
function listenersAndPool(env: NodeJS.ProcessEnv): Config | undefined {
  try {
    return loadConfig(Object.fromEntries(SELF_TARGET_SETTINGS.filter((k) => env[k] !== undefined).map((k) => [k, env[k]])));
  } catch {
    return undefined;
  }
}

/**
 * HOST and METRICS_HOST given as names that do not exist (NXDOMAIN: `HOST=abc`) are bad settings as
 * much as a malformed address is: named with the others (exit 2), not a failed listen's exit 1. A
 * lookup that fails otherwise (the resolver not up yet at boot) is left to the listen, which a restart
 * retries. Looked up whatever else is wrong, so that one start names every problem.
 */
async function unresolvedListenNames(env: NodeJS.ProcessEnv): Promise<string[]> {
  const problems: string[] = [];
  for (const { env: setting, name } of listenNames(env)) {
    // Bounded: a resolver that does not answer at boot must not hold the start (the listen asks again).
    await within(lookup(name), LISTEN_NAME_LOOKUP_MS).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOTFOUND') problems.push(`${setting} must be an IP address (0.0.0.0, ::, 127.0.0.1) or a host name this machine resolves (got '${name}', which resolves to nothing)`);
    });
  }
  return problems;
}

/**
 * Says once, at start, that no region is set where AWS is needed (discovery, or the Redis AUTH secret):
 * the SDK then looks in the shared AWS config and, on EC2, the instance metadata, and without either
 * every discovery fails with "Region is missing". A warning, not a refusal: a proxy whose Hosts never
 * reach discovery still serves, and nothing is asked of the network before the first discovery.
 */
function warnWithoutRegion(config: Config): void {
  if (config.nodeFilter === 'static' && config.redisAuthSecretArn === undefined) return;
  if (config.awsRegion !== undefined || (process.env.AWS_DEFAULT_REGION ?? '').trim() !== '') return;
  log('warn', 'AWS_REGION is not set: the region comes from the shared AWS config or, on EC2, the instance metadata; without either, discovery fails');
}

/**
 * LOOPBACK_TARGETS turned on by an AWS endpoint on loopback (a local stand-in), said at start: it lets
 * discovery's loopback addresses through, which on an instance would be its own services.
 */
function noteLoopbackTargets(env: NodeJS.ProcessEnv): void {
  if (!loopbackTargetsByEndpoint(env)) return;
  log('warn', 'LOOPBACK_TARGETS is on: an AWS endpoint is on loopback (a local stand-in), so discovery may give loopback addresses; set LOOPBACK_TARGETS=false to refuse them');
}

/**
 * MODE=tcp keeps the Stateless Load Balancer's HTTP checks (a GET of HEALTH_CHECK_PATH on the target
 * port) unless told otherwise: said at start, since a pool that does not speak HTTP never passes one.
 */
function noteTcpHealthChecks(config: Config): void {
  if (config.mode !== 'tcp' || config.healthCheckPath === null || config.healthCheckProtocol !== 'http') return;
  log('info', `MODE=tcp with HTTP health checks (GET ${config.healthCheckPath}): for targets that do not speak HTTP set HEALTH_CHECK_PROTOCOL=tcp, or every target fails its checks`);
}

/**
 * Periods under a second are allowed (tests use them) but said at start: the seeds' periods are in
 * seconds, and one written in milliseconds (NODE_CHECK_PERIOD=0.01 meant as 10 s?) would ask AWS for
 * every route that often, past ECS's account-wide read budget (about 20 calls a second).
 */
function warnShortPeriods(config: Config): void {
  if (config.nodeFilter !== 'static' && config.nodeCheckPeriodMs < 1000) {
    log('warn', `NODE_CHECK_PERIOD is ${config.nodeCheckPeriodMs / 1000} s (it is in seconds): every route asks AWS that often, and ECS's read APIs allow about 20 calls a second for the whole account`);
  }
  if (config.healthCheckPath !== null && config.healthCheckPeriodMs < 1000) {
    log('warn', `HEALTH_CHECK_PERIOD is ${config.healthCheckPeriodMs / 1000} s (it is in seconds): every target is checked that often`);
  }
}

/**
 * A pool (static, tag, asg) run with the defaults that differ from the Stateless Load Balancer's, said
 * at start: its users switch with their settings unchanged, and it forwarded raw TCP on port 8080.
 */
function notePoolDefaults(config: Config, env: NodeJS.ProcessEnv): void {
  if (config.nodeFilter === 'ecs') return;
  const unset = (name: string): boolean => (env[name] ?? '').trim() === '';
  const notes: string[] = [];
  if (unset('MODE')) notes.push('MODE is http (the Stateless Load Balancer forwarded raw TCP: set MODE=tcp for TLS passed through or protocols other than HTTP)');
  if (unset('PORT')) notes.push(`PORT is ${config.port} (the Stateless Load Balancer's was 8080)`);
  if (notes.length > 0) log('info', `defaults that differ from the Stateless Load Balancer's: ${notes.join('; ')}`);
}

/** A second SIGINT sooner than this after the first is the same Ctrl-C, delivered twice (see onSignal). */
const ONE_KEYPRESS_MS = 200;

async function runPrimary(config: Config): Promise<void> {
  warnWithoutRegion(config);
  notePoolDefaults(config, process.env);
  noteLoopbackTargets(process.env);
  warnShortPeriods(config);
  noteTcpHealthChecks(config);
  // Workers accept from the shared listening socket themselves rather than through the primary
  // (node's default on Linux is round-robin by the primary): no IPC hand-off per connection, and a
  // connection queued while a worker dies waits for another worker instead of being lost with it.
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  cluster.setupPrimary({ execArgv: [...workerV8Flags(config), ...process.execArgv] });
  const coordinator = new Coordinator(config, await providerFor(config));
  // Cached discoveries live as long as a route could (routes expire in the workers after the idle TTL).
  setInterval(() => coordinator.prune(config.routeIdleTtlMs), config.nodeCheckPeriodMs).unref();
  setInterval(() => coordinator.refreshMetrics(), METRICS_REFRESH_MS).unref();
  // Pings every third of the timeout: a worker is heard from at least twice in it unless it is stuck.
  const stuckMs = config.workerStuckTimeoutMs;
  if (stuckMs > 0) setInterval(() => coordinator.watchdog(stuckMs), Math.max(100, stuckMs / 3)).unref();
  const ready = new Set<number>();
  let listenPort = 0;
  let shuttingDown = false;
  let announced = false;
  const recentDeaths: number[] = [];
  /** Workers whose end is logged already: one that could not start, one killed for not stopping in time. */
  const explained = new Set<number>();

  /**
   * Workers whose process has not exited. node:cluster keeps an exited one in cluster.workers until its
   * IPC channel closes too, which can come after its 'exit': counted by that, the last exit of a stop
   * could find a worker left and never end the primary.
   */
  const liveWorkers = (): Worker[] => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());

  const fork = (): Worker => {
    const w = cluster.fork(workerEnv(process.env));
    // A message to a worker that is dying fails on its own turn (EPIPE): said as an 'error' of the
    // Worker, which, unheard, would end the primary and the whole proxy with it. Its 'exit' replaces it.
    w.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE' || err.code === 'ERR_IPC_CHANNEL_CLOSED' || err.code === 'ECONNRESET' || !w.isConnected()) return;
      log('warn', 'a message to a worker failed', { worker: w.id, workerPid: w.process.pid, ...errorFields(err) });
    });
    coordinator.add(w);
    w.on('message', (m: ToPrimary, handle?: unknown) => {
      if (answerAcceptorRequest(w, m, handle)) return;
      if (m?.t === 'ready') {
        ready.add(w.id);
        listenPort = m.port;
        if (!announced && ready.size === config.workers) {
          announced = true;
          log('info', 'ready', { port: listenPort, workers: config.workers, metricsPort: metricsPort(), mode: config.mode, nodeFilter: config.nodeFilter });
        }
      } else if (m?.t === 'fatal') {
        // A worker that cannot start (port taken, …) would fail the same way again: stop here. Said
        // once, though its fellows may fail alike before the stop reaches them.
        if (!shuttingDown) log('error', 'worker cannot start', { error: m.error });
        explained.add(w.id);
        shuttingDown = true;
        for (const other of Object.values(cluster.workers ?? {})) other?.process.kill('SIGTERM');
        process.exitCode = 1;
        // Its 'exit' (and its fellows') may have come before this message: no exit is left to end the primary.
        if (liveWorkers().length === 0) void stop();
      }
    });
    return w;
  };

  cluster.on('exit', (w, code, signal) => {
    const served = ready.delete(w.id);
    coordinator.remove(w);
    if (shuttingDown) {
      // A worker that crashed or was killed while draining cut the requests it held: said, and the
      // exit code says it too. One that was not serving yet held none (a stop during start-up, or its
      // fellows stopped because one could not listen): a SIGTERM may end it before its handler is set.
      if ((code !== 0 || signal) && !explained.has(w.id) && served) {
        log('error', 'a worker died while shutting down; its requests in flight were cut', { worker: w.id, code, signal });
        process.exitCode = 1;
      }
      if (liveWorkers().length === 0) void stop();
      return;
    }
    log('error', 'worker died; replacing it', { worker: w.id, code, signal });
    workerRestarts.inc();
    const now = Date.now();
    recentDeaths.push(now);
    while (recentDeaths.length && now - recentDeaths[0] > 10_000) recentDeaths.shift();
    // A crash loop is slowed down rather than spun: one replacement per second past 5 deaths in 10 s.
    const delay = recentDeaths.length > 5 ? 1000 : 0;
    // Not once shutdown has begun: a worker forked then would serve new requests past the drain.
    setTimeout(() => {
      if (!shuttingDown) fork();
    }, delay).unref();
  });

  /** Open metrics connections, oldest first, with their requests in flight. */
  const metricsSockets = new Map<Socket, { n: number }>();
  const metricsServer = http.createServer((req, res) => {
    const inFlight = metricsSockets.get(req.socket);
    if (inFlight) {
      inFlight.n++;
      res.on('close', () => inFlight.n--);
    }
    const path = (req.url ?? '').split('?')[0];
    // HEAD wherever GET is (node:http sends the head alone); another method on these paths is a 405.
    const read = req.method === 'GET' || req.method === 'HEAD';
    if (!read && (path === '/metrics' || path === '/healthz')) {
      res.writeHead(405, { 'Content-Type': 'text/plain', Allow: 'GET, HEAD' });
      res.end('method not allowed\n');
    } else if (path === '/metrics') {
      coordinator.metrics().then(
        (text) => {
          res.writeHead(200, { 'Content-Type': register.contentType });
          res.end(text);
        },
        (err: unknown) => {
          res.writeHead(500, { 'Content-Type': 'text/plain' });
          res.end(`metrics unavailable: ${String(err)}\n`);
        },
      );
    } else if (path === '/healthz') {
      const ok = ready.size > 0 && !shuttingDown;
      res.writeHead(ok ? 200 : 503, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ status: ok ? 'ok' : shuttingDown ? 'stopping' : 'starting', workers: ready.size, port: listenPort }) + '\n');
    } else {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found\n');
    }
  });
  // Scrapers and health checkers: a few connections, quick requests. Bounds so that silent or slow ones
  // cannot pile up in the primary (which also runs health checks and discovery) until it runs out of
  // file descriptors; node:http's defaults leave a silent connection open for good.
  // At the bound a new connection takes the place of the oldest one with no request in flight (silent,
  // idle or still sending its head): holding 64 silent connections must not starve /healthz, or the
  // liveness check would restart a proxy that is fine. Only when every one is busy is the new one dropped.
  metricsServer.on('connection', (socket: Socket) => {
    if (metricsSockets.size >= METRICS_MAX_CONNECTIONS) {
      const oldestIdle = [...metricsSockets].find(([, inFlight]) => inFlight.n === 0)?.[0];
      if (oldestIdle === undefined) {
        socket.destroy();
        return;
      }
      metricsSockets.delete(oldestIdle);
      oldestIdle.destroy();
    }
    metricsSockets.set(socket, { n: 0 });
    socket.on('close', () => metricsSockets.delete(socket));
  });
  metricsServer.headersTimeout = METRICS_TIMEOUT_MS;
  metricsServer.requestTimeout = METRICS_TIMEOUT_MS;
  metricsServer.setTimeout(METRICS_TIMEOUT_MS, (socket) => socket.destroy());
  metricsServer.on('error', (err) => {
    // /healthz is what the instance's boot check and any load balancer probe: a proxy that cannot
    // serve it would be taken for a dead one. Stop, as for a port that is taken (exit 1).
    log('error', 'metrics endpoint cannot listen', {
      port: config.metricsPort, host: config.metricsHost, ...errorFields(err),
      // The seeds had no such port: two of their processes on one host (one per pool) never met on it.
      ...((err as NodeJS.ErrnoException).code === 'EADDRINUSE' ? { hint: 'another process has this port (a second proxy on this host?): give each its own METRICS_PORT' } : {}),
    });
    process.exitCode = 1;
    onSignal('SIGTERM', 'metrics endpoint cannot listen');
  });
  metricsServer.listen(config.metricsPort, config.metricsHost);
  const metricsPort = (): number => (metricsServer.address() as AddressInfo | null)?.port ?? config.metricsPort;

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      metricsServer.close();
      metricsServer.closeAllConnections();
      await coordinator.close().catch(() => undefined);
    })().then(() => process.exit(process.exitCode ?? 0)));

  let forced = false;
  let firstSignalAt = 0;
  /** A stop: asked for by `signal`, or for a `reason` of the proxy's own, stopped as SIGTERM stops it. */
  const onSignal = (signal: NodeJS.Signals, reason?: string): void => {
    // One Ctrl-C may come twice: the terminal sends it to the whole foreground group, and `npm run proxy`
    // passes its own on to the proxy a moment later. A second SIGINT that close is the same keypress.
    const samePress = performance.now() - firstSignalAt < ONE_KEYPRESS_MS;
    if (shuttingDown && signal === 'SIGINT' && !forced && !samePress) {
      // Ctrl-C twice: the operator will not wait out SHUTDOWN_TIMEOUT (systemd stops with one SIGTERM).
      forced = true;
      log('warn', 'second SIGINT: stopping now, cutting what is in flight', { signal });
      process.exitCode = 130;
      for (const w of liveWorkers()) {
        explained.add(w.id);
        w.process.kill('SIGKILL');
      }
      return void stop();
    }
    if (shuttingDown) return void log('info', 'already shutting down', { signal });
    shuttingDown = true;
    firstSignalAt = performance.now();
    log('info', 'shutting down', { ...(reason === undefined ? { signal } : { reason }), timeoutSeconds: config.shutdownTimeoutMs / 1000 });
    const workers = liveWorkers();
    if (workers.length === 0) void stop();
    for (const w of workers) w?.process.kill('SIGTERM');
    // Workers enforce SHUTDOWN_TIMEOUT themselves; this only guards against one that hangs.
    setTimeout(() => {
      const hung = liveWorkers();
      if (hung.length > 0) {
        log('error', 'workers did not stop within SHUTDOWN_TIMEOUT; killed', { workers: hung.map((w) => w.process.pid) });
        process.exitCode = 1;
      }
      for (const w of hung) {
        explained.add(w.id);
        w.process.kill('SIGKILL');
      }
      void stop();
    }, timerMs(config.shutdownTimeoutMs + 5000)).unref();
  };
  await heldSignals.heard();
  process.on('SIGTERM', (signal: NodeJS.Signals) => onSignal(signal));
  process.on('SIGINT', (signal: NodeJS.Signals) => onSignal(signal));
  // Node's default for SIGHUP is to exit on the spot, cutting every connection. A proxy is a daemon:
  // a closed terminal, or a `kill -HUP` meant as nginx's "reload", must not take it down. Settings are
  // read once, at start, so there is nothing to reload: said, and the proxy serves on.
  process.on('SIGHUP', () => log('info', 'SIGHUP ignored: settings are read at start; restart the proxy to change them'));
  const held = heldSignals.release();
  // A stop asked for while discovery was loading: nothing is started, and the stop is as any other.
  if (held && !shuttingDown) onSignal(held);
  // Stopping already (that, or the metrics port could not be had): no worker to start.
  if (shuttingDown) return;

  for (let i = 0; i < config.workers; i++) fork();
}

/** What `./.env` may set besides the settings: the region and the credentials the seed's README put there. */
const DOTENV_AWS = ['AWS_REGION', 'AWS_DEFAULT_REGION', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_DEFAULT_PROFILE'];

/**
 * AWS_DEFAULT_PROFILE, as the AWS CLI and the seeds' Go SDK read it when AWS_PROFILE is unset, and the JS
 * SDK does not: its credentials and region would be passed over for the default profile's without a
 * word. Set as AWS_PROFILE for this process and its workers, which read the environment they inherit;
 * not beside keys in the environment, which those read first (the JS SDK, given AWS_PROFILE, would take
 * the profile's instead, or fail on a profile that does not exist).
 */
function bridgeDefaultProfile(env: NodeJS.ProcessEnv): void {
  const set = (name: string): boolean => (env[name] ?? '').trim() !== '';
  if (set('AWS_PROFILE') || !set('AWS_DEFAULT_PROFILE') || (set('AWS_ACCESS_KEY_ID') && set('AWS_SECRET_ACCESS_KEY'))) return;
  env.AWS_PROFILE = env.AWS_DEFAULT_PROFILE!.trim();
}

/**
 * Settings from `./.env`, as the Karma Proxy seed read them (godotenv, dotenv.ts) and its README set
 * them up: read by the primary only (workers get its environment), never over a variable already set,
 * and only the proxy's settings and the AWS region and credentials: a file in the working directory
 * must not reach NODE_OPTIONS (code in every worker) or the SDK's endpoints and config files.
 */
function readDotEnv(): string[] {
  if (!cluster.isPrimary || !fs.existsSync('.env')) return [];
  const file = path.resolve('.env');
  try {
    const { values, badLines } = parseDotEnv(fs.readFileSync(file, 'utf8'), process.env);
    const allowed = new Set([...ENV_NAMES, ...DOTENV_AWS]);
    const ignored: string[] = [];
    const taken = new Set<string>();
    for (const [name, value] of values) {
      if (!allowed.has(name)) ignored.push(name);
      else if (process.env[name] === undefined) {
        process.env[name] = value;
        taken.add(name);
      }
    }
    // A line that is no setting would be merged by Node 20's parser into the next one (which is then
    // lost): it stops the start, named by its number only (its text may be a password), together with
    // whatever is wrong in the file's other lines, which are read for that.
    if (badLines.length) return badLines.map((n) => `${file} line ${n} is not KEY=value (its text is not shown)`);
    log('info', 'settings read from .env (variables already set win)', { file, ...(ignored.length ? { ignored } : {}) });
    // The Karma Proxy seed listened on 6969 whatever PORT said, and its config library's .env templates
    // carry a PORT for the app: one taken from there moves the listener, said so.
    if (taken.has('PORT') && values.get('PORT')!.trim() !== '' && Number(values.get('PORT')) !== 6969) {
      log('warn', `PORT=${values.get('PORT')!.trim()} from .env: the proxy listens there (the Karma Proxy seed ignored PORT and always listened on 6969)`, { file });
    }
    // A typo there is as likely as in the environment, and said the same way.
    for (const { name, meant } of mistypedSettings(Object.fromEntries(ignored.map((n) => [n, ''])))) {
      log('warn', `${name} in .env is not a setting and is ignored; did you mean ${meant}?`);
    }
  } catch (err) {
    log('warn', '.env could not be read; settings come from the environment only', { file, ...errorFields(err) });
  }
  return [];
}

function main(): void {
  logProcessWarnings();
  watchEventLoop();
  const dotEnvProblems = readDotEnv();
  bridgeDefaultProfile(process.env);
  if (cluster.isPrimary) {
    unresolvedListenNames(process.env).then((named) => runPrimary(configOrExit(dotEnvProblems, named))).catch((err: unknown) => {
      log('error', 'cannot start', errorFields(err));
      process.exit(1);
    });
    return;
  }
  // Only workers load the proxy itself; only the primary unpacks discovery (the AWS SDK, see unpack.ts).
  const config = configOrExit(dotEnvProblems);
  void import('./worker').then((w) => w.startWorker(config));
}

main();
