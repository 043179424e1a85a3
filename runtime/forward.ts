/**
 * Forwarding: a request and a chosen target in, the upstream's response (or a clean 5xx) out.
 *
 * Plain HTTP requests go through our own upstream client (upstream.ts: net sockets and node's llhttp
 * parser, one keep-alive pool per target) rather than http-proxy or http.request: http-proxy pipes the
 * request body upstream the moment it is called, so when a connection is then refused the body is
 * gone and the request cannot be retried on another target, and node:http's client side was half a
 * worker's CPU. Here the body starts flowing only once the upstream socket is connected. WebSocket
 * upgrades use http-proxy's `ws` pass.
 *
 * Outcomes map to statuses as fastify-reply-from does: refused or reset is 502, a silent upstream
 * 504, no target 503 (with Retry-After). The cause is kept for the log and the metric.
 */
import { type ClientRequest, type IncomingMessage, STATUS_CODES } from 'node:http';
import { randomFillSync } from 'node:crypto';
import httpProxy from 'http-proxy';
import type { Pool, TargetRegistry, TargetState } from './balancer';
import type * as net from 'node:net';
import { afterPoll, answerHandshake, type ClientCut, httpDate, linger, type Request, type Response, type ResponseHandler } from './downstream';
import { answerFault, connectionOf, flat, MAX_RESPONSE_HEAD_BYTES, type RenderedHead, type UpstreamHandler, type UpstreamRequest, type UpstreamRequestOptions, type UpstreamResponse } from './upstream';
import { countChunk } from './memory';
import { within } from './types';
import { countSuccess, failedConnections, limitHits, proxyErrors, rejectedRequests, retriesTotal, upstreamErrors } from './metrics';

export interface ForwardOptions {
  readonly connectTimeoutMs: number;
  readonly upstreamTimeoutMs: number;
  readonly retries: number;
  /** The port clients connected to, for X-Forwarded-Port. */
  readonly listenPort: () => number;
  /** TRUST_FORWARDED_PROTO: keep the X-Forwarded-Proto and -Port a TLS terminator in front sent. @default false */
  readonly trustForwardedProto?: boolean;
  /** HTTP health checks judge every target (a target that speaks no HTTP fails them). @default false */
  readonly httpChecks?: boolean;
  /**
   * A target of `pool` refused a connection or took none within POOL_TIMEOUT, or every one is shut off
   * by its breaker: they may have left the route (routes.ts suspect()). The rediscovery under way, if
   * any: a request with a retry left and no other target waits for it (at most REDISCOVERY_WAIT_MS).
   */
  readonly onRefused?: (pool: Pool) => Promise<unknown> | undefined;
}

/**
 * X-Forwarded-Proto and X-Forwarded-Port for the target: the proxy's own (`http`, the port clients
 * connected to), or, with TRUST_FORWARDED_PROTO, the last of those the client sent when it is `http` or
 * `https` (a TLS terminator in front: CloudFront, another load balancer), with its port, or the
 * scheme's when it sent none.
 */
export function forwardedProto(sentProto: string | undefined, sentPort: string | undefined, listenPort: string, trust: boolean): { proto: string; port: string } {
  if (!trust || sentProto === undefined) return { proto: 'http', port: listenPort };
  // The last of a list, as for X-Forwarded-For: the front in front of the proxy appended it; whatever
  // comes before is what its client claimed.
  const last = (list: string): string => list.slice(list.lastIndexOf(',') + 1).trim();
  const proto = last(sentProto).toLowerCase();
  if (proto !== 'http' && proto !== 'https') return { proto: 'http', port: listenPort };
  const n = sentPort === undefined ? undefined : last(sentPort);
  const valid = n !== undefined && /^\d{1,5}$/.test(n) && Number(n) >= 1 && Number(n) <= 65535;
  return { proto, port: valid ? n : proto === 'https' ? '443' : '80' };
}

/**
 * The longest a retry waits for its route's rediscovery when its target refused and no other is left:
 * a discovery's usual time, well inside a client's patience; a slower one ends in the 502 it would have had.
 */
export const REDISCOVERY_WAIT_MS = 2000;
/**
 * How long after a target's breaker opened a request that finds every breaker open waits for its route's
 * rediscovery: a deploy's new tasks are found within it; an outage makes no more than this of waits.
 */
export const RECENT_OPEN_MS = 5000;

/**
 * Every breaker of `pool` open: its targets may all have left (a deploy that replaced them), and its
 * rediscovery is asked for (begun now, or the one under way). Just after a breaker opened (on any worker)
 * that rediscovery is the one to wait for: a request that came in between would otherwise get a 503 a
 * moment before the new tasks are known. Later (an outage: they fail but AWS still lists them), or when
 * none may begin (one ended a moment ago), undefined: the 503 is at once.
 */
function rediscoveryToAwait(opts: ForwardOptions, pool: Pool): Promise<unknown> | undefined {
  if (pool.size === 0) return undefined;
  const rediscovery = opts.onRefused?.(pool);
  return rediscovery && pool.openedWithin(RECENT_OPEN_MS) ? rediscovery : undefined;
}

/**
 * `pool_full`: every one of the target's POOL_SIZE sockets stayed busy for UPSTREAM_TIMEOUT.
 * `bad_response`: the target answered HTTP that breaks HTTP/1.1's rules (bare LF, two Content-Lengths, …).
 * `not_http`: the target answered bytes that are no HTTP at all (another protocol on that port).
 * `head_too_large`: the target's answer head was over MAX_RESPONSE_HEAD_BYTES (upstream.ts).
 */
export type FailureKind = 'refused' | 'reset' | 'timeout' | 'connect_timeout' | 'dns' | 'pool_full' | 'bad_response' | 'not_http' | 'head_too_large' | 'other';

/**
 * Told once what became of a forwarded request; `tag` is what the caller gave forward() (the route), so
 * one function serves every request.
 */
export type Done = (req: Request, tag: string, o: Outcome) => void;

/** What became of one forwarded request, for the access log and metrics. */
export interface Outcome {
  status: number;
  target: string | undefined;
  attempts: number;
  /**
   * What went wrong with the last try (also of an answer the target cut after its status was on its
   * way: the status stays), `client_gone`: the client left with its answer under way (its status
   * stays), `client_timeout`: the proxy cut a client that took none of its answer for IDLE_TIMEOUT (its
   * status stays), or `cut_at_shutdown`: the proxy cut it at SHUTDOWN_TIMEOUT.
   */
  error: FailureKind | 'client_gone' | 'client_timeout' | 'cut_at_shutdown' | undefined;
}

// Hop-by-hop headers (RFC 9110 §7.6.1, plus the old Keep-Alive/Proxy-Connection), never forwarded.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);
// Headers the proxy sets itself (X-Forwarded-For appended to), or drops: `Forwarded` (RFC 7239) is the
// client's to invent, and a target that reads it before X-Forwarded-* (Spring does) would take its word
// for the client's address, scheme and host.
const OWN = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-port', 'x-forwarded-host', 'x-amzn-trace-id', 'forwarded', 'expect']);
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);
/**
 * An idempotent request's body up to this size, announced by Content-Length, is kept as it goes to the
 * target: when the target resets before answering, the whole body (once it has arrived) goes to the next
 * one. A larger or chunked body is streamed only, and such a request is not retried after it was sent.
 */
const REPLAY_LIMIT = 64 * 1024;
/**
 * Lengths of the names above: a header whose name has none of them (and no `_`) is none of them, so the
 * everyday header is passed on without lower-casing its name (which allocates a string).
 */
const SPECIAL_LENGTHS = new Set([...HOP_BY_HOP, ...OWN].map((n) => n.length));
// Names a client may not smuggle past us in underscore spelling (`X_Forwarded_For`, `Transfer_Encoding`):
// CGI-style backends (PHP, WSGI, Rack) fold `_` and `-` together and would read them as the real thing.
const GUARDED = new Set([...HOP_BY_HOP, ...OWN, 'host', 'content-length']);
/** Informational answers (103 Early Hints) one request passes on to its client; more are dropped. */
const MAX_INFORMATIONAL = 4;
/** How many keep-alive connections found closed by the target one request may skip. */
const MAX_STALE = 3;
/**
 * A reset on a kept-alive socket counts as the keep-alive race (the target closed it as the request
 * came: its RST follows within a round trip) only this soon after the request went out. Later, the
 * target had it, and may have acted on it: an ordinary reset, under RETRIES and told to the breaker.
 */
