/**
 * The upstream side of forwarding: a lean keep-alive HTTP/1.1 client, one UpstreamPool per target.
 *
 * Why not http.request + http.Agent: under small-GET load ClientRequest, Agent.addRequest and the
 * response IncomingMessage stream were about half of a worker's CPU (test/bench/README-bench.md). Here a
 * connection is a net.Socket and one reused llhttp parser (the binding node:http itself uses, reached
 * through `_http_common`); the request head goes out as one string; the response body goes straight into
 * the client's ServerResponse with backpressure.
 *
 * A request tells its owner what happens through an UpstreamHandler (forward.ts's Exchange): direct
 * calls, no listeners per request. It is also a pipe destination (write/end/drain) for request bodies,
 * and without a handler it emits ClientRequest-like events ('socket', 'response', 'error', 'timeout').
 *
 * Handles: Content-Length, chunked and close-delimited responses; HEAD, 204 and 304 without a body; 1xx
 * informational responses skipped until the final one (101 to a plain request is a bad response);
 * `Connection: close` and HTTP/1.0 answers (socket not reused); a response that ends before the request
 * body did (the body is still sent, then the socket reused, as node:http does; after `Connection: close`
 * the rest is dropped); request bodies with Content-Length or, when the client sent chunked,
 * re-chunked; raw header names and repeated headers as sent; POOL_SIZE sockets per target with a FIFO
 * queue; idle sockets reused most recently used first, and closed by a sweep after the free-socket timeout.
 * Bytes after the end of an answer (a body on a HEAD answer, a Content-Length too short, an answer
 * nobody asked for) drop the socket, as node:http's client does: they are never the next request's answer.
 * Does not handle: Upgrade (forward.ts `ws` stays on http-proxy), trailers (dropped, as hop-by-hop),
 * pipelining, TLS to targets.
 */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';

import { consume, destroySocket, HTTPParser, keptAlive, kOnBody, kOnExecute, kOnHeaders, kOnHeadersComplete, kOnMessageBegin, kOnMessageComplete, type Parser, RESPONSE_LENIENCY, pauseReads, resumeReads, touch, unconsume } from './llhttp';
import { errorFields, log } from './log';
import { bodyBytes, uploadBytes } from './memory';
import { makeTarget } from './types';

export interface UpstreamPoolOptions {
  readonly host: string;
  readonly port: number;
  /** POOL_SIZE: sockets open at most (busy or idle); more requests wait in FIFO order. */
  readonly maxSockets: number;
  /** Idle sockets kept at most. */
  readonly maxFreeSockets: number;
  /** An idle socket is closed after this long, before a typical target would close it. */
  readonly freeSocketTimeoutMs: number;
  /**
   * A request that waited this long for a socket is taken out of the line and told (onQueueTimeout).
   * @default 0, no bound
   */
  readonly maxWaitMs?: number;
}

/**
 * A request head as it goes on the wire (request line, `Name: value\r\n` each, the empty line), made
 * once per request and written as it is, and whether a Content-Length is among its headers.
 */
export interface RenderedHead {
  readonly head: string;
  readonly hasLength: boolean;
}

export interface UpstreamRequestOptions {
  method: string;
  path: string;
  /**
   * Flat [name, value, …], names as the client spelled them, or the whole head already rendered (then
   * `method` and `path` are in it); hop-by-hop headers removed either way.
   */
  headers: string[] | RenderedHead;
  /** The request has a body: it goes out with the client's Content-Length, or chunked without one. */
  body: boolean;
  /** Idle timeout of the socket while it serves this request (UPSTREAM_TIMEOUT); 0 for none. @default 0 */
  timeoutMs?: number;
  /**
   * Moved here from the line of a target that left (UpstreamPool.leave): when it began waiting. Should it
   * wait here too, it keeps its place in the line and its deadline.
   */
  queuedSince?: number;
}

/**
 * What a request tells its owner, as direct calls (forward.ts's Exchange): no event listeners to add and
 * remove per request, and no tick between getting a socket and writing to it.
 */
export interface UpstreamHandler {
  /** The request has a socket (maybe still connecting); the head goes out with the first write() or end(). */
  onSocket(up: UpstreamRequest, socket: net.Socket): void;
  /** An informational answer (1xx other than 100 and 101) came ahead of the final one. */
  onInformational?(status: number, rawHeaders: string[]): void;
  /** The final response's head arrived; its body follows into whatever `res.pipe()` was given. */
  onResponse(res: UpstreamResponse): void;
  /** The request failed before a response started (connection refused or reset, a bad answer, destroy(err)). */
  onError(err: NodeJS.ErrnoException): void;
  /** The response was cut short after it started: by the connection (no `err`, or a socket error), or by bytes that are not HTTP (`err.code` HPE_*). */
  onAborted(err?: NodeJS.ErrnoException): void;
  /** The socket was silent for `timeoutMs`. */
  onTimeout(): void;
  /** Every socket of the target stayed busy for the pool's `maxWaitMs`: the request left the line. */
  onQueueTimeout(): void;
  /**
   * The target left every route while the request waited in its line (UpstreamPool.leave): nothing was
   * sent. false: it stays in this line (its route has no other target).
   */
  onTargetLeft?(): boolean;
}

