/**
 * Forward and backward of a Llama-family model for adapter training, read top to bottom as
 * llm.c's step is: embeddings → N × (RMSNorm → attention with RoPE → residual → RMSNorm →
 * SwiGLU MLP → residual) → RMSNorm → LM head fused with the loss. The base weights are frozen;
 * gradients flow to the LoRA A/B of the targeted Linear layers.
 *
 * Activations are [rows, features] with rows = B·T; attention reads the same memory as
 * [B, T, heads, head_dim]. Buffers are allocated once for the largest batch and viewed per
 * batch, so a training run does not allocate in its steps. With activation checkpointing only
 * each layer's input is kept, and a layer's forward is recomputed just before its backward.
 */
import { PeftkitError } from '../errors';
import * as ops from '../ops';
import type { LoraAdapter, LoraLayer } from '../peft/lora';
import { Tensor } from '../tensor';
import type { LlamaModel } from './llama';

export interface Batch {
  /** Token ids, row-major [B, T]. */
  inputIds: Int32Array;
  /** Labels [B, T] (-100 = no loss); the loss at position t predicts labels[t + 1]. */
  labels: Int32Array;
  B: number;
  T: number;
}

export interface StepOptions {
  /** LoRA dropout probability (0 = off). */
  dropout: number;
  /** Seed of this step's dropout masks. */
  dropoutSeed: number;
}

/** Per-layer activations the backward pass reads. */
interface LayerActs {
  h1: Tensor; rstd1: Tensor;
  q: Tensor; k: Tensor; v: Tensor; att: Tensor; lse: Tensor;
  x2: Tensor; h2: Tensor; rstd2: Tensor;
  g: Tensor; u: Tensor; act: Tensor;
  /** X·Aᵀ per LoRA module of the layer, by module suffix. */
  xa: Map<string, Tensor>;
}

const ATTN = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj'] as const;
const MLP = ['mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'] as const;

/** Preallocated max-size tensors handed out as views of the current batch's size. */
class Arena {
  private readonly all: Tensor[] = [];
  constructor(private readonly device: 'cpu' | 'cuda') {}
  alloc(elems: number, dtype: 'f32' | 'i32' = 'f32'): Tensor {
    const t = Tensor.empty([elems], { device: this.device, dtype });
    this.all.push(t);
    return t;
  }
  dispose(): void {
    for (const t of this.all) t.dispose();
    this.all.length = 0;
  }
}

export class LlamaLoraForward {
  private readonly model: LlamaModel;
  private readonly adapter: LoraAdapter | null;
  private readonly maxRows: number;
  private readonly arena: Arena;
  // Flat max-size storage; views of the batch size are cut from these each step.
  private readonly store: {
    x: Tensor[]; // L + 1 residual-stream states
    layers: LayerActs[];
    hf: Tensor; rstdf: Tensor; losses: Tensor; ids: Tensor; targets: Tensor; positions: Tensor; cos: Tensor; sin: Tensor;
    dx: Tensor; dh: Tensor; dtmp: Tensor; datt: Tensor; dq: Tensor; dk: Tensor; dv: Tensor; dact: Tensor; dg: Tensor; du: Tensor;
    xdrop: Tensor; dxdrop: Tensor; dxdrop2: Tensor;
  };
  private readonly checkpointing: boolean;
  /** Elements of dropout stream reserved per call site (rows × widest input). */
  private readonly siteStride: number;

