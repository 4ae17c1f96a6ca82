/**
 * mergeAdapterSync: folds an adapter into its base weights (each method's merge: LoRA W + s·B·A,
 * DoRA's rescaled W', IA3's scaled rows or columns, LN tuning's norms, BitFit's biases) and
 * writes a complete Hugging Face model folder that loads without peft.
 *
 * A bitsandbytes base (NF4/FP4 with or without double quantization, LLM.int8) is merged as PEFT's
 * merge_and_unload merges into a quantized model: each adapted weight is dequantized, the delta
 * added in f32, and the sum quantized again in the weight's own format (quant type, block size,
 * double quantization, recorded dtype); every other tensor is copied byte for byte. Rounding
 * then moves the merged weights off W + delta, so the merged model's outputs differ
 * from the base + adapter's, and the result says so in `warnings`. With `dtype` 'f32' or 'bf16'
 * the base is dequantized instead and the folder is dense: no second rounding.
 */
import * as path from 'path';
import { PeftkitError } from '../errors';
import { checkOutputFolder } from '../io/atomic';
import { parseModelConfig, ModelConfig } from '../model/config';
import { readConfigJson, writeModelFolder } from '../model/hf_folder';
import { SafetensorsCheckpoint, TensorToWrite } from '../model/safetensors';
import { checkLayerCount, expectedWeights, isMatmulWeight, linearModules } from '../model/weights';
import { detectQuantFormat } from '../quant/bnb_layout';
import { BnbWeight, bnbEntries, bnbEntryNames, dequantizeBnb, describeSpec, QuantFormat, quantizeBnb, readBnbWeight, specOf } from '../quant/bnb_weight';
import { f32ToBf16 } from '../tensor';
import type { MergeEdit } from './method';
import { loadAdapter } from './registry';

export interface MergeOptions {
  /** Base model folder: f32/bf16/f16 weights, or a bitsandbytes-quantized folder. */
  model: string;
  /** PEFT adapter folder. */
  adapter: string;
  /** Output folder (replaced atomically: it appears complete or not at all). Must differ from `model` and `adapter`. */
  out: string;
  /**
   * Write a dense folder with every weight in this dtype. Defaults to `'f32'` for an unquantized
   * base. For a bitsandbytes base, leaving it out keeps the base's quantized format (the merged
   * weights are requantized: see MergeResult.warnings); `'f32'` or `'bf16'` writes the
   * dequantized base plus the adapter, dense, without `quantization_config`.
   */
  dtype?: 'f32' | 'bf16';
}

export interface MergeResult {
  /** The folder written. */
  out: string;
  /** bitsandbytes format of the base's quantized weights, or null for an unquantized base. */
  baseFormat: QuantFormat | null;
  /** How the weights were written: dense f32 / bf16, or `'quantized'` in the base's own format. */
  written: 'f32' | 'bf16' | 'quantized';
  /** Checkpoint names of the weights the adapter changed, in module order. */
  merged: string[];
  /**
   * Of the requantized weights, the largest relative change the second rounding made,
   * ‖Q(W') − W'‖ / ‖W'‖ (Frobenius) with W' = W + scaling·B·A: how far the merged weights sit
   * from the exact merge. 0 when nothing was requantized.
   */
  requantizationError: number;
  /** One line each, for people. Non-empty when the merged model's outputs differ from base + adapter beyond f32 rounding (a requantized merge). */
  warnings: string[];
}

interface MergedTensors {
  tensors: Record<string, TensorToWrite>;
  merged: string[];
  /** Set when the adapter targets a head tied to the embeddings: the merged head is written on its own. */
  untied: boolean;
  requantized: number;
  requantizationError: number;
  specs: Set<string>;
}

/** The weight a quantized state stands for, as an f32 array. */
function dequantizedArray(q: BnbWeight): Float32Array {
  const t = dequantizeBnb(q);
  try {
    return t.toFloat32Array();
  } finally {
    t.dispose();
  }
}

function denseEntry(w: Float32Array, shape: readonly number[], dtype: 'f32' | 'bf16'): TensorToWrite {
  return dtype === 'bf16' ? { dtype: 'BF16', shape: [...shape], data: f32ToBf16(w) } : { dtype: 'F32', shape: [...shape], data: w };
}

/** ‖a − b‖ / ‖b‖ in float64. */
function relDiff(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] * b[i];
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** The quantized weight of `module`, checked against the shape the model's config gives it. */
function readQuantized(ck: SafetensorsCheckpoint, module: string, shape: readonly number[]): BnbWeight | null {
  const q = readBnbWeight(ck, module);
  if (q && q.state.shape.join() !== shape.join()) {
    throw new PeftkitError('E_SHAPE', `${ck.dir}: quantized '${module}.weight' stands for [${q.state.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`);
  }
  return q;
}

