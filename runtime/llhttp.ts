/**
 * node:http's own llhttp binding, for the two sides of forwarding that use it instead of node:http: the
 * client-facing server (downstream.ts parses requests with it) and the upstream client (upstream.ts
 * parses responses). Node 20 and 22 export it from `_http_common`; esbuild keeps the require. A Node
 * without it fails here, at load, so every bundle test fails loudly rather than a request quietly.
 */
import { METHODS as HTTP_METHODS } from 'node:http';
import type * as net from 'node:net';

export interface Parser {
  /** `maxHeaderSize` bounds the request line and headers together (0: node's default); `lenient` 0 is strict. */
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(data: Buffer): number | Error | undefined;
  finish(): number | Error | undefined;
  close(): void;
  /** The bytes of the read being parsed (a copy), while the execute hook (kOnExecute) runs. */
  getCurrentBuffer?: () => Buffer;
  /** Reads a stream handle natively from now on: each read is parsed, then kOnExecute is called. */
  consume?: (handle: object) => void;
  unconsume?: () => void;
  [k: number]: unknown;
}

interface ParserClass {
  new (): Parser;
  readonly REQUEST: number;
  readonly RESPONSE: number;
  readonly kOnMessageBegin: number;
  readonly kOnHeaders: number;
  readonly kOnHeadersComplete: number;
  readonly kOnBody: number;
  readonly kOnMessageComplete: number;
  readonly kOnExecute: number;
}

// eslint-disable-next-line @typescript-eslint/no-var-requires
export const { HTTPParser } = require('_http_common') as { HTTPParser: ParserClass };
if (typeof HTTPParser !== 'function' || typeof HTTPParser.kOnHeadersComplete !== 'number') {
  throw new Error(`this Node (${process.version}) has no usable HTTPParser in _http_common`);
}
export const kOnMessageBegin = HTTPParser.kOnMessageBegin | 0;
export const kOnHeaders = HTTPParser.kOnHeaders | 0;
export const kOnHeadersComplete = HTTPParser.kOnHeadersComplete | 0;
export const kOnBody = HTTPParser.kOnBody | 0;
export const kOnMessageComplete = HTTPParser.kOnMessageComplete | 0;
/** Called after each read the parser consumed natively. */
export const kOnExecute = HTTPParser.kOnExecute | 0;

/**
 * What llhttp overlooks in a target's answer (the 4th argument of initialize): whitespace after a chunk
 * size (`5 ;ext`), which RFC 9112 §7.1.1's grammar allows (BWS) and nginx reads. Only our parser reads
 * those bytes, and the client gets the answer framed anew. Bare LF line ends stay an error (a 502),
 * though RFC 9112 §2.2 lets a recipient take them: a target echoing a client's bare LF into a header
 * would otherwise let that client add headers, or end the head early and leave bytes on a socket the
 * next request reuses. Requests stay strict. 0 on a Node without the flag (strict, as before).
 */
export const RESPONSE_LENIENCY = (HTTPParser as unknown as { kLenientSpacesAfterChunkSize?: number }).kLenientSpacesAfterChunkSize ?? 0;

/**
 * Request methods by llhttp's number for them, as kOnHeadersComplete reports it. Node keeps this table
 * (`allMethods`) to itself, and the `methods` list `_http_common` exports is not indexed by that number
 * (QUERY, PRI). So it is learnt here, once, by parsing a request of each method node knows.
 */
export const METHOD_NAMES: readonly string[] = (() => {
  const names: string[] = [];
  const p = new HTTPParser();
  let seen = -1;
  p[kOnHeadersComplete] = (_major: number, _minor: number, _h: unknown, method: number): number => {
    seen = method;
    return 1;
  };
  for (const name of HTTP_METHODS) {
    seen = -1;
    p.initialize(HTTPParser.REQUEST, {}, 0, 0);
    p.execute(Buffer.from(`${name} / HTTP/1.1\r\nHost: a\r\n\r\n`, 'latin1'));
    if (seen >= 0) names[seen] = name;
  }
  p.close();
  if (names[1] !== 'GET' || names[2] !== 'HEAD') throw new Error(`this Node (${process.version}) numbers llhttp's methods unexpectedly`);
  return names;
})();

