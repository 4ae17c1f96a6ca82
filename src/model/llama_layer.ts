/**
 * One Llama decoder layer, forward beside backward, shared by training (llama_forward.ts) and
 * generation (llama_generate.ts): RMSNorm → attention with RoPE → residual → RMSNorm → SwiGLU
 * MLP → residual. It knows no adapter method: every Linear and RMSNorm goes through the
 * adapter's site when it has one (sites.ts), else through the frozen base.
 *
 * Activations are [rows, features] with rows = B·T; attention reads the same memory as
 * [B, T, heads, head_dim]. With a KV cache (generation) the new keys and values are written
 * straight into their cache slots and attention reads every cached position.
 */
import * as ops from '../ops';
import { Tensor } from '../tensor';
import type { LlamaModel } from './llama';
import { BaseLinear, baseBackwardInput, baseForward, ModelAdapter, PrefixSite, Scratch, SiteCall } from './sites';

/** Per-layer activations the backward pass reads, as views of the current batch's size. */
export interface LayerActs {
  h1: Tensor; rstd1: Tensor;
  q: Tensor; k: Tensor; v: Tensor; att: Tensor; lse: Tensor;
  x2: Tensor; h2: Tensor; rstd2: Tensor;
  g: Tensor; u: Tensor; act: Tensor;
}

/** Per-layer gradient buffers of the backward pass (views of the batch's size). */
export interface LayerGrads {
  dh: Tensor; dtmp: Tensor; datt: Tensor; dq: Tensor; dk: Tensor; dv: Tensor; dact: Tensor; dg: Tensor; du: Tensor;
}

/** Keys and values of earlier positions: one layer's [maxT, kv_heads·head_dim] cache, filled up to `pos`. */
export interface LayerCache {
  k: Tensor;
  v: Tensor;
  pos: number;
}

/** How one forward (and its backward) is run: dropout seed and the stride of the per-site random streams. */
export interface PassOptions {
  /** Dropout probability of this pass (0 outside training). */
  dropout: number;
  dropoutSeed: number;
  /** Elements of the random stream reserved per Linear call site. */
  siteStride: number;
  /** Generation: the adapter's weights stay as they are for the life of these layers. */
  weightsFixed?: boolean;
}

export const LAYER_LINEARS = [
  'self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj',
] as const;

export class LlamaLayers {
  readonly model: LlamaModel;
  readonly adapter: ModelAdapter | null;
  readonly scratch: Scratch;
  private readonly bases = new Map<string, BaseLinear>();

  constructor(model: LlamaModel, adapter: ModelAdapter | null) {
    this.model = model;
    this.adapter = adapter;
    this.scratch = new Scratch(model.device);
  }

  /** The frozen Linear of a module (its weight in storage, its bias). */
  base(module: string): BaseLinear {
    let b = this.bases.get(module);
    if (!b) {
      b = { module, weight: this.model.linear(`${module}.weight`), bias: this.model.maybeWeight(`${module}.bias`), compute: this.model.compute };
      this.bases.set(module, b);
    }
    return b;
  }

  private call(o: PassOptions, site: number): SiteCall {
    return { dropout: o.dropout, dropoutSeed: o.dropoutSeed, streamOffset: site * o.siteStride, scratch: this.scratch, weightsFixed: o.weightsFixed ?? false };
  }

  /** Y = the Linear `module` of X, with the adapter's terms. `site` numbers the call for its dropout stream. */
  linearForward(module: string, Y: Tensor, X: Tensor, o: PassOptions, site: number): void {
    const s = this.adapter?.linear(module);
    if (s) s.forward(Y, X, this.base(module), this.call(o, site));
    else baseForward(this.base(module), Y, X);
  }

  /** dX = ∂/∂X (overwritten; skipped when null); the adapter's gradients accumulate. */
  linearBackward(module: string, dX: Tensor | null, dY: Tensor, X: Tensor, o: PassOptions, site: number): void {
    const s = this.adapter?.linear(module);
    if (s) s.backward(dX, dY, X, this.base(module), this.call(o, site));
    else if (dX) baseBackwardInput(this.base(module), dX, dY);
  }

  /** The scale of an RMSNorm (the adapter's when it trains one) and its gradient (null when frozen). */
  norm(module: string): { w: Tensor; dw: Tensor | null } {
    const s = this.adapter?.norm(module);
    return s ? { w: s.weight, dw: s.grad } : { w: this.model.weight(`${module}.weight`), dw: null };
  }

