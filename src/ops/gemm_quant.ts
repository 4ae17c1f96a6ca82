import { native } from '../native';
import { Tensor } from '../tensor';
import type { Compute } from './gemm';

/**
 * A frozen Linear weight W [out, in] (`shape`, row-major as a checkpoint stores it) kept quantized.
 * 4-bit (bitsandbytes NF4/FP4): `packed` u8 ((out·in+1)/2, first element in the high nibble) and
 * `absmax` f32 per block of `blocksize` over the row-major flattening (already recovered from
 * double quantization). LLM.int8: `cb` i8 [out, in] and `scb` f32 [out].
 */
export type QuantWeight =
  | { format: 'nf4' | 'fp4'; packed: Tensor; absmax: Tensor; blocksize: number; shape: [number, number] }
  | { format: 'int8'; cb: Tensor; scb: Tensor; shape: [number, number] };

export interface GemmQuantOptions {
  /** Use Wᵀ: `X·Wᵀ`, the forward of a Linear (X [M, in], C [M, out]). `false` gives `dY·W` (dY [M, out], C [M, in]). Defaults to `true`. */
  transB?: boolean;
  /** Defaults to `1`. */
  alpha?: number;
  /** `0` overwrites C without reading it; `1` accumulates. Defaults to `0`. */
  beta?: number;
  /**
   * `'bf16'` (QLoRA's compute_dtype=bfloat16): X and the dequantized W are read rounded to bf16,
   * products summed in f32 (see {@link Compute}); W is decoded straight into bf16 pairs. Defaults to `'f32'`.
   */
  compute?: Compute;
}

/** The six native arguments of a quantized weight: format, codes, scales, blocksize, rows, cols. */
export function quantWeightArgs(w: QuantWeight) {
  const [rows, cols] = w.shape;
  const codes = w.format === 'int8' ? w.cb : w.packed;
  const scales = w.format === 'int8' ? w.scb : w.absmax;
  const blocksize = w.format === 'int8' ? 0 : w.blocksize;
  return [w.format, codes.native, scales.native, blocksize, rows, cols] as const;
}

function args(C: Tensor, X: Tensor, w: QuantWeight, o: GemmQuantOptions) {
  return [C.native, X.native, ...quantWeightArgs(w), o.transB ?? true, o.alpha ?? 1, o.beta ?? 0, o.compute ?? 'f32'] as const;
}

/**
 * `C = alpha·X·op(W) + beta·C` with W quantized; C f32, X f32 or bf16. Equal to {@link gemm} on the
 * dequantized weight, without ever forming it on the CPU (it is dequantized while packed).
 */
export function gemmQuant(C: Tensor, X: Tensor, w: QuantWeight, o: GemmQuantOptions = {}): void {
  native.gemmQuant(...args(C, X, w, o));
}

/** {@link gemmQuant} on the thread pool. */
export function gemmQuantAsync(C: Tensor, X: Tensor, w: QuantWeight, o: GemmQuantOptions = {}): Promise<void> {
  return native.gemmQuantAsync(...args(C, X, w, o));
}
