/**
 * Seeded mutation fuzzing of the files peftkit reads. A fuzz case builds a small valid fixture
 * with the project's own writers, then each iteration copies it, damages one file (bytes of a
 * header flipped, the file cut short, a JSON field deleted, retyped or pushed out of range) and
 * calls the public API. The bar: it succeeds with finite outputs, or throws a PeftkitError whose
 * message names the damaged file (or a file it must agree with) — never another error, a crash,
 * a hang or a half-written output folder.
 *
 * Iterations run in a child process (fuzz_child.ts), so that a native crash or a hang is caught
 * and reported with the seed of the iteration that caused it. Every iteration has its own seed:
 * FUZZ_SEED=<seed> replays exactly that one; FUZZ_ITERS=<n> runs more of them.
 */
import type { ExecutionContext } from 'ava';
import type { ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../../src/index';
import { spawnChild } from './spawn';
import { mulberry32 } from './check';

export interface FuzzRng {
  /** uniform in [0, 1) */
  next(): number;
  /** integer in [lo, hi) */
  int(lo: number, hi: number): number;
  pick<T>(items: readonly T[]): T;
  chance(p: number): boolean;
}

/** A seeded draw (mulberry32): the same sequence for the same seed on every machine. */
export function fuzzRng(seed: number): FuzzRng {
  const next = mulberry32(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo));
  return { next, int, pick: (items) => items[int(0, items.length)], chance: (p) => next() < p };
}

/** The seed of iteration `i` of a run started from `base`. */
export function iterationSeed(base: number, i: number): number {
  return fuzzRng((base ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0).int(0, 2 ** 32);
}

/** A violation of the bar; the child reports it with the iteration's seed. */
export class FuzzViolation extends Error {}

/**
 * Runs `fn`; returns 'ok' or the PeftkitError's code. Anything else is a violation: another
 * error type, or a message that names none of `files` (basenames or folder names).
 */
export function outcome(files: readonly string[], fn: () => void): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    if (e instanceof FuzzViolation) throw e;
    if (!(e instanceof PeftkitError)) {
      const err = e as Error;
      throw new FuzzViolation(`threw ${err?.name ?? typeof e} instead of a PeftkitError: ${err?.message}\n${err?.stack ?? ''}`);
    }
    if (!files.some((f) => e.message.includes(f))) {
      throw new FuzzViolation(`PeftkitError ${e.code} names none of ${files.join(', ')}: ${e.message}\n${e.stack ?? ''}`);
    }
    if (process.env.FUZZ_VERBOSE) fs.writeSync(1, `error ${e.code} ${e.message.replace(/\n/g, ' ')}\n`);
    return e.code;
  }
}

/** Values a damaged JSON field takes: wrong types, zero, negatives, fractions, huge numbers. */
export const ODD_VALUES: readonly unknown[] = [
  null, true, false, 0, -1, 1, 2, 3, 7, 0.5, -0.25, 1.5, 1e9, -1e9, 2 ** 31, 2 ** 53 + 2, 1e308, -1e308, '', 'x', '64', 'nf4', 'fp4',
  'float32', 'bfloat16', [], [1], [0, 0], [-1, 5], [1, 2, 3], ['x'], {}, { a: 1 },
];

/** One of ODD_VALUES, copied (a shared array damaged in place later would alias, even cycle). */
export function oddValue(rng: FuzzRng): unknown {
  return structuredClone(rng.pick(ODD_VALUES));
}

/** A value near `v`: the same type pushed out of range, or one of ODD_VALUES. */
export function oddValueFor(v: unknown, rng: FuzzRng): unknown {
  if (typeof v === 'number' && rng.chance(0.5)) {
    return rng.pick([0, -v, v + 1, v - 1, v * 2, v / 2, v * 1000, v + 0.5, Math.floor(v / 3), 2 ** 40, -(2 ** 40)]);
  }
  if (Array.isArray(v) && rng.chance(0.5)) {
    const a = [...v];
    const k = rng.int(0, 4);
    if (k === 0) a.pop();
    else if (k === 1) a.push(a.length ? a[a.length - 1] : 1);
    else if (k === 2 && a.length) a[rng.int(0, a.length)] = oddValueFor(a[rng.int(0, a.length)], rng);
    else a.reverse();
    return a;
  }
  if (typeof v === 'string' && rng.chance(0.3)) return rng.pick([v.toUpperCase(), v.slice(0, -1), `${v}x`, v.replace(/\d+/, '9')]);
  return oddValue(rng);
}

type Json = Record<string, unknown> | unknown[];

/** Every container path of a JSON value (objects and arrays), the root first. */
function containers(v: unknown, at: Array<string | number> = [], out: Array<Array<string | number>> = []): Array<Array<string | number>> {
  if (v && typeof v === 'object') {
    out.push(at);
    for (const [k, c] of Object.entries(v)) containers(c, [...at, Array.isArray(v) ? Number(k) : k], out);
  }
  return out;
}

