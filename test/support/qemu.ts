/**
 * Runs a QEMU guest for e2e tests, always inside a test network namespace:
 * TCG (no KVM here), one vCPU, 512 MiB of shared memfd memory (vhost-user
 * needs the backend to map guest memory), the serial console on stdio and
 * collected as text, one virtio-net NIC whose backend is chosen per test.
 */
import { type ChildProcess, spawnSync } from 'child_process';
import { spawnIn, stopChild } from './netns';

export const QEMU_BINARY = 'qemu-system-x86_64';

/** The network backend of the guest's one virtio-net NIC. */
export type GuestNic =
  /** vhost-user over a UNIX socket that the backend (ferry) listens on. */
  | {
      kind: 'vhost-user';
      socketPath: string;
      reconnectSeconds?: number;
      /** Queue pairs (QEMU's queues= and mq=on when above 1; give the guest as many vCPUs to use them all). */
      queues?: number;
    }
  /**
   * QEMU's own user-mode network (slirp), restricted (no outside access) and
   * numbered from documentation ranges: for validating the guest image
   * without ferry. It still lives only inside the test namespace.
   */
  | { kind: 'user' }
  /** 4-byte length-prefixed frames over a UNIX stream socket (-netdev stream, QEMU >= 7.2). */
  | { kind: 'stream'; socketPath: string; server: boolean }
  /** No NIC at all. */
  | { kind: 'none' };

/** What to run. */
export interface QemuOptions {
  /** Namespace QEMU runs in (created by the test; see netns.ts). */
  netns: string;
  kernel: string;
  initrd: string;
  /** Extra kernel command line words (after the harness's own). */
  append?: string[];
  nic: GuestNic;
  /** Guest MAC (default 52:54:00:12:34:56). */
  mac?: string;
  /** Guest memory in MiB (default 512); the memfd backend has the same size. */
  memoryMb?: number;
  /** Hard bound on QEMU's lifetime; it is killed after this (default 90 s). */
  timeoutMs?: number;
  /** Extra QEMU arguments, appended last. */
  extraArgs?: string[];
  /** vCPUs (default 1: these machines have 2 cores, shared). */
  cpus?: number;
}

export const DEFAULT_GUEST_MAC = '52:54:00:12:34:56';

/** How QEMU ended. */
export interface QemuExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True if the harness killed it at the overall timeout. */
  timedOut: boolean;
}

/** True if the QEMU binary is installed and runs. */
export function qemuAvailable(): boolean {
  return spawnSync(QEMU_BINARY, ['--version'], { stdio: 'ignore' }).status === 0;
}

/** QEMU -netdev/-device arguments for a NIC choice. */
export function nicArgs(nic: GuestNic, mac: string): string[] {
  // vectors=0: QEMU 7.2 under TCG crashes setting up MSI-X notifiers for a
  // vhost-user virtio-net-pci; legacy INTx interrupts work. romfile=: no PXE
  // option ROM, the guest boots from -kernel.
  const device = ['-device', `virtio-net-pci,netdev=net0,mac=${mac},romfile=,vectors=0`];
  switch (nic.kind) {
    case 'vhost-user': {
      const reconnect = nic.reconnectSeconds !== undefined ? `,reconnect=${nic.reconnectSeconds}` : '';
      const queues = nic.queues ?? 1;
      return [
        '-chardev', `socket,id=chr0,path=${nic.socketPath}${reconnect}`,
        '-netdev', `vhost-user,id=net0,chardev=chr0${queues > 1 ? `,queues=${queues}` : ''}`,
        ...(queues > 1 ? [device[0], `${device[1]},mq=on`] : device),
      ];
    }
    case 'user':
      return [
        '-netdev',
        'user,id=net0,restrict=on,net=203.0.113.0/24,host=203.0.113.2,dns=203.0.113.3,' +
          'dhcpstart=203.0.113.15,ipv6-prefix=2001:db8:1::,ipv6-prefixlen=64,ipv6-host=2001:db8:1::2,ipv6-dns=2001:db8:1::3',
        ...device,
      ];
    case 'stream':
      return [
        '-netdev', `stream,id=net0,server=${nic.server ? 'on' : 'off'},addr.type=unix,addr.path=${nic.socketPath}`,
        ...device,
      ];
    case 'none':
      return [];
  }
}

