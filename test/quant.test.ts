import test from 'ava';
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError, Tensor, ops } from '../src/index';
import type { Device } from '../src/index';
import {
  DYNAMIC_SIGNED_CODE, FP4_CODE, NF4_CODE, dequantize4bit, dequantizeInt8, quantize4bit, quantizeInt8Rowwise, recoverAbsmax,
} from '../src/quant/index';
import { roundToF16 } from '../src/quant/f16';
import { pythonFloatRepr } from '../src/quant/python_json';
import { devices, makeRng, roundBf16 } from './helpers/check';
import { f32Bits, halfMaxGap, NF4_MIDPOINTS, FP4_PIVOTS, refCode4, refInt8, refQuantize4, Q4 } from './helpers/quant_ref';

const f = Math.fround;
const nextUp = (x: number) => nextF32(x, +1);
const nextDown = (x: number) => nextF32(x, -1);
function nextF32(x: number, dir: 1 | -1): number {
  const b = new Float32Array([x]);
  const u = new Int32Array(b.buffer);
  if (x === 0) return dir * 2 ** -149;
  u[0] += (x > 0 ? 1 : -1) * dir;
  return b[0];
}

/** Runs the 4-bit kernel with outputs poisoned by `fill`, and returns the raw results. */
function kernel4(x: Float32Array, blocksize: number, type: Q4, device: Device, fill = 0xab) {
  const n = x.length;
  const xt = Tensor.from(x, [n], { device });
  const packed = Tensor.from(new Uint8Array((n + 1) >> 1).fill(fill), [(n + 1) >> 1], { device });
  const absmax = Tensor.from(new Float32Array(Math.ceil(n / blocksize)).fill(NaN), [Math.ceil(n / blocksize)], { device });
  ops.quantize4bit(packed, absmax, xt, blocksize, type);
  const out = { packed: packed.toArray() as Uint8Array, absmax: absmax.toFloat32Array() };
  for (const t of [xt, packed, absmax]) t.dispose();
  return out;
}

/** Random values whose blocks have very different scales, with NaNs, zero blocks and exact ties. */
function awkwardData(rng: ReturnType<typeof makeRng>, n: number, blocksize: number): Float32Array {
  const x = new Float32Array(n);
  for (let i0 = 0; i0 < n; i0 += blocksize) {
    const kind = rng.int(0, 6);
    const scale = 10 ** rng.int(-6, 4);
    for (let i = i0; i < Math.min(n, i0 + blocksize); i++) x[i] = kind === 0 ? 0 : rng.normal() * scale;
    if (kind === 1) x[i0 + rng.int(0, Math.min(blocksize, n - i0))] = NaN;
    if (kind === 2 && i0 + 2 < n) {
      // absmax exactly 1, then values exactly on the NF4 midpoints and FP4 pivots
      x[i0] = 1;
      for (let i = i0 + 1; i < Math.min(n, i0 + blocksize); i++) {
        const m = rng.next() < 0.5 ? NF4_MIDPOINTS[rng.int(0, 15)] : FP4_PIVOTS[rng.int(0, 7)] * (rng.next() < 0.5 ? -1 : 1);
        x[i] = m;
      }
    }
  }
  return x;
}

/** quant_codes.json, wherever the shared reference folder sits above this repo. */
function findCodesJson(): string | null {
  for (const start of [process.cwd(), __dirname]) {
    for (let dir = start; ; dir = path.dirname(dir)) {
      const p = path.join(dir, 'shared', 'reference', 'quant_codes.json');
      if (fs.existsSync(p)) return p;
      if (path.dirname(dir) === dir) break;
    }
  }
  return null;
}

