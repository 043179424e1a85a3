/**
 * /metrics of a primary and its workers: each process counts in its own prom-client registry, and the
 * primary sums them at scrape time (gauges marked so take the max).
 *
 * Counters must never go down, or Prometheus reads a reset and rate() and increase() jump. So a worker
 * that does not answer a gather in time counts with its last answer, and the counters and histograms of
 * workers that are gone stay in the sums (as of the last answer each gave), folded into one set. The
 * primary also asks every worker every METRICS_REFRESH_MS between scrapes, so a worker killed outright
 * takes at most that much of its counts with it, not all since the last scrape.
 * A live worker's series that leave its answer (it forgot a route that another worker still serves) join
 * the departed ones too. Those departed series go once their route or target is no longer current in
 * the primary, as a worker drops a forgotten route's series (metrics.ts forgetRoute): neither crashes
 * nor routes coming and going can pile them up.
 */
import { AggregatorRegistry } from 'prom-client';
import { register } from './metrics';

/** One process's metrics, as prom-client's getMetricsAsJSON gives them. */
export type MetricsJson = {
  readonly name?: unknown;
  readonly type?: unknown;
  readonly values?: readonly { readonly value?: unknown; readonly metricName?: unknown; readonly labels?: Readonly<Record<string, unknown>> }[];
}[];

const nonEmpty = (json: unknown): json is MetricsJson => Array.isArray(json) && json.length > 0;

/** A counter or a histogram: what only ever goes up. */
const counted = (m: { readonly type?: unknown }): boolean => m.type === 'counter' || m.type === 'histogram';
const counts = (json: MetricsJson): MetricsJson => json.filter(counted);

const seriesKey = (v: { readonly metricName?: unknown; readonly labels?: Readonly<Record<string, unknown>> }): string =>
  JSON.stringify([v.metricName ?? '', Object.entries(v.labels ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))]);

/**
 * The counter and histogram series of `before` that `after` no longer has, or has lower: what a live
 * worker forgot (a route idle in that worker while another still serves it), or forgot and took up
 * again from zero between two answers. Their last values stay in the sums as a departed worker's do,
 * or the route's total would go down.
 */
function forgotten(before: MetricsJson, after: MetricsJson): MetricsJson {
  const kept = new Map<unknown, Map<string, number>>();
  for (const m of counts(after)) kept.set(m.name, new Map((m.values ?? []).map((v) => [seriesKey(v), Number(v.value)])));
  const out: MetricsJson = [];
  for (const m of counts(before)) {
    const now = kept.get(m.name);
    const gone = (m.values ?? []).filter((v) => {
      const value = now?.get(seriesKey(v));
      return value === undefined || value < Number(v.value);
    });
    if (gone.length > 0) out.push({ ...m, values: gone });
  }
  return out;
}

/** How much smaller than last served a sum may come out from addition in another order alone (a few ulps). */
const ROUNDING = 1e-12;

/** Departed sets kept before they are folded into one (at a scrape, or here past this many). */
const DEPARTED_FOLD_AT = 32;

/** What is current, for departed series: routes still asked for, and targets in use or found for them. */
export interface Current {
  readonly routes: { has(id: string): boolean };
  readonly targets: { has(id: string): boolean };
}

export class MetricsGather {
  private n = 0;
  /** Each live worker's last answer. */
  private readonly last = new Map<number, MetricsJson>();
  /** The counter and histogram values last served, by series (steady()). */
  private served = new Map<string, number>();
  /** Counters and histograms of workers that are gone, and series live workers let go. */
  private departed: MetricsJson[] = [];
  private folding: Promise<void> | undefined;
  /** Gathers under way: the workers still to answer each, and the answers so far. */
  private readonly pending = new Map<number, { waiting: Set<number>; answers: Map<number, MetricsJson>; done: () => void }>();

  constructor(private readonly current: () => Current) {}

  /** A number for asking a worker outside any gather (refresh): its answer only updates its last. */
  nextNumber(): number {
    return ++this.n;
  }