  /** Buffers for batches of up to `maxRows` = B·T tokens and sequences up to `maxT`. */
  constructor(model: LlamaModel, adapter: LoraAdapter | null, maxRows: number, maxT: number, activationCheckpointing = false) {
    this.model = model;
    this.adapter = adapter;
    this.maxRows = maxRows;
    this.checkpointing = activationCheckpointing;
    model.checkSequenceLength(maxT);
    // The head's logits are produced inside the fused chunked loss, which has no low-rank term:
    // refused rather than trained as if the adapter were not there.
    if (adapter?.layers.has('lm_head')) {
      throw new PeftkitError('E_UNSUPPORTED', 'LoRA on lm_head is not supported for training (PEFT\'s "all-linear" leaves it out too); remove lm_head from the target modules');
    }
    const c = model.config;
    const a = (this.arena = new Arena(model.device));
    const C = c.hiddenSize, F = c.intermediateSize, QD = c.numHeads * c.headDim, KD = c.numKvHeads * c.headDim;
    const R = maxRows;
    const r = adapter?.config.r ?? 0;
    // With checkpointing one set serves every layer, so it holds X·Aᵀ for any adapted suffix.
    const adapted = (l: number, m: string) =>
      activationCheckpointing ? Array.from({ length: c.numLayers }, (_, i) => i).some((i) => this.lora(i, m)) : !!this.lora(l, m);
    const layerSet = (l: number) => {
      const xa = new Map<string, Tensor>();
      for (const m of [...ATTN, ...MLP]) if (adapted(l, m)) xa.set(m, a.alloc(R * r));
      return {
        h1: a.alloc(R * C), rstd1: a.alloc(R), q: a.alloc(R * QD), k: a.alloc(R * KD), v: a.alloc(R * KD),
        att: a.alloc(R * QD), lse: a.alloc(R * c.numHeads), x2: a.alloc(R * C), h2: a.alloc(R * C), rstd2: a.alloc(R),
        g: a.alloc(R * F), u: a.alloc(R * F), act: a.alloc(R * F), xa,
      };
    };
    const layers = activationCheckpointing ? [layerSet(0)] : Array.from({ length: c.numLayers }, (_, l) => layerSet(l));
    const widest = Math.max(C, F, QD);
    this.siteStride = R * widest;
    this.store = {
      x: Array.from({ length: c.numLayers + 1 }, () => a.alloc(R * C)),
      layers,
      hf: a.alloc(R * C), rstdf: a.alloc(R), losses: a.alloc(R),
      ids: a.alloc(R, 'i32'), targets: a.alloc(R, 'i32'), positions: a.alloc(maxT, 'i32'),
      cos: a.alloc((maxT * c.headDim) / 2), sin: a.alloc((maxT * c.headDim) / 2),
      dx: a.alloc(R * C), dh: a.alloc(R * C), dtmp: a.alloc(R * C), datt: a.alloc(R * QD), dq: a.alloc(R * QD),
      dk: a.alloc(R * KD), dv: a.alloc(R * KD), dact: a.alloc(R * F), dg: a.alloc(R * F), du: a.alloc(R * F),
      xdrop: a.alloc(R * widest), dxdrop: a.alloc(R * widest), dxdrop2: a.alloc(R * widest),
    };
  }

  private lora(l: number, suffix: string): LoraLayer | undefined {
    return this.adapter?.layers.get(`model.layers.${l}.${suffix}`);
  }

  /** Views of the flat buffers at this batch's size. */
  private view(t: Tensor, rows: number, cols: number): Tensor {
    return t.view(0, [rows, cols]);
  }

  private acts(l: number, rows: number): LayerActs {
    const c = this.model.config;
    const s = this.store.layers[this.checkpointing ? 0 : l];
    const C = c.hiddenSize, F = c.intermediateSize, QD = c.numHeads * c.headDim, KD = c.numKvHeads * c.headDim;
    const r = this.adapter?.config.r ?? 0;
    const xa = new Map<string, Tensor>();
    for (const [k, t] of s.xa) xa.set(k, this.view(t, rows, r));
    return {
      h1: this.view(s.h1, rows, C), rstd1: s.rstd1.view(0, [rows]), q: this.view(s.q, rows, QD), k: this.view(s.k, rows, KD),
      v: this.view(s.v, rows, KD), att: this.view(s.att, rows, QD), lse: s.lse.view(0, [rows * c.numHeads]),
      x2: this.view(s.x2, rows, C), h2: this.view(s.h2, rows, C), rstd2: s.rstd2.view(0, [rows]),
      g: this.view(s.g, rows, F), u: this.view(s.u, rows, F), act: this.view(s.act, rows, F), xa,
    };
  }

  // ---- one Linear layer (LoRA-wrapped or plain), forward beside backward ----------------------

