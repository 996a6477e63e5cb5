/**
 * Running one target under Jazzer.js (libFuzzer) in a child process and
 * reading its statistics back. Shared by `npm run fuzz` and the CI test.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import type { FuzzTarget } from './targets';

/** The repository root (this file runs from dist/fuzz/). */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const CORPUS_ROOT = path.join(REPO_ROOT, 'fuzz', 'corpus');
const JAZZER_CLI = path.join(REPO_ROOT, 'node_modules', '@jazzer.js', 'core', 'dist', 'cli.js');
/** Longest input libFuzzer makes: the largest vhost-user message plus room for several. */
const MAX_INPUT_BYTES = 8192;

export interface FuzzRunOptions {
  runs: number;
  /** Where libFuzzer adds the inputs it finds interesting (not the committed corpus). */
  workCorpus: string;
  /** Where a crasher is written: <dir>/crash-<sha1>. */
  artifactDir: string;
  /** Stop after this many seconds even if `runs` is not reached (0: no limit). */
  maxSeconds?: number;
}

export interface FuzzRunResult {
  target: string;
  exitCode: number;
  runs: number;
  seconds: number;
  /** libFuzzer's edge coverage ("cov:") and features ("ft:") at the end. */
  coverage: number;
  features: number;
  crashers: string[];
  /** The tail of the output, for a failure message. */
  tail: string;
}

export function targetCorpus(target: string): string {
  return path.join(CORPUS_ROOT, target);
}

/** Fuzz one target; resolves when libFuzzer exits (after `runs`, a crash or the time limit). */
export function runJazzer(target: FuzzTarget, options: FuzzRunOptions): Promise<FuzzRunResult> {
  fs.mkdirSync(options.workCorpus, { recursive: true });
  fs.mkdirSync(options.artifactDir, { recursive: true });
  const before = new Set(fs.readdirSync(options.artifactDir));
  const args = [
    JAZZER_CLI,
    path.join(REPO_ROOT, 'dist', 'fuzz', 'targets', `${target.name}.js`),
    options.workCorpus,
    targetCorpus(target.name),
    ...(target.async ? [] : ['--sync']),
    '--includes', `${path.sep}dist${path.sep}src${path.sep}`,
    '--timeout', '20000',
    '--',
    `-runs=${options.runs}`,
    `-max_len=${MAX_INPUT_BYTES}`,
    `-artifact_prefix=${options.artifactDir}${path.sep}`,
    '-print_final_stats=1',
    ...(options.maxSeconds !== undefined && options.maxSeconds > 0 ? [`-max_total_time=${options.maxSeconds}`] : []),
  ];
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const keep = (chunk: Buffer): void => {
      output += chunk.toString();
      // Only the last part matters (stats and a crash report); keep memory bounded.
      if (output.length > 200_000) output = output.slice(-100_000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('error', reject);
    child.on('close', (code) => {
      const crashers = fs
        .readdirSync(options.artifactDir)
        .filter((f) => !before.has(f) && /^(crash|timeout|oom|leak)-/.test(f))
        .map((f) => path.join(options.artifactDir, f));
      const statsRuns = /stat::number_of_executed_units:\s*(\d+)/.exec(output);
      const doneRuns = /Done (\d+) runs in (\d+) second/.exec(output);
      const lastCov = [...output.matchAll(/cov: (\d+) ft: (\d+)/g)].pop();
      resolve({
        target: target.name,
        exitCode: code ?? 1,
        runs: Number(statsRuns?.[1] ?? doneRuns?.[1] ?? 0),
        seconds: (Date.now() - started) / 1000,
        coverage: Number(lastCov?.[1] ?? 0),
        features: Number(lastCov?.[2] ?? 0),
        crashers,
        tail: output.slice(-4000),
      });
    });
  });
}

/** Make the Jazzer.js prebuild loadable here (see scripts/jazzer-compat.sh); throws with its reason. */
export function ensureJazzerLoads(): void {
  const result = spawnSync(path.join(REPO_ROOT, 'scripts', 'jazzer-compat.sh'), { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`scripts/jazzer-compat.sh failed: ${result.stderr || result.stdout}`);
}