/** For callers that prefer events (the upstream tests): 'socket', 'response', 'error', 'timeout', and 'aborted' on the response. */
class Emitting implements UpstreamHandler {
  constructor(private readonly up: UpstreamRequest) {}
  onSocket(up: UpstreamRequest, socket: net.Socket): void {
    // Listeners are added after the request is made, as with http.request.
    process.nextTick(() => {
      if (!up.destroyed) up.emit('socket', socket);
    });
  }
  onResponse(res: UpstreamResponse): void {
    this.up.emit('response', res);
  }
  onError(err: NodeJS.ErrnoException): void {
    this.up.emit('error', err);
  }
  onAborted(): void {
    this.up.res?.aborted();
  }
  onTimeout(): void {
    this.up.emit('timeout');
  }
  onQueueTimeout(): void {
    this.up.emit('error', Object.assign(new Error('no socket to the target within the wait'), { code: 'POOL_TIMEOUT' }));
  }
}

/**
 * `s` with its characters in one piece. A string built with `+=` is a tree of pieces (V8 cons strings)
 * until something flattens it; a request waiting for a socket (1,000 connections, POOL_SIZE 100) would
 * hold a dozen pieces per header block, long enough to be promoted to the old space. Reading a character
 * flattens in place and the pieces die young: 100,000 such header blocks kept take 15 MB instead of 57
 * (Number(s), the flatstr package's trick, no longer flattens in this V8).
 */
export function flat(s: string): string {
  void s.charCodeAt(0);
  return s;
}

const INVALID = {
  HPE_UNEXPECTED_UPGRADE: 'a protocol switch nobody asked for',
  HPE_UNEXPECTED_CONTENT: 'bytes after the end of an answer, or an answer nobody asked for',
  HPE_INVALID_STATUS: 'a status line that is not HTTP/1.x with a status of 100-599',
  HPE_INVALID_TRANSFER_ENCODING: 'a transfer coding other than chunked',
  HPE_TOO_MANY_INTERIM: 'more than 1000 interim (1xx) answers to one request',
} as const;
/**
 * Interim (1xx) answers one request may get before its final one: each resets the target's silence
 * clock (a 102 Processing every few seconds keeps a long request alive, as it is meant to), so a target
 * sending them without end would hold the request, and its socket, for good.
 */
export const MAX_INTERIM_ANSWERS = 1000;
/** How long a target that sent bytes past an answer gets a connection per request (UpstreamPool.distrust). */
export const DISTRUST_MS = 600_000;
type Invalid = keyof typeof INVALID;

/**
 * Why a target's answer head cannot be passed on, or undefined. RFC 9110 §15: a status outside 100-599
 * is invalid, to be taken as a server error (a 502 from us); an HTTP/2.0 or /0.9 status line is not an
 * HTTP/1.x answer either. Only chunked is taken off (and put back on for the client as needed): any
 * other transfer coding (`gzip`, `gzip, chunked`) would reach the client undone and unmarked; nginx
 * refuses it too. For our own answers and for WebSocket refusals (forward.ts) alike.
 */
export function answerFault(status: number, major: number, raw: readonly string[]): Invalid | undefined {
  if (status < 100 || status > 599 || major !== 1) return 'HPE_INVALID_STATUS';
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].length === 17 && raw[i].toLowerCase() === 'transfer-encoding' && raw[i + 1].trim().toLowerCase() !== 'chunked') {
      return 'HPE_INVALID_TRANSFER_ENCODING';
    }
  }
  return undefined;
}

/**
 * Most bytes of a target's answer head (status line and headers). node:http's client stops at 16 KiB;
 * a page's cookies and security headers can pass that, and the Go proxies before us read up to 10 MB
 * (Go's default). 64 KiB here; more is a 502 that does not count against the target (forward.ts:
 * head_too_large).
 */
export const MAX_RESPONSE_HEAD_BYTES = 64 * 1024;

/** How long a target that said `Connection: close` has to close after its answer, before the proxy does. */
const CLOSE_WAIT_MS = 1000;

function badResponse(code: string, message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(message), { code });
}

/** How often a socket whose write failed is looked at for the end its reset left (watchAfterWriteFailed). */
const WRITE_FAILED_WATCH_MS = 20;

class Conn {
  readonly socket: net.Socket;
  /** The parser reads the socket natively (llhttp.ts consume()); otherwise through 'data'. */
  private consumed = false;
  current: UpstreamRequest | undefined;
  private pendingHeaders: string[] = [];
  /** Served a request already: a failure before the answer may be a keep-alive race. */
  reused = false;
  /** The exchange under way is a 1xx: its end is not the end of the response. */
  private informational = false;
  /** Interim answers to the request under way (MAX_INTERIM_ANSWERS). */
  private interim = 0;
  /** Its last exchange ended with the socket kept for another request. */
  private kept = false;
  /** A message nobody asked for began on it while it was kept: the pool hears of it once the read is parsed. */
  private unasked = false;
  /** Its head was whole, and no 408. */
  private unaskedHead = false;
  /**
   * What makes the answer under way unusable, as an llhttp-style code (checked after execute): a
   * protocol switch or an answer nobody asked for (the socket is no HTTP any more), a status outside
   * 100-599, a transfer coding we cannot pass on.
   */
  private invalid: Invalid | undefined = undefined;
  /**
   * The exchange ended cleanly and the socket goes back to the pool once the read that ended it is
   * parsed: bytes after the end of an answer in the same read must not become the next request's.
   */
  private releaseAfterRead = false;
  /** The idle timeout the socket has now (set only when it changes: each setTimeout allocates a timer). */
  timeoutMs = 0;
  /** When the socket last went idle in its pool (Date.now()). */
  idleSince = 0;
  /** How long the target keeps it idle, less a second, from its last `Keep-Alive: timeout=`; -1 without one. */
  keepAliveMs = -1;
  /**
   * A write failed (the target closed while a body went up): its answer is still read, then it closes;
   * the rest of the body is dropped (see watchAfterWriteFailed).
   */
  writeFailed = false;
  /** Answered already, its body still going up (closeWhenSent): told if the socket closes first. */
  sending: UpstreamRequest | undefined;
  /** Waiting for the FIN of a target that said `Connection: close` (at most CLOSE_WAIT_MS). */
  private closeWait: NodeJS.Timeout | undefined;

