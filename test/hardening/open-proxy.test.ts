/**
 * No open proxy: nothing in a request can make the bundle connect to an address discovery did not
 * return, or to a port or cluster the allow-lists exclude. The Karma seed could be steered to any port
 * of any task by a Host header; here every such attempt is answered by the proxy itself.
 *
 * ECS discovery goes through the loopback AWS stub: cluster `prod` has an awsvpc service `web` and a
 * bridge-mode service `legacy` (container port 80 on a dynamic host port), cluster `staging` has `web`
 * too but is not allowed. A canary listener on 127.0.0.1 stands for everything else (another task's
 * port, the metadata service, localhost): it must never see a connection, and every target in the
 * access log must be one discovery returned. The metadata address only ever appears as text.
 */
import { Proxy, startBundle } from '../support/bundle';
import { AwsStub, startAwsStub } from '../support/aws-stub';
import { Canary, loggedTargets, rawExchange, RecordingBackend, startCanary, startRecordingBackend } from './support';

jest.setTimeout(60_000);

const CI = 'arn:aws:ecs:us-east-1:123456789012:container-instance/prod/0123456789abcdef';

interface Case {
  readonly name: string;
  /** The request head, marker path `t` included; `Connection: close` is added. */
  readonly head: (t: string, ports: { web: number; canary: number }) => string;
  readonly status: number;
  /** Which backend may see it: only for the controls. */
  readonly reaches?: 'web' | 'legacy';
}

const req = (host: string, t: string, extra = ''): string => `GET ${t} HTTP/1.1\r\nHost: ${host}\r\n${extra}`;

