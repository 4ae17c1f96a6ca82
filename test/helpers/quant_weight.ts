/** Random weights quantized by the engine, with their dequantized values (gemm_quant, lora_quant tests). */
import { Tensor, ops } from '../../src/index';
import type { Device } from '../../src/index';
import type { QuantWeight } from '../../src/ops/gemm_quant';
import { randn } from './check';
import type { Rng } from './check';

export type Format = 'nf4' | 'fp4' | 'int8';

/** A random weight [rows, cols] quantized by the engine, with its dequantized f32 values. */
export function quantWeight(rng: Rng, format: Format, rows: number, cols: number, blocksize: number, device: Device) {
  const n = rows * cols;
  const w = Tensor.from(randn(rng, n, 0.05), [rows, cols], { device });
  const deq = Tensor.empty([rows, cols], { device });
  let q: QuantWeight;
  if (format === 'int8') {
    const cb = Tensor.empty([rows, cols], { device, dtype: 'i8' });
    const scb = Tensor.empty([rows], { device });
    ops.quantizeInt8Rowwise(cb, scb, w);
    ops.dequantizeInt8Rowwise(deq, cb, scb);
    q = { format, cb, scb, shape: [rows, cols] };
  } else {
    const packed = Tensor.empty([(n + 1) >> 1], { device, dtype: 'u8' });
    const absmax = Tensor.empty([Math.ceil(n / blocksize)], { device });
    ops.quantize4bit(packed, absmax, w, blocksize, format);
    ops.dequantize4bit(deq, packed, absmax, blocksize, format);
    q = { format, packed, absmax, blocksize, shape: [rows, cols] };
  }
  w.dispose();
  return { q, deq };
}

export function disposeWeight(q: QuantWeight): void {
  if (q.format === 'int8') { q.cb.dispose(); q.scb.dispose(); } else { q.packed.dispose(); q.absmax.dispose(); }
}