/** Where a tensor is stored unquantized: a tied head reads the embeddings. */
function denseSource(name: string, config: ModelConfig): string {
  return name === 'lm_head.weight' && config.tieWordEmbeddings ? 'model.embed_tokens.weight' : name;
}

/** An edit applied, with a merged value that is finite everywhere (else E_NAN naming the tensor). */
function applyEdit(e: MergeEdit, base: Float32Array | null, source: string): Float32Array {
  const out = e.apply(base);
  for (let i = 0; i < out.length; i++) {
    if (!Number.isFinite(out[i])) {
      throw new PeftkitError('E_NAN', `${source}: merging into '${e.tensor}' gives ${out[i]} at element ${i}, expected an adapter whose merged weights are finite`);
    }
  }
  return out;
}

/** Every tensor of the base copied byte for byte, but the edited ones: quantized weights dequantized, edited and requantized as they were. */
function mergeRequantized(ck: SafetensorsCheckpoint, config: ModelConfig, edits: MergeEdit[], source: string): MergedTensors {
  const r: MergedTensors = { tensors: {}, merged: [], untied: false, requantized: 0, requantizationError: 0, specs: new Set() };
  for (const [name, info] of ck.tensors) r.tensors[name] = { dtype: info.dtype, shape: info.shape, data: ck.readBytes(name) };
  for (const e of edits) {
    const module = e.tensor.replace(/\.weight$/, '');
    const q = isMatmulWeight(e.tensor) ? readQuantized(ck, module, e.shape) : null;
    if (q) {
      const spec = specOf(q, `${ck.dir}: ${e.tensor}`);
      const merged = applyEdit(e, dequantizedArray(q), source);
      const q2 = quantizeBnb(merged, e.shape as [number, number], spec);
      r.requantizationError = Math.max(r.requantizationError, relDiff(dequantizedArray(q2), merged));
      const stored = ck.info(e.tensor);
      for (const n of bnbEntryNames(module)) delete r.tensors[n];
      Object.assign(r.tensors, bnbEntries(module, q2));
      // Codes packed in another storage dtype (bnb_4bit_quant_storage, which config.json keeps) stay in it: same bytes, same label.
      if (q.format !== 'int8' && stored.dtype !== 'U8') r.tensors[e.tensor] = { ...r.tensors[e.tensor], dtype: stored.dtype, shape: stored.shape };
      r.requantized++;
      r.specs.add(describeSpec(spec));
    } else {
      // Stored unquantized (norms, biases, lm_head, a module bitsandbytes skipped): BF16 stays BF16, the rest is written F32.
      const src = denseSource(e.tensor, config);
      const present = ck.has(src);
      if (!present && e.ifPresent) continue;
      const base = present ? ck.readFloat32(src, e.shape) : null;
      r.tensors[e.tensor] = denseEntry(applyEdit(e, base, source), e.shape, present && ck.info(src).dtype === 'BF16' ? 'bf16' : 'f32');
      r.untied ||= src !== e.tensor;
    }
    r.merged.push(e.tensor);
  }
  return r;
}

/** The model's tensors, dequantized where the base is quantized, edited, in `dtype`. */
function mergeDense(ck: SafetensorsCheckpoint, config: ModelConfig, edits: MergeEdit[], dtype: 'f32' | 'bf16', source: string): MergedTensors {
  const r: MergedTensors = { tensors: {}, merged: [], untied: false, requantized: 0, requantizationError: 0, specs: new Set() };
  const byTensor = new Map(edits.map((e) => [e.tensor, e]));
  const weights = expectedWeights(config);
  if (byTensor.has('lm_head.weight') && config.tieWordEmbeddings) weights.set('lm_head.weight', [config.vocabSize, config.hiddenSize]);
  for (const e of edits) if (!weights.has(e.tensor) && !e.ifPresent) weights.set(e.tensor, e.shape);
  for (const [name, shape] of weights) {
    const q = isMatmulWeight(name) ? readQuantized(ck, name.replace(/\.weight$/, ''), shape) : null;
    const src = denseSource(name, config);
    const base = q ? dequantizedArray(q) : ck.has(src) ? ck.readFloat32(src, shape) : null;
    const e = byTensor.get(name);
    if (!e) {
      r.tensors[name] = denseEntry(base!, shape, dtype);
      continue;
    }
    r.tensors[name] = denseEntry(applyEdit(e, base, source), shape, dtype);
    r.untied ||= !q && src !== name;
    r.merged.push(name);
  }
  return r;
}

/**
 * Biases the merge created where the base had none (BitFit on Llama): transformers' Llama adds
 * biases by group (attention_bias: q, k, v, o; mlp_bias: gate, up, down), so the group's other
 * biases are written as zeros and the flag is set. Other architectures cannot hold them.
 */
