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
 * - A full collection starts marking once the old space has used 30 % of its room to the next limit, and
 *   marks at once past 60 % (--incremental-marking-soft-trigger / -hard-trigger). V8 otherwise starts
 *   it near the limit, and at 1,000 connections, with ~900 requests waiting for one of the 100 target
 *   sockets and promoted, the old space keeps growing while marking runs. Node 22 grows the old space in
 *   steps of at least 8 MB whatever --max-old-space-size says, so this was its peak: 79.5-80.1 to
 *   74.9-75.2 MiB at 1,000 connections (Node 20: 70.7 to 66.2), at the same CPU per request (12.3k
 *   requests per core, mean of five interleaved runs each). Starting at 20 % / 50 % took another 1 MiB
 *   and cost 9 % of that rate.
 */
export function workerV8Flags(config: Pick<Config, 'maxConnections'>): string[] {
  const oldSpaceMb = Math.max(256, Math.ceil((config.maxConnections * 64) / 1024));
  // --expose-gc: for bodyBytes() below.
  return ['--max-semi-space-size=2', '--heap-growing-percent=50', `--max-old-space-size=${oldSpaceMb}`, '--incremental-marking-soft-trigger=30', '--incremental-marking-hard-trigger=60', '--expose-gc'];
}

/** Bytes a worker passes on (targets' answers, TCP tunnels) between two young-generation collections. */
export const BODY_BYTES_PER_COLLECTION = 2 * 1024 * 1024;
/** The same for request bodies, which are still alive in flight when a collection comes (see uploadBytes). */
export const UPLOAD_BYTES_PER_COLLECTION = 8 * 1024 * 1024;

const collectYoung = (globalThis as { gc?: (options: { type: 'minor' }) => void }).gc;
let sinceCollection = 0;

/**
 * Counts bytes read from a socket to be written to another, and collects the young generation every
 * BODY_BYTES_PER_COLLECTION of them. Each socket read is a fresh buffer of up to 64 KiB outside V8's
 * heap, dead once written on; V8 collects young objects by how much of its own heap they take, which
 * for a buffer is a few hundred bytes, so dead buffers piled up to its external-memory trigger (~64 MB)
 * first. Called for what targets send (upstream.ts) and, through countChunk, for WebSocket and TCP
 * tunnels (forward.ts, tcp.ts). Measured (`npm run bench`, one worker): 1 MB responses 88-92 -> 65-69
 * MiB RSS at a slightly higher rate (1,030-1,100 against 860-970 req/s); after a 1 GiB response 86 ->
 * 57 MiB, its peak 92 -> 60 MiB. In a process without --expose-gc (the tests that run a worker
 * in-process) it only counts.
 */
export function bodyBytes(n: number): void {
  sinceCollection += n;
  if (sinceCollection < BODY_BYTES_PER_COLLECTION) return;
  sinceCollection = 0;
  collectYoung?.({ type: 'minor' });
}

/** bodyBytes as a 'data' listener, for sockets piped to each other (tunnels). */
export const countChunk = (chunk: Buffer): void => bodyBytes(chunk.length);

/**
 * bodyBytes for request bodies, at UPLOAD_BYTES_PER_COLLECTION: a collection may find the bodies of the
 * requests in flight alive, copy them and promote some. Under node:http's server (bodies waited in its
 * streams) 16 MB cost 64 KB POSTs 7 % and 8 MB 17 %. Since downstream.ts writes each body chunk on as
 * llhttp copies it out, those chunks are dead when a collection comes: 8 MB costs no CPU per POST we
 * could measure (six interleaved runs each) and holds a worker under 64 KB POSTs at 71-74 MiB instead
 * of 103-109 (each 64 KiB copy is malloc'd, and freed only once a collection has seen it dead).
 */
export function uploadBytes(n: number): void {
  bodyBytes(n * (BODY_BYTES_PER_COLLECTION / UPLOAD_BYTES_PER_COLLECTION));
}

/**
 * What a worker's environment changes from the primary's (node:cluster merges the two; undefined
 * leaves a variable out).
 */
export function workerEnv(env: NodeJS.ProcessEnv): Record<string, string | undefined> {
  return {
    // glibc gives every thread its own malloc arena by default (V8's helper threads too): two are enough.
    MALLOC_ARENA_MAX: env.MALLOC_ARENA_MAX ?? '2',
    // Only the primary talks to Redis. Workers, which parse what clients send, do not hold its address
    // and password (a REDIS_URL may carry one), nor the name of the secret holding its token.
    REDIS_URL: undefined,
    REDIS_AUTH_SECRET_ARN: undefined,
  };
}
