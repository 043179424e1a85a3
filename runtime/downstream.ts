/**
 * The client side of a worker: a lean HTTP/1.1 server on net sockets and node's own llhttp parser (the
 * binding node:http runs), in place of node:http's server. upstream.ts did the same for the target side.
 *
 * Why: under small GETs node:http's server side (IncomingMessage and ServerResponse streams, their
 * listeners, ticks and timers per request) was about a third of a worker's CPU, and its per-connection
 * state most of a worker's heap at 1,000 connections (test/bench/README-bench.md). Here a request is one
 * plain object, its answer another, and both talk to their owner (forward.ts's Exchange) by direct calls.
 *
 * What it keeps of node:http, on purpose the same: llhttp in strict mode bounded by MAX_HEADER_SIZE (so
 * every framing, character and version check node:http makes), 400 / 413 / 431 for what the parser
 * refuses and 408 for HEADERS_TIMEOUT (first byte of a request to its last header line) and
 * REQUEST_TIMEOUT (to its last body byte, off by default), checked twice a second; one idle timer per connection
 * (IDLE_TIMEOUT); keep-alive as the client's version and Connection header say, `Keep-Alive: timeout=`
 * advertised; answers framed by Content-Length or chunked (close-delimited for HTTP/1.0 clients), with a
 * Date when the target sent none; pipelined requests answered in order; the rest of an unread request
 * body read and dropped so the connection can serve the next request.
 *
 * What it does differently: pipelined requests are handled one at a time (node:http ran them all at
 * once, so they reached the target in any order); a parse error behind an answer still under way waits
 * for that answer instead of being spliced into it. Alike: a client's FIN before its answer ends the
 * connection and the request with it (node:http's default, as nginx does).
 */
import { STATUS_CODES } from 'node:http';
import * as net from 'node:net';
import {
  consume,
  destroySocket,
  HTTPParser,
  kOnBody,
  kOnExecute,
  kOnHeaders,
  kOnHeadersComplete,
  kOnMessageBegin,
  kOnMessageComplete,
  keptAlive,
  METHOD_NAMES,
  type Parser,
  pauseReads,
  readStart,
  resumeReads,
  touch,
  unconsume,
} from './llhttp';
import { errorFields, log } from './log';
import { acceptedConnections, activeConnections, ClientBytes, countRequest, limitHits, proxyErrors, rejectedRequests } from './metrics';

export interface DownstreamOptions {
  /** MAX_HEADER_SIZE: request line and headers together; more is a 431. */
  readonly maxHeaderSize: number;
  /** HEADERS_TIMEOUT: from a request's first byte (or the connection's start) to its last header line. */
  readonly headersTimeoutMs: number;
  /** REQUEST_TIMEOUT: from a request's first byte to its last body byte, less the time its target held the body back; 0 for none. */
  readonly requestTimeoutMs: number;
  /** IDLE_TIMEOUT: silence on a connection, either way. */
  readonly idleTimeoutMs: number;
  /** MAX_CONNECTIONS: open client connections; the one past it is closed at once. */
  readonly maxConnections: number;
  /** How long the rest of a body is read after its answer. @default BODY_AFTER_ANSWER_MS */
  readonly bodyAfterAnswerMs?: number;
  /** How long a connection whose last answer has left waits for the client's close. @default LINGER_MS */
  readonly lingerMs?: number;
}

/** What the server hands its owner (server.ts). */
export interface DownstreamHandlers {
  /** A request whose head is complete; its body, if any, follows through `req.pipe()`. */
  request(req: Request, res: Response): void;
  /**
   * A WebSocket handshake: from here on the socket is the handler's, `head` the bytes read past it. What
   * it returns is asked at SHUTDOWN_TIMEOUT whether the proxy may still answer the handshake.
   */
  upgrade(req: Request, socket: net.Socket, head: Buffer): UpgradeHandler | void;
  /**
   * A request the server answered itself before it could be handed over (malformed or oversized, too
   * slow, a CONNECT), for the access log: `req` when its head was parsed, `client` the peer's address.
   */
  refused?(status: number, client: string, req: Request | undefined, seconds: number, bodyBytes: number): void;
}

/** Why the proxy, not the client, ended a connection with an answer under way. */
export type ClientCut = 'shutdown' | 'idle';

/** What an answer's owner (forward.ts's Exchange) is told, as direct calls. */
export interface ResponseHandler {
  /**
   * The client connection is gone (closed, or cut by a timeout) before the answer ended; `answered`: the
   * proxy answered the client itself before the target did (a 408 at REQUEST_TIMEOUT), so that is the
   * status the client saw; `cut`: the proxy cut it, not the client: at SHUTDOWN_TIMEOUT, or a client that
   * took none of its answer for IDLE_TIMEOUT.
   */
  clientClosed(answered?: number, cut?: ClientCut): void;
  /** The client was silent for IDLE_TIMEOUT while the body of this request was still due. */
  clientStalled(): void;
  /** The answer's last byte was handed to the socket. */
  responseFinished(): void;
  /**
   * SHUTDOWN_TIMEOUT passed with no answer begun. true: nothing of the request reached a target, the
   * handler has let it go, and the proxy answers 503; false: a target may be acting on it, so the
   * connection is cut rather than told to try elsewhere.
   */
  shutdown(): boolean;
}

/** What a WebSocket's owner (server.ts) is asked once its socket has left the server. */
export interface UpgradeHandler {
  /**
   * SHUTDOWN_TIMEOUT passed. true: no target has seen the handshake (it still waits for its route), the
   * handler has let it go, and the proxy answers 503 on the socket; false: it went to a target, or was
   * answered, and the socket is cut.
   */
  shutdown(): boolean;
}

/** Where a request body goes (upstream.ts's UpstreamRequest, or any Writable). */
export interface BodySink {
  write(chunk: Buffer): boolean;
  end(): unknown;
  once(event: 'drain', fn: () => void): unknown;
  /** The rest of the body will never come (the client left). */
  destroy?(): unknown;
}

/** How long past IDLE_TIMEOUT an idle keep-alive connection stays open (Node's own margin), so that a
 * client honouring `Keep-Alive: timeout=` closes first and no request is lost to the close race. */
export const KEEP_ALIVE_GRACE_MS = 1000;
/** How long the rest of a request's body is read after its answer is out, before the connection goes (nginx's lingering_time). */
export const BODY_AFTER_ANSWER_MS = 30_000;
/**
 * At shutdown, a connection that has not sent its first request yet is given this long from its
 * accept to send it (answered with `Connection: close`): it was opened to be used, and its client may
 * have written the request already (Go's Shutdown gives such connections 5 s). Idle keep-alive
 * connections close at once.
 */
export const NEW_CONNECTION_GRACE_MS = 2000;
/**
 * At shutdown, a keep-alive connection whose last answer left less than this ago is given the rest of
 * it before it is closed: a busy client writes its next request as soon as an answer is in, and a close
 * then would meet that request (a reset, the request unanswered). A request in that time is answered,
 * with `Connection: close`. One idle for longer closes at once, as nginx and Go close every idle one.
 */
export const RECENT_ANSWER_GRACE_MS = 1000;
/**
 * At MAX_CONNECTIONS, a keep-alive connection idle between requests for this long gives its place to
 * the next one (the longest open first), as nginx reuses idle keep-alive connections when it runs out:
 * idle connections a client never uses must not lock every other client out until IDLE_TIMEOUT. One
 * idle for less is a client between two requests of a page, and is kept.
 */
export const IDLE_EVICT_MS = 5000;
/** How often HEADERS_TIMEOUT and REQUEST_TIMEOUT are enforced. */
const TIMEOUT_CHECK_MS = 500;
/** Body chunks up to this size go out with the head as one latin1 string (bytes map one to one). */
const SMALL_BODY = 4096;
/**
 * Body bytes a request may hold with no reader yet, read ahead (Request.readAhead) or while it waits in
 * line (a read more at each answer ahead of it, ClientConn.answered): past it, reads wait for its reader.
 */
const HOLD_LIMIT = 64 * 1024;
/** Requests parsed ahead of their turn on one connection (pipelining); the rest of that read is refused. */
export const MAX_PIPELINED = 32;

/** The few request headers the proxy itself reads, found in one pass over the raw ones. */
class KnownHeaders {
  host: string | undefined = undefined;
  connection: string | undefined = undefined;
  'content-length': string | undefined = undefined;
  'transfer-encoding': string | undefined = undefined;
  upgrade: string | undefined = undefined;
  expect: string | undefined = undefined;
}

const join = (a: string | undefined, b: string): string => (a === undefined ? b : `${a}, ${b}`);

// What a parsed request turns out to be.
const PLAIN = 0;
const WEBSOCKET = 1;
/** `upgrade` among the tokens of a Connection value. */
const UPGRADE_TOKEN = /(?:^|,)[ \t]*upgrade[ \t]*(?:,|$)/i;
const CONNECT = 2;

