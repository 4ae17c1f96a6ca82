/**
 * The GEMM with an NF4 weight dequantized while it packs (QLoRA's frozen base layer), X·Wᵀ at
 * M = 1024 and the SmolLM2-135M and 1B-class Linear sizes, beside the f32 GEMM on the
 * dequantized weight in the same run. Issue 4's bar: at least 0.8× the f32 GEMM's speed.
 */
import { Tensor, ops } from '../../src/index';
import { medianMs } from './_timing';
import type { BenchRow } from './types';

export function run(): BenchRow[] {
  const rows: BenchRow[] = [];
  const M = 1024, blocksize = 64;
  for (const [K, N] of [[576, 1536], [2048, 5632]]) {
    const x = new Float32Array(M * K).map(() => Math.random() - 0.5);
    const w = new Float32Array(N * K).map(() => (Math.random() - 0.5) * 0.1);
    const X = Tensor.from(x, [M, K]);
    const W = Tensor.from(w, [N, K]);
    const n = N * K;
    const packed = Tensor.empty([n / 2], { dtype: 'u8' });
    const absmax = Tensor.empty([Math.ceil(n / blocksize)]);
    ops.quantize4bit(packed, absmax, W, blocksize, 'nf4');
    ops.dequantize4bit(W, packed, absmax, blocksize, 'nf4');
    const C = Tensor.empty([M, N]);
    const q = { format: 'nf4' as const, packed, absmax, blocksize, shape: [N, K] as [number, number] };
    const msF32 = medianMs(() => ops.gemm(C, X, W, { transB: true }));
    const msQ = medianMs(() => ops.gemmQuant(C, X, q, { transB: true }));
    const gflop = (2 * M * N * K) / 1e9;
    rows.push({
      kernel: 'gemm_quant nf4 X·Wᵀ (fused dequant)',
      shape: `M=${M} N=${N} K=${K} blocksize=${blocksize}`,
      ms: msQ,
      gflops: gflop / (msQ / 1e3),
      note: `f32 gemm ${msF32.toFixed(2)} ms (${(gflop / (msF32 / 1e3)).toFixed(0)} GFLOP/s); nf4 speed ${(msF32 / msQ).toFixed(2)}× f32 (bar 0.8×)`,
    });
    for (const t of [X, W, packed, absmax, C]) t.dispose();
  }
  return rows;
}
