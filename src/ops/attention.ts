import { native } from '../native';
import { Tensor } from '../tensor';

export interface AttentionOptions {
  /**
   * Multiplies q·k before the softmax. Defaults to `1/sqrt(D)` with D the head size (the last
   * dimension of q), as in Llama-family models.
   */
  scale?: number;
}

function scaleOf(q: Tensor, o: AttentionOptions): number {
  if (o.scale !== undefined) return o.scale;
  // A missing or malformed q is reported by the native argument checks, before the scale.
  const shape = q instanceof Tensor ? q.shape : [];
  const D = shape[shape.length - 1] ?? 0;
  return D > 0 ? 1 / Math.sqrt(D) : NaN;
}

/**
 * Causal self-attention with grouped-query heads, flash-style: the Tq×Tk score matrix is never
 * stored. All tensors f32 on one device:
 * - `q` [B, Tq, Hq, D]; `k`, `v` [B, Tk, Hkv, D] with Hq a multiple of Hkv: query head h reads
 *   key/value head `floor(h / (Hq/Hkv))` (Hq == Hkv is plain multi-head attention).
 * - Query i sees keys j <= i + (Tk − Tq): with Tk > Tq the first Tk − Tq keys are a KV cache or
 *   a prefix that every query sees.
 * - Writes `out` [B, Tq, Hq, D] and `lse` [B, Hq, Tq], the log-sum-exp of each row's scaled
 *   scores, which {@link attentionBackward} needs.
 */
export function attentionForward(
  out: Tensor, lse: Tensor, q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions = {},
): void {
  native.attentionForward(out.native, lse.native, q.native, k.native, v.native, scaleOf(q, o));
}

/** {@link attentionForward} on the thread pool. */
export function attentionForwardAsync(
  out: Tensor, lse: Tensor, q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions = {},
): Promise<void> {
  return native.attentionForwardAsync(out.native, lse.native, q.native, k.native, v.native, scaleOf(q, o));
}

/**
 * Gradients of {@link attentionForward}: from `dout` (like `out`) and the forward's q, k, v,
 * out and lse, OVERWRITES `dq` (like q), `dk` and `dv` (like k). The probabilities are
 * recomputed tile by tile; for grouped-query heads dk/dv sum over each key/value head's group.
 * Pass the same `scale` as the forward.
 */
export function attentionBackward(
  dq: Tensor, dk: Tensor, dv: Tensor, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
  o: AttentionOptions = {},
): void {
  native.attentionBackward(dq.native, dk.native, dv.native, dout.native, q.native, k.native, v.native, out.native,
    lse.native, scaleOf(q, o));
}

/** {@link attentionBackward} on the thread pool. */
export function attentionBackwardAsync(
  dq: Tensor, dk: Tensor, dv: Tensor, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
  o: AttentionOptions = {},
): Promise<void> {
  return native.attentionBackwardAsync(dq.native, dk.native, dv.native, dout.native, q.native, k.native, v.native,
    out.native, lse.native, scaleOf(q, o));
}
