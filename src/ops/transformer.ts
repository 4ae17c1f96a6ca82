/**
 * Transformer ops over f32 tensors: token embedding, RMSNorm / LayerNorm, rotary position
 * embedding, activations (SiLU, GELU, SwiGLU), elementwise arithmetic, f32 <-> bf16 casts and
 * dropout. Every forward has its backward beside it; outputs come first, then inputs.
 *
 * Shapes: `[..., C]` means any leading dimensions, then C (they are flattened into rows).
 * Parameter gradients (`dtable`, `dw`, `db`) accumulate (`+=`), so micro-batches add up;
 * activation gradients (`dx`, ...) are overwritten. Each op has an `...Async` twin that runs on
 * the libuv thread pool and resolves when done.
 */
import { native, NativeTensor } from '../native';
import { Tensor } from '../tensor';

const opt = (t: Tensor | null | undefined): NativeTensor | null => (t ? t.native : null);

// ---- Embedding ------------------------------------------------------------------------------

/**
 * `out[..., C] = table[ids[...], :]`. ids: i32 of any shape, each in `[0, V)`; table: `[V, C]`.
 * An id outside throws `E_ARG` naming it, checked on the host before the kernel runs; with
 * `fault` (an index-fault record on a GPU, index_fault.ts) the kernel records it there instead and
 * leaves that row zero, so the ids need not be copied back.
 */
export function embeddingForward(out: Tensor, ids: Tensor, table: Tensor, fault?: Tensor): void {
  native.embeddingForward(out.native, ids.native, table.native, opt(fault));
}
/** {@link embeddingForward} on the thread pool. */
export function embeddingForwardAsync(out: Tensor, ids: Tensor, table: Tensor, fault?: Tensor): Promise<void> {
  return native.embeddingForwardAsync(out.native, ids.native, table.native, opt(fault));
}

/**
 * `dtable[ids[n], :] += dout[n, :]`; repeated ids add up. dtable: `[V, C]`, dout: `[...ids.shape, C]`.
 * ids and `fault` as in {@link embeddingForward} (a recorded id adds nothing).
 */
export function embeddingBackward(dtable: Tensor, dout: Tensor, ids: Tensor, fault?: Tensor): void {
  native.embeddingBackward(dtable.native, dout.native, ids.native, opt(fault));
}
/** {@link embeddingBackward} on the thread pool. */
export function embeddingBackwardAsync(dtable: Tensor, dout: Tensor, ids: Tensor, fault?: Tensor): Promise<void> {
  return native.embeddingBackwardAsync(dtable.native, dout.native, ids.native, opt(fault));
}

// ---- Normalization --------------------------------------------------------------------------

export interface RmsnormOptions {
  /** Added to the mean square before the square root (`rms_norm_eps` in a Llama config). Defaults to `1e-6`. */
  eps?: number;
}

/**
 * RMSNorm (Llama): `out = x / sqrt(mean(x²) + eps) · w` over the last dimension.
 * x, out: `[..., C]`; w: `[C]`; rstd: `[...]` receives `1/sqrt(mean(x²) + eps)` for the backward pass.
 */
export function rmsnormForward(out: Tensor, rstd: Tensor, x: Tensor, w: Tensor, o: RmsnormOptions = {}): void {
  native.rmsnormForward(out.native, rstd.native, x.native, w.native, o.eps ?? 1e-6);
}
/** {@link rmsnormForward} on the thread pool. */
export function rmsnormForwardAsync(out: Tensor, rstd: Tensor, x: Tensor, w: Tensor, o: RmsnormOptions = {}): Promise<void> {
  return native.rmsnormForwardAsync(out.native, rstd.native, x.native, w.native, o.eps ?? 1e-6);
}

/** Gradient of {@link rmsnormForward}: dx is overwritten (it may be dout itself); dw, when given, accumulates. */
export function rmsnormBackward(dx: Tensor, dw: Tensor | null, dout: Tensor, x: Tensor, w: Tensor, rstd: Tensor): void {
  native.rmsnormBackward(dx.native, opt(dw), dout.native, x.native, w.native, rstd.native);
}
/** {@link rmsnormBackward} on the thread pool. */
export function rmsnormBackwardAsync(
  dx: Tensor, dw: Tensor | null, dout: Tensor, x: Tensor, w: Tensor, rstd: Tensor,
): Promise<void> {
  return native.rmsnormBackwardAsync(dx.native, opt(dw), dout.native, x.native, w.native, rstd.native);
}

export interface LayernormOptions {
  /** Added to the variance before the square root (`layer_norm_eps`). Defaults to `1e-5`. */
  eps?: number;
}

/**
 * LayerNorm: `out = (x - mean) / sqrt(var + eps) · w + b` over the last dimension.
 * x, out: `[..., C]`; w, b: `[C]` (b may be null); mean, rstd: `[...]`, kept for the backward pass.
 */
