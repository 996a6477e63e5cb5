#!/usr/bin/env node
// Sizes a reader can hold, checked by `npm test` (`npm run check:sizes`):
// no TypeScript source file over MAX_LINES lines, and no folder with more
// than MAX_FILES source files directly in it (a folder that grows past it
// wants subfolders by concern). Counts the files git tracks or would track.
'use strict';
const { execFileSync } = require('child_process');
const path = require('path');

const MAX_LINES = 800;
// Files still over the limit, each capped at its size when the check came in:
// they may shrink (and leave this list), never grow.
const OVERSIZE_CAP = new Map([
  ['test/unit/stack/tcp/tcp.test.ts', 918],
]);
const MAX_FILES = 12;
const ROOTS = ['src', 'test', 'bench'];
const SOURCE = /\.(ts|c|cc|h)$/;

const root = path.resolve(__dirname, '..');
const listed = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '--', ...ROOTS], { cwd: root, encoding: 'utf8' })
  .split('\n')
  .filter((f) => SOURCE.test(f));

const fs = require('fs');
const problems = [];
const perFolder = new Map();
for (const file of listed) {
  const full = path.join(root, file);
  if (!fs.existsSync(full)) continue;
  const lines = fs.readFileSync(full, 'utf8').split('\n').length - 1;
  const cap = OVERSIZE_CAP.get(file) ?? MAX_LINES;
  if (lines > cap) problems.push(`${file}: ${lines} lines (at most ${cap})`);
  const folder = path.dirname(file);
  perFolder.set(folder, (perFolder.get(folder) ?? 0) + 1);
}
for (const [folder, count] of [...perFolder].sort()) {
  if (count > MAX_FILES) problems.push(`${folder}/: ${count} source files directly in it (at most ${MAX_FILES})`);
}
if (problems.length > 0) {
  for (const p of problems) console.error(`check-sizes: ${p}`);
  process.exit(1);
}
console.log(`check-sizes: ${listed.length} source files, none over ${MAX_LINES} lines (${OVERSIZE_CAP.size} capped at their size), no folder over ${MAX_FILES} files`);