/** One request from a client: its head as parsed, and its body on the way. */
export class Request {
  /** When its head was complete (performance.now()), for the duration metric and the access log. */
  readonly startedAt = performance.now();
  readonly headers = new KnownHeaders();
  /** Host header fields (more than one is refused). */
  hosts = 0;
  /** The client may send another request after this one (llhttp's verdict, from version and Connection). */
  keepAlive: boolean;
  /** The whole body has been read (at once for a request without one). */
  complete = false;
  /** PLAIN, WEBSOCKET or CONNECT. */
  kind = PLAIN;
  /** For a WebSocket: the bytes read past its head. */
  head: Buffer | undefined;
  /** Put in line while its head was parsed (behind an answer under way). */
  queued = false;
  /** Given to the server to answer (and to count, and log): the connection neither counts nor answers it again. */
  handedOver = false;
  /** Body bytes read from the client (for the access log). */
  bodyBytes = 0;
  /** The X-Amzn-Trace-Id sent to its target, once its head is rendered (for the access log). */
  trace: string | undefined = undefined;
  /** Its answer, once one is begun (for the access log). */
  response: Response | undefined = undefined;
  private sink: BodySink | undefined;
  private held: Buffer[] | undefined;
  private heldBytes = 0;
  /** Body bytes read on into `held` before the body has a sink (readAhead); past it, reads wait for the sink. */
  private aheadLimit = 0;
  private dropping = false;
  /** A copy of what went to the sink, kept while it fits `keepLimit` (keepBody), for a replay. */
  private kept: Buffer[] | undefined;
  private keptBytes = 0;
  private keepLimit = 0;
  /** collectRest()'s callback, while the rest of the body is read into the copy. */
  private collecting: ((whole: boolean) => void) | undefined;

  constructor(
    readonly conn: ClientConn,
    readonly method: string,
    /** The request target as sent; origin-form once retarget() has read an absolute-form one. */
    public url: string,
    readonly httpVersionMajor: number,
    readonly httpVersionMinor: number,
    readonly rawHeaders: string[],
    keepAlive: boolean,
  ) {
    this.keepAlive = keepAlive;
    const h = this.headers;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = rawHeaders[i];
      switch (name.length) {
        case 4:
          if (name.toLowerCase() === 'host') {
            this.hosts++;
            h.host ??= rawHeaders[i + 1];
          }
          break;
        case 6:
          if (name.toLowerCase() === 'expect') h.expect = join(h.expect, rawHeaders[i + 1]);
          break;
        case 7:
          if (name.toLowerCase() === 'upgrade') h.upgrade = join(h.upgrade, rawHeaders[i + 1]);
          break;
        case 10:
          if (name.toLowerCase() === 'connection') h.connection = join(h.connection, rawHeaders[i + 1]);
          break;
        case 14:
          if (name.toLowerCase() === 'content-length') h['content-length'] ??= rawHeaders[i + 1];
          break;
        case 17:
          if (name.toLowerCase() === 'transfer-encoding') h['transfer-encoding'] = join(h['transfer-encoding'], rawHeaders[i + 1]);
          break;
      }
    }
  }

  get socket(): net.Socket {
    return this.conn.socket;
  }

  /**
   * An absolute-form request (`GET http://host/path`) made origin-form, as RFC 9112 §3.2.2 has a proxy do:
   * the target's path goes on, and the URI's authority replaces the Host header (added when an HTTP/1.0
   * client sent none), so routing, the target and X-Forwarded-Host all see the one host.
   */
  retarget(path: string, authority: string): void {
    this.url = path;
    this.headers.host = authority;
    const raw = this.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) {
      if (raw[i].length === 4 && raw[i].toLowerCase() === 'host') {
        raw[i + 1] = authority;
        return;
      }
    }
    raw.push('Host', authority);
    this.hosts = 1;
  }

  /** The client's address, without the `::ffff:` of an IPv4 client on a dual-stack socket. */
  get ip(): string {
    return this.conn.ip;
  }

  /** A body is announced (chunked, or a Content-Length other than 0: `00` is 0 too). */
  get hasBody(): boolean {
    const cl = this.headers['content-length'];
    return this.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0' && !/^\s*0+\s*$/.test(cl));
  }

  /**
   * Sends the body to `sink` from here on: what was read before goes first, then each chunk as it is
   * parsed, then sink.end(). The client is not read while the sink pushes back.
   */
  pipe<T extends BodySink>(sink: T): T {
    this.sink = sink;
    this.dropping = false;
    const held = this.held;
    this.held = undefined;
    this.heldBytes = 0;
    let ok = true;
    if (held) {
      for (const b of held) {
        this.keep(b);
        ok = sink.write(b) && ok;
      }
    }
    this.conn.resumeUnpiped();
    if (this.complete) sink.end();
    else if (!ok) this.conn.waitForDrain(sink);
    return sink;
  }

  /**
   * A body announced at most `limit` bytes long is read on while its target's connection is made (or a
   * kept one is checked), not just its first read: sent with the head, the whole of such a body is in
   * before the target can answer from the head, and its socket can serve again (an early answer's cannot).
   * Nothing waits for it: what has not come when the target is ready streams after, as any body does.
   */
  readAhead(limit: number): void {
    if (this.sink || this.complete) return;
    this.aheadLimit = limit;
    this.conn.resumeUnpiped();
  }

  /** Keeps a copy of the body as it goes to its sink, while it is at most `limit` bytes: see replay(). */
  keepBody(limit: number): void {
    this.kept = [];
    this.keepLimit = limit;
  }

  /** No retry can need the body any more (an answer is on its way): the copy goes. */
  forgetBody(): void {
    this.kept = undefined;
  }

  /** The whole body has arrived and a copy of it is kept: it can go to another target. */
  get replayable(): boolean {
    return this.complete && this.kept !== undefined;
  }

  /** A copy of the body is being kept (it has fit so far). */
  get keeping(): boolean {
    return this.kept !== undefined;
  }

  /**
   * The target the body was going to failed before all of it had arrived: the rest is read into the
   * kept copy, and `then(whole)` is called once the last byte has come (whole: the copy has all of it).
   */
  collectRest(then: (whole: boolean) => void): void {
    this.sink = undefined;
    // What was held for a reader that never came (the try failed before it took the body) goes into the
    // copy first: the copy is the whole body from here on (replay), and reads no longer wait on it.
    const held = this.held;
    this.held = undefined;
    this.heldBytes = 0;
    if (held) for (const b of held) this.keep(b);
    this.conn.stopWaitingForDrain();
    this.conn.resumeUnpiped();
    if (this.complete) then(this.kept !== undefined);
    else this.collecting = then;
  }

  /** Sends the kept copy of the whole body to `sink` (another target's), and ends it. */
  replay<T extends BodySink>(sink: T): T {
    // The last target may have left the client paused until it drained: it never will now.
    this.conn.stopWaitingForDrain();
    this.sink = sink;
    for (const b of this.kept ?? []) sink.write(b);
    sink.end();
    return sink;
  }

  private keep(b: Buffer): void {
    if (this.kept === undefined) return;
    this.keptBytes += b.length;
    if (this.keptBytes > this.keepLimit) this.kept = undefined;
    else this.kept.push(b);
  }

  /** Holds as much of its body as it may with no reader (HOLD_LIMIT): reads wait for its reader. */
  get holdsEnough(): boolean {
    return this.heldBytes >= HOLD_LIMIT;
  }

  /** The body has somewhere to go that still takes it. */
  get piped(): boolean {
    return this.sink !== undefined && (this.sink as { destroyed?: boolean }).destroyed !== true;
  }

  /**
   * The client left before the whole body came: its sink (a target that answered already, and was
   * taking the rest so that its socket could serve again) is not to wait for what never comes.
   */
  abandon(): void {
    const sink = this.sink;
    this.sink = undefined;
    if (!this.complete) sink?.destroy?.();
  }

  /** Nobody will read the rest of the body: read and drop it, so the connection can go on. */
  drop(): void {
    this.dropping = true;
    this.held = undefined;
    this.heldBytes = 0;
    this.sink = undefined;
    this.conn.resumeUnpiped();
    this.conn.stopWaitingForDrain();
  }

  /** A body chunk from the parser. */
  received(b: Buffer): void {
    this.bodyBytes += b.length;
    if (this.dropping) return;
    if (this.collecting) {
      this.keep(b);
      return;
    }
    const sink = this.sink;
    if (sink) {
      this.keep(b);
      if (!sink.write(b)) this.conn.waitForDrain(sink);
      return;
    }
    // Not piped yet (the target is still being connected): keep what this read brought, and read no
    // more, unless the body is small enough to be read ahead (readAhead).
    (this.held ??= []).push(b);
    this.heldBytes += b.length;
    if (this.heldBytes > this.aheadLimit) this.conn.pause(PAUSE_UNPIPED);
  }

  /** The last body byte was parsed. */
  ended(): void {
    this.complete = true;
    const collecting = this.collecting;
    if (collecting) {
      this.collecting = undefined;
      collecting(this.kept !== undefined);
      return;
    }
    if (this.sink && !this.dropping) {
      this.sink.end();
      // Nothing more goes to the sink: reads need not wait for it to drain. A target that answered and
      // closed never drains, and the connection's next request would never be read.
      this.conn.stopWaitingForDrain();
    }
  }
}

let dateSecond = -1;
let dateValue = '';
/** The Date header's value, made once a second. */
export function httpDate(): string {
  const now = Date.now();
  const s = Math.floor(now / 1000);
  if (s !== dateSecond) {
    dateSecond = s;
    dateValue = new Date(now).toUTCString();
  }
  return dateValue;
}