  /** Y = X·Wᵀ (+ bias) (+ LoRA). `site` numbers the call for its dropout mask. */
  private linearForward(l: number, suffix: string, Y: Tensor, X: Tensor, xa: Map<string, Tensor>, o: StepOptions, site: number): void {
    const p = `model.layers.${l}.${suffix}`;
    const lw = this.model.linear(`${p}.weight`);
    const W = 'q' in lw ? lw.q : lw.W;
    const bias = this.model.maybeWeight(`${p}.bias`);
    const lo = this.lora(l, suffix);
    const compute = this.model.compute;
    if (!lo) {
      if ('q' in lw) ops.gemmQuant(Y, X, lw.q, { transB: true, compute });
      else ops.gemm(Y, X, lw.W, { transB: true, compute });
      if (bias) ops.biasAdd(Y, bias);
      return;
    }
    const scale = this.adapter!.scaling;
    const dropoutInput = o.dropout > 0 ? this.dropped(X, o, site) : undefined;
    ops.loraForward(Y, xa.get(suffix)!, X, W, lo.A, lo.B, { scale, bias, dropoutInput, compute });
  }

  /** dX = ∂/∂X (overwritten; skipped when null); LoRA dA, dB accumulate. */
  private linearBackward(l: number, suffix: string, dX: Tensor | null, dY: Tensor, X: Tensor, xa: Map<string, Tensor>, o: StepOptions, site: number): void {
    const p = `model.layers.${l}.${suffix}`;
    const lw = this.model.linear(`${p}.weight`);
    const W = 'q' in lw ? lw.q : lw.W;
    const lo = this.lora(l, suffix);
    const compute = this.model.compute;
    if (!lo) {
      if (dX && 'q' in lw) ops.gemmQuant(dX, dY, lw.q, { transB: false, compute });
      else if (dX && 'W' in lw) ops.gemm(dX, dY, lw.W, { compute });
      return;
    }
    const scale = this.adapter!.scaling;
    if (o.dropout <= 0) {
      ops.loraBackward(dX, lo.dA, lo.dB, dY, X, xa.get(suffix)!, W, lo.A, lo.B, { scale, compute });
      return;
    }
    // Dropout: recompute the mask's output instead of keeping it; chain the low-rank input
    // gradient through the dropout backward and add it to the base path's dX.
    const Xa = this.dropped(X, o, site);
    const dXa = this.store.dxdrop.view(0, X.shape);
    ops.loraBackward(dX, lo.dA, lo.dB, dY, Xa, xa.get(suffix)!, W, lo.A, lo.B, { scale, dDropoutInput: dXa, compute });
    if (dX) {
      const dXin = this.store.dxdrop2.view(0, X.shape);
      ops.dropoutBackward(dXin, dXa, { p: o.dropout, seed: o.dropoutSeed, offset: site * this.siteStride });
      ops.add(dX, dX, dXin);
    }
  }

  private dropped(X: Tensor, o: StepOptions, site: number): Tensor {
    const out = this.store.xdrop.view(0, X.shape);
    // Each call site draws from its own range of the step's counter-based stream.
    ops.dropoutForward(out, X, { p: o.dropout, seed: o.dropoutSeed, offset: site * this.siteStride });
    return out;
  }

  // ---- the decoder layer ---------------------------------------------------------------------

  private layerForward(l: number, x: Tensor, xOut: Tensor, a: LayerActs, B: number, T: number, o: StepOptions): void {
    const c = this.model.config;
    const p = `model.layers.${l}.`;
    const D = c.headDim;
    const site = l * 7;
    ops.rmsnormForward(a.h1, a.rstd1, x, this.model.weight(`${p}input_layernorm.weight`), { eps: c.rmsNormEps });
    this.linearForward(l, 'self_attn.q_proj', a.q, a.h1, a.xa, o, site);
    this.linearForward(l, 'self_attn.k_proj', a.k, a.h1, a.xa, o, site + 1);
    this.linearForward(l, 'self_attn.v_proj', a.v, a.h1, a.xa, o, site + 2);
    const q4 = a.q.view(0, [B, T, c.numHeads, D]);
    const k4 = a.k.view(0, [B, T, c.numKvHeads, D]);
    const v4 = a.v.view(0, [B, T, c.numKvHeads, D]);
    const { cos, sin } = this.rope(T);
    ops.ropeForward(q4, q4, cos, sin);
    ops.ropeForward(k4, k4, cos, sin);
    const att4 = a.att.view(0, [B, T, c.numHeads, D]);
    ops.attentionForward(att4, a.lse.view(0, [B, c.numHeads, T]), q4, k4, v4, { scale: 1 / Math.sqrt(D) });
    this.linearForward(l, 'self_attn.o_proj', a.x2, a.att, a.xa, o, site + 3);
    ops.add(a.x2, a.x2, x);
    ops.rmsnormForward(a.h2, a.rstd2, a.x2, this.model.weight(`${p}post_attention_layernorm.weight`), { eps: c.rmsNormEps });
    this.linearForward(l, 'mlp.gate_proj', a.g, a.h2, a.xa, o, site + 4);
    this.linearForward(l, 'mlp.up_proj', a.u, a.h2, a.xa, o, site + 5);
    ops.swigluForward(a.act, a.g, a.u);
    this.linearForward(l, 'mlp.down_proj', xOut, a.act, a.xa, o, site + 6);
    ops.add(xOut, xOut, a.x2);
  }

