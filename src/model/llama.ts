/**
 * A Llama-family causal LM (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) as engine
 * tensors: its config, its frozen weights, and its Linear modules for adapters to target.
 * The math lives in llama_forward.ts (training) and llama_generate.ts (inference).
 */
import { PeftkitError } from '../errors';
import { resolveDevice, Device, DeviceOption, Tensor } from '../tensor';
import type { LinearModule } from '../peft/targets';
import { ModelConfig, readModelConfig } from './config';
import type { QuantWeight } from '../ops/gemm_quant';
import { disposeQuantWeight, linearModules, loadWeights, QuantizeFormat } from './weights';

/** A frozen Linear weight: an f32/bf16 tensor, or kept quantized (QLoRA, LLM.int8). */
export type LinearWeight = { W: Tensor } | { q: QuantWeight };

export interface LoadModelOptions {
  /** Where the weights live and the math runs. Defaults to `'cpu'`. */
  device?: DeviceOption;
  /**
   * Storage of the frozen Linear weights, embeddings and lm_head: 'bf16' halves their memory (GEMMs
   * accumulate in f32). With 'f32', embeddings and lm_head stored in bf16 by the checkpoint stay
   * bf16 (exact: they widen to the same f32). Defaults to `'f32'`.
   */
  dtype?: 'f32' | 'bf16';
  /**
   * Quantize the decoder layers' Linear weights at load, one tensor at a time (QLoRA: 'nf4').
   * A bitsandbytes folder is always kept quantized in its own format. Norms and biases stay f32,
   * embeddings and lm_head as `dtype` says. Not with dtype 'bf16'. Defaults to none.
   */
  quantize?: QuantizeFormat;
  /** 4-bit block size (32..4096, a power of two). Defaults to `64`. */
  blocksize?: number;
  /** 4-bit: double quantization of the block scales (QLoRA). Defaults to `true`. */
  doubleQuant?: boolean;
}

export class LlamaModel {
  readonly dir: string;
  readonly config: ModelConfig;
  readonly device: Device;
  private readonly weights: Map<string, Tensor>;
  private readonly quantized: Map<string, QuantWeight>;

  private constructor(dir: string, config: ModelConfig, device: Device, weights: Map<string, Tensor>, quantized: Map<string, QuantWeight>) {
    this.dir = dir;
    this.config = config;
    this.device = device;
    this.weights = weights;
    this.quantized = quantized;
  }

  /**
   * Reads config.json and the safetensors weights (f32/bf16/f16 on disk; in memory f32, or bf16 as
   * `dtype` says), each straight from disk into engine memory.
   */
  static load(dir: string, opts: LoadModelOptions = {}): LlamaModel {
    const config = readModelConfig(dir);
    const device = resolveDevice(opts.device ?? 'cpu');
    const w = loadWeights(dir, config, device, { dtype: opts.dtype, quantize: opts.quantize, blocksize: opts.blocksize, doubleQuant: opts.doubleQuant });
    return new LlamaModel(dir, config, device, w.dense, w.quantized);
  }

  /** A weight by its checkpoint name; `lm_head.weight` resolves to the embeddings when tied. Not for a quantized weight (see linear()). */
  weight(name: string): Tensor {
    if (name === 'lm_head.weight' && this.config.tieWordEmbeddings) name = 'model.embed_tokens.weight';
    const t = this.weights.get(name);
    if (!t) {
      if (this.quantized.has(name)) throw new Error(`internal: ${name} is quantized; read it with linear()`);
      throw new Error(`internal: no weight ${name}`);
    }
    return t;
  }

  /** A Linear weight by its checkpoint name, as the tensor or the quantized weight it is kept as. */
  linear(name: string): LinearWeight {
    const q = this.quantized.get(name);
    return q ? { q } : { W: this.weight(name) };
  }

  /** Whether any frozen weight is kept quantized. */
  get isQuantized(): boolean {
    return this.quantized.size > 0;
  }

  /** A weight that may be absent (biases). */
  maybeWeight(name: string): Tensor | undefined {
    return this.weights.get(name);
  }

  /**
   * Sliding-window attention is not implemented: within the window it equals full causal
   * attention, so sequences up to the window are exact and longer ones are refused.
   */
  checkSequenceLength(T: number): void {
    const w = this.config.slidingWindow;
    if (w !== null && T > w) {
      throw new PeftkitError('E_UNSUPPORTED', `${this.dir}: sequences of ${T} tokens exceed the model's sliding_window (${w}), which peftkit does not implement; use max length <= ${w}`);
    }
  }

  get linearModules(): LinearModule[] {
    return linearModules(this.config);
  }

  /** Names and tensors of every unquantized weight (for merging and saving). */
  entries(): IterableIterator<[string, Tensor]> {
    return this.weights.entries();
  }

  dispose(): void {
    for (const t of this.weights.values()) t.dispose();
    this.weights.clear();
    for (const q of this.quantized.values()) disposeQuantWeight(q);
    this.quantized.clear();
  }
}
