/**
 * The header lines a request goes upstream with: names its Connection header lists are dropped, by that
 * request's own Connection value, however many values came before (they are parsed once and kept).
 */
import { HeadSource, upstreamHeaderLines } from '../../runtime/forward';

/** The parts of a request upstreamHeaderLines reads, from raw [name, value, …] pairs. */
function request(raw: string[]): HeadSource {
  const headers: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i].toLowerCase();
    headers[k] = headers[k] === undefined ? raw[i + 1] : `${headers[k]}, ${raw[i + 1]}`;
  }
  return { rawHeaders: raw, headers, ip: '198.51.100.4' };
}

const names = (lines: string): string[] => lines.split('\r\n').filter(Boolean).map((l) => l.slice(0, l.indexOf(':')));

test('each request drops what its own Connection header lists, whatever came before', () => {
  const raw = (connection: string): string[] => ['Host', 'a.example.com', 'Connection', connection, 'X-A', '1', 'X-Longer-Name', '2', 'Accept', '*/*'];
  const sent = (connection: string): string[] => names(upstreamHeaderLines(request(raw(connection)), '6969').lines);
  const kept = ['Host', 'Accept', 'X-Forwarded-For', 'X-Forwarded-Proto', 'X-Forwarded-Port', 'X-Forwarded-Host'];
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
    const lines = upstreamHeaderLines(request(['Host', 'a.example.com', 'Connection', `keep-alive, ${listed}${padding}`, listed, 'secret', 'X-Drop-0', 'zero']), '80').lines;
    expect(lines).not.toContain(`${listed}:`);
    if (i !== 0) expect(lines).toContain('X-Drop-0: zero');
  }
});