  /** dx holds ∂L/∂(layer output) on entry and ∂L/∂(layer input) on exit (unless needDx is false). */
  private layerBackward(l: number, x: Tensor, a: LayerActs, dx: Tensor, rows: number, B: number, T: number, o: StepOptions, needDx: boolean): void {
    const c = this.model.config;
    const s = this.store;
    const p = `model.layers.${l}.`;
    const D = c.headDim;
    const C = c.hiddenSize, F = c.intermediateSize, QD = c.numHeads * D, KD = c.numKvHeads * D;
    const site = l * 7;
    const dh = this.view(s.dh, rows, C), dtmp = this.view(s.dtmp, rows, C);
    const dact = this.view(s.dact, rows, F), dg = this.view(s.dg, rows, F), du = this.view(s.du, rows, F);
    // MLP: out = x2 + down(silu(gate(h2)) * up(h2))
    this.linearBackward(l, 'mlp.down_proj', dact, dx, a.act, a.xa, o, site + 6);
    ops.swigluBackward(dg, du, dact, a.g, a.u);
    this.linearBackward(l, 'mlp.gate_proj', dh, dg, a.h2, a.xa, o, site + 4);
    this.linearBackward(l, 'mlp.up_proj', dtmp, du, a.h2, a.xa, o, site + 5);
    ops.add(dh, dh, dtmp);
    ops.rmsnormBackward(dtmp, null, dh, a.x2, this.model.weight(`${p}post_attention_layernorm.weight`), a.rstd2);
    ops.add(dx, dx, dtmp);
    // Attention: x2 = x + o_proj(attention(rope(q), rope(k), v))
    const datt = this.view(s.datt, rows, QD);
    this.linearBackward(l, 'self_attn.o_proj', datt, dx, a.att, a.xa, o, site + 3);
    const dq = this.view(s.dq, rows, QD), dk = this.view(s.dk, rows, KD), dv = this.view(s.dv, rows, KD);
    const q4 = a.q.view(0, [B, T, c.numHeads, D]), k4 = a.k.view(0, [B, T, c.numKvHeads, D]), v4 = a.v.view(0, [B, T, c.numKvHeads, D]);
    const dq4 = dq.view(0, [B, T, c.numHeads, D]), dk4 = dk.view(0, [B, T, c.numKvHeads, D]), dv4 = dv.view(0, [B, T, c.numKvHeads, D]);
    ops.attentionBackward(dq4, dk4, dv4, datt.view(0, [B, T, c.numHeads, D]), q4, k4, v4, a.att.view(0, [B, T, c.numHeads, D]),
      a.lse.view(0, [B, c.numHeads, T]), { scale: 1 / Math.sqrt(D) });
    const { cos, sin } = this.rope(T);
    ops.ropeBackward(dq4, dq4, cos, sin);
    ops.ropeBackward(dk4, dk4, cos, sin);
    // The first layer's input gradient would only feed the frozen embeddings: skip it.
    this.linearBackward(l, 'self_attn.q_proj', needDx ? dh : null, dq, a.h1, a.xa, o, site);
    this.linearBackward(l, 'self_attn.k_proj', needDx ? dtmp : null, dk, a.h1, a.xa, o, site + 1);
    if (needDx) ops.add(dh, dh, dtmp);
    this.linearBackward(l, 'self_attn.v_proj', needDx ? dtmp : null, dv, a.h1, a.xa, o, site + 2);
    if (!needDx) return;
    ops.add(dh, dh, dtmp);
    ops.rmsnormBackward(dtmp, null, dh, x, this.model.weight(`${p}input_layernorm.weight`), a.rstd1);
    ops.add(dx, dx, dtmp);
  }

