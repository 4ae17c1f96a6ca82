/**
 * Everything `train()` and `peftkit train` accept. Names follow PEFT / transformers / MLX-LM so
 * users coming from them find what they know; every field says its default.
 */
import * as os from 'os';
import { PeftkitError } from '../errors';
import { checkInt8ThresholdOption } from '../model/int8_threshold';
import type { DeviceOption } from '../tensor';
import type { ScheduleName } from './schedule';

/** The optimizers, by transformers' `optim` names (src/train/optimizer.ts). */
export type OptimName = 'adamw' | 'adamw8bit' | 'paged_adamw' | 'paged_adamw8bit';

/** `train --method` values: the adapter methods, and LoRA's presets on a quantized base. */
export type MethodName = 'lora' | 'qlora' | 'int8-lora' | 'dora' | 'ia3' | 'ln' | 'bitfit' | 'diff' | 'full';
export const METHOD_NAMES: readonly MethodName[] = ['lora', 'qlora', 'int8-lora', 'dora', 'ia3', 'ln', 'bitfit', 'diff', 'full'];
export const OPTIM_NAMES: readonly OptimName[] = ['adamw', 'adamw8bit', 'paged_adamw', 'paged_adamw8bit'];

export interface TrainOptions {
  /** Hugging Face model folder (config.json + safetensors; tokenizer.json when the data holds text). */
  model: string;
  /** Training data: JSONL or a JSON array of {text} | {prompt, completion} | {messages} | {input_ids, labels?} rows. */
  data: string;
  /** Output folder: the adapter (PEFT format), train_log.jsonl, loss_curve.svg, checkpoints/. */
  out: string;
  /** Eval data file (same formats). Defaults to none. */
  evalData?: string;
  /** Fraction of the training rows held out for eval (the file's tail). Defaults to none. */
  evalSplit?: number;
  /**
   * Adapter method: `'lora'` on the base as stored; `'qlora'`: LoRA on a base whose decoder Linear
   * weights are quantized to NF4 with double quantization at load; `'int8-lora'`: the same with
   * LLM.int8 row-wise weights; `'dora'`: LoRA with PEFT's weight decomposition (use_dora);
   * `'ia3'`: PEFT's IA3 vectors on k_proj, v_proj and down_proj's input; `'ln'`: PEFT's LN_TUNING,
   * the RMSNorm scales; `'bitfit'`: the Linear biases (added at zero where the base has none);
   * `'diff'`: diff pruning, a sparse difference δ on the targeted weights (`diffDensity`);
   * `'full'`: full fine-tuning, every weight (or those `trainable` names) on f32 masters, written
   * out as a whole model folder. Every adapter method works on any base storage (`quantize`);
   * `'full'` needs a dense base. With `adapter` or
   * `resume`, the folder's method is used and a different `method` is refused. Defaults to `'lora'`.
   */
  method?: MethodName;
  /**
   * Quantize the frozen decoder Linear weights at load ('nf4', 'fp4' or 'int8'; `method` qlora
   * implies 'nf4', int8-lora 'int8'). A bitsandbytes model folder is always used quantized as
   * stored. Defaults to none.
   */
  quantize?: 'nf4' | 'fp4' | 'int8';
  /**
   * LLM.int8 outlier threshold of an int8 base (`int8-lora`, quantize 'int8', or a bitsandbytes
   * 8-bit folder): the frozen weights' forward products quantize activations to int8 as
   * bitsandbytes' MatMul8bitLt does, with the columns holding any |x| >= threshold multiplied in
   * f32; `0` quantizes every column; the input gradient uses the dequantized weight, as
   * bitsandbytes' backward. A finite number >= 0; E_UNSUPPORTED with a non-int8 base. Defaults to
   * none: the int8 weight is dequantized inside an f32 GEMM (also for a folder whose
   * `llm_int8_threshold` is set; see the README).
   */
  int8Threshold?: number;
  /** Full fine-tuning: a regular expression; only the weights whose checkpoint name it matches train. Defaults to every weight. */
  trainable?: string;
  /** Diff pruning: the fraction of each δ kept at pruning, in (0, 1]. Defaults to `0.005`. */
  diffDensity?: number;
  /** Diff pruning: the optimizer step (0-based) after which δ is pruned. Defaults to a tenth of the run's steps. */
  diffPruneStep?: number;
  /** LoRA rank. Defaults to `8`. */
  r?: number;
  /** LoRA alpha (scaling = alpha / r). Defaults to `16`. */
  alpha?: number;
  /** LoRA dropout. Defaults to `0.05` (`0` with `dora`, which does not implement dropout yet). */
  dropout?: number;
  /** Target modules by name, or 'all-linear'. Defaults to `['q_proj', 'v_proj']` (PEFT's Llama default). */
  targets?: string[] | 'all-linear';
  /** rsLoRA scaling (alpha / sqrt(r)). Defaults to `false`. */
  rslora?: boolean;
  /** LoRA init: true (kaiming A, zero B) or 'gaussian'. Defaults to `true`. */
  initLoraWeights?: true | 'gaussian';
  /** Continue training from this PEFT adapter folder (its config wins over r/alpha/targets). Defaults to none. */
  adapter?: string;
  /** Optimizer steps to run. Defaults to one epoch when neither steps nor epochs is given. */
  steps?: number;
  /** Epochs to run (converted to steps). Defaults to none. */
  epochs?: number;
  /** Sequences per micro-batch. Defaults to `4`. */
  batchSize?: number;
  /** Micro-batches per optimizer step. Defaults to `1`. */
  gradAccum?: number;
  /** Peak learning rate. Defaults to `2e-4`. */
  lr?: number;
  /** AdamW decoupled weight decay. Defaults to `0`. */
  weightDecay?: number;
  /** AdamW betas. Defaults to `[0.9, 0.999]`. */
  betas?: [number, number];
  /** AdamW eps. Defaults to `1e-8`. */
  eps?: number;
  /** Learning-rate schedule after warmup. Defaults to `'constant'`. */
  schedule?: ScheduleName;
  /** Linear warmup steps. Defaults to `0`. */
  warmupSteps?: number;
  /** Global gradient-norm clipping; 0 turns it off. Defaults to `1`. */
  maxGradNorm?: number;
  /** Truncate examples to this many tokens. Defaults to `2048`. */
  maxLength?: number;
  /** Shuffle the training rows each epoch (seeded). Defaults to `true`. */
  shuffle?: boolean;
  /** Seed of shuffling, init and dropout. Defaults to `0`. */
  seed?: number;
  /** Pack examples into rows of maxLength tokens. Defaults to `false`. */
  packing?: boolean;
  /** Loss on the completion / assistant tokens only. Defaults to `true`. */
  maskPrompt?: boolean;
  /** Save a checkpoint every N steps (0 = only at the end). Defaults to `0`. */
  saveEvery?: number;
  /**
   * Keep only the newest N checkpoints under `out/checkpoints` (transformers' save_total_limit):
   * older ones are deleted once a newer one is complete. 0 = keep all. Defaults to `0`.
   */
  saveTotalLimit?: number;
  /** Evaluate every N steps (0 = only at the end, when there is eval data). Defaults to `0`. */
  evalEvery?: number;
  /** Resume from a checkpoint folder, or from the latest checkpoint under an output folder. Defaults to none. */
  resume?: string;
  /** Recompute activations per layer in backward (less memory, ~30% more compute). Defaults to `false`. */
  activationCheckpointing?: boolean;
  /** Where to run. Defaults to `'cpu'`. */
  device?: DeviceOption;
  /**
   * A bf16 base, as PyTorch's bf16 autocast computes it: the frozen Linear weights, embeddings and
   * lm_head are stored in bf16, half their memory, and the Linear and LM-head products read
   * their operands rounded to bf16 with f32 sums (VDPBF16PS on CPUs with AVX512-BF16, about twice
   * the f32 rate). The adapter and its rank-r products, the optimizer, norms,
   * attention, activations and the loss stay f32. With a quantized base (`qlora`, `int8-lora`,
   * `quantize`) the Linear weights stay quantized and are decoded to bf16 inside the GEMMs: QLoRA's
   * compute_dtype=bfloat16. Defaults to `false`.
   */
  bf16?: boolean;
  /** Write a progress record to the log every N steps. Defaults to `1`. */
  logEvery?: number;
  /**
   * Optimizer: `'adamw'` (f32 moments), `'adamw8bit'` (bitsandbytes' blockwise 8-bit moments,
   * a quarter of the memory; tensors under 4096 elements keep f32), `'paged_adamw'`,
   * `'paged_adamw8bit'` (the same states in paged memory: a file on disk the OS pages in and
   * out on cpu, managed memory on cuda). Defaults to `'adamw'`.
   */
  optim?: OptimName;
  /** Paged optimizers on cpu: folder of the states' file (a disk, not tmpfs). Defaults to the OS temp folder. */
  pagedDir?: string;
}