  constructor(
    readonly pool: UpstreamPool | undefined,
    host: string,
    port: number,
  ) {
    this.socket = net.connect({ host, port, noDelay: true });
    // A write that fails (EPIPE, ECONNRESET: the target closed while a body was going up) must not
    // destroy the socket, as net.Socket's streams do by themselves: an answer the target sent first (an
    // early 413) waits in the receive queue, read before the reset. Every other end destroys it
    // explicitly (a failed read, the target's FIN below, ours).
    const streams = this.socket as unknown as { _writableState: { autoDestroy: boolean }; _readableState: { autoDestroy: boolean } };
    streams._writableState.autoDestroy = false;
    streams._readableState.autoDestroy = false;
    const parser: Parser = new HTTPParser();
    parser.initialize(HTTPParser.RESPONSE, {}, MAX_RESPONSE_HEAD_BYTES, RESPONSE_LENIENCY);
    // A message starting with no request of ours under way (bytes after an answer's end, in the same
    // read or on an idle socket: a body on a HEAD answer, a Content-Length too short, a second answer) is
    // an answer nobody asked for. node:http's client destroys such a socket; handing it on would make
    // those bytes the next request's answer, whoever sent that.
    parser[kOnMessageBegin] = () => {
      if (this.current) return;
      this.invalid = 'HPE_UNEXPECTED_CONTENT';
      // On a socket kept for the next request: this target sends bytes past its answers, and the next
      // time they may come after that request went out, as another client's answer (see distrust()).
      // Judged once the read is parsed (parsed()): a 408 on an idle connection is a server's goodbye.
      this.unasked = this.kept;
    };
    // Over 32 header lines llhttp hands them over in parts before headers-complete; trailers come the
    // same way, just before message-complete, which drops them.
    parser[kOnHeaders] = (h: string[]) => {
      for (const x of h) this.pendingHeaders.push(x);
    };
    parser[kOnHeadersComplete] = (
      maj: number,
      min: number,
      headers: string[] | undefined,
      _method: unknown,
      _url: unknown,
      status: number,
      message: string,
      upgrade: boolean,
      keepAlive: boolean,
    ): number => {
      let raw = headers ?? [];
      if (this.pendingHeaders.length > 0) {
        raw = this.pendingHeaders.concat(raw);
        this.pendingHeaders = [];
      }
      const x = this.current;
      // RFC 9110 §15.5.9: a server may send a 408 on an idle connection it closes. Not bytes past an answer.
      if (!x) this.unaskedHead = status !== 408;
      if (!x && status === 408) this.unasked = false;
      if (!x || upgrade) {
        // An answer nobody asked for, or a protocol switch nobody asked for: the socket is dropped.
        this.invalid ??= 'HPE_UNEXPECTED_UPGRADE';
        return 1;
      }
      const fault = answerFault(status, maj, raw);
      if (fault) {
        this.invalid = fault;
        return 1;
      }
      if (status < 200) {
        // 101 to a request that asked for no upgrade is not HTTP any more: a bad response. (llhttp errors
        // are not reported once it has seen an upgrade, so this is flagged and checked after execute.)
        if (status === 101) {
          this.invalid = 'HPE_UNEXPECTED_UPGRADE';
          return 1;
        }
        this.informational = true;
        if (++this.interim > MAX_INTERIM_ANSWERS) {
          this.invalid = 'HPE_TOO_MANY_INTERIM';
          return 1;
        }
        // 100 Continue is ours to give (the client's Expect never reaches the target); any other 1xx
        // (103 Early Hints) is passed on, as RFC 9110 §15.2 asks of a proxy.
        if (status !== 100) {
          try {
            x.informational(status, raw);
          } catch (err) {
            this.fault(err);
          }
        }
        return 1; // no body; the final response follows on the same socket
      }
      this.informational = false;
      x.keepAlive = keptAlive(keepAlive, maj, min, raw);
      if (x.keepAlive) this.keepAliveMs = keepAliveHintMs(raw);
      try {
        x.respond(status, message, raw);
      } catch (err) {
        this.fault(err);
      }
      return x.method === 'HEAD' ? 1 : 0;
    };
    parser[kOnBody] = (b: Buffer) => {
      // Each body chunk is a buffer of its own, dead once written on (memory.ts).
      bodyBytes(b.length);
      try {
        this.current?.res?.body(b);
      } catch (err) {
        this.fault(err);
      }
    };
    parser[kOnMessageComplete] = () => {
      // Trailers (hop-by-hop, not passed on), so that they never become the next answer's headers.
      if (this.pendingHeaders.length > 0) this.pendingHeaders = [];
      if (this.informational) {
        this.informational = false;
        return;
      }
      if (this.invalid) return; // failed after execute returns
      const x = this.current;
      if (!x) return;
      this.current = undefined;
      // Not after a HEAD: a target that sends the body anyway (a common bug) may send it a moment later,
      // in a read of its own, when the socket would be serving the next request in line: those bytes
      // would be that request's answer, another client's. One connection per HEAD is the price.
      const keep = x.keepAlive && this.keepAliveMs !== 0 && this.pool?.reusable === true && !this.socket.destroyed && !this.writeFailed && x.method !== 'HEAD';
      // Bytes the target sends after the answer are a reason to distrust it only on a socket that will
      // serve again (see kOnMessageBegin): not on one still sending the body of an early answer.
      this.kept = keep && x.ended;
      // A target that answered before the whole request body was sent (an early 413, nginx's `return`,
      // one that stores an upload as it comes) gets the rest, for one that reads on, but the socket serves
      // nobody after it: HTTP/1.1 has a target read and drop the rest or close, and one that does neither
      // (Python's http.server) would take it as the next request on the socket, a request the client
      // wrote, without the headers this proxy sets, whose answer would go to the next client sharing the
      // socket. It counts against POOL_SIZE until it is closed: it ends once the body is all sent, and the
      // next request in line gets a new one.
      if (keep && !x.ended) {
        x.closeWhenSent = true;
        this.sending = x;
      }
      // Answered early on a socket that will not serve again (the target said close, or sent a body on a
      // HEAD): the rest of the body has nowhere to go. Said before the answer ends, so that the client's
      // connection reads and drops the rest and serves its next request; left piped, its reads waited
      // for a 'drain' from a socket already gone, and its next request was never answered.
      else if (!keep && !x.ended) x.bodyGone();
      try {
        x.complete();
      } catch (err) {
        return this.fault(err);
      }
      if (keep && x.ended) this.releaseAfterRead = true;
      else if (!keep && !x.keepAlive && x.ended && !this.writeFailed && !this.socket.readableEnded) {
        // The target said close: its FIN follows, and 'end' destroys the socket. Waiting for it leaves the
        // TIME_WAIT on the target's side; a target that does not close gets a second. The socket serves
        // nobody meanwhile: its place in the pool goes now.
        this.closeWait = setTimeout(destroySocket, CLOSE_WAIT_MS, this.socket);
        this.closeWait.unref();
        this.pool?.forget(this);
      } else if (!keep) this.socket.destroy();
    };
    // Reading natively, 'data' never comes; the listener keeps the socket flowing so that 'end' does.
    this.socket.on('data', (d: Buffer) => {
      let r: number | Error | undefined;
      try {
        r = parser.execute(d);
      } catch (e) {
        r = e as Error;
      }
      this.parsed(r);
    });
    if (consume(parser, this.socket)) {
      this.consumed = true;
      parser[kOnExecute] = (r: number | Error | undefined) => {
        touch(this.socket);
        this.parsed(r);
      };
    }
    // The target closed its side: a close-delimited body ends here. Anything else under way is cut short,
    // and said at once (as node:http does), not when our own FIN is out: a request waiting to send on a
    // keep-alive socket must learn it is stale before it sends what cannot be replayed.
    /** The target's end; `reset`: one a reset left, where no answer delimited by the close may end whole. */
    const targetEnded = (reset = false): void => {
      if (!reset) parser.finish();
      this.releaseAfterRead = false; // a socket the target closed serves nobody else
      if (this.current) this.socket.destroy(badResponse('ECONNRESET', 'socket hang up'));
      else this.socket.destroy();
    };
    // After a failed write (a reset came), the end is where the reset cut, whichever way it is read.
    this.socket.on('end', () => {
      const x = this.current;
      if (this.writeFailed || !x || x.ended || !x.res || x.answered) return targetEnded(this.writeFailed);
      // The target's end in an answer under way (one the close delimits) while its request's body was
      // still going up. A reset reads as an end once a write of ours has taken its error (EPIPE) from the
      // socket, and that write's failure is told a loop turn later (libuv's pending callbacks): the answer
      // would pass for a whole one, short of what the target's kernel dropped (early-answers.test saw 96
      // KiB of 100 KB end cleanly, twice in a day of runs). Judged once that turn has come.
      setImmediate(() => setImmediate(() => {
        if (!this.socket.destroyed) targetEnded(this.writeFailed);
      }));
    });
    const readable = (this.socket as unknown as { _readableState: { errored: Error | null; ended: boolean; endEmitted: boolean; length: number } })._readableState;
    /**
     * After a failed write, until the socket goes: the readable side kept unerrored, and its end, once
     * read (all of it parsed), taken as the target's. Writes already on their way fail too, each marking
     * that side errored again without a word ('error' is said once), and an end read meanwhile would never
     * be emitted: only UPSTREAM_TIMEOUT would end the try (a probe found 504s after the whole timeout for a
     * target that reset a streamed upload). A failed write means a reset came: that end is where it cut,
     * and an answer delimited by the close is cut with it, not ended whole (the target's kernel dropped
     * what it had not sent).
     */
    const watchAfterWriteFailed = (): void => {
      if (this.socket.destroyed) return;
      readable.errored = null;
      if (readable.ended && !readable.endEmitted && readable.length === 0) {
        readable.endEmitted = true;
        return targetEnded(true);
      }
      setTimeout(watchAfterWriteFailed, WRITE_FAILED_WATCH_MS).unref();
    };
    this.socket.on('timeout', () => {
      if (this.current) this.current.timedOut();
      else this.socket.destroy();
    });
    this.socket.on('error', (err: NodeJS.ErrnoException) => {
      const x = this.current;
      // The body could not go on, but what the target already said may still be read: its answer, or
      // the read side's own end (a reset, a FIN), decides. Writes from here on wait in the socket, which
      // serves no other request. net.Socket marked its readable side errored as well, which would hide
      // the target's FIN ('end' never comes): that side has not failed, and is read on.
      if (err.syscall === 'write' && x && !x.res && !this.socket.destroyed) {
        this.writeFailed = true;
        watchAfterWriteFailed();
        return;
      }
      x?.socketError(err);
      // Not destroyed by net.Socket itself after a failed write (see the constructor): it serves nobody now.
      if (!this.socket.destroyed) this.socket.destroy();
    });
    this.socket.on('close', () => {
      const x = this.current;
      this.current = undefined;
      // Off the handle before the parser goes, and freed on a later turn (it may be on the stack: a
      // close inside a callback).
      if (this.consumed) {
        this.consumed = false;
        unconsume(parser, this.socket);
      }
      setImmediate(() => parser.close());
      if (this.closeWait) clearTimeout(this.closeWait);
      this.pool?.forget(this);
      x?.socketClosed();
      // An answered request whose body was still going up: the rest has nowhere to go.
      const sending = this.sending;
      this.sending = undefined;
      sending?.bodyGone();
    });
  }

