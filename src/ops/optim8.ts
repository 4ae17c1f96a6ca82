/**
 * 8-bit AdamW (bitsandbytes' blockwise "AdamW8bit"): each moment kept as one byte per element,
 * the index of a code in a 256-entry dynamic map, times one f32 absmax per block of 256
 * elements; 2 bytes of state per parameter instead of 8. Small tensors keep f32 states.
 */
import type { AdamWOptions } from './optim';
import { native, NativeAdamW8bitParam } from '../native';
import { Device, Tensor } from '../tensor';

/** Elements per quantization block: each block of a moment has its own f32 absmax. */
export const ADAMW8BIT_BLOCK = 256;
/** bitsandbytes' `min_8bit_size`: tensors with fewer elements keep f32 states. */
export const MIN_8BIT_SIZE = 4096;

/** One trainable tensor and its state for {@link adamw8bit}. */
export interface AdamW8bitParam {
  param: Tensor;
  /** Read only. */
  grad: Tensor;
  /** First moment: u8 codes of the param's shape (8-bit), or f32 (small tensors). Start from {@link adamw8bitState}. */
  m: Tensor;
  /** Second moment, as `m`. */
  v: Tensor;
  /** With 8-bit states: f32 [ceil(numel / 256)], the first moment's block maxima. Absent for f32 states. */
  mAbsmax?: Tensor | null;
  /** With 8-bit states: the second moment's block maxima. */
  vAbsmax?: Tensor | null;
  /** This tensor's decoupled weight decay. Defaults to the step's `weightDecay`. */
  weightDecay?: number;
}

export interface AdamW8bitState {
  m: Tensor;
  v: Tensor;
  mAbsmax: Tensor | null;
  vAbsmax: Tensor | null;
}

/**
 * Zeroed state for a parameter of `shape`: 8-bit codes and absmax when it has at least
 * {@link MIN_8BIT_SIZE} elements (or when `quantized` is true), f32 moments otherwise.
 */
export function adamw8bitState(shape: readonly number[], opts: { device?: Device; quantized?: boolean } = {}): AdamW8bitState {
  const n = shape.reduce((a, b) => a * b, 1);
  const device = opts.device ?? 'cpu';
  if (!(opts.quantized ?? n >= MIN_8BIT_SIZE)) {
    return { m: Tensor.zeros(shape, { device }), v: Tensor.zeros(shape, { device }), mAbsmax: null, vAbsmax: null };
  }
  const blocks = [Math.ceil(n / ADAMW8BIT_BLOCK)];
  return {
    m: Tensor.zeros(shape, { device, dtype: 'u8' }),
    v: Tensor.zeros(shape, { device, dtype: 'u8' }),
    mAbsmax: Tensor.zeros(blocks, { device }),
    vAbsmax: Tensor.zeros(blocks, { device }),
  };
}

function slots(params: AdamW8bitParam[], o: AdamWOptions): NativeAdamW8bitParam[] {
  const wd = o.weightDecay ?? 0.01;
  // Anything that is not an object goes through as it is, for the addon to report (E_ARG).
  return params.map((p) =>
    p && typeof p === 'object'
      ? {
          param: p.param?.native, grad: p.grad?.native, m: p.m?.native, v: p.v?.native,
          mAbsmax: p.mAbsmax?.native ?? null, vAbsmax: p.vAbsmax?.native ?? null, weightDecay: p.weightDecay ?? wd,
        }
      : (p as unknown as NativeAdamW8bitParam),
  );
}

function hyper(o: AdamWOptions): [number, number, number, number, number] {
  const [b1, b2] = o.betas ?? [0.9, 0.999];
  return [o.lr ?? 1e-3, b1, b2, o.eps ?? 1e-8, o.step];
}

/**
 * One 8-bit AdamW step over every tensor at once. Per block of 256: decode m and v, the f32
 * update of {@link adamw} (same formula, same order of operations; the parameter moves by the
 * unquantized new moments), the block's new absmax, then each moment stored as the nearest
 * code. Tensors with f32 states get exactly {@link adamw}'s update. A tensor whose gradient
 * holds a NaN or an infinity is skipped: its param and states stay as they were. Returns the
 * number of tensors skipped; NaN with `countSkipped: false`, which on a GPU spares the copy back
 * of the count and the wait for the update (a caller that has already refused non-finite
 * gradients, as a training step does, has nothing to learn from it).
 */
export function adamw8bit(params: AdamW8bitParam[], o: AdamW8bitOptions): number {
  return native.adamw8bit(slots(params, o), ...hyper(o), o.countSkipped ?? true) ?? NaN;
}

/** {@link adamw8bit} on the thread pool. */
export async function adamw8bitAsync(params: AdamW8bitParam[], o: AdamW8bitOptions): Promise<number> {
  return (await native.adamw8bitAsync(slots(params, o), ...hyper(o), o.countSkipped ?? true)) ?? NaN;
}

export interface AdamW8bitOptions extends AdamWOptions {
  /** Bring back how many tensors were skipped (a copy and a wait on a GPU). Defaults to `true`. */
  countSkipped?: boolean;
}

/** The code tables compiled into the engine: `signed` for m, `unsigned` for v (256 sorted values each). */
export function dynamicMap(kind: 'signed' | 'unsigned'): Float32Array {
  return native.dynamicMap(kind);
}
