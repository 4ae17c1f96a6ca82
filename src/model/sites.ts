/**
 * The method seam: the places where a PEFT method joins the Llama forward and backward.
 *
 * The forward (llama_layer.ts, llama_forward.ts, llama_generate.ts) knows no method. At each
 * Linear, RMSNorm and bias it asks the active adapter for a site; a method implements only the
 * sites it uses (LoRA, DoRA, IA3: Linear; LN tuning: norms; BitFit: Linear biases), and the base
 * weights stay frozen unless a method supplies trainable ones. Interfaces live here, below the
 * methods, so the model never imports a method (src/peft implements them).
 */
import type { Compute } from '../ops/gemm';
import type { QuantWeight } from '../ops/gemm_quant';
import * as ops from '../ops';
import { Device, Tensor } from '../tensor';

/** A Linear layer of the model: its full module name and its shape. */
export interface LinearModule {
  /** Full module name, e.g. "model.layers.0.self_attn.q_proj". */
  name: string;
  inFeatures: number;
  outFeatures: number;
}

/** A frozen Linear weight: an f32/bf16 tensor, or kept quantized (QLoRA, LLM.int8). */
export type LinearWeight = { W: Tensor } | { q: QuantWeight };

/** The frozen Linear a site wraps. */
export interface BaseLinear {
  /** Module name ("model.layers.0.self_attn.q_proj"). */
  readonly module: string;
  readonly weight: LinearWeight;
  /** The checkpoint's bias, when the layer has one. */
  readonly bias: Tensor | undefined;
  /** The precision of the Linear products (bf16 with a bf16 model). */
  readonly compute: Compute;
}

/** The weight operand of a fused op (`ops.loraForward` takes either storage). */
export function weightOperand(base: BaseLinear): Tensor | QuantWeight {
  return 'q' in base.weight ? base.weight.q : base.weight.W;
}

/**
 * The weight operand as its dequantized values: an int8 weight with LLM.int8's threshold loses it,
 * so products multiply X by the dequantized W instead of quantizing X (PEFT's F.linear on
 * dequantize_module_weight). Every other storage is {@link weightOperand}'s.
 */
export function dequantizedOperand(base: BaseLinear): Tensor | QuantWeight {
  const w = weightOperand(base);
  return w instanceof Tensor || w.format !== 'int8' || w.threshold === undefined ? w : { ...w, threshold: undefined };
}

/** Y = X·Wᵀ (+ bias unless `withBias` is false), in the base's storage and precision. */
export function baseForward(base: BaseLinear, Y: Tensor, X: Tensor, withBias = true): void {
  ops.linearForward(Y, X, weightOperand(base), { bias: withBias ? base.bias : undefined, compute: base.compute });
}

/** dX = dY·W (overwritten). */
export function baseBackwardInput(base: BaseLinear, dX: Tensor, dY: Tensor): void {
  ops.linearBackward(dX, dY, weightOperand(base), { compute: base.compute });
}

/** Writes the base weight, dequantized or widened, into `out` (f32 [out, in]). */
export function baseWeightF32(base: BaseLinear, out: Tensor): void {
  const w = base.weight;
  if ('W' in w) {
    if (w.W.dtype === 'f32') out.copyFrom(w.W);
    else ops.cast(out, w.W);
  } else if (w.q.format === 'int8') {
    ops.dequantizeInt8Rowwise(out, w.q.cb, w.q.scb);
  } else {
    ops.dequantize4bit(out, w.q.packed, w.q.absmax, w.q.blocksize, w.q.format);
  }
}

/**
 * Scratch memory the forward lends to sites for the length of one call (a site must not keep
 * anything in it across calls: the next site reuses it). Grows on demand, never shrinks.
 */
export class Scratch {
  private readonly slots: Tensor[] = [];
  /**
   * Each slot's views handed out. A view holds its memory after the slot is disposed, until a
   * finalizer that a synchronous loop never lets run (DoRA's init kept ~400 MB of dequantized
   * weights of SmolLM2-135M that way), so a slot's views go with it: when it grows, and at dispose().
   */
  private readonly views: Array<Set<Tensor>> = [];
  constructor(private readonly device: Device) {}

  /** An f32 view of `shape` in slot `slot` (0, 1, 2...): distinct slots never overlap. */
  get(slot: number, shape: readonly number[]): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    const cur = this.slots[slot];
    if (!cur || cur.numel < n) {
      this.free(slot);
      this.slots[slot] = Tensor.empty([Math.max(n, 1)], { device: this.device });
    }
    const v = this.slots[slot].view(0, shape);
    (this.views[slot] ??= new Set()).add(v);
    return v;
  }

  private free(slot: number): void {
    this.slots[slot]?.dispose();
    for (const v of this.views[slot] ?? []) v.dispose();
    this.views[slot]?.clear();
  }

  dispose(): void {
    for (let slot = 0; slot < this.slots.length; slot++) this.free(slot);
    this.slots.length = 0;
  }
}

