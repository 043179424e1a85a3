/**
 * The header lines a request goes upstream with: names its Connection header lists are dropped, by that
 * request's own Connection value, however many values came before (they are parsed once and kept).
 */
import { forwardedProto, HeadSource, traceHeader, upstreamHead } from '../../runtime/forward';

/** The parts of a request upstreamHead reads, from raw [name, value, …] pairs. */
function request(raw: string[]): HeadSource {
  const headers: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i].toLowerCase();
    headers[k] = headers[k] === undefined ? raw[i + 1] : `${headers[k]}, ${raw[i + 1]}`;
  }
  return { method: 'GET', url: '/', rawHeaders: raw, headers, ip: '198.51.100.4' };
}

/** The header names of a rendered head (its request line left out). */
const names = (head: string): string[] => head.split('\r\n').slice(1).filter(Boolean).map((l) => l.slice(0, l.indexOf(':')));

test('each request drops what its own Connection header lists, whatever came before', () => {
  const raw = (connection: string): string[] => ['Host', 'a.example.com', 'Connection', connection, 'X-A', '1', 'X-Longer-Name', '2', 'Accept', '*/*'];
  const sent = (connection: string): string[] => names(upstreamHead(request(raw(connection)), '6969').head);
  const kept = ['Host', 'Accept', 'X-Forwarded-For', 'X-Forwarded-Proto', 'X-Forwarded-Port', 'X-Forwarded-Host', 'X-Amzn-Trace-Id'];
  for (let round = 0; round < 3; round++) {
    expect(sent('keep-alive, X-A')).toEqual(['Host', 'X-Longer-Name', ...kept.slice(1)]);
    expect(sent('keep-alive')).toEqual(['Host', 'X-A', 'X-Longer-Name', ...kept.slice(1)]);
    expect(sent('X-LONGER-NAME,x-a')).toEqual(kept);
    expect(sent('close, Host')).toEqual(['Host', 'X-A', 'X-Longer-Name', ...kept.slice(1)]); // never Host
  }
});

test('hundreds of distinct Connection values, and very long ones, are each read right', () => {
  for (let i = 0; i < 300; i++) {
    const listed = `X-Drop-${i}`;
    const padding = i % 50 === 0 ? `, ${'x'.repeat(400)}` : '';
    const lines = upstreamHead(request(['Host', 'a.example.com', 'Connection', `keep-alive, ${listed}${padding}`, listed, 'secret', 'X-Drop-0', 'zero']), '80').head;
    expect(lines).not.toContain(`${listed}:`);
    if (i !== 0) expect(lines).toContain('X-Drop-0: zero');
  }
});

test('the head is whole: the request line as the client sent it, the headers, the empty line', () => {
  const { head, hasLength } = upstreamHead({ ...request(['Host', 'a.example.com', 'Content-Length', '3']), method: 'PUT', url: '/a%20b?x=1' }, '80');
  expect(head.startsWith('PUT /a%20b?x=1 HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 3\r\n')).toBe(true);
  expect(head).toMatch(/X-Forwarded-Host: a\.example\.com\r\nX-Amzn-Trace-Id: Root=1-[0-9a-f]{8}-[0-9a-f]{24}\r\n\r\n$/);
  expect(head.indexOf('\r\n\r\n')).toBe(head.length - 4);
  expect(hasLength).toBe(true);
});

test('a client’s Forwarded header, in any spelling, does not go upstream; X-Forwarded-* say who sent it', () => {
  for (const name of ['Forwarded', 'forwarded', 'FORWARDED']) {
    const { head } = upstreamHead(request(['Host', 'a.example.com', name, 'for=9.9.9.9;proto=https', 'Accept', '*/*']), '80');
    expect(names(head)).toEqual(['Host', 'Accept', 'X-Forwarded-For', 'X-Forwarded-Proto', 'X-Forwarded-Port', 'X-Forwarded-Host', 'X-Amzn-Trace-Id']);
    expect(head).toContain('X-Forwarded-For: 198.51.100.4\r\n');
  }
});

