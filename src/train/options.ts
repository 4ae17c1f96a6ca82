/**
 * Everything `train()` and `peftkit train` accept. Names follow PEFT / transformers / MLX-LM so
 * users coming from them find what they know; every field says its default.
 */
import type { DistributedOptions } from '../distributed/env';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError } from '../errors';
import { checkInt8ThresholdOption } from '../model/int8_threshold';
import type { DeviceOption } from '../tensor';
import type { ScheduleName } from './schedule';

/** The optimizers, by transformers' `optim` names (src/train/optimizer.ts). */
export type OptimName = 'adamw' | 'adamw8bit' | 'paged_adamw' | 'paged_adamw8bit';
export const OPTIM_NAMES: readonly OptimName[] = ['adamw', 'adamw8bit', 'paged_adamw', 'paged_adamw8bit'];

/** The methods `method` accepts (the CLI's `--method` reads this list): the adapter methods, and LoRA's presets on a quantized base. */
export const METHOD_NAMES = ['lora', 'qlora', 'int8-lora', 'dora', 'ia3', 'ln', 'bitfit', 'diff', 'adapter', 'prompt', 'p-tuning', 'prefix', 'full'] as const;
export type MethodName = (typeof METHOD_NAMES)[number];

/** The learning-rate schedules `schedule` accepts. */
export const SCHEDULE_NAMES: readonly ScheduleName[] = ['constant', 'linear', 'cosine'];

/** The base quantizations `quantize` accepts. */
export const QUANTIZE_NAMES = ['nf4', 'fp4', 'int8'] as const;

/** The highest learning rate accepted: above it AdamW diverges on any model (typical LoRA rates are 1e-5..1e-3). */
export const MAX_LR = 1;

export interface TrainOptions {
  /**
   * Data-parallel training over several processes (and machines): this process's rank, the
   * world size and rank 0's address, each read from the torchrun variables (RANK, WORLD_SIZE,
   * LOCAL_RANK, MASTER_ADDR, MASTER_PORT) where not given here. `batchSize` is per rank: a
   * step's global batch is batchSize × ranks × gradAccum. Needs an addon built with Gloo.
   * Defaults to the environment's, else one process.
   */
  distributed?: DistributedOptions;
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
   * `'adapter'`: bottleneck adapters after the attention and MLP blocks (`adapterType`, `adapterReduction`);
   * `'prompt'`: PEFT's PROMPT_TUNING, trained virtual tokens before every sequence (`numVirtualTokens`, `promptInit`);
   * `'p-tuning'`: PEFT's P_TUNING, virtual tokens made by a trained encoder (`encoder`, `encoderHiddenSize`);
   * `'prefix'`: PEFT's PREFIX_TUNING, trained key/value rows per layer (`numVirtualTokens`);
   * `'full'`: full fine-tuning, every weight (or those `trainable` names) on f32 masters, written
   * out as a whole model folder. Every adapter method works on any base storage (`quantize`);
   * `'full'` needs a dense base. With `adapter` or `resume`, the folder's method is used and a
   * different `method` is refused. Defaults to `'lora'`.
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
  /** Bottleneck adapters: 'houlsby' (after attention and MLP) or 'pfeiffer' (after the MLP). Defaults to `'houlsby'`. */
  adapterType?: 'houlsby' | 'pfeiffer';
  /** Bottleneck adapters: hidden size / bottleneck size. Defaults to `16`. */
  adapterReduction?: number;
  /** Prompt tuning: virtual tokens; prefix tuning: key/value rows per layer. Defaults to `20`. */
  numVirtualTokens?: number;
  /** Prompt tuning's init: 'random' (N(0, 1)), 'text' (`promptInitText`'s token embeddings), 'vocab' (random tokens'). Defaults to `'random'`. */
  promptInit?: 'random' | 'text' | 'vocab';
  /** The text of promptInit 'text'. Defaults to none. */
  promptInitText?: string;
  /**
   * P-tuning and prefix projection: the encoder MLP's hidden width; with `encoder` 'lstm', each
   * LSTM direction's hidden size. Defaults to the model's hidden size (P-tuning), the key/value width (prefix).
   */
  encoderHiddenSize?: number;
  /**
   * P-tuning's encoder (PEFT's encoder_reparameterization_type): 'mlp' (3 Linear layers) or
   * 'lstm' (a 2-layer bidirectional LSTM, then 2 Linear layers). Defaults to `'mlp'`.
   */
  encoder?: 'mlp' | 'lstm';
  /** Prefix tuning through a projection MLP (PEFT's prefix_projection). Defaults to `false`. */
  prefixProjection?: boolean;
  /** LoRA rank. Defaults to `8`. */
  r?: number;
  /** LoRA alpha (scaling = alpha / r). Defaults to `16`. */
  alpha?: number;
  /** LoRA dropout (DoRA's too: PEFT's lora_dropout, on the input of the low-rank and magnitude terms). Defaults to `0.05`. */
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
  /**
   * Linear warmup as a fraction of the run's steps, converted to ceil(ratio * steps) warmup steps
   * (transformers' warmup_ratio). Give it or warmupSteps, not both. Defaults to none.
   */
  warmupRatio?: number;
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
  /**
   * Resume from a checkpoint folder, or from the latest checkpoint under an output folder. Every
   * option left undefined is taken from the checkpoint's run; one given that differs from it is
   * refused, except steps/epochs (more), saveEvery, evalEvery, saveTotalLimit, logEvery, device,
   * activationCheckpointing, pagedDir and out, which change with a warning. Defaults to none.
   */
  resume?: string;
  /**
   * Train into an `out` that holds another run's checkpoints, removing them first (without it
   * such a folder is refused: resume it, or choose another). Defaults to `false`.
   */
  overwrite?: boolean;
  /** Recompute activations per layer in backward (less memory, ~30% more compute). Defaults to `false`. */
  activationCheckpointing?: boolean;
  /**
   * Where to run. Defaults to `'cpu'`. `'auto'` is cuda when the CUDA build is loaded and a GPU is
   * visible, else cpu; the 'start' event says which and why (`deviceReason`).
   */
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
  /**
   * Before the model is loaded, estimate the memory the run needs (estimateMemory: weights,
   * trainable parameters, gradients, optimizer states, activations of the largest batch) and
   * refuse with E_MEMORY, giving the figures and what to lower, when it exceeds the memory
   * available (MemAvailable within any cgroup limit; cpu runs only), instead of being killed by
   * the OS part-way. `false` starts the run anyway. Defaults to `true`.
   */
  memoryCheck?: boolean;
}