  /** Whether the adapter trains the norm (its gradient is needed even where no input gradient is). */
  normTrains(module: string): boolean {
    return !!this.adapter?.norm(module)?.grad;
  }

  /**
   * x [rows, C] → xOut. `cos`/`sin` are the RoPE tables of the rows' positions. With `cache`,
   * B must be 1: k/v are the cache slots of these positions and attention reads the whole cache.
   * With one cache per row (batched decoding: B = 1, T = rows, each row the newest token of its
   * own sequence), each row's key and value go into its cache and it attends to that cache alone.
   */
  forward(l: number, x: Tensor, xOut: Tensor, a: LayerActs, B: number, T: number, rope: { cos: Tensor; sin: Tensor }, o: PassOptions, cache?: LayerCache | readonly LayerCache[]): void {
    const c = this.model.config;
    const p = `model.layers.${l}.`;
    const D = c.headDim;
    const site = l * LAYER_LINEARS.length;
    const n1 = this.norm(`${p}input_layernorm`);
    ops.rmsnormForward(a.h1, a.rstd1, x, n1.w, { eps: c.rmsNormEps });
    this.linearForward(`${p}self_attn.q_proj`, a.q, a.h1, o, site);
    this.linearForward(`${p}self_attn.k_proj`, a.k, a.h1, o, site + 1);
    this.linearForward(`${p}self_attn.v_proj`, a.v, a.h1, o, site + 2);
    const q4 = a.q.view(0, [B, T, c.numHeads, D]);
    const k4 = a.k.view(0, [B, T, c.numKvHeads, D]);
    ops.ropeForward(q4, q4, rope.cos, rope.sin);
    ops.ropeForward(k4, k4, rope.cos, rope.sin);
    if (Array.isArray(cache)) this.rowsAttention(a, cache);
    else this.attention(l, a, B, T, q4, k4, cache as LayerCache | undefined);
    this.linearForward(`${p}self_attn.o_proj`, a.x2, a.att, o, site + 3);
    this.adapter?.block?.(l, 'attn')?.forward(a.x2, this.call(o, site + 3));
    ops.add(a.x2, a.x2, x);
    const n2 = this.norm(`${p}post_attention_layernorm`);
    ops.rmsnormForward(a.h2, a.rstd2, a.x2, n2.w, { eps: c.rmsNormEps });
    this.linearForward(`${p}mlp.gate_proj`, a.g, a.h2, o, site + 4);
    this.linearForward(`${p}mlp.up_proj`, a.u, a.h2, o, site + 5);
    ops.swigluForward(a.act, a.g, a.u);
    this.linearForward(`${p}mlp.down_proj`, xOut, a.act, o, site + 6);
    this.adapter?.block?.(l, 'mlp')?.forward(xOut, this.call(o, site + 6));
    ops.add(xOut, xOut, a.x2);
  }

  /** a.att of B sequences of T tokens from the rotated q4, k4 and a.v. */
  private attention(l: number, a: LayerActs, B: number, T: number, q4: Tensor, k4: Tensor, cache: LayerCache | undefined): void {
    const c = this.model.config;
    const D = c.headDim;
    // Keys and values: the cache's (generation), or a prefix's rows before this batch's (prefix tuning), or this batch's.
    const pre = cache ? undefined : this.adapter?.prefix?.(l);
    const Tk = cache ? cache.pos + T : T + (pre ? pre.keys.shape[0] : 0);
    const withPrefix = pre ? this.prefixed(l, pre, a.k, a.v, B, T) : null;
    const kAll = cache ? cache.k.view(0, [1, Tk, c.numKvHeads, D]) : withPrefix ? withPrefix.K : k4;
    const vAll = cache ? cache.v.view(0, [1, Tk, c.numKvHeads, D]) : withPrefix ? withPrefix.V : a.v.view(0, [B, Tk, c.numKvHeads, D]);
    ops.attentionForward(a.att.view(0, [B, T, c.numHeads, D]), a.lse.view(0, [B, c.numHeads, T]), q4, kAll, vAll, { scale: 1 / Math.sqrt(D) });
  }