function getPath(v: unknown, at: ReadonlyArray<string | number>): unknown {
  return at.reduce<unknown>((o, k) => (o as Record<string | number, unknown>)[k], v);
}

/**
 * One damage to a parsed JSON document, in place: a field (at any depth) deleted, given an odd
 * value, or a key renamed. Returns what it did.
 */
export function mutateJson(doc: Json, rng: FuzzRng): string {
  const spots = containers(doc).filter((p) => Object.keys(getPath(doc, p) as object).length > 0 || p.length === 0);
  const at = rng.pick(spots);
  const box = getPath(doc, at) as Record<string, unknown> | unknown[];
  const keys = Object.keys(box);
  if (keys.length === 0) {
    (box as Record<string, unknown>)[rng.pick(['x', 'r', 'shape'])] = oddValue(rng);
    return `added a field at ${at.join('.')}`;
  }
  const key = rng.pick(keys);
  const where = [...at, key].join('.');
  const kind = rng.int(0, 10);
  if (kind < 2 && !Array.isArray(box)) {
    delete (box as Record<string, unknown>)[key];
    return `deleted ${where}`;
  }
  if (kind < 3 && Array.isArray(box)) {
    box.splice(Number(key), 1);
    return `removed ${where}`;
  }
  if (kind === 3 && !Array.isArray(box)) {
    const v = box[key];
    delete box[key];
    box[rng.pick([`${key}_`, key.toUpperCase(), key.slice(1)])] = v;
    return `renamed ${where}`;
  }
  const v = oddValueFor((box as Record<string, unknown>)[key], rng);
  (box as Record<string, unknown>)[key] = v;
  return `set ${where} = ${JSON.stringify(v)?.slice(0, 60)}`;
}

/** `n` bytes of `buf` in [from, to) replaced by random ones (a bit flip, or a random byte). */
export function flipBytes(buf: Buffer, from: number, to: number, rng: FuzzRng, n = 1): string {
  const done: string[] = [];
  for (let k = 0; k < n && to > from; k++) {
    const i = rng.int(from, to);
    const old = buf[i];
    buf[i] = rng.chance(0.5) ? old ^ (1 << rng.int(0, 8)) : rng.int(0, 256);
    done.push(`${i}:${old}->${buf[i]}`);
  }
  return `flipped bytes ${done.join(' ')}`;
}

/** The file cut at a random point (anywhere, but more often inside its first 64 bytes or its header). */
export function truncateFile(file: string, rng: FuzzRng, headerEnd?: number): string {
  const size = fs.statSync(file).size;
  const cut = rng.chance(0.3) ? rng.int(0, Math.min(size, 64)) : headerEnd !== undefined && rng.chance(0.4) ? rng.int(0, Math.min(size, headerEnd)) : rng.int(0, size);
  fs.truncateSync(file, cut);
  return `truncated ${path.basename(file)} to ${cut} of ${size} bytes`;
}

/** A safetensors file split into its header JSON and the bytes after it. */
export interface SafetensorsParts {
  header: Record<string, unknown>;
  data: Buffer;
}

export function readSafetensorsParts(file: string): SafetensorsParts {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  return { header: JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>, data: b.subarray(8 + n) };
}

/** Writes a header and data back as a safetensors file (the header length recomputed). */
export function writeSafetensorsParts(file: string, p: SafetensorsParts): void {
  const json = Buffer.from(JSON.stringify(p.header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, p.data]));
}

/**
 * One damage to a safetensors file: its header JSON mutated (dtype, shape, data_offsets,
 * __metadata__, names), the length prefix changed, header bytes flipped, or the file truncated.
 */
