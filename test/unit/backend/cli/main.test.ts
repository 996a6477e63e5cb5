import { expect } from 'chai';
import { spawnSync } from 'child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import { type CliIo, packageVersion, run, type RunDaemon, usageText } from '../../../../src/backend/main';
import { type DaemonOptions } from '../../../../src/backend/cli/options';
import { optionHelp } from '../../../../src/backend/cli/options';
import { setLogSink } from '../../../../src/sys/log';
import { REPO_ROOT } from '../../../support/paths';

interface Captured {
  io: Partial<CliIo>;
  out: () => string;
  err: () => string;
  daemonCalls: DaemonOptions[];
  loggingCalls: number;
}

/** An io that records output and uses a fake daemon returning `code` (or throwing). */
function capture(daemon: RunDaemon = async () => 0): Captured {
  let out = '';
  let err = '';
  const captured: Captured = {
    out: () => out,
    err: () => err,
    daemonCalls: [],
    loggingCalls: 0,
    io: {},
  };
  captured.io = {
    stdout: (text) => (out += text),
    stderr: (text) => (err += text),
    loadDaemon: () => async (options) => {
      captured.daemonCalls.push(options);
      return daemon(options);
    },
    setupLogging: () => {
      captured.loggingCalls++;
    },
  };
  return captured;
}