  /** A worker's answer to gather `n`. An empty one (it could not read its registry) leaves its last standing. */
  answered(worker: number, n: number, json: unknown): void {
    const p = this.pending.get(n);
    if (nonEmpty(json)) {
      const before = this.last.get(worker);
      const lost = before ? forgotten(before, json) : [];
      if (lost.length > 0) this.departed.push(lost);
      // Folded now and then without a scrape too, or a proxy nobody scrapes would keep every set.
      if (this.departed.length > DEPARTED_FOLD_AT) void this.fold();
      this.last.set(worker, json);
      if (p?.waiting.has(worker)) p.answers.set(worker, json);
    }
    if (p?.waiting.delete(worker) && p.waiting.size === 0) p.done();
  }

  /** A worker is gone: its counts join the departed ones, and no gather waits for it. */
  gone(worker: number): void {
    const last = this.last.get(worker);
    this.last.delete(worker);
    if (last) this.departed.push(counts(last));
    for (const p of this.pending.values()) {
      // Its counts are in `departed` now: an answer it gave to a gather still under way would count twice.
      p.answers.delete(worker);
      if (p.waiting.delete(worker) && p.waiting.size === 0) p.done();
    }
  }

  /**
   * The Prometheus text: this process, every worker in `workers` (those in `ask` are asked, at most
   * `timeoutMs`), and the departed.
   */
  async text(workers: Iterable<number>, ask: readonly { id: number; send(n: number): void }[], timeoutMs: number): Promise<string> {
    const n = ++this.n;
    const own = (await register.getMetricsAsJSON()) as unknown as MetricsJson;
    const answers = new Map<number, MetricsJson>();
    if (ask.length > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        this.pending.set(n, { waiting: new Set(ask.map((w) => w.id)), answers, done: () => (clearTimeout(timer), resolve()) });
        for (const w of ask) w.send(n);
      });
      this.pending.delete(n);
    }
    for (const id of workers) {
      const last = this.last.get(id);
      if (!answers.has(id) && last) answers.set(id, last);
    }
    await this.fold();
    const sum = AggregatorRegistry.aggregate([own, ...answers.values(), ...this.departed] as object[]);
    await this.steady(sum);
    return sum.metrics();
  }

  /**
   * Floating-point sums added up in another order (a worker's counts moved into the departed set) can
   * come out a hair smaller than the scrape before, which Prometheus takes for a counter reset (rate()
   * jumps by the whole sum). A counter or histogram series that is smaller than last served by no more
   * than such rounding is served as before. The aggregate's metrics hand out their values themselves
   * (prom-client's AggregatorRegistry.aggregate), so they are set in place.
   */
  private async steady(sum: { getMetricsAsArray(): unknown[] }): Promise<void> {
    const served = new Map<string, number>();
    for (const m of sum.getMetricsAsArray() as { get?: () => unknown }[]) {
      const got = (await m.get?.()) as MetricsJson[number] | undefined;
      if (!got || !counted(got)) continue;
      for (const v of (got.values ?? []) as { value?: unknown; metricName?: unknown; labels?: Readonly<Record<string, unknown>> }[]) {
        if (typeof v.value !== 'number') continue;
        let value: number = v.value;
        const key = `${String(got.name)} ${seriesKey(v)}`;
        const last = this.served.get(key);
        if (last !== undefined && value < last && last - value <= Math.abs(last) * ROUNDING) v.value = value = last;
        served.set(key, value);
      }
    }
    this.served = served;
  }

  /** The departed sets as one, without the series of routes and targets no longer current; one fold at a time. */
  private fold(): Promise<void> {
    return (this.folding ??= this.foldOnce().finally(() => (this.folding = undefined)));
  }

  private async foldOnce(): Promise<void> {
    if (this.departed.length === 0) return;
    const sets = [...this.departed];
    const folded = (await AggregatorRegistry.aggregate(sets as object[]).getMetricsAsJSON()) as unknown as MetricsJson;
    // Sets that came while these were folded stay beside them.
    this.departed = [this.currentOnly(folded), ...this.departed.filter((d) => !sets.includes(d))];
  }

  private currentOnly(json: MetricsJson): MetricsJson {
    const { routes, targets } = this.current();
    const keep = (labels: Readonly<Record<string, unknown>> = {}): boolean =>
      (typeof labels.route !== 'string' || labels.route === 'none' || routes.has(labels.route)) &&
      (typeof labels.target !== 'string' || targets.has(labels.target));
    return json.map((m) => ({ ...m, values: (m.values ?? []).filter((v) => keep(v.labels)) }));
  }
}
