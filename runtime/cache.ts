/**
 * Redis sharing of discovery results (optional, REDIS_URL), so a fleet of proxies makes about the AWS
 * calls of one proxy.
 *
 * `SharedProvider` wraps the real provider. For a route it reads `karma:v1:targets:<scope>:<route>`:
 *   - fresh enough (younger than ~0.9 NODE_CHECK_PERIOD, measured on Redis's clock with PTTL against
 *     the TTL it was written with, so clock skew between proxies does not matter) → a hit, no AWS call;
 *   - else it takes `karma:v1:lock:<scope>:<route>` (SET NX PX, expiring before the next period) and
 *     the winner calls AWS and writes the result (SET PX, TTL of a few periods); the others keep
 *     serving the previous shared value, or, when there is none yet, wait a bounded moment for the
 *     winner's.
 * Redis is never needed: when it is down, slow (short command timeout) or not configured, discovery
 * goes straight to the inner provider and AWS. The client reconnects by itself with a capped backoff;
 * an outage is logged once when it starts and once when it ends, never per request.
 *
 * The lock is not released after a refresh: while it lives the value is fresh anyway, and when AWS
 * throttled the refresh, holding it keeps the rest of the fleet from piling on. A refresh that failed
 * otherwise (this proxy's credentials, network or AWS endpoint) lets it go at once: a fleet-mate whose
 * AWS works takes it, and one waiting for this proxy's answer stops waiting.
 */
import { setTimeout as wait } from 'node:timers/promises';
import { Redis, type RedisOptions } from 'ioredis';
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { createSecretsManagerClient, fetchSecretString, isThrottling } from './aws';
import type { Config } from './config';
import { errorFields, log } from './log';
import { usablePort } from './discovery/screen';
import { cacheLookups } from './metrics';
import { Found, foundBy, makeTarget, Provider, RouteKey, routeId, Target, within } from './types';

/** How often the fleet may ask AWS for a route whose targets refuse (SharedProvider, maxAgeMs): once a second. */
const EARLY_LOCK_MS = 1000;
/** The longest a failing Redis is left alone between two tries (suspendMs, doubled while it keeps failing). */
export const MAX_SUSPEND_MS = 16_000;
/**
 * Tries in a row that time out on a connection said to be up before it is dropped and made anew: a
 * node that died or was cut off sends no FIN, and the client would wait on it for as long as TCP's
 * retransmissions last (about 15 minutes) instead of reaching the replacement (an ElastiCache failover
 * moves the endpoint's name to it). With tries 1, 2 and 4 s apart, about 3 s into a silence.
 */
export const SILENT_TRIES_BEFORE_RECONNECT = 3;

/** Bump when the stored shape changes: proxies of two versions then simply do not share. */
export const KEY_PREFIX = 'karma:v1';

export const targetsKey = (scope: string, route: RouteKey): string => `${KEY_PREFIX}:targets:${scope}:${routeId(route)}`;
export const lockKey = (scope: string, route: RouteKey): string => `${KEY_PREFIX}:lock:${scope}:${routeId(route)}`;

/** What is stored under a targets key. */
interface StoredTargets {
  readonly v: 1;
  /** Writer's clock, for people reading Redis; freshness uses PTTL instead. */
  readonly at: number;
  /** TTL it was written with, and how long its discovery took (the data is that much older). */
  readonly ttl: number;
  readonly took: number;
  /**
   * Of `took`, how old the answer already was when its discovery began (records another port of the
   * service had fetched): none of it is since a refusal that wants a new answer. Absent: 0.
   */
  readonly aged?: number;
  readonly targets: readonly { readonly host: string; readonly port: number }[];
}

export function encodeTargets(targets: readonly Target[], ttlMs: number, tookMs: number, now = Date.now(), agedMs = 0): string {
  const value: StoredTargets = { v: 1, at: now, ttl: ttlMs, took: tookMs, ...(agedMs > 0 ? { aged: agedMs } : {}), targets: targets.map((t) => ({ host: t.host, port: t.port })) };
  return JSON.stringify(value);
}

/**
 * The most a shared entry may hold: more targets than an ECS service has tasks (5,000) and bridge-mode
 * ports beside them, in fewer bytes than they take. Larger is no proxy's writing: parsed, a poisoned
 * entry of 10 MB (262,144 targets) ran every worker out of heap, and smaller ones stalled its loop.
 */
export const MAX_SHARED_TARGETS = 10_000;
export const MAX_SHARED_BYTES = 1024 * 1024;

