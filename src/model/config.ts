/**
 * config.json of a Hugging Face causal LM, read into one normalized shape. Supported:
 * LlamaForCausalLM (Llama 2/3.x with llama3 rope scaling, TinyLlama, SmolLM/SmolLM2),
 * MistralForCausalLM (without sliding window), Qwen2ForCausalLM (q/k/v biases).
 */
import * as path from 'path';
import { PeftkitError } from '../errors';
import { readRegularFile } from '../io/regular_file';

export type Architecture = 'LlamaForCausalLM' | 'MistralForCausalLM' | 'Qwen2ForCausalLM';
export const SUPPORTED_ARCHITECTURES: readonly Architecture[] = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'];

export interface RopeScalingConfig {
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface ModelConfig {
  architecture: Architecture;
  /** model_type as written (llama, mistral, qwen2). */
  modelType: string;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** llama3 rope scaling, or null. */
  ropeScaling: RopeScalingConfig | null;
  tieWordEmbeddings: boolean;
  /** q/k/v projections have biases (Qwen2 always; Llama when attention_bias). */
  qkvBias: boolean;
  /** o_proj has a bias (Llama with attention_bias). */
  oBias: boolean;
  /** gate/up/down have biases (Llama with mlp_bias). */
  mlpBias: boolean;
  maxPositionEmbeddings: number;
  /** Mistral/Qwen2 sliding window when it is in effect, else null (then training longer than it is refused). */
  slidingWindow: number | null;
  /** The dtype the weights were saved in (torch_dtype, or dtype as transformers 5 writes it), informational. */
  torchDtype: string | null;
  bosTokenId: number | null;
  eosTokenId: number | number[] | null;
}

type Json = Record<string, unknown>;

/** What a field must be: a positive integer, true/false, or a number the engine computes with in f32. */
type FieldKind = 'int' | 'bool' | 'positive' | 'nonneg';

/** The largest finite f32: a float field beyond it would reach the kernels as Infinity. */
const F32_MAX = 3.4028234663852886e38;

const EXPECTED: Record<FieldKind, string> = {
  int: 'a positive integer',
  bool: 'true or false',
  positive: 'a finite number > 0',
  nonneg: 'a finite number >= 0',
};

function fieldOk(v: unknown, kind: FieldKind): boolean {
  switch (kind) {
    case 'bool':
      return typeof v === 'boolean';
    case 'int':
      return Number.isSafeInteger(v) && (v as number) > 0;
    case 'positive':
      return typeof v === 'number' && v > 0 && v <= F32_MAX;
    case 'nonneg':
      return typeof v === 'number' && v >= 0 && v <= F32_MAX;
  }
}

function field<T>(file: string, cfg: Json, key: string, kind: FieldKind, dflt?: T, where = ''): T {
  const v = cfg[key];
  if (v === undefined || v === null) {
    if (dflt !== undefined) return dflt;
    throw new PeftkitError('E_CONFIG', `${file}: field "${where}${key}" is missing (expected ${EXPECTED[kind]})`);
  }
  if (!fieldOk(v, kind)) throw new PeftkitError('E_CONFIG', `${file}: field "${where}${key}" is ${JSON.stringify(v)}, expected ${EXPECTED[kind]}`);
  return v as T;
}

/** Parses an already-loaded config object; `file` names it in errors. */
export function parseModelConfig(cfg: Json, file = 'config.json'): ModelConfig {
  if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) throw new PeftkitError('E_CONFIG', `${file}: not a JSON object`);
  const archs = cfg.architectures;
  const arch = Array.isArray(archs) ? (archs[0] as string) : undefined;
  if (!arch || !SUPPORTED_ARCHITECTURES.includes(arch as Architecture)) {
    throw new PeftkitError(
      'E_UNSUPPORTED',
      `${file}: architecture ${JSON.stringify(arch ?? archs ?? null)} is not supported; supported: ${SUPPORTED_ARCHITECTURES.join(', ')}`,
    );
  }
  const architecture = arch as Architecture;
  const hiddenSize = field<number>(file, cfg, 'hidden_size', 'int');
  const numHeads = field<number>(file, cfg, 'num_attention_heads', 'int');
  const numKvHeads = field<number>(file, cfg, 'num_key_value_heads', 'int', numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new PeftkitError('E_CONFIG', `${file}: num_attention_heads (${numHeads}) is not a multiple of num_key_value_heads (${numKvHeads})`);
  }
  const headDim = field<number>(file, cfg, 'head_dim', 'int', Math.floor(hiddenSize / numHeads));
  if (headDim % 2 !== 0) throw new PeftkitError('E_CONFIG', `${file}: head_dim ${headDim} must be even for rotary embeddings`);
  const act = cfg.hidden_act ?? 'silu';
  if (act !== 'silu') throw new PeftkitError('E_UNSUPPORTED', `${file}: hidden_act "${String(act)}" is not supported (expected "silu")`);

