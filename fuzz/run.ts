/**
 * `npm run fuzz`: fuzz every target (or those named) for a number of inputs
 * and print, per target, the inputs executed, the time, the coverage reached
 * and the crashes found. Exits non-zero on a crash; the crasher is written
 * to fuzz/corpus/<target>/ (so it is replayed by the CI test once committed).
 *
 *   npm run fuzz                          10 million inputs per target
 *   npm run fuzz -- --runs 100000         or FUZZ_RUNS=100000
 *   npm run fuzz -- --max-seconds 600     stop each target after 10 minutes (or FUZZ_MAX_SECONDS)
 *   npm run fuzz -- split-ring stack-frame
 *   npm run fuzz -- --write-seeds         regenerate fuzz/corpus/<target>/seed-*
 *
 * The inputs libFuzzer finds interesting go to .cache/fuzz/<target>/ (kept
 * between runs, not committed).
 */
import * as fs from 'fs';
import * as path from 'path';
import { FUZZ_TARGETS } from './targets';
import { REPO_ROOT, ensureJazzerLoads, runJazzer, targetCorpus, type FuzzRunResult } from './jazzer';
import { seedInputs } from './seeds';

/** A line on stdout (progress and figures) / stderr (errors). */
const say = (line: string): void => void process.stdout.write(`${line}\n`);
const complain = (line: string): void => void process.stderr.write(`${line}\n`);

const DEFAULT_RUNS = 10_000_000;

function writeSeeds(): void {
  for (const [target, seeds] of Object.entries(seedInputs())) {
    const dir = targetCorpus(target);
    fs.mkdirSync(dir, { recursive: true });
    for (const [name, bytes] of Object.entries(seeds)) fs.writeFileSync(path.join(dir, `seed-${name}`), bytes);
    say(`fuzz: ${Object.keys(seeds).length} seeds in ${path.relative(REPO_ROOT, dir)}`);
  }
}

function positiveNumber(text: string | undefined, what: string): number | undefined {
  if (text === undefined || text === '') return undefined;
  const value = Number(text);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${what} must be a positive integer, not '${text}'`);
  return value;
}

function formatRow(r: FuzzRunResult): string {
  const status = r.crashers.length > 0 ? `CRASH ${r.crashers.map((c) => path.relative(REPO_ROOT, c)).join(' ')}` : r.exitCode === 0 ? 'ok' : `exit ${r.exitCode}`;
  const rate = r.seconds > 0 ? Math.round(r.runs / r.seconds) : 0;
  return `${r.target.padEnd(20)} ${String(r.runs).padStart(10)} inputs ${r.seconds.toFixed(0).padStart(6)} s ${String(rate).padStart(7)}/s  cov ${String(r.coverage).padStart(5)} ft ${String(r.features).padStart(6)}  ${status}`;
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  let runs = positiveNumber(process.env.FUZZ_RUNS, 'FUZZ_RUNS') ?? DEFAULT_RUNS;
  let maxSeconds = positiveNumber(process.env.FUZZ_MAX_SECONDS, 'FUZZ_MAX_SECONDS') ?? 0;
  const names: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--write-seeds') {
      writeSeeds();
      return 0;
    } else if (args[i] === '--runs') {
      runs = positiveNumber(args[++i], '--runs') ?? runs;
    } else if (args[i] === '--max-seconds') {
      maxSeconds = positiveNumber(args[++i], '--max-seconds') ?? maxSeconds;
    } else {
      names.push(args[i]);
    }
  }
  const unknown = names.filter((n) => !FUZZ_TARGETS.some((t) => t.name === n));
  if (unknown.length > 0) throw new Error(`unknown target(s) ${unknown.join(', ')}; targets: ${FUZZ_TARGETS.map((t) => t.name).join(', ')}`);
  const targets = names.length > 0 ? FUZZ_TARGETS.filter((t) => names.includes(t.name)) : FUZZ_TARGETS;
  ensureJazzerLoads();
  const results: FuzzRunResult[] = [];
  for (const target of targets) {
    say(`fuzz: ${target.name}: up to ${runs} inputs${maxSeconds > 0 ? ` or ${maxSeconds} s` : ''}`);
    const result = await runJazzer(target, {
      runs,
      maxSeconds,
      workCorpus: path.join(REPO_ROOT, '.cache', 'fuzz', target.name),
      artifactDir: targetCorpus(target.name),
    });
    say(formatRow(result));
    if (result.exitCode !== 0) say(result.tail);
    results.push(result);
  }
  say('\nfuzz summary:');
  for (const r of results) say(formatRow(r));
  return results.every((r) => r.exitCode === 0 && r.crashers.length === 0) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    complain(`fuzz: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(2);
  },
);
