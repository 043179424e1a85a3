/**
 * Every Prometheus metric of the proxy, in one place, on prom-client's global registry in every
 * process; the primary serves the sum over itself and its workers (coordinator.ts).
 *
 * The first five names and types are the stateless load balancer's, so dashboards written for them
 * find them (it registered them but never served them); per-target ones carry a `target` label, ip:port.
 */
import { readdir } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { Counter, Gauge, Histogram, register } from 'prom-client';
import { logLinesDropped } from './log';

export { register };

// ---- the stateless load balancer's five ----
export const activeConnections = new Gauge({
  name: 'load_balancer_active_connections',
  help: 'Client connections currently open.',
});
export const acceptedConnections = new Counter({
  name: 'karma_client_connections_total',
  help: "Client connections accepted (an ALB's NewConnectionCount); those refused at MAX_CONNECTIONS are karma_limit_hits_total{limit=\"connections\"}.",
});
export const healthCheckLatency = new Histogram({
  name: 'load_balancer_health_check_latency_seconds',
  help: 'Latency of active health checks.',
  labelNames: ['target'] as const,
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
});
export const failedConnections = new Counter({
  name: 'load_balancer_failed_connections_total',
  help: 'Attempts to reach a target that failed (refused, reset, timed out, or answered what cannot be passed on), answers over the head limit and a keep-alive race that cut a request included; a race tried again on a fresh connection is not.',
  labelNames: ['target'] as const,
});
export const successfulConnections = new Counter({
  name: 'load_balancer_successful_connections_total',
  help: 'Attempts to reach a target that got a response (or, in tcp mode, a connection).',
  labelNames: ['target'] as const,
  collect() {
    fold(this, successTallies.values());
  },
});
export const nodeHealthStatus = new Gauge({
  name: 'load_balancer_node_health_status',
  help: 'Health of each target: 1 healthy, 0 unhealthy. The series goes when the target goes.',
  labelNames: ['target'] as const,
  // Every worker reports the same health; the primary must not add them up.
  aggregator: 'max',
});

// ---- requests ----
export const requestsTotal = new Counter({
  name: 'karma_requests_total',
  help: 'Requests answered, by route and status class (2xx, 3xx, 4xx, 5xx); route "none" for requests no known route took (a bad Host, no target, discovery not done). The series of a route goes when the route is forgotten.',
  labelNames: ['route', 'code'] as const,
  collect() {
    for (const row of requestTallies.values()) fold(this, row.byClass);
  },
});
export const requestSeconds = new Counter({
  name: 'karma_request_seconds_total',
  help: "Time spent on requests (from the request to the end of its response), summed by route: over karma_requests_total's rate, each route's mean time (an ALB's TargetResponseTime, as CloudWatch averages it). The series of a route goes when the route is forgotten.",
  labelNames: ['route'] as const,
  collect() {
    fold(this, [...requestTallies.values()].map((row) => row.seconds));
  },
});
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
export const requestDuration = new Histogram({
  name: 'karma_request_duration_seconds',
  help: 'Time from request to the end of the response.',
  labelNames: ['code'] as const,
  buckets: DURATION_BUCKETS,
  collect() {
    foldDurations(this);
  },
});
export const upstreamErrors = new Counter({
  name: 'karma_upstream_errors_total',
  help: 'Forwarding failures by kind: refused, reset, timeout, connect_timeout, dns, bad_response, not_http, head_too_large, pool_full, other.',
  labelNames: ['kind'] as const,
});
export const retriesTotal = new Counter({
  name: 'karma_retries_total',
  help: 'Retries on another target (a request retried twice counts 2).',
});
export const failOpenTotal = new Counter({
  name: 'karma_fail_open_total',
  help: 'Requests sent to an unhealthy target because every target of the route was unhealthy.',
  labelNames: ['route'] as const,
});
export const breakerState = new Gauge({
  name: 'karma_circuit_breaker_state',
  help: 'Circuit breaker per target: 0 closed, 1 half-open, 2 open.',
  labelNames: ['target'] as const,
  aggregator: 'max',
});
export const limitHits = new Counter({
  name: 'karma_limit_hits_total',
  help: 'Times a protective limit was reached: connections, routes, targets, new_routes, target_sockets, headers.',
  labelNames: ['limit'] as const,
});
export const rejectedRequests = new Counter({
  name: 'karma_rejected_requests_total',
  help: 'Requests answered by the proxy itself with 4xx, by reason.',
  labelNames: ['reason'] as const,
});
export const proxyErrors = new Counter({
  name: 'karma_proxy_errors_total',
  help: "Requests the proxy itself answered with 5xx, not passing on a target's answer (an ALB's HTTPCode_ELB_5XX), by status: 502 the target failed, 503 no target (or the proxy stopping), 504 the target did not answer in time. karma_requests_total's 5xx less these are the targets' own.",
  labelNames: ['code'] as const,
});

