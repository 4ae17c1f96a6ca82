/**
 * How much memory a training run needs, before it allocates any of it: the frozen weights in
 * their storage, the trainable parameters, their gradients and optimizer states, the
 * activations of the largest batch (as llama_forward.ts allocates them, with or without
 * activation checkpointing) and what each method keeps for its backward, the loss's logits
 * chunk, and the fixed cost of Node, the addon and the training worker. `train()` compares it
 * with the memory available and refuses (E_MEMORY) a run that cannot fit, instead of being
 * killed by the OS part-way; `estimateMemory` and `peftkit estimate` report it.
 *
 * Every figure is what the code allocates (the shapes in LlamaForward, the sites, the
 * optimizer), so a change there must change the formula here: test/memory.test.ts checks the
 * trainable parameters against every method's own and the total against the peak RSS of real
 * runs.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError } from '../errors';
import type { ModelConfig } from '../model/config';
import { SafetensorsCheckpoint } from '../model/safetensors';
import type { LinearModule } from '../model/sites';
import { denseDtype, expectedWeights, isLayerLinearWeight, isMatmulWeight, linearModules } from '../model/weights';
import { ADAMW8BIT_BLOCK, MIN_8BIT_SIZE } from '../ops/optim8';
import { BitFitAdapter, BitFitConfig, parseBitFitConfig } from '../peft/bitfit/adapter';
import { BottleneckAdapter, BottleneckConfig, parseBottleneckConfig } from '../peft/bottleneck/adapter';
import { DiffAdapter, DiffConfig, parseDiffConfig } from '../peft/diff/adapter';
import { FullConfig, trainableRegExp } from '../peft/full/adapter';
import { Ia3Adapter, Ia3Config, parseIa3Config } from '../peft/ia3/adapter';
import { LnTuningAdapter, LnTuningConfig, parseLnTuningConfig } from '../peft/ln_tuning/adapter';
import { LoraConfig, parseLoraConfig } from '../peft/lora/config';
import { moduleRank } from '../peft/lora/adapter';
import { readAdapterConfigJson } from '../peft/method';
import { encoderShapes, headWidths } from '../peft/p_tuning/adapter';
import { parsePTuningConfig, PTuningConfig } from '../peft/p_tuning/config';
import { parsePrefixTuningConfig, PrefixTuningConfig } from '../peft/prefix/config';
import { parsePromptTuningConfig, PromptTuningConfig } from '../peft/prompt/config';
import { AdapterConfigs, AdapterMethod, CreateAdapterOptions, newAdapterConfig } from '../peft/registry';
import { selectTargets } from '../peft/targets';
import { detectQuantFormat, readQuant4Meta } from '../quant/bnb_layout';
import type { ResolvedTrainOptions } from './options';

/** The parts of an estimate, in the order a report lists them. */
export type MemoryPart = 'runtime' | 'weights' | 'parameters' | 'gradients' | 'optimizer' | 'activations' | 'scratch' | 'checkpoint' | 'data';

export interface MemoryEstimate {
  /** Bytes at the run's peak: the sum of `parts`. Compare with the process's peak RSS. */
  total: number;
  /**
   * Bytes that must fit in memory: `total` less the paged optimizer states (a file the OS may
   * page out). This is what `train()` checks against the memory available.
   */
  required: number;
  /** Each part's bytes and what it holds, in the order of MemoryPart. */
  parts: Array<{ part: MemoryPart; bytes: number; what: string }>;
  /** Trainable parameters. */
  trainableParams: number;
  /** Tokens per sequence the activations are sized for (with virtual tokens, their count added). */
  seqLength: number;
  batchSize: number;
}

/**
 * Node with the addon loaded (V8, libuv, libstdc++, libgomp): 57 MB measured on Node 20 x86-64,
 * plus the training worker's isolate and the JS heap a run grows (the tokenizer and jinja
 * modules, the event plumbing), 23 MB measured there. Fitted on the test shapes of
 * test/memory.test.ts, where they are most of the peak.
 */