  /** What a read parsed to: bytes parsed, or an Error of node's own realm (not `instanceof` ours under a vm). */
  private parsed(r: number | Error | undefined): void {
    if (this.unasked) {
      // Judged on a whole head (not a 408) or on bytes that are no HTTP at all; a head cut by the end of
      // the read is given the benefit of the doubt (the socket goes either way).
      if (this.unaskedHead || (typeof r === 'object' && r !== null)) this.pool?.distrust();
      this.unasked = false;
      this.unaskedHead = false;
    }
    // The first fault found is the one said: what llhttp makes of the bytes after a refused head (its body
    // read as the next answer) is no HTTP, a consequence.
    if (this.invalid) r = badResponse(this.invalid, INVALID[this.invalid]);
    if (typeof r === 'object' && r !== null) {
      const code = (r as NodeJS.ErrnoException).code;
      this.socket.destroy(badResponse(code?.startsWith('HPE_') ? code : 'HPE_INTERNAL', `bad upstream response: ${r.message}`));
    }
    if (this.releaseAfterRead) {
      this.releaseAfterRead = false;
      if (!this.socket.destroyed) this.pool!.release(this);
    } else if (typeof r !== 'object') {
      // A head whose body did not come with it (a stream, a long poll) goes to the client now rather
      // than with the first body bytes.
      this.current?.res?.readDone();
    }
  }

