/**
 * The `ferry pasta` and `ferry stream` command lines: pasta's own options
 * split from the shared ones, the command after `--` or the first
 * non-option, `pasta PID`, and cli.run dispatching to the subcommands.
 */
import { expect } from 'chai';
import { argumentsForProgram, run, type RunSubcommand, type Subcommand } from '../../../../src/backend/main';
import { type DaemonOptions, OptionError, parseOptions } from '../../../../src/backend/cli/options';
import { namespacePath, type PastaOptions, parsePastaCommandLine } from '../../../../src/backend/cli/pasta-options';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { exitStatus, largestSendBuffer, namespaceNetwork, nsenterArgv, unshareArgv } from '../../../../src/backend/modes/pasta/pasta';
import { testConfig } from '../../../support/fakes/stack-fakes';

describe('ferry pasta command line', () => {
  it('pasta options are taken out, shared ones parsed, the command kept verbatim after --', () => {
    const { parsed, pasta } = parsePastaCommandLine(['-I', 'eth9', '--config-net', '-m', '1500', '--netns=/run/netns/x', '--no-splice', '--', 'sh', '-c', 'echo -t 1']);
    expect(parsed.action).to.equal('run');
    expect(parsed.options.network.mtu).to.equal(1500);
    expect(pasta).to.deep.equal({ nsIfname: 'eth9', netns: '/run/netns/x', userns: null, configNet: true, splice: false, netnsOnly: false, netnsQuit: true, command: ['sh', '-c', 'echo -t 1'] });
  });

  it('the first non-option starts the command; values of shared options are not mistaken for it', () => {
    const { parsed, pasta } = parsePastaCommandLine(['--dns', '192.0.2.53', '-m', '9000', '-I', 'tap1', 'ip', '-o', 'addr']);
    expect(pasta.command).to.deep.equal(['ip', '-o', 'addr']);
    expect(pasta.nsIfname).to.equal('tap1');
    expect(parsed.options.network.mtu).to.equal(9000);
    expect(parsed.options.network.dns).to.have.length(1);
  });

  it('-Iname, --ns-ifname=name and bundled short flags before a value option', () => {
    expect(parsePastaCommandLine(['-Ieth3']).pasta.nsIfname).to.equal('eth3');
    expect(parsePastaCommandLine(['--ns-ifname=eth4']).pasta.nsIfname).to.equal('eth4');
    const { parsed, pasta } = parsePastaCommandLine(['-4m', '1400', 'true']);
    expect(parsed.options.network.ipv4Only).to.equal(true);
    expect(parsed.options.network.mtu).to.equal(1400);
    expect(pasta.command).to.deep.equal(['true']);
  });

  it('a lone PID means: join that process\'s namespaces', () => {
    const { pasta } = parsePastaCommandLine(['--config-net', '4242']);
    expect(pasta.netns).to.equal('4242');
    expect(pasta.command).to.deep.equal([]);
    // After --, a number is a command like any other.
    expect(parsePastaCommandLine(['--', '4242']).pasta.command).to.deep.equal(['4242']);
  });

  it('errors are one-line OptionErrors naming the option', () => {
    expect(() => parsePastaCommandLine(['-I'])).to.throw(OptionError, /-I: needs a value/);
    expect(() => parsePastaCommandLine(['-I', 'bad/name'])).to.throw(OptionError, /-I: 'bad\/name' is not a valid interface name/);
    expect(() => parsePastaCommandLine(['--config-net=1'])).to.throw(OptionError, /--config-net: does not take a value/);
    expect(() => parsePastaCommandLine(['--bogus'])).to.throw(OptionError, /unknown option '--bogus'/);
  });

  it('logs warnings only by default; -d and --trace still raise the level', () => {
    expect(parsePastaCommandLine([]).parsed.options.logging.level).to.equal('warn');
    expect(parsePastaCommandLine(['-d']).parsed.options.logging.level).to.equal('debug');
    expect(parsePastaCommandLine(['--trace', 'true']).parsed.options.logging.level).to.equal('debug');
    expect(parsePastaCommandLine(['-q']).parsed.options.logging.level).to.equal('warn');
  });

  it('the instance name defaults to pasta, --name wins', () => {
    expect(parsePastaCommandLine([]).parsed.options.logging.name).to.equal('pasta');
    expect(parsePastaCommandLine(['--name', 'box1']).parsed.options.logging.name).to.equal('box1');
  });

  it('-t auto and -u auto are pasta-only (ports bound in the namespace); auto cannot be mixed with ports', () => {
    const { parsed } = parsePastaCommandLine(['-t', 'auto', '-u', 'auto', '-T', 'auto', '--', 'true']);
    expect(parsed.options.forwards.tcp.map((spec) => spec.mode)).to.deep.equal(['auto']);
    expect(parsed.options.forwards.udp.map((spec) => spec.mode)).to.deep.equal(['auto']);
    expect(() => parseOptions(['-t', 'auto'])).to.throw(OptionError, /auto/);
    expect(() => parsePastaCommandLine(['-t', 'auto', '-t', '80', '--', 'true'])).to.throw(OptionError, /conflicts/);
  });

  it('namespace specs: PID, bare name, path', () => {
    expect(namespacePath('123', 'net')).to.equal('/proc/123/ns/net');
    expect(namespacePath('123', 'user')).to.equal('/proc/123/ns/user');
    expect(namespacePath('box', 'net')).to.equal('/run/netns/box');
    expect(namespacePath('/var/run/x', 'net')).to.equal('/var/run/x');
  });
});

