/**
 * The peers' binaries: passt and pasta come from FERRY_BENCH_PASST and
 * FERRY_BENCH_PASTA when set, else from PATH; each with the version it
 * prints, or the reason it cannot be used (shown in the tables as "not
 * measured: why"). The bench never builds or ships a peer.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

/** A peer binary found (path and version) or not (why). */
export interface PeerBinary {
  name: string;
  path: string | null;
  version: string;
  /** Why it cannot be measured; null when it can. */
  missing: string | null;
}

/** The first directory of PATH holding an executable `name`, or null. */
export function findOnPath(name: string, searchPath = process.env.PATH ?? ''): string | null {
  for (const dir of searchPath.split(':')) {
    if (dir === '') continue;
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      if (fs.statSync(candidate).isFile()) return candidate;
    } catch {
      // Not here.
    }
  }
  return null;
}

/** The version line passt and pasta print for --version ("passt 2026_07_16.090d739"), or null. */
export function parsePasstVersion(text: string): string | null {
  const line = text.split('\n').find((l) => /^(passt|pasta)\s+\S+/.test(l.trim()));
  return line ? line.trim() : null;
}

const cache = new Map<string, PeerBinary>();

/** passt or pasta: from the environment variable `envName`, else PATH; its version from --version. */
export function peerBinary(name: 'passt' | 'pasta', envName: string): PeerBinary {
  const key = `${name}:${process.env[envName] ?? ''}`;
  const known = cache.get(key);
  if (known) return known;
  const fromEnv = process.env[envName];
  let found: PeerBinary;
  const where = fromEnv ? `${envName}=${fromEnv}` : `PATH (set ${envName} to use another build)`;
  const file = fromEnv ? fromEnv : findOnPath(name);
  if (!file || !fs.existsSync(file)) {
    found = { name, path: null, version: 'not found', missing: `${name} not found in ${where}` };
  } else {
    const r = spawnSync(file, ['--version'], { encoding: 'utf8', timeout: 5000 });
    const version = parsePasstVersion(`${r.stdout ?? ''}\n${r.stderr ?? ''}`);
    found = version
      ? { name, path: file, version, missing: null }
      : { name, path: file, version: 'unknown', missing: `${file} --version printed no version (${r.error?.message ?? `exit ${r.status}`})` };
  }
  cache.set(key, found);
  return found;
}

/** passt, from FERRY_BENCH_PASST or PATH. */
export function passtBinary(): PeerBinary {
  return peerBinary('passt', 'FERRY_BENCH_PASST');
}

/** pasta, from FERRY_BENCH_PASTA or PATH. */
export function pastaBinary(): PeerBinary {
  return peerBinary('pasta', 'FERRY_BENCH_PASTA');
}

/** True when the passt at `file` lists --vhost-user in its --help (Debian 12's 2023 build has none). */
export function passtHasVhostUser(file: string): boolean {
  const r = spawnSync(file, ['--help'], { encoding: 'utf8', timeout: 5000 });
  return /--vhost-user/.test(`${r.stdout ?? ''}${r.stderr ?? ''}`);
}
