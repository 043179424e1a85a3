/**
 * Hostile and broken input against the real bundle, over raw sockets: request smuggling shapes,
 * oversized and invalid headers, non-HTTP bytes, HTTP/0.9 and unknown versions, slow and stalled
 * clients. Each must get one clean 4xx and a closed connection (or just a closed connection) within a
 * bounded time, nothing of it may reach the target, and the proxy must keep serving everyone else.
 *
 * Every case carries its own marker (`/hx-<n>`) in the bytes it sends; the backend keeps every byte it
 * receives, so "never forwarded" is checked on the wire, not on what a parser made of it. All cases run
 * at once (they are independent connections); each test then judges one case.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { Proxy, rssBytes, startBundle } from '../support/bundle';
import { request, until } from '../support/net';
import { Load, metric, RawResult, rawExchange, RecordingBackend, Script, startLoad, startRecordingBackend, tally, trickle } from './support';

jest.setTimeout(60_000);

// Short clocks so that timing cases finish fast; the bounds below are these plus a margin for a busy 2-core box.
const HEADERS_TIMEOUT_S = 1;
const REQUEST_TIMEOUT_S = 3;
const IDLE_TIMEOUT_S = 1;
const UPSTREAM_TIMEOUT_S = 2;
const MAX_HEADER_SIZE = 16384;
const MAX_HEADERS = 100;
const MARGIN_MS = 2000;
const QUICK_MS = 1500;

type Expect =
  /** One clean response with this status (or any 4xx), nothing after it, and the connection closed. */
  | { readonly status: number | '4xx'; readonly keepAlive?: boolean }
  /** The connection closes; a clean 4xx before the close is fine, anything else is not. */
  | { readonly closed: true };

interface Case {
  readonly group: string;
  readonly name: string;
  /** Bytes (latin1) or a script; `t` is the case's marker path, `/hx-<n>`. */
  readonly send: (t: string) => string | Buffer | Script;
  readonly expect: Expect;
  /** Milliseconds within which the answer and the close must come. */
  readonly withinMs?: number;
  /** For stalled bodies: the headers did go upstream (with the marker); the request must just never complete there. */
  readonly headersMayReachTarget?: boolean;
}

const H = 'Host: app.example.com\r\n';
const bad = (status: number | '4xx' = 400): Expect => ({ status });

