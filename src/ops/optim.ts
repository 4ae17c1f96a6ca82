import { native, NativeAdamWParam } from '../native';
import { Tensor } from '../tensor';

/** One trainable tensor and its optimizer state: four f32 tensors of one shape on one device. */
export interface AdamWParam {
  param: Tensor;
  /** Read only. */
  grad: Tensor;
  /** First moment; start it at zeros. */
  m: Tensor;
  /** Second moment; start it at zeros. */
  v: Tensor;
  /** This tensor's decoupled weight decay (e.g. `0` for biases and norms). Defaults to the step's `weightDecay`. */
  weightDecay?: number;
}

/** torch.optim.AdamW's options, with its defaults. */
export interface AdamWOptions {
  /** The 1-based number of this step (the bias corrections use it): 1 on the first call. */
  step: number;
  /** Learning rate. Defaults to `1e-3`. */
  lr?: number;
  /** Decay rates of the first and second moments. Defaults to `[0.9, 0.999]`. */
  betas?: [number, number];
  /** Added to the denominator. Defaults to `1e-8`. */
  eps?: number;
  /** Decoupled weight decay for tensors that set none. Defaults to `0.01`. */
  weightDecay?: number;
}

function slots(params: AdamWParam[], o: AdamWOptions): NativeAdamWParam[] {
  const wd = o.weightDecay ?? 0.01;
  // Anything that is not an object goes through as it is, for the addon to report (E_ARG).
  return params.map((p) =>
    p && typeof p === 'object'
      ? { param: p.param?.native, grad: p.grad?.native, m: p.m?.native, v: p.v?.native, weightDecay: p.weightDecay ?? wd }
      : (p as unknown as NativeAdamWParam),
  );
}

function hyper(o: AdamWOptions): [number, number, number, number, number] {
  const [b1, b2] = o.betas ?? [0.9, 0.999];
  return [o.lr ?? 1e-3, b1, b2, o.eps ?? 1e-8, o.step];
}

/**
 * One AdamW step over every tensor at once, exactly as torch.optim.AdamW (decay `p -= lr·wd·p`
 * first, then the moments, the bias corrections for `step`, and `p -= lr·m̂/(sqrt(v̂) + eps)`).
 * Updates `param`, `m` and `v` in place.
 */
export function adamw(params: AdamWParam[], o: AdamWOptions): void {
  native.adamw(slots(params, o), ...hyper(o));
}

/** {@link adamw} on the thread pool. */
export function adamwAsync(params: AdamWParam[], o: AdamWOptions): Promise<void> {
  return native.adamwAsync(slots(params, o), ...hyper(o));
}

/** The L2 norm of all gradients taken together (summed in float64). NaN or Infinity when a gradient holds one. */
export function gradNorm(grads: Tensor[]): number {
  return native.gradNorm(grads.map((g) => g?.native)) ?? NaN;
}

/** {@link gradNorm} on the thread pool. */
export async function gradNormAsync(grads: Tensor[]): Promise<number> {
  return (await native.gradNormAsync(grads.map((g) => g?.native))) ?? NaN;
}

/**
 * torch.nn.utils.clip_grad_norm_: when the total norm exceeds `maxNorm`, every gradient is
 * multiplied by `maxNorm / (norm + 1e-6)`. Returns the norm before clipping. A non-finite norm
 * is returned as is and leaves the gradients untouched: check `Number.isFinite` and skip the
 * step (or stop).
 */
export function clipGradNorm(grads: Tensor[], maxNorm: number): number {
  return native.clipGradNorm(grads.map((g) => g?.native), maxNorm) ?? NaN;
}

/** {@link clipGradNorm} on the thread pool. */
export async function clipGradNormAsync(grads: Tensor[], maxNorm: number): Promise<number> {
  return (await native.clipGradNormAsync(grads.map((g) => g?.native), maxNorm)) ?? NaN;
}

/**
 * `out[0] = Σ g²` over every tensor, summed in float64 as {@link gradNorm} sums it (the same
 * bits), written into `out` (f64 `[1]` on the tensors' device) instead of returned: on a GPU
 * nothing comes back to the host until the caller reads `out`, with whatever else it reads then.
 */
export function gradSumsqInto(out: Tensor, tensors: Tensor[]): void {
  native.gradSumsqInto(out.native, tensors.map((g) => g?.native));
}

/** {@link gradSumsqInto} on the thread pool. */
export function gradSumsqIntoAsync(out: Tensor, tensors: Tensor[]): Promise<void> {
  return native.gradSumsqIntoAsync(out.native, tensors.map((g) => g?.native));
}

/**
 * The scaling of {@link clipGradNorm} for a `norm` already known (e.g. `√` of what
 * {@link gradSumsqInto} wrote): when `norm > maxNorm`, grads `*= maxNorm / (norm + 1e-6)`; a
 * non-finite norm leaves them untouched.
 */
export function clipGradsTo(grads: Tensor[], maxNorm: number, norm: number): void {
  native.clipGradsTo(grads.map((g) => g?.native), maxNorm, norm);
}

/** {@link clipGradsTo} on the thread pool. */
export function clipGradsToAsync(grads: Tensor[], maxNorm: number, norm: number): Promise<void> {
  return native.clipGradsToAsync(grads.map((g) => g?.native), maxNorm, norm);
}