export const STALE_RESET_WITHIN_MS = 200;
/**
 * Time as the event loop lives it: a tick every STALE_TICK_MS that a busy loop does not catch up on. A
 * reset read late because this worker was busy (a stall of 300 ms) is still read as soon after the
 * request as the loop allowed, and still the race.
 */
const STALE_TICK_MS = 50;
let loopTicks = 0;
setInterval(() => loopTicks++, STALE_TICK_MS).unref();

/**
 * A try that ended without a response, and whose fault it was:
 * `client_gone` the client left first; `client_timeout` the client stopped sending its body;
 * `stale` a keep-alive connection the target had already closed, before anything that cannot be
 * replayed was sent (safe to try again on a fresh connection, and no mark against the target);
 * `shutting_down` SHUTDOWN_TIMEOUT came before any of it was sent; `target_left` the target left its
 * route while the request waited for one of its sockets (nothing sent: another target takes it).
 */
class UpstreamError extends Error {
  constructor(
    readonly kind: FailureKind | 'client_gone' | 'client_timeout' | 'stale' | 'shutting_down' | 'target_left',
    /** Nothing of the request reached the target: safe to retry with any method. */
    readonly beforeSend: boolean,
    /** Says nothing about the target's health (a keep-alive race, an answer head over our limit), so its breaker is not told. */
    readonly blameless = false,
  ) {
    super(kind);
  }
}

/** What kind of forwarding failure a socket or parser error is (the `kind` of karma_upstream_errors_total). */
export function kindOf(err: NodeJS.ErrnoException): FailureKind {
  switch (err.code) {
    case 'ECONNREFUSED':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'refused';
    case 'ECONNRESET':
    case 'EPIPE':
    case 'ECONNABORTED':
      return 'reset';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'dns';
    case 'ETIMEDOUT':
      return 'connect_timeout';
    case 'HPE_HEADER_OVERFLOW':
      return 'head_too_large';
    case 'HPE_INVALID_CONSTANT':
      // "Expected HTTP/": the answer did not even begin as HTTP does.
      return 'not_http';
    default:
      // llhttp's other verdicts on the response (HPE_UNEXPECTED_CONTENT_LENGTH, HPE_CR_EXPECTED, …) and ours (answerFault).
      return err.code?.startsWith('HPE_') ? 'bad_response' : 'other';
  }
}

/** The target refused the connection (or its host was unreachable): what a passing health check disproves (CircuitBreaker.healthPassed). */
export const refusedFailure = (kind: string): boolean => kind === 'refused';

/** The target took no connection (refused, or none within POOL_TIMEOUT): it may have left its route (onRefused). */
export const mayHaveLeft = (kind: string): boolean => kind === 'refused' || kind === 'connect_timeout';
/**
 * Failures that are no mark against the target's breaker. An answer head over our limit is the
 * application's answer, not a sign of a failing target (any target would say the same). Nor is HTTP that
 * breaks the rules (bare LF, a doubled Content-Length): the target is alive and speaks HTTP, and it is
 * most often one URL of the application, which every target answers alike; five requests for it, from
 * anyone, would take every target out for CIRCUIT_BREAKER_TIMEOUT. An answer that is no HTTP at all
 * (another protocol on the port) is a mark unless HTTP health checks judge the targets: they fail such a
 * target, and without them the breaker is all that keeps traffic off it.
 */
export const blameless = (kind: FailureKind, httpChecks: boolean | undefined): boolean =>
  kind === 'head_too_large' || kind === 'bad_response' || (kind === 'not_http' && httpChecks === true);

/** An answer that could not be relayed: tried again where a reset would be (the next target may answer well). */
const garbled = (kind: Outcome['error']): boolean => kind === 'bad_response' || kind === 'not_http';

/** The proxy's own answer to a failed try, the same for plain requests and handshakes: 504 when the target was silent, else 502. */
const failureStatus = (kind: Outcome['error']): number => (kind === 'timeout' || kind === 'connect_timeout' ? 504 : 502);
/** ... and its body. */
const failureMessage = (kind: Outcome['error']): string =>
  failureStatus(kind) === 504 ? 'upstream timed out'
    : kind === 'head_too_large' ? 'upstream response headers too large'
      : garbled(kind) ? 'upstream sent an invalid response' : 'upstream connection failed';

let lastPort = -1;
let lastPortString = '';
/** The listening port as a header value, made once rather than per request. */
function portString(port: number): string {
  if (port !== lastPort) {
    lastPort = port;
    lastPortString = String(port);
  }
  return lastPortString;
}

/**
 * The names a Connection header lists (hop-by-hop too, RFC 9110 §7.6.1), lower-cased, and every length
 * a header name must have to be dropped with them: a name of another length is passed on without
 * lower-casing it.
 */
interface Listed {
  readonly names: ReadonlySet<string>;
  readonly lengths: ReadonlySet<number>;
}
/** Connection values seen, parsed: clients and targets send a handful (`keep-alive`, `close`, `Upgrade`). */
const listedCache = new Map<string, Listed>();
const LISTED_CACHE_SIZE = 64;

function listedIn(connection: string | undefined): Listed | undefined {
  if (!connection) return undefined;
  let l = listedCache.get(connection);
  if (l === undefined) {
    const names = new Set(connection.split(',').map((t) => t.trim().toLowerCase()));
    l = { names, lengths: new Set([...SPECIAL_LENGTHS, ...[...names].map((n) => n.length)]) };
    // Values are chosen by clients: only short ones are kept, and the cache starts over when full.
    if (connection.length > 256) return l;
    if (listedCache.size >= LISTED_CACHE_SIZE) listedCache.clear();
    listedCache.set(connection, l);
  }
  return l;
}

/** What upstreamHead reads of a request. */
export type HeadSource = Pick<Request, 'method' | 'url' | 'rawHeaders' | 'ip'> & { readonly headers: { readonly connection?: string; readonly host?: string }; trace?: string };

const EMPTY_LIST = /^[ \t,]*$/;
/** A trace header's Root as an ALB reads it: version 1, the epoch second in 8 hex digits, 24 hex digits. */
const TRACE_ROOT = /(?:^|;)[ \t]*Root=1-[0-9a-fA-F]{8}-[0-9a-fA-F]{24}[ \t]*(?:;|$)/;
const SELF_FIELD = /^[ \t]*Self=/;
/** Past this an ALB keeps none of a client's trace header and starts a new one. */
const TRACE_MAX = 7 * 1024;
/** Random bytes for trace IDs, drawn 12 at a time: one system call per 512 requests. */
const traceRandom = Buffer.alloc(12 * 512);
let traceRandomAt = traceRandom.length;

/** `1-<epoch seconds, 8 hex digits>-`, made once a second. */
let tracePrefix = '';
let tracePrefixUntil = 0;

/** A new trace ID as an ALB makes it: `1-<epoch seconds, 8 hex digits>-<96 random bits>`. */
function traceId(): string {
  const now = Date.now();
  // (Made again after the clock stepped back too.)
  if (now >= tracePrefixUntil || now < tracePrefixUntil - 1000) {
    const second = Math.floor(now / 1000);
    tracePrefix = `1-${second.toString(16).padStart(8, '0')}-`;
    tracePrefixUntil = (second + 1) * 1000;
  }
  if (traceRandomAt === traceRandom.length) {
    randomFillSync(traceRandom);
    traceRandomAt = 0;
  }
  return tracePrefix + traceRandom.toString('hex', traceRandomAt, (traceRandomAt += 12));
}

/**
 * The X-Amzn-Trace-Id a target gets, as an ALB sends it: a new `Root=` when the client sent none with a
 * valid Root or a Self (or one over 7 KiB); otherwise the client's fields (a trace begun before us, its
 * own fields kept) behind a `Self=` of this hop, which replaces an earlier hop's Self. Field names are
 * case-sensitive, as AWS reads them.
 */
export function traceHeader(sent: string | undefined): string {
  if (sent === undefined || sent.length > TRACE_MAX) return `Root=${traceId()}`;
  const fields = sent.split(';');
  const hadSelf = fields.some((f) => SELF_FIELD.test(f));
  if (!hadSelf && !TRACE_ROOT.test(sent)) return `Root=${traceId()}`;
  const kept = fields.filter((f) => !SELF_FIELD.test(f) && f.trim() !== '').map((f) => f.trim());
  return kept.length > 0 ? `Self=${traceId()};${kept.join(';')}` : `Self=${traceId()}`;
}

/**
 * The upstream request's head, as it goes on the wire, in one string: the request line as the client
 * sent it, the client's headers minus hop-by-hop ones, X-Forwarded-*, and the empty line. Made once per
 * request (retries send it again) and written as it is.
 */