export function layernormForward(
  out: Tensor, mean: Tensor, rstd: Tensor, x: Tensor, w: Tensor, b: Tensor | null, o: LayernormOptions = {},
): void {
  native.layernormForward(out.native, mean.native, rstd.native, x.native, w.native, opt(b), o.eps ?? 1e-5);
}
/** {@link layernormForward} on the thread pool. */
export function layernormForwardAsync(
  out: Tensor, mean: Tensor, rstd: Tensor, x: Tensor, w: Tensor, b: Tensor | null, o: LayernormOptions = {},
): Promise<void> {
  return native.layernormForwardAsync(out.native, mean.native, rstd.native, x.native, w.native, opt(b), o.eps ?? 1e-5);
}

/** Gradient of {@link layernormForward}: dx is overwritten; dw and db, when given, accumulate. */
export function layernormBackward(
  dx: Tensor, dw: Tensor | null, db: Tensor | null, dout: Tensor, x: Tensor, w: Tensor, mean: Tensor, rstd: Tensor,
): void {
  native.layernormBackward(dx.native, opt(dw), opt(db), dout.native, x.native, w.native, mean.native, rstd.native);
}
/** {@link layernormBackward} on the thread pool. */
export function layernormBackwardAsync(
  dx: Tensor, dw: Tensor | null, db: Tensor | null, dout: Tensor, x: Tensor, w: Tensor, mean: Tensor, rstd: Tensor,
): Promise<void> {
  return native.layernormBackwardAsync(dx.native, opt(dw), opt(db), dout.native, x.native, w.native, mean.native, rstd.native);
}

// ---- Rotary position embedding ----------------------------------------------------------------

/** `rope_scaling` with `rope_type: "llama3"` in a Hugging Face config (Llama 3.1 and later). */
export interface Llama3RopeScaling {
  /** Divides the frequencies of the longest wavelengths (`factor`). */
  factor: number;
  /** Wavelengths longer than original/lowFreqFactor are fully scaled. Defaults to `1`. */
  lowFreqFactor?: number;
  /** Wavelengths shorter than original/highFreqFactor are left alone. Defaults to `4`. */
  highFreqFactor?: number;
  /** The context length the model was first trained with. Defaults to `8192`. */
  originalMaxPositionEmbeddings?: number;
}

export interface RopeTableOptions {
  /** The base of the frequencies, `rope_theta`. Defaults to `10000`. */
  theta?: number;
  /** llama3 frequency scaling; null or absent means none. Defaults to `null`. */
  scaling?: Llama3RopeScaling | null;
}

function ropeTableArgs(o: RopeTableOptions): [number, number, number, number, number] {
  const s = o.scaling;
  return [o.theta ?? 10000, s?.factor ?? 0, s?.lowFreqFactor ?? 1, s?.highFreqFactor ?? 4, s?.originalMaxPositionEmbeddings ?? 8192];
}

/**
 * The cos and sin tables of rotary embedding for a head size D: `cos[t, i] = cos(positions[t] · inv_freq[i])`
 * with `inv_freq[i] = theta^(-2i/D)` (optionally llama3-scaled), as Hugging Face computes them.
 * cos, sin: f32 `[T, D/2]`; positions: i32 `[T]`.
 */
export function ropeTable(cos: Tensor, sin: Tensor, positions: Tensor, o: RopeTableOptions = {}): void {
  native.ropeTable(cos.native, sin.native, positions.native, ...ropeTableArgs(o));
}
/** {@link ropeTable} on the thread pool. */
export function ropeTableAsync(cos: Tensor, sin: Tensor, positions: Tensor, o: RopeTableOptions = {}): Promise<void> {
  return native.ropeTableAsync(cos.native, sin.native, positions.native, ...ropeTableArgs(o));
}

/**
 * Rotates each head of x (Hugging Face rotate-half layout: x[i] pairs with x[i + D/2]) by the
 * angles of its position t. x, out: `[..., T, H, D]` (out may be x); cos, sin: `[T, D/2]` from {@link ropeTable}.
 */
export function ropeForward(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor): void {
  native.ropeForward(out.native, x.native, cos.native, sin.native);
}
/** {@link ropeForward} on the thread pool. */
export function ropeForwardAsync(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor): Promise<void> {
  return native.ropeForwardAsync(out.native, x.native, cos.native, sin.native);
}

/** Gradient of {@link ropeForward}: the inverse rotation. dx may be dout itself. */
export function ropeBackward(dx: Tensor, dout: Tensor, cos: Tensor, sin: Tensor): void {
  native.ropeBackward(dx.native, dout.native, cos.native, sin.native);
}
/** {@link ropeBackward} on the thread pool. */
export function ropeBackwardAsync(dx: Tensor, dout: Tensor, cos: Tensor, sin: Tensor): Promise<void> {
  return native.ropeBackwardAsync(dx.native, dout.native, cos.native, sin.native);
}

