import type { Tensor } from '../tensor';
import type { Compute } from './gemm';
import type { QuantWeight } from './gemm_quant';
import { linearBackward, linearBackwardAsync, LinearBackwardOptions, linearForward, linearForwardAsync, LinearForwardOptions } from './linear';

export interface LoraForwardOptions {
  /** The low-rank scale s (PEFT: `lora_alpha / r`, or `lora_alpha / √r` with rsLoRA). Defaults to `1`. */
  scale?: number;
  /** The base layer's bias, f32 [N], added to every row of Y. Defaults to none. */
  bias?: Tensor;
  /**
   * LoRA dropout: `dropout(X)` (same shape as X), the input of the low-rank path only; the base
   * path always reads X. Pass the same tensor as `Xa` to {@link loraBackward}, with
   * `dDropoutInput`. Defaults to X itself (no dropout).
   */
  dropoutInput?: Tensor;
  /**
   * `'bf16'`: the base product `X·Wᵀ` runs in bf16 (X and an f32 W rounded while packed, a
   * quantized W decoded to rounded bf16, f32 sums; see {@link Compute}); the rank-r products stay
   * f32. Defaults to `'f32'`.
   */
  compute?: Compute;
}

export interface LoraBackwardOptions {
  /** The scale s the forward used. Defaults to `1`. */
  scale?: number;
  /** `'bf16'`: the input gradient's base product `dY·W` runs in bf16; the rank-r products stay f32. Defaults to `'f32'`. */
  compute?: Compute;
  /**
   * Set it when the forward had a `dropoutInput`: it receives (overwritten, shape of Xa) the
   * low-rank part of the input gradient, `scale·(dY·B)·A`, to chain through the dropout backward
   * and add to dX, which then holds only `dY·W`. Defaults to none: the low-rank part is added
   * into dX, which is right only when the forward had no dropout.
   */
  dDropoutInput?: Tensor;
}

/**
 * The fused LoRA linear layer: `Y = X·Wᵀ + scale·(Xa·Aᵀ)·Bᵀ (+ bias)`, where Xa is X or its
 * dropout. `W + scale·B·A` is never formed; the low-rank term joins the base GEMM as r extra
 * steps of its inner dimension. Writes Y and `XA = Xa·Aᵀ`, which {@link loraBackward} needs.
 *
 * Shapes, with leading dims `...` (e.g. [batch, tokens]) flattened into M rows: X [..., K];
 * W [N, K] the frozen base weight (a Linear's [out, in], f32 or bf16); A [r, K]; B [N, r];
 * Y [..., N]; XA [..., r]. Everything but W is f32, and all tensors are on one device.
 * W may also be a quantized weight ({@link QuantWeight}, QLoRA): the result equals the LoRA of the
 * dequantized W, which the CPU never forms (it is decoded inside the GEMM); an int8 weight with a
 * `threshold` runs its base product as LLM.int8 ({@link llmInt8Matmul}).
 */
export function loraForward(
  Y: Tensor, XA: Tensor, X: Tensor, W: Tensor | QuantWeight, A: Tensor, B: Tensor, o: LoraForwardOptions = {},
): void {
  linearForward(Y, X, W, forwardOptions(XA, A, B, o));
}

/** {@link loraForward} on the thread pool. */
export function loraForwardAsync(
  Y: Tensor, XA: Tensor, X: Tensor, W: Tensor | QuantWeight, A: Tensor, B: Tensor, o: LoraForwardOptions = {},
): Promise<void> {
  return linearForwardAsync(Y, X, W, forwardOptions(XA, A, B, o));
}

function forwardOptions(XA: Tensor, A: Tensor, B: Tensor, o: LoraForwardOptions): LinearForwardOptions {
  return { bias: o.bias, compute: o.compute, lowRank: { A, B, XA, scale: o.scale, dropoutInput: o.dropoutInput } };
}

function backwardOptions(dA: Tensor, dB: Tensor, Xa: Tensor, XA: Tensor, A: Tensor, B: Tensor, o: LoraBackwardOptions): LinearBackwardOptions {
  return { compute: o.compute, lowRank: { A, B, XA, Xa, dA, dB, scale: o.scale, dDropoutInput: o.dDropoutInput } };
}

/**
 * Gradients of {@link loraForward} given dY [..., N]. `Xa` is the low-rank path's input the
 * forward read (its `dropoutInput`, else X); `XA` is what the forward saved.
 * - `dX` [..., K] (or `null` when no input gradient is needed): overwritten with `dY·W`, plus
 *   `scale·(dY·B)·A` unless `dDropoutInput` takes that part.
 * - `dA` [r, K] `+= scale·(dY·B)ᵀ·Xa` and `dB` [N, r] `+= scale·dYᵀ·XA`: parameter gradients
 *   accumulate, so zero them before the first micro-batch.
 * W gets no gradient: the base stays frozen. W may be a quantized weight, as in {@link loraForward}.
 */
export function loraBackward(
  dX: Tensor | null, dA: Tensor, dB: Tensor, dY: Tensor, Xa: Tensor, XA: Tensor, W: Tensor | QuantWeight, A: Tensor,
  B: Tensor, o: LoraBackwardOptions = {},
): void {
  linearBackward(dX, dY, W, backwardOptions(dA, dB, Xa, XA, A, B, o));
}

/** {@link loraBackward} on the thread pool. */
export function loraBackwardAsync(
  dX: Tensor | null, dA: Tensor, dB: Tensor, dY: Tensor, Xa: Tensor, XA: Tensor, W: Tensor | QuantWeight, A: Tensor,
  B: Tensor, o: LoraBackwardOptions = {},
): Promise<void> {
  return linearBackwardAsync(dX, dY, W, backwardOptions(dA, dB, Xa, XA, A, B, o));
}
