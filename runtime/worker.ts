/**
 * One worker process: discovery and health loops beside the request path, the server on the shared
 * port, and a graceful stop on SIGTERM/SIGINT.
 */
import cluster from 'node:cluster';
import type { AddressInfo } from 'node:net';
import { addAcceptors } from './acceptors';
import { TargetRegistry } from './balancer';
import type { Config } from './config';
import { Forwarder } from './forward';
import { errorFields, log } from './log';
import { healthCheckerFor, providerFor } from './coordinator';
import { joinPrimary, PrimaryBreakers, PrimaryProvider, sendToPrimary } from './ipc';
import { RouteTable } from './routes';
import { createProxyServer } from './server';
import { createTcpServer } from './tcp';
import { POOL_ROUTE, Provider, Target, within } from './types';

/** The accept queue nginx and HAProxy use (node's default is 511), for connection bursts. */
const ACCEPT_BACKLOG = 4096;
/**
 * The longest a pool-mode worker waits for its pool's first discovery before it listens anyway: AWS
 * slow or down at boot is then a 503 until it answers, not a port that refuses connections (and a
 * /healthz that says "starting") for the whole discovery deadline. The server's wait for a new route's
 * first discovery in ecs mode, alike.
 */
const POOL_START_WAIT_MS = 10_000;

export interface Running {
  readonly port: number;
  stop(): Promise<void>;
}

async function firstVerdicts(registry: TargetRegistry, targets: readonly Target[], boundMs: number): Promise<void> {
  const deadline = Date.now() + boundMs;
  while (Date.now() < deadline && targets.some((t) => registry.get(t.id)?.healthy === undefined)) {
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Builds and starts everything one worker runs. Exported for in-process tests. */
export async function start(config: Config, deps: { provider?: Provider; primary?: boolean } = {}): Promise<Running> {
  // Under node:cluster one breaker per target for all workers, kept by the primary (breaker.ts).
  const breakers = deps.primary ? new PrimaryBreakers(cluster.worker?.id ?? 0) : undefined;
  const registry = new TargetRegistry({
    poolSize: config.poolSize,
    breakerThreshold: config.circuitBreakerThreshold,
    breakerTimeoutMs: config.circuitBreakerTimeoutMs,
    // Every socket of a target busy for UPSTREAM_TIMEOUT is a 503, as a silent target is a 504.
    maxWaitMs: config.upstreamTimeoutMs,
    breakers,
  });
  if (breakers) {
    // The primary gone, each breaker counts alone, and whatever waited for the primary goes on.
    process.once('disconnect', () => {
      registry.detachBreakers();
      breakers.flush();
    });
  }
  let provider: Provider;
  if (deps.primary) {
    // Under node:cluster the primary discovers and health-checks for every worker (see ipc.ts).
    const viaPrimary = new PrimaryProvider(config.nodeFilter);
    joinPrimary(viaPrimary, registry, breakers);
    provider = viaPrimary;
  } else {
    provider = deps.provider ?? (await providerFor(config));
  }
  // Under the primary, health checks run there; in one process (tests), here.
  const health = deps.primary ? undefined : healthCheckerFor(config, registry);
  if (health) registry.onChange(() => health.sync(registry.targets()));

  const routes = new RouteTable(provider, registry, {
    negativeCacheTtlMs: config.negativeCacheTtlMs,
    maxRoutes: config.maxRoutes,
    maxTargets: config.maxTargets,
    newRoutesPerSecond: config.newRouteRate,
    routeIdleTtlMs: config.routeIdleTtlMs,
    refreshMs: config.nodeCheckPeriodMs,
  });
  if (config.nodeFilter !== 'ecs') {
    const pool = await within(routes.pin(POOL_ROUTE), POOL_START_WAIT_MS);
    if (pool === undefined) {
      log('warn', `the pool is not discovered yet: ${config.mode === 'tcp' ? 'resetting connections' : 'serving 503'} until it is`, { waitedSeconds: POOL_START_WAIT_MS / 1000 });
    }
    // Serve once every target of the pool has its first verdict (bounded by one check's timeout), so
    // the first requests are not all sent to whichever target happened to be judged first.
    else if (config.healthCheckPath !== null) await firstVerdicts(registry, pool.targets, config.healthCheckTimeoutMs + 1000);
  }
  routes.start();

  let port = 0;
  const forwarder = new Forwarder(registry, {
    connectTimeoutMs: config.poolTimeoutMs,
    upstreamTimeoutMs: config.upstreamTimeoutMs,
    retries: config.retries,
    listenPort: () => port,
    trustForwardedProto: config.trustForwardedProto,
    httpChecks: config.healthCheckPath !== null && config.healthCheckProtocol === 'http',
    onRefused: (pool) => routes.suspect(pool.id),
  });
  const front =
    config.mode === 'tcp'
      ? createTcpServer(config, routes, registry)
      : createProxyServer(config, routes, forwarder);

  await new Promise<void>((resolve, reject) => {
    front.server.once('error', reject);
    front.server.listen({ port: config.port, host: config.host, backlog: ACCEPT_BACKLOG }, () => {
      front.server.off('error', reject);
      resolve();
    });
  });
  port = (front.server.address() as AddressInfo).port;
  // More than one accept per event-loop turn, so a burst of connections is not queued for seconds.
  const acceptors = await addAcceptors(front.server, ACCEPT_BACKLOG);

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      routes.stop();
      acceptors.close();
      await front.shutdown(config.shutdownTimeoutMs);
      health?.stop();
      routes.close();
      forwarder.close();
      registry.close();
      await provider.close?.();
    })());
  return { port, stop };
}

