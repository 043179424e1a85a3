/**
 * Active health checks, ALB-like (HTTP) or NLB-like (a TCP connection): every target in use is probed on its own timer, and its
 * verdict flips only after HEALTHY_THRESHOLD / UNHEALTHY_THRESHOLD consecutive results.
 *
 * The checker knows only StatusSetter (Traefik's SetStatus): it does not know routes, pools or
 * discovery, so a slow discovery never delays a check, and a slow target never delays another's.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Range } from './config';
import { healthCheckLatency, nodeHealthStatus } from './metrics';
import type { StatusSetter, Target } from './types';

export const HEALTH_CHECK_USER_AGENT = 'karma-proxy-health-check';

/** ±10% on every period, so targets added together do not stay in lock-step. */
const PERIOD_JITTER = 0.1;

export interface HealthOptions {
  /** HEALTH_CHECK_PATH; the caller does not build a checker when it is `off`. */
  path: string;
  /** `tcp`: a check passes when a connection opens; path and matcher are not used. @default 'http' */
  protocol?: 'http' | 'tcp';
  periodMs: number;
  timeoutMs: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
  /** Status codes that pass (HEALTH_CHECK_MATCHER). */
  matcher: readonly Range[];
}

export interface HealthDeps {
  /** In [0, 1); tests fix the jitter with it. @default Math.random */
  random?: () => number;
  /** A StatusSetter that threw. The checker keeps going. @default process.emitWarning */
  onError?: (err: unknown, target: Target) => void;
}

export function statusMatches(status: number, matcher: readonly Range[]): boolean {
  return matcher.some((r) => status >= r.from && status <= r.to);
}

/** `host:port` as a Host header wants it: IPv6 literals in brackets. */
export function hostHeader(target: Target): string {
  return target.host.includes(':') ? `[${target.host}]:${target.port}` : `${target.host}:${target.port}`;
}

interface Tracked {
  target: Target;
  verdict: boolean | undefined;
  /** Consecutive results that disagree with the verdict. */
  streak: number;
  timer: NodeJS.Timeout | undefined;
  /** Ends the check in flight without a result. */
  cancel: (() => void) | undefined;
  /** Left the set (or the checker stopped): a late result is dropped. */
  gone: boolean;
}

export class HealthChecker {
  private readonly tracked = new Map<string, Tracked>();
  private readonly random: () => number;
  private readonly onError: (err: unknown, target: Target) => void;
  private stopped = false;

  constructor(
    private readonly opts: HealthOptions,
    private readonly setter: StatusSetter,
    deps: HealthDeps = {},
  ) {
    const problems: string[] = [];
    if (!opts.path.startsWith('/')) problems.push(`path must start with '/', got ${JSON.stringify(opts.path)}`);
    if (!(opts.periodMs > 0) || !Number.isFinite(opts.periodMs)) problems.push(`periodMs must be > 0, got ${opts.periodMs}`);
    if (!(opts.timeoutMs > 0) || !Number.isFinite(opts.timeoutMs)) problems.push(`timeoutMs must be > 0, got ${opts.timeoutMs}`);
    for (const k of ['healthyThreshold', 'unhealthyThreshold'] as const) {
      if (!Number.isInteger(opts[k]) || opts[k] < 1) problems.push(`${k} must be an integer >= 1, got ${opts[k]}`);
    }
    if (opts.matcher.length === 0) problems.push('matcher must hold at least one status range');
    if (problems.length > 0) throw new RangeError(`HealthChecker: ${problems.join('; ')}`);
    this.random = deps.random ?? Math.random;
    this.onError =
      deps.onError ??
      ((err, target) => process.emitWarning(`health checker: setStatus(${target.id}) threw: ${String(err)}`));
  }

  sync(targets: readonly Target[]): void {
    if (this.stopped) return;
    const wanted = new Map(targets.map((t) => [t.id, t]));
    for (const [id, t] of this.tracked) {
      if (!wanted.has(id)) this.forget(t);
    }
    for (const [id, target] of wanted) {
      const t = this.tracked.get(id);
      if (t) {
        t.target = target;
        continue;
      }
      const fresh: Tracked = { target, verdict: undefined, streak: 0, timer: undefined, cancel: undefined, gone: false };
      this.tracked.set(id, fresh);
      // A new target is checked at once: until its first check passes it gets no traffic (while the
      // route has a healthy target), so jitter here would only delay a scale-out. Jitter keeps the
      // periodic checks that follow apart.
      this.schedule(fresh, 0);
    }
  }

