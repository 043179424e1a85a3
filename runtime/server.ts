/**
 * The request policy of one worker's client-facing server: what is refused before routing, then the
 * straight path Host → route → pool → target → forward, then metrics and the access line. The HTTP/1.1
 * protocol itself (parsing, framing, keep-alive, timeouts, limits) is downstream.ts's.
 */
import type * as net from 'node:net';
import type { Config } from './config';
import { answerHandshake, DownstreamServer, Request, Response, UpgradeHandler } from './downstream';
import { answer, Forwarder, Outcome } from './forward';
import { log } from './log';
import { limitHits, countRequest, rejectedRequests } from './metrics';
import type { RouteTable } from './routes';
import { parseHost, RouteResult, RoutingRules, rulesFrom } from './routing';
import { AWS_ATTEMPT_TIMEOUT_MS, POOL_ROUTE, RouteKey, routeId } from './types';
import type { Pool } from './balancer';

/**
 * Longest wait of a new route's first request for its discovery (UPSTREAM_TIMEOUT if shorter): one AWS
 * attempt's own timeout (aws.ts) and 2 s more, for the SDK's retry of a hung attempt to answer (its
 * backoff is a fraction of a second): when the wait was the attempt's timeout alone, the first client
 * got its 503 a few milliseconds before the retry found the targets. A discovery still running after
 * that is AWS in trouble, not a slow answer.
 */
const FIRST_DISCOVERY_WAIT_MS = AWS_ATTEMPT_TIMEOUT_MS + 2_000;

/** What is recorded of a 503 the proxy gave before any target saw the request. */
const NOT_FORWARDED_503: Outcome = { status: 503, target: undefined, attempts: 0, error: undefined };
/** What is recorded of a client that left before any target saw its request. */
const LEFT_BEFORE_FORWARDED_499: Outcome = { status: 499, target: undefined, attempts: 0, error: undefined };

/** A request waiting for discovery told its client left or stalled, or its answer ended: nothing to do
 * (the end of the discovery counts a client gone as 499). */
const ignore = (): void => undefined;

// `100-continue` and nothing else (RFC 9110 §10.1.1: an expectation the proxy cannot meet is a 417).
const CONTINUE = /^\s*100-continue\s*(?:,\s*100-continue\s*)*$/i;


/**
 * A request target as the access log may keep it: an absolute-form one refused for its userinfo
 * (`http://user:password@host/`) keeps the rest, its credentials masked.
 */
export function withoutUserinfo(target: string): string {
  return target.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/?#]*@/i, '$1***@');
}

/** A Host header as the access log keeps it: userinfo (`user:password@host`, refused with a 400) masked. */
export function hostForLog(host: string | undefined): string | undefined {
  const at = host === undefined ? -1 : host.lastIndexOf('@');
  return at === -1 ? host : `***${host!.slice(at)}`;
}

/**
 * Query parameters whose values are credentials by their name: OAuth tokens and codes, API keys,
 * presigned URLs' signatures, session ids. (`code` and `key` hide some harmless values too.)
 */
const SECRET_PARAM = /^(?:.*(?:token|secret|passw|signature|credential|(?:api|access|private)[-_]?key|sess(?:ion)?[-_]?id|ticket|bearer).*|(?:.*[-_.])?auth(?:orization)?(?:[-_.].*)?|sig|pwd|pass|code|key|jwt|sid|session)$/i;

/** A parameter's name as written or, when it is valid percent-encoding, as decoded, is a credential's. */
function secretName(written: string): boolean {
  let name = written;
  try {
    name = decodeURIComponent(written.replace(/\+/g, ' '));
  } catch {
    // Not valid percent-encoding: judged as written.
  }
  return SECRET_PARAM.test(name);
}

/**
 * `;`-separated parameters with credentials' names masked: `name=value` pieces after `first` (the
 * first piece is kept as it is: a path segment's name), and a piece with no name of its own after a
 * masked value, which some parsers read as the rest of it (WHATWG's and Node's: `token=abc;rest`).
 */
function maskPieces(text: string, first: number): string {
  const pieces = text.split(';');
  let after = false;
  for (let j = first; j < pieces.length; j++) {
    const eq = pieces[j].indexOf('=');
    if (eq <= 0) {
      if (after && j > 0) pieces[j] = '***';
      continue;
    }
    after = secretName(pieces[j].slice(0, eq));
    if (after) pieces[j] = `${pieces[j].slice(0, eq)}=***`;
  }
  return pieces.join(';');
}