  // transformers 5 writes every RoPE setting under "rope_parameters" (rope_theta and rope_type
  // included) and neither "rope_theta" nor "rope_scaling": read there first, or the theta would
  // silently fall back to the default.
  const rp = cfg.rope_parameters;
  const ropeKey = rp !== undefined && rp !== null ? 'rope_parameters' : 'rope_scaling';
  const rs = cfg[ropeKey];
  if (rs !== undefined && rs !== null && (typeof rs !== 'object' || Array.isArray(rs))) {
    throw new PeftkitError('E_CONFIG', `${file}: field "${ropeKey}" is ${JSON.stringify(rs)}, expected an object such as {"rope_type": "llama3", ...} or null`);
  }
  const rope = (rs ?? null) as Json | null;
  const ropeTheta = rope !== null && ropeKey === 'rope_parameters' && rope.rope_theta !== undefined && rope.rope_theta !== null
    ? field<number>(file, rope, 'rope_theta', 'positive', undefined, `${ropeKey}.`)
    : field<number>(file, cfg, 'rope_theta', 'positive', 10000);
  let ropeScaling: RopeScalingConfig | null = null;
  if (rope !== null) {
    const r = rope;
    const at = `${ropeKey}.`;
    const type = r.rope_type ?? r.type ?? (ropeKey === 'rope_parameters' ? 'default' : undefined);
    const partial = r.partial_rotary_factor;
    if (partial !== undefined && partial !== null && partial !== 1) {
      throw new PeftkitError('E_UNSUPPORTED', `${file}: field "${at}partial_rotary_factor" is ${JSON.stringify(partial)}; only 1 (RoPE over the whole head) is supported`);
    }
    if (ropeKey === 'rope_parameters' && r.rope_type === undefined && r.rope_theta === undefined && Object.values(r).some((v) => typeof v === 'object' && v !== null)) {
      throw new PeftkitError('E_UNSUPPORTED', `${file}: field "rope_parameters" holds one set per layer type (${Object.keys(r).join(', ')}); only one RoPE for every layer is supported`);
    }
    if (type === 'default') ropeScaling = null;
    else if (type === 'llama3') {
      ropeScaling = {
        factor: field<number>(file, r, 'factor', 'positive', undefined, at),
        lowFreqFactor: field<number>(file, r, 'low_freq_factor', 'positive', 1, at),
        highFreqFactor: field<number>(file, r, 'high_freq_factor', 'positive', 4, at),
        originalMaxPositionEmbeddings: field<number>(file, r, 'original_max_position_embeddings', 'int', 8192, at),
      };
      // llama3 scaling blends between the two wavelengths: divides by their difference.
      if (!(ropeScaling.lowFreqFactor < ropeScaling.highFreqFactor)) {
        throw new PeftkitError(
          'E_CONFIG',
          `${file}: field "${at}low_freq_factor" is ${ropeScaling.lowFreqFactor}, expected it below "${at}high_freq_factor" (${ropeScaling.highFreqFactor})`,
        );
      }
    } else {
      throw new PeftkitError('E_UNSUPPORTED', `${file}: ${ropeKey} type ${JSON.stringify(type)} is not supported (supported: llama3, default)`);
    }
  }

