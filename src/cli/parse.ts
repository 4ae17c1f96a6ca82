/**
 * The command line and `--config` files, read against a command's flag table (flags.ts). Every
 * error is a UsageError naming the flag (and the config file), which the CLI turns into exit 2.
 */
import * as fs from 'fs';
import * as path from 'path';
import { parse as parseYaml } from 'yaml';
import { Command, Flag, flagName } from './flags';

export class UsageError extends Error {}

export type FlagValue = string | number | boolean | string[] | number[];

export interface ParsedFlags {
  /** By flag name (not alias): the value given on the command line, else in the config file. */
  values: Map<string, FlagValue>;
  /** Where each value came from: 'command line' or the config file's path. */
  source: Map<string, string>;
  /** How many command-line words there were. */
  argc: number;
}

function lookup(cmd: Command, name: string): Flag | undefined {
  return cmd.flags.find((f) => f.name === name || f.aliases?.includes(name));
}

function distance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return d[b.length];
}

/** A flag spelled close to `name` (a typo, or the other tool's word order), as a hint. */
function suggest(cmd: Command, name: string): string {
  const names = cmd.flags.flatMap((f) => [f.name, ...(f.aliases ?? [])]).filter((n) => n.length > 2);
  const best = names.map((n) => ({ n, d: distance(n, name) })).sort((x, y) => x.d - y.d)[0];
  const close = best && best.d <= Math.max(1, Math.floor(name.length / 4)) ? best.n : names.find((n) => name.length > 3 && (n.startsWith(name) || name.startsWith(n)));
  return close ? ` (did you mean --${close}?)` : '';
}

/** 'a, b or c' */
const oneOf = (v: readonly string[]) => (v.length > 1 ? `${v.slice(0, -1).join(', ')} or ${v[v.length - 1]}` : v.join(''));

/** Converts a flag's text (from the command line, or a config value as text) to its type, checking it. */
function convert(f: Flag, raw: string, where: string): FlagValue {
  const who = `${flagName(f)}${where}`;
  const text = raw.trim();
  switch (f.type) {
    case 'path':
    case 'string':
      if (!text) throw new UsageError(`${who}: expected ${f.type === 'path' ? 'a path' : 'a value'}, got ''`);
      return f.type === 'path' ? text : raw;
    case 'boolean':
      if (text === 'true') return true;
      if (text === 'false') return false;
      throw new UsageError(`${who}: a switch takes no value (or true/false in a config file), got '${raw}'`);
    case 'enum':
      if (!f.values?.includes(text)) throw new UsageError(`${who}: expected ${oneOf(f.values ?? [])}, got '${raw}'`);
      return text;
    case 'list': {
      const items = text.split(',').map((s) => s.trim()).filter(Boolean);
      if (!items.length) throw new UsageError(`${who}: expected comma-separated names, got '${raw}'`);
      return items;
    }
    case 'numbers': {
      const items = text.split(',').map((s) => s.trim());
      return items.map((s) => number(f, s, raw, who));
    }
    default:
      return number(f, text, raw, who);
  }
}

function number(f: Flag, text: string, raw: string, who: string): number {
  // Number('') is 0 and Number(' ') too: an empty value is refused, not read as zero.
  const x = text === '' ? NaN : Number(text);
  if (!Number.isFinite(x)) throw new UsageError(`${who}: expected ${f.type === 'int' ? 'an integer' : 'a number'}, got '${raw}'`);
  if (f.type === 'int' && !Number.isSafeInteger(x)) throw new UsageError(`${who}: expected an integer, got '${raw}'`);
  const lo = f.min ?? -Infinity;
  const hi = f.max ?? Infinity;
  if ((f.minOpen ? x <= lo : x < lo) || x > hi) {
    const range = f.max !== undefined && f.max < 1e15 ? `${f.minOpen ? '(' : '['}${lo}, ${hi}]` : `${f.minOpen ? '>' : '>='} ${lo}`;
    throw new UsageError(`${who}: expected ${f.type === 'int' ? 'an integer' : 'a number'} ${f.max !== undefined && f.max < 1e15 ? `in ${range}` : range}, got '${raw}'`);
  }
  return x;
}

/** A config file's value as the text the command line would carry (lists joined), or a boolean for a switch. */
function configText(f: Flag, v: unknown, where: string): string {
  const who = `${flagName(f)}${where}`;
  if (f.type === 'boolean') {
    if (typeof v !== 'boolean') throw new UsageError(`${who}: expected true or false, got ${JSON.stringify(v)}`);
    return String(v);
  }
  if (Array.isArray(v) && (f.type === 'list' || f.type === 'numbers')) {
    if (!v.every((x) => typeof x === 'string' || typeof x === 'number')) throw new UsageError(`${who}: expected a list of ${f.type === 'list' ? 'names' : 'numbers'}, got ${JSON.stringify(v)}`);
    return v.join(',');
  }
  if (typeof v === 'string' || typeof v === 'number') return String(v);
  throw new UsageError(`${who}: expected ${f.type === 'list' ? 'a name or a list' : f.type === 'path' ? 'a path' : 'a value'}, got ${JSON.stringify(v)}`);
}

