// Bundles the runtime into one file the instance runs: every dependency inside, nothing to npm-install there.
//
// Discovery (runtime/discovery/: the AWS SDK and ioredis, ~2 MB of the ~2.2 MB) goes in packed: built on
// its own, brotli-compressed and embedded as one string that runtime/unpack.ts turns back into a module
// when the primary first imports it. Workers never import it, and a process pays for all the source it
// parses whether it runs it or not (V8 keeps the text and every function's pre-parse data): measured on a
// worker, 66 MB idle and ~104 MiB at 1,000 connections with discovery as plain code, 48 MB and ~84 MiB
// packed. The packed module's imports of runtime modules that the bundle holds anyway (metrics, log,
// types, …) are served by the bundle's own instances, so each exists once (one metrics registry).
import { build } from 'esbuild';
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { brotliCompressSync, constants } from 'node:zlib';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  // The ESM builds of the AWS SDK tree-shake: only the commands we call are kept, which halves what
  // the primary holds in memory (the CJS build of the EC2 client alone costs ~70 MB of RSS).
  mainFields: ['module', 'main'],
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
  // Module names in the bundle are relative to this, not to wherever the build was started from: the
  // same source gives the same bytes (the CDK asset) from any folder.
  absWorkingDir: ROOT,
};

/**
 * http-proxy 1.18 (WebSocket upgrades, in every worker) copies objects with `util._extend`, which Node 22,
 * the instance's runtime, deprecates at run time: the first WebSocket would put a warning, not a JSON line,
 * in the log. Object.assign is the same copy. The build fails if the text it replaces is gone.
 */
const httpProxyWithoutUtilExtend = {
  name: 'http-proxy-without-util-extend',
  setup(b) {
    b.onLoad({ filter: /[\\/]http-proxy[\\/]lib[\\/]http-proxy[\\/](index|common)\.js$/ }, async (a) => {
      const text = await readFile(a.path, 'utf8');
      const patched = text.replace("require('util')._extend", 'Object.assign');
      if (patched === text) throw new Error(`${a.path}: no require('util')._extend to replace (http-proxy changed: review this shim)`);
      return { contents: patched, loader: 'js' };
    });
  },
};

/**
 * `https` as the workers' dependencies require it, loaded on first use. http-proxy (WebSocket upgrades),
 * its follow-redirects and prom-client's Pushgateway each require it when loaded, and with it come tls
 * and OpenSSL's contexts: ~3 MiB of an idle worker's RSS, ~2 MiB of its peak at 1,000 connections (Node
 * 22), for a module only an https target or a Pushgateway would use, and Karma has neither. Each property
 * read goes to the real module, required then; the modules above only read properties of it.
 */