const PROCESS_BYTES = 57 * 2 ** 20;
const WORKER_BYTES = 23 * 2 ** 20;
/** GEMM packing buffers, attention tiles and OpenMP stacks, per compute thread (gemm.cc keeps up to 64 MiB a thread; a kc×nc block is ~4 MiB). */
const THREAD_SCRATCH_BYTES = 6 * 2 ** 20;
/** The fused loss's logits chunk: 2^25 floats at most (native/ops/loss.cc), kept per calling thread. */
const LOSS_CHUNK_FLOATS = 2 ** 25;
/** A token of the tokenized data in the JS heap: input id and label, each a JS array element (8 bytes). */
const DATA_BYTES_PER_TOKEN = 16;
/** A parsed tokenizer.json in the JS heap, per byte of the file (vocabulary and merge maps). */
const TOKENIZER_BYTES_PER_FILE_BYTE = 8;

/** What the run is made of, as runTraining knows it once its data is read. */
export interface RunShape {
  o: ResolvedTrainOptions;
  config: ModelConfig;
  /** The adapter method (the folder's, when continuing one). */
  method: AdapterMethod;
  /** The folder the adapter is loaded from (adapter or resume), null for a new one. */
  adapterDir: string | null;
  /** What a new adapter is made from (createAdapter's options). */
  create: CreateAdapterOptions;
  /** Tokens per sequence the buffers are made for (packing: maxLength; else the longest row, at most maxLength). */
  seqLength: number;
  /** Tokens in the tokenized train and eval rows. */
  dataTokens: number;
  /** Compute threads (runtimeInfo().threads). */
  threads: number;
}

/** The trainable tensors of a method (element counts), and what its sites keep, in floats. */
export interface Footprint {
  tensors: number[];
  /** Floats per row of the batch its sites keep from forward to backward (LoRA's X·Aᵀ, DoRA's Z, ...). */
  keptPerRow: number;
  /** Floats per row of the sites' scratch (the largest of each slot). */
  scratchPerRow: number;
  /** Floats of fixed extra tensors (per-layer copies, DoRA's dequantized weight, ...). */
  fixed: number;
  /** Virtual tokens added to every sequence (prompt tuning, P-tuning). */
  virtualTokens: number;
  /** Prefix rows per layer (prefix tuning): each layer's keys and values grow by them. */
  prefixRows: number;
  /** Host (JS) bytes: diff pruning's masks. */
  hostBytes: number;
}

const none = (): Footprint => ({ tensors: [], keptPerRow: 0, scratchPerRow: 0, fixed: 0, virtualTokens: 0, prefixRows: 0, hostBytes: 0 });
const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);
const max = (xs: readonly number[]) => xs.reduce((a, b) => Math.max(a, b), 0);

/** A LoRA layer: its module, rank, and whether it is DoRA's. */
interface LoraShape {
  m: LinearModule;
  r: number;
  dora: boolean;
}

/** LoRA's (and DoRA's) layers, with `extras` (trained biases, modules_to_save copies) beside them. */
function loraFootprint(layers: readonly LoraShape[], extras: readonly number[], dropout: number): Footprint {
  const f = none();
  for (const { m, r, dora } of layers) {
    f.tensors.push(r * m.inFeatures, m.outFeatures * r);
    f.keptPerRow += r; // X·Aᵀ
    if (dora) {
      f.tensors.push(m.outFeatures); // the magnitude
      f.keptPerRow += m.outFeatures; // Z
      f.fixed += 4 * m.outFeatures; // g, g − 1, dg, the norm
    }
  }
  f.tensors.push(...extras);
  // The sites' scratch slots (lora/layer.ts, dora/layer.ts), each as wide as its widest use: with
  // dropout the dropped input, its gradient and the input gradient (0-2); DoRA's dZ (5), and with
  // dropout its Z on the dropped input (1) and that product's X·Aᵀ (6).
  const widest = (pick: (l: LoraShape) => number, of = layers) => max(of.map(pick));
  const doras = layers.filter((l) => l.dora);
  const inW = widest((l) => l.m.inFeatures), outW = widest((l) => l.m.outFeatures, doras);
  const slots = dropout > 0 ? [inW, doras.length ? Math.max(inW, outW) : inW, inW] : [];
  if (doras.length) slots.push(outW, ...(dropout > 0 ? [widest((l) => l.r, doras)] : []));
  f.scratchPerRow = sum(slots);
  // DoRA's W + s·B·A and its row norms, once a forward (slots 3, 4).
  if (doras.length) f.fixed += widest((l) => l.m.outFeatures * l.m.inFeatures, doras) + outW;
  return f;
}

