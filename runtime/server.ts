/**
 * The client-facing HTTP server of one worker: accept, limits and timeouts, then the straight path
 * Host → route → pool → target → forward, then metrics and the access line.
 */
import * as http from 'node:http';
import type * as net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Config } from './config';
import { answer, Forwarder, Outcome, rawAnswer } from './forward';
import { kOnExecute, type Parser } from './llhttp';
import { log } from './log';
import {
  activeConnections,
  limitHits,
  countRequest,
  rejectedRequests,
} from './metrics';
import type { RouteTable } from './routes';
import { parseHost, RouteResult, RoutingRules, rulesFrom } from './routing';
import { POOL_ROUTE, RouteKey, routeId } from './types';
import type { Pool } from './balancer';

/**
 * Longest wait of a new route's first request for its discovery (UPSTREAM_TIMEOUT if shorter): one AWS
 * call's own timeout (aws.ts). A discovery still running after that is AWS in trouble, not a slow answer.
 */
const FIRST_DISCOVERY_WAIT_MS = 10_000;

/** How long past IDLE_TIMEOUT an idle keep-alive connection stays open (Node's own margin). */
const KEEP_ALIVE_GRACE_MS = 1000;

const bodyComing = (req: http.IncomingMessage): boolean => {
  const cl = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0');
};

/** A whole first packet that is one HTTP/0.9 request line: `GET /path` and a line end, no version. */
function isHttp09(chunk: Buffer): boolean {
  const lf = chunk.indexOf(10);
  if (lf === -1 || lf !== chunk.length - 1 || lf > 8192) return false;
  const line = chunk.toString('latin1', 0, chunk[lf - 1] === 13 ? lf - 1 : lf);
  return /^[A-Z]+ \S+$/.test(line);
}

/**
 * Calls `see` with the first bytes a client sent, after Node's parser has read them. Not with a 'data'
 * listener: adding one takes the connection off Node's native read path (the parser reading the socket
 * in C++, `parser.consume`) for its whole life, which cost a tenth of the throughput. The parser's
 * execute hook still sees each read's buffer (`getCurrentBuffer`), so the first one is looked at there.
 */
function onFirstChunk(socket: net.Socket, see: (chunk: Buffer) => void): void {
  const parser = (socket as unknown as { parser?: Parser }).parser;
  const consumed = (socket as unknown as { _handle?: { _consumed?: boolean } })._handle?._consumed === true;
  const original = parser?.[kOnExecute];
  if (!parser || !consumed || typeof original !== 'function' || typeof parser.getCurrentBuffer !== 'function') {
    socket.once('data', see); // read in JavaScript anyway (no native handle): a listener costs nothing more
    return;
  }
  parser[kOnExecute] = function (this: unknown, ret: unknown) {
    parser[kOnExecute] = original;
    // A copy, taken while the read is current (the parser may be freed by what the hook does next).
    let chunk: Buffer | undefined;
    try {
      chunk = parser.getCurrentBuffer!();
    } catch {
      chunk = undefined;
    }
    const result = (original as (r: unknown) => unknown).call(this, ret);
    if (chunk && chunk.length > 0) see(chunk);
    return result;
  };
}

const kStarted = Symbol('karma.started');
type Timed = http.IncomingMessage & { [kStarted]?: number };

const isWebSocket = (req: http.IncomingMessage): boolean =>
  req.method === 'GET' && req.headers.upgrade?.toLowerCase() === 'websocket';

export interface ProxyServer {
  readonly server: net.Server;
  /** Stops accepting, lets in-flight requests finish within `timeoutMs`, closes idle keep-alive connections. */
  shutdown(timeoutMs: number): Promise<void>;
}

type Refusal = { status: number; reason: string; message: string };

// RFC 9110 §4.2 / RFC 3986 §3.2.2: reg-name or IP literal, then an optional port.
const HOST_VALUE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::\d{0,5})?$/;

/**
 * Why a request was refused before routing, or undefined when it may go on. Node's parser (llhttp)
 * already refuses most malformed input (Content-Length with Transfer-Encoding, two Content-Lengths,
 * bad characters, obs-fold); this refuses what it lets through but a target might read differently.
 */