  /** A fault of ours while passing an answer on: this connection goes (its request fails), the worker stays. */
  private fault(err: unknown): void {
    log('error', 'response handling failed', errorFields(err));
    this.socket.destroy(badResponse('HPE_INTERNAL', 'response handling failed'));
  }

  /**
   * The body of a request answered early is all written (kOnMessageComplete): the socket ends once it
   * has sent it, and goes if the target has not closed its side CLOSE_WAIT_MS after. It keeps its place
   * in the pool (POOL_SIZE) until it closes ('close' gives it up); a target that stops reading leaves it
   * to UPSTREAM_TIMEOUT.
   */
  endWhenSent(): void {
    this.sending = undefined;
    if (this.socket.destroyed) return;
    this.socket.once('finish', () => {
      this.closeWait = setTimeout(destroySocket, CLOSE_WAIT_MS, this.socket);
      this.closeWait.unref();
    });
    this.socket.end();
  }

  /** Stops reading the target (the client is slower), and starts again. */
  pauseReading(): void {
    pauseReads(this.socket, this.consumed);
    // Not reading is our doing: UPSTREAM_TIMEOUT is for a silent target, and a client that stops reading
    // is IDLE_TIMEOUT's to judge (downstream.ts). The clock stops until reading starts again.
    if (this.timeoutMs > 0) this.socket.setTimeout(0);
  }

  resumeReading(): void {
    resumeReads(this.socket, this.consumed);
    if (this.timeoutMs > 0) this.socket.setTimeout(this.timeoutMs);
  }

  /** Hands the socket to `x`. */
  attach(x: UpstreamRequest): void {
    this.current = x;
    this.informational = false;
    this.interim = 0;
    this.kept = false;
  }

  setTimeout(ms: number): void {
    if (ms === this.timeoutMs) return;
    this.timeoutMs = ms;
    this.socket.setTimeout(ms);
  }
}

/** The keep-alive connections of one target: POOL_SIZE at most, idle ones reused most recent first. */
export class UpstreamPool {
  private readonly idle: Conn[] = [];
  private readonly all = new Set<Conn>();
  private readonly waiting: UpstreamRequest[] = [];
  private closed = false;
  /** Until when (Date.now()) no socket of this target is reused: it sent bytes past an answer (distrust()). */
  private distrustedUntil = 0;
  private sweeper: NodeJS.Timeout | undefined;
  private waitSweeper: NodeJS.Timeout | undefined;

  constructor(private readonly opts: UpstreamPoolOptions) {}

  /**
   * A request to the target. It gets an idle socket, a new one, or (every socket busy) waits in line, at
   * most `maxWaitMs`: `queued` says which, synchronously.
   */
  request(opts: UpstreamRequestOptions, handler?: UpstreamHandler): UpstreamRequest {
    const x = new UpstreamRequest(opts, this, this.reusable, handler);
    this.dispatch(x, opts.queuedSince);
    return x;
  }

  /** A one-off connection outside the pool (after a stale keep-alive one), closed after its response. */
  fresh(opts: UpstreamRequestOptions, handler?: UpstreamHandler): UpstreamRequest {
    const x = new UpstreamRequest(opts, undefined, false, handler);
    x.assign(new Conn(undefined, this.opts.host, this.opts.port));
    return x;
  }

  /** Requests waiting for a socket. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Its sockets may serve another request: it has not sent bytes past an answer lately. */
  get reusable(): boolean {
    if (this.distrustedUntil !== 0 && Date.now() >= this.distrustedUntil) this.distrustedUntil = 0;
    return this.distrustedUntil === 0;
  }