test('code tables: the repo carries quant_codes.json exactly, in TypeScript and in the kernels', (t) => {
  t.is(NF4_CODE.length, 16);
  t.is(FP4_CODE.length, 16);
  t.is(DYNAMIC_SIGNED_CODE.length, 256);
  t.deepEqual([...NF4_CODE].sort((a, b) => a - b), [...NF4_CODE]);
  t.deepEqual([...DYNAMIC_SIGNED_CODE].sort((a, b) => a - b), [...DYNAMIC_SIGNED_CODE]);
  t.deepEqual([NF4_CODE[0], NF4_CODE[7], NF4_CODE[15]], [-1, 0, 1]);
  for (let i = 0; i < 8; i++) t.is(FP4_CODE[i + 8], -FP4_CODE[i]);
  const file = findCodesJson();
  if (file) {
    const json = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, number[]>;
    t.deepEqual(f32Bits(NF4_CODE), f32Bits(Float32Array.from(json.nf4)), 'nf4');
    t.deepEqual(f32Bits(FP4_CODE), f32Bits(Float32Array.from(json.fp4)), 'fp4');
    t.deepEqual(f32Bits(DYNAMIC_SIGNED_CODE), f32Bits(Float32Array.from(json.dynamic_signed_256)), 'dynamic_signed_256');
  } else {
    t.log('quant_codes.json not found above this repo: only the native tables are compared');
  }
  // The kernels' tables: dequantize every code with scale 1.
  const all4 = Tensor.from(Uint8Array.from({ length: 8 }, (_, j) => (2 * j) << 4 | (2 * j + 1)), [8]);
  const one = Tensor.from(new Float32Array([1]), [1]);
  for (const [type, code] of [['nf4', NF4_CODE], ['fp4', FP4_CODE]] as const) {
    const out = Tensor.empty([16]);
    ops.dequantize4bit(out, all4, one, 64, type);
    t.deepEqual(f32Bits(out.toFloat32Array()), f32Bits(code), `native ${type}`);
  }
  const q = Tensor.from(Uint8Array.from({ length: 256 }, (_, i) => i), [256]);
  const out = Tensor.empty([256]);
  ops.doubleDequant(out, q, one, 0, 256);
  t.deepEqual(f32Bits(out.toFloat32Array()), f32Bits(DYNAMIC_SIGNED_CODE), 'native dynamic map');
});

