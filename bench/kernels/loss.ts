/**
 * Cross-entropy over a vocabulary, and the fused LM head + loss beside its unfused peer
 * (GEMM logits, cross-entropy in place, two GEMMs for dH and dW), which holds all N×V logits.
 */
import { Tensor, ops } from '../../src/index';
import { medianMs as median } from './_timing';
import type { BenchRow } from './types';

function random(n: number, scale: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (Math.random() * 2 - 1) * scale;
  return a;
}

export function run(): BenchRow[] {
  const rows: BenchRow[] = [];
  {
    const [N, V] = [512, 32000];
    const logits = Tensor.from(random(N * V, 4), [N, V]), dlogits = Tensor.empty([N, V]), losses = Tensor.empty([N]);
    const targets = Tensor.from(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V), [N]);
    const ms = median(() => ops.crossEntropy(losses, dlogits, logits, targets, { gradScale: 1 / N }));
    rows.push({ kernel: 'cross_entropy f32 (+gradient)', shape: `N=${N} V=${V}`, ms, note: `${((ms * 1e6) / (N * V)).toFixed(2)} ns/logit` });
  }
  {
    const [N, C, V] = [128, 512, 32000];
    const H = Tensor.from(random(N * C, 1), [N, C]), W = Tensor.from(random(V * C, 0.03), [V, C], { dtype: 'bf16' });
    const targets = Tensor.from(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V), [N]);
    const losses = Tensor.empty([N]), dH = Tensor.empty([N, C]), dW = Tensor.zeros([V, C]);
    const flops = 3 * 2 * N * C * V;
    const ms = median(() => ops.linearCrossEntropy(losses, dH, dW, H, W, targets, { gradScale: 1 / N, chunkRows: 32 }));
    const logits = Tensor.empty([N, V]);
    const peer = median(() => {
      ops.gemm(logits, H, W, { transB: true });
      ops.crossEntropy(losses, logits, logits, targets, { gradScale: 1 / N });
      ops.gemm(dH, logits, W);
      ops.gemm(dW, logits, H, { transA: true, beta: 1 });
    });
    rows.push({
      kernel: 'linear_cross_entropy bf16 W (+dH, dW)', shape: `N=${N} C=${C} V=${V}`, ms, gflops: flops / ms / 1e6,
      peer: { name: 'unfused gemm+CE+2 gemm', ms: peer, gflops: flops / peer / 1e6 },
      note: `logits held: ${((32 * V * 4) / 2 ** 20).toFixed(1)} MB fused (32-row chunks) vs ${((N * V * 4) / 2 ** 20).toFixed(1)} MB`,
    });
  }
  return rows;
}