export function upstreamHead(req: HeadSource, listenPort: string, trustForwardedProto = false): RenderedHead {
  const raw = req.rawHeaders;
  const listed = listedIn(req.headers.connection);
  const lengths = listed?.lengths ?? SPECIAL_LENGTHS;
  let lines = `${req.method} ${req.url} HTTP/1.1\r\n`;
  let hasLength = false;
  let xff: string | undefined;
  let sentProto: string | undefined;
  let sentPort: string | undefined;
  let sentTrace: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    if (lengths.has(name.length) || name.includes('_')) {
      const lower = name.toLowerCase();
      // Connection may name extra hop-by-hop headers, but never Host: the target must see where the request went.
      if (HOP_BY_HOP.has(lower) || (listed?.names.has(lower) && lower !== 'host')) continue;
      if (lower.includes('_') && GUARDED.has(lower.replace(/_/g, '-'))) continue;
      if (OWN.has(lower)) {
        const value = raw[i + 1];
        // An empty line (or commas alone) adds no empty entry to the list.
        if (lower === 'x-forwarded-for') {
          if (!EMPTY_LIST.test(value)) xff = xff === undefined ? value : `${xff}, ${value}`;
        }
        // The last line's: a front that adds rather than replaces puts its own after the client's.
        else if (lower === 'x-forwarded-proto') sentProto = value;
        else if (lower === 'x-forwarded-port') sentPort = value;
        // The first line's: a second one is not another trace of this request.
        else if (lower === 'x-amzn-trace-id') sentTrace ??= value;
        continue;
      }
    }
    if (name.length === 14 && name.toLowerCase() === 'content-length') {
      hasLength = true;
      // Digits only (the parser saw to it), but without leading zeros: a target reading `010` as octal
      // would take 8 bytes for the body and the rest for a request of its own.
      lines += `${name}: ${raw[i + 1].replace(/^0+(?=\d)/, '')}\r\n`;
      continue;
    }
    lines += `${name}: ${raw[i + 1]}\r\n`;
  }
  const ip = req.ip;
  // The proxy's own unless a TLS terminator in front is trusted: nothing made per request for it then.
  const fwd = trustForwardedProto ? forwardedProto(sentProto, sentPort, listenPort, true) : undefined;
  lines += `X-Forwarded-For: ${xff ? `${xff}, ${ip}` : ip}\r\nX-Forwarded-Proto: ${fwd?.proto ?? 'http'}\r\nX-Forwarded-Port: ${fwd?.port ?? listenPort}\r\n`;
  // The Host, whatever the client (or a front) sent: no front in common use sets it (an ALB and
  // CloudFront pass a client's on as it is), so a value "from the front" would be the client's choice,
  // which apps use for absolute URLs (a password reset link pointing elsewhere).
  if (req.headers.host !== undefined) lines += `X-Forwarded-Host: ${req.headers.host}\r\n`;
  const trace = traceHeader(sentTrace);
  req.trace = trace;
  lines += `X-Amzn-Trace-Id: ${trace}\r\n`;
  return { head: flat(lines + '\r\n'), hasLength };
}

/**
 * A WebSocket handshake's headers for http-proxy's pass: the lines upstreamHead renders for a plain
 * request (its filters and X-Forwarded-* of ours, one rule for both paths), as an object of names as
 * the client wrote them (lines of one name under the first's spelling), repeated ones as node:http sends
 * them, with `connection: Upgrade` and the client's `upgrade` (http-proxy reads those in lower case).
 * Handshakes are rare: the head is rendered and read back rather than filtered a second way.
 */
export function handshakeHeaders(req: HeadSource & { readonly headers: { readonly upgrade?: string } }, listenPort: string, trustForwardedProto = false): Record<string, string | string[]> {
  const lines = upstreamHead(req, listenPort, trustForwardedProto).head.split('\r\n');
  const out: Record<string, string | string[]> = {};
  /** Each name as the client first wrote it (node:http sends an object's keys as they are). */
  const written = new Map<string, string>();
  // After the request line, up to the empty line that ends the head.
  for (let i = 1; i < lines.length && lines[i] !== ''; i++) {
    const line = lines[i];
    const colon = line.indexOf(': ');
    const lower = line.slice(0, colon).toLowerCase();
    let name = written.get(lower);
    if (name === undefined) written.set(lower, (name = line.slice(0, colon)));
    const value = line.slice(colon + 2);
    const had = out[name];
    if (had === undefined) out[name] = value;
    else if (lower === 'cookie') out[name] = `${had as string}; ${value}`;
    else out[name] = Array.isArray(had) ? [...had, value] : [had, value];
  }
  out.connection = 'Upgrade';
  if (req.headers.upgrade !== undefined) out.upgrade = req.headers.upgrade;
  return out;
}

/**
 * The head for one try. An HTTP/1.0 client may send no Host, but what goes upstream is HTTP/1.1, which
 * requires one (RFC 9112 §3.2; node:http and nginx targets answer 400 without): the target's address
 * then, as nginx's `proxy_set_header Host $proxy_host` default gives.
 */
function withHost(head: RenderedHead, req: Request, s: TargetState): RenderedHead {
  if (req.headers.host !== undefined) return head;
  const line = head.head.indexOf('\r\n') + 2;
  const host = s.target.host.includes(':') ? `[${s.target.host}]` : s.target.host;
  return { head: `${head.head.slice(0, line)}Host: ${host}:${s.target.port}\r\n${head.head.slice(line)}`, hasLength: head.hasLength };
}

/**
 * A target's header lines for the client, rendered as they go on the wire: minus hop-by-hop ones (and
 * those its Connection header names), minus a 204's or 1xx's Content-Length (RFC 9110 §8.6: never on
 * those, a target's mistake; the answer has no body whatever it says); and whether Content-Length and Date are
 * among them (Response adds what is not).
 */
function clientLines(raw: readonly string[], connection: string | undefined, status: number): { lines: string; hasLength: boolean; hasDate: boolean } {
  const listed = listedIn(connection);
  const lengths = listed?.lengths ?? SPECIAL_LENGTHS;
  let lines = '';
  let hasLength = false;
  let hasDate = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    const n = name.length;
    if (lengths.has(n)) {
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower) || listed?.names.has(lower)) continue;
    }
    let value = raw[i + 1];
    if (n === 14 && name.toLowerCase() === 'content-length') {
      if (status === 204 || status < 200) continue;
      hasLength = true;
      // As a request's (outgoingLines): a client reading `010` as octal would take 8 bytes of the body,
      // and the rest for the start of its next answer.
      if (value.length > 1 && value.charCodeAt(0) === 48) value = value.replace(/^0+(?=\d)/, '');
    } else if (n === 4) hasDate ||= name.toLowerCase() === 'date';
    lines += `${name}: ${value}\r\n`;
  }
  return { lines, hasLength, hasDate };
}

/** A reason phrase is HTAB, SP and visible characters (RFC 9112 §4); llhttp lets other controls through: then none (the standard one is used). */
const clientReason = (reason: string | undefined): string | undefined => (reason === undefined || INVALID_REASON.test(reason) ? undefined : reason);
const INVALID_REASON = /[^\t\x20-\x7e\x80-\xff]/;

/** Writes the response head for the client from the target's. */
function writeDownstreamHead(res: Response, up: UpstreamResponse): void {
  const { lines, hasLength, hasDate } = clientLines(up.rawHeaders, up.headers.connection, up.statusCode);
  res.writeHead(up.statusCode, clientReason(up.statusMessage), lines, hasLength, hasDate);
}

/** Writes a short plain-text answer of the proxy's own, if the response has not started. */
export function answer(res: Response, status: number, message: string, headers?: Record<string, string>): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = message + '\n';
  const length = Buffer.byteLength(body);
  let lines = `Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${length}\r\nCache-Control: no-store\r\n`;
  if (headers) for (const k in headers) lines += `${k}: ${headers[k]}\r\n`;
  res.writeHead(status, undefined, lines, true);
  if (status >= 500) proxyErrors.labels({ code: String(status) }).inc();
  // Response writes strings as latin1 (byte for byte); text that is not ASCII goes as its UTF-8 bytes.
  res.end(length === body.length ? body : Buffer.from(body));
}

const kHandshake = Symbol('karma.handshake');
/** After one side of a WebSocket tunnel ends, how long the other has to close before both are cut. */
export const TUNNEL_HALF_CLOSE_GRACE_MS = 2000;
/** Idle time before TCP keep-alive probes on a tunnel's sockets (the kernel's default is two hours). */
export const TUNNEL_KEEPALIVE_MS = 60_000;

