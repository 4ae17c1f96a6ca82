/**
 * LLM.int8 weights (bitsandbytes' 8-bit Linear): int8 codes per output row and one f32 absmax per
 * row (SCB), in host memory.
 */
import { PeftkitError } from '../errors';
import * as ops from '../ops/quant';
import { Tensor } from '../tensor';
import type { DequantizeOptions } from './quant4';

export interface Int8State {
  /** round_half_even(W·127/SCB) row by row, [rows, cols] row-major. */
  cb: Int8Array;
  /** max |W[row, :]| per row. */
  scb: Float32Array;
  shape: [number, number];
}

function checkShape2d(shape: unknown, what: string): [number, number] {
  if (!Array.isArray(shape) || shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new PeftkitError('E_SHAPE', `${what}: expected [rows, cols] of positive integers, got ${JSON.stringify(shape)}`);
  }
  return [shape[0], shape[1]];
}

/**
 * Row-wise int8 quantization of a weight [rows, cols]: an f32 Tensor (on its device), or a
 * Float32Array with `shape`.
 */
export function quantizeInt8Rowwise(w: Float32Array | Tensor, o: { shape?: readonly [number, number] } = {}): Int8State {
  const isTensor = w instanceof Tensor;
  if (!isTensor && !(w instanceof Float32Array)) throw new PeftkitError('E_ARG', 'w: expected a Float32Array or an f32 Tensor');
  if (isTensor && w.dtype !== 'f32') throw new PeftkitError('E_DTYPE', `w: expected an f32 tensor, got ${w.dtype}`);
  if (!isTensor && !o.shape) throw new PeftkitError('E_ARG', 'shape: required when w is a Float32Array ([rows, cols])');
  const shape = checkShape2d(o.shape ? [...o.shape] : (w as Tensor).shape, 'shape');
  const n = isTensor ? w.numel : w.length;
  if (shape[0] * shape[1] !== n) throw new PeftkitError('E_SHAPE', `shape [${shape.join(', ')}] does not hold the ${n} elements of w`);
  const device = isTensor ? w.device : 'cpu';
  const x = isTensor ? (w.shape.length === 2 ? w : w.view(0, shape)) : Tensor.from(w, shape);
  const cb = Tensor.empty(shape, { dtype: 'i8', device });
  const scb = Tensor.empty([shape[0]], { device });
  try {
    ops.quantizeInt8Rowwise(cb, scb, x);
    return { cb: cb.toArray() as Int8Array, scb: scb.toFloat32Array(), shape };
  } finally {
    cb.dispose();
    scb.dispose();
    if (!isTensor) x.dispose();
  }
}

/** Row-wise int8 quantization of an f32 tensor [rows, cols] on its device, kept in engine memory. */
export function quantizeInt8Tensors(w: Tensor): { cb: Tensor; scb: Tensor } {
  if (!(w instanceof Tensor) || w.dtype !== 'f32') throw new PeftkitError('E_DTYPE', 'w: expected an f32 Tensor');
  const shape = checkShape2d(w.shape, 'w.shape');
  const cb = Tensor.empty(shape, { dtype: 'i8', device: w.device });
  const scb = Tensor.empty([shape[0]], { device: w.device });
  try {
    ops.quantizeInt8Rowwise(cb, scb, w);
    return { cb, scb };
  } catch (e) {
    cb.dispose();
    scb.dispose();
    throw e;
  }
}

export function validateInt8State(s: Int8State, where = 'state'): void {
  if (typeof s !== 'object' || s === null) throw new PeftkitError('E_ARG', `${where}: expected an Int8State object`);
  const [rows, cols] = checkShape2d(s.shape, `${where}.shape`);
  if (!(s.cb instanceof Int8Array) || s.cb.length !== rows * cols) {
    throw new PeftkitError('E_SHAPE', `${where}.cb: expected an Int8Array of ${rows * cols} elements`);
  }
  if (!(s.scb instanceof Float32Array) || s.scb.length !== rows) {
    throw new PeftkitError('E_SHAPE', `${where}.scb: expected a Float32Array of ${rows} elements`);
  }
}

/** The weights an int8 state stands for, `cb·scb/127`, as a Tensor [rows, cols]. */
export function dequantizeInt8(s: Int8State, o: DequantizeOptions = {}): Tensor {
  validateInt8State(s);
  const device = o.device ?? 'cpu';
  const dtype = o.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new PeftkitError('E_ARG', `dtype: expected 'f32' or 'bf16', got ${JSON.stringify(dtype)}`);
  const cb = Tensor.from(s.cb, s.shape, { device });
  const scb = Tensor.from(s.scb, [s.shape[0]], { device });
  const out = Tensor.empty(s.shape, { dtype, device });
  try {
    ops.dequantizeInt8Rowwise(out, cb, scb);
    return out;
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    cb.dispose();
    scb.dispose();
  }
}
