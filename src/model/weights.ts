/**
 * The weights of a Llama-family checkpoint as engine tensors, named as in the checkpoint
 * (model.layers.0.self_attn.q_proj.weight, ...). Each tensor is read from disk straight into
 * engine memory (converted natively to its storage dtype, never copied through the JS heap), one
 * at a time, so a checkpoint is never held twice in memory. Linear weights may be kept quantized
 * (QLoRA, LLM.int8): see loadWeights.
 */
import * as path from 'path';
import { PeftkitError } from '../errors';
import { Device, Tensor } from '../tensor';
import type { ModelConfig } from './config';
import { SafetensorsCheckpoint } from './safetensors';
import {
  dequantize4bit, dequantizeInt8, detectQuantFormat, quantize4bitTensors, quantizeInt8Tensors, readInt8Meta, readInt8State, readQuant4Meta,
  readQuant4State, recoverAbsmaxTensor,
} from '../quant';
import type { QuantWeight } from '../ops/gemm_quant';
import type { LinearModule } from './sites';

/** The Linear layers of one decoder layer: [suffix, out, in, hasBias]. */
export function layerLinears(c: ModelConfig): Array<[string, number, number, boolean]> {
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  return [
    ['self_attn.q_proj', q, c.hiddenSize, c.qkvBias],
    ['self_attn.k_proj', kv, c.hiddenSize, c.qkvBias],
    ['self_attn.v_proj', kv, c.hiddenSize, c.qkvBias],
    ['self_attn.o_proj', c.hiddenSize, q, c.oBias],
    ['mlp.gate_proj', c.intermediateSize, c.hiddenSize, c.mlpBias],
    ['mlp.up_proj', c.intermediateSize, c.hiddenSize, c.mlpBias],
    ['mlp.down_proj', c.hiddenSize, c.intermediateSize, c.mlpBias],
  ];
}

/** Every Linear module of the model (the output head included, as PEFT lists it). */
export function linearModules(c: ModelConfig): LinearModule[] {
  const out: LinearModule[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    for (const [m, o, i] of layerLinears(c)) out.push({ name: `model.layers.${l}.${m}`, inFeatures: i, outFeatures: o });
  }
  out.push({ name: 'lm_head', inFeatures: c.hiddenSize, outFeatures: c.vocabSize });
  return out;
}

/** Names and shapes the checkpoint must hold. */
export function expectedWeights(c: ModelConfig): Map<string, number[]> {
  const w = new Map<string, number[]>();
  w.set('model.embed_tokens.weight', [c.vocabSize, c.hiddenSize]);
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    w.set(`${p}input_layernorm.weight`, [c.hiddenSize]);
    w.set(`${p}post_attention_layernorm.weight`, [c.hiddenSize]);
    for (const [m, o, i, bias] of layerLinears(c)) {
      w.set(`${p}${m}.weight`, [o, i]);
      if (bias) w.set(`${p}${m}.bias`, [o]);
    }
  }
  w.set('model.norm.weight', [c.hiddenSize]);
  if (!c.tieWordEmbeddings) w.set('lm_head.weight', [c.vocabSize, c.hiddenSize]);
  return w;
}

/**
 * Refuses a config.json whose num_hidden_layers the checkpoint does not hold, before anything
 * walks the layers: a corrupt count in the millions would otherwise build millions of names first.
 * The layer norm is probed because it is never quantized.
 */
export function checkLayerCount(ck: SafetensorsCheckpoint, config: ModelConfig, configFile: string): void {
  const probe = `model.layers.${config.numLayers - 1}.input_layernorm.weight`;
  if (!ck.has(probe)) {
    throw new PeftkitError(
      'E_MISSING',
      `${configFile}: num_hidden_layers is ${config.numLayers}, but ${ck.source} has no layer ${config.numLayers - 1} (no tensor '${probe}')`,
    );
  }
}

/** Weights that GEMMs read (Linear layers and an untied head): these may be stored in bf16. */
export const isMatmulWeight = (name: string) => /_proj\.weight$/.test(name) || name === 'lm_head.weight';

/** The token embeddings and an untied head: large, frozen, and read only by a gather and the fused LM-head loss. */
const isVocabWeight = (name: string) => name === 'model.embed_tokens.weight' || name === 'lm_head.weight';