const lazyHttps = {
  name: 'lazy-https',
  setup(b) {
    b.onResolve({ filter: /^(node:)?https$/ }, (a) => (a.importer.includes(`${path.sep}node_modules${path.sep}`) ? { path: 'https', namespace: 'lazy-https' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'lazy-https' }, () => ({
      contents: [
        'let https;',
        "const load = () => (https ??= require('node:https'));",
        'module.exports = new Proxy({}, { get: (_, key) => load()[key], has: (_, key) => key in load() });',
      ].join('\n'),
      loader: 'js',
    }));
  },
};

/** The import that is packed, as runtime/coordinator.ts writes it. */
const PACKED_IMPORT = /^\.\/discovery$/;
const SHARED_PREFIX = 'karma-shared:'; // runtime/unpack.ts

/**
 * Builds `<runtimeDir>/main.ts` into `outfile` (or returns the text with write: false).
 * `nodePaths`/`tsconfig` let a copy of runtime/ elsewhere (the benchmark's prototypes) use this repo's;
 * `minify: false` keeps esbuild's per-module comments, so a CPU profile names every line's module.
 */
export async function bundleRuntime({ runtimeDir = path.join(ROOT, 'runtime'), outfile, write = true, nodePaths, tsconfig, minify = true } = {}) {
  const entry = path.join(runtimeDir, 'main.ts');
  // Minified in whitespace and syntax only: identifiers stay, so stack traces keep their function names,
  // and each process holds ~6 MB less of parsed source (measured: 72 to 66 MB idle for a worker).
  const where = { nodePaths, tsconfig, minifyWhitespace: minify, minifySyntax: minify };
  const isPackedImport = (args) => PACKED_IMPORT.test(args.path) && args.importer === path.join(runtimeDir, 'coordinator.ts');

  // 1. The bundle without discovery: which runtime modules it holds.
  const outer = await build({
    ...common, ...where, entryPoints: [entry], write: false, outfile: 'outer.js', metafile: true,
    plugins: [{ name: 'leave-out-discovery', setup: (b) => b.onResolve({ filter: PACKED_IMPORT }, (a) => (isPackedImport(a) ? { path: a.path, external: true } : undefined)) }],
  });
  const held = new Set(Object.keys(Object.values(outer.metafile.outputs)[0].inputs).map((p) => path.resolve(ROOT, p)));

  // 2. Discovery alone; runtime modules the bundle holds stay outside, named for unpack's `shared`.
  const discoveryEntry = path.join(runtimeDir, 'discovery', 'index.ts');
  const shared = new Map(); // runtime-relative path -> absolute path
  const inner = await build({
    ...common, ...where, entryPoints: [discoveryEntry], write: false, outfile: 'discovery.js',
    // The SDK's `await import('node:http')` as require(): vm-compiled code has no module loader of its own.
    supported: { 'dynamic-import': false },
    plugins: [{
      name: 'share-held-modules',
      setup(b) {
        b.onResolve({ filter: /^\./ }, async (a) => {
          if (a.pluginData?.resolving || !a.importer.startsWith(runtimeDir + path.sep) || a.importer.includes(`${path.sep}node_modules${path.sep}`)) return undefined;
          const r = await b.resolve(a.path, { kind: a.kind, resolveDir: a.resolveDir, importer: a.importer, pluginData: { resolving: true } });
          if (r.errors.length || !held.has(r.path) || !r.path.startsWith(runtimeDir + path.sep)) return undefined;
          const rel = path.relative(runtimeDir, r.path).split(path.sep).join('/');
          shared.set(rel, r.path);
          return { path: SHARED_PREFIX + rel, external: true };
        });
      },
    }],
  });
  const packed = brotliCompressSync(inner.outputFiles[0].contents, { params: { [constants.BROTLI_PARAM_QUALITY]: 9 } }).toString('base64');

  // 3. The bundle, with the packed module in place of discovery.
  const stub = [
    `const { unpack } = require(${JSON.stringify(path.join(runtimeDir, 'unpack.ts'))});`,
    `module.exports = unpack(${JSON.stringify(packed)}, __filename + '#discovery', {`,
    // In a fixed order: esbuild's resolve callbacks fill `shared` in whatever order they finish, and a
    // bundle that differs from build to build is a new asset, new user data, a fleet replaced at deploy.
    ...[...shared].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([rel, abs]) => `  ${JSON.stringify(rel)}: () => require(${JSON.stringify(abs)}),`),
    '});',
  ].join('\n');
  return build({
    ...common, ...where, entryPoints: [entry], write, outfile,
    banner: { js: '#!/usr/bin/env node' },
    plugins: [httpProxyWithoutUtilExtend, lazyHttps, {
      name: 'packed-discovery',
      setup(b) {
        // Named relative to the checkout: the name lands in the bundle, which must not depend on where it was built.
        b.onResolve({ filter: PACKED_IMPORT }, (a) => (isPackedImport(a) ? { path: path.relative(ROOT, discoveryEntry).split(path.sep).join('/'), namespace: 'packed' } : undefined));
        b.onLoad({ filter: /.*/, namespace: 'packed' }, () => ({ contents: stub, loader: 'js', resolveDir: runtimeDir }));
      },
    }],
  });
}

// `node scripts/build.mjs [outfile] [--no-minify]`; dist/karma-proxy.js by default.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const args = process.argv.slice(2);
  const outfile = args.find((a) => !a.startsWith('--')) ?? path.join(ROOT, 'dist', 'karma-proxy.js');
  await bundleRuntime({ outfile, minify: !args.includes('--no-minify') });
}