export function damageSafetensors(file: string, rng: FuzzRng): string {
  const b = fs.readFileSync(file);
  const headerEnd = 8 + Number(b.readBigUInt64LE(0));
  const kind = rng.int(0, 10);
  if (kind < 4) {
    const p = readSafetensorsParts(file);
    const names = Object.keys(p.header).filter((k) => k !== '__metadata__');
    let what: string;
    const r = rng.int(0, 8);
    if (r === 0 && names.length > 1) {
      // Two entries made to overlap, or one moved out of the data.
      const [a, c] = [rng.pick(names), rng.pick(names)];
      const ea = p.header[a] as { data_offsets: number[] };
      const ec = p.header[c] as { data_offsets: number[] };
      ea.data_offsets = rng.chance(0.5) ? [...ec.data_offsets] : [ea.data_offsets[0] + p.data.length, ea.data_offsets[1] + p.data.length];
      what = `offsets of '${a}' set from '${c}' or past the end`;
    } else if (r === 1) {
      const n = rng.pick(names);
      const e = p.header[n] as Record<string, unknown>;
      e.dtype = rng.pick(['F32', 'F16', 'BF16', 'I8', 'U8', 'I32', 'I64', 'F64', 'BOOL', 'F8_E4M3', 'f32', 'Q4', 7, null]);
      what = `dtype of '${n}' set to ${JSON.stringify(e.dtype)}`;
    } else if (r === 2) {
      const n = rng.pick(names);
      const e = p.header[n] as Record<string, unknown>;
      const shape = [...(e.shape as number[])];
      const k = rng.int(0, 3);
      if (k === 0) shape.reverse();
      else if (k === 1) shape.push(1);
      else if (shape.length) shape.splice(0, 2, shape.slice(0, 2).reduce((a, x) => a * x, 1));
      e.shape = shape;
      what = `shape of '${n}' set to ${JSON.stringify(shape)} (same size)`;
    } else if (r === 3 && names.length) {
      const n = rng.pick(names);
      p.header[`${n}${rng.pick(['_', '.x', ''])}`.replace(/^model\./, rng.pick(['model.', 'mdl.']))] = p.header[n];
      if (rng.chance(0.7)) delete p.header[n];
      what = `renamed/duplicated '${n}'`;
    } else if (r === 4) {
      p.header.__metadata__ = rng.pick<unknown>([null, 5, 'x', [], { format: 7 }, { format: 'pt', step: { a: 1 } }, { format: ['pt'] }]);
      what = `__metadata__ = ${JSON.stringify(p.header.__metadata__)}`;
    } else {
      what = mutateJson(p.header, rng);
    }
    writeSafetensorsParts(file, p);
    return `header: ${what}`;
  }
  if (kind === 4) {
    const v = rng.pick([0n, 1n, 7n, BigInt(headerEnd - 9), BigInt(headerEnd - 7), BigInt(b.length), 2n ** 63n, 2n ** 64n - 1n, 100n * 1024n * 1024n + 1n]);
    b.writeBigUInt64LE(v, 0);
    fs.writeFileSync(file, b);
    return `header length set to ${v}`;
  }
  if (kind < 8) {
    const what = flipBytes(b, rng.chance(0.2) ? 0 : 8, headerEnd, rng, rng.int(1, 4));
    fs.writeFileSync(file, b);
    return `header ${what}`;
  }
  return truncateFile(file, rng, headerEnd);
}

/** One damage to a JSON file: a field mutated (most often), bytes flipped, or the file cut. */
export function damageJsonFile(file: string, rng: FuzzRng): string {
  const text = fs.readFileSync(file, 'utf8');
  const kind = rng.int(0, 10);
  if (kind < 7) {
    const doc = JSON.parse(text) as Json;
    const what = Array.from({ length: rng.chance(0.2) ? 2 : 1 }, () => mutateJson(doc, rng)).join('; ');
    fs.writeFileSync(file, JSON.stringify(doc, null, 2));
    return `${path.basename(file)}: ${what}`;
  }
  if (kind === 7) {
    fs.writeFileSync(file, rng.pick(['', '[]', 'null', '42', '"x"', '{', '\ufeff{}', '{"a":1}{']));
    return `${path.basename(file)}: replaced by junk`;
  }
  if (kind === 8) {
    const b = Buffer.from(text, 'utf8');
    const what = flipBytes(b, 0, b.length, rng, rng.int(1, 3));
    fs.writeFileSync(file, b);
    return `${path.basename(file)}: ${what}`;
  }
  return truncateFile(file, rng);
}

/** Folders under `parent` that an atomic writer left behind (temporary or moved-aside copies). */
export function leftovers(parent: string): string[] {
  return fs.existsSync(parent) ? fs.readdirSync(parent).filter((n) => /\.tmp/.test(n)) : [];
}

/** Checks the output folder after a failed write: absent, or as it was (the caller says which). */
export function expectNoOutput(out: string): void {
  if (fs.existsSync(out)) throw new FuzzViolation(`the call failed but left ${out} behind`);
  const left = leftovers(path.dirname(out));
  if (left.length) throw new FuzzViolation(`the call left temporary files behind: ${left.join(', ')}`);
}

const CHILD = path.join(__dirname, 'fuzz_child.js');

/** The iteration count: FUZZ_ITERS, else the test's default. */
export function fuzzIterations(dflt: number): number {
  const n = Number(process.env.FUZZ_ITERS);
  return Number.isInteger(n) && n > 0 ? n : dflt;
}

/**
 * Runs `iterations` of fuzz case `name` in a child process and fails the test with the seed of
 * the iteration that broke the bar (a violation, a crash, or no progress for `stallMs`).
 * Returns the outcome counts ({ ok: n, E_FORMAT: m, ... }).
 */
