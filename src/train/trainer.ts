/**
 * One optimizer step of adapter training: forward + backward over the micro-batches of an
 * accumulation window (loss normalized by the window's label tokens, as transformers does),
 * global-norm clipping, a non-finite guard, AdamW at the schedule's learning rate (f32, 8-bit
 * or paged states: `optim` in the options).
 *
 * Data parallelism (`group`): each rank steps on its shard of the global batch. The window's
 * label tokens are summed over the ranks before the forward, so every rank scales its loss by
 * 1 / (global tokens); the gradients are summed over the ranks in buckets, so every rank holds
 * the global batch's gradient, bit for bit the same: the norm, clipping, the non-finite guard
 * and AdamW then run identically everywhere and the replicas never drift. With overlap (the
 * group's default) a bucket is sent as soon as the backward of the window's last micro-batch
 * has finished every gradient in it, and the step waits for the sums before clipping.
 */
import { PeftkitError } from '../errors';
import type { Batch } from '../model/llama_forward';
import { LlamaForward } from '../model/llama_forward';
import type { LlamaModel } from '../model/llama';
import * as ops from '../ops';
import type { PeftMethod } from '../peft/method';
import { BucketGrad, GradBuckets } from '../distributed/buckets';
import type { ProcessGroup } from '../distributed/group';
import { Tensor } from '../tensor';
import { AdamW, AdamWConfig } from './optimizer';

export interface StepResult {
  /** Mean loss over the window's label tokens. */
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Label tokens in the window. */
  tokens: number;
  /** Input tokens processed (B·T summed). */
  inputTokens: number;
  /**
   * How far the previous step's update moved the weights (see {@link UpdateMeasure}), measured
   * during this step: it comes back with this step's loss and gradient norm rather than costing
   * a copy of its own. Absent at a trainer's first step; the last step's is
   * {@link Trainer.lastUpdate}.
   */
  previousUpdate?: UpdateMeasure;
}

/** How far one step's update moved the trainable weights, relative to their norm. */
export interface UpdateMeasure {
  /** The 1-based step of the update. */
  step: number;
  /** Its learning rate. */
  lr: number;
  /**
   * |‖θ'‖ − ‖θ‖| / ‖θ‖ over the trainable parameters (see Trainer.step). NaN when ‖θ‖ was 0
   * (zero-initialized parameters before their first update).
   */
  ratio: number;
}

/**
 * An update ratio above this is a run that is diverging: the step moved the weights by more than
 * twice their own norm. Healthy fine-tuning moves them by ~1e-4..1e-2 of it per step; AdamW from
 * zero-initialized weights (diff pruning's δ, new biases) reaches 1 at its second step at most.
 */
export const UPDATE_RATIO_WARN = 2;

/** The warning of a step whose update ratio passed UPDATE_RATIO_WARN: what it was, and what to do. */
export function divergenceWarning(u: UpdateMeasure, o: { maxGradNorm: number }): string {
  const clip = o.maxGradNorm > 0 ? '' : ", and turn gradient clipping on ('maxGradNorm', e.g. 1; it is off)";
  return `step ${u.step}: the update moved the trainable weights by at least ${u.ratio.toPrecision(3)}× their norm ` +
    `(the update/weight ratio of healthy training is ~1e-3): training is diverging; lower 'lr' (now ${u.lr})${clip}`;
}

// The step's scalars, one f64 tensor on the model's device (Trainer.scalars): summed and
// measured there, read back in one copy per step.
const LOSS = 0; // Σ row losses of the window (zeroed each step)
const GRAD_SQ = 1; // ‖g‖² of the window's gradients
const AFTER_SQ = 2; // ‖θ‖² after the last update (before a method's afterUpdate)
const BEFORE_SQ = 3; // ‖θ‖² before this update, where AFTER_SQ is not it
const FAULT = 4; // an index-fault record (ops/index_fault.ts; zeroed each step)
const SCALARS = FAULT + ops.INDEX_FAULT_DOUBLES;

export interface TrainerOptions extends AdamWConfig {
  /** Largest B·T of any micro-batch, and the longest T. */
  maxRows: number;
  maxT: number;
  /** Dropout of the adapter's dropout sites (LoRA's lora_dropout). Defaults to the adapter's own (`adapter.dropout`). */
  dropout?: number;
  /** Clip the global gradient norm to this; 0 turns clipping off. Defaults to `1`. */
  maxGradNorm?: number;
  activationCheckpointing?: boolean;
  /** Base seed of dropout masks (mixed with the step number, and the rank). */
  seed?: number;
  /** Data-parallel training: the ranks this one steps with. Defaults to none (one process). */
  group?: ProcessGroup;
}

