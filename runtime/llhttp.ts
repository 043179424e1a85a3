/**
 * node:http's own llhttp binding, for the two sides of forwarding that use it instead of node:http: the
 * client-facing server (downstream.ts parses requests with it) and the upstream client (upstream.ts
 * parses responses). Node 20 and 22 export it from `_http_common`; esbuild keeps the require. A Node
 * without it fails here, at load, so every bundle test fails loudly rather than a request quietly.
 */
import { METHODS as HTTP_METHODS } from 'node:http';

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
