// What is shipped: one self-contained ES module, small, the same in the demo.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';

const dist = new URL('../../dist/tessera.js', import.meta.url);
const demo = new URL('../../../demo/tessera.js', import.meta.url);

test('the built module stays under 8 KiB gzipped', () => {
  const size = gzipSync(readFileSync(dist), { level: 9 }).length;
  console.log(`dist/tessera.js: ${readFileSync(dist).length} bytes, ${size} gzipped`);
  assert.ok(size < 8 * 1024, `${size} bytes gzipped`);
});

test('it imports nothing: no dependencies, no Node built-ins', () => {
  const code = readFileSync(dist, 'utf8');
  assert.doesNotMatch(code, /\bimport\s*[\w{*]|\bimport\(|\brequire\(/);
});

test('the demo serves the same bytes', () => {
  assert.ok(readFileSync(dist).equals(readFileSync(demo)), 'clients/demo/tessera.js is dist/tessera.js');
});