describe('X-Forwarded-Proto and -Port', () => {
  const lines = (raw: string[], trust: boolean): string[] =>
    upstreamHead(request(['Host', 'a.example.com', ...raw]), '80', trust).head.split('\r\n').filter((l) => /^X-Forwarded-(Proto|Port):/.test(l));

  test("are the proxy's own by default, whatever the client claims", () => {
    expect(lines(['X-Forwarded-Proto', 'https', 'X-Forwarded-Port', '443'], false)).toEqual(['X-Forwarded-Proto: http', 'X-Forwarded-Port: 80']);
  });

  test('with TRUST_FORWARDED_PROTO, a TLS terminator in front is believed: its scheme, and its port or the scheme\'s', () => {
    expect(lines(['X-Forwarded-Proto', 'https', 'X-Forwarded-Port', '8443'], true)).toEqual(['X-Forwarded-Proto: https', 'X-Forwarded-Port: 8443']);
    expect(lines(['X-Forwarded-Proto', 'HTTPS'], true)).toEqual(['X-Forwarded-Proto: https', 'X-Forwarded-Port: 443']);
    expect(lines([], true)).toEqual(['X-Forwarded-Proto: http', 'X-Forwarded-Port: 80']);
    // Two lines: the client's, then the one a front added. The front's counts.
    expect(lines(['X-Forwarded-Proto', 'https', 'X-Forwarded-Proto', 'http'], true)).toEqual(['X-Forwarded-Proto: http', 'X-Forwarded-Port: 80']);
  });

  test('Content-Length goes upstream without leading zeros (a target reading 010 as octal would desync)', () => {
    const head = upstreamHead({ ...request(['Host', 'a.example.com', 'Content-Length', '010']), method: 'POST' }, '80').head;
    expect(head).toContain('\r\nContent-Length: 10\r\n');
    expect(upstreamHead({ ...request(['Host', 'a', 'content-length', '0']), method: 'POST' }, '80').head).toContain('\r\ncontent-length: 0\r\n');
  });

  test.each([
    // A front that appends: its own value comes last, after what its client claimed.
    ['the last of a list', 'https, http', '443, 80', { proto: 'http', port: '80' }],
    ['the last of a list, https', 'http,https', '80,8443', { proto: 'https', port: '8443' }],
    ['a scheme that is neither http nor https', 'javascript', '443', { proto: 'http', port: '6969' }],
    ['a port that is not one', 'https', '99999', { proto: 'https', port: '443' }],
    ['plain http', 'http', undefined, { proto: 'http', port: '80' }],
  ])('trusted, %s', (_what, proto, port, expected) => {
    expect(forwardedProto(proto, port, '6969', true)).toEqual(expected);
  });
});