/** The parts of net.Socket's native side that node:http uses to let its parser read a socket. */
interface StreamHandle {
  isStreamBase?: boolean;
  _consumed?: boolean;
  reading?: boolean;
  readStart(): number;
  readStop(): number;
}
type SocketInternals = { _handle?: StreamHandle | null; _unrefTimer?: () => void };
const internals = (socket: net.Socket): SocketInternals => socket as unknown as SocketInternals;

/**
 * Lets `parser` read `socket` natively, as node:http does: each read goes from libuv into one shared
 * buffer and straight through llhttp, with no Buffer per read and no 'data' event; only body bytes are
 * copied out (half the garbage of a 'data' listener on a large body). kOnExecute is called after each
 * read. False when this socket (or this Node) does not allow it: the caller reads through 'data' then.
 * The caller keeps a 'data' listener anyway (it is never called, but keeps the socket flowing so that
 * 'end' is emitted), calls touch() after each read and unconsume() before the parser goes.
 */
export function consume(parser: Parser, socket: net.Socket): boolean {
  const h = internals(socket)._handle;
  if (!h?.isStreamBase || h._consumed || typeof internals(socket)._unrefTimer !== 'function' || typeof parser.consume !== 'function') return false;
  h._consumed = true;
  parser.consume(h);
  return true;
}

/** Gives the socket's reads back to its stream (a consumed parser must be off the handle before it is freed). */
export function unconsume(parser: Parser, socket: net.Socket): void {
  parser.unconsume!();
  const h = internals(socket)._handle;
  if (h) h._consumed = false;
}

/** Destroys `socket`: a timer's callback that needs no closure (setTimeout(destroySocket, ms, socket)). */
export const destroySocket = (socket: net.Socket): void => void socket.destroy();

/** `close` among the tokens of a Connection value. */
const CLOSE_TOKEN = /(?:^|,)[ \t]*close[ \t]*(?:,|$)/i;

/**
 * llhttp's keep-alive verdict, with `close` winning as RFC 9112 §9.3 has it: for an HTTP/1.0 message
 * llhttp looks for `keep-alive` alone, so `Connection: keep-alive, close` (or the two as separate
 * fields) kept the connection. `raw` is the head's name/value pairs; only a 1.0 message kept alive is
 * looked at again (1.1's verdict already lets `close` win).
 */
export function keptAlive(keepAlive: boolean, major: number, minor: number, raw: readonly string[]): boolean {
  if (!keepAlive || major !== 1 || minor !== 0) return keepAlive;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].length === 10 && raw[i].toLowerCase() === 'connection' && CLOSE_TOKEN.test(raw[i + 1])) return false;
  }
  return true;
}

/** A consumed socket's idle timer, refreshed by reads through JavaScript and so not by these. */
export function touch(socket: net.Socket): void {
  internals(socket)._unrefTimer!();
}

/** Stops a consumed socket's reads on its handle (socket.pause() only pauses the stream these bypass). */
function readStop(socket: net.Socket): void {
  const h = internals(socket)._handle;
  if (h?.reading) {
    h.reading = false;
    h.readStop();
  }
}

/** Starts them again. */
export function readStart(socket: net.Socket): void {
  const h = internals(socket)._handle;
  if (h && !h.reading) {
    h.reading = true;
    h.readStart();
  }
}

/** Stops reading `socket`: on its handle when a parser consumes it, else its stream. */
export function pauseReads(socket: net.Socket, consumed: boolean): void {
  if (consumed) readStop(socket);
  else socket.pause();
}

/** Starts reading `socket` again, the way pauseReads stopped it. */
export function resumeReads(socket: net.Socket, consumed: boolean): void {
  if (consumed) readStart(socket);
  else socket.resume();
}
