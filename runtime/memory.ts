/**
 * The worker process's memory shape, set by the bundle rather than by the unit so that every way of
 * running it (systemd, `npm run proxy`, the tests, the benchmark) gets the same. Flags given to node
 * itself come after these and win.
 */
import type { Config } from './config';

/**
 * V8 flags for workers. Measured with `npm run bench` (test/bench/README-bench.md), worker
 * RSS at 1,000 connections:
 * - V8's young generation grows to 32 MB under load by default; 2 MB semi-spaces hold it at 4 MB at no
 *   throughput cost we could measure (1 MB: ~2 MiB less, but p99 at half load 2.0 -> 5.1 ms).
 * - The old space fills with promoted garbage (requests waiting their turn outlive two scavenges)
 *   before a full collection. A 1.5x growing step (--heap-growing-percent=50) and an old space that
 *   cannot double (--max-old-space-size: V8 then grows it in 2 MB steps instead of 8) took a worker
 *   from 80-81 to 75 MiB; 256 MB is what V8 gives a 512 MiB t4g.nano by default anyway. The limit
 *   grows with MAX_CONNECTIONS (64 KiB each, ~5x what one holds at its busiest), so raising that
 *   does not bring a worker near its heap limit.
 * - Costs: none measured. Against V8's defaults on the same machine and day, 1 MB responses ran at
 *   860-970 req/s (defaults 730-780) and 64 KB POSTs at 11.2-11.4k (9.5-10.0k): with discovery packed
 *   (unpack.ts) a full collection has little to mark. The earlier 2x step cost half the 1 MB rate when
 *   each worker still held the SDK's parsed code.
 */
export function workerV8Flags(config: Pick<Config, 'maxConnections'>): string[] {
  const oldSpaceMb = Math.max(256, Math.ceil((config.maxConnections * 64) / 1024));
  return ['--max-semi-space-size=2', '--heap-growing-percent=50', `--max-old-space-size=${oldSpaceMb}`];
}

/** The environment a worker is forked with, beside the primary's. */
export function workerEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  // glibc gives every thread its own malloc arena by default (V8's helper threads too): two are enough.
  return { MALLOC_ARENA_MAX: env.MALLOC_ARENA_MAX ?? '2' };
}
