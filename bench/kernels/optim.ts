/** AdamW and the gradient norm over a LoRA-like parameter set: many small tensors, a few large. */
import { Tensor, ops } from '../../src/index';
import { medianMs as median } from './_timing';
import type { BenchRow } from './types';

export function run(): BenchRow[] {
  // 224 LoRA factors of 16×2048 (a 28-layer model, q/k/v/o... at r=16) and 2 large tensors.
  const sizes = [...Array.from({ length: 224 }, () => 16 * 2048), 4_000_000, 4_000_000];
  const total = sizes.reduce((a, b) => a + b, 0);
  const params = sizes.map((n) => ({
    param: Tensor.zeros([n]), grad: Tensor.from(new Float32Array(n).fill(1e-3), [n]), m: Tensor.zeros([n]), v: Tensor.zeros([n]),
  }));
  let step = 0;
  const ms = median(() => ops.adamw(params, { lr: 1e-4, step: ++step }));
  const grads = params.map((p) => p.grad);
  const msNorm = median(() => ops.gradNorm(grads));
  const shape = `${sizes.length} tensors, ${(total / 1e6).toFixed(1)}M elements`;
  return [
    { kernel: 'adamw f32', shape, ms, note: `${((ms * 1e6) / total).toFixed(2)} ns/element` },
    { kernel: 'grad_norm f32 (double sum)', shape, ms: msNorm, note: `${((msNorm * 1e6) / total).toFixed(2)} ns/element` },
  ];
}