// ---- Activations (elementwise; every tensor has the same shape; an output may be an input) -----

/** `out = x · sigmoid(x)`. */
export function siluForward(out: Tensor, x: Tensor): void {
  native.siluForward(out.native, x.native);
}
/** {@link siluForward} on the thread pool. */
export function siluForwardAsync(out: Tensor, x: Tensor): Promise<void> {
  return native.siluForwardAsync(out.native, x.native);
}

/** `dx = dout · silu'(x)`. */
export function siluBackward(dx: Tensor, dout: Tensor, x: Tensor): void {
  native.siluBackward(dx.native, dout.native, x.native);
}
/** {@link siluBackward} on the thread pool. */
export function siluBackwardAsync(dx: Tensor, dout: Tensor, x: Tensor): Promise<void> {
  return native.siluBackwardAsync(dx.native, dout.native, x.native);
}

export interface GeluOptions {
  /**
   * `'none'`: the exact form `0.5·x·(1 + erf(x/√2))` (HF `"gelu"`); `'tanh'`: the tanh
   * approximation (HF `"gelu_pytorch_tanh"`, `"gelu_new"`). Defaults to `'none'`, as PyTorch.
   */
  approximate?: 'none' | 'tanh';
}

/** GELU, exact or tanh-approximated. */
export function geluForward(out: Tensor, x: Tensor, o: GeluOptions = {}): void {
  native.geluForward(out.native, x.native, o.approximate === 'tanh');
}
/** {@link geluForward} on the thread pool. */
export function geluForwardAsync(out: Tensor, x: Tensor, o: GeluOptions = {}): Promise<void> {
  return native.geluForwardAsync(out.native, x.native, o.approximate === 'tanh');
}

/** `dx = dout · gelu'(x)` for the same `approximate` as the forward pass. */
export function geluBackward(dx: Tensor, dout: Tensor, x: Tensor, o: GeluOptions = {}): void {
  native.geluBackward(dx.native, dout.native, x.native, o.approximate === 'tanh');
}
/** {@link geluBackward} on the thread pool. */
export function geluBackwardAsync(dx: Tensor, dout: Tensor, x: Tensor, o: GeluOptions = {}): Promise<void> {
  return native.geluBackwardAsync(dx.native, dout.native, x.native, o.approximate === 'tanh');
}

/** ReLU, `out = max(x, 0)` (out may be x): bottleneck adapters and PEFT's prompt encoders. */
export function reluForward(out: Tensor, x: Tensor): void {
  native.reluForward(out.native, x.native);
}
/** {@link reluForward} on the thread pool. */
export function reluForwardAsync(out: Tensor, x: Tensor): Promise<void> {
  return native.reluForwardAsync(out.native, x.native);
}

/** `dx = dout` where `x > 0`, else 0 (dx may be dout). */
export function reluBackward(dx: Tensor, dout: Tensor, x: Tensor): void {
  native.reluBackward(dx.native, dout.native, x.native);
}
/** {@link reluBackward} on the thread pool. */
export function reluBackwardAsync(dx: Tensor, dout: Tensor, x: Tensor): Promise<void> {
  return native.reluBackwardAsync(dx.native, dout.native, x.native);
}

/** `out = tanh(x)` (out may be x), in double rounded once: prefix tuning's projection MLP. */
export function tanhForward(out: Tensor, x: Tensor): void {
  native.tanhForward(out.native, x.native);
}
/** {@link tanhForward} on the thread pool. */
export function tanhForwardAsync(out: Tensor, x: Tensor): Promise<void> {
  return native.tanhForwardAsync(out.native, x.native);
}

/** `dx = dout · (1 − out²)` from the forward's output `out` (dx may be dout). */
export function tanhBackward(dx: Tensor, dout: Tensor, out: Tensor): void {
  native.tanhBackward(dx.native, dout.native, out.native);
}
/** {@link tanhBackward} on the thread pool. */
export function tanhBackwardAsync(dx: Tensor, dout: Tensor, out: Tensor): Promise<void> {
  return native.tanhBackwardAsync(dx.native, dout.native, out.native);
}

/** SwiGLU of the Llama MLP: `out = silu(gate) · up`. */
export function swigluForward(out: Tensor, gate: Tensor, up: Tensor): void {
  native.swigluForward(out.native, gate.native, up.native);
}
/** {@link swigluForward} on the thread pool. */
export function swigluForwardAsync(out: Tensor, gate: Tensor, up: Tensor): Promise<void> {
  return native.swigluForwardAsync(out.native, gate.native, up.native);
}

