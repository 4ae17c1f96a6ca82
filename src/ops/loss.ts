import { native } from '../native';
import { Tensor } from '../tensor';
import type { Compute } from './gemm';

export interface CrossEntropyOptions {
  /** Rows whose target equals this get loss 0 and gradient 0. Defaults to `-100` (Hugging Face's label mask). */
  ignoreIndex?: number;
  /**
   * Multiplies the gradient: `1 / (number of counted rows)` gives the gradient of the mean loss,
   * `1` that of the sum. Defaults to `1`.
   */
  gradScale?: number;
}

export interface LinearCrossEntropyOptions extends CrossEntropyOptions {
  /**
   * Rows of logits formed at once (scratch memory is `chunkRows × V` floats). `0` picks about
   * 128 MiB of logits. Defaults to `0`.
   */
  chunkRows?: number;
  /**
   * `'bf16'`: the head's products (logits = H·Wᵀ, dH, dW) run in bf16 with f32 sums, as PyTorch's
   * autocast runs lm_head (see {@link Compute}); softmax and loss stay f32. Defaults to `'f32'`.
   */
  compute?: Compute;
  /**
   * Where a GPU records a target out of range instead of the op checking the targets on the host
   * (a copy back per call): an index-fault record (index_fault.ts); the row is treated as ignored. Defaults
   * to none (checked on the host; always so on the CPU, where that costs no copy).
   */
  fault?: Tensor;
}

/**
 * Cross-entropy over the last axis: `losses[n] = logsumexp(logits[n]) - logits[n, targets[n]]`.
 *
 * - `losses`: f32 `[...]`, overwritten; `logits`: f32 `[..., V]`; `targets`: i32 `[...]`, each in
 *   `[0, V)` or equal to `ignoreIndex` (anything else throws `E_ARG` naming the row).
 * - `dlogits`: where `gradScale·(softmax(logits) - onehot(targets))` goes: a tensor shaped like
 *   `logits`, `logits` itself (the gradient replaces the logits, saving N×V floats), or `null`
 *   for the losses only.
 */
export function crossEntropy(losses: Tensor, dlogits: Tensor | null, logits: Tensor, targets: Tensor, o: CrossEntropyOptions = {}): void {
  native.crossEntropy(losses.native, dlogits?.native ?? null, logits.native, targets.native, o.ignoreIndex ?? -100, o.gradScale ?? 1);
}

/** {@link crossEntropy} on the thread pool. */
export function crossEntropyAsync(
  losses: Tensor, dlogits: Tensor | null, logits: Tensor, targets: Tensor, o: CrossEntropyOptions = {},
): Promise<void> {
  return native.crossEntropyAsync(losses.native, dlogits?.native ?? null, logits.native, targets.native, o.ignoreIndex ?? -100, o.gradScale ?? 1);
}

/**
 * The LM head fused with its loss: cross-entropy of `logits = H·Wᵀ` without ever holding all
 * N×V logits (they are formed `chunkRows` rows at a time, and each chunk's gradient is used
 * at once).
 *
 * - `H`: f32 `[..., C]` (final hidden states); `W`: `[V, C]` f32 or bf16 (the LM head weight);
 *   `targets`, `losses`: as in {@link crossEntropy}, shaped like H without its last axis.
 * - `dH`: f32 like `H`, overwritten with `dloss/dH`, or `null`. Must not be `H`.
 * - `dW`: f32 `[V, C]`, ACCUMULATES `dloss/dW` (+=), or `null` (a frozen head).
 */
export function linearCrossEntropy(
  losses: Tensor, dH: Tensor | null, dW: Tensor | null, H: Tensor, W: Tensor, targets: Tensor, o: LinearCrossEntropyOptions = {},
): void {
  native.linearCrossEntropy(
    losses.native, dH?.native ?? null, dW?.native ?? null, H.native, W.native, targets.native,
    o.ignoreIndex ?? -100, o.gradScale ?? 1, o.chunkRows ?? 0, o.compute ?? 'f32', o.fault?.native ?? null,
  );
}

/** {@link linearCrossEntropy} on the thread pool. */
export function linearCrossEntropyAsync(
  losses: Tensor, dH: Tensor | null, dW: Tensor | null, H: Tensor, W: Tensor, targets: Tensor, o: LinearCrossEntropyOptions = {},
): Promise<void> {
  return native.linearCrossEntropyAsync(
    losses.native, dH?.native ?? null, dW?.native ?? null, H.native, W.native, targets.native,
    o.ignoreIndex ?? -100, o.gradScale ?? 1, o.chunkRows ?? 0, o.compute ?? 'f32', o.fault?.native ?? null,
  );
}

/**
 * `acc[0] += Σ x`, summed in float64 (acc: f64 `[1]`, x: f32, on one device; on the CPU in index
 * order). A training step adds each micro-batch's row losses into one device scalar this way and
 * reads it once, with its gradient norm, instead of copying the losses back per micro-batch.
 */
export function sumInto(acc: Tensor, x: Tensor): void {
  native.sumInto(acc.native, x.native);
}

/** {@link sumInto} on the thread pool. */
export function sumIntoAsync(acc: Tensor, x: Tensor): Promise<void> {
  return native.sumIntoAsync(acc.native, x.native);
}