/** What the forward tells a site about one call. */
export interface SiteCall {
  /** Dropout probability of this pass: the adapter's, in training; 0 in eval and generation. */
  readonly dropout: number;
  /** Seed of this micro-batch's dropout masks. */
  readonly dropoutSeed: number;
  /**
   * Offset of this call site in the micro-batch's counter-based random stream: each Linear draws
   * from its own range, so masks are recomputed in backward instead of stored.
   */
  readonly streamOffset: number;
  /** Scratch lent for the length of the call. */
  readonly scratch: Scratch;
  /**
   * True when the adapter's weights cannot change while this scratch lives (generation), so a
   * site may cache what it derives from them (DoRA's weight norm) until the scratch is gone.
   */
  readonly weightsFixed: boolean;
}

/**
 * A method at one Linear. forward writes Y from X; backward overwrites dX (skipped when null)
 * and accumulates the method's parameter gradients. What forward must keep for backward (LoRA's
 * X·Aᵀ, DoRA's unscaled output) the site keeps itself; with activation checkpointing the forward
 * is run again, with the same input, just before the backward.
 */
export interface LinearSite {
  forward(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void;
  backward(dX: Tensor | null, dY: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void;
  /**
   * Inference only: Y holds the frozen base's output for X (X·Wᵀ + bias); make it this site's
   * output in place (LoRA adds s·X·Aᵀ·Bᵀ, IA3 scales the columns). What lets a batch whose rows
   * use different adapters share one base product (S-LoRA); a site without it runs `forward` on
   * its own rows, reading W again.
   */
  forwardOnBase?(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void;
}

/**
 * A method at a weight the forward uses whole — an RMSNorm's scale, the embedding table, the LM
 * head: the tensor to use, and where its gradient accumulates (null: frozen).
 */
export interface NormSite {
  readonly weight: Tensor;
  readonly grad: Tensor | null;
}

/** The embedding table or the LM head, when a method trains (or replaces) it. */
export type WeightSite = NormSite;

/**
 * A method at a block's output (bottleneck adapters): the attention block's output projection
 * or the MLP's, before the residual add. forward rewrites Z in place (keeping what its backward
 * needs); backward writes dZ, the gradient at the block's own output, from dOut, the gradient
 * at the adapted output, and accumulates the method's gradients.
 */
export interface BlockSite {
  forward(Z: Tensor, call: SiteCall): void;
  backward(dZ: Tensor, dOut: Tensor, call: SiteCall): void;
}

/**
 * A method at one layer's attention keys and values (prefix tuning): n trained key/value rows
 * before every sequence's own, entering attention as a KV cache of length n does — never rotated
 * by RoPE, the real tokens at positions n.. (ModelAdapter.positionOffset).
 */
export interface PrefixSite {
  /** Prefix rows, [n, kv_heads·head_dim] each. */
  readonly keys: Tensor;
  readonly values: Tensor;
  /** Where their gradients accumulate. */
  readonly dKeys: Tensor;
  readonly dValues: Tensor;
}

/** The hooks an adapter gives the model. Every method implements this (src/peft). */
export interface ModelAdapter {
  /** The site at a Linear, by module name; undefined leaves the base Linear as it is. */
  linear(module: string): LinearSite | undefined;
  /** The site at an RMSNorm, by module name ("model.layers.0.input_layernorm", "model.norm"). */
  norm(module: string): NormSite | undefined;
  /** The token embeddings, when the method trains them (full fine-tuning). */
  embedding?(): WeightSite | undefined;
  /** The LM head (the embeddings when tied), when the method trains it; its gradient comes from the fused loss. */
  head?(): WeightSite | undefined;
  /** The site at layer `layer`'s attention or MLP output, before its residual add. */
  block?(layer: number, part: 'attn' | 'mlp'): BlockSite | undefined;
  /**
   * Virtual tokens (prompt tuning): n embeddings [n, hidden] placed before every sequence's own,
   * as PEFT runs a prompt-tuned model — an ordinary causal sequence of n + T positions, the
   * virtual positions carrying no label. Their gradient accumulates in `grad`.
   */
  virtualTokens?(): WeightSite | undefined;
  /** The key/value prefix of layer `layer`. */
  prefix?(layer: number): PrefixSite | undefined;
  /** Positions the adapter occupies before the real tokens (a prefix's length): RoPE starts the sequence there. Defaults to 0. */
  positionOffset?(): number;
  /** The file the adapter was loaded from (null for a new one), for messages. */
  readonly source: string | null;
}