type Optional = 'evalData' | 'evalSplit' | 'adapter' | 'steps' | 'epochs' | 'resume' | 'quantize' | 'int8Threshold' | 'warmupRatio' | 'trainable' | 'diffDensity' | 'diffPruneStep' | 'adapterType' | 'adapterReduction' | 'numVirtualTokens' | 'promptInit' | 'promptInitText' | 'encoderHiddenSize' | 'encoder' | 'prefixProjection' | 'distributed';
export type ResolvedTrainOptions = Required<Omit<TrainOptions, Optional>> & Pick<TrainOptions, Optional>;

/** How an option is named in messages: the API field by default; the CLI passes its flag names. */
export type OptionNamer = (field: string) => string;

const METHOD_QUANT: Record<MethodName, 'nf4' | 'int8' | undefined> = {
  lora: undefined, qlora: 'nf4', 'int8-lora': 'int8', dora: undefined, ia3: undefined, ln: undefined, bitfit: undefined, diff: undefined, adapter: undefined, prompt: undefined, 'p-tuning': undefined, prefix: undefined, full: undefined,
};

/** The quantization a method and a `quantize` option ask for together. */
function resolveQuantize(o: TrainOptions, name: OptionNamer): { method: MethodName; quantize: TrainOptions['quantize'] } {
  const method = o.method ?? 'lora';
  if (!(METHOD_NAMES as readonly string[]).includes(method)) {
    throw new PeftkitError('E_ARG', `${name('method')}: expected one of ${METHOD_NAMES.join(', ')}, got '${String(method)}'`);
  }
  if (o.quantize !== undefined && !(QUANTIZE_NAMES as readonly string[]).includes(o.quantize)) {
    throw new PeftkitError('E_ARG', `${name('quantize')}: expected nf4, fp4 or int8, got '${String(o.quantize)}'`);
  }
  const implied = METHOD_QUANT[method];
  if (implied && o.quantize && o.quantize !== implied) {
    throw new PeftkitError('E_ARG', `${name('quantize')} '${o.quantize}' contradicts ${name('method')} '${method}' (which quantizes to ${implied})`);
  }
  const quantize = o.quantize ?? implied;
  if (method === 'full' && quantize) throw new PeftkitError('E_ARG', `${name('quantize')}: full fine-tuning trains every weight in f32, so it cannot use a '${quantize}' base`);
  if (method !== 'full' && o.trainable !== undefined) throw new PeftkitError('E_ARG', `${name('trainable')}: only for ${name('method')} full (got '${method}')`);
  checkInt8ThresholdOption(o.int8Threshold, quantize);
  return { method, quantize };
}

function promptInit(o: TrainOptions, name: OptionNamer): 'random' | 'text' | 'vocab' {
  const v = o.promptInit;
  if (v !== 'random' && v !== 'text' && v !== 'vocab') throw new PeftkitError('E_ARG', `${name('promptInit')}: expected random, text or vocab, got '${String(v)}'`);
  if (v === 'text' && !o.promptInitText) throw new PeftkitError('E_ARG', `${name('promptInit')} text needs ${name('promptInitText')}`);
  return v;
}