/** A new LoRA adapter's layers and extras, from its config (LoraAdapter.create). */
function newLoraFootprint(c: ModelConfig, cfg: LoraConfig): Footprint {
  const modules = linearModules(c);
  const chosen = selectTargets(modules, cfg.target_modules, cfg.exclude_modules, cfg.layers_to_transform);
  const layers = chosen.map((m) => ({ m, r: moduleRank(cfg, m.name).r, dora: cfg.use_dora }));
  // Trained biases: the base's, of the adapted modules ('lora_only') or of every module ('all').
  const adapted = new Set(chosen.map((m) => m.name));
  const hasBias = (name: string) => (/(q|k|v)_proj$/.test(name) ? c.qkvBias : /o_proj$/.test(name) ? c.oBias : /_proj$/.test(name) && c.mlpBias);
  const extras = cfg.bias === 'none' ? [] : modules.filter((m) => hasBias(m.name) && (cfg.bias === 'all' || adapted.has(m.name))).map((m) => m.outFeatures);
  for (const saved of cfg.modules_to_save ?? []) if (/(embed_tokens|lm_head)$/.test(saved)) extras.push(c.vocabSize * c.hiddenSize);
  return loraFootprint(layers, extras, cfg.lora_dropout);
}

/** A LoRA folder's layers, from its tensors (LoraAdapter.load goes by them, not by target_modules). */
function loadedLoraFootprint(c: ModelConfig, dir: string, cfg: LoraConfig): Footprint {
  const ck = new SafetensorsCheckpoint(dir, 'adapter_model.safetensors');
  const byName = new Map(linearModules(c).map((m) => [m.name, m]));
  const layers = new Map<string, LoraShape>();
  const extras: number[] = [];
  for (const [name, info] of ck.tensors) {
    const lora = /^base_model\.model\.(.+)\.lora_(A|B|magnitude_vector)(?:\.[^.]+)?(?:\.weight)?$/.exec(name);
    const m = lora ? byName.get(lora[1]) : undefined;
    if (!lora || !m) {
      extras.push(info.shape.reduce((a, b) => a * b, 1));
      continue;
    }
    const layer = layers.get(m.name) ?? { m, r: 0, dora: false };
    if (lora[2] === 'A') layer.r = info.shape[0] ?? 0;
    if (lora[2] === 'magnitude_vector') layer.dora = true;
    layers.set(m.name, layer);
  }
  return loraFootprint([...layers.values()], extras, cfg.lora_dropout);
}

/** The adapter's config: the folder's when the run continues one, else the new adapter's. */
function adapterConfig(s: RunShape): AdapterConfigs[AdapterMethod] {
  const { method, config: c, adapterDir: dir } = s;
  if (!dir || method === 'full') return newAdapterConfig(method, c, s.create);
  const raw = readAdapterConfigJson(dir);
  const file = path.join(dir, 'adapter_config.json');
  switch (method) {
    case 'lora': case 'dora': return parseLoraConfig(raw, file);
    case 'ia3': return parseIa3Config(raw, file);
    case 'ln': return parseLnTuningConfig(raw, file);
    case 'bitfit': return parseBitFitConfig(raw, file);
    case 'diff': return parseDiffConfig(raw, file);
    case 'adapter': return parseBottleneckConfig(raw, file);
    case 'prompt': return parsePromptTuningConfig(raw, file, c);
    case 'p-tuning': return parsePTuningConfig(raw, file, c);
    case 'prefix': return parsePrefixTuningConfig(raw, file, c);
  }
}

