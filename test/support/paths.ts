/**
 * Where the checkout is, found by walking up from this module, so that a test
 * reaches the repository's files the same way however deep its folder is.
 */
import * as fs from 'fs';
import * as path from 'path';

function findRepoRoot(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'scripts'))) return dir;
    dir = path.dirname(dir);
  }
  return process.cwd();
}

/** Repository root (this file runs from dist/test/support/). */
export const REPO_ROOT = findRepoRoot();

/** The compiled tree (dist/) in this checkout. */
export const DIST_ROOT = path.join(REPO_ROOT, 'dist');