const CASES: Case[] = [
  // ---- request smuggling: framing a target could read differently ----
  { group: 'smuggling', name: 'Content-Length then Transfer-Encoding (CL.TE)', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding then Content-Length (TE.CL)', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'two different Content-Length headers', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!`, expect: bad() },
  { group: 'smuggling', name: 'two equal Content-Length headers', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello`, expect: bad() },
  { group: 'smuggling', name: 'Content-Length as a list', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 5, 5\r\n\r\nhello`, expect: bad() },
  { group: 'smuggling', name: 'Content-Length with a plus sign', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: +5\r\n\r\nhello`, expect: bad() },
  { group: 'smuggling', name: 'negative Content-Length', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: -1\r\n\r\nhello`, expect: bad() },
  { group: 'smuggling', name: 'hexadecimal Content-Length', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 0x5\r\n\r\nhello`, expect: bad() },
  { group: 'smuggling', name: 'Content-Length beyond 2^64', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 99999999999999999999999\r\n\r\nx`, expect: bad() },
  // llhttp takes up to 2^64 - 1; a target reading a signed 64-bit length (Go, Java, nginx) does not.
  { group: 'smuggling', name: 'Content-Length of 2^63, past a signed 64-bit length', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 9223372036854775808\r\n\r\nx`, expect: bad() },
  { group: 'smuggling', name: 'Content-Length of 2^64 - 1', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 18446744073709551615\r\n\r\nhello`, expect: bad() },
  { group: 'smuggling', name: 'Content-Length with trailing junk', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 5x\r\n\r\nhello`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding: xchunked', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding: chunked, identity', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding: identity, chunked', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding: gzip, chunked', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding value in quotes', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'space before the colon of Transfer-Encoding', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'vertical tab after chunked', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding value folded onto the next line', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding line starting with whitespace', send: (t) => `POST ${t} HTTP/1.1\r\n Transfer-Encoding: chunked\r\n${H}\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'two Transfer-Encoding: chunked headers', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding: chunk', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunk\r\n\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding in an HTTP/1.0 request', send: (t) => `POST ${t} HTTP/1.0\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'Transfer-Encoding: identity with Content-Length', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello`, expect: bad() },
  { group: 'smuggling', name: 'chunk size beyond 64 bits', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nx\r\n0\r\n\r\n`, expect: bad() },
  { group: 'smuggling', name: 'negative chunk size', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n-1\r\n\r\n`, expect: bad() },
  // Bodies stream: a framing error after the first chunk is found once that chunk has gone ahead, so the
  // target sees a request cut short (never a complete one), like any stalled body.
  { group: 'smuggling', name: 'chunk data without its CRLF', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n`, expect: bad(), headersMayReachTarget: true },
  { group: 'smuggling', name: 'bare LF in chunked framing', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n`, expect: bad() },

  // ---- sizes ----
  { group: 'sizes', name: 'request line longer than MAX_HEADER_SIZE', send: (t) => `GET ${t}/${'a'.repeat(MAX_HEADER_SIZE + 100)} HTTP/1.1\r\n${H}\r\n`, expect: bad(414) },
  { group: 'sizes', name: 'one header value longer than MAX_HEADER_SIZE', send: (t) => `GET ${t} HTTP/1.1\r\n${H}X-Big: ${'b'.repeat(MAX_HEADER_SIZE + 100)}\r\n\r\n`, expect: bad(431) },
  { group: 'sizes', name: 'headers adding up past MAX_HEADER_SIZE', send: (t) => `GET ${t} HTTP/1.1\r\n${H}${Array.from({ length: 90 }, (_, i) => `X-H${i}: ${'c'.repeat(200)}\r\n`).join('')}\r\n`, expect: bad(431) },
  { group: 'sizes', name: 'one header field more than MAX_HEADERS', send: (t) => `GET ${t} HTTP/1.1\r\n${H}${Array.from({ length: MAX_HEADERS }, (_, i) => `X-${i}: y\r\n`).join('')}\r\n`, expect: bad(431) },
  { group: 'sizes', name: 'a header that never ends', send: (t) => trickle([`GET ${t} HTTP/1.1\r\n${H}X-Endless: `], 5, 'z'.repeat(2048)), expect: bad(431) },

  // ---- characters ----
  { group: 'characters', name: 'space inside a header name', send: (t) => `GET ${t} HTTP/1.1\r\n${H}Bad Name: x\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'NUL in a header name', send: (t) => `GET ${t} HTTP/1.1\r\n${H}X\x00Y: z\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'NUL in a header value', send: (t) => `GET ${t} HTTP/1.1\r\n${H}X: a\x00b\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'lone CR in a header value', send: (t) => `GET ${t} HTTP/1.1\r\n${H}X: a\rb\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'DEL in a header value', send: (t) => `GET ${t} HTTP/1.1\r\n${H}X: a\x7fb\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'control character in a header value', send: (t) => `GET ${t} HTTP/1.1\r\n${H}X: a\x01b\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'empty header name', send: (t) => `GET ${t} HTTP/1.1\r\n${H}: empty\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'header line without a colon', send: (t) => `GET ${t} HTTP/1.1\r\n${H}NoColonHere\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'separator in a header name', send: (t) => `GET ${t} HTTP/1.1\r\n${H}X(y): z\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'line folding (obs-fold) in an ordinary header', send: (t) => `GET ${t} HTTP/1.1\r\n${H}X-Folded: a\r\n b\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'NUL in the request target', send: (t) => `GET ${t}\x00 HTTP/1.1\r\n${H}\r\n`, expect: bad() },
  { group: 'characters', name: 'space inside the request target', send: (t) => `GET ${t}/a b HTTP/1.1\r\n${H}\r\n`, expect: bad() },
  { group: 'characters', name: 'raw non-ASCII byte in the request target', send: (t) => `GET ${t}/caf\xe9 HTTP/1.1\r\n${H}\r\n`, expect: bad() },
  { group: 'characters', name: 'unknown method', send: (t) => `FOO ${t} HTTP/1.1\r\n${H}\r\n`, expect: bad() },
  { group: 'characters', name: 'lower-case method', send: (t) => `get ${t} HTTP/1.1\r\n${H}\r\n`, expect: bad() },
  { group: 'characters', name: 'non-ASCII byte in the method', send: (t) => `G\xc9T ${t} HTTP/1.1\r\n${H}\r\n`, expect: bad() },
  { group: 'characters', name: 'space in the Host value', send: (t) => `GET ${t} HTTP/1.1\r\nHost: app example.com\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'userinfo in the Host value', send: (t) => `GET ${t} HTTP/1.1\r\nHost: user@app.example.com\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'two Host headers', send: (t) => `GET ${t} HTTP/1.1\r\n${H}Host: other.example.com\r\n\r\n`, expect: bad() },
  { group: 'characters', name: 'HTTP/1.1 without Host', send: (t) => `GET ${t} HTTP/1.1\r\nX-Marker: m\r\n\r\n`, expect: bad() },

  // ---- not HTTP at all ----
  { group: 'garbage', name: 'a TLS ClientHello', send: (t) => Buffer.concat([Buffer.from('1603010200010001fc0303', 'hex'), Buffer.from(t)]), expect: bad() },
  { group: 'garbage', name: 'an SSH banner', send: (t) => `SSH-2.0-OpenSSH_9.6 ${t}\r\n`, expect: bad() },
  { group: 'garbage', name: 'random binary', send: (t) => Buffer.concat([Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 151 + 7) % 256)), Buffer.from(t)]), expect: bad() },
  { group: 'garbage', name: 'the HTTP/2 connection preface', send: (t) => `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n${t}`, expect: bad() },
  { group: 'garbage', name: 'a JSON document', send: (t) => `{"path":"${t}"}\r\n\r\n`, expect: bad() },
  { group: 'garbage', name: 'a response instead of a request', send: (t) => `HTTP/1.1 200 OK\r\nX-Marker: ${t}\r\nContent-Length: 0\r\n\r\n`, expect: bad() },
  { group: 'garbage', name: 'nothing but empty lines', send: (t) => trickle(['\r\n\r\n\r\n'], 10, `\r\n`), expect: { closed: true }, withinMs: HEADERS_TIMEOUT_S * 1000 + MARGIN_MS },

  // ---- versions ----
  { group: 'versions', name: 'HTTP/0.9 simple request, alone', send: (t) => `GET ${t}\r\n`, expect: bad() },
  { group: 'versions', name: 'HTTP/0.9 simple request and an empty line', send: (t) => `GET ${t}\r\n\r\n`, expect: bad() },
  { group: 'versions', name: 'HTTP/0.9 simple request after an empty line', send: (t) => `\r\nGET ${t}\r\n`, expect: bad() },
  { group: 'versions', name: 'HTTP/0.9 simple request after an empty line sent before it', send: (t) => trickle(['\r\n', `GET ${t}\r\n`], 100), expect: bad() },
  { group: 'versions', name: 'HTTP/0.9 simple request in two pieces (its line end alone)', send: (t) => trickle([`GET ${t}`, '\r\n'], 100), expect: bad() },
  { group: 'versions', name: 'HTTP/0.9 simple request a byte at a time', send: (t) => trickle([...`GET ${t}\r\n`], 5), expect: bad() },
  { group: 'versions', name: 'HTTP/0.9 spelled out', send: (t) => `GET ${t} HTTP/0.9\r\n${H}\r\n`, expect: bad() },
  { group: 'versions', name: 'HTTP/1.2', send: (t) => `GET ${t} HTTP/1.2\r\n${H}\r\n`, expect: bad() },
  { group: 'versions', name: 'HTTP/2.0 on an HTTP/1 request line', send: (t) => `GET ${t} HTTP/2.0\r\n${H}\r\n`, expect: bad() },
  { group: 'versions', name: 'HTTP/3.0', send: (t) => `GET ${t} HTTP/3.0\r\n${H}\r\n`, expect: bad() },
  { group: 'versions', name: 'HTTP/1.10', send: (t) => `GET ${t} HTTP/1.10\r\n${H}\r\n`, expect: bad() },
  { group: 'versions', name: 'another protocol name', send: (t) => `GET ${t} FOO/1.1\r\n${H}\r\n`, expect: bad() },
  { group: 'versions', name: 'lower-case protocol name', send: (t) => `GET ${t} http/1.1\r\n${H}\r\n`, expect: bad() },
  { group: 'versions', name: 'empty version after the target', send: (t) => `GET ${t} \r\n${H}\r\n`, expect: bad() },
  { group: 'versions', name: 'bare LF line endings', send: (t) => `GET ${t} HTTP/1.1\n${H.replace('\r', '')}\n`, expect: bad() },

  // ---- slow, stalled and silent clients ----
  { group: 'timing', name: 'connects and sends nothing', send: () => () => undefined, expect: { closed: true }, withinMs: HEADERS_TIMEOUT_S * 1000 + MARGIN_MS },
  { group: 'timing', name: 'slowloris: a header line every 200 ms, forever', send: (t) => trickle([`GET ${t} HTTP/1.1\r\n${H}`], 200, 'X-Slow: 1\r\n'), expect: bad(408), withinMs: HEADERS_TIMEOUT_S * 1000 + MARGIN_MS },
  { group: 'timing', name: 'request line one byte every 100 ms', send: (t) => trickle(`GET ${t} HTTP/1.1\r\n${H}\r\n`.split(''), 100), expect: bad(408), withinMs: HEADERS_TIMEOUT_S * 1000 + MARGIN_MS },
  { group: 'timing', name: 'a body that stops half-way (Content-Length)', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 100\r\n\r\n0123456789`, expect: bad(408), withinMs: IDLE_TIMEOUT_S * 1000 + MARGIN_MS, headersMayReachTarget: true },
  { group: 'timing', name: 'a body that stops half-way (chunked)', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\r\nhel`, expect: bad(408), withinMs: IDLE_TIMEOUT_S * 1000 + MARGIN_MS, headersMayReachTarget: true },
  { group: 'timing', name: 'a body trickled past REQUEST_TIMEOUT', send: (t) => trickle([`POST ${t} HTTP/1.1\r\n${H}Content-Length: 100000\r\n\r\n`], 300, 'x'), expect: bad(408), withinMs: REQUEST_TIMEOUT_S * 1000 + MARGIN_MS, headersMayReachTarget: true },
  { group: 'timing', name: 'Expect: 100-continue, then no body', send: (t) => `POST ${t} HTTP/1.1\r\n${H}Content-Length: 10\r\nExpect: 100-continue\r\n\r\n`, expect: bad(408), withinMs: IDLE_TIMEOUT_S * 1000 + MARGIN_MS, headersMayReachTarget: true },
  { group: 'timing', name: 'a body owed, then the client half-closes', send: (t) => (s) => s.end(`POST ${t} HTTP/1.1\r\n${H}Content-Length: 100\r\n\r\nabc`), expect: { closed: true }, headersMayReachTarget: true },
  { group: 'timing', name: 'an expectation the proxy cannot meet', send: (t) => `GET ${t} HTTP/1.1\r\n${H}Expect: teapot\r\n\r\n`, expect: { status: 417, keepAlive: true } },
  { group: 'timing', name: 'an expectation the proxy cannot meet beside 100-continue', send: (t) => `GET ${t} HTTP/1.1\r\n${H}Expect: 100-continue, teapot\r\n\r\n`, expect: { status: 417, keepAlive: true } },
];