/**
 * The run's footprint: the new adapter's, or the folder's it continues (whose errors name its
 * adapter_config.json, as loading it would).
 */
function footprintOf(s: RunShape): Footprint {
  if (!s.adapterDir || s.method === 'full') return adapterFootprint(s.method, s.config, adapterConfig(s));
  const file = path.join(s.adapterDir, 'adapter_config.json');
  try {
    const cfg = adapterConfig(s);
    return s.method === 'lora' || s.method === 'dora' ? loadedLoraFootprint(s.config, s.adapterDir, cfg as LoraConfig) : adapterFootprint(s.method, s.config, cfg);
  } catch (e) {
    if (e instanceof PeftkitError && !e.message.includes(s.adapterDir)) throw new PeftkitError(e.code, `${file}: ${e.message}`);
    throw e;
  }
}

/** What the method trains and keeps, from its config (the shapes its create / load allocate). */
export function adapterFootprint(method: AdapterMethod, c: ModelConfig, config: AdapterConfigs[AdapterMethod]): Footprint {
  const f = none();
  switch (method) {
    case 'lora':
    case 'dora':
      return newLoraFootprint(c, config as LoraConfig);
    case 'ia3': {
      const t = Ia3Adapter.targets(config as Ia3Config, linearModules(c));
      for (const [m, ff] of t) {
        f.tensors.push(ff ? m.inFeatures : m.outFeatures);
        if (!ff) f.keptPerRow += m.outFeatures; // the unscaled output
      }
      f.scratchPerRow = max(t.map(([m, ff]) => (ff ? m.inFeatures : m.outFeatures)));
      return f;
    }
    case 'ln':
      for (const _ of LnTuningAdapter.targets(config as LnTuningConfig, c)) f.tensors.push(c.hiddenSize);
      return f;
    case 'bitfit':
      for (const m of BitFitAdapter.targets(config as BitFitConfig, c)) f.tensors.push(m.outFeatures);
      return f;
    case 'diff':
      for (const m of DiffAdapter.targets(config as DiffConfig, c)) f.tensors.push(m.outFeatures * m.inFeatures);
      f.fixed = max(f.tensors); // W + δ, formed in the call's scratch (a dense f32 base)
      f.hostBytes = sum(f.tensors); // a byte of mask per entry, once pruned
      return f;
    case 'adapter': {
      const { sites, b } = BottleneckAdapter.placement(config as BottleneckConfig, c);
      for (const _ of sites) f.tensors.push(b * c.hiddenSize, b, c.hiddenSize * b, c.hiddenSize);
      f.keptPerRow = sites.length * (c.hiddenSize + 2 * b); // its input, pre-activation and activation
      f.scratchPerRow = 2 * b;
      return f;
    }
    case 'prompt':
      f.virtualTokens = (config as PromptTuningConfig).num_virtual_tokens;
      f.tensors.push(f.virtualTokens * c.hiddenSize);
      return f;
    case 'p-tuning': {
      const cfg = config as PTuningConfig;
      const n = cfg.num_virtual_tokens;
      for (const shape of encoderShapes(cfg).values()) f.tensors.push(shape.reduce((a, b) => a * b, 1));
      // The virtual tokens and their gradient; the MLP's hidden activations; an LSTM's output and its gradient.
      f.fixed = 2 * n * c.hiddenSize + 2 * n * sum(headWidths(cfg).slice(1, -1)) + (cfg.encoder_reparameterization_type === 'LSTM' ? 4 * n * cfg.encoder_hidden_size : 0);
      f.virtualTokens = n;
      return f;
    }
    case 'prefix': {
      const cfg = config as PrefixTuningConfig;
      const n = cfg.num_virtual_tokens, kvd = cfg.token_dim, W = cfg.num_layers * 2 * kvd, h = cfg.encoder_hidden_size;
      if (cfg.prefix_projection) {
        f.tensors.push(n * kvd, h * kvd, h, W * h, W);
        f.fixed = 2 * n * W + 2 * n * h; // the table and its gradient, the MLP's hidden rows
      } else {
        f.tensors.push(n * W);
      }
      f.fixed += 4 * cfg.num_layers * n * kvd; // per-layer keys, values and their gradients
      f.prefixRows = n;
      return f;
    }
    case 'full': {
      const re = trainableRegExp((config as FullConfig).trainable);
      for (const [name, shape] of expectedWeights(c)) if (!re || re.test(name)) f.tensors.push(shape.reduce((a, b) => a * b, 1));
      return f;
    }
  }
}

