/**
 * One real-guest boot on a fresh ferry, for e2e suites that read everything
 * from a single boot: creates the test network, starts ferry with the given
 * options, boots the guest on its vhost-user socket with a /test.sh, waits
 * for the guest's "done N", and tears everything down in cleanup().
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createTestNetwork, destroyTestNetwork, type TestNetwork } from '../netns';
import { bootGuest, type Guest, requireGuestPrerequisites } from '../guest';
import { type FerryProcess, FERRY_CLI_MODULE, startFerry } from './ferry-process';

/** What a boot should run. */
export interface GuestOnFerryOptions {
  /** ferry's options after --socket-path. */
  ferryArgs: string[];
  /** The guest's /test.sh. */
  testScript: string;
  /** ferry.* kernel parameters. */
  append: string[];
  /** Bound on the wait for "done N" (default 80 s). */
  timeoutMs?: number;
}

/** The outcome of one boot; every field is filled in even when the boot failed. */
export class GuestOnFerry {
  net: TestNetwork | null = null;
  ferry: FerryProcess | null = null;
  guest: Guest | null = null;
  workDir = '';
  /** /test.sh's exit code from "done N", or null when the guest never got there. */
  exitCode: number | null = null;
  bootError: Error | null = null;

  /** Serial tail and ferry's log tail, for failure messages. */
  diagnostics(): string {
    return `${this.guest?.vm.diagnostics(60) ?? ''}\n--- ferry log ---\n${this.ferry?.log().split('\n').slice(-30).join('\n') ?? ''}`;
  }

  /** The text after the first "FERRY-GUEST: <name> " marker, or null. */
  marker(name: string): string | null {
    const m = new RegExp(`FERRY-GUEST: ${name} (.*?)\\r?\\n`).exec(this.guest?.vm.serialLines ?? '');
    return m ? m[1] : null;
  }

  /** Kills what is still running and removes the namespaces and scratch files. Never rejects. */
  async cleanup(): Promise<void> {
    if (this.guest) await this.guest.destroy();
    if (this.ferry) await this.ferry.stop();
    if (this.net) await destroyTestNetwork(this.net);
    if (this.workDir) fs.rmSync(this.workDir, { recursive: true, force: true });
    this.guest = null;
    this.ferry = null;
    this.net = null;
  }
}

/**
 * Runs one boot (from a mocha before hook: skips, or fails under CI, when
 * the machine lacks QEMU, namespaces or the guest image). Resolves once the
 * guest is done or the wait failed; the caller must call cleanup().
 */
export async function bootGuestOnFerry(ctx: Mocha.Context, run: GuestOnFerry, opts: GuestOnFerryOptions): Promise<void> {
  requireGuestPrerequisites(ctx, fs.existsSync(FERRY_CLI_MODULE) ? [] : [`the built daemon (${FERRY_CLI_MODULE})`]);
  run.net = await createTestNetwork();
  run.workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-e2e-'));
  const socketPath = path.join(run.workDir, 'ferry.sock');
  run.ferry = await startFerry(run.net.ns, socketPath, opts.ferryArgs);
  run.guest = bootGuest({
    net: run.net,
    nic: { kind: 'vhost-user', socketPath },
    testScript: opts.testScript,
    append: opts.append,
    timeoutMs: (opts.timeoutMs ?? 80000) + 10000,
  });
  try {
    run.exitCode = await run.guest.waitDone(opts.timeoutMs ?? 80000);
  } catch (err) {
    run.bootError = err as Error;
  }
}
