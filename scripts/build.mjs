// Bundles the runtime into one file the instance runs: every dependency inside, nothing to npm-install there.
import { build } from 'esbuild';

await build({
  entryPoints: ['runtime/main.ts'],
  outfile: 'dist/karma-proxy.js',
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  minify: false,
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
  banner: { js: '#!/usr/bin/env node' },
});