// ---- routes and discovery ----
export const routesKnown = new Gauge({
  name: 'karma_routes',
  help: 'Routes held in memory (known routes and negative-cached ones).',
  labelNames: ['state'] as const,
  aggregator: 'max',
});
export const targetsPerRoute = new Gauge({
  name: 'karma_route_targets',
  help: 'Targets of each route.',
  labelNames: ['route'] as const,
  aggregator: 'max',
});
/** Each route's targets that health checks judge unhealthy, as balancer.ts counts them when asked. */
let unhealthyByRoute: () => Iterable<readonly [string, number]> = () => [];
export function countUnhealthyWith(source: () => Iterable<readonly [string, number]>): void {
  unhealthyByRoute = source;
}
export const unhealthyPerRoute = new Gauge({
  name: 'karma_route_unhealthy_targets',
  help: "Targets of each route that health checks judge unhealthy (an ALB's UnHealthyHostCount per target group); karma_route_targets less these are the route's healthy or not yet checked ones.",
  labelNames: ['route'] as const,
  aggregator: 'max',
  collect() {
    // Counted when read: health turns in the primary and reaches each worker's targets, which many
    // routes may share. Routes gone are gone from the reading.
    this.reset();
    for (const [route, n] of unhealthyByRoute()) this.set({ route }, n);
  },
});
export const discoveryDuration = new Histogram({
  name: 'karma_discovery_duration_seconds',
  help: "Time a worker waited for a route's or pool's targets (from the primary's memory, the shared Redis cache or AWS: see karma_discovery_memory_cache_total and karma_aws_calls_total); outcome error when the answer was a failure, even if the last targets stay in use.",
  labelNames: ['provider', 'outcome'] as const,
  buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
});
export const discoveryErrors = new Counter({
  name: 'karma_discovery_errors_total',
  help: 'Discoveries that failed, each once however many workers asked; the last known targets kept serving.',
  labelNames: ['provider'] as const,
});
export const awsCalls = new Counter({
  name: 'karma_aws_calls_total',
  help: 'AWS API calls by API and outcome (ok, throttled, not_found: a cluster or service ECS does not know, error).',
  labelNames: ['api', 'outcome'] as const,
});
export const cacheLookups = new Counter({
  name: 'karma_discovery_cache_total',
  help: 'Shared (Redis) discovery cache lookups: hit, miss, error.',
  labelNames: ['result'] as const,
});
export const memoryCacheLookups = new Counter({
  name: 'karma_discovery_memory_cache_total',
  help: "The primary's in-memory discovery cache, asked by the workers: hit (answered from it, a route found absent or failing included), miss (a discovery started or joined).",
  labelNames: ['result'] as const,
});
export const tasksSkipped = new Counter({
  name: 'karma_tasks_skipped_total',
  help: 'ECS tasks or EC2 instances left out of a pool, by reason.',
  labelNames: ['reason'] as const,
});

// ---- the process ----
/**
 * The bytes of a server's client connections, heads and bodies, taken when the metrics are read: what
 * each open socket moved since the last reading, and what closed ones moved since theirs (nothing on
 * the request path).
 */
export class ClientBytes {
  private readonly seen = new WeakMap<Socket, { read: number; written: number }>();
  private closedIn = 0;
  private closedOut = 0;

