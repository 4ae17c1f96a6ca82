/**
 * The weights of a Llama-family checkpoint as engine tensors, named as in the checkpoint
 * (model.layers.0.self_attn.q_proj.weight, ...). Each tensor is read from disk, widened to f32
 * and copied to its device one at a time, so a checkpoint is never held twice in memory.
 */
import { PeftkitError } from '../errors';
import { Device, Tensor } from '../tensor';
import type { ModelConfig } from './config';
import { SafetensorsCheckpoint } from './safetensors';
import { dequantize4bit, dequantizeInt8, detectQuantFormat, readInt8State, readQuant4State } from '../quant';
import type { LinearModule } from '../peft/targets';

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

/** Weights that GEMMs read (Linear layers and an untied head): these may be stored in bf16. */
export const isMatmulWeight = (name: string) => /_proj\.weight$/.test(name) || name === 'lm_head.weight';

/**
 * `dtype: 'bf16'` keeps the Linear weights in bf16 (half the memory; GEMMs accumulate in f32);
 * embeddings, norms and biases stay f32.
 */
export function loadWeights(dir: string, config: ModelConfig, device: Device, dtype: 'f32' | 'bf16' = 'f32'): Map<string, Tensor> {
  const ck = new SafetensorsCheckpoint(dir);
  const out = new Map<string, Tensor>();
  try {
    for (const [name, shape] of expectedWeights(config)) {
      // A bitsandbytes checkpoint (4-bit or LLM.int8) stores Linear weights quantized: read them
      // in that layout and widen them once, to the storage dtype asked for.
      const prefix = name.replace(/\.weight$/, '');
      const format = isMatmulWeight(name) ? detectQuantFormat(ck, prefix) : null;
      if (format) {
        const wdtype = dtype === 'bf16' ? 'bf16' : 'f32';
        const t = format === 'int8' ? dequantizeInt8(readInt8State(ck, prefix), { dtype: wdtype, device }) : dequantize4bit(readQuant4State(ck, prefix), { dtype: wdtype, device });
        if (t.shape.join() !== shape.join()) {
          t.dispose();
          throw new PeftkitError('E_SHAPE', `${dir}: quantized '${name}' stands for [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
        }
        out.set(name, t);
        continue;
      }
      if (!ck.has(name)) {
        throw new PeftkitError('E_MISSING', `${dir}: checkpoint has no tensor '${name}' (expected ${shape.join('x')} for ${config.architecture})`);
      }
      out.set(name, Tensor.from(ck.readFloat32(name, shape), shape, { device, dtype: dtype === 'bf16' && isMatmulWeight(name) ? 'bf16' : 'f32' }));
    }
  } catch (e) {
    for (const t of out.values()) t.dispose();
    throw e;
  }
  return out;
}
