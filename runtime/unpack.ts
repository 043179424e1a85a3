/**
 * Loads a module that the build packed into the bundle as compressed source (scripts/build.mjs).
 *
 * Every process of the bundle parses all of its source, called or not: V8 keeps the source and the
 * pre-parse data of every function. Discovery (the AWS SDK and ioredis) is ~90 % of the bundle but only
 * the primary runs it, so the build keeps it compressed and the primary unpacks it on first use; each
 * worker holds ~0.5 MB of text instead of ~18 MB of parsed code (measured in the build's comment).
 *
 * The packed module requires node's built-ins itself and the runtime modules the bundle already holds
 * (metrics, log, …) through `shared`, so that state such as the metrics registry exists once.
 */
import { brotliDecompressSync } from 'node:zlib';
import { compileFunction } from 'node:vm';

/** How the packed source names a runtime module of the bundle: `karma-shared:runtime/metrics.ts`. */
export const SHARED_PREFIX = 'karma-shared:';

/**
 * Decompresses `packed` (base64 of brotli of a CommonJS module), runs it once and returns its exports.
 * `shared` maps a runtime path (after SHARED_PREFIX) to the bundle's own instance of that module.
 */
export function unpack(packed: string, filename: string, shared: Record<string, () => unknown>): unknown {
  const source = brotliDecompressSync(Buffer.from(packed, 'base64')).toString('utf8');
  const fn = compileFunction(source, ['exports', 'require', 'module', '__filename', '__dirname'], { filename });
  const load = (id: string): unknown => {
    if (!id.startsWith(SHARED_PREFIX)) return require(id);
    const get = shared[id.slice(SHARED_PREFIX.length)];
    if (!get) throw new Error(`packed module ${filename} asks for ${id}, which the bundle does not share`);
    return get();
  };
  const module = { exports: {} as unknown };
  fn.call(module.exports, module.exports, load, module, filename, __dirname);
  return module.exports;
}