  constructor(private readonly open: Iterable<Socket>) {
    byteSources.add(this);
  }

  /** A client socket closed: what it moved since the last reading is kept for the next. */
  closed(socket: Socket): void {
    const seen = this.seen.get(socket);
    // Never less than read before: a destroyed socket's bytesWritten drops what was still queued, which
    // an earlier reading counted (it went nowhere, but a counter cannot give it back).
    this.closedIn += Math.max(0, socket.bytesRead - (seen?.read ?? 0));
    this.closedOut += Math.max(0, socket.bytesWritten - (seen?.written ?? 0));
    this.seen.delete(socket);
  }

  /** Bytes in and out since the last take(). */
  take(): [number, number] {
    let bytesIn = this.closedIn;
    let bytesOut = this.closedOut;
    this.closedIn = this.closedOut = 0;
    for (const socket of this.open) {
      const seen = this.seen.get(socket) ?? { read: 0, written: 0 };
      const read = Math.max(socket.bytesRead, seen.read);
      const written = Math.max(socket.bytesWritten, seen.written);
      bytesIn += read - seen.read;
      bytesOut += written - seen.written;
      seen.read = read;
      seen.written = written;
      this.seen.set(socket, seen);
    }
    return [bytesIn, bytesOut];
  }

  /** The server is closed: its last bytes are taken at the next reading, then it is let go. */
  stop(): void {
    stopping.add(this);
  }
}
const byteSources = new Set<ClientBytes>();
const stopping = new Set<ClientBytes>();
export const processedBytes = new Counter({
  name: 'karma_processed_bytes_total',
  help: "Bytes received from clients (in) and sent to them (out), heads and bodies, tunnels included (an ALB's ProcessedBytes, by direction).",
  labelNames: ['direction'] as const,
  collect() {
    let bytesIn = 0;
    let bytesOut = 0;
    for (const source of byteSources) {
      const [i, o] = source.take();
      bytesIn += i;
      bytesOut += o;
      if (stopping.delete(source)) byteSources.delete(source);
    }
    if (bytesIn > 0) this.inc({ direction: 'in' }, bytesIn);
    if (bytesOut > 0) this.inc({ direction: 'out' }, bytesOut);
  },
});
export const workerRestarts = new Counter({
  name: 'karma_worker_restarts_total',
  help: 'Workers that died (a crash, the OOM killer, WORKER_STUCK_TIMEOUT) and were replaced; each one cut the requests it held.',
});
export const logLinesDroppedTotal = new Counter({
  name: 'karma_log_lines_dropped_total',
  help: 'Log lines dropped because stdout or stderr held more than 4 MiB not yet read (journald stalled, a pipe nobody reads).',
  collect() {
    const total = logLinesDropped();
    // log.ts keeps the total (it cannot import this module: this one imports it).
    this.reset();
    if (total > 0) this.inc(total);
  },
});

// ---- the processes ----
// Read when the metrics are read (a scrape, and the primary's gather every few seconds), summed over the
// primary and its workers; nothing on the request path.

/** How often the event loop's stalls are looked for. */
const STALL_TICK_MS = 20;
/** The longest stall of each of the last 60 seconds, by second (performance.now()), ring-indexed. */
const STALL_SECONDS = 60;
const stallLongest = new Float64Array(STALL_SECONDS);
const stallSecond = new Float64Array(STALL_SECONDS).fill(-1);
let stallTimer: NodeJS.Timeout | undefined;
/**
 * Starts watching this process's event loop (main.ts, for the primary and each worker): a timer every
 * STALL_TICK_MS that finds itself late was held up that much (stalls under twice the tick may not show).
 * The longest of each second is kept for a minute, so that a scrape sees the longest of the last minute
 * whatever read the metrics in between (the primary's gathers every few seconds).
 */
