/**
 * An LLM.int8 product whose int32 sums pass 2^24 in a way f32 summation would get wrong (shared by
 * test/llm_int8.test.ts and its per-ISA child, llm_int8_isa_check.ts).
 */
import { ops, Tensor } from '../../src/index';
import type { Device } from '../../src/index';
import type { QuantWeight } from '../../src/ops/gemm_quant';

const f = Math.fround;

/**
 * X [3, 2053], W [5, 2053] whose codes are all ±127 with aligned signs except 0 at k = 1500, 2049,
 * 2051: the K-chunks of 1024 sum to 1024, 1023 and 3 products of 127², 33,064,450 in all, past
 * 2^24. Adding the chunks in f32 would give 33,064,452. Returns every output and the one value
 * they must all equal: f32(exact sum) scaled in f32 by SCA = 1.5, SCB = f32(0.02), f32(1/127²).
 */
export function exactSumCase(device: Device): { got: number[]; expected: number; f32RunningSumDiffers: boolean } {
  const M = 3, N = 5, K = 2053;
  const wv = new Float32Array(N * K).fill(0.02), xv = new Float32Array(M * K).fill(1.5);
  for (let k = 0; k < K; k += 3) {
    for (let j = 0; j < N; j++) wv[j * K + k] = -0.02;
    for (let i = 0; i < M; i++) xv[i * K + k] = -1.5;
  }
  for (const k of [1500, 2049, 2051]) for (let i = 0; i < M; i++) xv[i * K + k] = 0;
  const Wt = Tensor.from(wv, [N, K], { device });
  const cb = Tensor.empty([N, K], { dtype: 'i8', device }), scb = Tensor.empty([N], { device });
  const X = Tensor.from(xv, [M, K], { device }), Y = Tensor.from(new Float32Array(M * N).fill(NaN), [M, N], { device });
  try {
    ops.quantizeInt8Rowwise(cb, scb, Wt);
    const w: QuantWeight = { format: 'int8', cb, scb, shape: [N, K] };
    ops.llmInt8Matmul(Y, X, w, { threshold: 6 });
    const p = 127 * 127, acc = p * (K - 3);
    return {
      got: [...Y.toFloat32Array()],
      expected: f(f(f(f(acc) * f(1.5)) * f(0.02)) * f(1 / p)),
      f32RunningSumDiffers: f(f(1024 * p + 1023 * p) + 3 * p) !== acc,
    };
  } finally {
    for (const a of [Wt, cb, scb, X, Y]) a.dispose();
  }
}