function encoder(v: unknown, name: OptionNamer): 'mlp' | 'lstm' {
  if (v !== 'mlp' && v !== 'lstm') throw new PeftkitError('E_ARG', `${name('encoder')}: expected mlp or lstm, got '${String(v)}'`);
  return v;
}

function adapterType(v: unknown, name: OptionNamer): 'houlsby' | 'pfeiffer' {
  if (v !== 'houlsby' && v !== 'pfeiffer') throw new PeftkitError('E_ARG', `${name('adapterType')}: expected houlsby or pfeiffer, got '${String(v)}'`);
  return v;
}

function positiveInt(name: string, v: number | undefined, dflt: number, allowZero = false): number {
  const x = v ?? dflt;
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < (allowZero ? 0 : 1)) {
    throw new PeftkitError('E_ARG', `${name}: expected ${allowZero ? 'a non-negative' : 'a positive'} integer, got ${String(v)}`);
  }
  return x;
}

/** A finite number in [lo, hi], or (lo, hi] when `loOpen`. */
function num(name: string, v: number | undefined, dflt: number, lo: number, hi: number, loOpen = false): number {
  const x = v ?? dflt;
  if (typeof x !== 'number' || !Number.isFinite(x) || (loOpen ? x <= lo : x < lo) || x > hi) {
    throw new PeftkitError('E_ARG', `${name}: expected a number in ${loOpen ? '(' : '['}${lo}, ${hi}], got ${String(v)}`);
  }
  return x;
}

/** The LoRA options an adapter folder's config decides when training continues from it. */
const ADAPTER_DECIDES = ['r', 'alpha', 'dropout', 'targets', 'rslora', 'initLoraWeights'] as const;

/**
 * Fills defaults and checks every value, naming the option that is wrong (by `name`: the API
 * field, or the CLI flag when the CLI resolves them).
 */
