/**
 * Helpers for tests of the systemd units in systemd/: a small unit file
 * parser and the system calls a SystemCallFilter allows (expanded with
 * `systemd-analyze syscall-filter`).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

/** systemd/ in this checkout (this file runs from dist/test/support/). */
export const UNIT_DIR = path.resolve(__dirname, '..', '..', '..', 'systemd');

/** A unit file as section -> key -> values (a key may repeat; an empty value is kept, as it resets in systemd). */
export type UnitFile = Map<string, Map<string, string[]>>;

/** Parse systemd's INI-like unit syntax (comments, sections, key=value, backslash continuations). */
export function parseUnit(text: string): UnitFile {
  const unit: UnitFile = new Map();
  let section: Map<string, string[]> | null = null;
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  for (const raw of lines) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header !== null) {
      section = new Map();
      unit.set(header[1], section);
      continue;
    }
    const equals = line.indexOf('=');
    if (section === null || equals === -1) throw new Error(`unparsable unit line: ${line}`);
    const key = line.slice(0, equals).trim();
    const values = section.get(key) ?? [];
    values.push(line.slice(equals + 1).trim());
    section.set(key, values);
  }
  return unit;
}

export function readUnit(name: string): UnitFile {
  return parseUnit(fs.readFileSync(path.join(UNIT_DIR, name), 'utf8'));
}

/** The last value of a key (systemd's "last one wins" for single-valued settings). */
export function setting(unit: UnitFile, section: string, key: string): string | undefined {
  const values = unit.get(section)?.get(key);
  return values?.[values.length - 1];
}

/**
 * The system calls a SystemCallFilter allow list permits: groups (`@name`)
 * expanded from `systemd-analyze syscall-filter`, then the `~` lines removed.
 */
export function allowedSyscalls(filterLines: readonly string[]): Set<string> {
  const listing = spawnSync('systemd-analyze', ['syscall-filter'], { encoding: 'utf8' }).stdout;
  const groups = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const raw of listing.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    if (!raw.startsWith(' ') && line.startsWith('@')) {
      current = [];
      groups.set(line, current);
    } else if (current !== null) {
      current.push(line);
    }
  }
  const expand = (item: string, into: Set<string>, depth = 0): void => {
    if (depth > 10) throw new Error(`syscall group nesting too deep at ${item}`);
    if (!item.startsWith('@')) {
      into.add(item);
      return;
    }
    const members = groups.get(item);
    if (members === undefined) throw new Error(`unknown syscall group ${item}`);
    for (const member of members) expand(member, into, depth + 1);
  };
  const allowed = new Set<string>();
  for (const line of filterLines) {
    if (line.startsWith('~')) {
      const denied = new Set<string>();
      for (const item of line.slice(1).split(/\s+/).filter((x) => x !== '')) expand(item, denied);
      for (const name of denied) allowed.delete(name);
    } else {
      for (const item of line.split(/\s+/).filter((x) => x !== '')) expand(item, allowed);
    }
  }
  return allowed;
}

/** The SystemCallFilter= lines of ferry@.service. */
export function serviceSyscallFilter(): string[] {
  return readUnit('ferry@.service').get('Service')?.get('SystemCallFilter') ?? [];
}