  /**
   * The target sent bytes past the end of an answer on a socket kept for the next request (a body it
   * owed nobody, a second answer). Caught this time; the next time they may come just after another
   * request went out on that socket, and be taken for that request's answer: another client's. For
   * DISTRUST_MS, every request gets a connection of its own (`Connection: close`), said once a time.
   */
  distrust(): void {
    if (!this.reusable || this.closed) return;
    this.distrustedUntil = Date.now() + DISTRUST_MS;
    this.destroyIdle();
    log('warn', 'a target sent bytes past the end of an answer: its connections are not reused for a while, so that none reach another client', {
      target: makeTarget(this.opts.host, this.opts.port).id,
      seconds: DISTRUST_MS / 1000,
    });
  }

  /** Sockets open (busy or idle). */
  get sockets(): number {
    return this.all.size;
  }

  /** A request now would wait in line: every one of POOL_SIZE sockets busy (or requests already waiting). */
  get full(): boolean {
    return this.waiting.length > 0 || (this.idle.length === 0 && this.all.size >= this.opts.maxSockets);
  }

  /** A socket for `x` now, else a place in the line: the back, or by `since` (UpstreamRequestOptions.queuedSince). */
  private dispatch(x: UpstreamRequest, since?: number): void {
    for (let c = this.idle.pop(); c; c = this.idle.pop()) {
      if (c.socket.destroyed || !c.socket.readable) continue; // closed, or the target's FIN already read
      if (c.keepAliveMs > 0 && Date.now() - c.idleSince >= c.keepAliveMs) {
        // Idle for about as long as the target said it keeps a connection: it may be closing it now.
        this.all.delete(c);
        c.socket.destroy();
        continue;
      }
      return x.assign(c);
    }
    if (!this.closed && this.all.size < this.opts.maxSockets) return x.assign(this.open());
    x.queued = true;
    x.queuedAt = since ?? Date.now();
    if (since === undefined) this.waiting.push(x);
    else {
      const at = this.waiting.findIndex((w) => w.queuedAt > since);
      this.waiting.splice(at === -1 ? this.waiting.length : at, 0, x);
    }
    const maxWait = this.opts.maxWaitMs ?? 0;
    // One sweep for the whole line rather than a timer per request: under 1,000 client connections and
    // POOL_SIZE 100, 900 requests wait at any moment, and each timer outlived the young generation.
    if (maxWait > 0) this.waitSweeper ??= setInterval(this.expire, Math.min(100, Math.max(10, maxWait / 10))).unref();
  }

  /** Requests that waited `maxWaitMs` leave the line, oldest first (the line is in arrival order). */
  private readonly expire = (): void => {
    const cutoff = Date.now() - (this.opts.maxWaitMs ?? 0);
    while (this.waiting.length > 0 && this.waiting[0].queuedAt <= cutoff) this.waiting.shift()!.waitedTooLong();
    if (this.waiting.length === 0 && this.waitSweeper) {
      clearInterval(this.waitSweeper);
      this.waitSweeper = undefined;
    }
  };

  private open(): Conn {
    const c = new Conn(this, this.opts.host, this.opts.port);
    this.all.add(c);
    return c;
  }

  /** A socket whose exchange ended cleanly: to the next in line, else idle. */
  release(c: Conn): void {
    c.reused = true;
    if (this.closed) {
      c.socket.destroy();
      return;
    }
    const next = this.waiting.shift();
    if (next) return next.assign(c);
    if (this.idle.length >= this.opts.maxFreeSockets) {
      c.socket.destroy();
      return;
    }
    c.idleSince = Date.now();
    this.idle.push(c);
    this.sweeper ??= setInterval(this.sweep, Math.max(10, this.opts.freeSocketTimeoutMs / 8)).unref();
  }

  /**
   * Closes the sockets idle for the free-socket timeout. A sweep rather than a timer per socket: the
   * socket keeps its request timeout while idle, so going idle and busy again costs no timer.
   */
  private readonly sweep = (): void => {
    const cutoff = Date.now() - this.opts.freeSocketTimeoutMs;
    // Idle sockets are taken from the end, so the front holds the longest idle.
    while (this.idle.length > 0 && this.idle[0].idleSince <= cutoff) this.idle.shift()!.socket.destroy();
    if (this.idle.length === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  };

  /** A socket closed: its place goes to the next in line, on a new connection. */
  forget(c: Conn): void {
    if (!this.all.delete(c)) return;
    const i = this.idle.indexOf(c);
    if (i !== -1) this.idle.splice(i, 1);
    if (!this.closed && this.waiting.length > 0 && this.all.size < this.opts.maxSockets) this.waiting.shift()!.assign(this.open());
  }

  /** Takes a request that gave up out of the line. */
  withdraw(x: UpstreamRequest): void {
    const i = this.waiting.indexOf(x);
    if (i !== -1) this.waiting.splice(i, 1);
  }

  /** Closes the idle sockets (after one turned out to be closed by the target, its siblings likely are too). */
  destroyIdle(): void {
    for (const c of this.idle.splice(0)) c.socket.destroy();
  }

  /**
   * The target left every route (its task stopped, its instance left the group): requests still waiting
   * for one of its sockets leave the line, to go to a target of their route, as an ALB sends nothing new
   * to a target it deregisters. Those it is answering go on (draining).
   */
  leave(): void {
    const stay: UpstreamRequest[] = [];
    for (const x of this.waiting.splice(0)) if (!x.targetLeft()) stay.push(x);
    if (stay.length > 0) this.waiting.unshift(...stay);
  }

  /** Closes every socket; later requests are refused a socket and wait (none should come). */
  destroy(): void {
    this.closed = true;
    if (this.sweeper) clearInterval(this.sweeper);
    if (this.waitSweeper) clearInterval(this.waitSweeper);
    this.sweeper = undefined;
    this.waitSweeper = undefined;
    for (const c of [...this.all]) c.socket.destroy();
    this.idle.length = 0;
  }
}

/** Where a response body goes: the client's answer (downstream.ts's Response), or any Writable. */
export interface ResponseSink {
  write(chunk: Buffer): boolean;
  end(): unknown;
  once(event: 'drain', fn: () => void): unknown;
  removeListener(event: 'drain', fn: () => void): unknown;
  /** Sends what is held back for the first body bytes (the head), when there is such a thing. */
  flush?(): void;
}

/**
 * A target's `Keep-Alive: timeout=N` (RFC 2068 §19.7.1.1; node:http, Apache and others send it), as
 * the milliseconds an idle socket of it may still be reused: N seconds less one, so that a request
 * never leaves as the target closes (node:http's client does the same); 0 for none at all, -1 without
 * a hint (the pool's free-socket timeout alone applies).
 */
export function keepAliveHintMs(rawHeaders: readonly string[]): number {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const n = rawHeaders[i];
    if (n.length !== 10 || n.toLowerCase() !== 'keep-alive') continue;
    const m = /(?:^|[\s,;])timeout\s*=\s*"?(\d{1,9})/i.exec(rawHeaders[i + 1]);
    if (m) return Math.max(0, Number(m[1]) * 1000 - 1000);
  }
  return -1;
}

