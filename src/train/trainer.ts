/**
 * One optimizer step of adapter training: forward + backward over the micro-batches of an
 * accumulation window (loss normalized by the window's label tokens, as transformers does),
 * global-norm clipping, a non-finite guard, AdamW at the schedule's learning rate (f32, 8-bit
 * or paged states: `optim` in the options).
 *
 * Data parallelism (`group`): each rank steps on its shard of the global batch. The window's
 * label tokens are summed over the ranks before the forward, so every rank scales its loss by
 * 1 / (global tokens); after the backward the gradients are summed over the ranks (buckets), so
 * every rank holds the global batch's gradient, bit for bit the same: the norm, clipping, the
 * non-finite guard and AdamW then run identically everywhere and the replicas never drift.
 */
import { PeftkitError } from '../errors';
import type { Batch } from '../model/llama_forward';
import { LlamaForward } from '../model/llama_forward';
import type { LlamaModel } from '../model/llama';
import * as ops from '../ops';
import type { PeftMethod } from '../peft/method';
import { GradBuckets } from '../distributed/buckets';
import type { ProcessGroup } from '../distributed/group';
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
}

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
  private buckets: GradBuckets | null = null;
  /** Seconds spent in the gradient all-reduce in the last step (0 without a group). */
  lastAllReduceS = 0;

  constructor(model: LlamaModel, adapter: PeftMethod, o: TrainerOptions) {
    this.o = o;
    this.adapter = adapter;
    this.forward = new LlamaForward(model, adapter, o.maxRows, o.maxT, o.activationCheckpointing ?? false);
    this.optimizer = new AdamW(adapter.parameters(), o);
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
    let lossSum = 0;
    let inputTokens = 0;
    const stepNo = this.optimizer.step + 1;
    // Each rank its own masks (rank 0 keeps the single-process ones): equal ones would drop the same units in every shard.
    const rankSalt = (group?.rank ?? 0) * 7919;
    for (const [i, b] of window.entries()) {
      const seed = ((this.o.seed ?? 0) * 1000003 + stepNo * 131 + i + rankSalt) >>> 0;
      const r = this.forward.run(b, { dropout: this.o.dropout ?? this.adapter.dropout, dropoutSeed: seed }, 1 / tokens);
      lossSum += r.lossSum;
      inputTokens += b.B * b.T;
    }
    // A method may constrain its gradients first (diff pruning: pruned entries get none), so clipping sees what will be applied.
    this.adapter.prepareGrads?.();
    if (group) {
      const t0 = performance.now();
      this.buckets ??= new GradBuckets(this.optimizer.params.map((p) => ({ name: p.name, grad: p.grad })));
      this.buckets.allReduce(group);
      this.lastAllReduceS = (performance.now() - t0) / 1000;
      [lossSum, inputTokens] = group.allReduceNumbers([lossSum, inputTokens], 'loss sum and input tokens');
    }
    const grads = this.optimizer.params.map((p) => p.grad);
    const maxNorm = this.o.maxGradNorm ?? 1;
    const gradNorm = maxNorm > 0 ? ops.clipGradNorm(grads, maxNorm) : ops.gradNorm(grads);
    if (!Number.isFinite(gradNorm)) {
      const loaded = this.adapter.source ? `, or the adapter loaded from ${this.adapter.source} holds values too large` : '';
      throw new PeftkitError('E_NAN', `gradient norm is ${gradNorm} at step ${stepNo}: stopping before the adapter is corrupted (lower the learning rate?${loaded})`);
    }
    this.optimizer.update(lr);
    this.adapter.afterUpdate?.(this.optimizer.step - 1);
    return { loss: lossSum / tokens, gradNorm, tokens, inputTokens };
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
    this.buckets?.dispose();
    this.forward.dispose();
    this.optimizer.dispose();
  }
}

/** Label tokens that carry loss after the causal shift (labels[1:] != -100). */
export function countLabelTokens(b: Batch): number {
  let n = 0;
  for (let bi = 0; bi < b.B; bi++) for (let t = 1; t < b.T; t++) if (b.labels[bi * b.T + t] !== -100) n++;
  return n;
}