/**
 * A WebSocket tunnel is up between `client` and `target`. A WebSocket has no half-close (its close
 * handshake is in its frames): once either side ends, the other is passed the FIN and given
 * TUNNEL_HALF_CLOSE_GRACE_MS to close, then both are cut, as nginx ends an upgraded connection at
 * either side's end; otherwise a target that ignores the FIN would hold the tunnel (and one of its
 * POOL_SIZE slots) for good. Keep-alive probes find peers that vanished without a word.
 */
function tunnelled(client: net.Socket, target: net.Socket): void {
  client.setKeepAlive(true, TUNNEL_KEEPALIVE_MS);
  target.setKeepAlive(true, TUNNEL_KEEPALIVE_MS);
  const cutLater = (): void => {
    setTimeout(() => {
      client.destroy();
      target.destroy();
    }, TUNNEL_HALF_CLOSE_GRACE_MS).unref();
  };
  client.once('end', cutLater);
  target.once('end', cutLater);
}

/** WebSocket handshake failures where nothing of the target's answer came: tried on the next target. */
const WS_RETRYABLE: ReadonlySet<FailureKind> = new Set<FailureKind>(['refused', 'reset', 'dns', 'connect_timeout']);
const EMPTY = Buffer.alloc(0);

/**
 * http-proxy ends the client's socket right after its error callback; when the handshake moves to
 * another target, that one end() is skipped.
 */
function keepOpenOnce(socket: net.Socket): void {
  const end = socket.end;
  socket.end = function skipped(this: net.Socket) {
    socket.end = end;
    return this;
  } as typeof socket.end;
}
/**
 * A 101's headers for the client, keyed as they were sent (`Sec-WebSocket-Accept`), repeated ones as
 * lists, no prototype to write through: hop-by-hop ones dropped as from any answer (Keep-Alive, those
 * its Connection header names), but for the switch itself, `Connection: Upgrade` and `Upgrade`.
 */
function switchHeaders(raw: readonly string[], connection: string | undefined): Record<string, string | string[]> {
  const listed = listedIn(connection);
  const out: Record<string, string | string[]> = Object.create(null);
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    const lower = name.toLowerCase();
    if (lower === 'connection') {
      out[name] = 'Upgrade';
      continue;
    }
    if (lower !== 'upgrade' && (HOP_BY_HOP.has(lower) || listed?.names.has(lower))) continue;
    const had = out[name];
    out[name] = had === undefined ? raw[i + 1] : Array.isArray(had) ? [...had, raw[i + 1]] : [had, raw[i + 1]];
  }
  return out;
}

type WithHandshake = { [kHandshake]?: (proxyReq: ClientRequest) => void };

/**
 * A target's refusal of a WebSocket handshake (a 401, a 426, …), to the client: status and headers as
 * sent minus hop-by-hop ones, the body as the target framed it by length, else delimited by the close;
 * the connection ends after it either way. The same checks and header lines as for plain answers
 * (answerFault, clientLines, clientReason): false, and nothing written, when answerFault finds the head
 * unusable (the caller answers 502).
 */
function passRefusal(refusal: IncomingMessage, socket: net.Socket): boolean {
  const status = refusal.statusCode ?? 0;
  if (answerFault(status, refusal.httpVersionMajor, refusal.rawHeaders)) return false;
  const { lines, hasDate } = clientLines(refusal.rawHeaders, refusal.headers.connection, status);
  // A Date when the target sent none, as on every other answer (RFC 9110 §6.6.1).
  const head = `HTTP/1.1 ${status} ${clientReason(refusal.statusMessage) || STATUS_CODES[status] || ''}\r\n${lines}${hasDate ? '' : `Date: ${httpDate()}\r\n`}`;
  if (socket.destroyed) {
    refusal.resume();
    return true;
  }
  socket.write(`${head}Connection: close\r\n\r\n`, 'latin1');
  refusal.pipe(socket);
  // Once it is written, the connection ends as after an answer of ours.
  socket.once('finish', () => linger(socket));
  // Cut short by its target's close (a FIN before its Content-Length): node ends the refusal without an
  // error, and without its end the pipe never ends the client's socket. Cut, as any answer cut short.
  refusal.once('close', () => {
    if (!refusal.complete) socket.destroy();
  });
  return true;
}

export class Forwarder {
  // toProxy: the request-target goes to the target as the client sent it, as for plain requests (and
  // without http-proxy's url.parse, which Node deprecates: DEP0169).
  private readonly wsProxy = httpProxy.createProxyServer({ ws: true, xfwd: false, changeOrigin: false, toProxy: true });

  constructor(
    private readonly registry: TargetRegistry,
    private readonly opts: ForwardOptions,
  ) {
    // http-proxy re-throws errors no one handles; each ws() call passes its own callback, this is a backstop.
    this.wsProxy.on('error', () => undefined);
    // The handshake request to the target, handed to the ws() call that made it (through its client socket).
    this.wsProxy.on('proxyReqWs', (proxyReq: ClientRequest, handshake: IncomingMessage, socket: net.Socket) => {
      // The request-target as the client sent it: http-proxy's urlJoin folds `//` into `/` and turns
      // `http:/` into `http://`. The head is not rendered yet (node:http renders it at end()).
      if (handshake.url !== undefined) proxyReq.path = handshake.url;
      const watch = (socket as WithHandshake)[kHandshake];
      (socket as WithHandshake)[kHandshake] = undefined;
      watch?.(proxyReq);
    });
  }

  /**
   * Forwards `req` to a target of `pool`, retrying on the next target when that is safe:
   * any method when nothing was sent, idempotent ones without a body when the target reset or garbled
   * its answer before any of it reached the client. A keep-alive connection the target had closed is
   * not a failure: the request moves to a fresh connection. Calls `done` once, when the response is
   * finished or abandoned.
   */
  forward(req: Request, res: Response, pool: Pool, done: Done, tag = ''): void {
    res.writeContinue(); // the body is wanted now: a client waiting on `Expect: 100-continue` may send it
    new Exchange(this.registry, this.opts, req, res, pool, done, tag).next();
  }

  /** forward(), as a promise that never rejects. */
  web(req: Request, res: Response, pool: Pool): Promise<Outcome> {
    return new Promise((resolve) => this.forward(req, res, pool, (_req, _tag, o) => resolve(o)));
  }

