/**
 * The command line of `ferry pasta` (and of ferry invoked as `pasta`):
 * pasta's own options (namespace, interface, splice, --config-net...) split
 * off, everything else parsed by the shared option table (options.ts), as
 * pasta shares passt's options.
 */
import { DEFAULT_EPHEMERAL_RANGE } from '../../stack/flow/forward-spec';
import { optionTakesValue, type ParsedCommandLine, type ParseEnvironment, parseOptions } from './options';
import { fail, interfaceNameValue, nonEmpty } from './option-values';

/** pasta's own options (everything else is shared with the daemon and parsed by parseOptions). */
export interface PastaOptions {
  /** -I/--ns-ifname: name of the tap device in the namespace (default: the host's interface name). */
  nsIfname: string | null;
  /** --netns PATH|NAME or a PID (positional or --netns PID): join this network namespace instead of creating one. */
  netns: string | null;
  /** --userns PATH|PID: user namespace to join with --netns (default: none, or the target PID's). */
  userns: string | null;
  /** --config-net: configure the tap over netlink (addresses, routes, MTU, link up). */
  configNet: boolean;
  /** false with --no-splice: no splice() fast path between the loopbacks. */
  splice: boolean;
  /** --netns-only: with a PID, join its network namespace only, not its user namespace. */
  netnsOnly: boolean;
  /** false with --no-netns-quit: keep running when the target PID exits. */
  netnsQuit: boolean;
  /** The command to run in the namespace; empty = the user's shell (or, with --netns, none). */
  command: string[];
}


/** A namespace spec as a path: a PID means /proc/PID/ns/KIND, a bare name a file under /run/netns (net only). */
export function namespacePath(spec: string, kind: 'net' | 'user'): string {
  if (/^[0-9]+$/.test(spec)) return `/proc/${spec}/ns/${kind}`;
  if (kind === 'net' && !spec.includes('/')) return `/run/netns/${spec}`;
  return spec;
}


const PASTA_VALUE_OPTIONS: Record<string, keyof PastaOptions> = { 'ns-ifname': 'nsIfname', I: 'nsIfname', netns: 'netns', userns: 'userns' };
const PASTA_FLAGS: Record<string, () => Partial<PastaOptions>> = {
  'config-net': () => ({ configNet: true }),
  'no-splice': () => ({ splice: false }),
  'netns-only': () => ({ netnsOnly: true }),
  'no-netns-quit': () => ({ netnsQuit: false }),
  // Deprecated in passt; ferry's --config-net sets one address per family and the default routes, which is what they ask for.
  'no-copy-routes': () => ({}),
  'no-copy-addrs': () => ({}),
};

/** pasta's options for its --help, after the shared ones. */
export function pastaOptionHelp(): Array<[string, string]> {
  return [
    ['-I, --ns-ifname NAME', 'Name of the tap device in the namespace (default: the host\'s interface name)'],
    ['--netns PATH|NAME|PID', 'Join this network namespace instead of creating one (a PID: its namespace)'],
    ['--userns PATH|PID', 'User namespace to join with --netns'],
    ['--config-net', 'Configure the tap: the host\'s addresses, routes and MTU, link and loopback up'],
    ['--no-splice', 'No splice() fast path between the namespace\'s and the host\'s loopback'],
    ['--netns-only', 'With a PID: join its network namespace only, not its user namespace'],
    ['--no-netns-quit', 'Keep running when the target PID exits'],
    ['--no-copy-routes, --no-copy-addrs', 'Accepted (deprecated in passt): --config-net copies one address and the default routes'],
  ];
}

/**
 * Parse `ferry pasta [OPTION]... [--] [COMMAND [ARG]...]` (or `... PID`):
 * pasta's own options are taken out here, the rest goes to parseOptions; the
 * first argument that is not an option (or everything after `--`) is the
 * command. Throws OptionError like parseOptions.
 */
export function parsePastaCommandLine(argv: readonly string[], environment: ParseEnvironment = { ephemeral: DEFAULT_EPHEMERAL_RANGE }): { parsed: ParsedCommandLine; pasta: PastaOptions } {
  const pasta: PastaOptions = { nsIfname: null, netns: null, userns: null, configNet: false, splice: true, netnsOnly: false, netnsQuit: true, command: [] };
  const shared: string[] = [];
  let commandAfterDashes = false;
  let index = 0;
  const valueFor = (shown: string, inline: string | null): string => {
    if (inline !== null) return inline;
    if (index < argv.length) return argv[index++];
    return fail(shown, 'needs a value');
  };
  while (index < argv.length) {
    const argument = argv[index++];
    if (argument === '--') {
      pasta.command = argv.slice(index);
      commandAfterDashes = true;
      break;
    }
    if (argument.startsWith('--')) {
      const equals = argument.indexOf('=');
      const name = equals === -1 ? argument.slice(2) : argument.slice(2, equals);
      const inline = equals === -1 ? null : argument.slice(equals + 1);
      const field = PASTA_VALUE_OPTIONS[name];
      if (field !== undefined) {
        setPastaValue(pasta, field, `--${name}`, valueFor(`--${name}`, inline));
        continue;
      }
      const flag = PASTA_FLAGS[name];
      if (flag !== undefined) {
        if (inline !== null) fail(`--${name}`, 'does not take a value');
        Object.assign(pasta, flag());
        continue;
      }
      shared.push(argument);
      if (inline === null && optionTakesValue(name, true) === true && index < argv.length) shared.push(argv[index++]);
      continue;
    }
    if (argument.startsWith('-') && argument.length > 1) {
      if (argument[1] === 'I') {
        setPastaValue(pasta, 'nsIfname', '-I', valueFor('-I', argument.length > 2 ? argument.slice(2) : null));
        continue;
      }
      shared.push(argument);
      // A bundle: its first option taking a value swallows the rest, or the next argument.
      for (let position = 1; position < argument.length; position++) {
        const takes = optionTakesValue(argument[position], false);
        if (takes !== true) continue;
        if (position + 1 === argument.length && index < argv.length) shared.push(argv[index++]);
        break;
      }
      continue;
    }
    pasta.command = argv.slice(index - 1);
    break;
  }
  if (!commandAfterDashes && pasta.command.length === 1 && /^[0-9]+$/.test(pasta.command[0]) && pasta.netns === null) {
    // `pasta PID`: attach to that process's namespaces, as pasta does.
    pasta.netns = pasta.command[0];
    pasta.command = [];
  }
  const parsed = parseOptions(shared, { ...environment, pasta: true });
  if (parsed.action === 'run' && !nameOptionGiven(shared)) parsed.options.logging.name = 'pasta';
  // The command shares ferry's terminal: warnings and errors only unless -d/--trace asked for more ('info' is only ever the default).
  if (parsed.options.logging.level === 'info') parsed.options.logging.level = 'warn';
  return { parsed, pasta };
}

function setPastaValue(pasta: PastaOptions, field: keyof PastaOptions, shown: string, value: string): void {
  if (field === 'nsIfname') pasta.nsIfname = interfaceNameValue(shown, value);
  else if (field === 'netns') pasta.netns = nonEmpty(shown, value, 'namespace');
  else if (field === 'userns') pasta.userns = nonEmpty(shown, value, 'namespace');
}

/** True when --name was among the shared options (then it names the instance, not 'pasta'). */
function nameOptionGiven(shared: readonly string[]): boolean {
  return shared.some((a) => a === '--name' || a.startsWith('--name='));
}
