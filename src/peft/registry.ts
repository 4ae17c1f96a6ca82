/**
 * The methods by name: `peftkit train --method NAME` creates one, and an adapter folder's
 * adapter_config.json (its peft_type, and use_dora for DoRA) picks the one that loads it. A new
 * method is a folder under src/peft/ and one entry here.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';
import type { ModelConfig } from '../model/config';
import type { LlamaModel } from '../model/llama';
import { linearModules } from '../model/weights';
import type { Device } from '../tensor';
import { BitFitAdapter, BitFitConfig, defaultBitFitConfig } from './bitfit/adapter';
import { BottleneckAdapter, BottleneckConfig, defaultBottleneckConfig } from './bottleneck/adapter';
import { defaultDiffConfig, DiffAdapter, DiffConfig } from './diff/adapter';
import { FullConfig, FullFineTune } from './full/adapter';
import { defaultPrefixTuningConfig, PrefixTuningAdapter, PrefixTuningConfig } from './prefix/adapter';
import { defaultPromptTuningConfig, PromptTuningAdapter, PromptTuningConfig } from './prompt/adapter';
import { defaultPTuningConfig, PTuningAdapter, PTuningConfig } from './p_tuning/adapter';
import { defaultIa3Config, Ia3Adapter, Ia3Config } from './ia3/adapter';
import { defaultLnTuningConfig, LnTuningAdapter, LnTuningConfig } from './ln_tuning/adapter';
import { defaultLoraConfig, LoraAdapter, LoraConfig } from './lora';
import { PeftMethod, readAdapterConfigJson } from './method';

/** The adapter methods `train()` can create (`qlora` / `int8-lora` are LoRA on a quantized base). */
export type AdapterMethod = 'lora' | 'dora' | 'ia3' | 'ln' | 'bitfit' | 'diff' | 'adapter' | 'prompt' | 'p-tuning' | 'prefix' | 'full';
export const ADAPTER_METHODS: readonly AdapterMethod[] = ['lora', 'dora', 'ia3', 'ln', 'bitfit', 'diff', 'adapter', 'prompt', 'p-tuning', 'prefix', 'full'];

/** What a new adapter is made from: the LoRA settings, and the targets of any method. */
export interface CreateAdapterOptions {
  /** Modules (or norms, for `ln`) to adapt. Defaults to each method's PEFT default. */
  targets?: string[] | 'all-linear';
  /** LoRA / DoRA settings (r, lora_alpha, lora_dropout, use_rslora, init_lora_weights). */
  lora?: Partial<LoraConfig>;
  /** IA3: the targets whose input is scaled. Defaults to `['down_proj']`. */
  feedforwardModules?: string[];
  /** Full fine-tuning: a regular expression naming the weights that train. Defaults to every weight. */
  trainable?: string;
  /** Diff pruning: the fraction of each δ kept (density) and the step after which it is pruned. Defaults to 0.005 and 0. */
  diff?: { density?: number; pruneStep?: number };
  /** Bottleneck adapters: where (houlsby, pfeiffer) and hidden / bottleneck size. Defaults to houlsby, 16. */
  bottleneck?: { type?: 'houlsby' | 'pfeiffer'; reductionFactor?: number };
  /** Prompt tuning: virtual tokens; prefix tuning: rows per layer. Defaults to `20`. */
  numVirtualTokens?: number;
  /** Prompt tuning: how the virtual tokens start, and for 'TEXT' the init text's token ids (encoded by the caller). Defaults to RANDOM. */
  promptInit?: { kind: 'RANDOM' | 'TEXT' | 'SAMPLE_VOCAB'; text?: string; ids?: readonly number[] };
  /** P-tuning, prefix_projection: the encoder MLP's hidden width (P-tuning's LSTM: each direction's). Defaults to the model's hidden size (P-tuning), kv width (prefix). */
  encoderHiddenSize?: number;
  /** P-tuning's encoder: 'mlp' or 'lstm' (PEFT's encoder_reparameterization_type MLP, LSTM). Defaults to `'mlp'`. */
  encoder?: 'mlp' | 'lstm';
  /** Prefix tuning through a projection MLP (PEFT's prefix_projection). Defaults to `false`. */
  prefixProjection?: boolean;
  /** Recorded in adapter_config.json. */
  baseModel?: string | null;
  seed?: number;
}

