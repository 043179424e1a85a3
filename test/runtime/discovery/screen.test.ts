/** The last check on what discovery hands the proxy (runtime/discovery/screen.ts). */
import * as os from 'node:os';
import { ScreenedProvider, usableAddress } from '../../../runtime/discovery/screen';
import { register } from '../../../runtime/metrics';
import { makeTarget, type Provider } from '../../../runtime/types';

test.each([
  ['10.0.1.17', true], ['172.31.0.5', true], ['203.0.113.9', true], ['2600:1f18::5', true], ['fd12:3456::1', true],
  ['169.254.169.254', false], ['169.254.170.2', false], ['127.0.0.1', false], ['127.8.0.1', false], ['0.0.0.0', false],
  ['224.0.0.1', false], ['255.255.255.255', false], ['::1', false], ['::', false], ['fe80::1', false], ['ff02::1', false],
  ['fd00:ec2::254', false], ['::ffff:169.254.169.254', false], ['::ffff:10.0.0.1', true],
  ['localhost', false], ['metadata.internal', false], ['', false],
])('%s usable: %s', (host, usable) => {
  expect(usableAddress(host)).toBe(usable);
});

// A poisoned cache entry may spell a special address any way an IPv6 parser reads it.
test.each([
  ['::ffff:7f00:1', 'loopback, IPv4-mapped in hex'], ['0:0:0:0:0:ffff:7f00:1', 'the same, uncompressed'],
  ['::ffff:a9fe:a9fe', 'the metadata address, IPv4-mapped in hex'], ['::FFFF:169.254.169.254', 'the same, upper case'],
  ['fd00:ec2:0:0:0:0:0:254', 'the IPv6 metadata address, uncompressed'], ['FD00:EC2:0::254', 'the same, mixed'],
  ['fd00:ec2::253', 'the instance DNS resolver'], ['0:0:0:0:0:0:0:1', 'loopback, uncompressed'], ['0::0', 'unspecified'],
  ['::ffff:0:0', 'the IPv4-mapped unspecified address'], ['::7f00:1', 'IPv4-compatible loopback'],
  ['::ffff:0:7f00:1', 'IPv4-translated loopback'], ['64:ff9b::a9fe:a9fe', 'NAT64 of the metadata address'],
  ['2002:a9fe:a9fe::1', '6to4 carrying the metadata address'], ['2002:7f00:1::', '6to4 carrying loopback'],
  ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'Teredo'],
  ['FE80::1', 'link-local, upper case'], ['fec0::1', 'site-local'], ['FF02::1', 'multicast, upper case'],
  ['::1%lo', 'loopback with a zone index'], ['fe80::1%eth0', 'link-local with a zone index'],
])('%s (%s) is not usable', (host) => {
  expect(usableAddress(host)).toBe(false);
});

test('a task’s ordinary IPv6 address is usable however it is written', () => {
  expect(['2600:1F18:0:0:0:0:0:5', '2600:1f18::5', '::ffff:10.0.0.1', '::ffff:a00:1'].map((h) => usableAddress(h))).toEqual([true, true, true, true]);
});

test('loopback only when asked for (a local AWS stand-in); link-local and metadata never', () => {
  expect(['127.0.0.1', '::1', '0:0:0:0:0:0:0:1', '::ffff:7f00:1', '169.254.169.254', 'fd00:ec2::254', '::ffff:a9fe:a9fe'].map((h) => usableAddress(h, true))).toEqual([
    true, true, true, true, false, false, false,
  ]);
});

test('a provider’s answer loses what is not usable, and keeps the rest in order', async () => {
  const inner: Provider = {
    name: 'test',
    discover: async () => [makeTarget('10.0.0.1', 80), makeTarget('169.254.169.254', 80), makeTarget('localhost', 22), makeTarget('10.0.0.2', 80)],
  };
  const ids = (await new ScreenedProvider(inner).discover({ service: 'web', port: 80, cluster: 'prod' })).map((t) => t.id);
  expect(ids).toEqual(['10.0.0.1:80', '10.0.0.2:80']);
});

test('a provider’s answer loses ports no socket can have (a broken answer), counted apart from bad addresses', async () => {
  const inner: Provider = {
    name: 'test',
    discover: async () => [makeTarget('10.0.0.1', 80), makeTarget('10.0.0.2', 31001.5), makeTarget('10.0.0.3', 70000), makeTarget('10.0.0.4', 0), makeTarget('10.0.0.5', 8080)],
  };
  const count = async (): Promise<number> => (await register.getSingleMetric('karma_tasks_skipped_total')?.get())?.values.find((v) => v.labels.reason === 'bad_port')?.value ?? 0;
  const before = await count();
  const ids = (await new ScreenedProvider(inner).discover({ service: 'web', port: 80, cluster: 'prod' })).map((t) => t.id);
  expect(ids).toEqual(['10.0.0.1:80', '10.0.0.5:8080']);
  expect((await count()) - before).toBe(3);
});

test("never the proxy itself: its own ports on this machine's addresses, however an answer spells them", async () => {
  const mine = Object.values(os.networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address ?? '127.0.0.1';
  const other = mine === '10.99.0.2' ? '10.99.0.3' : '10.99.0.2';
  const inner: Provider = {
    name: 'test',
    discover: async () => [
      makeTarget(mine, 6970), // the metrics port: /metrics to every client
      makeTarget(mine, 6969), // the proxy's port: a loop
      makeTarget(`::ffff:${mine}`, 6969),
      makeTarget('127.0.0.1', 6969), // loopback, allowed here, is this machine too
      makeTarget('127.0.0.2', 6970), // and every loopback address reaches a proxy listening on 0.0.0.0
      makeTarget('::ffff:127.9.9.9', 6969),
      makeTarget('::1', 6970),
      makeTarget('127.0.0.2', 8080), // another port of loopback: a local stand-in's task
      makeTarget(mine, 8080), // another port of this machine: a task may listen there
      makeTarget(other, 6969), // the same port elsewhere: another proxy's, or a task's
    ],
  };
  const ids = (await new ScreenedProvider(inner, true, [6969, 6970]).discover({ service: 'web', port: 80, cluster: 'prod' })).map((t) => t.id);
  expect([...ids].sort()).toEqual([`${mine}:8080`, '127.0.0.2:8080', `${other}:6969`].sort());
});