/** The full QEMU command line (without the `ip netns exec` prefix). */
export function qemuArgv(opts: QemuOptions): string[] {
  const mem = opts.memoryMb ?? 512;
  const append = ['console=ttyS0', 'quiet', 'panic=-1', ...(opts.append ?? [])].join(' ');
  return [
    QEMU_BINARY,
    '-accel', 'tcg',
    '-smp', String(opts.cpus ?? 1),
    '-m', `${mem}M`,
    // vhost-user maps guest memory in the backend: it must be a shared fd.
    '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`,
    '-numa', 'node,memdev=mem',
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-serial', 'stdio',
    '-monitor', 'none',
    '-no-reboot',
    '-kernel', opts.kernel,
    '-initrd', opts.initrd,
    '-append', append,
    ...nicArgs(opts.nic, opts.mac ?? DEFAULT_GUEST_MAC),
    ...(opts.extraArgs ?? []),
  ];
}

/**
 * A running QEMU: its serial console as text, waits on it, and its exit.
 * Create with startQemu().
 */
export class QemuVm {
  /** Everything the guest wrote on its serial console so far. */
  serial = '';
  /** QEMU's own stderr (errors about the command line, the backend, ...). */
  stderr = '';
  /** Resolves when QEMU has exited (never rejects). */
  readonly exited: Promise<QemuExit>;
  private exitInfo: QemuExit | null = null;
  private timedOut = false;
  private readonly listeners = new Set<() => void>();
  private readonly timer: NodeJS.Timeout;

  constructor(readonly child: ChildProcess, readonly argv: string[], timeoutMs: number) {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      this.serial += d;
      this.notify();
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
    });
    this.timer = setTimeout(() => {
      this.timedOut = true;
      void stopChild(child, 500);
    }, timeoutMs);
    this.exited = new Promise((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null): void => {
        if (this.exitInfo) return;
        clearTimeout(this.timer);
        this.exitInfo = { code, signal, timedOut: this.timedOut };
        this.notify();
        resolve(this.exitInfo);
      };
      child.on('close', done);
      child.on('error', (err) => {
        this.stderr += `spawn error: ${err.message}\n`;
        done(null, null);
      });
    });
  }

  /** PID of the QEMU process (ip netns exec execs it in place). */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Exit status once QEMU has exited, else null. */
  get exit(): QemuExit | null {
    return this.exitInfo;
  }

  private notify(): void {
    for (const l of [...this.listeners]) l();
  }

  /**
   * The serial output up to its last newline: matching only complete lines
   * keeps a marker split across two reads ("done 4" + "2\n") from matching
   * half-way.
   */
  get serialLines(): string {
    return this.serial.slice(0, this.serial.lastIndexOf('\n') + 1);
  }

  /**
   * Resolves with the first match of `re` in the complete lines of serial
   * output (searched from character `from`, default 0). Rejects after `timeoutMs`, or if QEMU exits
   * without a match, with the serial tail and QEMU's stderr in the message.
   */
  waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    const pattern = new RegExp(re.source, re.flags.replace('g', ''));
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const m = pattern.exec(this.serialLines.slice(from));
        if (m) {
          finish();
          resolve(m);
          return true;
        }
        if (this.exitInfo) {
          finish();
          reject(new Error(`QEMU exited (${this.describeExit()}) before ${re} appeared\n${this.diagnostics()}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${re}\n${this.diagnostics()}`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.listeners.delete(listener);
      };
      const listener = (): void => {
        check();
      };
      if (!check()) this.listeners.add(listener);
    });
  }

  /** Kills QEMU (SIGTERM, then SIGKILL) and resolves with how it ended. */
  async kill(): Promise<QemuExit> {
    await stopChild(this.child, 1000);
    return this.exited;
  }

  /** One-line summary of how QEMU exited. */
  describeExit(): string {
    const e = this.exitInfo;
    if (!e) return 'running';
    if (e.timedOut) return 'killed at the overall timeout';
    return e.signal ? `signal ${e.signal}` : `code ${e.code}`;
  }

  /** The last lines of serial output and QEMU's stderr, for failure messages. */
  diagnostics(lines = 40): string {
    const tail = this.serial.split('\n').slice(-lines).join('\n');
    return `--- serial (last ${lines} lines) ---\n${tail}\n--- qemu stderr ---\n${this.stderr.trim()}\n---`;
  }
}

/** Starts QEMU in opts.netns; returns at once (use waitFor on the result). */
export function startQemu(opts: QemuOptions): QemuVm {
  const argv = qemuArgv(opts);
  const child = spawnIn(opts.netns, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
  return new QemuVm(child, argv, opts.timeoutMs ?? 90000);
}
