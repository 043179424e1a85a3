/**
 * runtime/unpack.ts: a module the build packed into the bundle comes back with node's built-ins and the
 * bundle's own instances of the runtime modules it shares; the bundle's text carries no AWS SDK code.
 */
import * as fs from 'node:fs';
import { brotliCompressSync } from 'node:zlib';
import { BUNDLE } from '../support/bundle';
import { SHARED_PREFIX, unpack } from '../../runtime/unpack';

const pack = (source: string): string => brotliCompressSync(Buffer.from(source)).toString('base64');

describe('unpack', () => {
  test('runs the packed CommonJS module once and returns its exports', () => {
    const exported = unpack(pack('exports.twice = (n) => 2 * n; module.exports.name = __filename;'), '/opt/x.js#packed', {});
    expect(exported).toMatchObject({ name: '/opt/x.js#packed' });
    expect((exported as { twice(n: number): number }).twice(21)).toBe(42);
  });

  test('the packed module gets the shared instance, not a copy, and node built-ins from node', () => {
    const registry = { counted: 0 };
    const exported = unpack(
      pack(`const m = require('${SHARED_PREFIX}metrics.ts'); m.counted++; module.exports = { m, path: require('node:path').join('a', 'b') };`),
      'packed.js',
      { 'metrics.ts': () => registry },
    ) as { m: unknown; path: string };
    expect(exported.m).toBe(registry);
    expect(registry.counted).toBe(1);
    expect(exported.path).toBe('a/b');
  });

  test('a shared module the bundle does not offer is an error that names it', () => {
    expect(() => unpack(pack(`require('${SHARED_PREFIX}config.ts')`), 'packed.js', {})).toThrow(
      'packed module packed.js asks for karma-shared:config.ts, which the bundle does not share',
    );
  });

  test('errors of the packed code point at the packed file name', () => {
    let stack = '';
    try {
      unpack(pack('\n\nthrow new Error("boom")'), '/opt/karma-proxy.js#discovery', {});
    } catch (e) {
      stack = (e as Error).stack ?? '';
    }
    expect(stack).toContain('boom');
    expect(stack).toContain('/opt/karma-proxy.js#discovery:3');
  });
});

describe('the bundle', () => {
  const text = fs.readFileSync(BUNDLE, 'utf8');

  test('keeps discovery packed: the AWS SDK and ioredis are not in the text every worker parses', () => {
    for (const name of ['DescribeTasksCommand', 'DescribeInstancesCommand', 'AutoScalingClient', 'ioredis']) expect(text).not.toContain(name);
    expect(text).toContain("__filename+\"#discovery\"");
  });
});
