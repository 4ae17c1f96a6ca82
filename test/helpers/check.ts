/**
 * Shared test tools: a seeded RNG drawn fresh every run (the seed is logged, and
 * PEFTKIT_TEST_SEED replays it), float64 comparisons, poisoned outputs, device lists.
 */
import type { ExecutionContext } from 'ava';
import { Tensor, runtimeInfo } from '../../src/index';
import type { Device } from '../../src/index';

export interface Rng {
  seed: number;
  /** uniform in [0, 1) */
  next(): number;
  /** standard normal */
  normal(): number;
  int(lo: number, hi: number): number;
}

/** mulberry32: uniform numbers in [0, 1), the same sequence for the same seed on every machine. */
export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** mulberry32 + Box-Muller; the seed is fresh each run unless PEFTKIT_TEST_SEED is set. */
export function makeRng(t?: ExecutionContext, seed?: number): Rng {
  const s = seed ?? (process.env.PEFTKIT_TEST_SEED ? Number(process.env.PEFTKIT_TEST_SEED) : (Math.random() * 2 ** 32) >>> 0);
  const start = s;
  t?.log(`seed ${start} (replay with PEFTKIT_TEST_SEED=${start})`);
  const next = mulberry32(s);
  return {
    seed: start,
    next,
    normal: () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next()),
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo)),
  };
}

export function randn(rng: Rng, n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal() * scale;
  return a;
}

export function randInts(rng: Rng, n: number, lo: number, hi: number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.int(lo, hi);
  return a;
}

/** ‖actual − expected‖ / ‖expected‖ (Frobenius), computed in float64. NaN anywhere gives Infinity. */
export function relErr(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} != ${expected.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = actual[i] - expected[i];
    if (!Number.isFinite(actual[i])) return Infinity;
    num += d * d;
    den += expected[i] * expected[i];
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

export function assertClose(
  t: ExecutionContext,
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what: string,
): void {
  const e = relErr(actual, expected);
  t.true(e <= tol, `${what}: relative error ${e.toExponential(3)} > ${tol}`);
}

/** An output tensor filled with NaN, so an element the kernel forgets to write shows up. */
export function poisoned(shape: number[], device: Device = 'cpu', dtype: 'f32' | 'bf16' = 'f32'): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const t = Tensor.empty(shape, { device, dtype });
  if (dtype === 'f32') t.write(new Float32Array(n).fill(NaN));
  else t.write(new Uint16Array(n).fill(0x7fc0));
  return t;
}

/** The devices to test on: cpu always, cuda when a GPU is visible (or PEFTKIT_TEST_CUDA=0 turns it off). */
export function devices(): Device[] {
  const info = runtimeInfo();
  return info.cudaAvailable && process.env.PEFTKIT_TEST_CUDA !== '0' ? ['cpu', 'cuda'] : ['cpu'];
}

/** f32 round trip through bf16 (round to nearest even), for building bf16 references. */
export function roundBf16(x: Float32Array): Float32Array {
  const u = new Uint32Array(x.buffer.slice(x.byteOffset, x.byteOffset + x.byteLength));
  for (let i = 0; i < u.length; i++) {
    const v = u[i];
    u[i] = (v & 0x7fffffff) > 0x7f800000 ? v : ((v + 0x7fff + ((v >>> 16) & 1)) & 0xffff0000) >>> 0;
  }
  return new Float32Array(u.buffer);
}

/**
 * Central differences of `loss` with respect to input `which` of `inputs`, one element at a time
 * (step h): the finite-difference side of the composite gradient checks.
 */
export function centralDifferences<A extends Float32Array[]>(loss: (...inputs: A) => number, inputs: A, which: number, h: number): Float64Array {
  const v = inputs[which];
  return Float64Array.from({ length: v.length }, (_, i) => {
    const plus = Float32Array.from(v), minus = Float32Array.from(v);
    plus[i] += h;
    minus[i] -= h;
    const at = (p: Float32Array) => inputs.map((x, j) => (j === which ? p : x)) as A;
    return (loss(...at(plus)) - loss(...at(minus))) / (2 * h);
  });
}

/** Every device peftkit has; model-level tests make one row per device (see device_test.ts). */
export const ALL_DEVICES: readonly Device[] = ['cpu', 'cuda'];

/** Why `device` cannot run tests here, or null when it can: the reason its rows are skipped with. */
export function deviceAbsence(device: Device): string | null {
  if (device === 'cpu') return null;
  const info = runtimeInfo();
  if (!info.cudaBuild) return 'CUDA build not loaded';
  if (!info.cudaAvailable) return 'no CUDA device on this machine';
  if (process.env.PEFTKIT_TEST_CUDA === '0') return 'PEFTKIT_TEST_CUDA=0';
  return null;
}