  /**
   * Row i of a.q, a.k, a.v is the newest token of sequence i: its key and value go into
   * caches[i] at caches[i].pos, and it attends to that cache's pos + 1 positions.
   */
  private rowsAttention(a: LayerActs, caches: readonly LayerCache[]): void {
    const c = this.model.config;
    const D = c.headDim, H = c.numHeads, Hkv = c.numKvHeads, QD = H * D, KD = Hkv * D;
    for (let i = 0; i < caches.length; i++) {
      const { k, v, pos } = caches[i];
      k.view(pos * KD, [KD]).copyFrom(this.rowView(a.k, i, [KD]));
      v.view(pos * KD, [KD]).copyFrom(this.rowView(a.v, i, [KD]));
      // Views of a length used once: freed now, not left to finalizers a decode loop never lets run.
      const kAll = k.view(0, [1, pos + 1, Hkv, D]), vAll = v.view(0, [1, pos + 1, Hkv, D]);
      const q = this.rowView(a.q, i, [1, 1, H, D]), att = this.rowView(a.att, i, [1, 1, H, D]), lse = this.rowView(a.lse, i, [1, H, 1]);
      ops.attentionForward(att, lse, q, kAll, vAll, { scale: 1 / Math.sqrt(D) });
      kAll.dispose();
      vAll.dispose();
    }
  }

  /** Row i of `t` as `shape` (one row's elements), remembered per tensor: the same few views every layer and step. */
  private readonly rowViews = new WeakMap<Tensor, Tensor[]>();
  private rowView(t: Tensor, i: number, shape: number[]): Tensor {
    let views = this.rowViews.get(t);
    if (!views) this.rowViews.set(t, (views = []));
    return (views[i] ??= t.view(i * shape.reduce((p, d) => p * d, 1), shape));
  }

  /**
   * dx holds ∂L/∂(layer output) on entry and ∂L/∂(layer input) on exit, unless needDx is false
   * (the first layer: its input gradient would only reach the frozen embeddings).
   */
  backward(l: number, x: Tensor, a: LayerActs, dx: Tensor, d: LayerGrads, B: number, T: number, rope: { cos: Tensor; sin: Tensor }, o: PassOptions, needDx: boolean): void {
    const c = this.model.config;
    const p = `model.layers.${l}.`;
    const D = c.headDim;
    const site = l * LAYER_LINEARS.length;
    const { dh, dtmp, datt, dq, dk, dv, dact, dg, du } = d;
    // MLP: out = x2 + adapter(down(silu(gate(h2)) * up(h2)))
    this.linearBackward(`${p}mlp.down_proj`, dact, this.blockBackward(l, 'mlp', dx, dtmp, o, site + 6), a.act, o, site + 6);
    ops.swigluBackward(dg, du, dact, a.g, a.u);
    this.linearBackward(`${p}mlp.gate_proj`, dh, dg, a.h2, o, site + 4);
    this.linearBackward(`${p}mlp.up_proj`, dtmp, du, a.h2, o, site + 5);
    ops.add(dh, dh, dtmp);
    const n2 = this.norm(`${p}post_attention_layernorm`);
    ops.rmsnormBackward(dtmp, n2.dw, dh, a.x2, n2.w, a.rstd2);
    ops.add(dx, dx, dtmp);
    // Attention: x2 = x + adapter(o_proj(attention(rope(q), rope(k), v)))
    this.linearBackward(`${p}self_attn.o_proj`, datt, this.blockBackward(l, 'attn', dx, dtmp, o, site + 3), a.att, o, site + 3);
    const q4 = a.q.view(0, [B, T, c.numHeads, D]), k4 = a.k.view(0, [B, T, c.numKvHeads, D]), v4 = a.v.view(0, [B, T, c.numKvHeads, D]);
    const dq4 = dq.view(0, [B, T, c.numHeads, D]), dk4 = dk.view(0, [B, T, c.numKvHeads, D]), dv4 = dv.view(0, [B, T, c.numKvHeads, D]);
    const pre = this.adapter?.prefix?.(l);
    if (pre) {
      // The prefix rows' gradients go to the adapter; this batch's own, to dk and dv.
      const n = pre.keys.shape[0], S = n + T, KVD = c.numKvHeads * D;
      const { K, V } = this.prefixed(l, pre, null, null, B, T);
      const dK = this.scratch.get(6, [B, S, c.numKvHeads, D]), dV = this.scratch.get(7, [B, S, c.numKvHeads, D]);
      ops.attentionBackward(dq4, dK, dV, datt.view(0, [B, T, c.numHeads, D]), q4, K, V, a.att.view(0, [B, T, c.numHeads, D]),
        a.lse.view(0, [B, c.numHeads, T]), { scale: 1 / Math.sqrt(D) });
      const dPk = pre.dKeys.view(0, [n * KVD]), dPv = pre.dValues.view(0, [n * KVD]);
      for (let b = 0; b < B; b++) {
        ops.add(dPk, dPk, dK.view(b * S * KVD, [n * KVD]));
        ops.add(dPv, dPv, dV.view(b * S * KVD, [n * KVD]));
        dk.view(b * T * KVD, [T * KVD]).copyFrom(dK.view((b * S + n) * KVD, [T * KVD]));
        dv.view(b * T * KVD, [T * KVD]).copyFrom(dV.view((b * S + n) * KVD, [T * KVD]));
      }
    } else {
      ops.attentionBackward(dq4, dk4, dv4, datt.view(0, [B, T, c.numHeads, D]), q4, k4, v4, a.att.view(0, [B, T, c.numHeads, D]),
        a.lse.view(0, [B, c.numHeads, T]), { scale: 1 / Math.sqrt(D) });
    }
    ops.ropeBackward(dq4, dq4, rope.cos, rope.sin);
    ops.ropeBackward(dk4, dk4, rope.cos, rope.sin);
    // ∂L/∂h1 is needed for the input gradient, or for a trained input norm's own gradient.
    const needDh = needDx || this.normTrains(`${p}input_layernorm`);
    this.linearBackward(`${p}self_attn.q_proj`, needDh ? dh : null, dq, a.h1, o, site);
    this.linearBackward(`${p}self_attn.k_proj`, needDh ? dtmp : null, dk, a.h1, o, site + 1);
    if (needDh) ops.add(dh, dh, dtmp);
    this.linearBackward(`${p}self_attn.v_proj`, needDh ? dtmp : null, dv, a.h1, o, site + 2);
    if (!needDh) return;
    ops.add(dh, dh, dtmp);
    const n1 = this.norm(`${p}input_layernorm`);
    ops.rmsnormBackward(dtmp, n1.dw, dh, x, n1.w, a.rstd1);
    if (needDx) ops.add(dx, dx, dtmp);
  }

