import test from 'ava';
import { PeftkitError, Tensor, ops } from '../src/index';
import { devices, makeRng, poisoned, randn, relErr, roundBf16 } from './helpers/check';
import { disposeWeight, quantWeight } from './helpers/quant_weight';
import type { Format } from './helpers/quant_weight';

/** float64 alpha·X·op(W) + beta·C0 with W [rows, cols] row-major. */
function reference(x: Float32Array, w: Float32Array, c0: Float32Array | null, M: number, rows: number, cols: number,
  transB: boolean, alpha: number, beta: number): Float64Array {
  const K = transB ? cols : rows, N = transB ? rows : cols;
  const out = new Float64Array(M * N);
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[i * K + k] * (transB ? w[j * cols + k] : w[k * cols + j]);
      out[i * N + j] = alpha * s + (c0 ? beta * c0[i * N + j] : 0);
    }
  return out;
}

// [M, rows (out features), cols (in features), blocksize]: K not a multiple of the block, M = 1,
// N = 1, rows·cols odd (the last byte half used), blocksizes 32..4096, several kc slices.
const SHAPES: Array<[number, number, number, number]> = [
  [7, 13, 100, 64],
  [1, 33, 77, 128],
  [19, 1, 129, 64],
  [5, 41, 300, 4096],
  [3, 37, 61, 32],
  [45, 90, 600, 64],
];

for (const device of devices()) {
  for (const format of ['nf4', 'fp4', 'int8'] as Format[]) {
    test(`gemmQuant ${format} matches gemm on the dequantized weight, both orientations (${device})`, (t) => {
      const rng = makeRng(t);
      for (const [M, rows, cols, bs] of SHAPES) {
        const { q, deq } = quantWeight(rng, format, rows, cols, bs, device);
        const wv = deq.toFloat32Array();
        for (const transB of [true, false]) {
          const K = transB ? cols : rows, N = transB ? rows : cols;
          const x = randn(rng, M * K);
          const X = Tensor.from(x, [M, K], { device });
          const C = poisoned([M, N], device);
          ops.gemmQuant(C, X, q, { transB });
          const Cref = poisoned([M, N], device);
          ops.gemm(Cref, X, deq, { transB });
          const got = C.toFloat32Array();
          const what = `${format} M=${M} W=[${rows},${cols}] bs=${bs} transB=${transB}`;
          const e1 = relErr(got, Cref.toFloat32Array());
          t.true(e1 <= 1e-5, `${what}: vs gemm ${e1}`);
          const e2 = relErr(got, reference(x, wv, null, M, rows, cols, transB, 1, 0));
          t.true(e2 <= 1e-5, `${what}: vs float64 ${e2}`);
          for (const tt of [X, C, Cref]) tt.dispose();
        }
        disposeWeight(q);
        deq.dispose();
      }
    });
  }

  // bf16 compute (QLoRA's compute_dtype=bfloat16): X and the dequantized W are read rounded to
  // bf16, so the reference is float64 on those roundings and the bound stays f32's.
  for (const format of ['nf4', 'fp4', 'int8'] as Format[]) {
    test(`gemmQuant ${format} bf16 compute matches float64 on the dequantized W and X rounded to bf16 (${device})`, (t) => {
      const rng = makeRng(t);
      for (const [M, rows, cols, bs] of SHAPES) {
        const { q, deq } = quantWeight(rng, format, rows, cols, bs, device);
        const wr = roundBf16(deq.toFloat32Array());
        for (const transB of [true, false]) {
          const K = transB ? cols : rows, N = transB ? rows : cols;
          const x = randn(rng, M * K), c0 = randn(rng, M * N);
          const what = `${format} M=${M} W=[${rows},${cols}] bs=${bs} transB=${transB}`;
          for (const xDtype of ['f32', 'bf16'] as const) {
            const X = Tensor.from(x, [M, K], { device, dtype: xDtype });
            const C = Tensor.from(c0, [M, N], { device });
            ops.gemmQuant(C, X, q, { transB, alpha: 0.75, beta: 0.5, compute: 'bf16' });
            const got = C.toFloat32Array();
            const e = relErr(got, reference(roundBf16(x), wr, c0, M, rows, cols, transB, 0.75, 0.5));
            t.true(e <= 1e-5, `${what} X ${xDtype}: ${e}`);
            if (K >= 16 && xDtype === 'f32') {
              // Really rounded: against the unrounded operands the product is ~1e-3 off.
              const exact = reference(x, deq.toFloat32Array(), c0, M, rows, cols, transB, 0.75, 0.5);
              t.true(relErr(got, exact) > 1e-4, `${what}: equals the f32 product, nothing was rounded`);
            }
            X.dispose();
            C.dispose();
          }
        }
        disposeWeight(q);
        deq.dispose();
      }
    });
  }

  test(`gemmQuant alpha, beta accumulate and bf16 X (${device})`, async (t) => {
    const rng = makeRng(t);
    const [M, rows, cols, bs] = [23, 53, 171, 64];
    for (const format of ['nf4', 'int8'] as Format[]) {
      const { q, deq } = quantWeight(rng, format, rows, cols, bs, device);
      const wv = deq.toFloat32Array();
      for (const transB of [true, false]) {
        const K = transB ? cols : rows, N = transB ? rows : cols;
        const x = randn(rng, M * K), c0 = randn(rng, M * N);
        const X = Tensor.from(x, [M, K], { device });
        const C = Tensor.from(c0, [M, N], { device });
        await ops.gemmQuantAsync(C, X, q, { transB, alpha: 1.5, beta: 0.5 });
        const e = relErr(C.toFloat32Array(), reference(x, wv, c0, M, rows, cols, transB, 1.5, 0.5));
        t.true(e <= 1e-5, `${format} transB=${transB} beta: ${e}`);
        const xb = roundBf16(x);
        const Xb = Tensor.from(x, [M, K], { device, dtype: 'bf16' });
        const Cb = poisoned([M, N], device);
        ops.gemmQuant(Cb, Xb, q, { transB });
        const eb = relErr(Cb.toFloat32Array(), reference(xb, wv, null, M, rows, cols, transB, 1, 0));
        t.true(eb <= 1e-5, `${format} transB=${transB} bf16 X: ${eb}`);
        for (const tt of [X, C, Xb, Cb]) tt.dispose();
      }
      disposeWeight(q);
      deq.dispose();
    }
  });
}

