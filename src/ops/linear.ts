/**
 * The Linear op, one for every storage of the frozen weight: `Y = X·Wᵀ (+ bias) (+ the low-rank
 * term)` with W a dense f32/bf16 tensor or a {@link QuantWeight} (NF4/FP4, int8; an int8 one with a
 * `threshold` runs LLM.int8), and its backward. Every method's Linear site and the frozen base
 * run through it; {@link loraForward} and {@link llmInt8Matmul} are its familiar faces.
 */
import { native, NativeTensor } from '../native';
import { Tensor } from '../tensor';
import type { Compute } from './gemm';
import { checkInt8Threshold, QuantWeight, quantWeightArgs } from './gemm_quant';

/** The low-rank (LoRA) term: `scale·(Xa·Aᵀ)·Bᵀ`, XA [..., r] receiving `Xa·Aᵀ` in the forward. */
export interface LowRankTerm {
  A: Tensor;
  B: Tensor;
  XA: Tensor;
  /** `s`. Defaults to `1`. */
  scale?: number;
  /** Forward: dropout(X), the low-rank path's input. Defaults to X. */
  dropoutInput?: Tensor;
}

export interface LinearForwardOptions {
  /** f32 [N], added to every row. Defaults to none. */
  bias?: Tensor;
  /** A LoRA term. Defaults to none (a plain Linear). */
  lowRank?: LowRankTerm;
  /** The base product's precision (see {@link Compute}); the rank-r products stay f32. Defaults to `'f32'`. */
  compute?: Compute;
}

/** The low-rank term's gradients: dA, dB accumulate; dDropoutInput (with dropout) receives `s·(dY·B)·A`. */
export interface LowRankGrad {
  A: Tensor;
  B: Tensor;
  /** What the forward saved, `Xa·Aᵀ`. */
  XA: Tensor;
  /** The low-rank path's input the forward read: X, or its dropout. */
  Xa: Tensor;
  dA: Tensor;
  dB: Tensor;
  /** Defaults to `1`. */
  scale?: number;
  /** Defaults to none: the low-rank input gradient is added into dX. */
  dDropoutInput?: Tensor;
}

export interface LinearBackwardOptions {
  lowRank?: LowRankGrad;
  /** Defaults to `'f32'`. */
  compute?: Compute;
}

// Something given that is not a Tensor goes through as it is, so the addon names it ("B: expected a Tensor").
const opt = (t: Tensor | null | undefined): NativeTensor | null => (t ? t.native ?? (t as unknown as NativeTensor) : null);

type WeightArgs = [NativeTensor | null, 'nf4' | 'fp4' | 'int8' | null, NativeTensor | null, NativeTensor | null, number, number, number, number | null];

/** The native op's eight weight arguments. */
function weightArgs(W: Tensor | QuantWeight): WeightArgs {
  if (W instanceof Tensor) return [W.native, null, null, null, 0, 0, 0, null];
  const threshold = W.format === 'int8' && W.threshold !== undefined ? checkInt8Threshold(W.threshold) : null;
  return [null, ...quantWeightArgs(W), threshold];
}

function forwardArgs(Y: Tensor, X: Tensor, W: Tensor | QuantWeight, o: LinearForwardOptions) {
  const lr = o.lowRank;
  return [Y.native, X.native, ...weightArgs(W), opt(o.bias), opt(lr?.A), opt(lr?.B), opt(lr?.XA), opt(lr?.dropoutInput), lr?.scale ?? 1,
    o.compute ?? 'f32'] as const;
}

function backwardArgs(dX: Tensor | null, dY: Tensor, W: Tensor | QuantWeight, o: LinearBackwardOptions) {
  const lr = o.lowRank;
  return [opt(dX), dY.native, ...weightArgs(W), opt(lr?.A), opt(lr?.B), opt(lr?.XA), opt(lr?.Xa), opt(lr?.dA), opt(lr?.dB),
    opt(lr?.dDropoutInput), lr?.scale ?? 1, o.compute ?? 'f32'] as const;
}

/** `Y [..., N] = X [..., K]·Wᵀ (+ bias) (+ the low-rank term)`; W [N, K] in any storage. */
export function linearForward(Y: Tensor, X: Tensor, W: Tensor | QuantWeight, o: LinearForwardOptions = {}): void {
  native.linearForward(...forwardArgs(Y, X, W, o));
}

/** {@link linearForward} on the thread pool. */
export function linearForwardAsync(Y: Tensor, X: Tensor, W: Tensor | QuantWeight, o: LinearForwardOptions = {}): Promise<void> {
  return native.linearForwardAsync(...forwardArgs(Y, X, W, o));
}

/** Gradients of {@link linearForward}: dX (overwritten; null skips it) and the low-rank term's. W is frozen. */
export function linearBackward(dX: Tensor | null, dY: Tensor, W: Tensor | QuantWeight, o: LinearBackwardOptions = {}): void {
  native.linearBackward(...backwardArgs(dX, dY, W, o));
}

/** {@link linearBackward} on the thread pool. */
export function linearBackwardAsync(dX: Tensor | null, dY: Tensor, W: Tensor | QuantWeight, o: LinearBackwardOptions = {}): Promise<void> {
  return native.linearBackwardAsync(...backwardArgs(dX, dY, W, o));
}