/** Pure: a stored value back to targets, or undefined for anything malformed, oversized or of another version. */
export function decodeTargets(raw: string | null | undefined): { targets: Target[]; ttl: number; took: number; aged?: number } | undefined {
  if (typeof raw !== 'string' || raw.length > MAX_SHARED_BYTES) return undefined;
  let v: Partial<StoredTargets>;
  try {
    v = JSON.parse(raw) as Partial<StoredTargets>;
  } catch {
    return undefined;
  }
  if (!v || v.v !== 1 || !Array.isArray(v.targets) || v.targets.length > MAX_SHARED_TARGETS || typeof v.ttl !== 'number') return undefined;
  const targets: Target[] = [];
  for (const t of v.targets) {
    if (!t || typeof t.host !== 'string' || t.host === '' || !usablePort(t.port)) return undefined;
    targets.push(makeTarget(t.host, t.port));
  }
  targets.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const took = typeof v.took === 'number' && v.took > 0 ? v.took : 0;
  return { targets, ttl: v.ttl, took, ...(typeof v.aged === 'number' && v.aged > 0 ? { aged: Math.min(v.aged, took) } : {}) };
}

export interface SharedProviderOptions {
  /** NODE_CHECK_PERIOD in ms: one proxy of the fleet refreshes a route about this often. */
  readonly periodMs: number;
  /** How long a shared result lives in Redis. @default 3 × periodMs */
  readonly ttlMs?: number;
  /** A shared result younger than this is used as is. @default 0.9 × periodMs */
  readonly freshMs?: number;
  /**
   * The same for an empty result (NEGATIVE_CACHE_TTL): a service that gets its first task is found as
   * soon as without Redis, and the refresh lock of an empty answer lasts no longer. @default freshMs
   */
  readonly emptyFreshMs?: number;
  /** How long the refresh lock is held. @default freshMs */
  readonly lockMs?: number;
  /** With nothing shared yet and another proxy refreshing, how long to wait for its result. @default 2000 */
  readonly waitMs?: number;
  /** Poll step of that wait. @default 50 */
  readonly pollMs?: number;
  /** After a failed Redis command, how long to go straight to AWS before trying Redis again. @default 1000 */
  readonly suspendMs?: number;
  /** Key part naming what was discovered. @default inner.scope, else inner.name */
  readonly scope?: string;
  /**
   * The AWS region discovered in, added to the scope: fleets of two regions on one Redis (whose
   * clusters may share names) must not serve each other's targets. @default none named
   */
  readonly region?: string;
  /** Aborted by close(): a client still being made (its AUTH secret read again and again) is not made. */
  readonly connecting?: AbortController;
}

/** A shared value: its targets, its age (Infinity: not written by a proxy like us), its stored form and expiry. */
/**
 * ageMs: since the discovery began (its time to answer counted); writtenMs: since it was written;
 * agedMs: how old its answer already was when that discovery began (another port's records).
 */
type Shared = { targets: Target[]; ageMs: number; writtenMs: number; agedMs: number; raw: string; pttl: number };

/** Kinds of failure said in one outage, at most (each reconnection may fail anew, for ever). */
const MAX_FAILURE_KINDS_SAID = 4;
/** Clients already watched, so two providers on one client do not log an outage twice. */
const watched = new WeakSet<Redis>();

/** What kind of failure a Redis connection error is, for saying each once an outage: a reply's first word (NOAUTH, WRONGPASS), else its code. */
const failureKind = (err: unknown): string => {
  const e = err as { code?: unknown; message?: unknown } | undefined;
  return /^[A-Z]+\b/.exec(String(e?.message ?? ''))?.[0] ?? (typeof e?.code === 'string' ? e.code : 'other');
};

/**
 * Logs an outage once when it starts and once when it ends, and once each refusal it turns into (the
 * connection refused, then a Redis back with a password: NOAUTH), so that the last reason on record is
 * true; also keeps 'error' from ever being unhandled.
 */