export function watchEventLoop(): void {
  if (stallTimer) return;
  let last = performance.now();
  stallTimer = setInterval(() => {
    const now = performance.now();
    const late = now - last - STALL_TICK_MS;
    last = now;
    if (late < STALL_TICK_MS) return;
    const second = Math.floor(now / 1000);
    const i = second % STALL_SECONDS;
    if (stallSecond[i] !== second) {
      stallSecond[i] = second;
      stallLongest[i] = 0;
    }
    stallLongest[i] = Math.max(stallLongest[i], late);
  }, STALL_TICK_MS).unref();
}
export const residentMemory = new Gauge({
  name: 'process_resident_memory_bytes',
  help: "Resident memory of the proxy's processes (the primary and its workers), summed.",
  collect() {
    this.set(process.memoryUsage.rss());
  },
});
export const heapUsed = new Gauge({
  name: 'nodejs_heap_size_used_bytes',
  help: "JavaScript heap in use in the proxy's processes, summed.",
  collect() {
    this.set(process.memoryUsage().heapUsed);
  },
});
/** The last count of this process's descriptors, and the read under way. */
let fdsKnown = NaN;
let fdsReading: Promise<void> | undefined;
/** How long a reading waits for the count: the read runs on libuv's threads, which DNS lookups may hold. */
const FDS_WAIT_MS = 50;
export const openFds = new Gauge({
  name: 'process_open_fds',
  help: "Open file descriptors of the proxy's processes (client and target sockets among them), summed.",
  async collect() {
    // Read off the event loop (tens of milliseconds with tens of thousands open); a reading waits for it
    // briefly and takes the last count when it is slow. The directory's own descriptor is not counted.
    fdsReading ??= readdir('/proc/self/fd').then(
      (names) => void (fdsKnown = names.length - 1),
      // Not Linux, or no descriptor left to read the directory with (EMFILE): not known.
      () => void (fdsKnown = NaN),
    ).finally(() => (fdsReading = undefined));
    await Promise.race([fdsReading, new Promise((r) => setTimeout(r, FDS_WAIT_MS).unref())]);
    this.set(fdsKnown);
  },
});
export const cpuSeconds = new Counter({
  name: 'process_cpu_seconds_total',
  help: "CPU time (user and system) the proxy's processes used, summed (workers replaced included).",
  collect() {
    const { user, system } = process.cpuUsage();
    this.reset();
    this.inc((user + system) / 1e6);
  },
});
export const eventLoopStallMax = new Gauge({
  name: 'nodejs_eventloop_stall_max_seconds',
  help: `The longest any of the proxy's event loops was held up over the last minute (a stall every request on that process waited out); stalls under ${2 * STALL_TICK_MS} ms may not show.`,
  aggregator: 'max',
  collect() {
    const now = Math.floor(performance.now() / 1000);
    let longest = 0;
    for (let i = 0; i < STALL_SECONDS; i++) if (now - stallSecond[i] < STALL_SECONDS) longest = Math.max(longest, stallLongest[i]);
    this.set(longest / 1000);
  },
});

// ---- counting on the request path ----
// prom-client validates and hashes the label values on every inc() and observe(): three of those per
// request were ~3 % of a worker's CPU. The request path adds to plain numbers instead, and prom-client
// gets them whenever the metrics are read (it calls each metric's collect() first), so what a scrape
// shows is exact.

/** A count kept as a plain number between scrapes. */
class Tally {
  n = 0;
  constructor(readonly labels: Record<string, string>) {}
}

function fold(counter: Counter<string>, tallies: Iterable<Tally | undefined>): void {
  for (const t of tallies) {
    if (t === undefined || t.n === 0) continue;
    counter.inc(t.labels, t.n);
    t.n = 0;
  }
}

/** route → its requests by status class (status / 100), and the seconds they took. */
const requestTallies = new Map<string, { readonly byClass: (Tally | undefined)[]; readonly seconds: Tally }>();
/** target → successful connections. */
const successTallies = new Map<string, Tally>();

/** Durations by status class, bucketed as requestDuration's buckets (non-cumulative, as prom-client keeps them). */
interface DurationCell {
  readonly code: string;
  readonly buckets: number[];
  sum: number;
  count: number;
}
const durationCells: (DurationCell | undefined)[] = [];