/**
 * A request target as the access log keeps it: credentials masked, in userinfo (an absolute-form target
 * refused for it), in query parameters named as credentials (`?access_token=…`, `X-Amz-Signature=…`)
 * and in path parameters so named (`;jsessionid=…`), so that turning LOG_CONNECTIONS on does not put
 * them in the journal.
 */
export function targetForLog(target: string): string {
  const t = target.charCodeAt(0) === 0x2f ? target : withoutUserinfo(target);
  const q = t.indexOf('?');
  const path = q === -1 ? t : t.slice(0, q);
  // Path parameters, segment by segment (`/cart;jsessionid=…/items`).
  const shownPath = path.includes(';') ? path.split('/').map((segment) => (segment.includes(';') ? maskPieces(segment, 1) : segment)).join('/') : path;
  if (q === -1) return shownPath;
  let masked = shownPath !== path;
  const params = t.slice(q + 1).split('&');
  for (let i = 0; i < params.length; i++) {
    // `;` separates parameters too for some parsers (old HTML forms, Java's, Rails'), not for others.
    const shown = maskPieces(params[i], 0);
    if (shown !== params[i]) {
      params[i] = shown;
      masked = true;
    }
  }
  return masked ? `${shownPath}?${params.join('&')}` : t;
}

export interface ProxyServer {
  readonly server: net.Server;
  /** Stops accepting, lets in-flight requests finish within `timeoutMs`, closes idle keep-alive connections. */
  shutdown(timeoutMs: number): Promise<void>;
}

type Refusal = { status: number; reason: string; message: string };