function watch(redis: Redis, onReady?: () => void): void {
  if (onReady) redis.on('ready', onReady);
  if (watched.has(redis)) return;
  watched.add(redis);
  let down = false;
  /** The kinds of failure said this outage. */
  const said = new Set<string>();
  let noDatabase = false;
  redis.on('error', (err: unknown) => {
    // REDIS_URL's /N not selected: a database this Redis does not have, or an ACL user without SELECT.
    // The client would go on in database 0, shared with whatever else uses it (another fleet kept apart
    // by its /N would serve this one's targets). Nothing changes that but the setting: sharing stops,
    // said once (what the client says as it goes, "Stream isn't writeable", is no outage of its own).
    const message = (err as Error | undefined)?.message ?? '';
    const noSelect = /^NOPERM .*'select'/.test(message);
    if (noSelect || /^ERR (?:DB index is out of range|invalid DB index)/.test(message)) {
      if (!noDatabase) {
        log(
          'error',
          noSelect
            ? "REDIS_URL's user may not SELECT the database REDIS_URL names (its ACL needs +select): discovery is not shared"
            : 'REDIS_URL names a database this Redis does not have: discovery is not shared',
          errorFields(err),
        );
      }
      noDatabase = true;
      redis.disconnect();
      return;
    }
    if (noDatabase) return;
    // Once down, only a refusal by a Redis that answers is news (a reset, then refusals, is one outage).
    const kind = failureKind(err);
    if (down && ((err as Error | undefined)?.name !== 'ReplyError' || said.has(kind) || said.size >= MAX_FAILURE_KINDS_SAID)) return;
    said.add(kind);
    // rediss:// to a Redis without TLS: the server never answers the handshake, and all that comes is a
    // connect timeout, which says nothing of why. ioredis's timeout runs to the end of the handshake, so
    // the same error comes from a network that drops the connection itself: the hint names both.
    const tlsHint = redis.options.tls && kind === 'ETIMEDOUT'
      ? { hint: 'REDIS_URL is rediss:// (TLS): neither the connection nor its TLS handshake completed in time; a Redis without TLS (ElastiCache in-transit encryption off) never answers the handshake' }
      : {};
    log('warn', down ? 'redis still unavailable, now for another reason: discovery goes on without sharing' : 'redis unavailable: discovery goes on without sharing', { ...errorFields(err), ...tlsHint });
    down = true;
  });
  redis.on('ready', () => {
    if (!down) return;
    down = false;
    said.clear();
    log('info', 'redis available again: discovery is shared');
  });
}

/**
 * A refusal that stays until someone changes something, by its kind: an ACL's (NOPERM; a script's
 * command refused is an ERR in each version's own words: Redis 6's, 7.0's, 7.2's and Valkey's) or a
 * foreign key's type (WRONGTYPE). Undefined for any other error.
 */