export function resolveTrainOptions(o: TrainOptions, name: OptionNamer = (f) => f): ResolvedTrainOptions {
  for (const k of ['model', 'data', 'out'] as const) {
    if (typeof o[k] !== 'string' || !o[k]) throw new PeftkitError('E_ARG', `${name(k)}: expected a path`);
  }
  const both = (a: keyof TrainOptions, b: keyof TrainOptions) => {
    if (o[a] !== undefined && o[b] !== undefined) throw new PeftkitError('E_ARG', `${name(a)} and ${name(b)} were both given; expected one`);
  };
  both('steps', 'epochs');
  // Checked here for every data kind: pre-tokenized data (no tokenizer) never reaches loadDataset's check.
  both('evalData', 'evalSplit');
  both('warmupSteps', 'warmupRatio');
  if (o.adapter !== undefined) {
    const given = ADAPTER_DECIDES.filter((k) => o[k] !== undefined);
    if (given.length) {
      throw new PeftkitError('E_ARG', `${given.map(name).join(', ')} cannot be given with ${name('adapter')}: the adapter's adapter_config.json decides them`);
    }
  }
  if (o.overwrite && o.resume !== undefined) throw new PeftkitError('E_ARG', `${name('overwrite')} and ${name('resume')} were both given: resuming keeps the checkpoints`);
  if (o.evalSplit !== undefined && !(typeof o.evalSplit === 'number' && o.evalSplit > 0 && o.evalSplit < 1)) {
    throw new PeftkitError('E_ARG', `${name('evalSplit')}: expected a fraction between 0 and 1 (exclusive), got ${String(o.evalSplit)}`);
  }
  const { method, quantize } = resolveQuantize(o, name);
  const schedule = o.schedule ?? 'constant';
  if (!SCHEDULE_NAMES.includes(schedule)) throw new PeftkitError('E_ARG', `${name('schedule')}: expected constant, linear or cosine, got '${schedule}'`);
  const targets = o.targets ?? ['q_proj', 'v_proj'];
  const optim = o.optim ?? 'adamw';
  if (!OPTIM_NAMES.includes(optim)) throw new PeftkitError('E_ARG', `${name('optim')}: expected one of ${OPTIM_NAMES.join(', ')}, got '${String(optim)}'`);
  if (o.pagedDir !== undefined) {
    if (typeof o.pagedDir !== 'string' || !o.pagedDir) throw new PeftkitError('E_ARG', `${name('pagedDir')}: expected a path`);
    // Not created (a mistyped path would put gigabytes of optimizer states somewhere unintended),
    // except inside the output folder, which the run creates.
    const inOut = typeof o.out === 'string' && !path.relative(path.resolve(o.out), path.resolve(o.pagedDir)).startsWith('..');
    if (!inOut && !fs.statSync(o.pagedDir, { throwIfNoEntry: false })?.isDirectory()) {
      throw new PeftkitError('E_ARG', `${name('pagedDir')}: ${o.pagedDir} is not an existing folder (it is created only inside ${name('out')})`);
    }
  }
  if (targets !== 'all-linear' && (!Array.isArray(targets) || targets.length === 0 || !targets.every((t) => typeof t === 'string' && t))) {
    throw new PeftkitError('E_ARG', `${name('targets')}: expected module names (e.g. q_proj,v_proj) or all-linear`);
  }
  if (o.device !== undefined && !(['cpu', 'cuda', 'auto'] as unknown[]).includes(o.device)) {
    throw new PeftkitError('E_ARG', `${name('device')}: expected cpu, cuda or auto, got '${String(o.device)}'`);
  }
  const betas = o.betas ?? [0.9, 0.999];
  if (!Array.isArray(betas) || betas.length !== 2) throw new PeftkitError('E_ARG', `${name('betas')}: expected two numbers in [0, 1), got ${JSON.stringify(betas)}`);
  for (const b of betas) {
    if (typeof b !== 'number' || !(b >= 0 && b < 1)) throw new PeftkitError('E_ARG', `${name('betas')}: expected two numbers in [0, 1), got ${JSON.stringify(betas)}`);
  }
  return {
    ...o,
    method,
    quantize,
    r: positiveInt(name('r'), o.r, 8),
    alpha: num(name('alpha'), o.alpha, 16, -1e9, 1e9),
    dropout: num(name('dropout'), o.dropout, 0.05, 0, 0.99),
    numVirtualTokens: o.numVirtualTokens === undefined ? undefined : positiveInt(name('numVirtualTokens'), o.numVirtualTokens, 20),
    encoderHiddenSize: o.encoderHiddenSize === undefined ? undefined : positiveInt(name('encoderHiddenSize'), o.encoderHiddenSize, 1),
    encoder: o.encoder === undefined ? undefined : encoder(o.encoder, name),
    promptInit: o.promptInit === undefined ? undefined : promptInit(o, name),
    adapterType: o.adapterType === undefined ? undefined : adapterType(o.adapterType, name),
    adapterReduction: o.adapterReduction === undefined ? undefined : positiveInt(name('adapterReduction'), o.adapterReduction, 16),
    diffDensity: o.diffDensity === undefined ? undefined : num(name('diffDensity'), o.diffDensity, 0.005, 1e-9, 1),
    diffPruneStep: o.diffPruneStep === undefined ? undefined : positiveInt(name('diffPruneStep'), o.diffPruneStep, 0, true),
    targets,
    rslora: o.rslora ?? false,
    initLoraWeights: o.initLoraWeights ?? true,
    steps: o.steps === undefined ? undefined : positiveInt(name('steps'), o.steps, 1),
    epochs: o.epochs === undefined ? undefined : num(name('epochs'), o.epochs, 1, 1e-9, 1e9),
    batchSize: positiveInt(name('batchSize'), o.batchSize, 4),
    gradAccum: positiveInt(name('gradAccum'), o.gradAccum, 1),
    lr: num(name('lr'), o.lr, 2e-4, 0, MAX_LR),
    weightDecay: num(name('weightDecay'), o.weightDecay, 0, 0, 10),
    betas,
    warmupRatio: o.warmupRatio === undefined ? undefined : num(name('warmupRatio'), o.warmupRatio, 0, 0, 1),
    eps: num(name('eps'), o.eps, 1e-8, 0, 1, true),
    schedule,
    warmupSteps: positiveInt(name('warmupSteps'), o.warmupSteps, 0, true),
    maxGradNorm: num(name('maxGradNorm'), o.maxGradNorm, 1, 0, 1e9),
    maxLength: positiveInt(name('maxLength'), o.maxLength, 2048),
    shuffle: o.shuffle ?? true,
    seed: positiveInt(name('seed'), o.seed, 0, true),
    packing: o.packing ?? false,
    maskPrompt: o.maskPrompt ?? true,
    saveEvery: positiveInt(name('saveEvery'), o.saveEvery, 0, true),
    saveTotalLimit: positiveInt(name('saveTotalLimit'), o.saveTotalLimit, 0, true),
    evalEvery: positiveInt(name('evalEvery'), o.evalEvery, 0, true),
    activationCheckpointing: o.activationCheckpointing ?? false,
    device: o.device ?? 'cpu',
    bf16: o.bf16 ?? false,
    logEvery: positiveInt(name('logEvery'), o.logEvery, 1),
    optim,
    pagedDir: o.pagedDir ?? os.tmpdir(),
    overwrite: o.overwrite ?? false,
    memoryCheck: o.memoryCheck ?? true,
  };
}
