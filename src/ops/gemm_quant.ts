import { PeftkitError } from '../errors';
import { native } from '../native';
import { Tensor } from '../tensor';
import type { Compute } from './gemm';

/**
 * A frozen Linear weight W [out, in] (`shape`, row-major as a checkpoint stores it) kept quantized.
 * 4-bit (bitsandbytes NF4/FP4): `packed` u8 ((out·in+1)/2, first element in the high nibble) and
 * `absmax` f32 per block of `blocksize` over the row-major flattening (already recovered from
 * double quantization). LLM.int8: `cb` i8 [out, in] and `scb` f32 [out], and optionally the
 * `threshold` of bitsandbytes' LLM.int8 matmul: when set, every forward product `X·Wᵀ`
 * ({@link gemmQuant} with transB, {@link loraForward}) quantizes X to int8 row by row with the
 * outlier columns (any |x| >= threshold) multiplied in f32 instead ({@link llmInt8Matmul}); `0`
 * quantizes every column. The input gradient `dY·W` stays on the dequantized weight, as
 * bitsandbytes' backward does. Without it (the default) products use the dequantized weight.
 */
export type QuantWeight =
  | { format: 'nf4' | 'fp4'; packed: Tensor; absmax: Tensor; blocksize: number; shape: [number, number] }
  | { format: 'int8'; cb: Tensor; scb: Tensor; shape: [number, number]; threshold?: number };

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
  if (usesLlmInt8(w, o)) native.linearForward(...llmInt8Args(C, X, w, o));
  else native.gemmQuant(...args(C, X, w, o));
}

/** {@link gemmQuant} on the thread pool. */
export function gemmQuantAsync(C: Tensor, X: Tensor, w: QuantWeight, o: GemmQuantOptions = {}): Promise<void> {
  if (usesLlmInt8(w, o)) return native.linearForwardAsync(...llmInt8Args(C, X, w, o));
  return native.gemmQuantAsync(...args(C, X, w, o));
}

/** Whether a gemmQuant call is an LLM.int8 forward product (an int8 weight with a threshold, X·Wᵀ). */
function usesLlmInt8(w: QuantWeight, o: GemmQuantOptions): w is Extract<QuantWeight, { format: 'int8' }> & { threshold: number } {
  return w.format === 'int8' && w.threshold !== undefined && (o.transB ?? true);
}

function llmInt8Args(C: Tensor, X: Tensor, w: QuantWeight & { threshold: number }, o: GemmQuantOptions) {
  if ((o.alpha ?? 1) !== 1 || (o.beta ?? 0) !== 0) {
    throw new PeftkitError('E_UNSUPPORTED', 'gemmQuant: alpha and beta are not supported with an LLM.int8 threshold (the product overwrites C)');
  }
  // The Linear op on the int8 weight with its threshold, without bias or low-rank term.
  return [C.native, X.native, null, ...quantWeightArgs(w), checkInt8Threshold(w.threshold), null, null, null, null, null, 1, 'f32'] as const;
}

/** A valid LLM.int8 outlier threshold (a finite number >= 0), or a PeftkitError E_ARG naming `what`. */
export function checkInt8Threshold(t: unknown, what = 'threshold'): number {
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 0) {
    throw new PeftkitError('E_ARG', `${what}: expected a finite number >= 0 (0: int8 activations without outlier columns), got ${String(t)}`);
  }
  return t;
}