/** `dgate = dout · up · silu'(gate)`, `dup = dout · silu(gate)`; dgate and dup must be different tensors. */
export function swigluBackward(dgate: Tensor, dup: Tensor, dout: Tensor, gate: Tensor, up: Tensor): void {
  native.swigluBackward(dgate.native, dup.native, dout.native, gate.native, up.native);
}
/** {@link swigluBackward} on the thread pool. */
export function swigluBackwardAsync(dgate: Tensor, dup: Tensor, dout: Tensor, gate: Tensor, up: Tensor): Promise<void> {
  return native.swigluBackwardAsync(dgate.native, dup.native, dout.native, gate.native, up.native);
}

// ---- Elementwise arithmetic and casts -----------------------------------------------------------

/** `out = a + b` (a residual connection; out may be a or b). */
export function add(out: Tensor, a: Tensor, b: Tensor): void {
  native.add(out.native, a.native, b.native);
}
/** {@link add} on the thread pool. */
export function addAsync(out: Tensor, a: Tensor, b: Tensor): Promise<void> {
  return native.addAsync(out.native, a.native, b.native);
}

/** `y = a·x + y`. */
export function axpy(y: Tensor, x: Tensor, a: number): void {
  native.axpy(y.native, x.native, a);
}
/** {@link axpy} on the thread pool. */
export function axpyAsync(y: Tensor, x: Tensor, a: number): Promise<void> {
  return native.axpyAsync(y.native, x.native, a);
}

/**
 * `dst[:, dstCol : dstCol + width] = src[:, srcCol : srcCol + width]` for 2-D f32 tensors with
 * the same rows (not sharing memory): a block of columns copied where the tensors live.
 */
export function copyCols(dst: Tensor, dstCol: number, src: Tensor, srcCol: number, width: number): void {
  native.copyCols(dst.native, dstCol, src.native, srcCol, width);
}
/** {@link copyCols} on the thread pool. */
export function copyColsAsync(dst: Tensor, dstCol: number, src: Tensor, srcCol: number, width: number): Promise<void> {
  return native.copyColsAsync(dst.native, dstCol, src.native, srcCol, width);
}

/**
 * Zeroes `x` (f32) where `keep` (u8 of x's shape) is 0, in place; elsewhere x is unchanged
 * (diff pruning's mask, applied to δ and its gradient where they live).
 */
export function keepMasked(x: Tensor, keep: Tensor): void {
  native.keepMasked(x.native, keep.native);
}
/** {@link keepMasked} on the thread pool. */
export function keepMaskedAsync(x: Tensor, keep: Tensor): Promise<void> {
  return native.keepMaskedAsync(x.native, keep.native);
}

/** Converts x into out: f32 -> bf16 (round to nearest even, as PyTorch) or bf16 -> f32 (exact). Same shape. */
export function cast(out: Tensor, x: Tensor): void {
  native.cast(out.native, x.native);
}
/** {@link cast} on the thread pool. */
export function castAsync(out: Tensor, x: Tensor): Promise<void> {
  return native.castAsync(out.native, x.native);
}

// ---- Dropout ------------------------------------------------------------------------------------

export interface DropoutOptions {
  /** Probability of zeroing an element, in `[0, 1]`; `0` is the identity. */
  p: number;
  /** Selects the mask: the same seed and offset give the same mask on every device. An integer >= 0. */
  seed: number | bigint;
  /**
   * Index of the first element in the seed's stream, so that several tensors (or steps) under
   * one seed draw different masks: give each call its own range. Defaults to `0`.
   */
  offset?: number | bigint;
}

/**
 * `out = x / (1 - p)` where kept, `0` where dropped. The mask is a pure function of
 * (seed, offset + element index), so the backward pass recomputes it instead of storing it.
 */
export function dropoutForward(out: Tensor, x: Tensor, o: DropoutOptions): void {
  native.dropoutForward(out.native, x.native, o.p, o.seed, o.offset ?? 0);
}
/** {@link dropoutForward} on the thread pool. */
export function dropoutForwardAsync(out: Tensor, x: Tensor, o: DropoutOptions): Promise<void> {
  return native.dropoutForwardAsync(out.native, x.native, o.p, o.seed, o.offset ?? 0);
}

/** Gradient of {@link dropoutForward} with the same options: the same mask and scale applied to dout. */
export function dropoutBackward(dx: Tensor, dout: Tensor, o: DropoutOptions): void {
  native.dropoutBackward(dx.native, dout.native, o.p, o.seed, o.offset ?? 0);
}
/** {@link dropoutBackward} on the thread pool. */
export function dropoutBackwardAsync(dx: Tensor, dout: Tensor, o: DropoutOptions): Promise<void> {
  return native.dropoutBackwardAsync(dx.native, dout.native, o.p, o.seed, o.offset ?? 0);
}