// An absolute-form request target: scheme and authority (no userinfo: `@` is not in HOST_VALUE).
const ABSOLUTE_FORM = /^https?:\/\/([^/?#]*)/i;
// An authority that is an address, as URL parsers read one: an IPv6 literal, `localhost` (or a name
// under it), or a host whose last label is a number (`169.254.169.254`, `2852039166`, `0xa9fea9fe.`).
const ADDRESS_AUTHORITY = /^(?:\[|(?:[^:]*\.)?localhost\.?(?::|$)|(?:[^:]*\.)?(?:\d+|0x[0-9a-f]*)\.?(?::|$))/i;

// RFC 9110 §4.2 / RFC 3986 §3.2.2: reg-name or IP literal, then an optional port.
const HOST_SYNTAX = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::\d{0,5})?$/;
const FIVE_DIGIT_PORT = /:\d{5}$/;
/** A Host or authority as RFC 9110 writes one, with a port no higher than 65535 (as URL parsers take one). */
const HOST_VALUE = {
  test: (v: string): boolean => HOST_SYNTAX.test(v) && !(FIVE_DIGIT_PORT.test(v) && Number(v.slice(-5)) > 65535),
};

/** A WebSocket handshake announcing a body (RFC 6455 §4.1: a GET, whose target would wait for it). */
const HANDSHAKE_WITH_BODY: Refusal = { status: 400, reason: 'bad_framing', message: 'a WebSocket handshake has no body' };

/** The most a signed 64-bit length holds (2^63 - 1). */
const INT63_MAX = '9223372036854775807';

/** A Content-Length's digits (llhttp checked them) as a number a signed 64-bit length holds. */
function fitsInt63(value: string): boolean {
  const digits = value.trim().replace(/^0+(?=\d)/, '');
  return digits.length < INT63_MAX.length || (digits.length === INT63_MAX.length && digits <= INT63_MAX);
}

/**
 * Why a request was refused before routing, or undefined when it may go on. llhttp already refuses
 * most malformed input (Content-Length with Transfer-Encoding, two Content-Lengths, bad characters,
 * obs-fold); this refuses what it lets through but a target might read differently.
 */
function screen(req: Request, maxHeaders: number, checkHost: boolean): Refusal | undefined {
  // llhttp parses `HTTP/0.9` and `HTTP/2.0` request lines; neither is something to pass on as HTTP/1.1.
  if (req.httpVersionMajor !== 1) return { status: 400, reason: 'bad_version', message: 'only HTTP/1.0 and HTTP/1.1 are supported' };
  if (req.rawHeaders.length / 2 > maxHeaders) return { status: 431, reason: 'too_many_headers', message: 'too many header fields' };
  if (req.hosts > 1) return { status: 400, reason: 'duplicate_host', message: 'more than one Host header' };
  // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
  if (req.hosts === 0 && req.httpVersionMinor === 1) return { status: 400, reason: 'missing_host', message: 'an HTTP/1.1 request needs a Host header' };
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) {
    // Only plain `chunked` is framing everyone agrees on (`gzip, chunked`, `identity, chunked` are how
    // desync attacks begin), and HTTP/1.0 has no Transfer-Encoding at all (RFC 9112 §6.1): refused, as the
    // ALB's defensive mode does.
    if (req.httpVersionMinor === 0) return { status: 400, reason: 'bad_framing', message: 'Transfer-Encoding in an HTTP/1.0 request' };
    if (te.trim().toLowerCase() !== 'chunked') return { status: 400, reason: 'bad_framing', message: 'Transfer-Encoding must be chunked' };
  }
  // llhttp takes any length up to 2^64 - 1; targets that read it as a signed 64-bit number (Go, Java,
  // nginx's off_t) find it malformed, and one that refused it but kept the connection would read the
  // body as its next request. nginx answers 400, as here. Only a value of 19 digits or more is looked at.
  const cl = req.headers['content-length'];
  if (cl !== undefined && cl.length >= 19 && !fitsInt63(cl)) return { status: 400, reason: 'bad_framing', message: 'Content-Length too large' };
  if (checkHost && req.headers.host !== undefined && !HOST_VALUE.test(req.headers.host)) {
    return { status: 400, reason: 'bad_host', message: 'malformed Host header' };
  }
  const url = req.url;
  if (url.charCodeAt(0) === 47 /* '/' */ || (url === '*' && req.method === 'OPTIONS')) return undefined;
  // RFC 9112 §3.2.2: a server MUST accept the absolute-form (what a client configured with an HTTP proxy
  // sends), and the URI's authority, not the Host header, says where the request goes. It is made
  // origin-form here, before routing, so the authority meets every rule a Host meets
  // (`GET http://169.254.169.254/` is a 400 as `Host: 169.254.169.254` is). Authority-form and other
  // schemes are refused.
  const m = ABSOLUTE_FORM.exec(url);
  if (m === null) return { status: 400, reason: 'bad_target', message: 'request target must be a path or an http URI' };
  const authority = m[1];
  // The Host header is replaced, but a malformed one is still a bad request (RFC 9112 §3.2).
  if (req.headers.host !== undefined && !HOST_VALUE.test(req.headers.host)) return { status: 400, reason: 'bad_host', message: 'malformed Host header' };
  // Percent-encoding is refused too: `127.0.0.%31` is an address to a URL parser that decodes it.
  if (authority === '' || authority.includes('%') || !HOST_VALUE.test(authority)) return { status: 400, reason: 'bad_host', message: 'malformed authority in the request target' };
  // A URI naming an address is a request for a forward proxy, which this is not, in pool mode as well
  // (where a Host header routes nothing and is never refused for naming one).
  if (ADDRESS_AUTHORITY.test(authority)) return { status: 400, reason: 'bad_target', message: 'the request target names an address: not a forward proxy' };
  const rest = url.slice(m[0].length);
  // RFC 9112 §3.2.4: OPTIONS of a URI without path or query asks about the server itself: `*`.
  const path = rest === '' ? (req.method === 'OPTIONS' ? '*' : '/') : rest.charCodeAt(0) === 47 ? rest : `/${rest}`;
  req.retarget(path, authority);
  return undefined;
}

export function createProxyServer(config: Config, routes: RouteTable, forwarder: Forwarder): ProxyServer & { readonly front: DownstreamServer } {
  const rules: RoutingRules = rulesFrom(config);
  const poolMode = config.nodeFilter !== 'ecs';
  const poolId = routeId(POOL_ROUTE);
  // Hosts repeat: remember what each parsed to, so the everyday request does no parsing at all.
  const hostCache = new Map<string, RouteResult & { id?: string }>();

  const route = (host: string | undefined): (RouteResult & { id?: string }) => {
    if (host === undefined) return parseHost(host, rules);
    let r = hostCache.get(host);
    if (r === undefined) {
      const parsed = parseHost(host, rules);
      r = parsed.ok ? { ...parsed, id: routeId(parsed.key) } : parsed;
      if (hostCache.size >= 10_000) hostCache.clear();
      hostCache.set(host, r);
    }
    return r;
  };

  const discoveryWaitMs = Math.min(config.upstreamTimeoutMs, FIRST_DISCOVERY_WAIT_MS);

  /** One access line (LOG_CONNECTIONS): `req` undefined for bytes the server refused before any head. */
  const accessLine = (req: Request | undefined, client: string, routeLabel: string, o: Outcome, seconds: number, bytesOut = req?.response?.bodyBytes): void => {
    log('info', 'access', {
      method: req?.method,
      host: hostForLog(req?.headers.host),
      path: req && targetForLog(req.url),
      status: o.status,
      route: routeLabel,
      target: o.target,
      attempts: o.attempts,
      error: o.error,
      ms: Math.round(seconds * 1000),
      bytesIn: req?.bodyBytes,
      bytesOut,
      client,
      trace: req?.trace,
    });
  };

  const record = (req: Request, routeLabel: string, o: Outcome): void => {
    const seconds = (performance.now() - req.startedAt) / 1000;
    // A series per route only for routes the table holds with targets: Hosts are the client's to invent,
    // and each invented one would otherwise be a series for good (MAX_ROUTES and NEW_ROUTE_RATE bound
    // the table, not the metrics). The access log keeps the route either way.
    countRequest(routeLabel === 'none' || routes.known(routeLabel) ? routeLabel : 'none', o.status, seconds);
    if (config.logConnections) accessLine(req, req.ip, routeLabel, o, seconds);
  };

  /** A request the HTTP server answered itself, before it had a route (downstream.ts): counted there, logged here. */
  const onRefused = (status: number, client: string, req: Request | undefined, seconds: number, bodyBytes: number): void => {
    if (config.logConnections) accessLine(req, client, 'none', { status, target: undefined, attempts: 0, error: undefined }, seconds, bodyBytes);
  };

  const refuse = (req: Request, res: Response, status: number, reason: string, message: string, headers?: Record<string, string>): void => {
    rejectedRequests.labels({ reason }).inc();
    if (status === 431) limitHits.labels({ limit: 'headers' }).inc();
    // A malformed request says little good about what follows on the same connection: close it.
    if (status === 400 || status === 431) res.shouldKeepAlive = false;
    answer(res, status, message, headers);
    record(req, 'none', { status, target: undefined, attempts: 0, error: undefined });
  };

  /** Resolves the route of a request: a pool, or an answer already given. */
  const lookup = async (key: RouteKey, id: string): Promise<Pool | undefined> => {
    const hit = routes.get(key, id);
    if (hit.kind === 'pool') return hit.pool;
    if (hit.kind === 'absent') return undefined;
    return routes.resolve(key, id);
  };

  const onRequest = (req: Request, res: Response): void => {
    const expect = req.headers.expect;
    // A client expecting `100 Continue` may hold its body back until it comes: any answer before it
    // (a refusal, below) ends the connection (Response.writeHead), or its body could be read as the
    // next request.
    if (expect !== undefined && req.httpVersionMinor === 1) res.continueDue = true;
    const bad = screen(req, config.maxHeaders, poolMode);
    if (bad) return refuse(req, res, bad.status, bad.reason, bad.message);
    // TRACE echoes the request (cookies, authorization) back into a page that asks for it: answered
    // here, as nginx and the ALB do, never by a target.
    if (req.method === 'TRACE') return refuse(req, res, 405, 'trace_method', 'TRACE is not supported', { Allow: 'GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS' });
    // `100-continue` is answered once the request goes to a target (forward): a request refused first
    // (a bad Host, a route with no targets) is answered without it, and its client need not send a
    // body that would be dropped (curl holds back any upload over 1 MB for it). Any other expectation
    // cannot be met.
    if (res.continueDue && !CONTINUE.test(expect!)) return refuse(req, res, 417, 'expectation_failed', 'only 100-continue can be expected');
    let key: RouteKey;
    let id: string;
    if (poolMode) {
      key = POOL_ROUTE;
      id = poolId;
    } else {
      const r = route(req.headers.host);
      if (!r.ok) return refuse(req, res, r.status, r.reason, r.message);
      key = r.key;
      id = r.id!;
    }
    const hit = routes.get(key, id);
    // The everyday case stays synchronous; only a route never seen before waits for its discovery,
    // and not for long: a throttled or hung AWS API must not hold clients (the discovery itself goes
    // on, for the requests after this one).
    if (hit.kind === 'pool') forwarder.forward(req, res, hit.pool, record, id);
    else if (hit.kind === 'absent') noTarget(req, res, id);
    else {
      let late = false;
      const timer = setTimeout(() => {
        late = true;
        answer(res, 503, 'route discovery is taking too long', { 'Retry-After': '5' });
        record(req, id, NOT_FORWARDED_503);
      }, discoveryWaitMs);
      // SHUTDOWN_TIMEOUT while discovery runs: no target has seen the request, and the server answers it
      // 503. Counted as that, now (the process exits soon after), not as a client gone once discovery ends.
      res.handler = {
        shutdown: () => {
          late = true;
          clearTimeout(timer);
          record(req, id, NOT_FORWARDED_503);
          return true;
        },
        clientClosed: ignore,
        clientStalled: ignore,
        responseFinished: ignore,
      };
      void routes.resolve(key, id).then((pool) => {
        if (late) return;
        clearTimeout(timer);
        // The client may have left while discovery ran: nothing to forward for it.
        if (req.conn.destroyed || res.dead) return record(req, id, LEFT_BEFORE_FORWARDED_499);
        if (pool) forwarder.forward(req, res, pool, record, id);
        else noTarget(req, res, id);
      });
    }
  };

  const noTarget = (req: Request, res: Response, id: string): void => {
    answer(res, 503, 'no target available for this route', { 'Retry-After': '5' });
    record(req, id, NOT_FORWARDED_503);
  };

  const onUpgrade = (req: Request, socket: net.Socket, head: Buffer): UpgradeHandler | void => {
    socket.on('error', () => undefined);
    // A handshake is a GET without a body (RFC 6455 §4.1): one announcing a body would have its target
    // wait for bytes that never come, until UPSTREAM_TIMEOUT, each wait a mark against its breaker.
    const bad = screen(req, config.maxHeaders, poolMode) ?? (req.hasBody ? HANDSHAKE_WITH_BODY : undefined);
    if (bad) {
      rejectedRequests.labels({ reason: bad.reason }).inc();
      return answerHandshake(socket, bad.status, bad.message);
    }
    let key: RouteKey = POOL_ROUTE;
    let id = poolId;
    if (!poolMode) {
      const r = route(req.headers.host);
      if (!r.ok) {
        rejectedRequests.labels({ reason: r.reason }).inc();
        return answerHandshake(socket, r.status, r.message);
      }
      key = r.key;
      id = r.id!;
    }
    // A WebSocket lives as long as its peers want; no fixed timeout cuts it (TCP keep-alive finds dead peers).
    socket.setTimeout(0);
    // The client's address, read while the socket has it: a client that resets before its access line
    // is written is named in it all the same.
    void req.ip;
    /** Waiting for the route: no target has seen the handshake, and no answer was given. */
    let waiting = true;
    /** Open at SHUTDOWN_TIMEOUT, past its route: the server cuts it, and its access line says so. */
    let cut = false;
    const gone = (): void => record(req, id, LEFT_BEFORE_FORWARDED_499);
    const timer = setTimeout(() => {
      waiting = false;
      unwatch();
      if (socket.destroyed) return gone();
      answerHandshake(socket, 503, 'route discovery is taking too long', 'Retry-After: 5\r\n');
      record(req, id, NOT_FORWARDED_503);
    }, discoveryWaitMs);
    // A FIN (or a reset) while the route is looked up: the client has left, and is logged so now
    // (forwarder.ws watches for it once the handshake goes to a target).
    const left = (): void => {
      if (!waiting) return;
      waiting = false;
      clearTimeout(timer);
      gone();
      socket.destroy();
    };
    socket.once('end', left);
    socket.once('close', left);
    const unwatch = (): void => void socket.removeListener('end', left).removeListener('close', left);
    void lookup(key, id).then((pool) => {
      clearTimeout(timer);
      unwatch();
      if (!waiting) return;
      waiting = false;
      if (socket.destroyed) return gone();
      if (!pool) {
        answerHandshake(socket, 503, 'no target available for this route', 'Retry-After: 5\r\n');
        record(req, id, NOT_FORWARDED_503);
        return;
      }
      // Cut at SHUTDOWN_TIMEOUT before the target answered: a 503, as a plain request no answer reached
      // (ws() took the close for the client's, 499).
      void forwarder.ws(req, socket, head, pool).then((o) => record(req, id, cut ? { ...o, status: o.status === 499 ? 503 : o.status, error: 'cut_at_shutdown' } : o));
    });
    return {
      // SHUTDOWN_TIMEOUT with the route still unknown: the handshake is let go, and the server answers 503,
      // as it answers a plain request no target has seen. One that went to a target is cut instead.
      shutdown: () => {
        if (socket.destroyed) return false;
        if (!waiting) {
          cut = true;
          return false;
        }
        waiting = false;
        clearTimeout(timer);
        record(req, id, NOT_FORWARDED_503);
        return true;
      },
    };
  };

  const front = new DownstreamServer(
    {
      maxHeaderSize: config.maxHeaderSize,
      requestTimeoutMs: config.requestTimeoutMs,
      headersTimeoutMs:
        config.requestTimeoutMs > 0 ? Math.min(config.headersTimeoutMs, config.requestTimeoutMs) : config.headersTimeoutMs,
      idleTimeoutMs: config.idleTimeoutMs,
      maxConnections: config.maxConnections,
    },
    { request: onRequest, upgrade: onUpgrade, refused: onRefused },
  );
  return { server: front.server, front, shutdown: (timeoutMs) => front.shutdown(timeoutMs) };
}
