// Bundles src/ into one dependency-free ES module, dist/tessera.js, and
// copies it into the demo (clients/demo/tessera.js), which is served as a
// static folder and must hold everything it loads. The declarations come
// from tsc (npm run build runs it first, into dist/types/).
//
// Deterministic: the same sources and the esbuild of package-lock.json give
// the same bytes (scripts/js-tests.sh checks the committed files against a
// rebuild).
import { copyFileSync } from 'node:fs';
import { build } from 'esbuild';

const outfile = 'dist/tessera.js';
await build({
  entryPoints: ['src/index.ts'],
  outfile,
  bundle: true,
  format: 'esm',
  platform: 'neutral',
  target: 'es2022',
  minify: true,
  legalComments: 'none',
  banner: { js: '// tessera client (clients/js): built from src/ by `npm run build`; do not edit.' },
  logLevel: 'warning',
});
copyFileSync(outfile, '../demo/tessera.js');