export function lastingRefusal(message: string): 'NOPERM' | 'WRONGTYPE' | undefined {
  if (/^NOPERM /.test(message)) return 'NOPERM';
  if (/^WRONGTYPE /.test(message)) return 'WRONGTYPE';
  if (/^ERR (?:The user executing the script can't|ACL failure in script|Error running script .*(?:can't run this command|can't access at least one of the keys|no permissions? to))/.test(message)) return 'NOPERM';
  return undefined;
}

/** PEXPIRE KEYS[1] to ARGV[2] ms if it holds ARGV[1] (this proxy's lock token), atomically. */
const SHORTEN_OWN_LOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0";

export class SharedProvider implements Provider {
  readonly name: string;
  readonly scope: string;
  private redis: Redis | undefined;
  private readonly pending: Promise<void> | undefined;
  private readonly connecting: AbortController | undefined;
  private closed = false;
  private suspendedUntil = 0;
  /** Commands failed in a row: each leaves Redis alone twice as long as the one before, up to MAX_SUSPEND_MS. */
  private failuresInRow = 0;
  /** What failed() last logged, until a command answers. */
  private trouble: 'silent' | 'cluster' | 'full' | undefined;
  /** Lasting refusals already logged, by code (NOPERM, WRONGTYPE; `WRONGTYPE read`: a targets key replaced): each said once. */
  private readonly refusals = new Set<string>();
  private readonly ttlMs: number;
  private readonly freshMs: number;
  private readonly emptyFreshMs: number;
  private readonly lockMs: number;
  private readonly waitMs: number;
  private readonly pollMs: number;
  private readonly suspendMs: number;
  private readonly token = `${process.pid}-${Math.random().toString(36).slice(2)}`;

  /**
   * `redis` may be a promise (createRedis reads the AUTH secret first): until it settles, and if it
   * gives undefined, every discovery goes to the inner provider. close() closes the inner provider
   * and the client: the client belongs to this provider.
   */
  constructor(
    private readonly inner: Provider,
    redis: Redis | Promise<Redis | undefined> | undefined,
    opts: SharedProviderOptions,
  ) {
    this.name = inner.name;
    const scope = opts.scope ?? (inner as { scope?: unknown }).scope?.toString() ?? inner.name;
    this.scope = opts.region ? `${scope}@${opts.region}` : scope;
    const period = Math.max(1, opts.periodMs);
    this.ttlMs = Math.max(1, Math.round(opts.ttlMs ?? 3 * period));
    this.freshMs = Math.max(1, Math.round(opts.freshMs ?? 0.9 * period));
    this.emptyFreshMs = Math.max(1, Math.min(this.freshMs, Math.round(opts.emptyFreshMs ?? this.freshMs)));
    this.lockMs = Math.max(1, Math.round(opts.lockMs ?? this.freshMs));
    this.waitMs = opts.waitMs ?? 2000;
    this.pollMs = Math.max(1, opts.pollMs ?? 50);
    this.suspendMs = opts.suspendMs ?? 1000;
    this.connecting = opts.connecting;
    if (redis instanceof Promise) {
      this.pending = redis.then(
        (r) => this.attach(r),
        (err: unknown) => log('error', 'redis client could not be created: discovery is not shared', errorFields(err)),
      );
    } else {
      this.attach(redis);
    }
  }

  private attach(redis: Redis | undefined): void {
    if (!redis) return;
    if (this.closed) {
      redis.disconnect();
      return;
    }
    this.redis = redis;
    watch(redis, () => {
      this.suspendedUntil = 0;
      this.failuresInRow = 0;
    });
  }

  /**
   * Resolves true once the Redis client is connected and ready (waiting for it if need be), false
   * when there is no client. Discovery never waits for this; tests and start-up logs may.
   */
  async connected(): Promise<boolean> {
    await this.pending;
    const r = this.redis;
    if (!r) return false;
    if (r.status !== 'ready') await new Promise<void>((resolve) => r.once('ready', () => resolve()));
    return this.redis === r;
  }

  /** The client if it is worth asking right now: connected, and not just failed. */
  private usable(): Redis | undefined {
    const r = this.redis;
    if (!r || r.status !== 'ready' || Date.now() < this.suspendedUntil) return undefined;
    return r;
  }

  /**
   * A command failed: Redis is left alone for suspendMs. What the connection's 'error' events do not
   * tell is logged here, once until Redis answers again: a server that stopped answering (commands
   * time out on a live connection), and a cluster-mode endpoint, whose MOVED answers mean sharing
   * never works (ioredis's Cluster client is not used: one node group is what the construct makes).
   */
  private failed(err?: unknown): void {
    const message = (err as Error | undefined)?.message ?? '';
    // Only refusals that stay until someone changes something: an ACL (NOPERM) or a foreign key's type
    // (WRONGTYPE). Passing ones (LOADING, BUSY, OOM, READONLY in a failover) pause Redis as a silence does;
    // NOAUTH and WRONGPASS are the connection's, which its 'error' events say.
    const code = (err as Error | undefined)?.name === 'ReplyError' ? lastingRefusal(message) : undefined;
    if (code) {
      // Sharing stops where Redis refuses (it is not paused for the rest); said once per kind, not at
      // every refresh.
      if (!this.refusals.has(code)) {
        this.refusals.add(code);
        log('warn', 'redis refused a command: discovery is not shared where it does (check the ACL, and that nothing else writes these keys)', errorFields(err));
      }
      return;
    }
    // A Redis that hangs (frozen, or its network) costs each new route's lookup the command timeout: once a
    // second at first, then ever less often while it stays silent.
    // Once per try: lookups that were already under way when it began fail with it, and are one failure.
    if (Date.now() >= this.suspendedUntil) this.failuresInRow++;
    this.suspendedUntil = Date.now() + Math.min(this.suspendMs * 2 ** Math.min(this.failuresInRow - 1, 10), Math.max(this.suspendMs, MAX_SUSPEND_MS));
    const why = /^(?:MOVED|ASK|CLUSTERDOWN|CROSSSLOT) /.test(message)
      ? 'cluster'
      : /^OOM /.test(message)
        ? 'full'
        : /timed out/i.test(message) && this.redis?.status === 'ready'
          ? 'silent'
          : undefined;
    if (why === 'silent' && this.failuresInRow >= SILENT_TRIES_BEFORE_RECONNECT) {
      // No answer on this connection for several tries: it is made anew (ioredis reconnects, with a
      // fresh look-up of the endpoint's name); 'ready' on it ends the suspension.
      log('warn', 'redis has not answered on its connection for several tries: reconnecting', { tries: this.failuresInRow });
      this.failuresInRow = 0;
      this.redis?.disconnect(true);
    }
    if (why === undefined || this.trouble === why) return;
    this.trouble = why;
    if (why === 'cluster') log('error', 'REDIS_URL is a cluster-mode Redis, which is not supported: discovery is not shared', errorFields(err));
    else if (why === 'full') log('warn', 'redis is full (maxmemory) and refuses writes: discovery goes on without sharing', errorFields(err));
    else log('warn', 'redis is not answering: discovery goes on without sharing', errorFields(err));
  }

  /**
   * A command answered: a silence or a full Redis failed() logged is over (a cluster's nodes answer for
   * their own slots only: that stays). A full Redis still answers reads: its end is a write that passes.
   */
  private answered(wrote = false): void {
    this.failuresInRow = 0;
    if (this.trouble !== 'silent' && !(this.trouble === 'full' && wrote)) return;
    this.trouble = undefined;
    log('info', 'redis answering again: discovery is shared');
  }

  async discover(route: RouteKey, signal?: AbortSignal): Promise<Target[]> {
    return (await this.discoverAged(route, signal)).targets;
  }

  /**
   * The targets with their age: one shared by a fleet-mate is as old as its discovery, and whoever takes
   * it (the primary, then its workers) refreshes it a period after that, not a period after asking.
   * Otherwise a proxy that took an entry late in its life would pass over the next one as still fresh,
   * and a change would take nearly two periods to reach it.
   */
  async discoverAged(route: RouteKey, signal?: AbortSignal, maxAgeMs = Infinity): Promise<Found> {
    const fresh = (): Promise<Found> => foundBy(this.inner, route, signal, maxAgeMs);
    const redis = this.usable();
    if (!redis) {
      cacheLookups.inc({ result: 'error' });
      return fresh();
    }
    const key = targetsKey(this.scope, route);
    const lock = lockKey(this.scope, route);
    const early = Number.isFinite(maxAgeMs);
    // A short lock of its own for an early ask (see below), the period's otherwise.
    const ownLock = early ? `${lock}:early` : lock;
    let shared: Shared | undefined;
    let won: boolean;
    try {
      ({ shared } = await this.read(redis, key));
      // An early ask (maxAgeMs) judges by when the answer was written: one a fleet-mate wrote a moment
      // ago on the same refusals is as new as any, however long its discovery took; but not one it took
      // from records fetched before (agedMs).
      if (shared && shared.ageMs < (shared.targets.length ? this.freshMs : this.emptyFreshMs) && (early ? shared.writtenMs + shared.agedMs : shared.ageMs) < maxAgeMs) {
        this.answered();
        cacheLookups.inc({ result: 'hit' });
        return { targets: shared.targets, ageMs: shared.ageMs };
      }
      // An answer found since its targets refused is wanted (maxAgeMs): the period's lock, which may
      // be held for most of a period after the last refresh, does not hold it off; a short one of its
      // own does, so that one proxy of the fleet asks AWS and the others take its answer.
      won = (await redis.set(ownLock, this.token, 'PX', early ? EARLY_LOCK_MS : this.lockMs, 'NX')) === 'OK';
      this.answered(true);
    } catch (err) {
      // Down or slow: this proxy discovers by itself. The outage is logged once (watch(), failed()).
      this.failed(err);
      cacheLookups.inc({ result: 'error' });
      return fresh();
    }

    if (won) return this.refresh(redis, key, ownLock, early ? EARLY_LOCK_MS : this.lockMs, route, signal, maxAgeMs);
    // Our locks always expire, within a period: one that does not, or that is set for ten times as long
    // (a fleet-mate's period is not that different), was not set by a proxy, and would hold every proxy
    // off this route for good or for its day. Given our expiry, it goes like one of ours would.
    if (!early) redis.pttl(lock).then((t) => (t === -1 || t > 10 * this.lockMs ? redis.pexpire(lock, this.lockMs) : 0)).catch(() => undefined);
    // An answer found since is wanted: not the previous one, but the one the lock's holder writes.
    if (!early && shared && shared.ageMs !== Infinity) {
      // Another proxy is refreshing right now; until it writes, the previous result is the best. Said
      // to be just fresh no more: asked again a tenth of a period on, once that proxy has written (not
      // at every tick of the refresh loop, as its true age would have it).
      cacheLookups.inc({ result: 'hit' });
      return { targets: shared.targets, ageMs: Math.min(shared.ageMs, this.freshMs) };
    }
    const theirs = await this.waitForOther(redis, key, ownLock, shared?.raw, signal);
    if (theirs) {
      cacheLookups.inc({ result: 'hit' });
      return { targets: theirs.targets, ageMs: Math.min(theirs.ageMs, this.freshMs) };
    }
    cacheLookups.inc({ result: 'miss' });
    return fresh();
  }

  private async refresh(redis: Redis, key: string, lock: string, lockMs: number, route: RouteKey, signal: AbortSignal | undefined, maxAgeMs: number): Promise<Found> {
    cacheLookups.inc({ result: 'miss' });
    const started = Date.now();
    let found: Found;
    try {
      found = await foundBy(this.inner, route, signal, maxAgeMs);
    } catch (err) {
      // Only if the lock is still ours (expired to 1 ms: gone).
      if (!isThrottling(err)) this.shortenOwnLock(redis, lock, 1);
      throw err;
    }
    const { targets } = found;
    // Not awaited: a request never waits on writing the shared copy. Its age is the time since what it
    // says was found: the wait for it, or the shared records' age when that is more.
    // More than a reader takes would be written for nobody: each proxy discovers such a pool itself.
    if (targets.length <= MAX_SHARED_TARGETS) {
      redis.set(key, encodeTargets(targets, this.ttlMs, Math.max(Date.now() - started, found.ageMs), Date.now(), found.ageMs), 'PX', this.ttlMs).catch((err: unknown) => this.failed(err));
    }
    // The lock lasts as long as the answer is fresh, from when it was found: an empty answer's less
    // than a period (held longer, it would keep everyone, this proxy too, on "empty" past
    // NEGATIVE_CACHE_TTL), and one taken from records another port fetched (found.ageMs old already)
    // that much less, or the route would be refreshed from them until a period after the lock was
    // taken: nearly two after they were fetched. Never lengthened (an early ask's lock is shorter than
    // that already). Only if the lock is still ours: a discovery slower than the lock lets another
    // proxy take it.
    const holdMs = Math.max(1, (targets.length === 0 ? Math.min(this.emptyFreshMs, lockMs) : lockMs) - found.ageMs);
    if (holdMs < lockMs) this.shortenOwnLock(redis, lock, holdMs);
    return found;
  }

  /**
   * Shortens `lock` to `ms` if it is still this proxy's: atomically, by a script. Where an ACL refuses
   * the script (EVAL, or the GET in it), by PEXPIRE alone: at worst a fleet-mate's lock, taken since ours
   * expired, is shortened, which costs one more discovery; left a period long, the lock held every proxy
   * on an empty or failed answer for that period, not NEGATIVE_CACHE_TTL (or the retry after a failure).
   */
  private shortenOwnLock(redis: Redis, lock: string, ms: number): void {
    redis.eval(SHORTEN_OWN_LOCK, 1, lock, this.token, ms).catch((err: unknown) => {
      this.failed(err);
      if ((err as Error | undefined)?.name === 'ReplyError' && lastingRefusal((err as Error).message) === 'NOPERM') {
        redis.pexpire(lock, ms).catch((e: unknown) => this.failed(e));
      }
    });
  }

  /**
   * The shared value and its age: time since written (Redis's clock) plus how long its discovery took;
   * with `lock`, that lock's PTTL too (-2: none), in the same round trip (PTTL, not EXISTS: what
   * README's ACL line allows).
   */
  private async read(redis: Redis, key: string, lock?: string): Promise<{ shared: Shared | undefined; lockPttl?: number }> {
    // At most one byte past the limit: a value larger than any proxy writes is never downloaded whole
    // (a poisoned 500 MB one would be, into the primary, at every refresh). A missing key reads as ''.
    const pipeline = redis.pipeline().getrange(key, 0, MAX_SHARED_BYTES).pttl(key);
    const res = await (lock === undefined ? pipeline : pipeline.pttl(lock)).exec();
    if (!res) throw new Error('redis pipeline aborted');
    const [[getErr, raw], [ttlErr, pttl], lockRes] = res as [[Error | null, string | null], [Error | null, number], [Error | null, number]?];
    if (lockRes?.[0]) throw lockRes[0];
    return { shared: this.parse(key, getErr, raw, ttlErr, pttl), ...(lockRes ? { lockPttl: lockRes[1] } : {}) };
  }

  /** GETRANGE's and PTTL's replies for `key`, as the shared value (undefined: none of ours). */
  private parse(key: string, getErr: Error | null, raw: string | null, ttlErr: Error | null, pttl: number): Shared | undefined {
    if (getErr && getErr.name === 'ReplyError' && lastingRefusal(getErr.message) === 'WRONGTYPE') {
      // Something else's key of another type where ours goes (a hash, a list): nothing of ours to read.
      // Read as none, so that this proxy refreshes and its SET replaces it, rather than every proxy
      // asking AWS each period for as long as it stays.
      if (!this.refusals.has('WRONGTYPE read')) {
        this.refusals.add('WRONGTYPE read');
        log('warn', 'a Redis key of ours holds another type (something else writes these keys): it is replaced (said once)', { key });
      }
      return undefined;
    }
    if (getErr) throw getErr;
    if (ttlErr) throw ttlErr;
    const value = decodeTargets(raw);
    if (!value) return undefined;
    // Time since written: the TTL it was stored with, less what is left. A fleet-mate with another
    // NODE_CHECK_PERIOD writes with another TTL, and its entry ages as truly as ours. One whose expiry
    // is past the TTL it claims, or that never expires, was not written by a proxy: none of ours.
    const writtenMs = pttl >= 0 && pttl <= value.ttl ? value.ttl - pttl : Infinity;
    return { targets: value.targets, ageMs: writtenMs + value.took, writtenMs, agedMs: value.aged ?? 0, raw: raw!, pttl };
  }

  /**
   * Polls for the result of the proxy holding `lock`, at most waitMs. undefined: go to AWS. The
   * holder's answer is a value written since the wait began (`before` is what was there), with an
   * expiry: a fleet-mate with a longer NODE_CHECK_PERIOD writes with a longer one, and still counts;
   * a value that was there all along, or never expires, is not an answer. A lock gone with no answer
   * written (its holder's discovery failed, or the lock expired) is waited on no more.
   */
  private async waitForOther(redis: Redis, key: string, lock: string, before: string | undefined, signal?: AbortSignal): Promise<Shared | undefined> {
    const deadline = Date.now() + this.waitMs;
    while (Date.now() < deadline) {
      signal?.throwIfAborted();
      await new Promise((r) => setTimeout(r, Math.min(this.pollMs, Math.max(0, deadline - Date.now()))));
      try {
        const { shared: value, lockPttl } = await this.read(redis, key, lock);
        if (value && value.raw !== before && value.pttl >= 0) return value;
        if (lockPttl === -2) return undefined;
      } catch (err) {
        this.failed(err);
        return undefined;
      }
    }
    return undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.connecting?.abort();
    const r = this.redis;
    this.redis = undefined;
    if (r) {
      // QUIT is polite but waits on the server; a dead or slow server must not delay shutdown.
      if (r.status === 'ready') await within(r.quit().catch(() => undefined), 500);
      if (r.status !== 'end') {
        const ended = new Promise((res) => r.once('end', res));
        r.disconnect();
        await within(ended, 1000);
      }
    }
    await this.inner.close?.();
  }
}

export interface RedisClientOptions {
  /** A Redis command slower than this fails (and discovery goes to AWS). @default 300 */
  readonly commandTimeoutMs?: number;
  /** @default 2000 */
  readonly connectTimeoutMs?: number;
  /** Longest wait between reconnection attempts. @default 2000 */
  readonly maxReconnectDelayMs?: number;
  /** Client for REDIS_AUTH_SECRET_ARN; one is made (and destroyed) when absent. */
  readonly secretsClient?: SecretsManagerClient;
  /** First wait before REDIS_AUTH_SECRET_ARN is read again after a failure; doubled each time up to MAX_SECRET_RETRY_MS. @default 10000 */
  readonly secretRetryMs?: number;
  /** Ends those tries (the provider closing): the client is then never made. */
  readonly signal?: AbortSignal;
}

/** The longest wait between two reads of an AUTH secret that could not be read. */
export const MAX_SECRET_RETRY_MS = 300_000;

/** How often a Redis that keeps answering READONLY is said to (a replica given as REDIS_URL does for good). */
export const READONLY_SAID_EVERY_MS = 60_000;

/** The ioredis options of the proxy: fail fast, never queue, reconnect forever with a capped backoff. */
export function redisOptions(opts: RedisClientOptions = {}): RedisOptions {
  const cap = opts.maxReconnectDelayMs ?? 2000;
  let readOnlySaidAt = -Infinity;
  return {
    enableOfflineQueue: false,
    commandTimeout: opts.commandTimeoutMs ?? 300,
    connectTimeout: opts.connectTimeoutMs ?? 2000,
    maxRetriesPerRequest: 1,
    autoResendUnfulfilledCommands: false,
    retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 10), cap),
    // After an ElastiCache failover the old primary answers READONLY: reconnect to the new one. A
    // REDIS_URL naming a replica (a reader endpoint) answers it for good: said, or sharing would stop
    // without a word (each command times out while the client reconnects).
    reconnectOnError: (err: Error) => {
      if (!err.message.startsWith('READONLY')) return false;
      if (Date.now() - readOnlySaidAt >= READONLY_SAID_EVERY_MS) {
        readOnlySaidAt = Date.now();
        log('warn', 'redis refuses writes as a read-only replica: discovery is not shared while it does (a failover under way, or REDIS_URL names a replica or reader endpoint: give the primary)', errorFields(err));
      }
      return 2;
    },
    // RESP2: every Redis and ElastiCache version speaks it; we need GET, SET and PTTL only.
    protocol: 2,
    connectionName: 'karma-proxy',
  };
}

