/**
 * Forward and backward of a Llama-family model for training, read top to bottom as llm.c's
 * step is: embeddings → N × decoder layer (llama_layer.ts) → RMSNorm → LM head fused with the
 * loss. It knows no adapter method: the adapter's sites (sites.ts) decide what trains.
 *
 * Buffers are allocated once for the largest batch and viewed per batch, so a training run does
 * not allocate in its steps. With activation checkpointing only each layer's input is kept, and
 * a layer's forward is recomputed just before its backward.
 */
import { PeftkitError } from '../errors';
import * as ops from '../ops';
import { Tensor } from '../tensor';
import type { LlamaModel } from './llama';
import { LAYER_LINEARS, LayerActs, LayerGrads, LlamaLayers, PassOptions } from './llama_layer';
import type { ModelAdapter } from './sites';

export interface Batch {
  /** Token ids, row-major [B, T]. */
  inputIds: Int32Array;
  /** Labels [B, T] (-100 = no loss); the loss at position t predicts labels[t + 1]. */
  labels: Int32Array;
  B: number;
  T: number;
}

export interface StepOptions {
  /** Dropout probability of the adapter's dropout (0 = off); the adapter applies it. */
  dropout: number;
  /** Seed of this step's dropout masks. */
  dropoutSeed: number;
  /**
   * Called during the backward each time a part's parameter gradients are final for this
   * pass: `numLayers` once the final norm and the LM head are done, then `l` for each layer l
   * after its backward (last layer first). What the caller does with them (data parallelism
   * starts summing them over the ranks) is not the model's business. Defaults to none.
   */
  onGradsFinal?: (part: number) => void;
  /**
   * Keep the loss and the index checks on the model's device (a training step reads them back
   * once, with its gradient norm): the row losses are added into `lossSum` (f64 `[1]`, see
   * ops.sumInto) and a token id or target out of range is recorded in `fault` (an index-fault
   * record) rather than checked on the host; run() then returns `lossSum` NaN and the caller
   * checks both (raiseIndexFault, nonFiniteLoss). Defaults to none: the row losses are read
   * back, a non-finite loss throws E_NAN, ids and targets are checked as the ops run.
   */
  deviceScalars?: { lossSum: Tensor; fault: Tensor };
}

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

type Flat<T> = { [K in keyof T]: Tensor };

export class LlamaForward {
  private readonly model: LlamaModel;
  private readonly adapter: ModelAdapter | null;
  private readonly layers: LlamaLayers;
  private readonly maxRows: number;
  private readonly arena: Arena;
  // Flat max-size storage; views of the batch size are cut from these each step.
  private readonly store: {
    x: Tensor[]; // L + 1 residual-stream states
    acts: Flat<LayerActs>[];
    grads: Flat<LayerGrads>;
    hf: Tensor; rstdf: Tensor; losses: Tensor; ids: Tensor; targets: Tensor; positions: Tensor; cos: Tensor; sin: Tensor;
    dx: Tensor;
  };
  private readonly checkpointing: boolean;
  /** Elements of dropout stream reserved per call site (rows × widest input). */
  private readonly siteStride: number;

  /** Virtual tokens before every sequence (prompt tuning), 0 without. */
  private readonly nVirtual: number;

