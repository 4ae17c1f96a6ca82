/** float16 rounding in JS, for formats whose producer passes weights through float16 first. */

const bits = new DataView(new ArrayBuffer(4));

/** The value of f32 x rounded to the nearest float16 (ties to even, overflow to ±inf, NaN kept). */
export function roundToF16(x: number): number {
  bits.setFloat32(0, x);
  const u = bits.getUint32(0);
  const biased = (u >>> 23) & 0xff;
  if (biased === 0xff) return Math.fround(x); // inf, NaN
  const a = Math.abs(Math.fround(x));
  // float16 spacing in a's binade: 2^(E-10) for normal float16 values, 2^-24 for subnormal ones.
  const ulp = 2 ** (Math.max(biased - 127, -14) - 10);
  const q = a / ulp; // exact: a is an f32 and ulp a power of two
  let r = Math.floor(q);
  const frac = q - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r += 1;
  const v = r * ulp > 65504 ? Infinity : r * ulp;
  return u >>> 31 ? -v : v;
}

/** Every element rounded to float16 and widened back (a new array). */
export function roundArrayToF16(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = roundToF16(x[i]);
  return out;
}
