/** The last check on what discovery hands the proxy (runtime/discovery/screen.ts). */
import { ScreenedProvider, usableAddress } from '../../../runtime/discovery/screen';
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

test('loopback only when asked for (a local AWS stand-in); link-local and metadata never', () => {
  expect(['127.0.0.1', '::1', '169.254.169.254', 'fd00:ec2::254'].map((h) => usableAddress(h, true))).toEqual([true, true, false, false]);
});

test('a provider’s answer loses what is not usable, and keeps the rest in order', async () => {
  const inner: Provider = {
    name: 'test',
    discover: async () => [makeTarget('10.0.0.1', 80), makeTarget('169.254.169.254', 80), makeTarget('localhost', 22), makeTarget('10.0.0.2', 80)],
  };
  const ids = (await new ScreenedProvider(inner).discover({ service: 'web', port: 80, cluster: 'prod' })).map((t) => t.id);
  expect(ids).toEqual(['10.0.0.1:80', '10.0.0.2:80']);
});