for (const device of devices()) {
  test(`${device}: NF4 and FP4 bytes and scales equal the published algorithm`, (t) => {
    const rng = makeRng(t);
    for (const type of ['nf4', 'fp4'] as const) {
      for (const [n, bs] of [[1, 64], [2, 32], [63, 32], [64, 64], [65, 64], [127, 128], [1001, 64], [4099, 4096], [3333, 256]]) {
        const x = awkwardData(rng, n, bs);
        const want = refQuantize4(x, bs, type);
        for (const fill of [0x00, 0xff]) {
          const got = kernel4(x, bs, type, device, fill);
          t.deepEqual(Buffer.from(got.packed).toString('hex'), Buffer.from(want.packed).toString('hex'), `${type} n=${n} bs=${bs} packed`);
          t.deepEqual(f32Bits(got.absmax), f32Bits(want.absmax), `${type} n=${n} bs=${bs} absmax`);
        }
      }
    }
  });

  test(`${device}: 4-bit edge cases — ties, NaN, zero block, short block, odd count, nibble order, FP4 sign`, (t) => {
    const hex = (x: number[], bs: number, type: Q4) => Buffer.from(kernel4(Float32Array.from(x), bs, type, device).packed).toString('hex');
    // First element in the high nibble: NF4 +1 is 0xF, -1 is 0x0; FP4 +1 is 0b0011, -1 0b1011.
    t.is(hex([1, -1], 32, 'nf4'), 'f0');
    t.is(hex([-1, 1], 32, 'nf4'), '0f');
    t.is(hex([1, -1], 32, 'fp4'), '3b');
    // A value exactly on midpoint k (absmax 1, so x·r = x) takes the lower code k; the next f32 up takes k+1.
    for (let k = 0; k < 15; k++) {
      const m = NF4_MIDPOINTS[k];
      const codes = kernel4(Float32Array.from([1, m, nextUp(m), nextDown(m)]), 32, 'nf4', device).packed;
      t.deepEqual([...codes], [0xf0 | k, ((k + 1) << 4) | k], `nf4 midpoint ${k}`);
    }
    for (let k = 0; k < 7; k++) {
      const p = FP4_PIVOTS[k];
      const got = kernel4(Float32Array.from([1, p, nextUp(p), -p, -nextUp(p), 0]), 32, 'fp4', device).packed;
      const bits = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];
      t.deepEqual([...got], [0x30 | bits[k], (bits[k + 1] << 4) | (8 | bits[k]), ((8 | bits[k + 1]) << 4) | 0], `fp4 pivot ${k}`);
    }
    // bitsandbytes' FP4 pivot 0.00260417 lies above the exact midpoint of 0 and 1/192: a value
    // between the two stays 0 (byte-compatible), where a plain nearest-value rule would give 1/192.
    const exactMid = f((FP4_CODE[0] + FP4_CODE[1]) / 2);
    const between = nextUp(exactMid);
    t.true(between < FP4_PIVOTS[0] && Math.abs(between - FP4_CODE[1]) < Math.abs(between));
    t.is(hex([1, between], 32, 'fp4'), '30');
    // FP4 sign: -0 and NaN keep it clear; a tiny negative sets it on a zero magnitude.
    t.is(hex([1, -0, -1e-30, NaN], 32, 'fp4'), '3080');
    // NaN takes code 0 in a block with a scale; NaN does not count towards absmax.
    const nanBlock = kernel4(Float32Array.from([0.5, NaN, -0.25, NaN]), 32, 'nf4', device);
    t.is(nanBlock.absmax[0], 0.5);
    t.is(Buffer.from(nanBlock.packed).toString('hex'), `f0${refCode4('nf4', -0.5).toString(16)}0`);
    // An all-zero block: absmax 0 and the code of 0.0 (0b0111 NF4, 0 FP4), next to a normal block.
    const z = new Float32Array(96);
    z.fill(0.75, 0, 32);
    const nz = kernel4(z, 32, 'nf4', device);
    t.deepEqual([...nz.absmax], [0.75, 0, 0]);
    t.is(Buffer.from(nz.packed.subarray(16)).toString('hex'), '77'.repeat(32));
    t.is(Buffer.from(kernel4(z, 32, 'fp4', device).packed.subarray(16)).toString('hex'), '00'.repeat(32));
    // Short last block: its own absmax; odd count: the last low nibble is the code of 0.0.
    const x = Float32Array.from({ length: 69 }, (_, i) => (i < 64 ? 100 : [0.5, -0.5, 0.25, -2, 1][i - 64]));
    const s = kernel4(x, 64, 'nf4', device);
    t.deepEqual([...s.absmax], [100, 2]);
    t.is(s.packed.length, 35);
    t.is(s.packed[34], (refCode4('nf4', 0.5) << 4) | 0b0111);
    // FP4 odd count: 1 -> 0b0011, 0.2 -> 1/6 (0b0110), 0.5 -> 0b0101, pad 0
    t.is(hex([1, 0.2, 0.5], 32, 'fp4'), '3650');
  });

  test(`${device}: 4-bit scaling multiplies by the f32 reciprocal, not divides`, (t) => {
    // Find values where x·f32(1/a) and x/a fall on different sides of an NF4 midpoint.
    let found = 0;
    for (const a of [3, 7, 0.1, 1.7, 5, 0.3].map(f)) {
      const r = f(1 / a);
      for (const m of NF4_MIDPOINTS) {
        for (let x = f(m * a), k = 0; k < 8; k++, x = nextUp(x)) {
          const byMul = refCode4('nf4', f(x * r)), byDiv = refCode4('nf4', f(x / a));
          if (byMul === byDiv) continue;
          found++;
          const got = kernel4(Float32Array.from([a, x]), 32, 'nf4', device).packed[0] & 15;
          t.is(got, byMul, `a=${a} x=${x}: multiply gives ${byMul}, divide ${byDiv}`);
        }
      }
    }
    t.true(found >= 3, `only ${found} cases where the two roundings differ`);
  });

  test(`${device}: quantize -> dequantize stays within half the widest code gap × absmax`, (t) => {
    const rng = makeRng(t);
    for (const type of ['nf4', 'fp4'] as const) {
      const code = type === 'nf4' ? NF4_CODE : FP4_CODE;
      // FP4's pivots sit up to 3.3e-7 off the exact midpoints
      const bound = halfMaxGap(code) + 1e-6;
      for (const [rows, cols, bs] of [[1, 1, 64], [7, 13, 32], [33, 129, 64], [5, 1000, 1024]]) {
        const w = Float32Array.from({ length: rows * cols }, () => rng.normal() * (rng.next() < 0.1 ? 10 : 0.05));
        const wt = Tensor.from(w, [rows, cols], { device });
        const s = quantize4bit(wt, { quantType: type, blocksize: bs, doubleQuant: false });
        t.deepEqual(s.shape, [rows, cols]);
        const absmax = s.absmax as Float32Array;
        const deq = dequantize4bit(s, { device });
        t.deepEqual(deq.shape, [rows, cols]);
        const d = deq.toFloat32Array();
        for (let i = 0; i < w.length; i++) {
          const nib = i % 2 === 0 ? s.packed[i >> 1] >> 4 : s.packed[i >> 1] & 15;
          if (d[i] !== f(code[nib] * absmax[Math.floor(i / bs)])) return t.fail(`${type} element ${i}: ${d[i]} is not code·absmax`);
          if (Math.abs(d[i] - w[i]) > bound * absmax[Math.floor(i / bs)]) return t.fail(`${type} element ${i}: |${d[i]} - ${w[i]}| too large`);
        }
        const bf = dequantize4bit(s, { device, dtype: 'bf16' });
        t.is(bf.dtype, 'bf16');
        t.deepEqual(f32Bits(bf.toFloat32Array()), f32Bits(roundBf16(d)), `${type} bf16 is the f32 result rounded`);
        for (const x of [wt, deq, bf]) x.dispose();
      }
    }
    t.pass();
  });

  test(`${device}: double quantization — offset, nested scales, nearest codes with ties to even, recovery bound`, (t) => {
    const rng = makeRng(t);
    const dyn = DYNAMIC_SIGNED_CODE;
    const mid = (k: number) => f(f(dyn[k] + dyn[k + 1]) * 0.5);
    // Block scales as a 4-bit quantization makes them (positive, spread), plus a tie block: values
    // whose scaled form lands exactly on every f32 midpoint of the map (absmax2 1, offset 0).
    const ties: number[] = [1, -1];
    for (let k = 0; k < 255; k++) ties.push(mid(k), -mid(k));
    const cases: Array<[Float32Array, number]> = [
      [Float32Array.from({ length: 1000 }, () => Math.abs(rng.normal()) * 0.03 + 1e-3), 256],
      [Float32Array.from({ length: 77 }, () => Math.abs(rng.normal()) * 5), 256],
      [Float32Array.from([0.25]), 256], // one scale: offset = it, absmax2 = 0, code 0, recovered exactly
      [Float32Array.from(ties), 4096],
    ];
    let tiesSeen = 0;
    for (const [a, bs] of cases) {
      const n = a.length, nb = Math.ceil(n / bs);
      const at = Tensor.from(a, [n], { device });
      const q = Tensor.from(new Uint8Array(n).fill(0xab), [n], { device });
      const a2 = Tensor.from(new Float32Array(nb).fill(NaN), [nb], { device });
      const offset = ops.doubleQuant(q, a2, at, bs);
      let sum = 0;
      for (const v of a) sum += v;
      t.is(offset, f(sum / n), 'offset is the f32 mean');
      const codes = q.toArray() as Uint8Array, absmax2 = a2.toFloat32Array();
      for (let b = 0; b < nb; b++) {
        let m = 0;
        for (let i = b * bs; i < Math.min(n, (b + 1) * bs); i++) m = Math.max(m, Math.abs(f(a[i] - offset)));
        t.is(absmax2[b], m, `absmax2[${b}]`);
      }
      for (let i = 0; i < n; i++) {
        const x = f(f(a[i] - offset) * f(1 / absmax2[Math.floor(i / bs)]));
        const c = codes[i];
        if (Number.isNaN(x)) {
          t.is(c, 0, 'NaN (a zero block) takes code 0');
          continue;
        }
        const lo = c > 0 ? mid(c - 1) : -Infinity, hi = c < 255 ? mid(c) : Infinity;
        if (!(lo <= x && x <= hi)) return t.fail(`element ${i}: x=${x} is not nearest to code ${c}`);
        if (x === lo || x === hi) {
          tiesSeen++;
          if (c % 2 !== 0) return t.fail(`element ${i}: x=${x} on a midpoint went to odd code ${c}`);
        }
      }
      // recovery: exact formula, and within half the widest gap of the map × absmax2
      const rec = Tensor.from(new Float32Array(n).fill(NaN), [n], { device });
      ops.doubleDequant(rec, q, a2, offset, bs);
      const r = rec.toFloat32Array();
      const gap = halfMaxGap(dyn);
      for (let i = 0; i < n; i++) {
        const s2 = absmax2[Math.floor(i / bs)];
        if (r[i] !== f(f(dyn[codes[i]] * s2) + offset)) return t.fail(`recover ${i}: ${r[i]}`);
        if (Math.abs(r[i] - a[i]) > gap * s2 + 4 * 2 ** -23 * (Math.abs(a[i]) + s2)) return t.fail(`recover ${i}: |${r[i]} - ${a[i]}| too large`);
      }
      for (const x of [at, q, a2, rec]) x.dispose();
    }
    t.true(tiesSeen >= 500, `only ${tiesSeen} exact ties exercised`);
  });

  test(`${device}: 4-bit with double quantization round-trips through the state`, (t) => {
    const rng = makeRng(t);
    const w = Float32Array.from({ length: 64 * 300 + 17 }, () => rng.normal() * 0.02);
    const s = quantize4bit(Tensor.from(w, [w.length], { device }), { blocksize: 64 });
    t.true(s.absmax instanceof Uint8Array && s.nested !== null);
    t.is(s.nested!.absmax.length, Math.ceil(Math.ceil(w.length / 64) / 256));
    const plain = quantize4bit(w, { blocksize: 64, doubleQuant: false });
    t.deepEqual(Buffer.from(s.packed), Buffer.from(plain.packed), 'double quantization leaves the 4-bit codes alone');
    const rec = recoverAbsmax(s);
    const exact = plain.absmax as Float32Array;
    const gap = halfMaxGap(DYNAMIC_SIGNED_CODE);
    for (let b = 0; b < rec.length; b++) {
      const bound = gap * s.nested!.absmax[Math.floor(b / 256)] + 1e-7;
      if (Math.abs(rec[b] - exact[b]) > bound) return t.fail(`block ${b}: ${rec[b]} vs ${exact[b]}`);
    }
    const d = dequantize4bit(s, { device }).toFloat32Array();
    for (let i = 0; i < w.length; i++) {
      const b = Math.floor(i / 64);
      if (Math.abs(d[i] - w[i]) > halfMaxGap(NF4_CODE) * Math.max(rec[b], exact[b]) + Math.abs(rec[b] - exact[b]) + 1e-6 * exact[b]) {
        return t.fail(`element ${i}: ${d[i]} vs ${w[i]}`);
      }
    }
    t.pass();
  });

  test(`${device}: int8 rows — round half to even against float64, dequantization, zero rows`, (t) => {
    const rng = makeRng(t);
    for (const [rows, cols] of [[1, 1], [7, 13], [33, 129], [3, 1000]]) {
      const w = Float32Array.from({ length: rows * cols }, () => rng.normal() * 0.1);
      if (rows > 3) w.fill(0, cols, 2 * cols); // a zero row
      const want = refInt8(w, rows, cols);
      const wt = Tensor.from(w, [rows, cols], { device });
      const cb = Tensor.from(new Int8Array(rows * cols).fill(-99), [rows, cols], { device });
      const scb = Tensor.from(new Float32Array(rows).fill(NaN), [rows], { device });
      ops.quantizeInt8Rowwise(cb, scb, wt);
      t.deepEqual([...(cb.toArray() as Int8Array)], [...want.cb], `cb ${rows}x${cols}`);
      t.deepEqual(f32Bits(scb.toFloat32Array()), f32Bits(want.scb), `scb ${rows}x${cols}`);
      const s = quantizeInt8Rowwise(wt);
      const d = dequantizeInt8(s, { device }).toFloat32Array();
      for (let i = 0; i < w.length; i++) {
        const r = Math.floor(i / cols);
        if (d[i] !== f(f(want.cb[i] * want.scb[r]) * f(1 / 127))) return t.fail(`dequant ${i}`);
        if (Math.abs(d[i] - w[i]) > (want.scb[r] / 254) * (1 + 1e-5)) return t.fail(`error ${i}`);
      }
      t.deepEqual(f32Bits(dequantizeInt8(s, { device, dtype: 'bf16' }).toFloat32Array()), f32Bits(roundBf16(d)));
      for (const x of [wt, cb, scb]) x.dispose();
    }
    // Ties (scale exactly 1): half to even.
    const tie = quantizeInt8Rowwise(Float32Array.from([127, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -126.5]), { shape: [1, 8] });
    t.deepEqual([...tie.cb], [127, 0, 2, 2, 0, -2, 4, -126]);
  });
}