function screen(req: http.IncomingMessage, maxHeaders: number, checkHost: boolean): Refusal | undefined {
  // llhttp parses `HTTP/0.9` and `HTTP/2.0` request lines; neither is something to pass on as HTTP/1.1.
  if (req.httpVersionMajor !== 1) return { status: 400, reason: 'bad_version', message: 'only HTTP/1.0 and HTTP/1.1 are supported' };
  const raw = req.rawHeaders;
  if (raw.length / 2 > maxHeaders) return { status: 431, reason: 'too_many_headers', message: 'too many header fields' };
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].length === 4 && raw[i].toLowerCase() === 'host') hosts++;
  }
  if (hosts > 1) return { status: 400, reason: 'duplicate_host', message: 'more than one Host header' };
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) {
    // Only plain `chunked` is framing everyone agrees on (`gzip, chunked`, `identity, chunked` are how
    // desync attacks begin), and HTTP/1.0 has no Transfer-Encoding at all (RFC 9112 §6.1): refused, as the
    // ALB's defensive mode does.
    if (req.httpVersionMinor === 0) return { status: 400, reason: 'bad_framing', message: 'Transfer-Encoding in an HTTP/1.0 request' };
    if (te.trim().toLowerCase() !== 'chunked') return { status: 400, reason: 'bad_framing', message: 'Transfer-Encoding must be chunked' };
  }
  if (checkHost && req.headers.host !== undefined && !HOST_VALUE.test(req.headers.host)) {
    return { status: 400, reason: 'bad_host', message: 'malformed Host header' };
  }
  const url = req.url ?? '';
  // Origin-form only: an absolute-form target (`GET http://169.254.169.254/`) could name another host
  // than the Host header; a reverse proxy has no use for it, so it is refused rather than guessed at.
  if (url.charCodeAt(0) !== 47 /* '/' */ && !(url === '*' && req.method === 'OPTIONS')) {
    return { status: 400, reason: 'bad_target', message: 'request target must be a path' };
  }
  return undefined;
}

