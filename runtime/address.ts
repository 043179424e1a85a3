/**
 * IP literals read alike however they are spelt: pure helpers, with no log or metrics, for the
 * discovery screen (discovery/screen.ts), the settings' check of STATIC_TARGETS (config.ts) and the
 * construct's (lib/).
 */
import { isIP } from 'node:net';
import * as os from 'node:os';

/**
 * An IPv6 literal's eight 16-bit groups, read from the WHATWG URL parser's canonical form, so that
 * every spelling of one address (`0:0:0:0:0:ffff:7f00:1`, `::ffff:127.0.0.1`, `FD00:EC2:0::254`) is
 * judged alike; undefined for what it refuses (a zone index such as `::1%lo`).
 */
export function groupsOf(host: string): number[] | undefined {
  let c: string;
  try {
    c = new URL(`http://[${host}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
  const gap = c.indexOf('::');
  const part = (s: string): string[] => (s === '' ? [] : s.split(':'));
  const head = part(gap === -1 ? c : c.slice(0, gap));
  const tail = gap === -1 ? [] : part(c.slice(gap + 2));
  const groups = [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail].map((g) => parseInt(g, 16));
  return groups.length === 8 && groups.every((g) => g >= 0 && g <= 0xffff) ? groups : undefined;
}

/** The IPv4 address an IPv4-mapped address (::ffff:a.b.c.d) carries, from its groups; undefined for any other. */
export function mappedV4(g: readonly number[]): string | undefined {
  if (!(g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff)) return undefined;
  return `${g[6] >> 8}.${g[6] & 255}.${g[7] >> 8}.${g[7] & 255}`;
}

/** ::1 from its groups. */
export const isV6Loopback = (g: readonly number[]): boolean => g.slice(0, 7).every((x) => x === 0) && g[7] === 1;

/** fe80::/10, from its groups. */
export const isV6LinkLocal = (g: readonly number[]): boolean => (g[0] & 0xffc0) === 0xfe80;

/** fd00:ec2::/32, from its groups: the instance's own AWS services (metadata fd00:ec2::254, DNS, time). */
export const isV6InstanceServices = (g: readonly number[]): boolean => g[0] === 0xfd00 && g[1] === 0x0ec2;

/** An IP literal in one spelling: IPv6 as its eight groups in hex, an IPv4-mapped one as the IPv4 address it carries. */
export function canonicalAddress(host: string): string {
  if (isIP(host) !== 6) return host;
  const g = groupsOf(host);
  if (g === undefined) return host;
  return mappedV4(g) ?? g.map((x) => x.toString(16)).join(':');
}

/**
 * A loopback address (127.0.0.0/8, ::1, an IPv4-mapped 127.x): each reaches this machine, listed by its
 * interfaces or not (127.0.0.2 reaches a proxy listening on 0.0.0.0).
 */
export function isLoopbackAddress(host: string): boolean {
  const c = canonicalAddress(host);
  return c.startsWith('127.') || c === '0:0:0:0:0:0:0:1';
}

/** This machine's own addresses (every interface's), canonical. */
export function ownAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) out.add(canonicalAddress(a.address.split('%')[0]));
  }
  return out;
}