  /**
   * Forwards a WebSocket (or other Upgrade) handshake and then the raw bytes both ways. A handshake whose
   * connection failed before the target answered (refused, reset) is tried on the next target, up to
   * RETRIES, as a plain GET would be.
   */
  ws(req: Request, socket: net.Socket, head: Buffer, pool: Pool): Promise<Outcome> {
    // 499 until something is answered: what a client that leaves first is logged with (server.ts makes
    // it a 503 when the proxy cut the handshake at shutdown).
    const outcome: Outcome = { status: 499, target: undefined, attempts: 0, error: undefined };
    // Filtered and X-Forwarded-* as for plain requests; http-proxy copies these headers to the upstream request.
    const headers = handshakeHeaders(req, String(this.opts.listenPort()), this.opts.trustForwardedProto ?? false);
    // What http-proxy's WebSocket pass reads of a request.
    const handshake = { method: req.method, url: req.url, headers, socket } as unknown as IncomingMessage;
    return new Promise((resolve) => {
      const tried = new Set<TargetState>();
      let asked = false;
      let waitedForRoute = false;
      let finished = false;
      const finish = (): void => {
        if (finished) return;
        finished = true;
        resolve(outcome);
      };
      /** An answer has begun on the socket: the target's 101 or refusal, or one of ours. */
      let answering = false;
      /** The attempt under way's part when the client's socket closes. */
      let onClose: () => void = finish;
      socket.once('close', () => onClose());
      // A FIN before any answer: the client has left (a close and a half-close look the same, as for a
      // plain request), and the handshake is called off at its target. The socket is half-open (the
      // server's allowHalfOpen), so without this its 'close' never came: the target's socket was held,
      // and a 101 that came later opened a WebSocket for nobody. One that came while the route was
      // looked up is seen at once.
      const clientLeft = (): void => {
        if (!answering) socket.destroy();
      };
      if (socket.readableEnded) clientLeft();
      else socket.once('end', clientLeft);
      // Both directions of the tunnel count for memory.ts's collections. http-proxy pipes the target's
      // socket into the client's and then the client's back, in one go: 'pipe' comes between, so
      // listeners added then see the same chunks as the pipes (a paused socket resumes on the next tick).
      socket.once('pipe', (from: net.Socket) => {
        from.on('data', countChunk);
        socket.on('data', countChunk);
      });

      const attempt = (): void => {
        if (socket.destroyed) return finish();
        const pick = pool.pick(tried);
        if (!pick) {
          // As for a plain request: a half-open target whose trial is being claimed or tried elsewhere
          // may be granted or closed in a moment; the board is asked once before the 503.
          if (!asked && pool.askBoard(() => attempt())) {
            asked = true;
            return;
          }
          if (outcome.error) {
            // Every target tried failed to connect: what went wrong with the last one.
            answering = true;
            answerHandshake(socket, outcome.status, failureMessage(outcome.error));
            return finish();
          }
          // Every breaker open just after one opened (a deploy's old tasks stopping): as for a plain
          // request, the route's rediscovery is waited for once before the 503.
          const rediscovery = rediscoveryToAwait(this.opts, pool);
          if (rediscovery && !waitedForRoute) {
            waitedForRoute = true;
            void within(rediscovery, REDISCOVERY_WAIT_MS).then(() => attempt());
            return;
          }
          outcome.status = 503;
          answering = true;
          answerHandshake(socket, 503, 'no target available', 'Retry-After: 5\r\n');
          return finish();
        }
        const s = pick.state;
        const epoch = s.breaker.epoch;
        tried.add(s);
        outcome.target = s.target.id;
        outcome.attempts++;
        // A retry is counted when it reaches a target, not when one is wanted and none is left.
        if (outcome.attempts > 1) retriesTotal.inc();
        s.inflight++;
        let ended = false;
        const end = (): void => {
          if (ended) return;
          ended = true;
          this.registry.done(s);
        };
        /** The target switched protocols, or its refusal is under way: no answer of ours may go into the socket. */
        let switched = false;
        /** Our own answer is written (a 502 or 504): the handshake is over. */
        let answered = false;
        /** The target's verdict, given once: when the handshake is answered or fails, not when the tunnel ends. */
        let judged = false;
        const judge = (ok: boolean, refused = false): void => {
          if (judged) return;
          judged = true;
          if (ok) {
            s.breaker.onSuccess(epoch);
            countSuccess(s.target.id);
          } else s.breaker.onFailure(epoch, undefined, refused);
        };
        /** This try failed before anything of the target's reached the client. */
        const failed = (kind: FailureKind): void => {
          outcome.error = kind;
          outcome.status = failureStatus(kind);
          upstreamErrors.labels({ kind }).inc();
          // Counted with the target either way, as for a plain request.
          failedConnections.labels({ target: s.target.id }).inc();
          // As for a plain request: an answer too large, malformed, or (under HTTP checks) not HTTP is no mark.
          if (blameless(kind, this.opts.httpChecks)) {
            judged = true;
            s.breaker.release(epoch);
            return;
          }
          if (mayHaveLeft(kind)) void this.opts.onRefused?.(pool);
          judge(false, refusedFailure(kind));
        };
        /** ... and is answered: at once, for http-proxy ends the socket right after its error callback. */
        const fail = (kind: FailureKind, message = failureMessage(kind)): void => {
          failed(kind);
          answered = true;
          answering = true;
          answerHandshake(socket, outcome.status, message);
        };
        /** This try's request to the target, once http-proxy has made it. */
        let toTarget: ClientRequest | undefined;
        onClose = (): void => {
          // The client left before the target answered: no verdict either way (a trial is given back),
          // and the handshake is called off at the target.
          if (!judged) {
            judged = true;
            s.breaker.release(epoch);
          }
          if (!switched && !answered) {
            toTarget?.destroy();
            // Whatever a try before this one met: the client leaving is what ended the handshake.
            outcome.status = 499;
            outcome.error = undefined;
          }
          end();
          finish();
        };
        (socket as WithHandshake)[kHandshake] = (proxyReq) => {
          toTarget = proxyReq;
          // An answer to the handshake within UPSTREAM_TIMEOUT, or a 504: http-proxy's proxyTimeout does not
          // reach its WebSocket pass. The tunnel itself has no such clock (http-proxy sets it to 0 on switching).
          proxyReq.setTimeout(this.opts.upstreamTimeoutMs, () => proxyReq.destroy(Object.assign(new Error('no answer to the handshake'), { code: 'HANDSHAKE_TIMEOUT' })));
          // The answer head limit of plain requests, not node:http's 16 KiB: a handshake to a URL whose
          // plain GET is answered must not be a 502 for the same head. Read once the request has its
          // socket (node's ClientRequest sets its parser up then), which is after this event.
          (proxyReq as ClientRequest & { maxHeaderSize?: number }).maxHeaderSize = MAX_RESPONSE_HEAD_BYTES;
          // That clock starts once connected: a target that drops SYNs gets POOL_TIMEOUT to accept, as for
          // a plain request (then the next target), not the kernel's two minutes.
          proxyReq.once('socket', (conn: net.Socket) => {
            if (!conn.connecting) return;
            const timer = setTimeout(() => proxyReq.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })), this.opts.connectTimeoutMs);
            conn.once('connect', () => clearTimeout(timer));
            conn.once('close', () => clearTimeout(timer));
          });
          proxyReq.once('upgrade', (res: IncomingMessage, up: net.Socket) => {
            // http-proxy writes the 101 from this object's keys, which node lower-cases: as the target spelt them.
            res.headers = switchHeaders(res.rawHeaders, res.headers.connection);
            switched = true;
            answering = true;
            outcome.status = 101;
            outcome.error = undefined;
            // The client's bytes read past its handshake go first, ahead of the pipe http-proxy sets up
            // after this listener. Kept here rather than put back into the client's socket (http-proxy's
            // way): bytes waiting there unread would hide the client's FIN until the target answered.
            if (head.length > 0) up.write(head);
            // The target answered: a half-open trial's verdict now, not when the tunnel closes hours later.
            judge(true);
            tunnelled(socket, up);
          });
          // A refusal (any answer but 101) is passed on framed as its own answer. http-proxy's listener would
          // write the target's headers as parsed (Transfer-Encoding and Connection among them) over the
          // decoded body; it is added right after this event, and replaced here before any answer can be read.
          process.nextTick(() => {
            proxyReq.removeAllListeners('response');
            proxyReq.on('response', (refusal: IncomingMessage) => {
              if (passRefusal(refusal, socket)) {
                outcome.status = refusal.statusCode!;
                outcome.error = undefined;
                switched = true;
                answering = true;
                judge(true);
                return;
              }
              refusal.destroy();
              fail('bad_response', 'upstream connection failed');
            });
          });
        };
        this.wsProxy.ws(
          handshake,
          socket,
          EMPTY,
          { target: { host: s.target.host, port: s.target.port }, proxyTimeout: this.opts.upstreamTimeoutMs },
          (err: NodeJS.ErrnoException) => {
            if (switched || answered) {
              // The tunnel (or the refusal being passed on) broke: it closes, nothing is written into it.
              socket.destroy();
              end();
              return;
            }
            if (ended) return; // this try is over (moved on to the next target)
            if (err.code === 'HANDSHAKE_TIMEOUT') {
              fail('timeout');
              return end();
            }
            const kind = kindOf(err);
            // Nothing of the target's has come: another target may answer, as for a GET without a body.
            if (WS_RETRYABLE.has(kind) && this.retriesLeft(outcome) && !socket.destroyed) {
              failed(kind);
              end();
              keepOpenOnce(socket);
              process.nextTick(attempt);
              return;
            }
            fail(kind);
            end();
          },
        );
      };
      attempt();
    });
  }

  /** Whether a WebSocket handshake tried `outcome.attempts` times may be tried once more (RETRIES). */
  private retriesLeft(outcome: Outcome): boolean {
    return outcome.attempts <= this.opts.retries;
  }

  close(): void {
    this.wsProxy.close();
  }
}

/**
 * One client request on its way through the targets of a pool: each try, the retry decision, the outcome.
 * One object per request whose methods the upstream client calls directly (UpstreamHandler): the hot path
 * allocates no promises, closures or listeners per try.
 */