export class Trainer {
  readonly forward: LlamaForward;
  readonly optimizer: AdamW;
  private readonly o: TrainerOptions;
  private readonly adapter: PeftMethod;
  /** The step's scalars (LOSS, GRAD_SQ, ...: see above) on the model's device, and views of each. */
  private readonly scalars: Tensor;
  private readonly at: { lossSum: Tensor; gradSq: Tensor; afterSq: Tensor; beforeSq: Tensor; fault: Tensor };
  /** The last update not yet measured: its step, lr and ‖θ‖ before it (measured in the step after it, or by lastUpdate()). */
  private pending: { step: number; lr: number; before: number } | null = null;
  private buckets: GradBuckets | null = null;
  private readonly numLayers: number;
  /**
   * Seconds the last step spent on the gradient all-reduce after its backward (0 without a
   * group): all of it without overlap; with overlap, the part the backward did not hide.
   */
  lastAllReduceS = 0;

  constructor(model: LlamaModel, adapter: PeftMethod, o: TrainerOptions) {
    this.o = o;
    this.adapter = adapter;
    this.numLayers = model.config.numLayers;
    this.forward = new LlamaForward(model, adapter, o.maxRows, o.maxT, o.activationCheckpointing ?? false);
    this.optimizer = new AdamW(adapter.parameters(), o);
    this.scalars = Tensor.zeros([SCALARS], { dtype: 'f64', device: model.device });
    const slot = (i: number, n = 1) => this.scalars.view(i, [n]);
    this.at = { lossSum: slot(LOSS), gradSq: slot(GRAD_SQ), afterSq: slot(AFTER_SQ), beforeSq: slot(BEFORE_SQ), fault: slot(FAULT, ops.INDEX_FAULT_DOUBLES) };
  }

  /**
   * Runs one optimizer step over `window` (the micro-batches of one accumulation; with a group,
   * this rank's shards of them, possibly none when the global batch is short).
   */
  step(window: readonly Batch[], lr: number): StepResult {
    const group = this.o.group;
    let tokens = 0;
    for (const b of window) tokens += this.forward.labelTokens(b);
    if (group) [tokens] = group.allReduceNumbers([tokens], 'label token count');
    if (tokens === 0) throw new PeftkitError('E_DATA', 'a training step has no label tokens (every label is -100): nothing to learn from');
    this.adapter.zeroGrad();
    // The window's loss and any bad id or target stay on the device until the read below.
    const deviceScalars = { lossSum: this.at.lossSum, fault: this.at.fault };
    deviceScalars.lossSum.zero();
    deviceScalars.fault.zero();
    let inputTokens = 0;
    const stepNo = this.optimizer.step + 1;
    // Each rank its own masks (rank 0 keeps the single-process ones): equal ones would drop the same units in every shard.
    const rankSalt = (group?.rank ?? 0) * 7919;
    const buckets = group ? (this.buckets ??= this.makeBuckets(group)) : null;
    // Only the window's last backward finishes the gradients; a method that reworks them after
    // the backward (prepareGrads) has none final before its end.
    const overlap = group && buckets && group.setup.overlap;
    const early = overlap && !this.adapter.prepareGrads ? (part: number) => buckets.startReady(group, part) : undefined;
    for (const [i, b] of window.entries()) {
      const seed = ((this.o.seed ?? 0) * 1000003 + stepNo * 131 + i + rankSalt) >>> 0;
      const onGradsFinal = i === window.length - 1 ? early : undefined;
      this.forward.run(b, { dropout: this.o.dropout ?? this.adapter.dropout, dropoutSeed: seed, onGradsFinal, deviceScalars }, 1 / tokens);
      inputTokens += b.B * b.T;
    }
    // A method may constrain its gradients first (diff pruning: pruned entries get none), so clipping sees what will be applied.
    this.adapter.prepareGrads?.();
    if (group && buckets) {
      const t0 = performance.now();
      if (overlap) buckets.finish(group);
      else buckets.allReduce(group);
      this.lastAllReduceS = (performance.now() - t0) / 1000;
    }
    const grads = this.optimizer.params.map((p) => p.grad);
    const params = this.optimizer.params.map((p) => p.param);
    ops.gradSumsqInto(this.at.gradSq, grads);
    // ‖θ‖ before this update is the last one's "after", unless a method's afterUpdate moved θ since.
    const beforeIsAfter = this.pending !== null && !this.adapter.afterUpdate;
    if (!beforeIsAfter) ops.gradSumsqInto(this.at.beforeSq, params);
    // The step's one copy back to the host: the loss, the gradient norm, the parameter norms and
    // the index checks, all at once (on a GPU nothing else of the step comes back).
    const v = this.scalars.toArray() as Float64Array;
    ops.raiseIndexFault(v.subarray(FAULT, FAULT + ops.INDEX_FAULT_DOUBLES));
    let lossSum = v[LOSS];
    if (!Number.isFinite(lossSum)) throw this.forward.nonFiniteLoss(lossSum);
    const previousUpdate = this.measurePending(v[AFTER_SQ]);
    const before = Math.sqrt(beforeIsAfter ? v[AFTER_SQ] : v[BEFORE_SQ]);
    if (group) [lossSum, inputTokens] = group.allReduceNumbers([lossSum, inputTokens], 'loss sum and input tokens');
    const gradNorm = Math.sqrt(v[GRAD_SQ]);
    if (!Number.isFinite(gradNorm)) {
      const loaded = this.adapter.source ? `, or the adapter loaded from ${this.adapter.source} holds values too large` : '';
      throw new PeftkitError('E_NAN', `gradient norm is ${gradNorm} at step ${stepNo}: stopping before the adapter is corrupted (lower the learning rate?${loaded})`);
    }
    const maxNorm = this.o.maxGradNorm ?? 1;
    if (maxNorm > 0) ops.clipGradsTo(grads, maxNorm, gradNorm);
    // The update's size relative to the weights (the divergence warning): how much the step
    // changed the parameters' norm. |‖θ'‖ − ‖θ‖| <= ‖Δθ‖, so this is a lower bound of ‖Δθ‖/‖θ‖,
    // and within 2 of it once the update dominates (‖Δθ‖ = R‖θ‖ gives ‖θ'‖ >= (R − 1)‖θ‖): exact
    // enough to tell an exploding run from a healthy one (ratios ~1e-3). Not lr·‖g‖: AdamW
    // divides by √v̂, so its step is ~lr per element whatever the gradient's size, and lr·‖g‖ is
    // off by orders of magnitude both ways. Not summed inside the optimizer: that would change
    // four bit-exact kernels (f32 and 8-bit, CPU and CUDA) for a warning, while this is one
    // read-only pass over the parameters, 4 of the ~28 bytes per element the update itself moves.
    // ‖θ'‖ stays on the device: the next step reads it with its own scalars (lastUpdate() after the last).
    this.optimizer.update(lr);
    ops.gradSumsqInto(this.at.afterSq, params);
    this.pending = { step: stepNo, lr, before };
    this.adapter.afterUpdate?.(this.optimizer.step - 1);
    return { loss: lossSum / tokens, gradNorm, tokens, inputTokens, previousUpdate };
  }