test('gemmQuant rejects bad arguments with PeftkitError codes', (t) => {
  const rng = makeRng(t);
  const { q, deq } = quantWeight(rng, 'nf4', 6, 70, 64, 'cpu');
  const { q: q8, deq: deq8 } = quantWeight(rng, 'int8', 6, 70, 64, 'cpu');
  if (q.format === 'int8' || q8.format !== 'int8') throw new Error('unreachable');
  const X = Tensor.from(randn(rng, 3 * 70), [3, 70]);
  const C = Tensor.zeros([3, 6]);
  const code = (f: () => void) => t.throws(f, { instanceOf: PeftkitError })?.code;
  const f32Packed = Tensor.zeros([210]);
  t.is(code(() => ops.gemmQuant(C, X, { ...q, packed: f32Packed })), 'E_DTYPE');
  const shortAbsmax = Tensor.zeros([6]);
  t.is(code(() => ops.gemmQuant(C, X, { ...q, absmax: shortAbsmax })), 'E_SHAPE');
  t.is(code(() => ops.gemmQuant(C, X, { ...q, blocksize: 48 })), 'E_ARG');
  t.is(code(() => ops.gemmQuant(C, X, { ...q, shape: [6, 71] })), 'E_SHAPE');
  t.is(code(() => ops.gemmQuant(C, X, { ...q, format: 'q3' as 'nf4' })), 'E_ARG');
  t.is(code(() => ops.gemmQuant(C, X, q, { transB: false })), 'E_SHAPE');
  const Cwrong = Tensor.zeros([3, 7]);
  t.is(code(() => ops.gemmQuant(Cwrong, X, q)), 'E_SHAPE');
  const Cbf = Tensor.zeros([3, 6], { dtype: 'bf16' });
  t.is(code(() => ops.gemmQuant(Cbf, X, q)), 'E_DTYPE');
  const Xint = Tensor.zeros([3, 70], { dtype: 'i32' });
  t.is(code(() => ops.gemmQuant(C, Xint, q)), 'E_DTYPE');
  const u8cb = Tensor.zeros([6, 70], { dtype: 'u8' });
  t.is(code(() => ops.gemmQuant(C, X, { ...q8, cb: u8cb })), 'E_DTYPE');
  const longScb = Tensor.zeros([7]);
  t.is(code(() => ops.gemmQuant(C, X, { ...q8, scb: longScb })), 'E_SHAPE');
  // the weights themselves were fine
  ops.gemmQuant(C, X, q);
  ops.gemmQuant(C, X, q8);
  t.pass();
  for (const tt of [X, C, f32Packed, shortAbsmax, Cwrong, Cbf, Xint, u8cb, longScb, deq, deq8]) tt.dispose();
  disposeWeight(q);
  disposeWeight(q8);
});
