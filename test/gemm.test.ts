import test from 'ava';
import { Tensor, PeftkitError, ops } from '../src/index';
import { assertClose, devices, makeRng, poisoned, randn, roundBf16 } from './helpers/check';

/** float64 C = alpha·op(A)·op(B) + beta·C0 */
function refGemm(
  A: Float32Array, B: Float32Array, C0: Float32Array | null, M: number, N: number, K: number,
  ta: boolean, tb: boolean, alpha: number, beta: number,
): Float64Array {
  const C = new Float64Array(M * N);
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += A[ta ? k * M + i : i * K + k] * B[tb ? j * K + k : k * N + j];
      C[i * N + j] = alpha * s + (C0 ? beta * C0[i * N + j] : 0);
    }
  return C;
}

const SHAPES: Array<[number, number, number]> = [
  [1, 1, 1], [1, 37, 19], [7, 1, 33], [17, 23, 1], [33, 65, 129], [64, 48, 96], [100, 75, 211], [130, 257, 67],
];

for (const device of devices()) {
  for (const [ta, tb] of [[false, true], [false, false], [true, false], [true, true]] as const) {
    test(`${device}: f32 gemm matches float64 (transA=${ta}, transB=${tb})`, (t) => {
      const rng = makeRng(t);
      for (const [M, N, K] of SHAPES) {
        const a = randn(rng, M * K), b = randn(rng, K * N);
        const A = Tensor.from(a, ta ? [K, M] : [M, K], { device });
        const B = Tensor.from(b, tb ? [N, K] : [K, N], { device });
        const C = poisoned([M, N], device);
        ops.gemm(C, A, B, { transA: ta, transB: tb });
        assertClose(t, C.toFloat32Array(), refGemm(a, b, null, M, N, K, ta, tb, 1, 0), 1e-5, `M=${M} N=${N} K=${K}`);
        // beta = 1 accumulates into C.
        const c0 = randn(rng, M * N);
        C.write(c0);
        ops.gemm(C, A, B, { transA: ta, transB: tb, alpha: 0.5, beta: 1 });
        assertClose(t, C.toFloat32Array(), refGemm(a, b, c0, M, N, K, ta, tb, 0.5, 1), 1e-5, `accumulate M=${M} N=${N} K=${K}`);
      }
    });
  }

  test(`${device}: bf16 gemm (f32 accumulation) matches float64 on the rounded inputs`, (t) => {
    const rng = makeRng(t);
    for (const [M, N, K] of SHAPES) {
      for (const [ta, tb] of [[false, true], [false, false], [true, false]] as const) {
        const a = roundBf16(randn(rng, M * K)), b = roundBf16(randn(rng, K * N));
        const A = Tensor.from(a, ta ? [K, M] : [M, K], { device, dtype: 'bf16' });
        const B = Tensor.from(b, tb ? [N, K] : [K, N], { device, dtype: 'bf16' });
        const C = poisoned([M, N], device);
        ops.gemm(C, A, B, { transA: ta, transB: tb });
        assertClose(t, C.toFloat32Array(), refGemm(a, b, null, M, N, K, ta, tb, 1, 0), 1e-5, `f32 out M=${M} N=${N} K=${K}`);
        const Cb = poisoned([M, N], device, 'bf16');
        ops.gemm(Cb, A, B, { transA: ta, transB: tb });
        assertClose(t, Cb.toFloat32Array(), refGemm(a, b, null, M, N, K, ta, tb, 1, 0), 1e-2, `bf16 out M=${M} N=${N} K=${K}`);
      }
    }
  });
}

test('gemm async resolves with the same result', async (t) => {
  const rng = makeRng(t);
  const [M, N, K] = [70, 50, 90];
  const a = randn(rng, M * K), b = randn(rng, N * K);
  const A = Tensor.from(a, [M, K]), B = Tensor.from(b, [N, K]);
  const C = poisoned([M, N]);
  const p = ops.gemmAsync(C, A, B, { transB: true });
  A.dispose(); // the running op keeps its inputs alive
  await p;
  assertClose(t, C.toFloat32Array(), refGemm(a, b, null, M, N, K, false, true, 1, 0), 1e-5, 'async');
  await t.throwsAsync(ops.gemmAsync(C, A, B, { transB: true }), { instanceOf: PeftkitError, code: 'E_DISPOSED' });
});

test('gemm rejects mismatched shapes and dtypes', (t) => {
  const A = Tensor.zeros([4, 5]), B = Tensor.zeros([6, 4]), C = Tensor.zeros([4, 6]);
  const e = t.throws(() => ops.gemm(C, A, B, { transB: true }), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_SHAPE');
  t.regex(e!.message, /inner dimensions/);
  const I = Tensor.zeros([4, 5], { dtype: 'i32' });
  t.is(t.throws(() => ops.gemm(C, I, B, {}), { instanceOf: PeftkitError })?.code, 'E_DTYPE');
  t.is(t.throws(() => ops.gemm(C, A, {} as Tensor, {}), { instanceOf: PeftkitError })?.code, 'E_ARG');
});