/** How the frozen decoder-layer Linear weights are kept in memory. */
export type QuantizeFormat = 'nf4' | 'fp4' | 'int8';

export interface LoadWeightsOptions {
  /**
   * 'bf16' keeps the Linear weights, the embeddings and the head in bf16, half the memory; the model
   * then computes in bf16 (LlamaModel.compute). Quantized Linear weights stay quantized. With 'f32',
   * the embeddings and an untied head still stay bf16 when the checkpoint stores them so (exact: a
   * bf16 value widens to the same f32). Defaults to `'f32'`.
   */
  dtype?: 'f32' | 'bf16';
  /** Quantize the decoder layers' Linear weights at load (QLoRA: 'nf4'). Defaults to none. */
  quantize?: QuantizeFormat;
  /** 4-bit block size. Defaults to `64`. */
  blocksize?: number;
  /** 4-bit: store the block scales in 8 bits (QLoRA's double quantization). Defaults to `true`. */
  doubleQuant?: boolean;
}

/** The frozen weights: f32/bf16 tensors, and the Linear weights kept quantized. */
export interface LoadedWeights {
  /** The file the weights were listed in (model.safetensors, or the index of a sharded checkpoint). */
  source: string;
  dense: Map<string, Tensor>;
  quantized: Map<string, QuantWeight>;
}

/** Frees the tensors of a quantized weight. */
export function disposeQuantWeight(q: QuantWeight): void {
  if (q.format === 'int8') {
    q.cb.dispose();
    q.scb.dispose();
  } else {
    q.packed.dispose();
    q.absmax.dispose();
  }
}

/** Codes of a quantized weight read from the checkpoint straight into engine memory, as `shape`. */
function readCodes(ck: SafetensorsCheckpoint, name: string, shape: number[], device: Device): Tensor {
  const info = ck.info(name);
  return Tensor.fromFile({ file: info.file, offset: info.begin, bytes: info.end - info.begin, dtype: info.dtype === 'I8' ? 'i8' : 'u8', what: `tensor '${name}'` }, shape, { device });
}

/** A bitsandbytes 4-bit weight as engine tensors, with the f32 block scales recovered once from double quantization. */
function quant4Weight(ck: SafetensorsCheckpoint, prefix: string, device: Device): QuantWeight {
  const s = readQuant4Meta(ck, prefix);
  const n = s.shape.reduce((a, b) => a * b, 1);
  const absmax = recoverAbsmaxTensor(s, device);
  try {
    const packed = readCodes(ck, s.packedName, [(n + 1) >> 1], device);
    return { format: s.quantType, packed, absmax, blocksize: s.blocksize, shape: [s.shape[0], s.shape[1]] };
  } catch (e) {
    absmax.dispose();
    throw e;
  }
}

function int8Weight(ck: SafetensorsCheckpoint, prefix: string, device: Device): QuantWeight {
  const s = readInt8Meta(ck, prefix);
  const cb = readCodes(ck, s.cbName, s.shape, device);
  const scb = Tensor.from(s.scb, [s.scb.length], { device });
  return { format: 'int8', cb, scb, shape: s.shape };
}

/** Quantizes a full-precision weight and frees it at once. */
function quantizeAtLoad(w: Tensor, format: QuantizeFormat, o: LoadWeightsOptions): QuantWeight {
  const shape = [w.shape[0], w.shape[1]] as [number, number];
  try {
    if (format === 'int8') return { format, ...quantizeInt8Tensors(w), shape };
    const q = quantize4bitTensors(w, { quantType: format, blocksize: o.blocksize ?? 64, doubleQuant: o.doubleQuant ?? true });
    return { format, ...q, blocksize: o.blocksize ?? 64, shape };
  } finally {
    w.dispose();
  }
}

/** A decoder-layer Linear weight (lm_head, embeddings, norms and biases are never quantized). */
export const isLayerLinearWeight = (name: string) => /_proj\.weight$/.test(name);

/**
 * The dtype a dense weight is kept in: bf16 for the Linear weights, embeddings and head with
 * dtype 'bf16', and for the embeddings and head the checkpoint stores in bf16; f32 otherwise.
 */
