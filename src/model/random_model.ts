/**
 * A randomly initialized Llama-family checkpoint in real Hugging Face layout (config.json,
 * model.safetensors, and a byte-level tokenizer), generated deterministically from a seed.
 * Tests, benchmarks and the bundled demo use it: nothing is downloaded.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeByteTokenizer } from '../data/byte_tokenizer';
import { SeededRng } from '../util/rng';
import { parseModelConfig } from './config';
import { expectedWeights } from './weights';
import { f32ToBf16 } from '../tensor';
import { TensorToWrite, writeSafetensors } from './safetensors';

export interface RandomModelOptions {
  architecture?: 'LlamaForCausalLM' | 'Qwen2ForCausalLM' | 'MistralForCausalLM';
  hiddenSize?: number;
  intermediateSize?: number;
  numLayers?: number;
  numHeads?: number;
  numKvHeads?: number;
  /** Defaults to the byte tokenizer's size when `tokenizer` is on, else 256. */
  vocabSize?: number;
  tieWordEmbeddings?: boolean;
  ropeTheta?: number;
  /** Write a byte-level tokenizer too. Defaults to `true`. */
  tokenizer?: boolean;
  /** How the weights are stored (bf16 as real Llama checkpoints are: values rounded to nearest even). Defaults to `'f32'`. */
  dtype?: 'f32' | 'bf16';
  /** Weights std multiplier (1 = HF-like 1/sqrt(fan_in)). Defaults to `1`. */
  scale?: number;
  seed?: number;
}

/** Writes the checkpoint into `dir` and returns its config.json object. */
export function writeRandomModel(dir: string, o: RandomModelOptions = {}): Record<string, unknown> {
  fs.mkdirSync(dir, { recursive: true });
  const tok = o.tokenizer === false ? null : writeByteTokenizer(dir);
  const arch = o.architecture ?? 'LlamaForCausalLM';
  const hidden = o.hiddenSize ?? 64;
  const heads = o.numHeads ?? 4;
  const cfg: Record<string, unknown> = {
    architectures: [arch],
    model_type: arch === 'Qwen2ForCausalLM' ? 'qwen2' : arch === 'MistralForCausalLM' ? 'mistral' : 'llama',
    hidden_size: hidden,
    intermediate_size: o.intermediateSize ?? hidden * 3,
    num_hidden_layers: o.numLayers ?? 2,
    num_attention_heads: heads,
    num_key_value_heads: o.numKvHeads ?? heads,
    head_dim: hidden / heads,
    vocab_size: o.vocabSize ?? tok?.vocabSize ?? 256,
    rms_norm_eps: 1e-5,
    rope_theta: o.ropeTheta ?? 10000,
    max_position_embeddings: 2048,
    hidden_act: 'silu',
    tie_word_embeddings: o.tieWordEmbeddings ?? true,
    torch_dtype: o.dtype === 'bf16' ? 'bfloat16' : 'float32',
    bos_token_id: tok?.bosId ?? 0,
    eos_token_id: tok?.eosId ?? 0,
  };
  if (arch === 'Qwen2ForCausalLM') Object.assign(cfg, { use_sliding_window: false, sliding_window: 4096 });
  const config = parseModelConfig(cfg, path.join(dir, 'config.json'));
  const rng = new SeededRng(o.seed ?? 0);
  const scale = o.scale ?? 1;
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, shape] of expectedWeights(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (name.endsWith('norm.weight')) data.fill(1);
    else if (name.endsWith('.bias')) data.fill(0);
    else {
      const std = (name.includes('embed_tokens') || name === 'lm_head.weight' ? 0.5 : 1 / Math.sqrt(shape[1])) * scale;
      for (let i = 0; i < n; i++) data[i] = rng.normal() * std;
    }
    tensors[name] = o.dtype === 'bf16' ? { dtype: 'BF16', shape, data: f32ToBf16(data) } : { dtype: 'F32', shape, data };
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
  return cfg;
}
