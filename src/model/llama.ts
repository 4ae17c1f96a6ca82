/**
 * A Llama-family causal LM (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) as engine
 * tensors: its config, its frozen weights, and its Linear modules for adapters to target.
 * The math lives in llama_forward.ts (training) and llama_generate.ts (inference).
 */
import { PeftkitError } from '../errors';
import { resolveDevice, Device, DeviceOption, Tensor } from '../tensor';
import type { LinearModule } from '../peft/targets';
import { ModelConfig, readModelConfig } from './config';
import { linearModules, loadWeights } from './weights';

export interface LoadModelOptions {
  /** Where the weights live and the math runs. Defaults to `'cpu'`. */
  device?: DeviceOption;
  /** Storage of the frozen Linear weights: 'bf16' halves their memory (GEMMs accumulate in f32). Defaults to `'f32'`. */
  dtype?: 'f32' | 'bf16';
}

export class LlamaModel {
  readonly dir: string;
  readonly config: ModelConfig;
  readonly device: Device;
  private readonly weights: Map<string, Tensor>;

  private constructor(dir: string, config: ModelConfig, device: Device, weights: Map<string, Tensor>) {
    this.dir = dir;
    this.config = config;
    this.device = device;
    this.weights = weights;
  }

  /** Reads config.json and the safetensors weights (f32/bf16/f16 on disk, f32 in memory). */
  static load(dir: string, opts: LoadModelOptions = {}): LlamaModel {
    const config = readModelConfig(dir);
    const device = resolveDevice(opts.device ?? 'cpu');
    return new LlamaModel(dir, config, device, loadWeights(dir, config, device, opts.dtype ?? 'f32'));
  }

  /** A weight by its checkpoint name; `lm_head.weight` resolves to the embeddings when tied. */
  weight(name: string): Tensor {
    if (name === 'lm_head.weight' && this.config.tieWordEmbeddings) name = 'model.embed_tokens.weight';
    const t = this.weights.get(name);
    if (!t) throw new Error(`internal: no weight ${name}`);
    return t;
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

  /** Names and tensors of every weight (for merging and saving). */
  entries(): IterableIterator<[string, Tensor]> {
    return this.weights.entries();
  }

  dispose(): void {
    for (const t of this.weights.values()) t.dispose();
    this.weights.clear();
  }
}