export function denseDtype(name: string, stored: string, dtype: 'f32' | 'bf16'): 'f32' | 'bf16' {
  return (dtype === 'bf16' && (isMatmulWeight(name) || isVocabWeight(name))) || (isVocabWeight(name) && stored === 'BF16') ? 'bf16' : 'f32';
}

/**
 * Reads every weight of the checkpoint. A bitsandbytes folder (4-bit or LLM.int8) keeps its
 * decoder-layer Linear weights quantized as stored; `quantize` quantizes an f32/bf16/f16 folder's
 * ones at load, one tensor at a time (each full-precision weight is freed as soon as it is
 * quantized, so at most one exists). Norms and biases are f32; embeddings and lm_head are bf16
 * when the checkpoint stores them in bf16 or `dtype` is 'bf16', else f32.
 */
export function loadWeights(dir: string, config: ModelConfig, device: Device, o: LoadWeightsOptions = {}): LoadedWeights {
  const dtype = o.dtype ?? 'f32';
  if (o.quantize !== undefined && o.quantize !== 'nf4' && o.quantize !== 'fp4' && o.quantize !== 'int8') {
    throw new PeftkitError('E_ARG', `quantize: expected 'nf4', 'fp4' or 'int8', got ${JSON.stringify(o.quantize)}`);
  }
  const ck = new SafetensorsCheckpoint(dir);
  checkLayerCount(ck, config, path.join(dir, 'config.json'));
  const out: LoadedWeights = { source: ck.source, dense: new Map(), quantized: new Map() };
  try {
    for (const [name, shape] of expectedWeights(config)) {
      const prefix = name.replace(/\.weight$/, '');
      const format = isMatmulWeight(name) ? detectQuantFormat(ck, prefix) : null;
      if (format && isLayerLinearWeight(name)) {
        // A bitsandbytes checkpoint stays quantized: its codes and (recovered f32) scales are the weight.
        const q = format === 'int8' ? int8Weight(ck, prefix, device) : quant4Weight(ck, prefix, device);
        if (q.shape.join() !== shape.join()) {
          disposeQuantWeight(q);
          throw new PeftkitError('E_SHAPE', `${ck.source}: quantized '${name}' stands for [${q.shape.join(', ')}], expected [${shape.join(', ')}]`);
        }
        out.quantized.set(name, q);
        continue;
      }
      if (format) {
        // A quantized lm_head (not what peftkit writes): widened once, to the storage dtype asked for.
        const t = format === 'int8' ? dequantizeInt8(readInt8State(ck, prefix), { dtype, device }) : dequantize4bit(readQuant4State(ck, prefix), { dtype, device });
        if (t.shape.join() !== shape.join()) {
          t.dispose();
          throw new PeftkitError('E_SHAPE', `${ck.source}: quantized '${name}' stands for [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
        }
        out.dense.set(name, t);
        continue;
      }
      if (!ck.has(name)) {
        throw new PeftkitError('E_MISSING', `${ck.source}: checkpoint has no tensor '${name}' (expected ${shape.join('x')} for ${config.architecture} as config.json describes it)`);
      }
      const stored = ck.info(name);
      if (isMatmulWeight(name) && (stored.dtype === 'I8' || stored.dtype === 'U8')) {
        throw new PeftkitError(
          'E_MISSING',
          `${stored.file}: tensor '${name}' holds ${stored.dtype} codes but no quantization state: expected '${prefix}.SCB' (LLM.int8) ` +
            `or '${name}.quant_state.bitsandbytes__nf4' / '__fp4' (4-bit) beside it`,
        );
      }
      if (o.quantize && isLayerLinearWeight(name)) {
        out.quantized.set(name, quantizeAtLoad(ck.readTensor(name, shape, { device }), o.quantize, o));
        continue;
      }
      out.dense.set(name, ck.readTensor(name, shape, { device, dtype: denseDtype(name, stored.dtype, dtype) }));
    }
  } catch (e) {
    for (const t of out.dense.values()) t.dispose();
    for (const q of out.quantized.values()) disposeQuantWeight(q);
    // A shape that disagrees may be the config's fault as much as the checkpoint's: name both.
    if (e instanceof PeftkitError && e.code === 'E_SHAPE') throw new PeftkitError('E_SHAPE', `${e.message} (the expected shape comes from ${path.join(dir, 'config.json')})`);
    throw e;
  }
  return out;
}