test('bad arguments are PeftkitErrors naming what is wrong', (t) => {
  const w = new Float32Array(100);
  const code = (fn: () => unknown) => (t.throws(fn, { instanceOf: PeftkitError }) as PeftkitError);
  for (const bs of [16, 48, 8192, 63.5]) {
    const e = code(() => quantize4bit(w, { blocksize: bs }));
    t.is(e.code, 'E_ARG');
    t.regex(e.message, /blocksize: expected one of 32, 64, 128, 256, 512, 1024, 2048, 4096/);
  }
  t.is(code(() => quantize4bit(w, { quantType: 'int4' as never })).code, 'E_ARG');
  t.is(code(() => quantize4bit(w, { shape: [3, 33] })).code, 'E_SHAPE');
  t.is(code(() => quantize4bit(new Float32Array(0))).code, 'E_SHAPE');
  t.is(code(() => quantize4bit(Tensor.zeros([4], { dtype: 'bf16' }))).code, 'E_DTYPE');
  // the native ops check too
  const x = Tensor.zeros([100]);
  const e1 = code(() => ops.quantize4bit(Tensor.zeros([50], { dtype: 'u8' }), Tensor.zeros([2]), x, 100, 'nf4'));
  t.is(e1.code, 'E_ARG');
  t.regex(e1.message, /power of two from 32 to 4096.*got 100/);
  const e2 = code(() => ops.quantize4bit(Tensor.zeros([49], { dtype: 'u8' }), Tensor.zeros([2]), x, 64, 'nf4'));
  t.is(e2.code, 'E_SHAPE');
  t.regex(e2.message, /packed: expected 50 elements/);
  t.is(code(() => ops.quantize4bit(Tensor.zeros([50], { dtype: 'u8' }), Tensor.zeros([3]), x, 64, 'nf4')).code, 'E_SHAPE');
  t.is(code(() => ops.quantize4bit(Tensor.zeros([50]), Tensor.zeros([2]), x, 64, 'nf4')).code, 'E_DTYPE');
  t.is(code(() => ops.dequantize4bit(Tensor.zeros([100], { dtype: 'i32' }), Tensor.zeros([50], { dtype: 'u8' }), Tensor.zeros([2]), 64, 'nf4')).code, 'E_DTYPE');
  const e3 = code(() => ops.quantize4bit(Tensor.zeros([50], { dtype: 'u8' }), Tensor.zeros([2]), x, 64, 'nf5' as never));
  t.is(e3.code, 'E_ARG');
  t.regex(e3.message, /quantType: expected 'nf4' or 'fp4'/);
  t.is(code(() => ops.doubleQuant(Tensor.zeros([2], { dtype: 'u8' }), Tensor.zeros([1]), Tensor.zeros([2]), 100)).code, 'E_ARG');
  t.is(code(() => ops.doubleQuant(Tensor.zeros([3], { dtype: 'u8' }), Tensor.zeros([1]), Tensor.zeros([2]), 256)).code, 'E_SHAPE');
  t.is(code(() => ops.quantizeInt8Rowwise(Tensor.zeros([4], { dtype: 'i8' }), Tensor.zeros([1]), Tensor.zeros([4]))).code, 'E_SHAPE');
  t.is(code(() => ops.quantizeInt8Rowwise(Tensor.zeros([2, 2], { dtype: 'u8' }), Tensor.zeros([2]), Tensor.zeros([2, 2]))).code, 'E_DTYPE');
  t.is(code(() => ops.quantizeInt8Rowwise(Tensor.zeros([2, 2], { dtype: 'i8' }), Tensor.zeros([3]), Tensor.zeros([2, 2]))).code, 'E_SHAPE');
  t.is(code(() => quantizeInt8Rowwise(new Float32Array(6))).code, 'E_ARG');
  t.is(code(() => quantizeInt8Rowwise(new Float32Array(6), { shape: [4, 2] })).code, 'E_SHAPE');
  // a state whose parts do not fit
  const s = quantize4bit(w, { blocksize: 32 });
  const e4 = code(() => dequantize4bit({ ...s, packed: new Uint8Array(49) }));
  t.is(e4.code, 'E_SHAPE');
  t.regex(e4.message, /state\.packed: expected a Uint8Array of 50 elements/);
  t.is(code(() => dequantize4bit({ ...s, absmax: new Float32Array(4) })).code, 'E_SHAPE');
  t.is(code(() => dequantize4bit({ ...s, nested: { ...s.nested!, offset: NaN } })).code, 'E_ARG');
  t.is(code(() => dequantize4bit(s, { dtype: 'f16' as never })).code, 'E_ARG');
});

test('float16 rounding and Python float text, used by the file formats', (t) => {
  t.is(roundToF16(1 + 2 ** -11), 1); // tie -> even
  t.is(roundToF16(1 + 3 * 2 ** -11), 1 + 2 ** -9);
  t.is(roundToF16(65519), 65504);
  t.is(roundToF16(65520), Infinity);
  t.is(roundToF16(-3 * 2 ** -26), -(2 ** -24)); // subnormal: 0.75 ulp rounds up
  t.is(roundToF16(2 ** -25), 0); // half the smallest subnormal: tie -> even (0)
  t.is(roundToF16(0.1), 0.0999755859375);
  const cases: Array<[number, string]> = [
    [1, '1.0'], [0.5, '0.5'], [1e-5, '1e-05'], [1.5e-5, '1.5e-05'], [1e16, '1e+16'], [0.1 + 0.2, '0.30000000000000004'],
    [1234567890123456, '1234567890123456.0'], [12345678901234567, '1.2345678901234568e+16'], [2 ** -20, '9.5367431640625e-07'],
    [-3, '-3.0'], [0.0001, '0.0001'], [123456.789, '123456.789'],
  ];
  for (const [x, s] of cases) t.is(pythonFloatRepr(x), s);
});