describe('cli', () => {
  it('--help prints every option and exits 0 without starting the daemon', async () => {
    const c = capture();
    expect(await run(['--help'], c.io)).to.equal(0);
    expect(c.out()).to.match(/^Usage: ferry \[OPTION\]/);
    for (const [names] of optionHelp()) expect(c.out()).to.include(names);
    expect(c.daemonCalls).to.have.length(0);
    expect(c.err()).to.equal('');
  });

  it('--version prints the package version', async () => {
    const c = capture();
    expect(await run(['--version'], c.io)).to.equal(0);
    expect(c.out()).to.equal(`ferry ${packageVersion()}\n`);
    expect(packageVersion()).to.match(/^\d+\.\d+\.\d+/);
  });

  it('--print-capabilities prints {"type": "net"} as JSON', async () => {
    const c = capture();
    expect(await run(['--socket', '/tmp/x.sock', '--print-capabilities'], c.io)).to.equal(0);
    expect(JSON.parse(c.out())).to.deep.equal({ type: 'net' });
    expect(c.daemonCalls).to.have.length(0);
  });

  it('a bad option is one line on stderr and exit code 1', async () => {
    const c = capture();
    expect(await run(['--mtu', '70000'], c.io)).to.equal(1);
    expect(c.err()).to.equal('ferry: --mtu: 70000 is out of range (68-65520)\n');
    expect(c.out()).to.equal('');
    expect(c.daemonCalls).to.have.length(0);
  });

  it('runs the daemon with the parsed options and returns its exit code', async () => {
    const c = capture(async () => 3);
    expect(await run(['--vhost-user', '--socket', '/tmp/x.sock', '-t', '22', '-u', '53', '--mtu', '1500'], c.io)).to.equal(3);
    expect(c.loggingCalls).to.equal(1);
    expect(c.daemonCalls).to.have.length(1);
    expect(c.daemonCalls[0].socketPath).to.equal('/tmp/x.sock');
    expect(c.daemonCalls[0].network.mtu).to.equal(1500);
  });

  it('a daemon that throws means exit code 1 and one logged line; odd exit codes are clamped', async () => {
    const logged: string[] = [];
    setLogSink((level, message) => logged.push(`${level}: ${message}`));
    try {
      expect(await run([], capture(async () => Promise.reject(new Error('boom\nsecond line'))).io)).to.equal(1);
    } finally {
      setLogSink((level, message) => {
        if (level !== 'debug') process.stderr.write(`${level}: ${message}\n`);
      });
    }
    expect(logged[0]).to.equal('error: fatal: boom');
    expect(await run([], capture(async () => 300).io)).to.equal(1);
    expect(await run([], capture(async () => -1).io)).to.equal(1);
  });

  it('a daemon that cannot be loaded is one line and exit code 1', async () => {
    const c = capture();
    c.io.loadDaemon = () => {
      throw new Error('Cannot find module ./daemon\nRequire stack: ...');
    };
    expect(await run([], c.io)).to.equal(1);
    expect(c.err()).to.equal('ferry: cannot load the daemon: Cannot find module ./daemon\n');
  });

  it('usage lines stay readable', () => {
    for (const line of usageText().split('\n')) expect(line.length).to.be.lessThan(200);
  });

  it('packageVersion walks up to the ferry package.json', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-cli-'));
    try {
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'ferry', version: '9.8.7' }));
      expect(packageVersion(join(dir, 'a', 'b'))).to.equal('9.8.7');
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'other', version: '1.0.0' }));
      expect(packageVersion(join(dir, 'a'))).to.not.equal('1.0.0');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('as passt or pasta: the background once ready', () => {
    const runAs = async (invokedAs: string, argv: string[]): Promise<{ code: number; background: DaemonOptions[]; daemon: number; err: string }> => {
      const c = capture();
      const background: DaemonOptions[] = [];
      let subcommandRuns = 0;
      const code = await run(argv, {
        ...c.io,
        invokedAs,
        goBackground: async (options) => {
          background.push(options);
          return 0;
        },
        attachToParent: () => undefined,
        loadSubcommand: () => async () => {
          subcommandRuns++;
          return 0;
        },
      });
      return { code, background, daemon: c.daemonCalls.length + subcommandRuns, err: c.err() };
    };

    it('passt hands over to the background process instead of running in this one', async () => {
      const r = await runAs('passt', ['stream', '--socket', '/tmp/x.sock', '--one-off']);
      expect(r.code).to.equal(0);
      expect(r.background).to.have.length(1);
      expect(r.background[0].socketPath).to.equal('/tmp/x.sock');
      expect(r.daemon).to.equal(0);
    });

    it('-f keeps passt in the foreground; ferry under its own name stays there too', async () => {
      const foreground = await runAs('passt', ['stream', '-f', '--socket', '/tmp/x.sock']);
      expect(foreground.background).to.have.length(0);
      expect(foreground.daemon).to.equal(1);
      const ferry = await runAs('ferry', ['--socket', '/tmp/x.sock']);
      expect(ferry.background).to.have.length(0);
      expect(ferry.daemon).to.equal(1);
    });

    it('pasta attached to a namespace goes to the background; pasta running a command does not', async () => {
      const attached = await runAs('pasta', ['pasta', '--config-net', '--netns', '/run/netns/x']);
      expect(attached.background).to.have.length(1);
      const command = await runAs('pasta', ['pasta', '--config-net', '--', 'true']);
      expect(command.background).to.have.length(0);
      expect(command.daemon).to.equal(1);
      const joinedWithCommand = await runAs('pasta', ['pasta', '--netns', '/run/netns/x', '--', 'true']);
      expect(joinedWithCommand.background).to.have.length(0);
    });

    it('option errors are still reported by the process the caller started', async () => {
      const r = await runAs('passt', ['stream', '--mtu', '99999']);
      expect(r.code).to.equal(1);
      expect(r.background).to.have.length(0);
      expect(r.err).to.contain('--mtu');
    });
  });

  it('-H/--hostname and --fqdn (libvirt passes them) reach the options; a bad name is one line and exit 1', async () => {
    const c = capture();
    expect(await run(['-H', 'vm1', '--fqdn', 'vm1.example.org.'], c.io)).to.equal(0);
    expect(c.daemonCalls[0].network.hostname).to.equal('vm1');
    expect(c.daemonCalls[0].network.fqdn).to.equal('vm1.example.org');
    const bad = capture();
    expect(await run(['--hostname', 'a_b'], bad.io)).to.equal(1);
    expect(bad.err()).to.equal("ferry: --hostname: 'a_b' is not a host name (letters, digits, hyphens; at most 63 characters)\n");
  });

  describe('bin/ferry.js', () => {
    const bin = join(REPO_ROOT, 'bin', 'ferry.js');
    const ferry = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 10000 });

    it('--print-capabilities through the real entry point', () => {
      const result = ferry('--print-capabilities');
      expect(result.status).to.equal(0);
      expect(JSON.parse(result.stdout)).to.deep.equal({ type: 'net' });
    });

    it('a bad value exits 1 with one line', () => {
      const result = ferry('--queues', '99');
      expect(result.status).to.equal(1);
      expect(result.stderr).to.equal('ferry: --queues: 99 is out of range (1-16)\n');
    });

    it('--help and --version exit 0', () => {
      expect(ferry('--help').status).to.equal(0);
      const version = ferry('--version');
      expect(version.status).to.equal(0);
      expect(version.stdout).to.match(/^ferry \d+\.\d+\.\d+/);
    });
  });
});