/** The answer to one request, written straight to the client's socket. */
export class Response {
  statusCode = 0;
  /** writeHead was called: what the client gets is decided. */
  headersSent = false;
  /** end() was called. */
  finished = false;
  /** The connection may serve another request after this one. */
  shouldKeepAlive: boolean;
  handler: ResponseHandler | undefined;
  /** The connection was cut or answered otherwise: what is written now goes nowhere. */
  dead = false;
  /** The head, rendered, until the first body bytes (or end()) take it out with them. */
  private head: string | undefined;
  private chunked = false;
  /** The body ends where the connection does (HTTP/1.0 client, no length): only a reset tells a cut. */
  private closeDelimited = false;
  /** HEAD, 204 and 304 answers carry no body whatever the headers say. */
  private bodiless = false;
  /** Body bytes handed to the client's socket (for the access log). */
  bodyBytes = 0;

  constructor(
    readonly conn: ClientConn,
    readonly req: Request,
  ) {
    this.shouldKeepAlive = req.keepAlive;
    req.response = this;
  }

  /** The client sent `Expect: 100-continue` and has not had its 100: it may be holding its body back. */
  continueDue = false;

  /** `100 Continue`, when it is due: the body is wanted (it goes to a target), and has not come anyway. */
  writeContinue(): void {
    if (!this.continueDue) return;
    this.continueDue = false;
    if (!this.headersSent && !this.dead && !this.req.complete) this.conn.socket.write('HTTP/1.1 100 Continue\r\n\r\n', 'latin1');
  }

  /**
   * A target's informational answer (103 Early Hints), passed on ahead of the final one: never to an
   * HTTP/1.0 client (RFC 9110 §15.2), nor once the final head is decided. `lines` as for writeHead.
   */
  writeInformational(status: number, lines: string): void {
    if (this.headersSent || this.dead || this.finished || this.req.httpVersionMinor === 0) return;
    // Hints are worth nothing to a client that is not reading: never queued behind unread bytes.
    if (this.conn.socket.writableLength > 0) return;
    this.conn.socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status] || 'Informational'}\r\n${lines}\r\n`, 'latin1');
  }

  /**
   * The status line and headers. `lines` are `Name: value\r\n` each, hop-by-hop ones already gone;
   * Date, Connection, Keep-Alive and the framing are added here, as node:http adds them.
   */
  writeHead(status: number, reason: string | undefined, lines: string, hasLength: boolean, hasDate = false): void {
    if (this.headersSent) return;
    this.headersSent = true;
    this.statusCode = status;
    const http11 = this.req.httpVersionMajor === 1 && this.req.httpVersionMinor === 1;
    this.bodiless = this.req.method === 'HEAD' || status === 204 || status === 304 || (status >= 100 && status < 200);
    // Answered without the 100 its client waits for (refused before any target wanted the body): the body
    // may never come, or come after all; the connection ends after this answer (RFC 9110 §10.1.1).
    let keepAlive = this.shouldKeepAlive && !this.conn.lastToAnswer && !(this.continueDue && this.req.hasBody && !this.req.complete);
    // A status without a phrase of ours keeps the target's, even none (RFC 9112 §4: the phrase is optional).
    let head = `HTTP/1.1 ${status} ${reason || STATUS_CODES[status] || ''}\r\n${lines}`;
    if (!hasDate) head += `Date: ${httpDate()}\r\n`;
    // An answer without a body (HEAD, 204, 304) needs no framing, and HTTP/1.0 clients keep their connection.
    if (!hasLength && !this.bodiless) {
      // A body of unknown length: chunked for HTTP/1.1, delimited by the close for HTTP/1.0.
      if (http11) this.chunked = true;
      else {
        keepAlive = false;
        this.closeDelimited = true;
      }
    }
    this.shouldKeepAlive = keepAlive;
    head += keepAlive ? this.conn.server.keepAliveLines : 'Connection: close\r\n';
    if (this.chunked) head += 'Transfer-Encoding: chunked\r\n';
    this.head = head + '\r\n';
  }

  /** A body chunk (a string is written as latin1, byte for byte); false when the socket's buffer is full ('drain' follows). */
  write(chunk: Buffer | string): boolean {
    if (this.dead || this.finished) return true;
    const len = chunk.length;
    const s = this.conn.socket;
    if (this.bodiless || len === 0) {
      if (this.head !== undefined) this.flushHead(s);
      return true;
    }
    this.bodyBytes += len;
    const head = this.head;
    if (head === undefined && !this.chunked) return typeof chunk === 'string' ? s.write(chunk, 'latin1') : s.write(chunk);
    this.head = undefined;
    if (len <= SMALL_BODY) {
      // A small answer leaves as one string: one write of the stream's simplest kind, not a writev.
      const body = typeof chunk === 'string' ? chunk : chunk.toString('latin1', 0, len);
      const out = this.chunked ? `${head ?? ''}${len.toString(16)}\r\n${body}\r\n` : head + body;
      return s.write(out, 'latin1');
    }
    // Head and chunk (and its framing) leave in one write.
    s.cork();
    if (head !== undefined) s.write(head, 'latin1');
    if (this.chunked) s.write(`${len.toString(16)}\r\n`, 'latin1');
    let ok = typeof chunk === 'string' ? s.write(chunk, 'latin1') : s.write(chunk);
    if (this.chunked) ok = s.write('\r\n', 'latin1');
    s.uncork();
    return ok;
  }

  /** The head, if it still waits for body bytes, goes out now (the target sent its head and no body yet). */
  flush(): void {
    if (this.head !== undefined && !this.dead && !this.finished) this.flushHead(this.conn.socket);
  }

  /** Its body ends where the connection does: the close is part of the answer. */
  get delimitedByClose(): boolean {
    return this.closeDelimited;
  }

  /**
   * Takes back a head that has not left yet, as if writeHead had not been called (the target's answer
   * went bad before any byte of it reached the client, so another answer may still be given): false
   * when it has left.
   */
  retract(): boolean {
    if (this.head === undefined || this.dead || this.finished) return false;
    this.head = undefined;
    this.headersSent = false;
    this.statusCode = 0;
    this.chunked = false;
    this.closeDelimited = false;
    this.bodiless = false;
    this.shouldKeepAlive = this.req.keepAlive;
    return true;
  }

  private flushHead(s: net.Socket): void {
    const head = this.head!;
    this.head = undefined;
    s.write(head, 'latin1');
  }

  /** The end of the answer (with a last chunk, for the proxy's own short answers; a string is latin1). */
  end(chunk?: Buffer | string): void {
    if (this.finished) return;
    if (!this.dead) {
      const s = this.conn.socket;
      if (chunk !== undefined && typeof chunk === 'string' && this.head !== undefined && !this.chunked && !this.bodiless) {
        // The proxy's own answers: head and body as one string, one write.
        const head = this.head;
        this.head = undefined;
        this.bodyBytes += chunk.length;
        s.write(head + chunk, 'latin1');
      } else {
        if (chunk !== undefined) this.write(chunk);
        if (this.head !== undefined) {
          const head = this.head;
          this.head = undefined;
          s.write(this.chunked && !this.bodiless ? head + '0\r\n\r\n' : head, 'latin1');
        } else if (this.chunked && !this.bodiless) s.write('0\r\n\r\n', 'latin1');
      }
    }
    this.finished = true;
    this.handler?.responseFinished();
    this.conn.answered(this);
  }

  /**
   * Cuts the connection: the answer cannot be finished (its target failed mid-body). A length or the
   * missing last chunk tells the client its body is short; a body delimited by the close is cut with a
   * reset, since a FIN would say it was whole.
   */
  destroy(): void {
    const s = this.conn.socket;
    if (!this.closeDelimited || s.destroyed) return void s.destroy();
    try {
      s.resetAndDestroy();
    } catch {
      s.destroy(); // not a TCP handle
    }
  }

  // For UpstreamResponse, which pipes into this as into a Writable.
  once(event: 'drain', fn: () => void): this {
    this.conn.socket.once(event, fn);
    return this;
  }

  removeListener(event: 'drain', fn: () => void): this {
    this.conn.socket.removeListener(event, fn);
    return this;
  }
}

/** The body of an answer of the proxy's own, as rawAnswer writes it. */
function answerBody(message: string): string {
  return message + '\n';
}

/** An answer written straight to a socket (upgrade requests, parse errors), closing the connection after. */
export function rawAnswer(socket: net.Socket | import('node:stream').Duplex, status: number, message: string, extraHeaders = ''): void {
  if (socket.destroyed || !socket.writable) return;
  if (status >= 500) proxyErrors.labels({ code: String(status) }).inc();
  const body = answerBody(message);
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nDate: ${httpDate()}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n${extraHeaders}\r\n${body}`,
  );
}

/** How long a handed-over socket whose answer is written waits for the client's close (nginx's lingering_timeout). */
export const LINGER_MS = 5000;

/**
 * A socket this server handed over (a WebSocket handshake) whose answer, ours or the target's refusal,
 * has ended the connection. Nobody reads it any more: a byte the client sent after its head would sit
 * unread, its FIN behind it never seen, and on this half-open server the socket would stay open for
 * good (a client could pile them up until the worker runs out of descriptors). What comes is read and
 * dropped, so the client's close ends it, and it goes after LINGER_MS whatever the client does.
 */
