/**
 * A Llama-family causal LM (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) as engine
 * tensors: its config, its frozen weights, and its Linear modules for adapters to target.
 * The math lives in llama_forward.ts (training) and llama_generate.ts (inference).
 */
import { PeftkitError } from '../errors';
import { resolveDevice, Device, DeviceOption, Tensor } from '../tensor';
import type { LinearModule, LinearWeight } from './sites';
import { ModelConfig, readModelConfig } from './config';
import type { Compute } from '../ops/gemm';
import type { QuantWeight } from '../ops/gemm_quant';
import { applyInt8Threshold, checkInt8ThresholdOption } from './int8_threshold';
import { disposeQuantWeight, linearModules, loadWeights, QuantizeFormat } from './weights';

export type { LinearWeight } from './sites';

export interface LoadModelOptions {
  /** Where the weights live and the math runs. Defaults to `'cpu'`. */
  device?: DeviceOption;
  /**
   * 'bf16': the frozen Linear weights, embeddings and lm_head are stored in bf16, half their
   * memory, and the model computes in bf16 as PyTorch's autocast does: every Linear and LM-head
   * product reads its operands rounded to bf16 and sums in f32 (`compute`). Norms, attention,
   * activations, the loss and a LoRA adapter's rank-r products stay f32. With 'f32', embeddings
   * and lm_head stored in bf16 by the checkpoint stay bf16 (exact: they widen to the same f32).
   * Defaults to `'f32'`.
   */
  dtype?: 'f32' | 'bf16';
  /**
   * The precision of the Linear and LM-head products, when it should differ from `dtype`: f32
   * weights with `'bf16'` compute are full fine-tuning's f32 masters under bf16 autocast.
   * Defaults to `dtype`.
   */
  compute?: Compute;
  /**
   * Quantize the decoder layers' Linear weights at load, one tensor at a time (QLoRA: 'nf4').
   * A bitsandbytes folder is always kept quantized in its own format. Norms and biases stay f32,
   * embeddings and lm_head as `dtype` says. With dtype 'bf16' the products run in bf16 on the
   * dequantized values rounded to bf16 (QLoRA's compute_dtype=bfloat16). Defaults to none.
   */
  quantize?: QuantizeFormat;
  /** 4-bit block size (32..4096, a power of two). Defaults to `64`. */
  blocksize?: number;
  /** 4-bit: double quantization of the block scales (QLoRA). Defaults to `true`. */
  doubleQuant?: boolean;
  /**
   * LLM.int8 outlier threshold of an int8 base (bitsandbytes' `llm_int8_threshold`): the forward
   * products quantize activations to int8 row by row, and the columns holding any |x| >= threshold
   * are multiplied in f32 instead; `0` quantizes every column. Only with `quantize: 'int8'` or a
   * bitsandbytes 8-bit folder (else E_UNSUPPORTED); a finite number >= 0. Defaults to none: the
   * int8 weight is dequantized inside an f32 GEMM (more accurate, and what bitsandbytes' CPU
   * training path does), whatever the folder's `llm_int8_threshold` says.
   */
  int8Threshold?: number;
}

export class LlamaModel {
  readonly dir: string;
  /** The file the weights came from (model.safetensors, or the index of a sharded checkpoint), for messages. */
  readonly source: string;
  readonly config: ModelConfig;
  readonly device: Device;
  /** The precision of the Linear and LM-head products: 'bf16' when loaded with dtype 'bf16'. */
  readonly compute: Compute;
  private readonly weights: Map<string, Tensor>;
  private readonly quantized: Map<string, QuantWeight>;

  private constructor(
    dir: string, source: string, config: ModelConfig, device: Device, compute: Compute, weights: Map<string, Tensor>, quantized: Map<string, QuantWeight>,
  ) {
    this.dir = dir;
    this.source = source;
    this.config = config;
    this.device = device;
    this.compute = compute;
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
    checkInt8ThresholdOption(opts.int8Threshold, opts.quantize);
    const w = loadWeights(dir, config, device, { dtype: opts.dtype, quantize: opts.quantize, blocksize: opts.blocksize, doubleQuant: opts.doubleQuant });
    const model = new LlamaModel(dir, w.source, config, device, opts.compute ?? (opts.dtype === 'bf16' ? 'bf16' : 'f32'), w.dense, w.quantized);
    try {
      applyInt8Threshold(w.quantized, opts.int8Threshold, dir);
    } catch (e) {
      model.dispose();
      throw e;
    }
    return model;
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

  /** The format the Linear weights are kept in ('nf4', 'fp4', 'int8'), or null when dense. */
  get quantFormat(): QuantWeight['format'] | null {
    for (const q of this.quantized.values()) return q.format;
    return null;
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