/** REDIS_AUTH_SECRET_ARN's token, read until it is (createRedis), or undefined once `opts.signal` ends the tries. */
async function readAuthToken(arn: string, region: string | undefined, opts: RedisClientOptions): Promise<string | undefined> {
  const sm = opts.secretsClient ?? createSecretsManagerClient({ region });
  let waitMs = opts.secretRetryMs ?? 10_000;
  let failed = false;
  try {
    while (!opts.signal?.aborted) {
      try {
        const token = authTokenOf(await fetchSecretString(arn, sm, opts.signal));
        if (failed) log('info', 'read the Redis AUTH token: discovery is shared', { secret: arn });
        return token;
      } catch (err) {
        // Said once; the tries after it are quiet until one succeeds. An abort (closing) is no failure.
        if (opts.signal?.aborted) break;
        if (!failed) log('error', 'cannot read the Redis AUTH token: discovery is not shared until it can be (tried again, at most every 5 minutes)', { secret: arn, retryInMs: waitMs, ...errorFields(err) });
        failed = true;
      }
      // Ends at once on an abort, one said while the read was under way too (the loop then stops).
      await wait(waitMs, undefined, { signal: opts.signal, ref: false }).catch(() => undefined);
      waitMs = Math.min(2 * waitMs, MAX_SECRET_RETRY_MS);
    }
    return undefined;
  } finally {
    if (!opts.secretsClient) sm.destroy();
  }
}