class Exchange implements UpstreamHandler, ResponseHandler {
  private readonly outcome: Outcome = { status: 0, target: undefined, attempts: 0, error: undefined };
  private readonly head: RenderedHead;
  private readonly body: boolean;
  private readonly retryOnReset: boolean;
  /** Targets this request already failed on (made on the first retry). */
  private tried: Set<TargetState> | undefined;
  private retries = 0;
  /** A try of this request failed once it had been sent, and that failure was counted against its target (settle()). */
  private failedAfterSend = false;
  /** A retry was granted and has not reached a target yet (karma_retries_total counts it then). */
  private retrying = false;
  private stale = 0;
  /** Moved from the line of a target that left: since when it has waited for a socket (onTargetLeft). */
  private movedSince: number | undefined;
  /** When this try began to send (performance.now(), and loopTicks): a reset long after is no keep-alive race. */
  private sentAt = 0;
  private sentTick = 0;

  /** Within STALE_RESET_WITHIN_MS of sending, by the clock or by the turns of a loop that was busy meanwhile. */
  private soonAfterSending(): boolean {
    return performance.now() - this.sentAt < STALE_RESET_WITHIN_MS || (loopTicks - this.sentTick) * STALE_TICK_MS < STALE_RESET_WITHIN_MS;
  }
  /** Informational answers passed on so far (at most MAX_INFORMATIONAL). */
  private informational = 0;
  /** The board was asked about targets held by another worker's trial (once per request). */
  private asked = false;
  /** A try has taken the client's body (piped it to its target). */
  private bodyTaken = false;
  /** The whole body had arrived when the last try failed. */
  private bodyWhole = false;

  // The try under way.
  private s!: TargetState;
  /** The target's breaker epoch when this try was admitted: its verdict counts only in that state. */
  private epoch = 0;
  private up: UpstreamRequest | undefined;
  private settled = true;
  /** Any byte of the request may have reached the target. */
  private sent = false;
  private responded = false;
  /** The status the proxy itself answered the client with before the target did (clientClosed). */
  private answeredBy: number | undefined;
  /** The proxy cut this request: at SHUTDOWN_TIMEOUT (logged as a 503, or its status, with that error), or for IDLE_TIMEOUT. */
  private cutBy: ClientCut | undefined;
  /** A keep-alive connection that could be stale is about to carry what cannot be replayed. */
  private replayable = false;
  private status = 0;
  private connectTimer: NodeJS.Timeout | undefined;
  /** Waiting in the target's line for a socket. */
  private waiting = false;
  /** The rest of a small body is being read for a retry (retryOrAnswer, Request.collectRest). */
  private collecting = false;
  /** The route's rediscovery a refusal started (onRefused), not waited for yet. */
  private rediscovery: Promise<unknown> | undefined;
  /** Set while a retry waits for that rediscovery (next()): the wait under way. */
  private awaitingRoute: object | undefined;
  /** A rediscovery of the route was waited for (at most once a request). */
  private waitedForRoute = false;

  constructor(
    private readonly registry: TargetRegistry,
    private readonly opts: ForwardOptions,
    private readonly req: Request,
    private readonly res: Response,
    private readonly pool: Pool,
    private readonly report: Done,
    private readonly tag: string,
  ) {
    this.head = upstreamHead(req, portString(opts.listenPort()), opts.trustForwardedProto);
    this.body = req.hasBody;
    const idempotent = IDEMPOTENT.has(req.method);
    const length = req.headers['content-length'];
    const small = this.body && req.headers['transfer-encoding'] === undefined && length !== undefined && Number(length) <= REPLAY_LIMIT;
    if (idempotent && small) req.keepBody(REPLAY_LIMIT);
    // Read on while the target's connection is made: the whole body then goes with the head.
    if (small) req.readAhead(REPLAY_LIMIT);
    this.retryOnReset = idempotent && (!this.body || small);
    // The connection tells this exchange when the client leaves or stalls, and when the answer is out.
    res.handler = this;
  }

  private done(): void {
    if (this.cutBy === 'shutdown') this.outcome.error = 'cut_at_shutdown';
    this.report(this.req, this.tag, this.outcome);
  }

  /** Picks the next target and tries it, or answers with what went wrong when none is left. */
  next(): void {
    const pick = this.pool.pick(this.tried);
    const outcome = this.outcome;
    if (!pick) {
      // A retry with no other target, its route being rediscovered since its target refused (a deploy
      // replaced it): the retry waits for the new targets, once, as briefly as REDISCOVERY_WAIT_MS.
      if (outcome.error && this.rediscovery) return this.awaitOwnRediscovery(this.rediscovery);
      // Nothing (else) to try: the client hears what went wrong with the last target, if any; unless
      // it refused and the route's rediscovery since found none left (the last task stopped): that is an
      // empty route, a 503 as an empty target group is to an ALB.
      if (outcome.error && !(mayHaveLeft(outcome.error) && this.pool.size === 0)) return this.fail();
      // Refused only because a half-open target's trial is being claimed, or is out on another worker:
      // the board's answer (a grant, a verdict) may be on its way. Ask once before saying 503.
      if (!this.asked && this.pool.askBoard(() => this.resume())) {
        this.asked = true;
        return;
      }
      // Targets, but every one's breaker open: a rediscovery to wait for once, as a retry waits for it (rediscoveryToAwait).
      const rediscovery = rediscoveryToAwait(this.opts, this.pool);
      if (rediscovery && !this.waitedForRoute) return this.awaitRoute(rediscovery);
      outcome.status = 503;
      answer(this.res, 503, 'no target available', { 'Retry-After': '5' });
      return this.done();
    }
    outcome.attempts++;
    outcome.target = pick.state.target.id;
    // A retry is counted when it reaches a target, not when one is wanted and none is left.
    if (this.retrying) {
      this.retrying = false;
      retriesTotal.inc();
    }
    this.attempt(pick.state, this.stale > 0);
  }

  private fail(): void {
    const outcome = this.outcome;
    if (outcome.error === 'pool_full') {
      // Every socket to the target stayed busy: the proxy is protecting it, as an overloaded ALB would say.
      outcome.status = 503;
      answer(this.res, 503, 'target busy', { 'Retry-After': '5' });
    } else {
      outcome.status = failureStatus(outcome.error);
      answer(this.res, outcome.status, failureMessage(outcome.error));
    }
    this.done();
  }

  /** One try against one target; ends in settle(). */
  private attempt(s: TargetState, fresh: boolean): void {
    this.s = s;
    this.epoch = s.breaker.epoch;
    s.inflight++;
    this.settled = false;
    this.sent = false;
    this.responded = false;
    // A keep-alive socket that may be stale carries at once only what needs no copy to be sent again.
    this.replayable = this.retryOnReset && !this.body;
    this.up = undefined;
    const { req } = this;
    const ask: UpstreamRequestOptions = { method: req.method, path: req.url, headers: withHost(this.head, req, s), body: this.body, timeoutMs: this.opts.upstreamTimeoutMs };
    const moved = this.movedSince;
    if (moved !== undefined) {
      this.movedSince = undefined;
      ask.queuedSince = moved;
    }
    // A socket at hand is announced (onSocket) before request() returns.
    const up = fresh ? s.pool.fresh(ask, this) : s.pool.request(ask, this);
    this.up = up;
    // Every socket of the target busy (POOL_SIZE): the request waits in the pool's FIFO line, which the
    // pool says synchronously. The pool bounds the wait like a silent target (onQueueTimeout); counted.
    if (up.queued && !this.settled) {
      // Counted once a request: not again when it moved here from a target that left.
      if (moved === undefined) limitHits.labels({ limit: 'target_sockets' }).inc();
      this.waiting = true;
    }
  }


  onSocket(up: UpstreamRequest, socket: net.Socket): void {
    this.up = up;
    this.waiting = false;
    if (this.settled) return;
    if (socket.connecting) {
      this.connectTimer = setTimeout(connectTimedOut, this.opts.connectTimeoutMs, this);
      socket.once('connect', () => this.startSending());
    } else if (up.reusedSocket && !this.replayable) {
      // A reused socket whose target closed it a moment ago still looks open until its FIN is read.
      // Let one poll phase pass before sending what could not be replayed: a stale socket then fails
      // with nothing sent, and the request moves to a fresh connection instead of failing.
      setImmediate(afterPoll, startSending, this);
    } else {
      this.startSending();
    }
  }

  connectTimedOut(): void {
    this.up?.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' }));
  }

  startSending(): void {
    if (this.settled) return;
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    this.sent = true;
    this.sentAt = performance.now();
    this.sentTick = loopTicks;
    const up = this.up!;
    if (!this.body) up.end();
    // A try after one that took the body: the kept copy (retryOrAnswer retries only when there is one).
    else if (this.bodyTaken) this.req.replay(up as unknown as NodeJS.WritableStream);
    else {
      this.bodyTaken = true;
      // The head and what has come of the body (all of a small one, often: Request.readAhead) in one send.
      up.cork();
      this.req.pipe(up as unknown as NodeJS.WritableStream); // write/end/drain, as Readable.pipe uses them
      up.uncork();
      // None of the body has come yet: the head goes now, as an ALB sends it. A target may answer from
      // the head alone (a 401 or 413 before an upload), or answer a streaming body as it streams; held
      // for the first body byte, its answer waited on a client that waited on it.
      up.flushHeaders();
    }
  }