/** The config of each method, by name: what a new adapter of it is made from. */
export interface AdapterConfigs {
  lora: LoraConfig; dora: LoraConfig; ia3: Ia3Config; ln: LnTuningConfig; bitfit: BitFitConfig; diff: DiffConfig; adapter: BottleneckConfig;
  prompt: PromptTuningConfig; 'p-tuning': PTuningConfig; prefix: PrefixTuningConfig; full: FullConfig;
}

/**
 * The config a new adapter of `method` gets from `o` (PEFT's defaults for what `o` leaves out):
 * what createAdapter builds it from, and what the memory estimate reads its shapes from.
 */
export function newAdapterConfig<M extends AdapterMethod>(method: M, c: ModelConfig, o?: CreateAdapterOptions): AdapterConfigs[M];
export function newAdapterConfig(method: AdapterMethod, c: ModelConfig, o: CreateAdapterOptions = {}): AdapterConfigs[AdapterMethod] {
  const base = { base_model_name_or_path: o.baseModel ?? null };
  const targets = o.targets === 'all-linear' ? undefined : o.targets;
  switch (method) {
    case 'lora':
    case 'dora':
      return defaultLoraConfig({ ...o.lora, ...(o.targets ? { target_modules: o.targets } : {}), use_dora: method === 'dora', ...base });
    case 'ia3':
      return defaultIa3Config({ ...(targets ? { target_modules: targets } : {}), ...(o.feedforwardModules ? { feedforward_modules: o.feedforwardModules } : {}), ...base });
    case 'ln':
      return defaultLnTuningConfig({ ...(targets ? { target_modules: targets } : {}), ...base });
    case 'bitfit':
      return defaultBitFitConfig({ ...(o.targets ? { target_modules: o.targets } : {}), ...base });
    case 'diff':
      return defaultDiffConfig({
        ...(targets ? { target_modules: targets } : {}), ...(o.diff?.density !== undefined ? { density: o.diff.density } : {}),
        ...(o.diff?.pruneStep !== undefined ? { prune_step: o.diff.pruneStep } : {}), ...base,
      });
    case 'adapter':
      return defaultBottleneckConfig({
        ...(o.bottleneck?.type ? { adapter_type: o.bottleneck.type } : {}),
        ...(o.bottleneck?.reductionFactor !== undefined ? { reduction_factor: o.bottleneck.reductionFactor } : {}), ...base,
      });
    case 'prompt':
      return defaultPromptTuningConfig(c, {
        ...(o.numVirtualTokens !== undefined ? { num_virtual_tokens: o.numVirtualTokens } : {}),
        ...(o.promptInit ? { prompt_tuning_init: o.promptInit.kind, prompt_tuning_init_text: o.promptInit.text ?? null } : {}), ...base,
      });
    case 'p-tuning':
      if (o.encoder !== undefined && o.encoder !== 'mlp' && o.encoder !== 'lstm') throw new PeftkitError('E_ARG', `encoder: expected mlp or lstm, got '${String(o.encoder)}'`);
      return defaultPTuningConfig(c, {
        ...(o.numVirtualTokens !== undefined ? { num_virtual_tokens: o.numVirtualTokens } : {}),
        ...(o.encoderHiddenSize !== undefined ? { encoder_hidden_size: o.encoderHiddenSize } : {}),
        ...(o.encoder ? { encoder_reparameterization_type: o.encoder === 'lstm' ? 'LSTM' : 'MLP' } : {}), ...base,
      });
    case 'prefix':
      return defaultPrefixTuningConfig(c, {
        ...(o.numVirtualTokens !== undefined ? { num_virtual_tokens: o.numVirtualTokens } : {}),
        ...(o.prefixProjection ? { prefix_projection: true } : {}),
        ...(o.encoderHiddenSize !== undefined ? { encoder_hidden_size: o.encoderHiddenSize } : {}), ...base,
      });
    case 'full':
      return { peft_type: 'FULL', trainable: o.trainable ?? null };
    default:
      throw new PeftkitError('E_ARG', `method: expected one of ${ADAPTER_METHODS.join(', ')}, got '${String(method)}'`);
  }
}

