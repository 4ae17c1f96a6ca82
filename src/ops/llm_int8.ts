import { PeftkitError } from '../errors';
import { native } from '../native';
import { Tensor } from '../tensor';
import { linearForward, linearForwardAsync } from './linear';
import { checkInt8Threshold, QuantWeight } from './gemm_quant';

export interface QuantizeInt8VectorwiseOptions {
  /**
   * Outlier threshold: with `t > 0` an element with `|x| >= t` (or NaN, ±inf) is an outlier, its
   * column an outlier column (codes 0, flagged in outlierCols) and it does not set its row's
   * scale. `0` quantizes every column. Defaults to `0`.
   */
  threshold?: number;
}

/**
 * LLM.int8 activations, row by row (bitsandbytes' `int8_vectorwise_quant`): X f32 [M, K] ->
 * `CA` i8 [M, K] = round half to even of `x·(127/SCA[row])` (0 in outlier columns), `SCA` f32 [M]
 * the row's max |x| over its elements that are not outliers, `outlierCols` u8 [K] (1 for an outlier
 * column). A row holding a NaN with threshold 0 gets SCA NaN (bitsandbytes would drop the NaN).
 */
export function quantizeInt8Vectorwise(CA: Tensor, SCA: Tensor, outlierCols: Tensor, X: Tensor, o: QuantizeInt8VectorwiseOptions = {}): void {
  native.quantizeInt8Vectorwise(CA.native, SCA.native, outlierCols.native, X.native, checkInt8Threshold(o.threshold ?? 0));
}

export interface LlmInt8MatmulOptions {
  /** The outlier threshold ({@link QuantizeInt8VectorwiseOptions.threshold}). Defaults to the weight's `threshold`, else `0`. */
  threshold?: number;
  /** The Linear's bias, f32 [N], added after the int8 product is scaled. Defaults to none. */
  bias?: Tensor;
}

function int8Weight(w: QuantWeight): QuantWeight {
  if (w.format !== 'int8') throw new PeftkitError('E_UNSUPPORTED', `llmInt8Matmul: expected an int8 weight, got ${w.format} (the outlier threshold applies to int8 bases only)`);
  return w;
}

/** The weight with the threshold to use (the option's, else the weight's own, else 0). */
function withThreshold(w: QuantWeight, o: LlmInt8MatmulOptions): QuantWeight {
  const q = int8Weight(w) as Extract<QuantWeight, { format: 'int8' }>;
  return { ...q, threshold: checkInt8Threshold(o.threshold ?? q.threshold ?? 0) };
}

/**
 * bitsandbytes' LLM.int8 matmul (MatMul8bitLt's forward), `Y = X·Wᵀ` with W an int8 weight
 * (CB, SCB): X is quantized by {@link quantizeInt8Vectorwise}; the int32 product of the codes is
 * scaled by `SCA[i]·SCB[j]/127²`; the outlier columns of X are multiplied in f32 by the same
 * columns of the dequantized W and added. X f32 [..., K], Y f32 [..., N]. Its gradient is the
 * dequantized weight's, `dY·W` ({@link gemmQuant} with `transB: false`), as in bitsandbytes.
 */
export function llmInt8Matmul(Y: Tensor, X: Tensor, w: QuantWeight, o: LlmInt8MatmulOptions = {}): void {
  linearForward(Y, X, withThreshold(w, o), { bias: o.bias });
}

/** {@link llmInt8Matmul} on the thread pool. */
export function llmInt8MatmulAsync(Y: Tensor, X: Tensor, w: QuantWeight, o: LlmInt8MatmulOptions = {}): Promise<void> {
  return linearForwardAsync(Y, X, withThreshold(w, o), { bias: o.bias });
}