const ECS_CASES: Case[] = [
  { name: 'control: an allowed awsvpc route', head: (t, p) => req(`web-${p.web}-prod.example.com`, t), status: 200, reaches: 'web' },
  { name: 'control: an allowed bridge-mode route (container port 80)', head: (t) => req('legacy-80-prod.example.com', t), status: 200, reaches: 'legacy' },
  { name: 'a port outside ALLOWED_PORTS on a discovered task', head: (t, p) => req(`web-${p.canary}-prod.example.com`, t), status: 403 },
  { name: 'port 22 of a discovered task', head: (t) => req('web-22-prod.example.com', t), status: 403 },
  { name: 'a cluster outside ALLOWED_CLUSTERS', head: (t, p) => req(`web-${p.web}-staging.example.com`, t), status: 403 },
  { name: 'a cluster that does not exist', head: (t, p) => req(`web-${p.web}-nowhere.example.com`, t), status: 403 },
  { name: 'Host is an IP literal and port', head: (t, p) => req(`127.0.0.1:${p.canary}`, t), status: 400 },
  { name: 'Host is localhost', head: (t) => req('localhost', t), status: 400 },
  { name: 'Host is localhost with a port', head: (t, p) => req(`localhost:${p.canary}`, t), status: 400 },
  { name: 'Host is the metadata address', head: (t) => req('169.254.169.254', t), status: 400 },
  { name: 'Host is the metadata address on port 80', head: (t) => req('169.254.169.254:80', t), status: 400 },
  { name: 'Host is the IPv6 metadata address', head: (t) => req('[fd00:ec2::254]', t), status: 400 },
  { name: 'Host is an IPv6 loopback literal', head: (t, p) => req(`[::1]:${p.canary}`, t), status: 400 },
  { name: 'Host is a decimal IPv4 address', head: (t) => req('2852039166', t), status: 400 },
  { name: 'the domain followed by another domain', head: (t, p) => req(`web-${p.web}-prod.example.com.attacker.test`, t), status: 400 },
  { name: 'userinfo pointing at the metadata address', head: (t, p) => req(`web-${p.web}-prod.example.com@169.254.169.254`, t), status: 400 },
  { name: 'a port label beyond 65535', head: (t) => req('web-99999-prod.example.com', t), status: 400 },
  { name: 'a :port suffix beyond 65535 on an allowed Host', head: (t, p) => req(`web-${p.web}-prod.example.com:99999`, t), status: 400 },
  {
    name: 'a :port suffix on an allowed Host is ignored, never dialled',
    head: (t, p) => req(`web-${p.web}-prod.example.com:${p.canary}`, t),
    status: 200,
    reaches: 'web',
  },
  {
    name: 'X-Forwarded-Host, Forwarded and X-Original-URL do not route',
    head: (t, p) =>
      req(`web-${p.web}-prod.example.com`, t, `X-Forwarded-Host: 127.0.0.1:${p.canary}\r\nForwarded: host=169.254.169.254\r\nX-Original-URL: http://169.254.169.254/\r\nX-Rewrite-URL: //127.0.0.1:${p.canary}/\r\n`),
    status: 200,
    reaches: 'web',
  },
  {
    name: 'a path that looks like an authority is only a path',
    head: (t, p) => `GET /${t.slice(1)}//169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\n`,
    status: 200,
    reaches: 'web',
  },
  { name: 'absolute-form target at the metadata address', head: (t, p) => `GET http://169.254.169.254${t}/latest/meta-data/ HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\n`, status: 400 },
  { name: 'absolute-form target at a loopback port', head: (t, p) => `GET http://127.0.0.1:${p.canary}${t} HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\n`, status: 400 },
  {
    name: 'absolute-form target naming an allowed route: its authority routes, not the Host header (RFC 9112 §3.2.2)',
    head: (t, p) => `GET http://web-${p.web}-prod.example.com${t} HTTP/1.1\r\nHost: 127.0.0.1:${p.canary}\r\n`,
    status: 200,
    reaches: 'web',
  },
  { name: 'absolute-form target naming a disallowed cluster, Host an allowed route', head: (t, p) => `GET http://web-${p.web}-staging.example.com${t} HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\n`, status: 403 },
  { name: 'absolute-form target with a port beyond 65535', head: (t, p) => `GET http://web-${p.web}-prod.example.com:99999${t} HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\n`, status: 400 },
  { name: 'absolute-form target naming a port outside ALLOWED_PORTS', head: (t, p) => `GET http://web-${p.canary}-prod.example.com${t} HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\n`, status: 403 },
  { name: 'absolute-form target with userinfo before the metadata address', head: (t, p) => `GET http://web-${p.web}-prod.example.com@169.254.169.254${t} HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\n`, status: 400 },
  { name: 'absolute-form target at the decimal metadata address', head: (t, p) => `GET http://2852039166${t} HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\n`, status: 400 },
  { name: 'absolute-form https target', head: (t, p) => `GET https://169.254.169.254${t} HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\n`, status: 400 },
  { name: 'authority-form target on GET', head: (t, p) => `GET 127.0.0.1:${p.canary} HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\nX-Marker: ${t}\r\n`, status: 400 },
  { name: 'CONNECT to the metadata address', head: (t) => `CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: 169.254.169.254:80\r\nX-Marker: ${t}\r\n`, status: 405 },
  { name: 'CONNECT to a loopback port', head: (t, p) => `CONNECT 127.0.0.1:${p.canary} HTTP/1.1\r\nHost: 127.0.0.1:${p.canary}\r\nX-Marker: ${t}\r\n`, status: 405 },
  { name: 'CONNECT to an allowed route', head: (t, p) => `CONNECT web-${p.web}-prod.example.com:443 HTTP/1.1\r\nHost: web-${p.web}-prod.example.com:443\r\nX-Marker: ${t}\r\n`, status: 405 },
  { name: 'two Host headers, the second elsewhere', head: (t, p) => req(`web-${p.web}-prod.example.com`, t, `Host: 127.0.0.1:${p.canary}\r\n`), status: 400 },
  { name: 'two Host headers, the first elsewhere', head: (t, p) => req('169.254.169.254', t, `Host: web-${p.web}-prod.example.com\r\n`), status: 400 },
  { name: 'two identical Host headers', head: (t, p) => req(`web-${p.web}-prod.example.com`, t, `Host: web-${p.web}-prod.example.com\r\n`), status: 400 },
  { name: 'Host headers differing in case only by name', head: (t, p) => req(`web-${p.web}-prod.example.com`, t, `host: web-${p.web}-staging.example.com\r\n`), status: 400 },
  { name: 'two routes in one Host value', head: (t, p) => req(`web-${p.web}-prod.example.com, web-${p.canary}-prod.example.com`, t), status: 400 },
  { name: 'HTTP/1.0 without Host', head: (t) => `GET ${t} HTTP/1.0\r\n`, status: 400 },
  {
    name: 'a WebSocket upgrade to a port outside ALLOWED_PORTS',
    head: (t, p) => req(`web-${p.canary}-prod.example.com`, t, 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'),
    status: 403,
  },
  {
    name: 'a WebSocket upgrade with an absolute-form target',
    head: (t, p) => `GET http://127.0.0.1:${p.canary}${t} HTTP/1.1\r\nHost: web-${p.web}-prod.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n`,
    status: 400,
  },
];

const marker = (n: number): string => `/op-${String(n).padStart(3, '0')}`;

describe('ecs mode: requests cannot choose their target', () => {
  let web: RecordingBackend;
  let legacy: RecordingBackend;
  let canary: Canary;
  let stub: AwsStub;
  let p: Proxy;
  const results = new Map<string, Awaited<ReturnType<typeof rawExchange>>>();

  beforeAll(async () => {
    [web, legacy, canary] = await Promise.all([startRecordingBackend(), startRecordingBackend(), startCanary()]);
    stub = await startAwsStub({
      clusters: {
        prod: { web: [{ ip: '127.0.0.1' }], legacy: [{ containerInstanceArn: CI, bindings: [{ containerPort: 80, hostPort: legacy.port }] }] },
        staging: { web: [{ ip: '127.0.0.1' }] },
      },
      containerInstances: { [CI]: 'i-0123456789abcdef0' },
      instances: [{ id: 'i-0123456789abcdef0', privateIp: '127.0.0.1' }],
    });
    p = await startBundle({
      ...stub.env(),
      DOMAIN: 'example.com',
      ALLOWED_CLUSTERS: 'prod',
      ALLOWED_PORTS: `${web.port},80`,
      HEALTH_CHECK_PATH: 'off',
      LOG_CONNECTIONS: 'true',
    });
    const ports = { web: web.port, canary: canary.port };
    // One after another: the first request of a route waits for its discovery, which is the point of the controls.
    for (const [i, c] of ECS_CASES.entries()) {
      results.set(c.name, await rawExchange(p.port, `${c.head(marker(i), ports)}Connection: close\r\n\r\n`, { deadlineMs: 10_000 }));
    }
  });

  afterAll(async () => {
    await p?.stop('SIGKILL');
    await Promise.all([web?.close(), legacy?.close(), canary?.close(), stub?.close()]);
  });

  test.each(ECS_CASES.map((c, i) => [c.name, c, i] as const))('%s', (_name, c, i) => {
    const r = results.get(c.name)!;
    const where = `${c.name}: ${JSON.stringify(r.data.slice(0, 100))}`;
    expect({ where, statuses: r.responses.map((x) => x.status) }).toEqual({ where, statuses: [c.status] });
    const t = marker(i);
    expect(web.bytes().includes(t)).toBe(c.reaches === 'web');
    expect(legacy.bytes().includes(t)).toBe(c.reaches === 'legacy');
    if (c.status >= 400) expect(r.responses[0].headers.connection).toBe('close');
  });

  test('the canary was never reached, and every target the proxy used came from discovery', () => {
    expect(canary.connections).toBe(0);
    expect([...loggedTargets(p)].sort()).toEqual([`127.0.0.1:${legacy.port}`, `127.0.0.1:${web.port}`].sort());
  });

  test('discovery was asked about allowed routes only', () => {
    const listed = stub.calls.filter((c) => c.api === 'ListTasks').map((c) => `${String(c.params.serviceName)}@${String(c.params.cluster)}`);
    expect([...new Set(listed)].sort()).toEqual(['legacy@prod', 'web@prod']);
  });
});

describe('pool mode: the Host header names nothing', () => {
  let pool: RecordingBackend;
  let canary: Canary;
  let p: Proxy;

  beforeAll(async () => {
    [pool, canary] = await Promise.all([startRecordingBackend(), startCanary()]);
    p = await startBundle({ NODE_FILTER: 'static', STATIC_TARGETS: `127.0.0.1:${pool.port}`, HEALTH_CHECK_PATH: 'off', LOG_CONNECTIONS: 'true' });
  });

  afterAll(async () => {
    await p?.stop('SIGKILL');
    await Promise.all([pool?.close(), canary?.close()]);
  });

  test.each([
    ['the canary port', (c: number) => `127.0.0.1:${c}`],
    ['localhost', (c: number) => `localhost:${c}`],
    ['the metadata address', () => '169.254.169.254'],
    ['an IPv6 literal', (c: number) => `[::1]:${c}`],
  ])('a Host naming %s goes to the pool', async (_what, host) => {
    const t = `/pool-${Math.random().toString(36).slice(2)}`;
    const r = await rawExchange(p.port, `GET ${t} HTTP/1.1\r\nHost: ${host(canary.port)}\r\nConnection: close\r\n\r\n`);
    expect(r.responses.map((x) => x.status)).toEqual([200]);
    expect(pool.bytes().includes(t)).toBe(true);
  });

  test.each([
    ['an absolute-form target at the canary port', (c: number, t: string) => `GET http://127.0.0.1:${c}${t} HTTP/1.1\r\nHost: app.example.com\r\n`, 400],
    ['an absolute-form target at the metadata address', (_c: number, t: string) => `GET http://169.254.169.254${t} HTTP/1.1\r\nHost: app.example.com\r\n`, 400],
    ['an absolute-form target at localhost', (c: number, t: string) => `GET http://localhost:${c}${t} HTTP/1.1\r\nHost: app.example.com\r\n`, 400],
    ['CONNECT', (c: number, t: string) => `CONNECT 127.0.0.1:${c} HTTP/1.1\r\nHost: 127.0.0.1:${c}\r\nX-Marker: ${t}\r\n`, 405],
  ] as const)('%s is refused', async (_what, head, status) => {
    const t = `/pool-${Math.random().toString(36).slice(2)}`;
    const r = await rawExchange(p.port, `${head(canary.port, t)}Connection: close\r\n\r\n`);
    expect(r.responses.map((x) => x.status)).toEqual([status]);
    expect(pool.bytes().includes(t)).toBe(false);
  });

  test('an absolute-form target naming a name goes to the pool in origin-form', async () => {
    const t = `/pool-${Math.random().toString(36).slice(2)}`;
    const r = await rawExchange(p.port, `GET http://app.example.com${t} HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n`);
    expect(r.responses.map((x) => x.status)).toEqual([200]);
    expect(pool.bytes().includes(`GET ${t} HTTP/1.1\r\n`)).toBe(true);
  });

  test('the canary was never reached, and the pool is the only target used', () => {
    expect(canary.connections).toBe(0);
    expect([...loggedTargets(p)]).toEqual([`127.0.0.1:${pool.port}`]);
  });
});
