/**
 * Seeded shuffling: every epoch's order is a pure function of (seed, epoch), so a run can be
 * resumed from a saved position without storing the permutation, and any epoch can be rebuilt.
 */

/** Mixes 32-bit words into one (murmur3's finalizer over a running hash). */
function mix32(words: number[]): number {
  let h = 0x9e3779b9;
  for (const w of words) {
    h = Math.imul(h ^ (w >>> 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
  }
  return h >>> 0;
}

/** mulberry32: a small, fast 32-bit PRNG with a 32-bit state; returns uniform uint32s. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** Uniform integer in [0, n) without modulo bias (rejects the uneven top of the 2^32 range). */
function below(next: () => number, n: number): number {
  const limit = 0x100000000 - (0x100000000 % n);
  let x = next();
  while (x >= limit) x = next();
  return x % n;
}

/** The state for epoch `epoch` of a run seeded with `seed` (any safe integer, negative too). */
export function epochSeed(seed: number, epoch: number): number {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 0x100000000) >>> 0;
  return mix32([lo, hi, epoch >>> 0, Math.floor(epoch / 0x100000000) >>> 0]);
}

/** Fisher–Yates permutation of 0..n-1 for (seed, epoch). */
export function epochPermutation(n: number, seed: number, epoch: number): Uint32Array {
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  const next = mulberry32(epochSeed(seed, epoch));
  for (let i = n - 1; i > 0; i--) {
    const j = below(next, i + 1);
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}
