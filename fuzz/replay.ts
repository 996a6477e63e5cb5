/**
 * Replays inputs through one target without the fuzzer, in a process of its
 * own (targets set process-wide state such as the log sink):
 *   node dist/fuzz/replay.js <target> <file>...
 * Exits 0 when every input passes; else prints the first failing file and
 * the error, and exits 1.
 */
import * as fs from 'fs';
import * as path from 'path';

/** A line on stdout (progress and figures) / stderr (errors). */
const say = (line: string): void => void process.stdout.write(`${line}\n`);
const complain = (line: string): void => void process.stderr.write(`${line}\n`);

type FuzzFunction = (data: Buffer) => void | Promise<void>;

async function main(): Promise<number> {
  const [target, ...files] = process.argv.slice(2);
  if (target === undefined || !/^[a-z0-9-]+$/.test(target)) throw new Error('usage: replay.js <target> <file>...');
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- the target is named on the command line
  const { fuzz } = require(path.join(__dirname, 'targets', `${target}.js`)) as { fuzz: FuzzFunction };
  for (const file of files) {
    try {
      await fuzz(fs.readFileSync(file));
    } catch (error) {
      complain(`replay: ${target}: ${file} fails: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
      return 1;
    }
  }
  say(`replay: ${target}: ${files.length} inputs pass`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    complain(`replay: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(2);
  },
);