/** Bytes of the frozen weights as loadWeights keeps them, and a word on how. */
function weightBytes(s: RunShape): { bytes: number; what: string } {
  const { o, config: c } = s;
  const ck = new SafetensorsCheckpoint(o.model);
  const dtype = o.bf16 && s.method !== 'full' ? 'bf16' : 'f32';
  let bytes = 0;
  let format: string | null = null;
  const dense = new Set<string>();
  for (const [name, shape] of expectedWeights(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const prefix = name.replace(/\.weight$/, '');
    const stored = isMatmulWeight(name) ? detectQuantFormat(ck, prefix) : null;
    const quant = isLayerLinearWeight(name) ? stored ?? o.quantize ?? null : null;
    if (quant === 'int8') {
      bytes += n + 4 * shape[0]; // codes, one f32 scale a row
    } else if (quant) {
      const blocksize = stored ? readQuant4Meta(ck, prefix).blocksize : 64;
      bytes += Math.ceil(n / 2) + 4 * Math.ceil(n / blocksize); // codes, f32 block scales (double quantization recovered at load)
    } else {
      const kept = denseDtype(name, ck.has(name) ? ck.info(name).dtype : 'F32', dtype);
      dense.add(kept);
      bytes += n * (kept === 'bf16' ? 2 : 4);
    }
    if (quant) format = quant;
  }
  const rest = dense.has('bf16') ? `bf16${dense.has('f32') ? ' (norms f32)' : ''}` : 'f32';
  return { bytes, what: format ? `decoder Linear weights ${format}${format === 'int8' ? ' (f32 row scales)' : ' (f32 block scales)'}, the rest ${rest}` : `${rest}` };
}

/** Optimizer state bytes of one tensor: f32 m and v, or 8-bit codes with f32 block maxima. */
function stateBytes(n: number, optim: ResolvedTrainOptions['optim']): number {
  if (optim.endsWith('8bit') && n >= MIN_8BIT_SIZE) return 2 * n + 2 * 4 * Math.ceil(n / ADAMW8BIT_BLOCK);
  return 8 * n;
}

/** Floats of LlamaForward's buffers for `rows` rows of `T` positions (llama_forward.ts's constructor). */
function forwardFloats(c: ModelConfig, rows: number, T: number, checkpointing: boolean): number {
  const C = c.hiddenSize, F = c.intermediateSize, QD = c.numHeads * c.headDim, KD = c.numKvHeads * c.headDim;
  const perLayer = rows * (3 * C + 2 * QD + 2 * KD + 3 * F + 2 + c.numHeads); // h1 x2 h2, q att, k v, g u act, rstd1 rstd2, lse
  const residual = (c.numLayers + 1) * rows * C;
  const grads = rows * (2 * C + 2 * QD + 2 * KD + 3 * F);
  const rest = rows * (2 * C + 4) + T + T * c.headDim; // hf dx, rstdf losses ids targets, positions, cos sin
  return residual + (checkpointing ? 1 : c.numLayers) * perLayer + grads + rest;
}

const MiB = (b: number) => `${(b / 2 ** 20).toFixed(b < 10 * 2 ** 20 ? 1 : 0)} MiB`;

/** The estimate of a run whose shape is known (runTraining calls it once its data is read). */
export function estimateRun(s: RunShape): MemoryEstimate {
  const { o, config: c } = s;
  const f = footprintOf(s);
  const T = s.seqLength + f.virtualTokens;
  const rows = o.batchSize * T;
  const full = s.method === 'full';
  const params = sum(f.tensors);
  const w = weightBytes(s);
  const paged = o.optim.startsWith('paged_');
  const optimizer = sum(f.tensors.map((n) => stateBytes(n, o.optim)));
  const KVD = c.numKvHeads * c.headDim;
  // Prefix tuning: each layer's keys and values with the prefix rows before them, and two scratch copies for the backward.
  const prefixFloats = f.prefixRows ? (c.numLayers + 1) * 2 * o.batchSize * (f.prefixRows + T) * KVD : 0;
  const activations = 4 * (forwardFloats(c, rows, T, o.activationCheckpointing) + rows * f.keptPerRow + prefixFloats);
  const lossChunk = 4 * Math.min(rows, Math.max(1, Math.floor(LOSS_CHUNK_FLOATS / c.vocabSize))) * c.vocabSize;
  const scratch = lossChunk + 4 * (rows * f.scratchPerRow + f.fixed) + s.threads * THREAD_SCRATCH_BYTES;
  const tokenizer = path.join(o.model, 'tokenizer.json');
  const tokenizerBytes = fs.existsSync(tokenizer) ? TOKENIZER_BYTES_PER_FILE_BYTE * fs.statSync(tokenizer).size : 0;
  const data = DATA_BYTES_PER_TOKEN * s.dataTokens + tokenizerBytes + f.hostBytes;
  const parts: MemoryEstimate['parts'] = [
    { part: 'runtime', bytes: PROCESS_BYTES + WORKER_BYTES, what: 'Node, the addon and the training worker' },
    { part: 'weights', bytes: w.bytes, what: w.what + (full ? ' (the trained parameters themselves)' : '') },
    { part: 'parameters', bytes: full ? 0 : 4 * params, what: `${params.toLocaleString('en-US')} trainable, f32${full ? ': the weights above' : ''}` },
    { part: 'gradients', bytes: 4 * params, what: 'f32, one per parameter' },
    { part: 'optimizer', bytes: optimizer, what: `${o.optim}: ${o.optim.includes('8bit') ? '8-bit moments (f32 for tensors under 4096 elements)' : 'f32 moments'}${paged ? ', in a file the OS pages in and out' : ''}` },
    {
      part: 'activations', bytes: activations,
      what: `batch ${o.batchSize} × ${T} tokens${f.virtualTokens ? ` (${f.virtualTokens} virtual)` : ''}, ${o.activationCheckpointing ? 'one layer\'s kept (activation checkpointing)' : `all ${c.numLayers} layers kept`}`,
    },
    { part: 'scratch', bytes: scratch, what: `the loss's logits chunk (${MiB(lossChunk)}), GEMM buffers of ${s.threads} thread${s.threads > 1 ? 's' : ''}` },
    // saveCheckpoint copies the parameters, then the optimizer states, to host buffers to write
    // them, while the activations are still held; the first copies are collected before the
    // second are complete (measured: full fine-tuning of SmolLM2-135M peaks at the larger one).
    { part: 'checkpoint', bytes: Math.max(4 * params, optimizer), what: 'host copies of the parameters or the optimizer states while a checkpoint is written' },
    { part: 'data', bytes: data, what: `${s.dataTokens.toLocaleString('en-US')} tokenized tokens${tokenizerBytes ? ', the tokenizer' : ''}` },
  ];
  const total = sum(parts.map((p) => p.bytes));
  return { total, required: total - (paged ? optimizer : 0), parts, trainableParams: params, seqLength: T, batchSize: o.batchSize };
}

/** The memory this process may still use: MemAvailable (Linux), within any cgroup limit; os.freemem() elsewhere. */
export function availableMemory(): { bytes: number; source: string } {
  let best = { bytes: os.freemem(), source: 'os.freemem()' };
  try {
    const m = /^MemAvailable:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    if (m) best = { bytes: Number(m[1]) * 1024, source: 'MemAvailable in /proc/meminfo' };
  } catch {
    return best; // not Linux
  }
  // cgroup v2: this process's group and every group above it may cap memory below what the machine has free.
  try {
    const rel = /^0::(.*)$/m.exec(fs.readFileSync('/proc/self/cgroup', 'utf8'))?.[1];
    for (let dir = rel === undefined ? null : path.join('/sys/fs/cgroup', rel); dir && dir.startsWith('/sys/fs/cgroup'); dir = dir === '/sys/fs/cgroup' ? null : path.dirname(dir)) {
      const read = (f: string) => fs.readFileSync(path.join(dir!, f), 'utf8').trim();
      let limit: string;
      try {
        limit = read('memory.max');
      } catch {
        continue;
      }
      if (limit === 'max') continue;
      const left = Number(limit) - Number(read('memory.current'));
      if (Number.isFinite(left) && left < best.bytes) best = { bytes: Math.max(0, left), source: `the memory cgroup ${dir} (memory.max − memory.current)` };
    }
  } catch {
    // no cgroup v2 here
  }
  return best;
}

export const GiB = (b: number) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : MiB(b));