/** Inputs a careful proxy must still pass on, intact (so that refusing is not all it does). */
interface Control {
  readonly name: string;
  readonly send: (t: string) => string;
  readonly statuses: number[];
  readonly check: (requests: RecordingBackend['requests'], t: string) => void;
}

const CONTROLS: Control[] = [
  {
    name: 'a chunked body arrives whole',
    send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n`,
    statuses: [200],
    check: (r) => expect(r.map((x) => x.body)).toEqual(['hello world']),
  },
  {
    name: 'Transfer-Encoding names are case-insensitive (CHUNKED)',
    send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
    statuses: [200],
    check: (r) => expect(r.map((x) => x.body)).toEqual(['abc']),
  },
  {
    name: 'an empty line before the request line is ignored (RFC 9112 §2.2)',
    send: (t) => `\r\nGET ${t} HTTP/1.1\r\n${H}Connection: close\r\n\r\n`,
    statuses: [200],
    check: (r) => expect(r).toHaveLength(1),
  },
  {
    name: 'UTF-8 bytes in a header value (obs-text) pass byte for byte',
    send: (t) => `GET ${t} HTTP/1.1\r\n${H}X-Name: caf\xc3\xa9\r\nConnection: close\r\n\r\n`,
    statuses: [200],
    check: (r) => {
      const raw = r[0].rawHeaders;
      expect(raw[raw.findIndex((h) => h.toLowerCase() === 'x-name') + 1]).toBe('caf\xc3\xa9');
    },
  },
  {
    name: 'two pipelined requests, the first with a body, stay two requests',
    send: (t) => `POST ${t}/1 HTTP/1.1\r\n${H}Content-Length: 5\r\n\r\nhelloGET ${t}/2 HTTP/1.1\r\n${H}Connection: close\r\n\r\n`,
    statuses: [200, 200],
    // One at a time, in order: the second goes to the target only once the first is answered.
    check: (r, t) => expect(r.map((x) => [x.method, x.url, x.body])).toEqual([['POST', `${t}/1`, 'hello'], ['GET', `${t}/2`, '']]),
  },
  {
    name: 'underscore spellings of framing and forwarding headers are dropped, Content-Length framing kept',
    send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer_Encoding: chunked\r\nX_Forwarded_For: 10.6.6.6\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`,
    statuses: [200],
    check: (r) => {
      const names = r[0].rawHeaders.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
      expect(names).not.toContain('transfer_encoding');
      expect(names).not.toContain('x_forwarded_for');
      expect(r[0].rawHeaders[r[0].rawHeaders.findIndex((h) => h.toLowerCase() === 'x-forwarded-for') + 1]).toBe('127.0.0.1');
      expect(r[0].body).toBe('hello');
    },
  },
  {
    name: 'Connection cannot strip Host from the forwarded request',
    send: (t) => `GET ${t} HTTP/1.1\r\n${H}Connection: close, host\r\n\r\n`,
    statuses: [200],
    check: (r) => expect(r[0].rawHeaders).toContain('app.example.com'),
  },
  {
    name: 'an h2c upgrade (curl --http2) is answered as plain HTTP/1.1, never tunnelled',
    send: (t) => `GET ${t} HTTP/1.1\r\n${H}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`,
    statuses: [200],
    check: (r) => {
      const names = r[0].rawHeaders.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
      expect(names).not.toContain('upgrade');
      expect(names).not.toContain('http2-settings');
    },
  },
  {
    name: 'a WebSocket Upgrade from an HTTP/1.0 client is ignored (RFC 9110 §7.8): a plain GET, never tunnelled',
    send: (t) => `GET ${t} HTTP/1.0\r\n${H}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    statuses: [200],
    check: (r) => {
      const names = r[0].rawHeaders.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
      expect(names).not.toContain('upgrade');
    },
  },
  {
    name: 'an h2c upgrade with a body (curl --http2 --data) is a plain POST: the body arrives whole',
    send: (t) => `POST ${t} HTTP/1.1\r\n${H}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 11\r\n\r\nhello world`,
    statuses: [200],
    check: (r) => {
      expect(r.map((x) => x.body)).toEqual(['hello world']);
      const names = r[0].rawHeaders.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
      expect(names).not.toContain('upgrade');
    },
  },
  {
    name: 'an h2c upgrade with a chunked body is a plain PUT: the body arrives whole',
    send: (t) => `PUT ${t} HTTP/1.1\r\n${H}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n`,
    statuses: [200],
    check: (r) => expect(r.map((x) => x.body)).toEqual(['hello world']),
  },
  {
    name: 'a chunked body with trailers',
    send: (t) => `POST ${t} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\nX-Checksum: 1\r\n\r\n`,
    statuses: [200],
    check: (r) => expect(r.map((x) => x.body)).toEqual(['hi']),
  },
];

const marker = (n: number): string => `/hx-${String(n).padStart(3, '0')}`;

describe('bad input against the bundle', () => {
  let backend: RecordingBackend;
  let p: Proxy;
  let load: Load;
  const results = new Map<string, RawResult>();
  const controls = new Map<string, RawResult>();
  let baseline = 0;

  beforeAll(async () => {
    backend = await startRecordingBackend();
    p = await startBundle({
      NODE_FILTER: 'static',
      STATIC_TARGETS: `127.0.0.1:${backend.port}`,
      HEALTH_CHECK_PATH: 'off',
      HEADERS_TIMEOUT: String(HEADERS_TIMEOUT_S),
      REQUEST_TIMEOUT: String(REQUEST_TIMEOUT_S),
      IDLE_TIMEOUT: String(IDLE_TIMEOUT_S),
      UPSTREAM_TIMEOUT: String(UPSTREAM_TIMEOUT_S),
      MAX_HEADER_SIZE: String(MAX_HEADER_SIZE),
      MAX_HEADERS: String(MAX_HEADERS),
    });
    baseline = await metric(p.metricsPort, 'karma_rejected_requests_total');
    // Well-behaved clients all along: the hostile ones must cost them nothing.
    load = startLoad(p.port, { concurrency: 4, path: '/well-behaved', pauseMs: 20 });
    await Promise.all([
      ...CASES.map(async (c, i) => {
        const r = await rawExchange(p.port, c.send(marker(i)), { deadlineMs: (c.withinMs ?? QUICK_MS) + 3000 });
        results.set(c.name, r);
      }),
      ...CONTROLS.map(async (c, i) => {
        controls.set(c.name, await rawExchange(p.port, c.send(marker(500 + i)), { deadlineMs: 5000 }));
      }),
    ]);
  });

  afterAll(async () => {
    await load?.stop();
    await p?.stop('SIGKILL');
    await backend?.close();
  });

  test(`the table holds at least 40 hostile cases (${CASES.length})`, () => {
    expect(CASES.length).toBeGreaterThanOrEqual(40);
    expect(new Set(CASES.map((c) => c.name)).size).toBe(CASES.length);
  });

  describe.each([...new Set(CASES.map((c) => c.group))])('%s', (group) => {
    test.each(CASES.map((c, i) => [c.name, c, i] as const).filter(([, c]) => c.group === group))('%s', (_name, c, i) => {
      const r = results.get(c.name)!;
      const within = c.withinMs ?? QUICK_MS;
      const statuses = r.responses.map((x) => x.status).filter((s) => s !== 100);
      const where = `${c.name}: got ${JSON.stringify(r.data.slice(0, 120))} closed=${r.closed} after ${r.ms} ms`;
      // Clean: whole responses only, never a fragment or a second answer to smuggled bytes.
      expect({ where, rest: r.rest }).toEqual({ where, rest: '' });
      expect({ where, statuses: statuses.length <= 1 }).toEqual({ where, statuses: true });
      if ('status' in c.expect) {
        expect({ where, n: statuses.length }).toEqual({ where, n: 1 });
        const status = statuses[0];
        if (c.expect.status === '4xx') expect(status >= 400 && status < 500).toBe(true);
        else expect({ where, status }).toEqual({ where, status: c.expect.status });
        if (!c.expect.keepAlive) {
          expect({ where, closed: r.closed }).toEqual({ where, closed: true });
          expect(r.responses[r.responses.length - 1].headers.connection).toBe('close');
        }
        // The answer came in time (a refused keep-alive answer has no close to time).
        expect({ where, inTime: (r.firstByteMs ?? Infinity) <= within }).toEqual({ where, inTime: true });
      } else {
        expect({ where, closed: r.closed, inTime: r.ms <= within }).toEqual({ where, closed: true, inTime: true });
        for (const s of statuses) expect(s >= 400 && s < 500).toBe(true);
      }
      const t = marker(i);
      if (c.headersMayReachTarget) {
        // Headers went ahead of a body that never came: the target saw an aborted request, never a complete one.
        expect(backend.requests.filter((q) => q.url.startsWith(t))).toEqual([]);
      } else {
        expect({ where, forwarded: backend.bytes().includes(t) }).toEqual({ where, forwarded: false });
      }
    });
  });

  describe('controls: well-formed but unusual input still goes through intact', () => {
    test.each(CONTROLS.map((c, i) => [c.name, c, i] as const))('%s', (_name, c, i) => {
      const r = controls.get(c.name)!;
      expect(r.responses.map((x) => x.status)).toEqual(c.statuses);
      const t = marker(500 + i);
      c.check(
        backend.requests.filter((q) => q.url.startsWith(t)),
        t,
      );
    });
  });

  test('the proxy kept serving well-behaved clients throughout, and counted what it refused', async () => {
    const outcomes = await load.stop();
    expect(outcomes.length).toBeGreaterThan(20);
    expect(tally(outcomes)).toEqual({ '200': outcomes.length });
    expect((await request(p.port, { path: '/after' })).status).toBe(200);
    const refused = (await metric(p.metricsPort, 'karma_rejected_requests_total')) - baseline;
    expect(refused).toBeGreaterThanOrEqual(CASES.length - 5);
    expect(await metric(p.metricsPort, 'karma_limit_hits_total', { limit: 'headers' })).toBeGreaterThanOrEqual(5);
    expect(p.child.exitCode).toBeNull();
  });

  test('a request refused before it parses is one of karma_requests_total{route="none"}, as a refused Host is', async () => {
    const none4xx = (): Promise<number> => metric(p.metricsPort, 'karma_requests_total', { route: 'none', code: '4xx' });
    const before = await none4xx();
    const bad = [
      `BAN / HTTP/1.1\r\n${H}\r\n`,
      `POST /two-lengths HTTP/1.1\r\n${H}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab`,
      `GET /bad-host HTTP/1.1\r\nHost: a b\r\n\r\n`,
    ];
    for (const raw of bad) expect((await rawExchange(p.port, raw, { deadlineMs: 3000 })).responses.map((x) => x.status)).toEqual([400]);
    expect((await none4xx()) - before).toBe(bad.length);
  });

  test('a stalled head is a 408 by whichever clock is shorter: here IDLE_TIMEOUT, under a long HEADERS_TIMEOUT', async () => {
    const q = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', IDLE_TIMEOUT: '1', HEADERS_TIMEOUT: '30' });
    try {
      const first = await rawExchange(q.port, `GET /stalled-head HTTP/1.1\r\nHo`, { deadlineMs: 6000 });
      expect(first.responses.map((x) => x.status)).toEqual([408]);
      expect(first.closed).toBe(true);
      // Behind an answered request on the same connection, too.
      const behind = await rawExchange(q.port, `GET /answered HTTP/1.1\r\n${H}\r\nGET /stalled-head HTTP/1.1\r\nHo`, { deadlineMs: 6000 });
      expect(behind.responses.map((x) => x.status)).toEqual([200, 408]);
      // A connection that sent nothing is closed without a word, as before.
      const silent = await rawExchange(q.port, '', { deadlineMs: 6000 });
      expect([silent.responses, silent.closed]).toEqual([[], true]);
    } finally {
      await q.stop();
    }
  });

  test('a request with a route whose body stalls past REQUEST_TIMEOUT is counted once, under its route', async () => {
    const q = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', REQUEST_TIMEOUT: '1' });
    try {
      const count = (route: string): Promise<number> => metric(q.metricsPort, 'karma_requests_total', { route, code: '4xx' });
      const r = await rawExchange(q.port, `POST /stalled-body HTTP/1.1\r\n${H}Content-Length: 100\r\n\r\n0123456789`, { deadlineMs: 6000 });
      expect(r.responses.map((x) => x.status)).toEqual([408]);
      expect([await count('pool'), await count('none')]).toEqual([1, 0]);
    } finally {
      await q.stop('SIGKILL');
    }
  });

  test('a stalled body is a 408 by whichever clock is shorter: here UPSTREAM_TIMEOUT, under a long IDLE_TIMEOUT', async () => {
    const q = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${backend.port}`, HEALTH_CHECK_PATH: 'off', IDLE_TIMEOUT: '30', UPSTREAM_TIMEOUT: '1' });
    try {
      const r = await rawExchange(q.port, `POST /stalled-long-idle HTTP/1.1\r\n${H}Content-Length: 100\r\n\r\nabc`, { deadlineMs: 6000 });
      expect(r.responses.map((x) => x.status)).toEqual([408]);
      expect(r.closed).toBe(true);
      expect(r.ms).toBeLessThan(1000 + MARGIN_MS);
      expect(backend.requests.filter((x) => x.url === '/stalled-long-idle')).toEqual([]);
    } finally {
      await q.stop('SIGKILL');
    }
  });

  test('a client that never reads a large response loses its connection after IDLE_TIMEOUT; the proxy holds none of it', async () => {
    const big = await startRecordingBackend();
    const chunk = Buffer.alloc(1024 * 1024, 'x');
    big.server.removeAllListeners('request');
    big.server.on('request', (_req: http.IncomingMessage, res: http.ServerResponse) => {
      res.writeHead(200, { 'Content-Length': String(64 * chunk.length) });
      let sent = 0;
      const pump = (): void => {
        while (sent < 64 && res.write(chunk)) sent++;
        if (sent >= 64) res.end();
        else res.once('drain', () => (sent++, pump()));
      };
      pump();
    });
    const q = await startBundle({
      NODE_FILTER: 'static',
      STATIC_TARGETS: `127.0.0.1:${big.port}`,
      HEALTH_CHECK_PATH: 'off',
      IDLE_TIMEOUT: String(IDLE_TIMEOUT_S),
      UPSTREAM_TIMEOUT: '30',
    });
    try {
      const pid = q.workers()[0];
      const before = rssBytes(pid);
      const t0 = Date.now();
      let received = 0;
      let ended = false;
      const socket = await new Promise<net.Socket>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port: q.port }, () => resolve(s));
        s.on('error', () => undefined);
      });
      socket.write(`GET /never-read HTTP/1.1\r\n${H}\r\n`);
      socket.pause();
      // The proxy's side of the connection goes away: its gauge of open client connections drops to zero.
      await until('the proxy to count the client', async () => (await metric(q.metricsPort, 'load_balancer_active_connections')) === 1, 5000, 50);
      await until('the proxy to drop the non-reading client', async () => (await metric(q.metricsPort, 'load_balancer_active_connections')) === 0, IDLE_TIMEOUT_S * 1000 + 5000, 100);
      const closedAfter = Date.now() - t0;
      const grown = rssBytes(pid) - before;
      // Meanwhile others are served.
      expect((await request(q.port, { path: '/other' })).status).toBe(200);
      socket.on('data', (d: Buffer) => (received += d.length));
      await new Promise<void>((resolve) => {
        socket.on('end', () => ((ended = true), resolve()));
        socket.on('close', () => resolve());
        socket.resume();
      });
      expect(ended || socket.destroyed).toBe(true);
      expect(received).toBeLessThan(64 * chunk.length);
      expect(closedAfter).toBeLessThan(IDLE_TIMEOUT_S * 1000 + MARGIN_MS + 1000);
      expect(grown).toBeLessThan(16 * 1024 * 1024);
    } finally {
      await q.stop('SIGKILL');
      await big.close();
    }
  });
});
