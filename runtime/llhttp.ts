/**
 * node:http's own llhttp binding, for the two places that use it beside node:http: the upstream client
 * (upstream.ts parses responses with it) and the client-facing server (server.ts hooks the parser node
 * already runs). Node 20 and 22 export it from `_http_common`; esbuild keeps the require. A Node without
 * it fails here, at load, so every bundle test fails loudly rather than a request quietly.
 */
export interface Parser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(data: Buffer): number | Error | undefined;
  finish(): number | Error | undefined;
  close(): void;
  /** The bytes of the read being parsed, while the execute hook (kOnExecute) runs. */
  getCurrentBuffer?: () => Buffer;
  [k: number]: unknown;
}

interface ParserClass {
  new (): Parser;
  readonly RESPONSE: number;
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
export const kOnHeaders = HTTPParser.kOnHeaders | 0;
export const kOnHeadersComplete = HTTPParser.kOnHeadersComplete | 0;
export const kOnBody = HTTPParser.kOnBody | 0;
export const kOnMessageComplete = HTTPParser.kOnMessageComplete | 0;
/** Called after each read the parser consumed natively (server side). */
export const kOnExecute = HTTPParser.kOnExecute | 0;