export function linger(socket: net.Socket | import('node:stream').Duplex): void {
  if (socket.destroyed) return;
  socket.resume();
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** lingerFor()'s end: the socket goes, unless its last answer is still leaving (then `ms` more). */
function endLinger(socket: net.Socket, ms: number): void {
  if (socket.destroyed) return;
  if (!socket.writableFinished) return void setTimeout(endLinger, ms, socket, ms).unref();
  socket.destroy();
}

/** rawAnswer() to a handed-over socket (a WebSocket handshake refused, or failed at its target), then linger(). */
export function answerHandshake(socket: net.Socket | import('node:stream').Duplex, status: number, message: string, extraHeaders = ''): void {
  rawAnswer(socket, status, message, extraHeaders);
  linger(socket);
}

/**
 * Whether the parser stopped at `at` of `buf` inside a request line (a method, a space, then no line
 * end yet): the head overflowed in its request-target. Judged on this read alone; a line that began in
 * an earlier read is taken for a header.
 */
function inRequestLine(buf: Buffer, at: number | undefined, beganInBuf: boolean, lineOpen = false): boolean {
  if (at === undefined || at > buf.length) return false;
  const start = buf.lastIndexOf(10, at - 1) + 1;
  // A head begun in an earlier read: still in its request line if that had not ended and this read has no line end before `at`.
  if (start === 0 && !beganInBuf) return lineOpen;
  // A request line starts a message: at the read's start, after the blank line ending the one before, or
  // (a head begun in this read) after nothing but the empty lines a request may begin with (RFC 9112 §2.2).
  if (start > 0 && !(start >= 2 && buf[start - 2] === 10) && !(start >= 3 && buf[start - 2] === 13 && buf[start - 3] === 10) &&
      !(beganInBuf && lineStart(buf) >= start)) return false;
  return /^[A-Z][A-Z0-9!#$%&'*+.^_`|~-]* \S/.test(buf.subarray(start, Math.min(at, start + 64)).toString('latin1'));
}

/**
 * A read in which a head began and did not end ends in that head's request line: it has no line end,
 * or its last one ends an empty line (the message before it ended there, or an empty line came before
 * the request line, RFC 9112 §2.2).
 */
function requestLineOpen(buf: Buffer): boolean {
  const lf = buf.lastIndexOf(10);
  if (lf === -1) return true;
  let i = lf - 1;
  if (i >= 0 && buf[i] === 13) i--;
  return i < 0 || buf[i] === 10;
}

/** The longest request line the HTTP/0.9 check looks at. */
const MAX_HTTP09_LINE = 8192;

/** Past the empty lines a request may begin with (RFC 9112 §2.2), where the request line starts. */
function lineStart(chunk: Buffer): number {
  let start = 0;
  while (start < chunk.length && (chunk[start] === 13 || chunk[start] === 10)) start++;
  return start;
}

/** The request line in `chunk` has ended (its LF has come). */
function lineEnded(chunk: Buffer): boolean {
  return chunk.indexOf(10, lineStart(chunk)) !== -1;
}

/** What came of the first request so far is one HTTP/0.9 request line: `GET /path` and a line end, no version. */
function isHttp09(chunk: Buffer): boolean {
  const start = lineStart(chunk);
  const lf = chunk.indexOf(10, start);
  if (lf === -1 || lf !== chunk.length - 1 || lf - start > MAX_HTTP09_LINE) return false;
  const line = chunk.toString('latin1', start, chunk[lf - 1] === 13 ? lf - 1 : lf);
  return /^[A-Z]+ \S+$/.test(line);
}

/** The longest shutdown waits for the sockets it cut to say 'close'. */
const CLOSE_WAIT_MS = 1000;

/** Resolves once `sockets` (a set sockets leave on 'close') is empty, or after CLOSE_WAIT_MS. */
export function socketsClosed(sockets: { readonly size: number }): Promise<void> {
  return new Promise((resolve) => {
    if (sockets.size === 0) return resolve();
    const until = Date.now() + CLOSE_WAIT_MS;
    const poll = setInterval(() => {
      if (sockets.size > 0 && Date.now() < until) return;
      clearInterval(poll);
      resolve();
    }, 5);
  });
}

/** How long the 503s written at SHUTDOWN_TIMEOUT have to leave before their connections are cut. */
const SHUTDOWN_ANSWER_GRACE_MS = 200;
/** Those 503s: to requests, and WebSocket handshakes, that no target has seen. */
const SHUTTING_DOWN = 'the proxy is shutting down';
const SHUTDOWN_RETRY = 'Retry-After: 1\r\n';

// Where a connection is in reading the current request (for the headers and request timeouts).
const IDLE = 0;
const HEAD = 1;
const BODY = 2;

// Why a connection is not being read (any of them).
const PAUSE_QUEUE = 1;
const PAUSE_UNPIPED = 2;
const PAUSE_DRAIN = 4;
/** A tunnel's bytes follow: they are for its handler, not for the parser. */
const PAUSE_UPGRADE = 8;
/** The target holds the body back: not taking it yet, or pushing back. */
const BY_TARGET = PAUSE_UNPIPED | PAUSE_DRAIN;
/** Reads stopped for the proxy's reasons, not the client's (its turn, its target): REQUEST_TIMEOUT's clock stops. */
const NOT_THE_CLIENTS = PAUSE_QUEUE | BY_TARGET;

// Why the idle timer was given one more period.
const GRACE_KEEP_ALIVE = 1;
const GRACE_DRAIN = 2;

/** A parse error or timeout to answer once the answers before it are out. */
interface Refusal {
  readonly status: number;
  readonly message: string;
}

type Pending = Request | Refusal;

const kConn = Symbol('karma.conn');
type WithConn = { [kConn]: ClientConn };

/** One client connection: its parser, the request being read, the one being answered, those waiting. */
export class ClientConn {
  readonly parser: Parser;
  /** The request the parser is reading (head or body). */
  private reading: Request | undefined;
  /** The answer under way. */
  private current: Response | undefined;
  /** Requests parsed ahead of their turn (pipelining), answered in order. */
  private readonly waiting: Pending[] = [];
  /** IDLE, HEAD or BODY, and since when (performance.now()), for the timeouts. */
  state = HEAD;
  since = performance.now();
  /** When the last answer ended (performance.now()), for IDLE_EVICT_MS; 0 before the first. */
  answeredAt = 0;
  /** Any of PAUSE_*. */
  private paused = 0;
  /** The request whose body was being read when parsing stopped (stopParsing), while it is incomplete. */
  private unread: Request | undefined;
  /** The connection's end, should the body of a request already answered not be all in by then. */
  private afterAnswer: NodeJS.Timeout | undefined;
  /** Its last answer is out, and the body of that request still goes to the target taking it: the end follows the body. */
  private endAfterBody = false;
  /** Since when (performance.now()) reads have been stopped for the proxy's reasons (NOT_THE_CLIENTS). */
  private heldAt = 0;
  /** No request after the ones already read will be read: the connection ends after their answers. */
  closing = false;
  /** Nothing more is parsed: the connection is refused, handed over, or being closed. */
  private done = false;
  private grace = 0;
  /** The connection's first request line is yet to be checked (the HTTP/0.9 check), read by read until it ends. */
  private first = true;
  /** That line's bytes so far, while it comes in pieces (`GET /`, then its CRLF). */
  private firstLine: Buffer | undefined;
  /** A WebSocket handshake or CONNECT: parsing stops when the current read has been parsed. */
  private stopAfter: Request | undefined;
  /** A request whose Upgrade is ignored: llhttp stops at its end, and the rest of that read is parsed here. */
  private resumeAfter: Request | undefined;
  /** The message being parsed began in the read being parsed (its first line is in this read). */
  private headInRead = false;
  /** The head being read began in an earlier read and its request line has not ended yet (a 414, not a 431, if it overflows). */
  private lineOpen = false;
  /** Part of a request head has come, not all of it. */
  private headBegun = false;
  /** A request has begun on this connection (empty lines before one, which HTTP allows, are none). */
  private begun = false;
  private draining: BodySink | undefined;
  /** The parser reads the socket natively (consume()); otherwise through 'data'. */
  private consumed = false;
  private headerParts: string[] = [];
  private urlParts = '';
  private address: string | undefined;

  constructor(
    readonly server: DownstreamServer,
    readonly socket: net.Socket,
  ) {
    const parser = (this.parser = new HTTPParser());
    parser.initialize(HTTPParser.REQUEST, {}, server.opts.maxHeaderSize, 0);
    (parser as unknown as WithConn)[kConn] = this;
    parser[kOnMessageBegin] = onMessageBegin;
    parser[kOnHeaders] = onHeaders;
    parser[kOnHeadersComplete] = onHeadersComplete;
    parser[kOnBody] = onBody;
    parser[kOnMessageComplete] = onMessageComplete;
    (socket as unknown as WithConn)[kConn] = this;
    // Reading natively, 'data' never comes; the listener keeps the socket flowing so that 'end' does.
    socket.on('data', onData);
    if (consume(parser, socket)) {
      this.consumed = true;
      parser[kOnExecute] = onExecute;
    }
    socket.on('end', onEnd);
    socket.on('timeout', onTimeout);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.setTimeout(server.opts.idleTimeoutMs);
  }

  get ip(): string {
    if (this.address === undefined) {
      const a = this.socket.remoteAddress ?? '';
      this.address = a.startsWith('::ffff:') ? a.slice(7) : a;
    }
    return this.address;
  }

  /** The answer being written is the connection's last: it says `Connection: close`. */
  get lastToAnswer(): boolean {
    return this.closing && this.waiting.length === 0;
  }

  get destroyed(): boolean {
    return this.socket.destroyed;
  }

  /** No request begun on it yet: since when, on performance.now()'s clock (undefined once one was). */
  get unusedSince(): number | undefined {
    return !this.begun && this.state === HEAD && !this.reading ? this.since : undefined;
  }

  /** Nothing read of a request, nothing being answered or waiting: safe to close. */
  get idle(): boolean {
    return !this.current && this.waiting.length === 0 && this.state !== BODY && !this.reading && (this.state === IDLE || !this.begun);
  }

  // ---- reading

  /** A read, when the parser does not consume the socket. */
  read(d: Buffer): void {
    if (this.done) return;
    let r: number | Error | undefined;
    try {
      r = this.parser.execute(d);
    } catch (err) {
      // A fault of ours while handling a request: this connection goes, the worker stays.
      log('error', 'request handling failed', errorFields(err));
      this.socket.destroy();
      return;
    }
    this.parsed(r, d);
    this.headInRead = false;
  }

  /** After the parser consumed a read natively. */
  executed(r: number | Error | undefined): void {
    touch(this.socket);
    if (this.done && !this.stopAfter) return;
    this.parsed(r, undefined);
    this.headInRead = false;
  }

  /** What a read parsed to; `d` is the read, or undefined to ask the parser for a copy. */
  private parsed(r: number | Error | undefined, d: Buffer | undefined): void {
    // The read, copied out of the parser at most once, and only when a check below needs it.
    let read = d;
    if (this.first && this.begun) {
      read ??= this.parser.getCurrentBuffer!();
      const seen = this.firstLine === undefined ? read : Buffer.concat([this.firstLine, read]);
      const heading = this.state === HEAD && !this.reading && typeof r === 'number';
      // llhttp reads `GET /\r\n` (HTTP/0.9) as a request line still waiting for its headers: answer it
      // now rather than after HEADERS_TIMEOUT, however many reads the line came in.
      if (heading && isHttp09(seen)) {
        this.first = false;
        this.firstLine = undefined;
        rejectedRequests.labels({ reason: 'bad_version' }).inc();
        const message = 'only HTTP/1.0 and HTTP/1.1 are supported';
        this.countRefused(400, message);
        return this.refuse(400, message);
      }
      if (heading && !lineEnded(seen) && seen.length <= MAX_HTTP09_LINE) this.firstLine = Buffer.from(seen);
      else {
        this.first = false;
        this.firstLine = undefined;
      }
    }
    const stop = this.stopAfter;
    if (stop) {
      this.stopAfter = undefined;
      this.stopParsing();
      this.pause(PAUSE_UPGRADE);
      stop.head = (read ?? this.parser.getCurrentBuffer!()).subarray(r as number);
      if (!stop.queued) this.enqueue(stop);
      return;
    }
    // Parsing stopped during this read (too many requests ahead of their turn): the rest is not looked at.
    if (this.done) return;
    if (typeof r === 'object' && r !== null) return this.parseError(r as NodeJS.ErrnoException & { bytesParsed?: number }, read);
    // A head left unfinished by this read (a slow or large one, never the everyday request): is its request line?
    if (this.state === HEAD && (this.headInRead || this.lineOpen)) {
      read ??= this.parser.getCurrentBuffer!();
      this.lineOpen = this.headInRead ? requestLineOpen(read) : read.indexOf(10) === -1;
    } else this.lineOpen = false;
    const ignored = this.resumeAfter;
    if (ignored && this.reading !== ignored) {
      // The message whose Upgrade is ignored ended in this read: what follows it (a pipelined request, the
      // next reads) is HTTP. A fresh parser: llhttp keeps the upgrade mark until the next message's head
      // is complete, and under it the binding reports no error (garbage would be ignored, not a 400).
      this.resumeAfter = undefined;
      const rest = (d ?? this.parser.getCurrentBuffer!()).subarray(r as number);
      this.parser.initialize(HTTPParser.REQUEST, {}, this.server.opts.maxHeaderSize, 0);
      if (rest.length > 0) this.read(rest);
    }
  }

  messageBegin(): void {
    if (this.done) return;
    this.headBegun = true;
    this.begun = true;
    this.headInRead = true;
    this.state = HEAD;
    this.since = performance.now();
    this.headerParts.length = 0;
    this.urlParts = '';
    if (this.grace !== 0) {
      this.grace = 0;
      this.socket.setTimeout(this.server.opts.idleTimeoutMs);
    }
  }

  headerPart(h: string[], url: string): void {
    if (this.done) return;
    // Bounded by MAX_HEADER_SIZE: llhttp counts these bytes.
    for (let i = 0; i < h.length; i++) this.headerParts.push(h[i]);
    this.urlParts += url;
  }

  headersComplete(major: number, minor: number, headers: string[] | undefined, method: number, url: string | undefined, upgrade: boolean, keepAlive: boolean): number {
    this.headBegun = false;
    if (this.done) return 1;
    if (headers === undefined) {
      headers = this.headerParts;
      this.headerParts = [];
    }
    url ??= this.urlParts;
    this.state = BODY;
    const req = new Request(this, METHOD_NAMES[method] ?? '', url, major, minor, headers, keptAlive(keepAlive, major, minor, headers));
    this.reading = req;
    if (upgrade) {
      if (req.method === 'CONNECT') req.kind = CONNECT;
      // Not from an HTTP/1.0 client: RFC 9110 §7.8 has the Upgrade of a 1.0 request ignored. And only with
      // `upgrade` in Connection: llhttp takes Proxy-Connection's too, which RFC 9110 §7.6.1 has removed,
      // not acted on. A front proxy (CloudFront, a load balancer of the user's) that passes it as an
      // unknown header would see a plain GET while the connection behind it became a tunnel: its next
      // requests, other clients' among them, would go into the tunnel.
      else if (req.method === 'GET' && req.headers.upgrade?.toLowerCase() === 'websocket' && (major > 1 || minor >= 1) &&
        UPGRADE_TOKEN.test(req.headers.connection ?? '')) req.kind = WEBSOCKET;
      if (req.kind === PLAIN) {
        // Any other Upgrade (h2c from `curl --http2` or Java's HttpClient, `TLS/1.0`): RFC 9110 §7.8 lets a
        // server ignore it, as the ALB and nginx do. It is answered as the HTTP/1.1 request it also is, and
        // the connection stays open. Its body is HTTP/1.1's too (another protocol would start only after a
        // 101): llhttp parses it as any other, stops at the message's end (it takes the rest of that read
        // for the other protocol) and parses later reads as HTTP again; the rest is parsed here.
        this.resumeAfter = req;
        this.enqueue(req);
        return 0;
      }
      // The rest of this read is not HTTP to parse: a tunnel's first bytes.
      this.stopAfter = req;
      // Behind an answer under way, it takes its place in line now, so that answer is not the last.
      if (this.current || this.waiting.length > 0) {
        req.queued = true;
        this.waiting.push(req);
        this.pause(PAUSE_QUEUE);
      }
      return 2; // no body is parsed: the message ends here
    }
    this.enqueue(req);
    return 0;
  }

  received(b: Buffer): void {
    if (!this.done) this.reading?.received(b);
  }

  messageComplete(): void {
    // Parsing stopped (the connection ends after its answers): the parser may still run through what
    // comes, which is dropped, and must not end a lingering close's bound.
    if (this.done) return;
    const req = this.reading;
    this.reading = undefined;
    if (this.afterAnswer) {
      clearTimeout(this.afterAnswer);
      this.afterAnswer = undefined;
    }
    this.state = IDLE;
    this.headerParts.length = 0;
    req?.ended();
    if (this.endAfterBody) {
      // The body of the last answer's request is all in (endAfterBody): the connection ends as after any last answer.
      this.endAfterBody = false;
      this.stopParsing();
      return this.endAfterLastAnswer(false);
    }
    if (this.closing && !this.done && this.server.shuttingDown) this.stopParsing();
  }

  private enqueue(p: Pending): void {
    if (!this.current && this.waiting.length === 0) return this.dispatch(p);
    if (this.waiting.length >= MAX_PIPELINED) {
      // More requests ahead of their turn than anyone pipelines: answer those, then close.
      this.stopParsing();
      return;
    }
    this.waiting.push(p);
    this.pause(PAUSE_QUEUE);
  }

  private dispatch(p: Pending): void {
    if (!(p instanceof Request)) return this.refuse(p.status, p.message);
    if (p.kind === WEBSOCKET) return this.handOver(p);
    if (p.kind === CONNECT) {
      rejectedRequests.labels({ reason: 'connect_method' }).inc();
      const message = 'CONNECT is not supported';
      this.refusedBeforeRoute(405, p, (performance.now() - p.startedAt) / 1000, message);
      return this.refuse(405, message, 'Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\n');
    }
    p.handedOver = true;
    const res = new Response(this, p);
    this.current = res;
    try {
      this.server.handlers.request(p, res);
    } catch (err) {
      // A fault of ours while handling a request: this connection goes, the worker stays.
      log('error', 'request handling failed', errorFields(err));
      this.socket.destroy();
    }
  }

  /** The answer under way has ended: the next request's turn, or the connection's end. */
  answered(res: Response): void {
    if (this.current !== res) return;
    this.current = undefined;
    this.answeredAt = performance.now();
    const req = res.req;
    if (res.dead) {
      this.stopParsing();
      return void this.socket.destroySoon();
    }
    // The last answer (said `Connection: close`, or the proxy began shutting down after its head had
    // gone out keep-alive, with nothing else to answer): the connection ends.
    if (!res.shouldKeepAlive || (this.closing && this.waiting.length === 0)) {
      // Closing the socket with bytes of the client's still unread (the rest of a body an early 413
      // refused, a request pipelined behind the last answer at shutdown) would reset the connection
      // under the answer, and the client would lose it. The answer ends with a FIN; whatever still comes
      // is read and dropped until the client closes (nginx's lingering close). The body's target gets no
      // more of it.
      // (A request without a body answered at once is not complete yet either: its end is parsed next.)
      const bodyComing = req.hasBody && !req.complete;
      // The client asked for the close (urllib always does; HTTP/1.0) and its target, which answered
      // early, still takes the body: the rest goes on to it, as on a keep-alive connection and bounded
      // the same, and the connection ends after it. A target that reads on gets the whole upload. Not an
      // answer that only the close ends (no length, to HTTP/1.0): its client would wait for the body's end.
      if (bodyComing && req.piped && !req.keepAlive && !this.closing && !res.delimitedByClose) {
        this.endAfterBody = true;
        return this.boundBodyAfterAnswer();
      }
      this.stopParsing();
      // The client asked for the close (`Connection: close`, HTTP/1.0) and owes nothing more: no more
      // will come, and the socket goes once the answer has left (nginx lingers only when more may come).
      if (!req.keepAlive && !bodyComing) return void this.socket.destroySoon();
      if (bodyComing) req.abandon();
      return this.endAfterLastAnswer(bodyComing);
    }
    // A body nobody takes (not asked for, or its target gone): what is still coming is read and dropped,
    // and what was held for a target that never took it goes. Reads stopped for it start again, or the
    // next request on the connection would never be read (a whole body held while its target refused).
    if (!req.piped) req.drop();
    // The rest of a body after its answer is read on for at most BODY_AFTER_ANSWER_MS (nginx's
    // lingering_time): a client trickling an endless body after a 503 or a 413 would otherwise hold its
    // connection, one of MAX_CONNECTIONS, for good.
    if (!req.complete) this.boundBodyAfterAnswer();
    if (this.waiting.length === 0) return this.resume(PAUSE_QUEUE);
    // The next in line goes after a turn of the loop with reads on: a client that left while its
    // pipelined requests waited (its FIN unread, reads stopped behind the answer) is seen to have gone
    // first, and what it left in line never reaches a target, as nginx drops it. Reads stopped for the
    // line, and for a body held in it (the request being read is in line: a read more of it is held, up
    // to HOLD_LIMIT, and stops reads again; a body in line past it hides the close behind it); with
    // parsing stopped (a shutdown, a refusal in line, too many in line), what comes is dropped.
    this.resume(PAUSE_QUEUE);
    this.resumeUnpiped();
    if (this.done && this.paused === 0) resumeReads(this.socket, this.consumed);
    setImmediate(afterPoll, next, this);
  }

  /** The rest of a body after its answer is read on for at most BODY_AFTER_ANSWER_MS, then the connection goes. */
  private boundBodyAfterAnswer(): void {
    this.afterAnswer = setTimeout(destroySocket, this.server.opts.bodyAfterAnswerMs ?? BODY_AFTER_ANSWER_MS, this.socket);
    this.afterAnswer.unref();
  }

  /** Parsing stopped, the last answer written: our FIN follows it, and what the client still sends is dropped (lingerFor). */
  private endAfterLastAnswer(bodyDue: boolean): void {
    this.dropReads();
    this.socket.end();
    this.lingerFor(bodyDue);
  }

  /**
   * Our side of the connection is ending (its last answer written, a FIN to follow it): the socket goes
   * when the client closes, or after the answer's last byte has left by LINGER_MS (BODY_AFTER_ANSWER_MS
   * while a body is still due), whichever comes first. Not before that byte has left: a slow reader would
   * lose the end of its answer (IDLE_TIMEOUT bounds a client that stopped reading).
   */
  private lingerFor(bodyDue: boolean): void {
    const ms = bodyDue ? this.server.opts.bodyAfterAnswerMs ?? BODY_AFTER_ANSWER_MS : this.server.opts.lingerMs ?? LINGER_MS;
    if (this.afterAnswer) clearTimeout(this.afterAnswer);
    this.afterAnswer = setTimeout(endLinger, ms, this.socket, ms);
    this.afterAnswer.unref();
  }

  /** Dispatches the next waiting request (on its own tick, not inside the answer before it). */
  next(): void {
    if (this.current || this.socket.destroyed) return;
    const p = this.waiting.shift();
    if (p === undefined) return;
    if (this.waiting.length > 0) this.pause(PAUSE_QUEUE);
    this.dispatch(p);
  }

  // ---- flow control

  pause(why: number): void {
    if (this.paused === 0) pauseReads(this.socket, this.consumed);
    if ((this.paused & NOT_THE_CLIENTS) === 0 && (why & NOT_THE_CLIENTS) !== 0) this.heldAt = performance.now();
    this.paused |= why;
  }

  resume(why: number): void {
    if ((this.paused & why) === 0) return;
    const wasHeld = (this.paused & NOT_THE_CLIENTS) !== 0;
    this.paused &= ~why;
    // The time a request waited for its turn, or its target held the body back, is not the client's:
    // REQUEST_TIMEOUT does not count it.
    if (wasHeld && (this.paused & NOT_THE_CLIENTS) === 0) this.since += performance.now() - this.heldAt;
    if (this.paused === 0 && !this.done) {
      // A head begun before reading stopped (pipelined behind a slow answer) gets its HEADERS_TIMEOUT
      // afresh: the wait was ours, not the client's.
      if (this.state === HEAD) this.since = performance.now();
      resumeReads(this.socket, this.consumed);
    }
  }

  /** Reads are stopped by us (a request ahead in line, a target not yet taking the body): not the client's delay. */
  get heldBack(): boolean {
    return this.paused !== 0;
  }

  /** Its body waits on the target (not taking it yet, or pushing back). */
  get heldByTarget(): boolean {
    return (this.paused & BY_TARGET) !== 0;
  }

  /** Its body waits on the target, or its request for its turn: REQUEST_TIMEOUT's clock is stopped. */
  get clockStopped(): boolean {
    return (this.paused & NOT_THE_CLIENTS) !== 0;
  }

  /**
   * Reads stopped for a body with no reader go on: its reader has come, or it is dropped, or (for one in
   * line) an answer ahead has ended. One flag for the connection: not while the request being read, in
   * line behind others, holds HOLD_LIMIT already.
   */
  resumeUnpiped(): void {
    if (this.reading?.holdsEnough !== true) this.resume(PAUSE_UNPIPED);
  }

  stopWaitingForDrain(): void {
    this.draining = undefined;
    this.resume(PAUSE_DRAIN);
  }

  /** A request body's sink is full: read the client again once it drains. */
  waitForDrain(sink: BodySink): void {
    if (this.draining === sink) return;
    this.draining = sink;
    this.pause(PAUSE_DRAIN);
    sink.once('drain', () => {
      // Not a sink let go of since (its body ended, another target took the rest): reads wait for the current one.
      if (this.draining !== sink) return;
      this.draining = undefined;
      this.resume(PAUSE_DRAIN);
    });
  }

  // ---- ends

  /** Parses nothing more; what was read is still answered, and then the connection ends. */
  private stopParsing(): void {
    this.done = true;
    this.closing = true;
    this.state = IDLE;
    // Its body will not be read on: closed() lets its sink go.
    if (this.reading && !this.reading.complete) this.unread = this.reading;
    this.reading = undefined;
  }

  private parseError(err: NodeJS.ErrnoException & { bytesParsed?: number }, d: Buffer | undefined): void {
    const code = err.code ?? '';
    // Data after a request that said `Connection: close`: ignored, the connection ends after its answer.
    if (code === 'HPE_CLOSED_CONNECTION') return this.stopParsing();
    rejectedRequests.labels({ reason: 'client_error' }).inc();
    // Always a 4xx: unknown versions (`HTTP/1.2`, `HTTP/3.0`, a bare-LF request line) are malformed
    // HTTP/1.x to us, not a version to negotiate, and nothing hostile earns a 5xx. A head over
    // MAX_HEADER_SIZE is a 431, or a 414 when its request line alone is (RFC 9112 §3, as nginx says it).
    const status = code === 'HPE_HEADER_OVERFLOW'
      ? (inRequestLine(d ?? this.parser.getCurrentBuffer!(), err.bytesParsed, this.headInRead, this.lineOpen) ? 414 : 431)
      : code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW' ? 413 : 400;
    if (status === 431 || status === 414) limitHits.labels({ limit: 'headers' }).inc();
    const message = STATUS_CODES[status] ?? 'Bad Request';
    this.countRefused(status, message);
    this.refuseInTurn(status, message);
  }

  /**
   * HEADERS_TIMEOUT or REQUEST_TIMEOUT passed: a 408, in turn (nothing, on a connection that began no
   * request). A body past REQUEST_TIMEOUT is a body_timeout, as a body stalled past IDLE_TIMEOUT is; one
   * whose answer has begun (its target answered before the body was in) gets no 408 and is no rejection:
   * the connection just ends.
   */
  timedOut(): void {
    // A connection that never began a request (sent nothing, or empty lines only) asked for nothing: closed
    // quietly, as nginx closes it (an ALB at its idle timeout). No 408 and no request counted: a browser's
    // preconnect is not a client error.
    if (this.unusedSince !== undefined) return void this.socket.destroy();
    const req = this.reading;
    const answered = req?.handedOver === true && (this.current?.req !== req || this.current.headersSent);
    if (!answered) rejectedRequests.labels({ reason: this.state === BODY ? 'body_timeout' : 'head_timeout' }).inc();
    this.countRefused(408, STATUS_CODES[408]!);
    this.refuseInTurn(408, STATUS_CODES[408]!);
  }

  /**
   * A request refused before it had a route is one of karma_requests_total{route="none"}, as the server's
   * refusals are. One already handed to the server (a body that stalled or broke mid-way) is counted
   * there, under its route, with this status.
   */
  private countRefused(status: number, message: string): void {
    if (this.reading?.handedOver) return;
    // A head left unfinished: from its first byte (or the connection's start).
    this.refusedBeforeRoute(status, this.reading, (performance.now() - (this.reading?.startedAt ?? this.since)) / 1000, message);
  }

  /** A request answered here, never handed to the server: counted under route none, and told for the access log. */
  private refusedBeforeRoute(status: number, req: Request | undefined, seconds: number, message: string): void {
    countRequest('none', status, seconds);
    this.server.handlers.refused?.(status, this.ip, req, seconds, Buffer.byteLength(answerBody(message)));
  }

  /**
   * Answers `status` for the request being read once the answers before it are out (at once when there
   * are none), then closes. A request of which only part was read never goes on: if it is the one being
   * answered (its body trickled in), the answer is cut off for this one; if it waits, it is dropped.
   */
  private refuseInTurn(status: number, message: string): void {
    const req = this.reading;
    this.stopParsing();
    if (req && !req.complete) {
      if (this.current?.req === req) return this.refuse(status, message);
      // Answered already (its target answered before the body was all in): what is left of it is broken,
      // and gets no second answer; the connection ends.
      if (req.handedOver) return void this.socket.destroySoon();
      const i = this.waiting.indexOf(req);
      if (i !== -1) this.waiting.splice(i, 1);
    }
    if (!this.current && this.waiting.length === 0) return this.refuse(status, message);
    this.waiting.push({ status, message });
  }

  /**
   * Answers with the proxy's own `status` straight on the socket and closes the connection; an answer
   * already under way is cut instead (nothing is spliced into it). Whoever forwards the current request
   * is told the client is gone.
   */
  refuse(status: number, message: string, extraHeaders = ''): void {
    this.stopParsing();
    this.waiting.length = 0;
    const res = this.current;
    this.current = undefined;
    if (res && !res.finished) {
      res.dead = true;
      res.handler?.clientClosed(res.headersSent ? undefined : status);
      if (res.headersSent) {
        this.socket.destroy();
        return;
      }
    }
    // Keep reading (and dropping) what the client still sends, so that closing does not reset the
    // connection under the answer; the client's close ends it, or the linger's bound.
    this.dropReads();
    rawAnswer(this.socket, status, message, extraHeaders);
    this.lingerFor(this.unread?.hasBody === true);
  }

  /** Parsing has stopped: whatever the client still sends is read and dropped, held back by nothing. */
  private dropReads(): void {
    this.paused = 0;
    this.draining = undefined;
    resumeReads(this.socket, this.consumed);
  }

  /**
   * SHUTDOWN_TIMEOUT has passed. A request still without an answer that no target has seen (waiting
   * for a socket of its target, or for discovery) gets a 503 and the connection closes: true. One a
   * target has (it may act on it: a 503 would invite a second POST), one whose answer is under way, or
   * none at all, is left to be cut: false.
   */
  answerShutdown(): boolean {
    const res = this.current;
    if (this.destroyed || !res || res.finished || res.headersSent) return false;
    // The 503 goes straight on the socket (refuse), after its owner has logged it (shutdown()): the
    // access line's bytesOut is its body's, as for the proxy's other answers.
    res.bodyBytes = Buffer.byteLength(answerBody(SHUTTING_DOWN));
    if (res.handler && !res.handler.shutdown()) {
      res.bodyBytes = 0;
      return false;
    }
    this.refuse(503, SHUTTING_DOWN, SHUTDOWN_RETRY);
    return true;
  }

  /** SHUTDOWN_TIMEOUT: the answer under way (or awaited from a target) is about to be cut by the proxy, not the client. */
  cutForShutdown(): void {
    const res = this.current;
    if (!res || res.finished || res.dead) return;
    this.current = undefined;
    res.dead = true;
    res.handler?.clientClosed(undefined, 'shutdown');
    // A body delimited by the close is cut with a reset (Response.destroy): the deadline's plain close
    // of the socket would tell the client it was whole.
    if (res.headersSent) res.destroy();
  }

  /**
   * The proxy is shutting down: no request after those already read is read, so that the answer to the
   * last of them says `Connection: close` and the connection ends after it. A client that pipelines
   * (always a request ahead of its answer) was otherwise answered keep-alive until SHUTDOWN_TIMEOUT cut
   * it. A body being read is read to its end first; a connection with nothing to answer yet (just
   * opened, or between requests) reads the request it is owed, answered with `Connection: close`.
   */
  closeAfterAnswers(): void {
    this.closing = true;
    if (this.done || this.state === BODY) return; // messageComplete() stops parsing after the body
    if (this.current || this.waiting.length > 0) this.stopParsing();
  }

  /** A WebSocket: the socket leaves this server for the handler, with the bytes read past the head. */
  private handOver(req: Request): void {
    const s = this.socket;
    s.removeListener('data', onData);
    s.removeListener('end', onEnd);
    s.removeListener('timeout', onTimeout);
    if (this.consumed) {
      this.consumed = false;
      unconsume(this.parser, s);
    }
    // As node:http leaves an upgraded socket: what arrives is kept until the handler reads (a flowing
    // socket with no listener would lose it), and its first 'data' listener or pipe() starts the flow.
    (s as { readableFlowing: boolean | null }).readableFlowing = null;
    // Reads stopped here would wait for a stream read that never comes (the stream asked once, before
    // the parser took the socket): they restart now, into the stream.
    this.paused = 0;
    readStart(s);
    this.server.conns.delete(this);
    const handler = this.server.handlers.upgrade(req, s, req.head ?? Buffer.alloc(0));
    if (handler) this.server.upgrades.set(s, handler);
  }

  /**
   * The client closed its side (FIN). Between requests the connection ends. With a request not yet
   * answered, or its answer under way, the client has left: a close and a half-close look the same,
   * and nginx, an ALB, node:http and Go's server all take it as the client leaving. So does the proxy:
   * the connection goes, and with it the request at its target (logged 499), instead of a target socket
   * held for nobody (an abandoned long poll or event stream kept one until its next write failed).
   */
  ended(): void {
    if (!this.done) {
      const r = this.parser.finish();
      this.stopParsing();
      // A partial request: nothing to answer.
      if (typeof r === 'object' && r !== null) return void this.socket.destroy();
    }
    if (this.current || this.waiting.length > 0) this.socket.destroy();
    else this.socket.end();
  }

  /**
   * IDLE_TIMEOUT of silence. A body still due for the request being answered: the client stalled (its
   * forwarder answers 408). Then: an answer still to come, or one under way with nothing left unwritten,
   * is the target's or discovery's to give (UPSTREAM_TIMEOUT and the discovery wait bound them), so the
   * clock starts again; an answer under way whose bytes wait for the client is cut; one written but
   * not yet read by the client gets one more period; a connection idle between requests gets
   * KEEP_ALIVE_GRACE_MS more, as Node gives past the `Keep-Alive: timeout` it advertises; anything else
   * (a client that stopped reading mid-answer) is closed.
   */
  idleTimeout(): void {
    const s = this.socket;
    const res = this.current;
    if (res && this.reading === res.req && !res.req.complete) {
      // Its body waits on the target (not taking it yet, or pushing back): the client is not the slow
      // one. The clock starts again; UPSTREAM_TIMEOUT bounds a target that stopped reading (a 504).
      if (this.heldByTarget) return void s.setTimeout(this.server.opts.idleTimeoutMs);
      res.handler?.clientStalled();
    }
    if (s.destroyed) return;
    // Read again: the stalled request's 408 may have ended the answer under way.
    const answering = this.current;
    if (answering) {
      // Nothing of it waiting to be written (not begun, or all the client was given so far is taken):
      // the silence is the target's, which UPSTREAM_TIMEOUT bounds (a stream between two events, a
      // long poll). The clock starts again. Bytes still waiting: the client stopped reading, and goes.
      if (!answering.headersSent || s.writableLength === 0) {
        s.setTimeout(this.server.opts.idleTimeoutMs);
        return;
      }
      // Cut by the proxy, not left by the client: its owner logs it so.
      this.current = undefined;
      answering.dead = true;
      answering.handler?.clientClosed(undefined, 'idle');
      answering.destroy(); // a body delimited by the close is reset: a FIN would say it was whole
      return;
    }
    // A head begun and left unfinished for IDLE_TIMEOUT (shorter than HEADERS_TIMEOUT) is a stalled
    // request, not an idle connection: a 408, as HEADERS_TIMEOUT would give it.
    if (this.headBegun && !this.done && this.waiting.length === 0) return this.timedOut();
    if (s.writableLength > 0) {
      if (this.grace === GRACE_DRAIN) return void s.destroy();
      this.grace = GRACE_DRAIN;
      s.setTimeout(this.server.opts.idleTimeoutMs);
      return;
    }
    if (this.grace === GRACE_KEEP_ALIVE) return void s.destroy();
    this.grace = GRACE_KEEP_ALIVE;
    s.setTimeout(KEEP_ALIVE_GRACE_MS);
  }

  closed(): void {
    this.server.conns.delete(this);
    if (this.afterAnswer) clearTimeout(this.afterAnswer);
    const res = this.current;
    this.current = undefined;
    this.waiting.length = 0;
    this.done = true;
    if (res && !res.finished) {
      res.dead = true;
      res.handler?.clientClosed();
    }
    // A body cut short, still going to a target that answered already (an early 413 or redirect): the
    // target's socket goes now, rather than wait for the rest until UPSTREAM_TIMEOUT, a POOL_SIZE slot held.
    (this.reading ?? this.unread)?.abandon();
    // Off the socket before the parser goes (the handle would call back into a freed parser), and freed
    // on a later turn (it may be on the stack: a close inside a callback).
    if (this.consumed) {
      this.consumed = false;
      unconsume(this.parser, this.socket);
    }
    setImmediate(closeParser, this.parser);
  }
}

// Parser callbacks and socket listeners shared by every connection (found through kConn).
function onMessageBegin(this: WithConn): number {
  this[kConn].messageBegin();
  return 0;
}
function onHeaders(this: WithConn, h: string[], url: string): void {
  this[kConn].headerPart(h, url);
}
function onHeadersComplete(
  this: WithConn,
  major: number,
  minor: number,
  headers: string[] | undefined,
  method: number,
  url: string | undefined,
  _status: unknown,
  _message: unknown,
  upgrade: boolean,
  keepAlive: boolean,
): number {
  return this[kConn].headersComplete(major, minor, headers, method, url, upgrade, keepAlive);
}
function onBody(this: WithConn, b: Buffer): void {
  this[kConn].received(b);
}
function onMessageComplete(this: WithConn): void {
  this[kConn].messageComplete();
}
function onData(this: WithConn, d: Buffer): void {
  this[kConn].read(d);
}
function onExecute(this: WithConn, r: number | Error | undefined): void {
  this[kConn].executed(r);
}
function onEnd(this: WithConn): void {
  this[kConn].ended();
}
function onTimeout(this: WithConn): void {
  this[kConn].idleTimeout();
}
function onError(this: net.Socket): void {
  this.destroy();
}
function onClose(this: WithConn): void {
  this[kConn].closed();
}
const next = (c: ClientConn): void => c.next();
/** Runs `fn(x)` after the event loop has polled for I/O once (from a check phase: one more full turn). */
export function afterPoll<T>(fn: (x: T) => void, x: T): void {
  setImmediate(fn, x);
}
const closeParser = (p: Parser): void => p.close();

/** The server: a net.Server whose connections are ClientConns, the timeouts' clock, and a graceful stop. */
export class DownstreamServer {
  readonly server: net.Server;
  /** Connections still speaking HTTP. */
  readonly conns = new Set<ClientConn>();
  /** Every open client socket, those handed over to WebSockets too. */
  private readonly sockets = new Set<net.Socket>();
  /** Their bytes, for karma_processed_bytes_total. */
  private readonly bytes = new ClientBytes(this.sockets);
  /** Sockets handed over to WebSockets, with what their handler said it would be asked at shutdown. */
  readonly upgrades = new Map<net.Socket, UpgradeHandler>();
  /** `Connection: keep-alive` and the `Keep-Alive: timeout=` Node would advertise for IDLE_TIMEOUT. */
  readonly keepAliveLines: string;
  private readonly checker: NodeJS.Timeout;
  shuttingDown = false;

  constructor(
    readonly opts: DownstreamOptions,
    readonly handlers: DownstreamHandlers,
  ) {
    this.keepAliveLines = `Connection: keep-alive\r\nKeep-Alive: timeout=${Math.floor(opts.idleTimeoutMs / 1000)}\r\n`;
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.accept(socket));
    this.server.maxConnections = opts.maxConnections + 1;
    this.server.on('drop', () => limitHits.labels({ limit: 'connections' }).inc());
    this.checker = setInterval(() => this.checkTimeouts(), TIMEOUT_CHECK_MS).unref();
    this.server.once('close', () => {
      clearInterval(this.checker);
      this.bytes.stop();
    });
  }

  private accept(socket: net.Socket): void {
    // MAX_CONNECTIONS open: this one takes the place of a long-idle keep-alive connection, or is closed
    // at once (net lets one past the limit through to here; the one after is dropped by net itself).
    if (this.sockets.size >= this.opts.maxConnections) {
      limitHits.labels({ limit: 'connections' }).inc();
      if (!this.evictIdle()) {
        socket.destroy();
        return;
      }
    }
    activeConnections.inc();
    acceptedConnections.inc();
    this.sockets.add(socket);
    socket.once('close', () => {
      activeConnections.dec();
      this.sockets.delete(socket);
      this.bytes.closed(socket);
      this.upgrades.delete(socket);
    });
    const c = new ClientConn(this, socket);
    this.conns.add(c);
    if (this.shuttingDown) c.closing = true;
  }

  /** Closes the longest-open keep-alive connection idle for IDLE_EVICT_MS; false when there is none. */
  private evictIdle(): boolean {
    const now = performance.now();
    for (const c of this.conns) {
      if (c.answeredAt === 0 || !c.idle || c.state !== IDLE || now - c.answeredAt < IDLE_EVICT_MS) continue;
      if (c.socket.writableLength > 0) continue; // its last answer is still leaving
      c.socket.destroy();
      return true;
    }
    return false;
  }

  /** HEADERS_TIMEOUT and REQUEST_TIMEOUT, as node:http checks them: every connection, twice a second. */
  private checkTimeouts(): void {
    const { headersTimeoutMs, requestTimeoutMs } = this.opts;
    const now = performance.now();
    for (const c of this.conns) {
      if (c.state === IDLE || (c.state === HEAD && c.heldBack) || c.clockStopped) continue;
      const age = now - c.since;
      if ((c.state === HEAD && headersTimeoutMs > 0 && age > headersTimeoutMs) || (requestTimeoutMs > 0 && age > requestTimeoutMs)) c.timedOut();
    }
  }

  /**
   * Stops accepting, lets in-flight requests finish within `timeoutMs`, closes idle keep-alive
   * connections (RECENT_ANSWER_GRACE_MS after their last answer, and NEW_CONNECTION_GRACE_MS after
   * their accept for connections never used).
   */
  shutdown(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.shuttingDown = true;
      let done = false;
      const finish = (): void => {
        if (done) return;
        done = true;
        clearInterval(sweep);
        clearTimeout(deadline);
        // The 'close' of sockets just cut, where their requests are logged and counted, comes a turn or
        // two after server.close()'s callback: the process must not exit before.
        void socketsClosed(this.sockets).then(resolve);
      };
      const closeIdle = (): void => {
        const now = performance.now();
        for (const c of this.conns) {
          c.closeAfterAnswers();
          const unused = c.unusedSince;
          // Not while its last answer is still leaving (a slow reader's download: cut, it would be lost),
          // nor one ending already (its FIN sent, lingering until the client's: answered()), nor one just
          // answered (its next request may be on its way).
          const recent = c.answeredAt !== 0 && now - c.answeredAt < RECENT_ANSWER_GRACE_MS;
          if (c.idle && !recent && !c.socket.writableEnded && c.socket.writableLength === 0 && (unused === undefined || now - unused >= NEW_CONNECTION_GRACE_MS)) c.socket.destroy();
        }
      };
      this.server.close(() => finish());
      closeIdle();
      // Connections whose last answer just ended become idle: close them as they do.
      const sweep = setInterval(closeIdle, 100);
      const deadline = setTimeout(() => {
        const answered = new Set<net.Socket>();
        for (const c of this.conns) {
          if (c.answerShutdown()) answered.add(c.socket);
          else c.cutForShutdown();
        }
        for (const [s, u] of this.upgrades) {
          if (s.destroyed || !u.shutdown()) continue;
          answerHandshake(s, 503, SHUTTING_DOWN, SHUTDOWN_RETRY);
          answered.add(s);
        }
        for (const s of this.sockets) if (!answered.has(s)) s.destroy();
        // A moment for those 503s to leave; then whatever is still open is cut.
        setTimeout(() => {
          for (const s of this.sockets) s.destroy();
          finish();
        }, answered.size > 0 ? SHUTDOWN_ANSWER_GRACE_MS : 0);
      }, timeoutMs);
    });
  }
}