  /**
   * Buffers for batches of up to `maxRows` = B·T tokens and sequences up to `maxT`. With virtual
   * tokens (prompt tuning) each of the maxRows / maxT sequences grows by their count.
   */
  constructor(model: LlamaModel, adapter: ModelAdapter | null, maxRows: number, maxT: number, activationCheckpointing = false) {
    this.model = model;
    this.adapter = adapter;
    this.nVirtual = adapter?.virtualTokens?.()?.weight.shape[0] ?? 0;
    maxRows = this.nVirtual ? Math.ceil(maxRows / maxT) * (maxT + this.nVirtual) : maxRows;
    maxT += this.nVirtual;
    this.maxRows = maxRows;
    this.checkpointing = activationCheckpointing;
    model.checkSequenceLength(maxT + (adapter?.positionOffset?.() ?? 0));
    // The head's logits are produced inside the fused chunked loss, which has no adapter term:
    // refused rather than trained as if the adapter were not there.
    if (adapter?.linear('lm_head')) {
      throw new PeftkitError('E_UNSUPPORTED', 'an adapter on lm_head is not supported for training (PEFT\'s "all-linear" leaves it out too); remove lm_head from the target modules');
    }
    this.layers = new LlamaLayers(model, adapter);
    const c = model.config;
    const a = (this.arena = new Arena(model.device));
    const C = c.hiddenSize, F = c.intermediateSize, QD = c.numHeads * c.headDim, KD = c.numKvHeads * c.headDim;
    const R = maxRows;
    const actSet = (): Flat<LayerActs> => ({
      h1: a.alloc(R * C), rstd1: a.alloc(R), q: a.alloc(R * QD), k: a.alloc(R * KD), v: a.alloc(R * KD),
      att: a.alloc(R * QD), lse: a.alloc(R * c.numHeads), x2: a.alloc(R * C), h2: a.alloc(R * C), rstd2: a.alloc(R),
      g: a.alloc(R * F), u: a.alloc(R * F), act: a.alloc(R * F),
    });
    this.siteStride = R * Math.max(C, F, QD);
    this.store = {
      x: Array.from({ length: c.numLayers + 1 }, () => a.alloc(R * C)),
      acts: activationCheckpointing ? [actSet()] : Array.from({ length: c.numLayers }, actSet),
      grads: {
        dh: a.alloc(R * C), dtmp: a.alloc(R * C), datt: a.alloc(R * QD), dq: a.alloc(R * QD), dk: a.alloc(R * KD), dv: a.alloc(R * KD),
        dact: a.alloc(R * F), dg: a.alloc(R * F), du: a.alloc(R * F),
      },
      hf: a.alloc(R * C), rstdf: a.alloc(R), losses: a.alloc(R),
      ids: a.alloc(R, 'i32'), targets: a.alloc(R, 'i32'), positions: a.alloc(maxT, 'i32'),
      cos: a.alloc((maxT * c.headDim) / 2), sin: a.alloc((maxT * c.headDim) / 2),
      dx: a.alloc(R * C),
    };
  }

  /** Views of the flat buffers at this batch's size. */
  private view(t: Tensor, rows: number, cols: number): Tensor {
    return t.view(0, [rows, cols]);
  }

  private acts(l: number, rows: number): LayerActs {
    const c = this.model.config;
    const s = this.store.acts[this.checkpointing ? 0 : l];
    const C = c.hiddenSize, F = c.intermediateSize, QD = c.numHeads * c.headDim, KD = c.numKvHeads * c.headDim;
    return {
      h1: this.view(s.h1, rows, C), rstd1: s.rstd1.view(0, [rows]), q: this.view(s.q, rows, QD), k: this.view(s.k, rows, KD),
      v: this.view(s.v, rows, KD), att: this.view(s.att, rows, QD), lse: s.lse.view(0, [rows * c.numHeads]),
      x2: this.view(s.x2, rows, C), h2: this.view(s.h2, rows, C), rstd2: s.rstd2.view(0, [rows]),
      g: this.view(s.g, rows, F), u: this.view(s.u, rows, F), act: this.view(s.act, rows, F),
    };
  }

  private grads(rows: number): LayerGrads {
    const c = this.model.config;
    const s = this.store.grads;
    const C = c.hiddenSize, F = c.intermediateSize, QD = c.numHeads * c.headDim, KD = c.numKvHeads * c.headDim;
    return {
      dh: this.view(s.dh, rows, C), dtmp: this.view(s.dtmp, rows, C), datt: this.view(s.datt, rows, QD), dq: this.view(s.dq, rows, QD),
      dk: this.view(s.dk, rows, KD), dv: this.view(s.dv, rows, KD), dact: this.view(s.dact, rows, F), dg: this.view(s.dg, rows, F),
      du: this.view(s.du, rows, F),
    };
  }