export async function runFuzz(t: ExecutionContext, name: string, iterations: number, stallMs = 60_000): Promise<Record<string, number>> {
  const replay = process.env.FUZZ_SEED !== undefined && process.env.FUZZ_SEED !== '' ? Number(process.env.FUZZ_SEED) >>> 0 : null;
  // FUZZ_BASE_SEED fixes the base of the derived seeds (CI), keeping every iteration.
  const fixed = process.env.FUZZ_BASE_SEED ? Number(process.env.FUZZ_BASE_SEED) >>> 0 : null;
  const base = replay ?? fixed ?? (Math.random() * 2 ** 32) >>> 0;
  const iters = replay !== null ? 1 : fuzzIterations(iterations);
  t.log(`${name}: ${iters} iteration(s) from ${replay !== null ? 'replayed seed' : 'base seed'} ${base}`);
  const args = [CHILD, name, String(base), String(iters), replay !== null ? 'exact' : 'derived'];
  let child: ChildProcess;
  try {
    // Not spawn(): a spawn that fails on a loaded machine would be an uncaught exception.
    ({ child } = await spawnChild(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PEFTKIT_NUM_THREADS: process.env.PEFTKIT_NUM_THREADS ?? '1' } }));
  } catch (e) {
    t.fail(`${name}: ${(e as Error).message}`);
    return {};
  }
  // The outcome is settled in the child's handlers and asserted here, in the test's own flow:
  // an assertion that fails inside an event handler escapes ava as an uncaught exception.
  const outcome = await new Promise<{ counts: Record<string, number> } | { failure: string }>((resolve) => {
    let out = '';
    let err = '';
    let lastSeed = '?';
    let lastWhat = '';
    let stalled = false;
    let timer: NodeJS.Timeout;
    // A hang is no progress while the child burns stallMs of CPU time (a loop), or for
    // STALL_WALL_FACTOR × stallMs of wall time whatever it burns (a deadlock). Wall time alone
    // fails on a loaded machine, where a slow iteration may wait minutes for a core.
    let since = { wall: Date.now(), cpu: cpuMs(child.pid) };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        const cpu = cpuMs(child.pid);
        const starved = cpu !== null && since.cpu !== null && cpu - since.cpu < stallMs;
        if (starved && Date.now() - since.wall < STALL_WALL_FACTOR * stallMs) return arm();
        stalled = true;
        child.kill('SIGKILL');
      }, stallMs);
    };
    const progress = () => {
      since = { wall: Date.now(), cpu: cpuMs(child.pid) };
      arm();
    };
    arm();
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const lines = out.split('\n');
      for (const l of lines.slice(-40)) {
        const m = /^iter \d+ seed (\d+)$/.exec(l);
        if (m) lastSeed = m[1];
        const w = /^damage (.*)$/.exec(l);
        if (w) lastWhat = w[1];
      }
      if (out.length > 1 << 20) out = out.slice(-(1 << 16));
      progress();
    });
    child.stderr!.on('data', (d: Buffer) => {
      err = (err + d.toString()).slice(-8000);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const replayHint = `replay: FUZZ_SEED=${lastSeed} npx ava <this test file> --match '*${name}*'`;
      const result = /^result (.*)$/m.exec(out);
      if (stalled) {
        resolve({ failure: `${name}: no progress at seed ${lastSeed} (${lastWhat}) for ${stallMs / 1000} s of the child's CPU time or ${(STALL_WALL_FACTOR * stallMs) / 1000} s of wall time: a hang. ${replayHint}` });
      } else if (signal || code !== 0) {
        const fail = /^FAIL ([\s\S]*?)^END$/m.exec(out);
        const why = fail ? fail[1] : `child ${signal ? `killed by ${signal}` : `exited with code ${code}`} (a crash?)\n${err}`;
        resolve({ failure: `${name}: seed ${lastSeed} (${lastWhat}): ${why}\n${replayHint}` });
      } else if (!result) {
        resolve({ failure: `${name}: the child ended without a result\n${err}` });
      } else {
        resolve({ counts: JSON.parse(result[1]) as Record<string, number> });
      }
    });
  });
  if ('failure' in outcome) {
    t.fail(outcome.failure);
    return {};
  }
  t.log(`${name}: outcomes ${JSON.stringify(outcome.counts)}`);
  return outcome.counts;
}

/** How many times stallMs of wall time a child may go without progress while starved of CPU. */
const STALL_WALL_FACTOR = 5;

/** A process's CPU time (user + system) in ms, from /proc; null where unreadable. */
function cpuMs(pid: number | undefined): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces), from field 3: utime is 14, stime 15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return null;
  }
}
/** USER_HZ: 100 on every Linux that Node runs on. */
const CLOCK_TICKS = 100;