export type ResolvedTrainOptions = Required<Omit<TrainOptions, 'evalData' | 'evalSplit' | 'adapter' | 'steps' | 'epochs' | 'resume' | 'quantize' | 'int8Threshold' | 'trainable' | 'diffDensity' | 'diffPruneStep'>> &
  Pick<TrainOptions, 'evalData' | 'evalSplit' | 'adapter' | 'steps' | 'epochs' | 'resume' | 'quantize' | 'int8Threshold' | 'trainable' | 'diffDensity' | 'diffPruneStep'>;

const METHOD_QUANT = { lora: undefined, qlora: 'nf4', 'int8-lora': 'int8', dora: undefined, ia3: undefined, ln: undefined, bitfit: undefined, diff: undefined, full: undefined } as const;

/** The quantization a method and a `quantize` option ask for together. */
function resolveQuantize(o: TrainOptions): { method: MethodName; quantize: TrainOptions['quantize'] } {
  const method = o.method ?? 'lora';
  if (!Object.prototype.hasOwnProperty.call(METHOD_QUANT, method)) {
    throw new PeftkitError('E_ARG', `method: expected one of ${METHOD_NAMES.join(', ')}, got '${String(method)}'`);
  }
  if (o.quantize !== undefined && o.quantize !== 'nf4' && o.quantize !== 'fp4' && o.quantize !== 'int8') {
    throw new PeftkitError('E_ARG', `quantize: expected nf4, fp4 or int8, got '${String(o.quantize)}'`);
  }
  const implied = METHOD_QUANT[method];
  if (implied && o.quantize && o.quantize !== implied) {
    throw new PeftkitError('E_ARG', `quantize '${o.quantize}' contradicts method '${method}' (which quantizes to ${implied})`);
  }
  const quantize = o.quantize ?? implied;
  if (method === 'full' && quantize) throw new PeftkitError('E_ARG', `quantize: full fine-tuning trains every weight in f32, so it cannot use a '${quantize}' base`);
  if (method !== 'full' && o.trainable !== undefined) throw new PeftkitError('E_ARG', `trainable: only for method full (got method '${method}')`);
  checkInt8ThresholdOption(o.int8Threshold, quantize);
  return { method, quantize };
}

