/**
 * What the primary and its workers say to each other over node:cluster's IPC channel.
 *
 * Discovery and health checks run once, in the primary: with one of each per worker, every target
 * would be probed WORKERS times, AWS would see WORKERS times the calls (its read APIs share one
 * account-wide rate limit), and every worker would carry the SDK in memory. Workers keep the request
 * path in memory and ask the primary only when a route is new or due for a refresh.
 */
import type { TargetRegistry } from './balancer';
import { register } from './metrics';
import type { Provider, RouteKey, Target } from './types';

export type ToPrimary =
  | { readonly t: 'ready'; readonly port: number }
  | { readonly t: 'fatal'; readonly error: string }
  | { readonly t: 'discover'; readonly n: number; readonly route: RouteKey }
  /** Every target this worker has in use now (the health checker checks the union). */
  | { readonly t: 'in-use'; readonly targets: readonly Target[] }
  | { readonly t: 'metrics'; readonly n: number; readonly json: unknown }
  /** With the listening handle: send it back (acceptors.ts). */
  | { readonly t: 'acceptor'; readonly n: number };

export type ToWorker =
  | { readonly t: 'discovered'; readonly n: number; readonly targets?: readonly Target[]; readonly error?: string }
  | { readonly t: 'health'; readonly verdicts: readonly (readonly [string, boolean])[] }
  | { readonly t: 'metrics?'; readonly n: number };

type Send = (m: ToPrimary) => void;
type Listen = (fn: (m: ToWorker) => void) => void;

// Once the primary is gone (a worker draining after it died) there is nobody to tell: sending then
// would raise an 'error' event on process, which nothing handles.
const send: Send = (m) => {
  if (process.connected) process.send?.(m);
};
const listen: Listen = (fn) => process.on('message', (m: ToWorker) => fn(m));

/** A worker's discovery: asks the primary, which shares one discovery among all workers. */
export class PrimaryProvider implements Provider {
  private n = 0;
  private readonly waiting = new Map<number, { resolve: (t: Target[]) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  constructor(
    /** The discovery mode the primary runs (ecs, tag, asg, static), for metrics and logs. */
    readonly name: string,
    private readonly timeoutMs = 30_000,
    private readonly out: Send = send,
  ) {}

  /** Feeds the primary's answers in. */
  receive(m: ToWorker): void {
    if (m.t !== 'discovered') return;
    const w = this.waiting.get(m.n);
    if (!w) return;
    this.waiting.delete(m.n);
    clearTimeout(w.timer);
    if (m.error !== undefined) w.reject(new Error(m.error));
    else w.resolve([...(m.targets ?? [])]);
  }

  discover(route: RouteKey): Promise<Target[]> {
    const n = ++this.n;
    return new Promise<Target[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(n);
        reject(new Error('the primary did not answer a discovery request'));
      }, this.timeoutMs);
      timer.unref();
      this.waiting.set(n, { resolve, reject, timer });
      this.out({ t: 'discover', n, route });
    });
  }

  async close(): Promise<void> {
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(new Error('closing'));
    }
    this.waiting.clear();
  }
}

/**
 * Connects a worker to its primary: discovery answers to `provider`, health verdicts to `registry`,
 * the targets in use back to the primary, and this worker's metrics on request.
 */
export function joinPrimary(provider: PrimaryProvider, registry: TargetRegistry, out: Send = send, on: Listen = listen): void {
  let queued = false;
  const report = (): void => {
    if (queued) return;
    queued = true;
    // Pools change several targets at once: report the set once they are done.
    setImmediate(() => {
      queued = false;
      out({ t: 'in-use', targets: registry.targets() });
    });
  };
  registry.onChange(report);
  on((m) => {
    if (m.t === 'discovered') provider.receive(m);
    else if (m.t === 'health') {
      // setStatus reads only the id.
      for (const [id, up] of m.verdicts) registry.setStatus({ id, host: '', port: 0 }, up);
    }
    else if (m.t === 'metrics?') {
      void register.getMetricsAsJSON().then(
        (json) => out({ t: 'metrics', n: m.n, json }),
        () => out({ t: 'metrics', n: m.n, json: [] }),
      );
    }
  });
  report();
}

export { send as sendToPrimary };