/** The Connection header's values in flat [name, value, …] headers, joined; undefined without one. */
export function connectionOf(rawHeaders: readonly string[]): string | undefined {
  let connection: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const n = rawHeaders[i];
    if (n.length === 10 && n.toLowerCase() === 'connection') connection = connection === undefined ? rawHeaders[i + 1] : `${connection}, ${rawHeaders[i + 1]}`;
  }
  return connection;
}

/** The response as forward.ts reads it: status, raw headers, `headers.connection`, pipe(res). */
export class UpstreamResponse {
  readonly headers: { connection?: string };
  private sink: ResponseSink | undefined;
  private paused = false;
  private onAbort: (() => void) | undefined;

  constructor(
    private readonly conn: Conn,
    readonly statusCode: number,
    readonly statusMessage: string,
    readonly rawHeaders: string[],
  ) {
    this.headers = { connection: connectionOf(rawHeaders) };
  }

  /** Only 'aborted' (the response was cut short), for callers without a handler. */
  on(event: 'aborted', fn: () => void): this {
    if (event === 'aborted') this.onAbort = fn;
    return this;
  }

  aborted(): void {
    this.onAbort?.();
  }

  pipe<T extends ResponseSink>(res: T): T {
    this.sink = res;
    return res;
  }

  private readonly resume = (): void => {
    this.paused = false;
    this.conn.resumeReading();
  };

  body(b: Buffer): void {
    const res = this.sink;
    if (!res) return;
    // The client is slower than the target: stop reading the target until the client drains.
    if (!res.write(b) && !this.paused) {
      this.paused = true;
      this.conn.pauseReading();
      res.once('drain', this.resume);
    }
  }

  /** A read of the target has been parsed and the body is not complete. */
  readDone(): void {
    this.sink?.flush?.();
  }

  end(): void {
    if (this.paused) {
      // The body is complete and buffered in the response: the socket may serve the next exchange now,
      // and a finished response may never say 'drain'.
      this.sink?.removeListener('drain', this.resume);
      this.resume();
    }
    this.sink?.end();
  }
}

/** One request on one upstream socket, shaped like the part of http.ClientRequest forward.ts uses. */
export class UpstreamRequest extends EventEmitter {
  readonly method: string;
  keepAlive = false;
  destroyed = false;
  /** The socket served an earlier request (a failure before the answer may be a keep-alive race). */
  reusedSocket = false;
  /** Waited for a socket (every one of the target's was busy), since queuedAt (Date.now()). */
  queued = false;
  queuedAt = 0;
  writableNeedDrain = false;
  /** For Readable.pipe: this takes writes until end(). */
  get writable(): boolean {
    return !this.ended && !this.destroyed;
  }
  /** end() was called: the whole request is written. */
  ended = false;
  /** The whole answer has come (complete()). */
  answered = false;
  /** The response is complete but the body is still going out: end() closes the socket (see kOnMessageComplete). */
  closeWhenSent = false;
  res: UpstreamResponse | undefined;
  private conn: Conn | undefined;
  private headSent = false;
  private chunked = false;
  private timeoutMs = 0;
  private errored = false;
  private readonly head: string;

  private readonly handler: UpstreamHandler;

  constructor(
    opts: UpstreamRequestOptions,
    private readonly pool: UpstreamPool | undefined,
    keepAlive: boolean,
    handler?: UpstreamHandler,
  ) {
    super();
    this.handler = handler ?? new Emitting(this);
    this.method = opts.method;
    this.timeoutMs = opts.timeoutMs ?? 0;
    const h = opts.headers;
    let head: string;
    let length = false;
    if (Array.isArray(h)) {
      head = `${opts.method} ${opts.path} HTTP/1.1\r\n`;
      for (let i = 0; i < h.length; i += 2) {
        head += `${h[i]}: ${h[i + 1]}\r\n`;
        if (h[i].length === 14 && h[i].toLowerCase() === 'content-length') length = true;
      }
      head += '\r\n';
    } else {
      head = h.head;
      length = h.hasLength;
    }
    let extra = '';
    // A HEAD's socket is not reused (see kOnMessageComplete): the target is told, so that it closes
    // first and keeps the TIME_WAIT, not this proxy, whose ports to one target a stream of HEADs would use up.
    if (!keepAlive || opts.method === 'HEAD') extra += 'Connection: close\r\n';
    // forward.ts drops Transfer-Encoding (hop-by-hop): a body of unknown length goes out chunked.
    if (opts.body && !length) {
      this.chunked = true;
      extra += 'Transfer-Encoding: chunked\r\n';
    }
    // The everyday request (keep-alive, no body or a Content-Length) sends the rendered head itself.
    this.head = extra || Array.isArray(h) ? flat(head.slice(0, -2) + extra + '\r\n') : head;
  }