  status(targetId: string): boolean | undefined {
    return this.tracked.get(targetId)?.verdict;
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.tracked.values()) this.forget(t);
  }

  private forget(t: Tracked): void {
    t.gone = true;
    clearTimeout(t.timer);
    t.timer = undefined;
    t.cancel?.();
    this.tracked.delete(t.target.id);
    nodeHealthStatus.remove({ target: t.target.id });
    healthCheckLatency.remove({ target: t.target.id });
  }

  private schedule(t: Tracked, delayMs: number): void {
    t.timer = setTimeout(() => this.check(t), delayMs);
    t.timer.unref();
  }

  private check(t: Tracked): void {
    t.timer = undefined;
    const { host, port } = t.target;
    const started = performance.now();
    const startedAt = Date.now();
    let req: http.ClientRequest | undefined;
    let socket: net.Socket | undefined;
    let done = false;

    const end = (): boolean => {
      if (done) return false;
      done = true;
      clearTimeout(deadline);
      t.cancel = undefined;
      // Connection: close and no agent: destroying frees the socket now, body or not.
      req?.destroy();
      socket?.destroy();
      return true;
    };
    const finish = (pass: boolean): void => {
      if (!end() || t.gone) return;
      const elapsedMs = performance.now() - started;
      healthCheckLatency.labels({ target: t.target.id }).observe(elapsedMs / 1000);
      // Period counted from the start of this check, so a slow answer does not stretch the cadence;
      // never two checks of one target at once.
      this.schedule(t, Math.max(0, this.jitteredPeriod() - elapsedMs));
      this.record(t, pass, startedAt);
    };
    // One deadline for connect, request and status line: a target that accepts and never answers fails here.
    const deadline = setTimeout(() => finish(false), this.opts.timeoutMs);
    deadline.unref();
    t.cancel = () => {
      end();
    };
    if (this.opts.protocol === 'tcp') {
      // A target that accepts a connection passes, whatever protocol it speaks; closed at once.
      try {
        socket = net.connect({ host, port });
      } catch {
        queueMicrotask(() => finish(false));
        return;
      }
      socket.on('connect', () => finish(true));
      socket.on('error', () => finish(false));
      return;
    }
    try {
      req = http.request({
        host,
        port,
        path: this.opts.path,
        method: 'GET',
        agent: false,
        headers: {
          Host: hostHeader(t.target),
          'User-Agent': HEALTH_CHECK_USER_AGENT,
          Connection: 'close',
        },
      });
    } catch {
      // An invalid host or path throws synchronously; it is a failed check like any other.
      queueMicrotask(() => finish(false));
      return;
    }
    req.on('error', () => finish(false));
    req.on('response', (res) => {
      res.on('error', () => {});
      const pass = statusMatches(res.statusCode ?? 0, this.opts.matcher);
      // The verdict is in the status line: never wait for (or buffer) a body that may not end.
      res.destroy();
      finish(pass);
    });
    req.end();
  }

  /** A check's result; `startedAt` (Date.now()) is when it began. */
  private record(t: Tracked, pass: boolean, startedAt: number): void {
    let flipped = false;
    if (t.verdict === undefined) {
      // The first result counts at once: a new target should not wait thresholds × period.
      t.verdict = pass;
      t.streak = 0;
      flipped = true;
    } else if (pass === t.verdict) {
      t.streak = 0;
    } else {
      t.streak += 1;
      const needed = t.verdict ? this.opts.unhealthyThreshold : this.opts.healthyThreshold;
      if (t.streak >= needed) {
        t.verdict = pass;
        t.streak = 0;
        flipped = true;
      }
    }
    nodeHealthStatus.labels({ target: t.target.id }).set(t.verdict ? 1 : 0);
    try {
      if (flipped) this.setter.setStatus(t.target, t.verdict);
    } catch (err) {
      this.onError(err, t.target);
    }
    try {
      // Each pass, whatever the thresholds say: it half-opens a breaker that refused connections opened.
      if (pass) this.setter.passed?.(t.target, startedAt);
    } catch (err) {
      this.onError(err, t.target);
    }
  }

  private jitteredPeriod(): number {
    return this.opts.periodMs * (1 - PERIOD_JITTER + 2 * PERIOD_JITTER * this.random());
  }
}