describe('ferry pasta helpers', () => {
  it('unshare runs the command behind the gate, arguments untouched', () => {
    const argv = unshareArgv(['sh', '-c', 'echo "$1"', 'x y']);
    expect(argv.slice(0, 7)).to.deep.equal(['unshare', '--user', '--map-root-user', '--net', '--fork', '--kill-child', '--']);
    expect(argv.slice(-4)).to.deep.equal(['sh', '-c', 'echo "$1"', 'x y']);
    expect(nsenterArgv('/run/netns/a', null, ['true'])).to.deep.equal(['nsenter', '--net=/run/netns/a', '--', 'true']);
    expect(nsenterArgv('/proc/9/ns/net', '/proc/9/ns/user', ['true'])).to.deep.equal(['nsenter', '--net=/proc/9/ns/net', '--user=/proc/9/ns/user', '--', 'true']);
  });

  it('--config-net takes addresses, gateways and MTU from the stack configuration', () => {
    const config = testConfig();
    const network = namespaceNetwork(config, 'eth0');
    expect(network.ifname).to.equal('eth0');
    expect(network.mtu).to.equal(config.mtu);
    expect(network.addresses.map((a) => [...a.address])).to.deep.equal([[...(config.ipv4?.address ?? [])], [...(config.ipv6?.address ?? [])]]);
    expect(network.gateways).to.have.length(2);
    expect(namespaceNetwork({ ...config, ipv6: null }, 'eth0').addresses).to.have.length(1);
  });

  it('largestSendBuffer: tcp_wmem\'s maximum or twice wmem_max, whichever is larger; 4 MiB when neither can be read', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-sysctl-'));
    try {
      fs.writeFileSync(path.join(dir, 'tcp_wmem'), '4096\t16384\t4194304\n');
      fs.writeFileSync(path.join(dir, 'wmem_max'), '212992\n');
      expect(largestSendBuffer(path.join(dir, 'tcp_wmem'), path.join(dir, 'wmem_max'))).to.equal(4194304);
      fs.writeFileSync(path.join(dir, 'wmem_max'), '4194304\n');
      expect(largestSendBuffer(path.join(dir, 'tcp_wmem'), path.join(dir, 'wmem_max'))).to.equal(8388608);
      expect(largestSendBuffer(path.join(dir, 'none'), path.join(dir, 'none'))).to.equal(4 << 20);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('exit status: the code, or 128 + signal number', () => {
    expect(exitStatus(3, null)).to.equal(3);
    expect(exitStatus(null, 'SIGTERM')).to.equal(143);
    expect(exitStatus(null, 'SIGKILL')).to.equal(137);
  });
});

describe('cli dispatch to subcommands', () => {
  function io(calls: Array<[Subcommand, DaemonOptions, PastaOptions | null]>, out: string[]) {
    return {
      stdout: (t: string) => out.push(t),
      stderr: (t: string) => out.push(t),
      setupLogging: () => undefined,
      loadDaemon: () => async () => {
        throw new Error('the vhost-user daemon must not run');
      },
      loadSubcommand: (name: Subcommand): RunSubcommand => async (options, pasta) => {
        calls.push([name, options, pasta]);
        return name === 'pasta' ? 7 : 0;
      },
    };
  }

  it('the program name picks the mode: pasta, passt (stream unless --vhost-user), ferry', () => {
    expect(argumentsForProgram('pasta', ['--config-net'])).to.deep.equal(['pasta', '--config-net']);
    expect(argumentsForProgram('passt', ['--socket', '/tmp/s'])).to.deep.equal(['stream', '--socket', '/tmp/s']);
    expect(argumentsForProgram('passt', ['--vhost-user', '--socket', '/tmp/s'])).to.deep.equal(['--vhost-user', '--socket', '/tmp/s']);
    expect(argumentsForProgram('passt', ['--print-capabilities'])).to.deep.equal(['--print-capabilities']);
    expect(argumentsForProgram('ferry.js', ['-s', '/tmp/s'])).to.deep.equal(['-s', '/tmp/s']);
  });

  it('ferry stream OPTIONS runs the stream frontend with the shared options', async () => {
    const calls: Array<[Subcommand, DaemonOptions, PastaOptions | null]> = [];
    expect(await run(['stream', '--socket', '/tmp/x.sock', '-1'], io(calls, []))).to.equal(0);
    expect(calls).to.have.length(1);
    expect(calls[0][0]).to.equal('stream');
    expect(calls[0][1].socketPath).to.equal('/tmp/x.sock');
    expect(calls[0][1].oneOff).to.equal(true);
    expect(calls[0][2]).to.equal(null);
  });

  it('ferry pasta returns the command\'s status and gets pasta\'s options', async () => {
    const calls: Array<[Subcommand, DaemonOptions, PastaOptions | null]> = [];
    expect(await run(['pasta', '--config-net', '--', 'true'], io(calls, []))).to.equal(7);
    expect(calls[0][0]).to.equal('pasta');
    expect(calls[0][2]?.configNet).to.equal(true);
    expect(calls[0][2]?.command).to.deep.equal(['true']);
  });

  it('--help of a subcommand prints its own usage; bad options exit 1 with one line', async () => {
    const out: string[] = [];
    const calls: Array<[Subcommand, DaemonOptions, PastaOptions | null]> = [];
    expect(await run(['pasta', '--help'], io(calls, out))).to.equal(0);
    expect(out.join('')).to.match(/^Usage: ferry pasta /);
    expect(out.join('')).to.include('--config-net');
    out.length = 0;
    expect(await run(['stream', '-h'], io(calls, out))).to.equal(0);
    expect(out.join('')).to.match(/^Usage: ferry stream /);
    out.length = 0;
    expect(await run(['stream', 'extra'], io(calls, out))).to.equal(1);
    expect(out.join('')).to.equal("ferry: unexpected argument 'extra'\n");
    expect(calls).to.have.length(0);
  });
});