  /** Per layer, the keys and values with a prefix's rows before each sequence's: [B, n + T, kv_heads, head_dim]. */
  private readonly prefixBufs = new Map<number, { K: Tensor; V: Tensor }>();

  /**
   * The layer's keys and values with the prefix rows first, built from this batch's (rotated) k, v
   * [B·T, kv]; with k, v null, the ones the forward built (for the backward).
   */
  private prefixed(l: number, pre: PrefixSite, k: Tensor | null, v: Tensor | null, B: number, T: number): { K: Tensor; V: Tensor } {
    const c = this.model.config;
    const n = pre.keys.shape[0], S = n + T, KVD = c.numKvHeads * c.headDim;
    let buf = this.prefixBufs.get(l);
    if (!buf || buf.K.numel < B * S * KVD) {
      buf?.K.dispose();
      buf?.V.dispose();
      buf = { K: Tensor.empty([B * S * KVD], { device: this.model.device }), V: Tensor.empty([B * S * KVD], { device: this.model.device }) };
      this.prefixBufs.set(l, buf);
    }
    if (k && v) {
      for (let b = 0; b < B; b++) {
        buf.K.view(b * S * KVD, [n * KVD]).copyFrom(pre.keys.view(0, [n * KVD]));
        buf.V.view(b * S * KVD, [n * KVD]).copyFrom(pre.values.view(0, [n * KVD]));
        buf.K.view((b * S + n) * KVD, [T * KVD]).copyFrom(k.view(b * T * KVD, [T * KVD]));
        buf.V.view((b * S + n) * KVD, [T * KVD]).copyFrom(v.view(b * T * KVD, [T * KVD]));
      }
    }
    return { K: buf.K.view(0, [B, S, c.numKvHeads, c.headDim]), V: buf.V.view(0, [B, S, c.numKvHeads, c.headDim]) };
  }

  /** The gradient at a block's own output: dOut itself, or through the adapter's block site into `into`. */
  private blockBackward(l: number, part: 'attn' | 'mlp', dOut: Tensor, into: Tensor, o: PassOptions, site: number): Tensor {
    const s = this.adapter?.block?.(l, part);
    if (!s) return dOut;
    s.backward(into, dOut, this.call(o, site));
    return into;
  }

  dispose(): void {
    this.scratch.dispose();
    for (const b of this.prefixBufs.values()) {
      b.K.dispose();
      b.V.dispose();
    }
    this.prefixBufs.clear();
  }
}