  /**
   * The last update's measure, not yet reported by a step (reads ‖θ'‖ back: one small copy, once
   * at the end of a run); undefined when every update has been reported.
   */
  lastUpdate(): UpdateMeasure | undefined {
    if (!this.pending) return undefined;
    const u = this.measurePending((this.at.afterSq.toArray() as Float64Array)[0]);
    this.pending = null;
    return u;
  }

  /** The pending update's measure, given ‖θ'‖² after it; undefined when none is pending. */
  private measurePending(afterSq: number): UpdateMeasure | undefined {
    if (!this.pending) return undefined;
    const { step, lr, before } = this.pending, after = Math.sqrt(afterSq);
    return { step, lr, ratio: before > 0 ? Math.abs(after - before) / before : NaN };
  }

  /** The buckets of the trainable gradients, each gradient with the backward point that finishes it. */
  private makeBuckets(group: ProcessGroup): GradBuckets {
    const layers = this.numLayers;
    const grads: BucketGrad[] = this.optimizer.params.map((p) => ({ name: p.name, grad: p.grad, ready: backwardPoint(p.name, layers) }));
    return new GradBuckets(grads, { capBytes: group.setup.bucketCapMb * (1 << 20) });
  }

  /**
   * Mean loss over batches without touching gradients. With a group, `batches` are the whole
   * eval set's: rank r evaluates every world-th batch from r, and the sums are reduced.
   */
  evaluate(batches: Iterable<Batch>): { loss: number; tokens: number } {
    const group = this.o.group;
    let lossSum = 0;
    let tokens = 0;
    let i = 0;
    for (const b of batches) {
      if (!group || i++ % group.size === group.rank) {
        const r = this.forward.run(b, { dropout: 0, dropoutSeed: 0 }, null);
        lossSum += r.lossSum;
        tokens += r.tokens;
      }
    }
    if (group) [lossSum, tokens] = group.allReduceNumbers([lossSum, tokens], 'eval loss sum and tokens');
    return { loss: tokens ? lossSum / tokens : NaN, tokens };
  }

  dispose(): void {
    this.scalars.dispose();
    this.buckets?.dispose();
    this.forward.dispose();
    this.optimizer.dispose();
  }
}

/**
 * When in the backward a parameter's gradient is final (LlamaForward's onGradsFinal points),
 * by its name: a decoder layer's ("…layers.3.…") after that layer's backward; the final norm's
 * and an untied LM head's (tied, the head is "embed_tokens") first; anything else (embeddings,
 * virtual tokens) only after the whole backward (-1).
 */
export function backwardPoint(name: string, numLayers: number): number {
  const layer = /(?:^|\.)layers\.(\d+)\./.exec(name);
  if (layer) return Number(layer[1]);
  if (/(?:^|\.)(?:model\.norm|lm_head)\./.test(name)) return numLayers;
  return -1;
}

/** Label tokens that carry loss after the causal shift (labels[1:] != -100). */
export function countLabelTokens(b: Batch): number {
  let n = 0;
  for (let bi = 0; bi < b.B; bi++) for (let t = 1; t < b.T; t++) if (b.labels[bi * b.T + t] !== -100) n++;
  return n;
}
