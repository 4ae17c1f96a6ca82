/**
 * mergeAdapter: folds a LoRA adapter into its base weights (W' = W + scaling·B·A) and writes a
 * complete Hugging Face model folder that loads without peft.
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
import * as ops from '../ops';
import { detectQuantFormat } from '../quant/bnb_layout';
import { BnbWeight, bnbEntries, bnbEntryNames, dequantizeBnb, describeSpec, QuantFormat, quantizeBnb, readBnbWeight, specOf } from '../quant/bnb_weight';
import { f32ToBf16, Tensor } from '../tensor';
import { LoraAdapter, LoraLayer } from './lora';

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

/**
 * W + scaling·B·A, computed in place in `w` (an f32 CPU tensor [out, in]) and returned as an
 * array. A sum that overflows f32 would be written as a model that yields NaN: refused here.
 */
function addDelta(w: Tensor, l: LoraLayer, adapter: LoraAdapter): Float32Array {
  ops.gemm(w, l.B, l.A, { alpha: adapter.scaling, beta: 1 });
  const out = w.toFloat32Array();
  for (let i = 0; i < out.length; i++) {
    if (!Number.isFinite(out[i])) {
      throw new PeftkitError(
        'E_NAN',
        `${adapter.source ?? 'adapter'}: merging into '${l.module}.weight' gives ${out[i]} at element ${i}: ` +
          `scaling ${adapter.scaling} × B·A (or the base weight) is out of f32 range, expected an adapter whose delta is finite`,
      );
    }
  }
  return out;
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

/** Where a module's unquantized weight is stored: a tied head reads the embeddings. */
function denseSource(module: string, config: ModelConfig): string {
  return module === 'lm_head' && config.tieWordEmbeddings ? 'model.embed_tokens.weight' : `${module}.weight`;
}

/** An unquantized weight [out, in] as an f32 CPU tensor. */
function readDense(ck: SafetensorsCheckpoint, name: string, shape: [number, number]): Tensor {
  return Tensor.from(ck.readFloat32(name, shape), shape);
}

/** Every tensor of the base copied byte for byte, but the adapted weights: dequantized, merged and requantized as they were. */
function mergeRequantized(ck: SafetensorsCheckpoint, config: ModelConfig, adapter: LoraAdapter): MergedTensors {
  const r: MergedTensors = { tensors: {}, merged: [], untied: false, requantized: 0, requantizationError: 0, specs: new Set() };
  for (const [name, info] of ck.tensors) r.tensors[name] = { dtype: info.dtype, shape: info.shape, data: ck.readBytes(name) };
  for (const l of adapter.layers.values()) {
    const shape: [number, number] = [l.outFeatures, l.inFeatures];
    const q = readQuantized(ck, l.module, shape);
    if (q) {
      const spec = specOf(q, `${ck.dir}: ${l.module}.weight`);
      const w = dequantizeBnb(q);
      let merged: Float32Array;
      try {
        merged = addDelta(w, l, adapter);
      } finally {
        w.dispose();
      }
      const q2 = quantizeBnb(merged, shape, spec);
      r.requantizationError = Math.max(r.requantizationError, relDiff(dequantizedArray(q2), merged));
      const stored = ck.info(`${l.module}.weight`);
      for (const n of bnbEntryNames(l.module)) delete r.tensors[n];
      Object.assign(r.tensors, bnbEntries(l.module, q2));
      // Codes packed in another storage dtype (bnb_4bit_quant_storage, which config.json keeps) stay in it: same bytes, same label.
      if (q.format !== 'int8' && stored.dtype !== 'U8') r.tensors[`${l.module}.weight`] = { ...r.tensors[`${l.module}.weight`], dtype: stored.dtype, shape: stored.shape };
      r.requantized++;
      r.specs.add(describeSpec(spec));
    } else {
      // Stored unquantized (lm_head, or a module bitsandbytes skipped): BF16 stays BF16, the rest is written F32.
      const src = denseSource(l.module, config);
      const w = readDense(ck, src, shape);
      try {
        r.tensors[`${l.module}.weight`] = denseEntry(addDelta(w, l, adapter), shape, ck.info(src).dtype === 'BF16' ? 'bf16' : 'f32');
      } finally {
        w.dispose();
      }
      r.untied ||= src !== `${l.module}.weight`;
    }
    r.merged.push(`${l.module}.weight`);
  }
  return r;
}

/** The model's weights, dequantized where the base is quantized, merged, in `dtype`. */
function mergeDense(ck: SafetensorsCheckpoint, config: ModelConfig, adapter: LoraAdapter, dtype: 'f32' | 'bf16'): MergedTensors {
  const r: MergedTensors = { tensors: {}, merged: [], untied: false, requantized: 0, requantizationError: 0, specs: new Set() };
  const layers = new Map([...adapter.layers.values()].map((l) => [`${l.module}.weight`, l]));
  const weights = expectedWeights(config);
  const head = layers.get('lm_head.weight');
  if (head && config.tieWordEmbeddings) weights.set('lm_head.weight', [config.vocabSize, config.hiddenSize]);
  for (const [name, shape] of weights) {
    const module = name.replace(/\.weight$/, '');
    const l = layers.get(name);
    const q = isMatmulWeight(name) ? readQuantized(ck, module, shape) : null;
    if (!l) {
      r.tensors[name] = denseEntry(q ? dequantizedArray(q) : ck.readFloat32(name, shape), shape, dtype);
      continue;
    }
    const w = q ? dequantizeBnb(q) : readDense(ck, denseSource(module, config), [shape[0], shape[1]]);
    try {
      r.tensors[name] = denseEntry(addDelta(w, l, adapter), shape, dtype);
    } finally {
      w.dispose();
    }
    r.untied ||= !q && denseSource(module, config) !== name;
    r.merged.push(name);
  }
  return r;
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
export function mergeAdapter(o: MergeOptions): MergeResult {
  if (typeof o !== 'object' || o === null) throw new PeftkitError('E_ARG', 'mergeAdapter: expected an options object');
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
  const adapter = LoraAdapter.load(o.adapter, linearModules(config));
  let m: MergedTensors;
  try {
    m = written === 'quantized' ? mergeRequantized(ck, config, adapter) : mergeDense(ck, config, adapter, written);
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
