/**
 * A short reading of V8 .cpuprofile files (node --cpu-prof): the functions
 * with the most self time (samples taken while that function was on top of
 * the stack), so the report says where ferry's CPU went without opening a
 * profiler. The files themselves stay in the --cpu-prof directory.
 */
import * as fs from 'fs';
import * as path from 'path';

/** The parts of a .cpuprofile this reads. */
interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }[];
  samples?: number[];
}

/** One function's share of a profile's samples. */
export interface HotFunction {
  name: string;
  percent: number;
}

/** "name (file:line)" of a call frame, the file relative to the repository (or node's internals as they are). */
function frameName(frame: CpuProfile['nodes'][number]['callFrame'], repoRoot: string): string {
  const name = frame.functionName || '(anonymous)';
  if (!frame.url) return name;
  const file = frame.url.startsWith('file://') ? path.relative(repoRoot, frame.url.slice('file://'.length)) : frame.url;
  return `${name} (${file}:${frame.lineNumber + 1})`;
}

/**
 * The `top` functions by self samples, each with its share of the busy
 * samples (those not "(idle)": a thread waiting in epoll), from a parsed profile.
 */
export function hotFunctions(profile: CpuProfile, repoRoot: string, top = 8): { samples: number; busy: number; hot: HotFunction[] } {
  const byName = new Map<string, number>();
  let total = 0;
  let samples = 0;
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0;
    if (hits === 0) continue;
    samples += hits;
    if (node.callFrame.functionName === '(idle)') continue;
    total += hits;
    const key = frameName(node.callFrame, repoRoot);
    byName.set(key, (byName.get(key) ?? 0) + hits);
  }
  const hot = [...byName]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([name, hits]) => ({ name, percent: total > 0 ? (hits / total) * 100 : 0 }));
  return { samples, busy: total, hot };
}

/** One line per profile file: its busiest functions, e.g. "CPU....cpuprofile: busy in 120 of 1234 samples: f (dist/src/x.js:10) 30.0 %, ...". */
export function summarizeProfiles(dir: string, files: string[], repoRoot: string): string[] {
  const lines: string[] = [];
  for (const file of files) {
    try {
      const profile = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as CpuProfile;
      const { samples, busy, hot } = hotFunctions(profile, repoRoot);
      lines.push(`${file}: busy in ${busy} of ${samples} samples; of those: ${hot.map((h) => `${h.name} ${h.percent.toFixed(1)} %`).join(', ')}`);
    } catch (err) {
      lines.push(`${file}: unreadable (${(err as Error).message})`);
    }
  }
  return lines;
}