function declareNewBiases(m: MergedTensors, ck: SafetensorsCheckpoint, config: ModelConfig, out: Record<string, unknown>, adapterDir: string): void {
  const created = m.merged.filter((n) => n.endsWith('.bias') && !ck.has(n));
  if (!created.length) return;
  const groups = { attention_bias: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], mlp_bias: ['gate_proj', 'up_proj', 'down_proj'] };
  for (const [flag, mods] of Object.entries(groups)) {
    if (!created.some((n) => mods.some((mod) => n.endsWith(`.${mod}.bias`)))) continue;
    if (config.architecture !== 'LlamaForCausalLM') {
      throw new PeftkitError('E_UNSUPPORTED', `${adapterDir}: merging adds biases (${created.slice(0, 3).join(', ')}...) that ${config.architecture} cannot hold; keep the adapter unmerged`);
    }
    out[flag] = true;
    for (const [name, shape] of expectedWeights({ ...config, qkvBias: true, oBias: true, mlpBias: true })) {
      if (name.endsWith('.bias') && mods.some((mod) => name.endsWith(`.${mod}.bias`)) && !m.tensors[name]) {
        m.tensors[name] = { dtype: 'F32', shape: [...shape], data: new Float32Array(shape[0]) };
      }
    }
  }
}

/** The format of the first quantized Linear weight of the base, or null. */
function baseQuantFormat(ck: SafetensorsCheckpoint, config: ModelConfig): QuantFormat | null {
  for (const m of linearModules(config)) {
    const format = detectQuantFormat(ck, m.name);
    if (format) return format;
  }
  return null;
}

function requantizedWarning(m: MergedTensors): string {
  return `merging into a quantized base requantized ${m.requantized} weight${m.requantized === 1 ? '' : 's'} (${[...m.specs].join('; ')}): ` +
    `rounding moved them up to ${(100 * m.requantizationError).toPrecision(2)}% (relative) off W + scaling·B·A, so the merged model's outputs ` +
    "differ from the base + adapter's; keep the adapter unmerged for exact outputs, or merge with dtype f32/bf16 for a dense model";
}

/** Merges `o.adapter` into `o.model` and writes the merged model to `o.out`. */
export function mergeAdapterSync(o: MergeOptions): MergeResult {
  if (typeof o !== 'object' || o === null) throw new PeftkitError('E_ARG', 'mergeAdapterSync: expected an options object');
  for (const k of ['model', 'adapter', 'out'] as const) {
    if (typeof o[k] !== 'string' || o[k] === '') throw new PeftkitError('E_ARG', `${k}: expected a folder path, got ${JSON.stringify(o[k])}`);
  }
  if (o.dtype !== undefined && o.dtype !== 'f32' && o.dtype !== 'bf16') throw new PeftkitError('E_ARG', `dtype: expected f32 or bf16, got '${String(o.dtype)}'`);
  checkOutputFolder(o.out, { 'base model': o.model, adapter: o.adapter });
  const raw = readConfigJson(o.model);
  const config = parseModelConfig(raw, path.join(o.model, 'config.json'));
  const ck = new SafetensorsCheckpoint(o.model);
  checkLayerCount(ck, config, path.join(o.model, 'config.json'));
  const baseFormat = baseQuantFormat(ck, config);
  const written = o.dtype ?? (baseFormat ? 'quantized' : 'f32');
  const adapter = loadAdapter(o.adapter, config);
  let m: MergedTensors;
  try {
    const edits = adapter.mergeEdits();
    const source = adapter.source ?? o.adapter;
    m = written === 'quantized' ? mergeRequantized(ck, config, edits, source) : mergeDense(ck, config, edits, written, source);
  } finally {
    adapter.dispose();
  }
  const outConfig: Record<string, unknown> = { ...raw };
  if (written !== 'quantized') {
    delete outConfig.quantization_config;
    outConfig.torch_dtype = written === 'bf16' ? 'bfloat16' : 'float32';
    // transformers 5 names it "dtype" (and reads that first): both must say what was written.
    if ('dtype' in outConfig) outConfig.dtype = outConfig.torch_dtype;
  }
  // A LoRA on a tied head changes the head alone: the merged model keeps its own copy.
  if (m.untied) outConfig.tie_word_embeddings = false;
  declareNewBiases(m, ck, config, outConfig, o.adapter);
  writeModelFolder(o.out, { source: o.model, config: outConfig, tensors: m.tensors });
  return {
    out: o.out,
    baseFormat,
    written,
    merged: m.merged,
    requantizationError: m.requantizationError,
    warnings: m.requantized > 0 ? [requantizedWarning(m)] : [],
  };
}