  onInformational(status: number, rawHeaders: string[]): void {
    // A target may send 1xx without end, and each would reach the client: a few are passed on.
    if (this.settled || this.responded || ++this.informational > MAX_INFORMATIONAL) return;
    this.res.writeInformational(status, clientLines(rawHeaders, connectionOf(rawHeaders), status).lines);
  }

  onResponse(upRes: UpstreamResponse): void {
    // A 408 closing a kept connection just as our request went on it: the notice a target may send as
    // it closes an idle connection (RFC 9110 §15.5.9), written before our request came, which it never
    // read. The keep-alive race, as a reset then is: tried again on a fresh connection where the request
    // can go again (browsers resend such a 408 too); passed on where it cannot.
    if (upRes.statusCode === 408 && this.up?.reusedSocket && this.up.keepAlive === false && (!this.sent || this.soonAfterSending())) {
      this.bodyWhole = this.req.complete;
      if (this.raceRepeatable()) return this.failTry('reset');
    }
    const { res, s } = this;
    this.responded = true;
    // Its copy would live as long as the answer streams; a target garbling its head in the same read
    // is then a 502 for a request with a body, as before bodies were kept.
    if (this.body) this.req.forgetBody();
    if (this.connectTimer) clearTimeout(this.connectTimer);
    s.breaker.onSuccess(this.epoch);
    countSuccess(s.target.id);
    this.status = upRes.statusCode;
    if (!res.headersSent) writeDownstreamHead(res, upRes);
    upRes.pipe(res);
  }

  onError(err: NodeJS.ErrnoException): void {
    this.failTry(kindOf(err));
  }

  onAborted(err?: NodeJS.ErrnoException): void {
    // Bad framing in the body (a chunk size that is no number, a trailer section over the limit) is a
    // bad answer, not a reset; HPE_INTERNAL is a fault of ours handling it.
    const code = err?.code;
    this.failTry(code !== undefined && code.startsWith('HPE_') && code !== 'HPE_INTERNAL' ? 'bad_response' : 'reset');
  }

  onQueueTimeout(): void {
    // Every socket of the target stayed busy for UPSTREAM_TIMEOUT.
    this.failTry('pool_full');
  }

  onTargetLeft(): boolean {
    if (this.settled) return true;
    // No other target in its route (the last one left, or the route was forgotten): it stays in the
    // line of the one that left, which is still answering.
    if (this.pool.size === 0) return false;
    this.movedSince = this.up?.queuedAt;
    this.settle(undefined, new UpstreamError('target_left', true));
    return true;
  }

  onTimeout(): void {
    // Still connecting (UPSTREAM_TIMEOUT shorter than POOL_TIMEOUT): no connection was made, which is
    // tried on the next target, not a silent target's 504.
    if (this.connectTimer) return this.connectTimedOut();
    // Idle timeout of the upstream socket: silent before the response is a 504, within it an abort.
    this.failTry('timeout');
  }

  responseFinished(): void {
    this.settle(this.status);
  }

  // The client went away before the response ended (or the proxy answered it itself: `answered`):
  // stop the upstream work too.
  clientClosed(answered?: number, cut?: ClientCut): void {
    if (this.collecting || this.awaitingRoute) {
      // Gone while the rest of its body, or its route's new targets, were awaited for a retry: nothing
      // is under way.
      this.collecting = false;
      this.awaitingRoute = undefined;
      this.answeredBy = answered;
      this.cutBy = cut;
      return this.retryOrAnswer(new UpstreamError('client_gone', false));
    }
    if (this.settled || this.res.finished) return;
    this.answeredBy = answered;
    this.cutBy = cut;
    this.up?.destroy();
    // Its status already on its way: logged as sent, and said to be cut short by the client (or by the
    // proxy, the client having taken none of it for IDLE_TIMEOUT).
    if (this.responded) this.settle(this.res.statusCode, undefined, cut === 'idle' ? 'client_timeout' : 'client_gone');
    else this.settle(undefined, new UpstreamError('client_gone', false));
  }

  // SHUTDOWN_TIMEOUT with no answer: let go of a request no target has seen (the proxy answers 503).
  shutdown(): boolean {
    if (this.awaitingRoute || this.collecting) {
      // Waiting for its route's new targets, its last target having refused, or for the rest of its body
      // to go again, its last target having reset: no target is acting on it.
      this.awaitingRoute = undefined;
      this.collecting = false;
      this.retryOrAnswer(new UpstreamError('shutting_down', true));
      return true;
    }
    if (this.settled || this.responded || this.sent) return false;
    this.up?.destroy(); // a connection still being made, or a turn before sending
    this.settle(undefined, new UpstreamError('shutting_down', true));
    return true;
  }

  // The client socket's idle timer (IDLE_TIMEOUT) fired while the body was still coming: the client
  // stalled, and hears a 408.
  clientStalled(): void {
    if (this.collecting || this.awaitingRoute) {
      this.collecting = false;
      this.awaitingRoute = undefined;
      return this.retryOrAnswer(new UpstreamError('client_timeout', false));
    }
    if (this.settled) return;
    this.up?.destroy();
    if (this.responded) {
      this.res.destroy();
      this.settle(this.res.statusCode);
    } else this.settle(undefined, new UpstreamError('client_timeout', false));
  }

  failTry(kind: FailureKind): void {
    if (this.settled) return;
    // Whether the whole body had come when the try failed (the retry is decided later, maybe after
    // waiting for the primary, while the rest of a body may still arrive).
    this.bodyWhole = this.req.complete;
    const up = this.up;
    // The target's head came but none of it has left for the client yet (it went bad in the same read):
    // taken back, and this try fails as one without an answer would (a retry, or a 502).
    const retracted = this.responded && this.res.retract();
    if (retracted) this.responded = false;
    if (this.responded) {
      // Mid-response: the status is on its way already; cut the client off so it sees a short body,
      // and let go of the target's socket (a silent target's, timed out, would otherwise stay open).
      upstreamErrors.labels({ kind }).inc();
      failedConnections.labels({ target: this.s.target.id }).inc();
      up?.destroy();
      this.res.destroy();
      // Logged with its status and what cut it: an access line must not show a cut answer as a clean one.
      this.settle(this.res.statusCode, undefined, kind);
      return;
    }
    up?.destroy();
    if (kind === 'reset' && up?.reusedSocket && !retracted && (!this.sent || this.soonAfterSending())) {
      // A keep-alive connection looks alive until its FIN is read: the target most likely closed it just
      // before our request came. Tried again when nothing unrepeatable was sent; a 502 otherwise (the
      // body is gone), but no mark against a target that is fine on a fresh connection.
      // A kept body can go again too, on a fresh connection to the same target: a whole one at once, one
      // still coming (its head went ahead of it) once the rest has come into the copy.
      const again = this.raceRepeatable();
      // Its idle siblings are likely just as dead (an idle timeout, a restart), and a target that closes
      // after every response leaves only dead ones; and were the target resetting requests, each kept one
      // would excuse one more reset (30 warm sockets: 33 POSTs answered 502 before a breaker of threshold 3
      // opened). They go: the next request, or this one tried again, finds out on a fresh connection.
      this.s.pool.destroyIdle();
      this.settle(undefined, again ? new UpstreamError('stale', true) : new UpstreamError('reset', false, true));
    } else if (kind === 'timeout' && this.body && !this.req.complete && !up?.writableNeedDrain) {
      // Silent both ways with the body unfinished and the target not pushing back: the client stalled.
      this.settle(undefined, new UpstreamError('client_timeout', false));
    } else {
      // A head over our limit is a 502, not retried; see blameless() for which failures the breaker hears.
      this.settle(undefined, new UpstreamError(kind, !this.sent, blameless(kind, this.opts.httpChecks)));
    }
  }

  /** After the keep-alive race on a reused socket: nothing that cannot be sent again has gone (a kept body can). */
  private raceRepeatable(): boolean {
    return !this.sent || this.replayable || (this.body && this.retryOnReset && (this.bodyWhole ? this.req.replayable : this.req.keeping));
  }