/**
 * How often a worker looks for its primary gone without a word. Node emits 'disconnect' when the IPC
 * channel closes, except while a handle the worker sent waits for the primary's acknowledgement (the
 * accept handles' exchange, acceptors.ts; a listen): the channel is closed and `process.connected`
 * false, but the event never comes, and neither node:cluster's exit nor our drain would run. Such a
 * worker (one starting, or replacing a dead one, as the primary was killed) lived on with the port, and
 * the next proxy could not bind it.
 */
const PRIMARY_WATCH_MS = 1000;

/** The worker's entry point under node:cluster. */
export async function startWorker(config: Config): Promise<void> {
  let running: Running | undefined;
  let stopping = false;
  let primaryGone = false;
  const onSignal = (): void => {
    stopping = true;
    // Nothing started yet (the primary lost during start-up): nothing to drain.
    if (!running) process.exit(0);
    void running.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log('error', 'shutdown failed', errorFields(err));
        process.exit(1);
      },
    );
  };
  // The primary going away (killed hard, or by the OOM killer: in ECS mode it is the largest process) leaves
  // nobody to replace or stop us: stop too, draining what is in flight like on SIGTERM.
  const onPrimaryGone = (): void => {
    if (primaryGone) return;
    primaryGone = true;
    clearInterval(watch);
    // Said once, by each worker: otherwise its exit would be the only trace of the primary's death.
    if (!stopping) log('warn', 'the primary is gone: draining and exiting');
    onSignal();
  };
  const watch = setInterval(() => {
    if (!process.connected) onPrimaryGone();
  }, PRIMARY_WATCH_MS);
  watch.unref();
  // A message to a primary already gone (node:cluster's own, as a listen asks for its handle) fails with
  // EPIPE on the process: the primary's loss, not a crash with a stack trace.
  process.on('error', (err: unknown) => {
    if (!process.connected) onPrimaryGone();
    else log('warn', 'message to the primary failed', errorFields(err));
  });
  try {
    running = await start(config, { primary: true });
  } catch (err) {
    log('error', 'cannot start', errorFields(err));
    sendToPrimary({ t: 'fatal', error: (err as Error).message });
    process.exit(1);
  }
  sendToPrimary({ t: 'ready', port: running.port });
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // A hang-up reaches the whole process group (a closed terminal); the primary says it is ignored.
  process.on('SIGHUP', () => undefined);
  // node:cluster would exit the worker on the spot at 'disconnect' unless told it was expected; its
  // 'disconnect' event comes just before it decides. (Before start() is done it does exit: nothing to drain.)
  const self = cluster.worker as { exitedAfterDisconnect?: boolean; once(e: 'disconnect', f: () => void): void } | undefined;
  self?.once('disconnect', () => {
    self.exitedAfterDisconnect = true;
  });
  process.on('disconnect', onPrimaryGone);
  // Gone while the lines above were being set up.
  if (!process.connected) onPrimaryGone();
}
