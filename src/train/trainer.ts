/**
 * One optimizer step of adapter training: forward + backward over the micro-batches of an
 * accumulation window (loss normalized by the window's label tokens, as transformers does),
 * global-norm clipping, a non-finite guard, AdamW at the schedule's learning rate (f32, 8-bit
 * or paged states: `optim` in the options).
 */
import { PeftkitError } from '../errors';
import type { Batch } from '../model/llama_forward';
import { LlamaForward } from '../model/llama_forward';
import type { LlamaModel } from '../model/llama';
import * as ops from '../ops';
import type { PeftMethod } from '../peft/method';
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
  /** Base seed of dropout masks (mixed with the step number). */
  seed?: number;
}

export class Trainer {
  readonly forward: LlamaForward;
  readonly optimizer: AdamW;
  private readonly o: TrainerOptions;
  private readonly adapter: PeftMethod;

  constructor(model: LlamaModel, adapter: PeftMethod, o: TrainerOptions) {
    this.o = o;
    this.adapter = adapter;
    this.forward = new LlamaForward(model, adapter, o.maxRows, o.maxT, o.activationCheckpointing ?? false);
    this.optimizer = new AdamW(adapter.parameters(), o);
  }

  /** Runs one optimizer step over `window` (the micro-batches of one accumulation). */
  step(window: readonly Batch[], lr: number): StepResult {
    let tokens = 0;
    for (const b of window) tokens += this.forward.labelTokens(b);
    if (tokens === 0) throw new PeftkitError('E_DATA', 'a training step has no label tokens (every label is -100): nothing to learn from');
    this.adapter.zeroGrad();
    let lossSum = 0;
    let inputTokens = 0;
    const stepNo = this.optimizer.step + 1;
    for (const [i, b] of window.entries()) {
      const seed = ((this.o.seed ?? 0) * 1000003 + stepNo * 131 + i) >>> 0;
      const r = this.forward.run(b, { dropout: this.o.dropout ?? this.adapter.dropout, dropoutSeed: seed }, 1 / tokens);
      lossSum += r.lossSum;
      inputTokens += b.B * b.T;
    }
    // A method may constrain its gradients first (diff pruning: pruned entries get none), so clipping sees what will be applied.
    this.adapter.prepareGrads?.();
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

  /** Mean loss over batches without touching gradients. */
  evaluate(batches: Iterable<Batch>): { loss: number; tokens: number } {
    let lossSum = 0;
    let tokens = 0;
    for (const b of batches) {
      const r = this.forward.run(b, { dropout: 0, dropoutSeed: 0 }, null);
      lossSum += r.lossSum;
      tokens += r.tokens;
    }
    return { loss: tokens ? lossSum / tokens : NaN, tokens };
  }

  dispose(): void {
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