/** The AUTH token from a SecretString: the string itself, or a JSON object's token/password field. */
export function authTokenOf(secret: string): string {
  const t = secret.trim();
  if (t.startsWith('{')) {
    try {
      const o = JSON.parse(t) as Record<string, unknown>;
      for (const k of ['token', 'authToken', 'auth_token', 'password']) if (typeof o[k] === 'string' && o[k]) return o[k] as string;
    } catch {
      // Not JSON after all: the string is the token.
    }
  }
  return t;
}

/**
 * The Redis client of REDIS_URL (`redis://`, `rediss://` for TLS, user and password allowed; a bare
 * `host:port` arrives here already as `redis://host:port`), or undefined without REDIS_URL. With
 * REDIS_AUTH_SECRET_ARN, the secret's SecretString is the password: a secret that cannot be read (the
 * network or credentials not up yet at boot, throttling, a policy fixed later) leaves the proxy without
 * Redis (logged), not without service, and is read again, 10 s later and then less and less often (at
 * most every 5 minutes), until it is (logged too) or `opts.signal` ends the tries (then undefined).
 */
export async function createRedis(
  config: Pick<Config, 'redisUrl' | 'redisAuthSecretArn' | 'awsRegion'>,
  opts: RedisClientOptions = {},
): Promise<Redis | undefined> {
  if (!config.redisUrl) return undefined;
  let url = config.redisUrl;
  if (config.redisAuthSecretArn) {
    const token = await readAuthToken(config.redisAuthSecretArn, config.awsRegion, opts);
    if (token === undefined) return undefined;
    const u = new URL(url);
    u.password = encodeURIComponent(token);
    url = u.toString();
  }
  const redis = new Redis(url, redisOptions(opts));
  watch(redis);
  return redis;
}
