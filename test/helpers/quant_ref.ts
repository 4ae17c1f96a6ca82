/**
 * Reference quantizers written in the tests from the published descriptions of bitsandbytes'
 * formats (QUANT_FORMATS.md), in f32 arithmetic via Math.fround, independent of the engine.
 */
const f = Math.fround;

/** The NF4 midpoints as published with the format, ascending. */
export const NF4_MIDPOINTS = [
  -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544, -0.23460740596055984,
  -0.13791173323988914, -0.045525018125772476, 0.03979014977812767, 0.1202552504837513, 0.2035212516784668,
  0.2920137718319893, 0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
].map(f);

/**
 * bitsandbytes decides an FP4 magnitude with these f32 literals (its dQuantizeFP4), ascending; the
 * magnitude of rank k has the 3-bit pattern FP4_RANK_BITS[k] (fp4 table: 0, 1/192, 1/6, 1/4, 1/3,
 * 1/2, 2/3, 1 sit at patterns 0, 1, 6, 7, 4, 5, 2, 3).
 */
export const FP4_PIVOTS = [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333].map(f);
export const FP4_RANK_BITS = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

export type Q4 = 'nf4' | 'fp4';

/** Code of an already scaled value: thresholds strictly below it (ties stay low), NaN -> 0. */
export function refCode4(type: Q4, x: number): number {
  if (Number.isNaN(x)) return 0;
  if (type === 'nf4') return NF4_MIDPOINTS.filter((m) => x > m).length;
  const rank = FP4_PIVOTS.filter((p) => Math.abs(x) > p).length;
  return FP4_RANK_BITS[rank] | (x < 0 ? 8 : 0);
}

export const zeroCode = (type: Q4) => (type === 'nf4' ? 0b0111 : 0);

/** Blockwise 4-bit as published: absmax per block, x·f32(1/absmax), pack high nibble first. */
export function refQuantize4(x: Float32Array, blocksize: number, type: Q4): { packed: Uint8Array; absmax: Float32Array } {
  const n = x.length;
  const blocks = Math.ceil(n / blocksize);
  const absmax = new Float32Array(blocks);
  const codes = new Uint8Array(n + 1).fill(zeroCode(type)); // an odd n pads with the code of 0.0
  for (let b = 0; b < blocks; b++) {
    const i0 = b * blocksize, i1 = Math.min(n, i0 + blocksize);
    let m = 0;
    for (let i = i0; i < i1; i++) if (Math.abs(x[i]) > m) m = Math.abs(x[i]);
    absmax[b] = m;
    const r = f(1 / m);
    for (let i = i0; i < i1; i++) {
      if (Number.isNaN(x[i])) codes[i] = 0;
      else if (m === 0) codes[i] = zeroCode(type);
      else codes[i] = refCode4(type, f(x[i] * r));
    }
  }
  const packed = new Uint8Array((n + 1) >> 1);
  for (let j = 0; j < packed.length; j++) packed[j] = (codes[2 * j] << 4) | codes[2 * j + 1];
  return { packed, absmax };
}

/** Round half to even, of a float64. */
export function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** LLM.int8 rows as published: scb = row absmax, cb = round_half_even(w·f32(127/scb)). */
export function refInt8(w: Float32Array, rows: number, cols: number): { cb: Int8Array; scb: Float32Array } {
  const cb = new Int8Array(rows * cols);
  const scb = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    for (let c = 0; c < cols; c++) m = Math.max(m, Math.abs(w[r * cols + c]));
    scb[r] = m;
    const scale = f(127 / m);
    for (let c = 0; c < cols; c++) {
      const v = f(w[r * cols + c] * scale);
      cb[r * cols + c] = Number.isNaN(v) ? 0 : roundHalfEven(v);
    }
  }
  return { cb, scb };
}

/** Half the widest gap between neighbouring values of a code book. */
export function halfMaxGap(code: Float32Array): number {
  const s = [...code].sort((a, b) => a - b);
  let g = 0;
  for (let i = 1; i < s.length; i++) g = Math.max(g, s[i] - s[i - 1]);
  return g / 2;
}

/** The f32 bit patterns of an array, for exact comparisons that see -0 and NaN. */
export const f32Bits = (a: Float32Array) => [...new Uint32Array(a.buffer, a.byteOffset, a.length)];