  // Weights quantized another way (GPTQ, AWQ...) are stored under other tensor names: say so, rather than "tensor missing".
  const qc = cfg.quantization_config;
  if (qc !== undefined && qc !== null) {
    if (typeof qc !== 'object' || Array.isArray(qc)) {
      throw new PeftkitError('E_CONFIG', `${file}: field "quantization_config" is ${JSON.stringify(qc)}, expected an object (bitsandbytes' BitsAndBytesConfig)`);
    }
    const method = (qc as Json).quant_method;
    if (method !== undefined && method !== 'bitsandbytes') {
      throw new PeftkitError('E_UNSUPPORTED', `${file}: quantization_config.quant_method ${JSON.stringify(method)} is not supported (peftkit reads bitsandbytes 4-bit and 8-bit checkpoints)`);
    }
  }

  let slidingWindow: number | null = null;
  if (architecture === 'Qwen2ForCausalLM') {
    if (cfg.use_sliding_window === true) slidingWindow = field<number>(file, cfg, 'sliding_window', 'int');
  } else if (architecture === 'MistralForCausalLM') {
    if (cfg.sliding_window !== null && cfg.sliding_window !== undefined) slidingWindow = field<number>(file, cfg, 'sliding_window', 'int');
  }

  const attentionBias = field<boolean>(file, cfg, 'attention_bias', 'bool', false);
  return {
    architecture,
    modelType: String(cfg.model_type ?? ''),
    hiddenSize,
    intermediateSize: field<number>(file, cfg, 'intermediate_size', 'int'),
    numLayers: field<number>(file, cfg, 'num_hidden_layers', 'int'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: field<number>(file, cfg, 'vocab_size', 'int'),
    rmsNormEps: field<number>(file, cfg, 'rms_norm_eps', 'nonneg', 1e-6),
    ropeTheta,
    ropeScaling,
    tieWordEmbeddings: field<boolean>(file, cfg, 'tie_word_embeddings', 'bool', false),
    qkvBias: architecture === 'Qwen2ForCausalLM' ? true : attentionBias,
    oBias: architecture === 'Qwen2ForCausalLM' ? false : attentionBias,
    mlpBias: architecture === 'LlamaForCausalLM' ? field<boolean>(file, cfg, 'mlp_bias', 'bool', false) : false,
    maxPositionEmbeddings: field<number>(file, cfg, 'max_position_embeddings', 'int', 2048),
    slidingWindow,
    torchDtype: typeof cfg.torch_dtype === 'string' ? cfg.torch_dtype : typeof cfg.dtype === 'string' ? cfg.dtype : null,
    bosTokenId: typeof cfg.bos_token_id === 'number' ? cfg.bos_token_id : null,
    eosTokenId: (typeof cfg.eos_token_id === 'number' || Array.isArray(cfg.eos_token_id) ? cfg.eos_token_id : null) as number | number[] | null,
  };
}

/** Reads and parses `<dir>/config.json`. */
export function readModelConfig(dir: string): ModelConfig {
  const file = path.join(dir, 'config.json');
  let text: string;
  try {
    text = readRegularFile(file);
  } catch (e) {
    if (e instanceof PeftkitError) throw e;
    throw new PeftkitError('E_IO', `${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let cfg: Json;
  try {
    cfg = JSON.parse(text) as Json;
  } catch (e) {
    throw new PeftkitError('E_CONFIG', `${file}: not valid JSON (${(e as Error).message})`);
  }
  return parseModelConfig(cfg, file);
}
