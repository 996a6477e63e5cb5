import { expect } from 'chai';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import {
  abstractUnixAddress,
  backgroundStdio,
  READY_FD_ENV,
  runInBackground,
  saysReady,
  wantsBackground,
} from '../../../../src/backend/cli/background';

/** A waiting child must never outlive the test: bounded by the timeout and ended by PID. */
function endPid(pidFile: string): void {
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  try {
    if (pid > 0) process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

describe('cli/background', () => {
  const env = {};
  it('passt and pasta (attached) go to the background; -f, a spawned command, ferry and systemd do not', () => {
    expect(wantsBackground({ invokedAs: 'passt', foreground: false, spawnsCommand: false, env })).to.equal(true);
    expect(wantsBackground({ invokedAs: 'pasta', foreground: false, spawnsCommand: false, env })).to.equal(true);
    expect(wantsBackground({ invokedAs: 'passt', foreground: true, spawnsCommand: false, env })).to.equal(false);
    expect(wantsBackground({ invokedAs: 'pasta', foreground: false, spawnsCommand: true, env })).to.equal(false);
    expect(wantsBackground({ invokedAs: 'ferry', foreground: false, spawnsCommand: false, env })).to.equal(false);
    expect(wantsBackground({ invokedAs: 'ferry.js', foreground: false, spawnsCommand: false, env })).to.equal(false);
    expect(wantsBackground({ invokedAs: 'passt', foreground: false, spawnsCommand: false, env: { NOTIFY_SOCKET: '/run/x' } })).to.equal(false);
    expect(wantsBackground({ invokedAs: 'passt', foreground: false, spawnsCommand: false, env: { LISTEN_FDS: '1' } })).to.equal(false);
    expect(wantsBackground({ invokedAs: 'passt', foreground: false, spawnsCommand: false, env: { [READY_FD_ENV]: '3' } })).to.equal(false);
  });

  it('the readiness pipe avoids an inherited --fd, which keeps its number', () => {
    expect(backgroundStdio([])).to.deep.equal({ stdio: ['ignore', 'ignore', 'pipe', 'pipe'], readyFd: 3 });
    const withFd3 = backgroundStdio([3]);
    expect(withFd3.readyFd).to.equal(4);
    expect(withFd3.stdio).to.deep.equal(['ignore', 'ignore', 'pipe', 3, 'pipe']);
    const withFd7 = backgroundStdio([7]);
    expect(withFd7.readyFd).to.equal(3);
    expect((withFd7.stdio as unknown[])[7]).to.equal(7);
  });

  it('READY=1 is recognised among sd_notify assignments only as a whole line', () => {
    expect(saysReady('READY=1')).to.equal(true);
    expect(saysReady('READY=1\nSTATUS=Listening on /tmp/x')).to.equal(true);
    expect(saysReady('STATUS=x\nREADY=1\n')).to.equal(true);
    expect(saysReady('STATUS=READY=1')).to.equal(false);
    expect(saysReady('READY=10')).to.equal(false);
    expect(saysReady('')).to.equal(false);
  });

  it('abstract addresses are sun_family then a NUL then the name', () => {
    const address = abstractUnixAddress('ab', 1);
    expect(Array.from(address)).to.deep.equal([1, 0, 0, 0x61, 0x62]);
  });

  describe('runInBackground with a real child', () => {
    let dir = '';
    beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'ferry-bg-'))));
    afterEach(() => {
      endPid(join(dir, 'pid'));
      rmSync(dir, { recursive: true, force: true });
    });

    const launch = (source: string, timeoutMs = 10000): { result: Promise<number>; err: () => string } => {
      let err = '';
      const result = runInBackground({
        command: process.execPath,
        args: ['-e', source, join(dir, 'pid')],
        passFds: [],
        env: process.env,
        stderr: (text) => (err += text),
        timeoutMs,
      });
      return { result, err: () => err };
    };

    it('resolves 0 once the child says it is ready; the child carries on in its own session', async () => {
      const { result, err } = launch(`
        const fs = require('fs');
        fs.writeFileSync(process.argv[1], String(process.pid));
        process.stderr.write('setting up\\n');
        setTimeout(() => { fs.writeSync(Number(process.env.${READY_FD_ENV}), 'R'); }, 100);
        process.stderr.on('error', () => {});
        setTimeout(() => process.exit(0), 20000);
      `);
      expect(await result).to.equal(0);
      expect(err()).to.equal('setting up\n');
      const pid = Number(readFileSync(join(dir, 'pid'), 'utf8'));
      // Still running after we stopped waiting, in a session of its own (setsid).
      process.kill(pid, 0);
      const sid = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[3];
      expect(Number(sid)).to.equal(pid);
    });

    it('a child that fails before it is ready: its stderr is relayed and its status returned', async () => {
      const { result, err } = launch(`process.stderr.write('ferry: fatal: bind: EADDRINUSE\\n'); process.exit(3);`);
      expect(await result).to.equal(3);
      expect(err()).to.contain('bind: EADDRINUSE');
    });

    it('a child that exits 0 without ever being ready still means failure (1)', async () => {
      const { result } = launch(`process.exit(0);`);
      expect(await result).to.equal(1);
    });

    it('a child that never gets ready is stopped after the bound (1)', async () => {
      const { result, err } = launch(`require('fs').writeFileSync(process.argv[1], String(process.pid)); setTimeout(() => {}, 20000);`, 1500);
      expect(await result).to.equal(1);
      expect(err()).to.contain('not ready within 1500 ms');
      const pid = Number(readFileSync(join(dir, 'pid'), 'utf8'));
      const deadline = Date.now() + 5000;
      let alive = true;
      while (alive && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        try {
          process.kill(pid, 0);
          alive = !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
        } catch {
          alive = false;
        }
      }
      expect(alive).to.equal(false);
    });
  });
});