export function createProxyServer(config: Config, routes: RouteTable, forwarder: Forwarder): ProxyServer & { readonly server: http.Server } {
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

  // When each request arrived (ms, performance.now()), for the duration metric and the access log.
  const started = (req: http.IncomingMessage): void => {
    (req as Timed)[kStarted] = performance.now();
  };
  const discoveryWaitMs = Math.min(config.upstreamTimeoutMs, FIRST_DISCOVERY_WAIT_MS);

  const record = (req: http.IncomingMessage, routeLabel: string, o: Outcome): void => {
    const t0 = (req as Timed)[kStarted];
    const seconds = t0 === undefined ? 0 : (performance.now() - t0) / 1000;
    countRequest(routeLabel, o.status, seconds);
    if (config.logConnections) {
      log('info', 'access', {
        method: req.method,
        host: req.headers.host,
        path: req.url,
        status: o.status,
        route: routeLabel,
        target: o.target,
        attempts: o.attempts,
        error: o.error,
        ms: Math.round(seconds * 1000),
        client: req.socket.remoteAddress,
      });
    }
  };

  const refuse = (req: http.IncomingMessage, res: http.ServerResponse, status: number, reason: string, message: string): void => {
    rejectedRequests.labels({ reason }).inc();
    if (status === 431) limitHits.labels({ limit: 'headers' }).inc();
    // A malformed request says little good about what follows on the same connection: close it.
    if (status === 400 || status === 431) res.shouldKeepAlive = false;
    answer(res, status, message);
    record(req, 'none', { status, target: undefined, attempts: 0, error: undefined });
  };

  /** Resolves the route of a request: a pool, or an answer already given. */
  const lookup = async (key: RouteKey, id: string): Promise<Pool | undefined> => {
    const hit = routes.get(key, id);
    if (hit.kind === 'pool') return hit.pool;
    if (hit.kind === 'absent') return undefined;
    return routes.resolve(key, id);
  };

  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    started(req);
    // Advertised as Node does when it runs the keep-alive timer itself (see keepAliveTimeout below).
    (res as unknown as { _keepAliveTimeout: number })._keepAliveTimeout = config.idleTimeoutMs;
    if (inKeepAliveGrace > 0) endKeepAliveGrace(req.socket);
    if (shuttingDown) res.shouldKeepAlive = false;
    const bad = screen(req, config.maxHeaders, poolMode);
    if (bad) return refuse(req, res, bad.status, bad.reason, bad.message);
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
    const go = (pool: Pool | undefined): void => {
      if (!pool) {
        answer(res, 503, 'no target available for this route', { 'Retry-After': '5' });
        record(req, id, { status: 503, target: undefined, attempts: 0, error: undefined });
        return;
      }
      // The client socket's idle timer is not touched per request (see onSocketTimeout).
      forwarder.forward(req, res, pool, record, id);
    };
    // The everyday case stays synchronous; only a route never seen before waits for its discovery,
    // and not for long: a throttled or hung AWS API must not hold clients (the discovery itself goes
    // on, for the requests after this one).
    if (hit.kind === 'pool') go(hit.pool);
    else if (hit.kind === 'absent') go(undefined);
    else {
      let late = false;
      const timer = setTimeout(() => {
        late = true;
        answer(res, 503, 'route discovery is taking too long', { 'Retry-After': '5' });
        record(req, id, { status: 503, target: undefined, attempts: 0, error: undefined });
      }, discoveryWaitMs);
      void routes.resolve(key, id).then((pool) => {
        if (late) return;
        clearTimeout(timer);
        // The client may have left while discovery ran: nothing to forward for it.
        if (req.socket.destroyed) return record(req, id, { status: 499, target: undefined, attempts: 0, error: undefined });
        go(pool);
      });
    }
  };

  /**
   * An Upgrade other than WebSocket (h2c from `curl --http2`, `TLS/1.0`): RFC 9110 §7.8 lets a server
   * ignore it, as the ALB does. It is answered as the HTTP/1.1 request it also is, Upgrade dropped,
   * and the connection closes after. Never tunnelled: an h2c tunnel would carry requests the proxy
   * never sees. One with a body is refused, since Node hands its bytes over as tunnel data.
   */
  const plainRequest = (req: http.IncomingMessage, socket: Duplex): void => {
    const res = new http.ServerResponse(req);
    res.shouldKeepAlive = false;
    res.assignSocket(socket as net.Socket);
    res.once('finish', () => {
      res.detachSocket(socket as net.Socket);
      socket.end();
    });
    if (bodyComing(req)) {
      started(req);
      return refuse(req, res, 400, 'upgrade_with_body', 'an Upgrade request other than WebSocket may not carry a body');
    }
    onRequest(req, res);
  };

  const onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
    socket.on('error', () => undefined);
    if (!isWebSocket(req)) return plainRequest(req, socket);
    const bad = screen(req, config.maxHeaders, poolMode);
    if (bad) {
      rejectedRequests.labels({ reason: bad.reason }).inc();
      return rawAnswer(socket, bad.status, bad.message);
    }
    let key: RouteKey = POOL_ROUTE;
    let id = poolId;
    if (!poolMode) {
      const r = route(req.headers.host);
      if (!r.ok) {
        rejectedRequests.labels({ reason: r.reason }).inc();
        return rawAnswer(socket, r.status, r.message);
      }
      key = r.key;
      id = r.id!;
    }
    started(req);
    // A WebSocket lives as long as its peers want; no fixed timeout cuts it (TCP keep-alive finds dead peers).
    if ('setTimeout' in socket) (socket as unknown as { setTimeout(ms: number): void }).setTimeout(0);
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      rawAnswer(socket, 503, 'route discovery is taking too long', 'Retry-After: 5\r\n');
      record(req, id, { status: 503, target: undefined, attempts: 0, error: undefined });
    }, discoveryWaitMs);
    void lookup(key, id).then((pool) => {
      clearTimeout(timer);
      if (late || socket.destroyed) return;
      if (!pool) {
        rawAnswer(socket, 503, 'no target available for this route', 'Retry-After: 5\r\n');
        record(req, id, { status: 503, target: undefined, attempts: 0, error: undefined });
        return;
      }
      void forwarder.ws(req, socket, head, pool).then((o) => record(req, id, o));
    });
  };

  /**
   * IDLE_TIMEOUT of silence on a client connection (Node's per-socket timer, server.timeout, refreshed by
   * every read and write). Node has already told the request, so a client stalled in its body has had
   * its 408 from the forwarder. Then: a response still to come is the target's or discovery's to give
   * (UPSTREAM_TIMEOUT and the discovery wait bound them, then a 504 or 503), so the clock starts again;
   * an answer just written gets one more period to drain; a connection idle between requests gets
   * KEEP_ALIVE_GRACE_MS more, as Node gives past the `Keep-Alive: timeout` it advertises, so that a
   * client honouring the hint closes first (no request lost to the close race); anything else (a client
   * that stopped reading) is closed, as Node would.
   */
  const graced = new WeakSet<net.Socket>();
  const keepAliveGraced = new WeakSet<net.Socket>();
  let inKeepAliveGrace = 0;
  const onSocketTimeout = (socket: net.Socket): void => {
    const res = (socket as { _httpMessage?: http.ServerResponse | null })._httpMessage;
    if (keepAliveGraced.has(socket)) {
      endKeepAliveGrace(socket);
      if (!res) return void socket.destroy();
    } else if (!res && !socket.destroyed) {
      keepAliveGraced.add(socket);
      inKeepAliveGrace++;
      return void socket.setTimeout(KEEP_ALIVE_GRACE_MS);
    }
    if (res && !socket.destroyed) {
      if (!res.headersSent) return void socket.setTimeout(config.idleTimeoutMs);
      if (res.writableEnded && !graced.has(socket)) {
        graced.add(socket);
        return void socket.setTimeout(config.idleTimeoutMs);
      }
    }
    socket.destroy();
  };
  /** A request came on a connection in its keep-alive grace: back to the IDLE_TIMEOUT clock. */
  const endKeepAliveGrace = (socket: net.Socket): void => {
    if (!keepAliveGraced.delete(socket)) return;
    inKeepAliveGrace--;
    socket.setTimeout(config.idleTimeoutMs);
  };

  const server = http.createServer(
    {
      maxHeaderSize: config.maxHeaderSize,
      requestTimeout: config.requestTimeoutMs,
      headersTimeout:
        config.requestTimeoutMs > 0 ? Math.min(config.headersTimeoutMs, config.requestTimeoutMs) : config.headersTimeoutMs,
      // No separate keep-alive timer: an idle keep-alive connection is closed by the same IDLE_TIMEOUT
      // timer (server.timeout), plus KEEP_ALIVE_GRACE_MS (onSocketTimeout). With Node's, the socket's
      // timer was re-set twice per request (each setTimeout allocates one), and twice more by us; now
      // it is set once per connection. The Keep-Alive header is still sent (onRequest).
      keepAliveTimeout: 0,
      // How often header and request timeouts are enforced (Node's default is 30 s).
      connectionsCheckingInterval: 500,
      requireHostHeader: true,
      joinDuplicateHeaders: false,
      noDelay: true,
    },
    onRequest,
  );
  // Socket inactivity in either direction, like the ALB idle timeout; no listener means destroy.
  server.timeout = config.idleTimeoutMs;
  server.maxConnections = config.maxConnections;
  // Header fields past MAX_HEADERS are a 431 anyway (screen()); no need to keep up to Node's 2000 of them.
  server.maxHeadersCount = config.maxHeaders + 1;
  server.on('drop', () => limitHits.labels({ limit: 'connections' }).inc());
  server.on('timeout', onSocketTimeout);
  server.on('upgrade', onUpgrade);
  server.on('connect', (req: http.IncomingMessage, socket: Duplex) => {
    socket.on('error', () => undefined);
    rejectedRequests.labels({ reason: 'connect_method' }).inc();
    rawAnswer(socket, 405, 'CONNECT is not supported', 'Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\n');
    void req;
  });
  const sockets = new Set<Duplex>();
  server.on('connection', (socket) => {
    activeConnections.inc();
    sockets.add(socket);
    socket.once('close', () => {
      activeConnections.dec();
      sockets.delete(socket);
    });
    onFirstChunk(socket, (chunk: Buffer) => {
      // Node's parser reads `GET /\r\n` (HTTP/0.9) as a request line still waiting for its headers: answer
      // it now rather than after HEADERS_TIMEOUT. Runs after the parser has seen the same bytes.
      if (isHttp09(chunk) && !(socket as { _httpMessage?: unknown })._httpMessage) {
        rejectedRequests.labels({ reason: 'bad_version' }).inc();
        rawAnswer(socket, 400, 'only HTTP/1.0 and HTTP/1.1 are supported');
        socket.destroySoon();
      }
    });
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    const code = err.code ?? '';
    rejectedRequests.labels({ reason: 'client_error' }).inc();
    // A response already under way on this connection must not get an answer spliced into it.
    const current = (socket as { _httpMessage?: http.ServerResponse | null })._httpMessage;
    if (code === 'ECONNRESET' || !socket.writable || current?.headersSent || (err as { bytesParsed?: number }).bytesParsed === 0 && code === 'HPE_INVALID_EOF_STATE') {
      socket.destroy();
      return;
    }
    // Always a 4xx: unknown versions (`HTTP/1.2`, `HTTP/3.0`, a bare-LF request line) are malformed
    // HTTP/1.x to us, not a version to negotiate, and nothing hostile earns a 5xx.
    const status =
      code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW' ? 413 : 400;
    if (status === 431) limitHits.labels({ limit: 'headers' }).inc();
    rawAnswer(socket, status, http.STATUS_CODES[status] ?? 'Bad Request');
  });

  let shuttingDown = false;
  const shutdown = (timeoutMs: number): Promise<void> =>
    new Promise<void>((resolve) => {
      shuttingDown = true;
      let done = false;
      const finish = (): void => {
        if (done) return;
        done = true;
        clearInterval(sweep);
        clearTimeout(deadline);
        resolve();
      };
      server.close(() => finish());
      server.closeIdleConnections();
      // Connections whose last response just ended become idle: close them as they do.
      const sweep = setInterval(() => server.closeIdleConnections(), 100);
      const deadline = setTimeout(() => {
        server.closeAllConnections();
        // Upgraded sockets (WebSockets) are no longer tracked by the HTTP server: end them too.
        for (const socket of sockets) socket.destroy();
        setImmediate(finish);
      }, timeoutMs);
    });

  return { server, shutdown };
}