export function createAdapter(method: AdapterMethod, model: LlamaModel, o: CreateAdapterOptions = {}): PeftMethod {
  const c = model.config;
  const device = model.device;
  switch (method) {
    case 'lora':
    case 'dora':
      return LoraAdapter.create(model.linearModules, newAdapterConfig(method, c, o), { seed: o.seed, device, model });
    case 'ia3':
      return Ia3Adapter.create(c, newAdapterConfig(method, c, o), { device });
    case 'ln':
      return LnTuningAdapter.create(model, newAdapterConfig(method, c, o));
    case 'bitfit':
      return BitFitAdapter.create(model, newAdapterConfig(method, c, o));
    case 'diff':
      return DiffAdapter.create(c, newAdapterConfig(method, c, o), { device });
    case 'adapter':
      return BottleneckAdapter.create(c, newAdapterConfig(method, c, o), { seed: o.seed, device });
    case 'prompt':
      return PromptTuningAdapter.create(model, newAdapterConfig(method, c, o), { seed: o.seed, initIds: o.promptInit?.ids });
    case 'p-tuning':
      return PTuningAdapter.create(c, newAdapterConfig(method, c, o), { seed: o.seed, device });
    case 'prefix':
      return PrefixTuningAdapter.create(newAdapterConfig(method, c, o), { seed: o.seed, device });
    case 'full':
      return new FullFineTune(model, newAdapterConfig(method, c, o));
    default:
      throw new PeftkitError('E_ARG', `method: expected one of ${ADAPTER_METHODS.join(', ')}, got '${String(method)}'`);
  }
}

type Loader = (dir: string, config: ModelConfig, opts: { device?: Device }) => PeftMethod;

/** Each adapter folder peftkit reads, by its peft_type: the method and its loader. */
const FOLDERS: Record<string, { method: AdapterMethod; load: Loader }> = {
  LORA: { method: 'lora', load: (dir, c, o) => LoraAdapter.load(dir, linearModules(c), o) },
  IA3: { method: 'ia3', load: (dir, c, o) => Ia3Adapter.load(dir, c, o) },
  LN_TUNING: { method: 'ln', load: (dir, c, o) => LnTuningAdapter.load(dir, c, o) },
  PROMPT_TUNING: { method: 'prompt', load: (dir, c, o) => PromptTuningAdapter.load(dir, c, o) },
  P_TUNING: { method: 'p-tuning', load: (dir, c, o) => PTuningAdapter.load(dir, c, o) },
  PREFIX_TUNING: { method: 'prefix', load: (dir, c, o) => PrefixTuningAdapter.load(dir, c, o) },
  BITFIT: { method: 'bitfit', load: (dir, c, o) => BitFitAdapter.load(dir, c, o) },
  DIFF: { method: 'diff', load: (dir, c, o) => DiffAdapter.load(dir, c, o) },
  BOTTLENECK: { method: 'adapter', load: (dir, c, o) => BottleneckAdapter.load(dir, c, o) },
};

/** The entry of an adapter folder's peft_type, or an error naming adapter_config.json. */
function folderEntry(dir: string): { method: AdapterMethod; load: Loader } {
  const raw = readAdapterConfigJson(dir);
  const file = path.join(dir, 'adapter_config.json');
  const type = raw.peft_type;
  if (typeof type === 'string' && Object.prototype.hasOwnProperty.call(FOLDERS, type)) {
    const entry = FOLDERS[type];
    // DoRA is LoRA with use_dora: one loader, its own method name.
    return type === 'LORA' && raw.use_dora === true ? { ...entry, method: 'dora' } : entry;
  }
  const types = Object.keys(FOLDERS);
  if (typeof type === 'string') {
    throw new PeftkitError('E_UNSUPPORTED', `${file}: "peft_type" = ${JSON.stringify(type)} is not supported by peftkit (it reads ${types.slice(0, -1).join(', ')} and ${types[types.length - 1]} adapters)`);
  }
  throw new PeftkitError('E_CONFIG', `${file}: "peft_type" is ${JSON.stringify(type)}, expected ${types.slice(0, -1).map((t) => `"${t}"`).join(', ')} or "${types[types.length - 1]}"`);
}

/**
 * The method an adapter folder holds, from its adapter_config.json; a model folder (config.json,
 * no adapter_config.json: what full fine-tuning writes) is 'full'.
 */
export function adapterMethodOf(dir: string): AdapterMethod {
  return isModelFolder(dir) ? 'full' : folderEntry(dir).method;
}

const isModelFolder = (dir: string) => !fs.existsSync(path.join(dir, 'adapter_config.json')) && fs.existsSync(path.join(dir, 'config.json'));

/** Loads any adapter folder peftkit reads, for a model of this config. */
export function loadAdapter(dir: string, config: ModelConfig, opts: { device?: Device } = {}): PeftMethod {
  if (isModelFolder(dir)) throw new PeftkitError('E_ARG', `${dir}: is a model folder (full fine-tuning's output), not an adapter: load it as the model`);
  return folderEntry(dir).load(dir, config, opts);
}