function positiveInt(name: string, v: number | undefined, dflt: number, allowZero = false): number {
  const x = v ?? dflt;
  if (!Number.isInteger(x) || x < (allowZero ? 0 : 1)) {
    throw new PeftkitError('E_ARG', `${name}: expected ${allowZero ? 'a non-negative' : 'a positive'} integer, got ${String(v)}`);
  }
  return x;
}

function num(name: string, v: number | undefined, dflt: number, lo: number, hi: number): number {
  const x = v ?? dflt;
  if (typeof x !== 'number' || !Number.isFinite(x) || x < lo || x > hi) throw new PeftkitError('E_ARG', `${name}: expected a number in [${lo}, ${hi}], got ${String(v)}`);
  return x;
}

/** Fills defaults and checks every value, naming the option that is wrong. */
export function resolveTrainOptions(o: TrainOptions): ResolvedTrainOptions {
  for (const k of ['model', 'data', 'out'] as const) {
    if (typeof o[k] !== 'string' || !o[k]) throw new PeftkitError('E_ARG', `${k}: expected a path`);
  }
  if (o.steps !== undefined && o.epochs !== undefined) throw new PeftkitError('E_ARG', 'steps and epochs were both given; expected one');
  // Checked here for every data kind: pre-tokenized data (no tokenizer) never reaches loadDataset's check.
  if (o.evalData !== undefined && o.evalSplit !== undefined) throw new PeftkitError('E_ARG', 'evalData and evalSplit were both given; expected one');
  const { method, quantize } = resolveQuantize(o);
  if (method === 'dora' && o.dropout !== undefined && o.dropout > 0) throw new PeftkitError('E_UNSUPPORTED', `dropout: DoRA with dropout ${o.dropout} is not implemented; use dropout 0 with method dora`);
  const schedule = o.schedule ?? 'constant';
  if (!['constant', 'linear', 'cosine'].includes(schedule)) throw new PeftkitError('E_ARG', `schedule: expected constant, linear or cosine, got '${schedule}'`);
  const targets = o.targets ?? ['q_proj', 'v_proj'];
  const optim = o.optim ?? 'adamw';
  if (!OPTIM_NAMES.includes(optim)) throw new PeftkitError('E_ARG', `optim: expected one of ${OPTIM_NAMES.join(', ')}, got '${String(optim)}'`);
  if (o.pagedDir !== undefined && (typeof o.pagedDir !== 'string' || !o.pagedDir)) throw new PeftkitError('E_ARG', 'pagedDir: expected a path');
  if (targets !== 'all-linear' && (!Array.isArray(targets) || targets.length === 0 || !targets.every((t) => typeof t === 'string' && t))) {
    throw new PeftkitError('E_ARG', 'targets: expected module names (e.g. q_proj,v_proj) or all-linear');
  }
  return {
    ...o,
    method,
    quantize,
    r: positiveInt('r', o.r, 8),
    alpha: num('alpha', o.alpha, 16, -1e9, 1e9),
    diffDensity: o.diffDensity === undefined ? undefined : num('diffDensity', o.diffDensity, 0.005, 1e-9, 1),
    diffPruneStep: o.diffPruneStep === undefined ? undefined : positiveInt('diffPruneStep', o.diffPruneStep, 0, true),
    dropout: num('dropout', o.dropout, method === 'dora' ? 0 : 0.05, 0, 0.99),
    targets,
    rslora: o.rslora ?? false,
    initLoraWeights: o.initLoraWeights ?? true,
    steps: o.steps === undefined ? undefined : positiveInt('steps', o.steps, 1),
    epochs: o.epochs === undefined ? undefined : num('epochs', o.epochs, 1, 1e-9, 1e9),
    batchSize: positiveInt('batchSize', o.batchSize, 4),
    gradAccum: positiveInt('gradAccum', o.gradAccum, 1),
    lr: num('lr', o.lr, 2e-4, 0, 10),
    weightDecay: num('weightDecay', o.weightDecay, 0, 0, 10),
    betas: o.betas ?? [0.9, 0.999],
    eps: num('eps', o.eps, 1e-8, 0, 1),
    schedule,
    warmupSteps: positiveInt('warmupSteps', o.warmupSteps, 0, true),
    maxGradNorm: num('maxGradNorm', o.maxGradNorm, 1, 0, 1e9),
    maxLength: positiveInt('maxLength', o.maxLength, 2048),
    shuffle: o.shuffle ?? true,
    seed: positiveInt('seed', o.seed, 0, true),
    packing: o.packing ?? false,
    maskPrompt: o.maskPrompt ?? true,
    saveEvery: positiveInt('saveEvery', o.saveEvery, 0, true),
    saveTotalLimit: positiveInt('saveTotalLimit', o.saveTotalLimit, 0, true),
    evalEvery: positiveInt('evalEvery', o.evalEvery, 0, true),
    activationCheckpointing: o.activationCheckpointing ?? false,
    device: o.device ?? 'cpu',
    bf16: o.bf16 ?? false,
    logEvery: positiveInt('logEvery', o.logEvery, 1),
    optim,
    pagedDir: o.pagedDir ?? os.tmpdir(),
  };
}