/** The value of the one line named `name` in a rendered head. */
const lineOf = (head: string, name: string): string[] =>
  head.split('\r\n').filter((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`)).map((l) => l.slice(name.length + 2));

test('X-Forwarded-For: empty lines of the client add no empty entries', () => {
  const head = (raw: string[]): string[] => lineOf(upstreamHead(request(['Host', 'a', ...raw]), '80').head, 'X-Forwarded-For');
  expect(head(['X-Forwarded-For', '', 'X-Forwarded-For', '1.1.1.1'])).toEqual(['1.1.1.1, 198.51.100.4']);
  expect(head(['X-Forwarded-For', ' ', 'X-Forwarded-For', ''])).toEqual(['198.51.100.4']);
  expect(head(['X-Forwarded-For', ',', 'X-Forwarded-For', ' , ,'])).toEqual(['198.51.100.4']);
  expect(head(['X-Forwarded-For', '1.1.1.1', 'X-Forwarded-For', '2.2.2.2'])).toEqual(['1.1.1.1, 2.2.2.2, 198.51.100.4']);
});

describe('X-Forwarded-Host', () => {
  const sent = (raw: string[], trust: boolean): string[] =>
    lineOf(upstreamHead(request(['Host', 'web-8080-prod.apps.example.com', ...raw]), '80', trust).head, 'X-Forwarded-Host');

  test("is the Host, whatever the client claims, also with TRUST_FORWARDED_PROTO: no common front sets it, so a sent one is the client's", () => {
    for (const trust of [false, true]) {
      expect(sent(['X-Forwarded-Host', 'evil.example'], trust)).toEqual(['web-8080-prod.apps.example.com']);
      expect(sent(['X-Forwarded-Host', 'www.example.com,'], trust)).toEqual(['web-8080-prod.apps.example.com']);
    }
  });
});

describe('X-Amzn-Trace-Id, as an ALB sends it', () => {
  const ID = /^1-([0-9a-f]{8})-[0-9a-f]{24}$/;
  const sent = (raw: string[]): { value: string[]; req: HeadSource } => {
    const req = request(['Host', 'a', ...raw]);
    return { value: lineOf(upstreamHead(req, '80').head, 'X-Amzn-Trace-Id'), req };
  };

  test('a request without one gets a new Root: this second in hex, then 96 random bits, new each time', () => {
    const { value, req } = sent([]);
    expect(value).toHaveLength(1);
    const [, seconds] = ID.exec(value[0].slice('Root='.length))!;
    expect(Math.abs(parseInt(seconds, 16) - Date.now() / 1000)).toBeLessThan(5);
    // Kept on the request for its access line.
    expect(req.trace).toBe(value[0]);
    const many = new Set(Array.from({ length: 2000 }, () => traceHeader(undefined)));
    expect(many.size).toBe(2000);
  });

  test("a client's trace is kept, its own fields too, behind a Self of this hop that replaces an earlier one", () => {
    const root = 'Root=1-67891233-abcdef012345678912345678';
    const self = (v: string): string => v.slice(0, v.indexOf(';'));
    const [kept] = sent(['X-Amzn-Trace-Id', `${root};CalledFrom=app`]).value;
    expect(kept).toMatch(new RegExp(`^Self=1-[0-9a-f]{8}-[0-9a-f]{24};${root};CalledFrom=app$`));
    const [again] = sent(['x-amzn-trace-id', `Self=1-00000001-000000000000000000000001; ${root}`]).value;
    expect(again).toMatch(new RegExp(`^Self=1-[0-9a-f]{8}-[0-9a-f]{24};${root}$`));
    expect(self(again)).not.toBe('Self=1-00000001-000000000000000000000001');
  });

  test('one with a Self alone has its Self updated; one over 7 KiB starts over; field names are case-sensitive', () => {
    expect(sent(['X-Amzn-Trace-Id', 'Self=1-00000001-000000000000000000000001;CalledFrom=app']).value)
      .toEqual([expect.stringMatching(/^Self=1-[0-9a-f]{8}-[0-9a-f]{24};CalledFrom=app$/)]);
    expect(sent(['X-Amzn-Trace-Id', 'Self=1-00000001-000000000000000000000001']).value)
      .toEqual([expect.stringMatching(/^Self=1-[0-9a-f]{8}-[0-9a-f]{24}$/)]);
    const root = 'Root=1-67891233-abcdef012345678912345678';
    expect(sent(['X-Amzn-Trace-Id', `${root};Big=${'x'.repeat(7 * 1024)}`]).value).toEqual([expect.stringMatching(/^Root=1-[0-9a-f]{8}-[0-9a-f]{24}$/)]);
    // `self=` is no Self: a field of the client's, kept (the header has a valid Root).
    expect(sent(['X-Amzn-Trace-Id', `${root};self=x`]).value).toEqual([expect.stringMatching(new RegExp(`^Self=1-[0-9a-f]{8}-[0-9a-f]{24};${root};self=x$`))]);
  });

  test('one without a valid Root is replaced by a new one; a second line, or an underscore spelling, is not passed on', () => {
    for (const bad of ['CalledFrom=app', 'Root=1-xyz-abc', 'Root=2-67891233-abcdef012345678912345678', 'root=1-67891233-abcdef012345678912345678', '']) {
      expect(sent(['X-Amzn-Trace-Id', bad]).value).toEqual([expect.stringMatching(/^Root=1-[0-9a-f]{8}-[0-9a-f]{24}$/)]);
    }
    const root = 'Root=1-67891233-abcdef012345678912345678';
    const { value } = sent(['X-Amzn-Trace-Id', root, 'X-Amzn-Trace-Id', 'Root=1-11111111-111111111111111111111111', 'X_Amzn_Trace_Id', 'x']);
    expect(value).toEqual([expect.stringMatching(new RegExp(`^Self=1-[0-9a-f]{8}-[0-9a-f]{24};${root}$`))]);
    expect(upstreamHead(request(['Host', 'a', 'X_Amzn_Trace_Id', 'x']), '80').head).not.toContain('X_Amzn');
  });
});
