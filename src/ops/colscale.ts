/**
 * Column scales and row norms over f32 tensors, the engine side of IA3 (a learned vector
 * scaling a Linear's output or input features) and DoRA (magnitude / ‖W‖ per output row).
 *
 * Shapes: `[..., C]` means any leading dimensions, then C (they are flattened into rows).
 * The scale gradient `ds` accumulates (`+=`), like every parameter gradient; `dx` is overwritten.
 * Each op has an `...Async` twin that runs on the libuv thread pool and resolves when done.
 */
import { native, NativeTensor } from '../native';
import { Tensor } from '../tensor';

const opt = (t: Tensor | null | undefined): NativeTensor | null => (t ? t.native : null);

/** `y[..., c] = x[..., c]·s[c]`. x, y: `[..., C]`; s: `[C]`. y may be x itself (in place). */
export function mulCols(y: Tensor, x: Tensor, s: Tensor): void {
  native.mulCols(y.native, x.native, s.native);
}
/** {@link mulCols} on the thread pool. */
export function mulColsAsync(y: Tensor, x: Tensor, s: Tensor): Promise<void> {
  return native.mulColsAsync(y.native, x.native, s.native);
}

/**
 * Gradient of {@link mulCols}: `dx = dy·s` (overwritten; it may be dy or x itself; null skips it) and
 * `ds[c] += Σ_rows dy[..., c]·x[..., c]` (accumulated, summed in double; null skips it). ds is
 * the same at any thread count.
 */
export function mulColsBackward(dx: Tensor | null, ds: Tensor | null, dy: Tensor, x: Tensor, s: Tensor): void {
  native.mulColsBackward(opt(dx), opt(ds), dy.native, x.native, s.native);
}
/** {@link mulColsBackward} on the thread pool. */
export function mulColsBackwardAsync(dx: Tensor | null, ds: Tensor | null, dy: Tensor, x: Tensor, s: Tensor): Promise<void> {
  return native.mulColsBackwardAsync(opt(dx), opt(ds), dy.native, x.native, s.native);
}

/** `out[r] = sqrt(Σ_c w[r, c]²)`, summed in double. w: `[R, C]`, f32 or bf16; out: f32 `[R]`. */
export function rowNorms(out: Tensor, w: Tensor): void {
  native.rowNorms(out.native, w.native);
}
/** {@link rowNorms} on the thread pool. */
export function rowNormsAsync(out: Tensor, w: Tensor): Promise<void> {
  return native.rowNormsAsync(out.native, w.native);
}

/**
 * DoRA's scale from its magnitude (PEFT's `magnitude / weight_norm`): `g = m / norms` and
 * `gMinus1 = g − 1`, each rounded to f32 once. All f32 `[n]` on one device; outputs apart from
 * the inputs.
 */
export function doraScale(g: Tensor, gMinus1: Tensor, m: Tensor, norms: Tensor): void {
  native.doraScale(g.native, gMinus1.native, m.native, norms.native);
}
/** {@link doraScale} on the thread pool. */
export function doraScaleAsync(g: Tensor, gMinus1: Tensor, m: Tensor, norms: Tensor): Promise<void> {
  return native.doraScaleAsync(g.native, gMinus1.native, m.native, norms.native);
}

/**
 * DoRA's magnitude gradient: `dm += dg / norms` (the norm detached, a constant to the gradient),
 * the quotient and the sum in double, rounded once. All f32 `[n]` on one device.
 */
export function doraMagnitudeBackward(dm: Tensor, dg: Tensor, norms: Tensor): void {
  native.doraMagnitudeBackward(dm.native, dg.native, norms.native);
}
/** {@link doraMagnitudeBackward} on the thread pool. */
export function doraMagnitudeBackwardAsync(dm: Tensor, dg: Tensor, norms: Tensor): Promise<void> {
  return native.doraMagnitudeBackwardAsync(dm.native, dg.native, norms.native);
}