/** One answered request: karma_requests_total and karma_request_duration_seconds. */
export function countRequest(route: string, status: number, seconds: number): void {
  const k = Math.floor(status / 100);
  let row = requestTallies.get(route);
  if (row === undefined) requestTallies.set(route, (row = { byClass: [], seconds: new Tally({ route }) }));
  (row.byClass[k] ??= new Tally({ route, code: `${k}xx` })).n++;
  row.seconds.n += seconds;
  const cell = (durationCells[k] ??= { code: `${k}xx`, buckets: DURATION_BUCKETS.map(() => 0), sum: 0, count: 0 });
  cell.sum += seconds;
  cell.count++;
  for (let i = 0; i < DURATION_BUCKETS.length; i++) {
    if (seconds <= DURATION_BUCKETS[i]) {
      cell.buckets[i]++;
      break;
    }
  }
}

/**
 * A route the route table forgot: its karma_requests_total, karma_request_seconds_total and
 * karma_fail_open_total series go too, so
 * that series stay bounded by MAX_ROUTES however many routes come and go (clients choose Hosts).
 */
export function forgetRoute(route: string): void {
  failOpenTotal.remove({ route });
  const row = requestTallies.get(route);
  if (row === undefined) return;
  requestTallies.delete(route);
  for (const t of row.byClass) if (t) requestsTotal.remove(t.labels);
  requestSeconds.remove({ route });
}

/**
 * A target that no pool of this process holds any more: its per-target counters go too, so that series
 * stay bounded by the targets in use however many Hosts clients invent (each new port of a service is
 * a target of its own). The primary keeps their counts while the target is still current (gather.ts).
 */
export function forgetTarget(target: string): void {
  successTallies.delete(target);
  successfulConnections.remove({ target });
  failedConnections.remove({ target });
}

/**
 * A target's connection counters from the start, at 0: the seed's counters (unlabelled) always showed a
 * value, and a series that appears only at the first failure leaves `rate()` and `== 0` alerts with no data.
 */
export function countersFromStart(target: string): void {
  failedConnections.labels({ target }).inc(0);
  successfulConnections.labels({ target }).inc(0);
}

/** A target that answered (or, in tcp mode, accepted): load_balancer_successful_connections_total. */
export function countSuccess(target: string): void {
  let t = successTallies.get(target);
  if (t === undefined) successTallies.set(target, (t = new Tally({ target })));
  t.n++;
}

/** What of prom-client's Histogram the fold below relies on (15.x); checked, with a slow path if it changes. */
interface HistogramInternals {
  hashMap: Record<string, { labels: Record<string, string>; bucketValues: Record<number, number>; sum: number; count: number }>;
  upperBounds: number[];
}

function foldDurations(h: Histogram<string>): void {
  const internals = h as unknown as HistogramInternals;
  const same = Array.isArray(internals.upperBounds) && internals.upperBounds.join() === DURATION_BUCKETS.join() && typeof internals.hashMap === 'object';
  for (const cell of durationCells) {
    if (cell === undefined || cell.count === 0) continue;
    let entry = same ? Object.values(internals.hashMap).find((e) => e.labels.code === cell.code) : undefined;
    if (same && entry === undefined) {
      h.zero({ code: cell.code });
      entry = Object.values(internals.hashMap).find((e) => e.labels.code === cell.code);
    }
    if (entry !== undefined && typeof entry.bucketValues === 'object') {
      entry.sum += cell.sum;
      entry.count += cell.count;
      for (let i = 0; i < DURATION_BUCKETS.length; i++) entry.bucketValues[DURATION_BUCKETS[i]] += cell.buckets[i];
    } else {
      // Not the prom-client this was written against: replay each bucket's count at its bound (the sum
      // is then approximate), never lose the counts.
      for (let i = 0; i < DURATION_BUCKETS.length; i++) for (let j = 0; j < cell.buckets[i]; j++) h.observe({ code: cell.code }, DURATION_BUCKETS[i]);
    }
    cell.buckets.fill(0);
    cell.sum = 0;
    cell.count = 0;
  }
}