/** What to change for the largest parts of a run that does not fit, in the options' names. */
function remedies(e: MemoryEstimate, o: ResolvedTrainOptions, method: AdapterMethod): string[] {
  const out: string[] = [];
  for (const p of [...e.parts].sort((a, b) => b.bytes - a.bytes)) {
    if (p.part === 'activations') {
      out.push(`lower 'batchSize' (now ${o.batchSize}) or 'maxLength' (now ${o.maxLength}; the longest row needs ${e.seqLength})`);
      if (!o.activationCheckpointing) out.push('turn on activationCheckpointing');
    } else if (p.part === 'weights' && !o.quantize && method !== 'full') {
      out.push(`use a quantized base ('quantize' nf4, or 'method' qlora)${o.bf16 ? '' : ' or bf16'}`);
    } else if (p.part === 'optimizer' && !o.optim.includes('8bit')) {
      out.push(`use 'optim' adamw8bit (or paged_adamw8bit)`);
    } else if ((p.part === 'parameters' || p.part === 'gradients') && (method === 'lora' || method === 'dora')) {
      out.push(`lower 'r' (now ${o.r})`);
    }
    if (out.length >= 3) break;
  }
  return [...new Set(out)];
}

/** Bytes the run adds to this process (it is already running: its share of the runtime is not new memory). */
export const newMemory = (e: MemoryEstimate) => e.required - PROCESS_BYTES;