  private ropeT = -1;
  /** RoPE tables of positions off..off+T-1 (off: the positions a prefix occupies). */
  private rope(T: number): { cos: Tensor; sin: Tensor } {
    const c = this.model.config;
    const half = c.headDim / 2;
    const off = this.adapter?.positionOffset?.() ?? 0;
    const cos = this.store.cos.view(0, [T, half]), sin = this.store.sin.view(0, [T, half]);
    if (this.ropeT !== T) {
      const pos = this.store.positions.view(0, [T]);
      pos.write(Int32Array.from({ length: T }, (_, i) => off + i));
      ops.ropeTable(cos, sin, pos, { theta: c.ropeTheta, scaling: c.ropeScaling });
      this.ropeT = T;
    }
    return { cos, sin };
  }

  private check(b: Batch): number {
    const rows = b.B * (b.T + this.nVirtual);
    if (rows > this.maxRows) throw new PeftkitError('E_ARG', `batch of ${b.B}×${b.T}${this.nVirtual ? ` (+ ${this.nVirtual} virtual)` : ''} tokens exceeds the ${this.maxRows} the buffers were made for`);
    if (b.inputIds.length !== b.B * b.T || b.labels.length !== b.B * b.T) throw new PeftkitError('E_SHAPE', `batch arrays must hold B·T = ${b.B * b.T} ids and labels`);
    return rows;
  }

  /**
   * The label tokens the loss of this batch averages over: labels[t] for t >= 1 (position t - 1
   * predicts it); with virtual tokens labels[0] too, which the last virtual position predicts.
   */
  labelTokens(b: Batch): number {
    let n = 0;
    for (let bi = 0; bi < b.B; bi++) for (let t = this.nVirtual ? 0 : 1; t < b.T; t++) if (b.labels[bi * b.T + t] !== -100) n++;
    return n;
  }