  /** Ends the try: the target's books, then the outcome, or the next try. */
  private settle(status: number | undefined, err?: UpstreamError, cutBy?: Outcome['error']): void {
    if (this.settled) return;
    this.settled = true;
    const s = this.s;
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    if (this.waiting) {
      this.waiting = false;
      // Still queued (given up, or the client left): take it out of the line, or it would wait until a
      // socket frees, which for a target whose sockets stay busy is never.
      this.up?.destroy();
    }
    const notTheTarget = err !== undefined &&
      (err.kind === 'client_gone' || err.kind === 'client_timeout' || err.kind === 'stale' || err.kind === 'shutting_down' || err.kind === 'target_left');
    // A request that fails again once sent, on another target, after a try that failed once sent (reset,
    // garbled answer) is likelier the cause than either target: a URL that crashes whatever serves it.
    // Counted against the first target only: with retries, each such request would otherwise count
    // against every target, and CIRCUIT_BREAKER_THRESHOLD requests would open every breaker of the route
    // at once, the targets passing their checks. (A refused connection is never the request's doing.)
    const afterSend = err !== undefined && !err.beforeSend;
    const counted = err !== undefined && !notTheTarget && !err.blameless && err.kind !== 'pool_full' && !(afterSend && this.failedAfterSend);
    if (counted && afterSend) this.failedAfterSend = true;
    // Counted before done(), which forgets a target that has left every pool, and its series with it: a
    // count after would bring the series back for good. What the breaker excuses (a keep-alive race that
    // cut a POST, an answer head over our limit) still failed with this target: the metric says so.
    if (err !== undefined && !notTheTarget && err.kind !== 'pool_full') failedConnections.labels({ target: s.target.id }).inc();
    this.registry.done(s);
    const outcome = this.outcome;
    if (!err) {
      outcome.status = status!;
      outcome.error = cutBy;
      return this.done();
    }
    if (!notTheTarget) upstreamErrors.labels({ kind: err.kind }).inc();
    if (!counted) {
      s.breaker.release(this.epoch);
      return this.retryOrAnswer(err);
    }
    if (mayHaveLeft(err.kind)) this.rediscovery = this.opts.onRefused?.(this.pool) ?? this.rediscovery;
    // The retry or the answer once the failure is counted: a breaker it opened is then open in every
    // worker (with several, after the primary's answer; breaker.ts).
    s.breaker.onFailure(this.epoch, () => this.retryOrAnswer(err), refusedFailure(err.kind));
  }

  private retryOrAnswer(err: UpstreamError): void {
    const { outcome, req, res } = this;
    if (err.kind === 'client_gone') {
      // What the proxy itself answered (a 408), or nginx's code for "client closed request" (only logged);
      // cut by the proxy at SHUTDOWN_TIMEOUT with nothing answered, the client saw the proxy fail: a 503.
      if (this.answeredBy === undefined && this.cutBy === 'shutdown') {
        // No answer was written, but the 503 is the proxy's, as counted and logged.
        proxyErrors.labels({ code: '503' }).inc();
        return this.endedHere(503);
      }
      return this.endedHere(this.answeredBy ?? 499);
    }
    if (err.kind === 'shutting_down') return this.endedHere(503); // written by the server (ClientConn.answerShutdown)
    if (err.kind === 'client_timeout') {
      // The client stopped sending its body: its fault, said as nginx says it, and the connection is done.
      rejectedRequests.labels({ reason: 'body_timeout' }).inc();
      res.shouldKeepAlive = false;
      answer(res, 408, 'request body timed out');
      return this.endedHere(408);
    }
    const unsent = !res.headersSent && !res.dead && !req.conn.destroyed;
    // Its target left the route while it waited in the line: no failure, the route's others take it
    // (or nobody: its client is gone already).
    if (err.kind === 'target_left') {
      // Nothing reached that target: no attempt of its own in the access line.
      outcome.attempts--;
      outcome.target = undefined;
      return unsent ? this.next() : this.retryOrAnswer(new UpstreamError('client_gone', true));
    }
    if (err.kind === 'stale') {
      // The target had closed that keep-alive connection: nothing was lost, try a fresh one (same target allowed).
      if (this.stale < MAX_STALE && unsent) {
        this.stale++;
        // A body a try took (piped) goes again from its kept copy once whole; one never taken is still
        // held for the next try as it came, and what has not come of it is read by that try.
        if (this.body && !this.bodyWhole && this.bodyTaken) return this.resumeOnceWhole();
        // Its idle siblings went with it (failTry): the next try opens a connection of its own.
        setImmediate(afterPoll, retryStale, this);
        return;
      }
      outcome.error = 'reset';
      return this.fail();
    }
    (this.tried ??= new Set()).add(this.s);
    outcome.error = err.kind;
    // Timeouts are not retried: the target may be working on it, and the client has waited long enough.
    // A reset or a garbled answer before any byte reached the client is, for an idempotent request.
    // Not one that waited UPSTREAM_TIMEOUT for a socket: it went to that target's line because every
    // target was full, and the client is not to wait that long again at the next.
    const retryable = err.kind !== 'pool_full' && (err.beforeSend ||
      (this.retryOnReset && (err.kind === 'reset' || garbled(err.kind)) && (!this.body || (this.bodyWhole && this.req.replayable))));
    if (retryable && this.retries < this.opts.retries && unsent) {
      this.retries++;
      this.retrying = true;
      return this.next();
    }
    // Its retries spent on targets that refused, the route's rediscovery begun since: a deploy that
    // replaced more tasks than RETRIES. One more try, once it is found, as when no other target is left
    // (next()): nothing reached any of them. Not with RETRIES=0, which asks for no second try.
    if (this.opts.retries > 0 && err.beforeSend && mayHaveLeft(err.kind) && unsent && this.rediscovery && !this.waitedForRoute) {
      this.retrying = true;
      return this.awaitOwnRediscovery(this.rediscovery);
    }
    // The same, but the target failed before the client had sent all of a small body: the rest is read
    // into the kept copy, and the whole body goes to the next target once it has come.
    const wouldReplay = this.retryOnReset && (err.kind === 'reset' || garbled(err.kind)) && this.body && !this.bodyWhole && this.req.keeping;
    if (wouldReplay && this.retries < this.opts.retries && unsent) {
      this.retries++;
      this.retrying = true;
      return this.resumeOnceWhole();
    }
    this.fail();
  }

  /**
   * The rest of a small body is read into its kept copy; the next try once it has all come, or a 502
   * (what failed the try, a reset) if it outgrew the copy.
   */
  private resumeOnceWhole(): void {
    this.collecting = true;
    // The kept copy is the body from here on (every caller today comes after a try took the body; one
    // that did not would find what was held in the copy too: Request.collectRest).
    this.bodyTaken = true;
    this.req.collectRest((whole) => {
      if (!this.collecting) return;
      this.collecting = false;
      this.bodyWhole = whole;
      if (whole) return this.resume();
      this.outcome.error ??= 'reset';
      this.fail();
    });
  }

  /** Waits for the rediscovery a refusal of this request's began (taken, so that it is waited for once). */
  private awaitOwnRediscovery(rediscovery: Promise<unknown>): void {
    this.rediscovery = undefined;
    this.awaitRoute(rediscovery);
  }

  /** Waits for the route's rediscovery, once and for at most REDISCOVERY_WAIT_MS, then tries again. */
  private awaitRoute(rediscovery: Promise<unknown>): void {
    this.waitedForRoute = true;
    const waited = (this.awaitingRoute = {});
    void within(rediscovery, REDISCOVERY_WAIT_MS).then(() => {
      // Not if the client left, or shutdown let it go, meanwhile (clientClosed, shutdown).
      if (this.awaitingRoute !== waited) return;
      this.awaitingRoute = undefined;
      this.resume();
    });
  }

  /** The next try after a wait, unless the client has gone meanwhile. */
  resume(): void {
    if (this.req.conn.destroyed || this.res.headersSent || this.res.dead) return this.endedHere(499);
    this.next();
  }

  /**
   * Ended by the client or the proxy, not by a target (499, 408, 503 at shutdown): the status says it
   * all, and what an earlier try met (a target that refused) is not the line's error.
   */
  private endedHere(status: number): void {
    this.outcome.status = status;
    this.outcome.error = undefined;
    this.done();
  }
}

// Timer callbacks shared by every Exchange, so a request allocates no closures for them.
const connectTimedOut = (x: Exchange): void => x.connectTimedOut();
const startSending = (x: Exchange): void => x.startSending();
const retryStale = (x: Exchange): void => x.resume();
