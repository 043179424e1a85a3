/**
 * Every Prometheus metric of the proxy, in one place, on prom-client's global registry in every
 * process; the primary serves the sum over itself and its workers (coordinator.ts).
 *
 * The first five names are the stateless load balancer's, kept exactly so its dashboards still work.
 */
import { Counter, Gauge, Histogram, register } from 'prom-client';

export { register };

// ---- the stateless load balancer's five ----
export const activeConnections = new Gauge({
  name: 'load_balancer_active_connections',
  help: 'Client connections currently open.',
});
export const healthCheckLatency = new Histogram({
  name: 'load_balancer_health_check_latency_seconds',
  help: 'Latency of active health checks.',
  labelNames: ['target'] as const,
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
});
export const failedConnections = new Counter({
  name: 'load_balancer_failed_connections_total',
  help: 'Attempts to reach a target that failed (refused, reset, timed out).',
  labelNames: ['target'] as const,
});
export const successfulConnections = new Counter({
  name: 'load_balancer_successful_connections_total',
  help: 'Attempts to reach a target that got a response (or, in tcp mode, a connection).',
  labelNames: ['target'] as const,
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
  help: 'Requests answered, by route and status class (2xx, 3xx, 4xx, 5xx).',
  labelNames: ['route', 'code'] as const,
});
export const requestDuration = new Histogram({
  name: 'karma_request_duration_seconds',
  help: 'Time from request to the end of the response.',
  labelNames: ['code'] as const,
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
});
export const upstreamErrors = new Counter({
  name: 'karma_upstream_errors_total',
  help: 'Forwarding failures by kind: refused, reset, timeout, connect_timeout, dns, bad_response, pool_full, other.',
  labelNames: ['kind'] as const,
});
export const retriesTotal = new Counter({
  name: 'karma_retries_total',
  help: 'Requests retried on another target.',
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
  help: 'Times a protective limit was reached: connections, routes, new_routes, target_sockets, headers.',
  labelNames: ['limit'] as const,
});
export const rejectedRequests = new Counter({
  name: 'karma_rejected_requests_total',
  help: 'Requests answered by the proxy itself with 4xx, by reason.',
  labelNames: ['reason'] as const,
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
export const discoveryDuration = new Histogram({
  name: 'karma_discovery_duration_seconds',
  help: 'Time one discovery of a route or pool took.',
  labelNames: ['provider', 'outcome'] as const,
  buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
});
export const discoveryErrors = new Counter({
  name: 'karma_discovery_errors_total',
  help: 'Discoveries that failed; the last known targets kept serving.',
  labelNames: ['provider'] as const,
});
export const awsCalls = new Counter({
  name: 'karma_aws_calls_total',
  help: 'AWS API calls by API and outcome (ok, throttled, error).',
  labelNames: ['api', 'outcome'] as const,
});
export const cacheLookups = new Counter({
  name: 'karma_discovery_cache_total',
  help: 'Shared (Redis) discovery cache lookups: hit, miss, error.',
  labelNames: ['result'] as const,
});
export const tasksSkipped = new Counter({
  name: 'karma_tasks_skipped_total',
  help: 'ECS tasks or EC2 instances left out of a pool, by reason.',
  labelNames: ['reason'] as const,
});

/** Class of an HTTP status for the requests counter: 2xx, 3xx, 4xx, 5xx. */
export function statusClass(status: number): string {
  return `${Math.floor(status / 100)}xx`;
}