  /**
   * Runs the forward pass and, when `gradScale` is given, the backward pass, accumulating the
   * adapter's gradients scaled by gradScale (1 / tokens of the whole accumulation window).
   * Returns the summed loss over this batch's label tokens (NaN with `deviceScalars`: it went there) and their count.
   */
  run(b: Batch, o: StepOptions, gradScale: number | null): { lossSum: number; tokens: number } {
    const c = this.model.config;
    const s = this.store;
    const rows = this.check(b);
    const C = c.hiddenSize;
    const nv = this.nVirtual, T = b.T + nv;
    const pass: PassOptions = { dropout: gradScale === null ? 0 : o.dropout, dropoutSeed: o.dropoutSeed, siteStride: this.siteStride };
    const ids = s.ids.view(0, [b.B * b.T]);
    ids.write(b.inputIds);
    // HF's causal-LM shift: position t predicts labels[t + 1]; the last position of a row has none.
    // Virtual tokens carry label -100 (PEFT prepends them), so the last one predicts labels[0].
    const targets = new Int32Array(rows).fill(-100);
    let tokens = 0;
    for (let bi = 0; bi < b.B; bi++) {
      for (let t = 0; t + 1 < T; t++) {
        const y = t + 1 < nv ? -100 : b.labels[bi * b.T + t + 1 - nv];
        targets[bi * T + t] = y;
        if (y !== -100) tokens++;
      }
    }
    s.targets.view(0, [rows]).write(targets);

    const rope = this.rope(T);
    const xs = s.x.map((t) => this.view(t, rows, C));
    const emb = this.adapter?.embedding?.();
    const table = emb?.weight ?? this.model.weight('model.embed_tokens.weight');
    const virtual = nv ? this.adapter!.virtualTokens!()! : null;
    if (virtual) {
      // Each row: the virtual embeddings, then its tokens' (looked up into dx, free until the backward).
      const tok = this.view(s.dx, b.B * b.T, C);
      ops.embeddingForward(tok, ids, table, o.deviceScalars?.fault);
      for (let bi = 0; bi < b.B; bi++) {
        xs[0].view(bi * T * C, [nv * C]).copyFrom(virtual.weight.view(0, [nv * C]));
        xs[0].view((bi * T + nv) * C, [b.T * C]).copyFrom(tok.view(bi * b.T * C, [b.T * C]));
      }
    } else {
      ops.embeddingForward(xs[0], ids, table, o.deviceScalars?.fault);
    }
    for (let l = 0; l < c.numLayers; l++) this.layers.forward(l, xs[l], xs[l + 1], this.acts(l, rows), b.B, T, rope, pass);
    const hf = this.view(s.hf, rows, C);
    const rstdf = s.rstdf.view(0, [rows]);
    const nf = this.layers.norm('model.norm');
    ops.rmsnormForward(hf, rstdf, xs[c.numLayers], nf.w, { eps: c.rmsNormEps });
    const losses = s.losses.view(0, [rows]);
    const headSite = this.adapter?.head?.();
    const head = headSite?.weight ?? this.model.weight('lm_head.weight');
    const d = this.grads(rows);
    const dhf = gradScale === null ? null : d.dh;
    const dHead = gradScale === null ? null : headSite?.grad ?? null;
    const dev = o.deviceScalars;
    ops.linearCrossEntropy(losses, dhf, dHead, hf, head, s.targets.view(0, [rows]), { gradScale: gradScale ?? 1, compute: this.model.compute, fault: dev?.fault });
    let lossSum = NaN;
    if (dev) {
      ops.sumInto(dev.lossSum, losses);
    } else {
      lossSum = 0;
      for (const v of losses.toFloat32Array()) lossSum += v;
      if (!Number.isFinite(lossSum)) throw this.nonFiniteLoss(lossSum);
    }
    if (gradScale === null || dhf === null) return { lossSum, tokens };

    const dx = this.view(s.dx, rows, C);
    ops.rmsnormBackward(dx, nf.dw, dhf, xs[c.numLayers], nf.w, rstdf);
    o.onGradsFinal?.(c.numLayers);
    for (let l = c.numLayers - 1; l >= 0; l--) {
      const a = this.acts(l, rows);
      if (this.checkpointing) this.layers.forward(l, xs[l], d.dtmp, a, b.B, T, rope, pass);
      this.layers.backward(l, xs[l], a, dx, d, b.B, T, rope, pass, l > 0 || !!emb?.grad || !!virtual?.grad);
      o.onGradsFinal?.(l);
    }
    if (virtual?.grad) {
      const g = virtual.grad.view(0, [nv * C]);
      for (let bi = 0; bi < b.B; bi++) ops.add(g, g, dx.view(bi * T * C, [nv * C]));
    }
    if (emb?.grad) {
      // The real positions' gradient, without the virtual ones.
      const dTok = nv ? this.view(s.grads.dh, b.B * b.T, C) : dx;
      if (nv) for (let bi = 0; bi < b.B; bi++) dTok.view(bi * b.T * C, [b.T * C]).copyFrom(dx.view((bi * T + nv) * C, [b.T * C]));
      ops.embeddingBackward(emb.grad, dTok, ids, dev?.fault);
    }
    return { lossSum, tokens };
  }

  /** The E_NAN error of a forward pass whose summed loss is `lossSum` (NaN or infinite). */
  nonFiniteLoss(lossSum: number): PeftkitError {
    const adapter = this.adapter?.source ? ` or in the adapter ${this.adapter.source}` : '';
    return new PeftkitError('E_NAN', `loss is ${lossSum}: the forward pass produced a non-finite value (a weight in ${this.model.source}${adapter} holds NaN or Infinity, or the activations overflowed)`);
  }

  dispose(): void {
    this.arena.dispose();
    this.layers.dispose();
  }
}

/** The former name, from when LoRA was the only method. */
export { LlamaForward as LlamaLoraForward };
export { LAYER_LINEARS };