  private ropeT = -1;
  private rope(T: number): { cos: Tensor; sin: Tensor } {
    const c = this.model.config;
    const half = c.headDim / 2;
    const cos = this.store.cos.view(0, [T, half]), sin = this.store.sin.view(0, [T, half]);
    if (this.ropeT !== T) {
      const pos = this.store.positions.view(0, [T]);
      pos.write(Int32Array.from({ length: T }, (_, i) => i));
      ops.ropeTable(cos, sin, pos, { theta: c.ropeTheta, scaling: c.ropeScaling });
      this.ropeT = T;
    }
    return { cos, sin };
  }

  // ---- the whole model ---------------------------------------------------------------------

  private check(b: Batch): number {
    const rows = b.B * b.T;
    if (rows > this.maxRows) throw new PeftkitError('E_ARG', `batch of ${b.B}×${b.T} tokens exceeds the ${this.maxRows} the buffers were made for`);
    if (b.inputIds.length !== rows || b.labels.length !== rows) throw new PeftkitError('E_SHAPE', `batch arrays must hold B·T = ${rows} ids and labels`);
    return rows;
  }

  /**
   * Runs the forward pass and, when `gradScale` is given, the backward pass, accumulating LoRA
   * gradients scaled by gradScale (1 / tokens of the whole accumulation window).
   * Returns the summed loss over this batch's label tokens and their count.
   */
  run(b: Batch, o: StepOptions, gradScale: number | null): { lossSum: number; tokens: number } {
    const c = this.model.config;
    const s = this.store;
    const rows = this.check(b);
    const C = c.hiddenSize;
    const ids = s.ids.view(0, [rows]);
    ids.write(b.inputIds);
    // HF's causal-LM shift: position t predicts labels[t + 1]; the last position of a row has none.
    const targets = new Int32Array(rows).fill(-100);
    let tokens = 0;
    for (let bi = 0; bi < b.B; bi++) {
      for (let t = 0; t + 1 < b.T; t++) {
        const y = b.labels[bi * b.T + t + 1];
        targets[bi * b.T + t] = y;
        if (y !== -100) tokens++;
      }
    }
    s.targets.view(0, [rows]).write(targets);

    const xs = s.x.map((t) => this.view(t, rows, C));
    ops.embeddingForward(xs[0], ids, this.model.weight('model.embed_tokens.weight'));
    for (let l = 0; l < c.numLayers; l++) this.layerForward(l, xs[l], xs[l + 1], this.acts(l, rows), b.B, b.T, o);
    const hf = this.view(s.hf, rows, C);
    const rstdf = s.rstdf.view(0, [rows]);
    ops.rmsnormForward(hf, rstdf, xs[c.numLayers], this.model.weight('model.norm.weight'), { eps: c.rmsNormEps });
    const losses = s.losses.view(0, [rows]);
    const head = this.model.weight('lm_head.weight');
    const dhf = gradScale === null ? null : this.view(s.dh, rows, C);
    ops.linearCrossEntropy(losses, dhf, null, hf, head, s.targets.view(0, [rows]), { gradScale: gradScale ?? 1, compute: this.model.compute });
    let lossSum = 0;
    for (const v of losses.toFloat32Array()) lossSum += v;
    if (!Number.isFinite(lossSum)) {
      const adapter = this.adapter?.source ? ` or in the adapter ${this.adapter.source}` : '';
      throw new PeftkitError('E_NAN', `loss is ${lossSum}: the forward pass produced a non-finite value (a weight in ${this.model.source}${adapter} holds NaN or Infinity, or the activations overflowed)`);
    }
    if (gradScale === null || dhf === null) return { lossSum, tokens };

    const dx = this.view(s.dx, rows, C);
    ops.rmsnormBackward(dx, null, dhf, xs[c.numLayers], this.model.weight('model.norm.weight'), rstdf);
    for (let l = c.numLayers - 1; l >= 0; l--) {
      const a = this.acts(l, rows);
      if (this.checkpointing) this.layerForward(l, xs[l], this.view(s.dtmp, rows, C), a, b.B, b.T, o);
      this.layerBackward(l, xs[l], a, dx, rows, b.B, b.T, o, l > 0);
    }
    return { lossSum, tokens };
  }

  dispose(): void {
    this.arena.dispose();
  }
}