/** Reads a YAML or JSON config file: an object whose keys are the command's flag names (or aliases; `_` as `-`). */
export function readConfig(cmd: Command, file: string): Array<{ flag: Flag; value: FlagValue }> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new UsageError(`--config: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let doc: unknown;
  try {
    doc = /\.json$/i.test(file) ? JSON.parse(text) : parseYaml(text);
  } catch (e) {
    throw new UsageError(`--config: ${file} is not valid ${/\.json$/i.test(file) ? 'JSON' : 'YAML'}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (doc === null || doc === undefined) return [];
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new UsageError(`--config: ${file} must hold a mapping of flag names to values`);
  const out: Array<{ flag: Flag; value: FlagValue }> = [];
  const where = ` (in ${file})`;
  for (const [key, v] of Object.entries(doc as Record<string, unknown>)) {
    const name = key.replace(/^--?/, '').replace(/_/g, '-');
    const flag = lookup(cmd, name);
    if (!flag || flag.name === 'config') throw new UsageError(`--config: ${file}: unknown key '${key}' (keys are the flags of \`peftkit ${cmd.name}\`, e.g. batch-size)${flag ? '' : suggest(cmd, name)}`);
    if (out.some((o) => o.flag === flag)) throw new UsageError(`--config: ${file}: ${flagName(flag)} is given twice`);
    out.push({ flag, value: convert(flag, configText(flag, v, where), where) });
  }
  return out;
}

/** Parses `args` (the words after the command) with `--config`, checking each value against its flag. */
export function parseFlags(cmd: Command, args: readonly string[]): ParsedFlags {
  const values = new Map<string, FlagValue>();
  const source = new Map<string, string>();
  const spelled = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const word = args[i];
    const m = /^(--?)([^=]+)(?:=([\s\S]*))?$/.exec(word);
    if (!m || word === '-' || word === '--' || (m[1] === '-' && m[2].length !== 1 && !m[2].startsWith('-'))) {
      throw new UsageError(`unexpected argument '${word}' for \`peftkit ${cmd.name}\` (values follow their flag, as --model DIR)`);
    }
    const [, , name, inline] = m;
    const flag = lookup(cmd, name);
    if (!flag || (m[1] === '-' && name.length !== 1)) throw new UsageError(`unknown option '${m[1]}${name}' for \`peftkit ${cmd.name}\`${suggest(cmd, name)}`);
    let raw: string;
    if (flag.type === 'boolean') raw = inline ?? 'true';
    else if (inline !== undefined) raw = inline;
    else {
      if (i + 1 >= args.length) throw new UsageError(`${word}: expected a value${flag.metavar ? ` (${flag.metavar})` : ''}`);
      raw = args[++i];
    }
    const prev = spelled.get(flag.name);
    if (prev !== undefined) throw new UsageError(`${flagName(flag)} was given twice (as ${prev} and ${m[1]}${name})`);
    spelled.set(flag.name, `${m[1]}${name}`);
    values.set(flag.name, convert(flag, raw, ''));
    source.set(flag.name, 'command line');
  }
  const config = values.get('config');
  if (typeof config === 'string') {
    for (const { flag, value } of readConfig(cmd, path.resolve(config))) {
      if (values.has(flag.name)) continue; // the command line wins
      values.set(flag.name, value);
      source.set(flag.name, config);
    }
  }
  return { values, source, argc: args.length };
}

/**
 * The API options the parsed flags set, by each flag's `field` (a `--no-...` switch sets false).
 * `custom` converts the flags whose value is not the field's as is (e.g. --targets all-linear).
 */
export function toOptions(cmd: Command, parsed: ParsedFlags, custom: Record<string, (v: FlagValue) => unknown> = {}): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const f of cmd.flags) {
    if (!f.field || !parsed.values.has(f.name)) continue;
    const v = parsed.values.get(f.name)!;
    if (f.type === 'boolean') {
      if (v === true) o[f.field] = !f.negate;
      continue; // `false` in a config file leaves the default
    }
    o[f.field] = custom[f.name] ? custom[f.name](v) : v;
  }
  return o;
}

/** The required flags that are missing, as `--model, --data`. */
export function missingRequired(cmd: Command, parsed: ParsedFlags, also: Record<string, unknown> = {}): string[] {
  return cmd.flags.filter((f) => f.required && !parsed.values.has(f.name) && (f.field === undefined || also[f.field] === undefined)).map(flagName);
}