  assign(c: Conn): void {
    if (this.destroyed) {
      // Gave up while in line: the socket goes to the next one.
      if (c.pool) c.pool.release(c);
      else c.socket.destroy();
      return;
    }
    this.conn = c;
    c.attach(this);
    this.reusedSocket = c.reused;
    c.setTimeout(this.timeoutMs);
    this.handler.onSocket(this, c.socket);
  }

  /** Sets the socket's idle timeout for this request; `cb` listens for 'timeout' (event callers only). */
  setTimeout(ms: number, cb?: () => void): this {
    this.timeoutMs = ms;
    if (cb) this.on('timeout', cb);
    this.conn?.setTimeout(ms);
    return this;
  }

  timedOut(): void {
    this.handler.onTimeout();
  }

  waitedTooLong(): void {
    if (!this.destroyed) this.handler.onQueueTimeout();
  }

  /** false: the request stays in the line (its route has no other target). */
  targetLeft(): boolean {
    if (this.destroyed) return true;
    if (this.handler.onTargetLeft) return this.handler.onTargetLeft();
    this.handler.onQueueTimeout();
    return true;
  }

  private sendHead(): net.Socket | undefined {
    const c = this.conn;
    if (!c || this.destroyed || c.writeFailed) return undefined;
    if (!this.headSent) {
      this.headSent = true;
      c.socket.write(this.head, 'latin1');
    }
    return c.socket;
  }

  /** Writes from here to uncork() leave together: a head and the body read with it, in one send. */
  cork(): void {
    this.conn?.socket.cork();
  }

  uncork(): void {
    this.conn?.socket.uncork();
  }

  /**
   * Sends the head now, before any of the body (node's ClientRequest.flushHeaders): a target may answer
   * from the head alone, or stream its answer while the body streams in.
   */
  flushHeaders(): void {
    this.sendHead();
  }

  /** A body chunk (from req.pipe). Data for a request already given up is dropped. */
  write(chunk: Buffer | string): boolean {
    const s = this.sendHead();
    if (!s) return true;
    const len = typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length;
    if (len === 0) return true; // a zero-length chunk would end a chunked body
    uploadBytes(len);
    let ok: boolean;
    if (this.chunked) {
      s.cork();
      s.write(`${len.toString(16)}\r\n`, 'latin1');
      s.write(chunk);
      ok = s.write('\r\n', 'latin1');
      s.uncork();
    } else ok = s.write(chunk);
    if (!ok && !this.writableNeedDrain) {
      this.writableNeedDrain = true;
      s.once('drain', () => {
        this.writableNeedDrain = false;
        this.emit('drain');
      });
    }
    return ok;
  }

  end(chunk?: Buffer | string): this {
    if (this.ended) return this;
    if (chunk) this.write(chunk);
    this.ended = true;
    const s = this.sendHead();
    if (s && this.chunked) s.write('0\r\n\r\n', 'latin1');
    if (this.closeWhenSent) {
      // Answered already; now the body is all out too: the socket ends, once it has sent it.
      this.closeWhenSent = false;
      const c = this.conn;
      this.conn = undefined;
      c?.endWhenSent();
    }
    this.emit('finish');
    return this;
  }

  informational(status: number, raw: string[]): void {
    this.handler.onInformational?.(status, raw);
  }

  respond(status: number, message: string, raw: string[]): void {
    this.res = new UpstreamResponse(this.conn!, status, message, raw);
    this.handler.onResponse(this.res);
  }

  complete(): void {
    this.answered = true;
    const res = this.res;
    // Still sending the body: the socket stays this request's until end().
    if (!this.closeWhenSent) this.conn = undefined;
    res?.end();
  }

  socketError(err: NodeJS.ErrnoException): void {
    if (this.errored) return;
    this.errored = true;
    if (this.res) this.handler.onAborted(err);
    else if (!this.destroyed) this.handler.onError(err);
  }

  /**
   * Answered already, with the body still going up, and the socket closed (the target stopped reading
   * it): what is left of the body goes nowhere. Writes are dropped from now on, and a write waiting for
   * 'drain' gets it, so the client's connection reads (and drops) the rest and serves its next request.
   */
  bodyGone(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.closeWhenSent = false;
    this.conn = undefined;
    if (this.writableNeedDrain) {
      this.writableNeedDrain = false;
      this.emit('drain');
    }
  }

  socketClosed(): void {
    if (this.errored) return;
    this.errored = true;
    if (this.res) this.handler.onAborted();
    else if (!this.destroyed) this.handler.onError(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }));
  }

  destroy(err?: Error): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.pool?.withdraw(this);
    const c = this.conn;
    this.conn = undefined;
    if (c && (c.current === this || this.closeWhenSent)) {
      // Mid-exchange, or answered with the body only partly sent: the socket cannot serve another request.
      this.closeWhenSent = false;
      if (c.current === this) c.current = undefined;
      if (c.sending === this) c.sending = undefined;
      c.socket.destroy();
    }
    if (err && !this.errored) {
      this.errored = true;
      process.nextTick(() => this.handler.onError(err));
    }
    this.emit('close');
    return this;
  }
}