/**
 * Refuses (E_MEMORY) a run whose estimate does not fit in the memory available, with the
 * figures and what to lower. `available` is for tests; it defaults to availableMemory().
 * `ranksHere`: the data-parallel ranks started on this machine, each holding what `e` counts.
 */
export function checkMemory(e: MemoryEstimate, o: ResolvedTrainOptions, method: AdapterMethod, available = availableMemory(), ranksHere = 1): void {
  // Data-parallel ranks on this machine each hold a copy, and each checks before the others allocate.
  const needed = newMemory(e) * ranksHere;
  if (needed <= available.bytes) return;
  const big = [...e.parts].filter((p) => p.part !== 'runtime').sort((a, b) => b.bytes - a.bytes).slice(0, 3).map((p) => `${p.part} ${GiB(p.bytes)}`);
  const ranks = ranksHere > 1 ? ` for its ${ranksHere} ranks on this machine` : '';
  throw new PeftkitError('E_MEMORY', `this run needs about ${GiB(needed)} more memory${ranks} (${ranks ? 'each: ' : ''}${big.join(', ')}; estimateMemory has the rest) but ${GiB(available.bytes)} is available (${available.source}): ` +
    `${remedies(e, o, method).join('; ')}; or pass memoryCheck: false to start it anyway`);
}
