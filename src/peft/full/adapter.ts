/**
 * Full fine-tuning as a method on the seam: every weight of the model trains — the embeddings,
 * each norm, each Linear weight and bias, the head (tied embeddings are one parameter, whose
 * gradient sums the lookup's and the head's) — or those whose checkpoint name matches
 * `trainable`. The parameters ARE the model's f32 weights (no copy: the optimizer updates the
 * model in place), so the model must be loaded dense f32; with bf16 compute (`compute: 'bf16'`)
 * the products read them rounded to bf16 while the f32 masters take the updates, as autocast.
 * The output is a Hugging Face model folder (config.json, safetensors shards, tokenizer files).
 */
import * as path from 'path';
import { PeftkitError } from '../../errors';
import { readConfigJson, writeModelFiles } from '../../model/hf_folder';
import type { LlamaModel } from '../../model/llama';
import { SafetensorsCheckpoint } from '../../model/safetensors';
import { baseBackwardInput, BaseLinear, LinearSite, ModelAdapter, NormSite, SiteCall, WeightSite } from '../../model/sites';
import { expectedWeights } from '../../model/weights';
import * as ops from '../../ops';
import { Tensor } from '../../tensor';
import { checkFinite, decays, MergeEdit, PeftMethod, saveAtomically, stateDictOf, TrainableParam } from '../method';

export interface FullConfig {
  /** Not a PEFT type: the output is a model folder, not an adapter. */
  peft_type: 'FULL';
  /** A regular expression: only the weights whose checkpoint name it matches (anywhere) train. Defaults to `null` (every weight). */
  trainable: string | null;
}

/** A Linear whose weight (and bias) train: dW += dYᵀ·X, db += Σ dY, dX = dY·W. */
class TrainedLinear implements LinearSite {
  constructor(readonly W: Tensor, readonly dW: Tensor | null, readonly b: Tensor | undefined, readonly db: Tensor | null) {}

  forward(Y: Tensor, X: Tensor, base: BaseLinear): void {
    ops.gemm(Y, X, this.W, { transB: true, compute: base.compute });
    if (this.b) ops.biasAdd(Y, this.b);
  }

  backward(dX: Tensor | null, dY: Tensor, X: Tensor, base: BaseLinear, _call: SiteCall): void {
    if (this.dW) ops.gemm(this.dW, dY, X, { transA: true, beta: 1, compute: base.compute });
    if (this.db) ops.biasBackward(this.db, dY);
    if (dX) baseBackwardInput(base, dX, dY);
  }
}

/** The regular expression of `trainable` (null: every weight), or E_ARG naming it. */
export function trainableRegExp(trainable: string | null): RegExp | null {
  try {
    return trainable === null ? null : new RegExp(trainable);
  } catch (e) {
    throw new PeftkitError('E_ARG', `trainable: ${JSON.stringify(trainable)} is not a regular expression (${(e as Error).message})`);
  }
}

export class FullFineTune implements PeftMethod, ModelAdapter {
  readonly peftType = 'FULL';
  readonly config: FullConfig;
  readonly source: string | null = null;
  readonly dropout = 0;
  private readonly model: LlamaModel;
  private readonly params: TrainableParam[] = [];
  private readonly grads = new Map<string, Tensor>();
  private readonly linears = new Map<string, TrainedLinear>();

  constructor(model: LlamaModel, config: FullConfig) {
    if (model.isQuantized) {
      throw new PeftkitError('E_UNSUPPORTED', `${model.dir}: full fine-tuning needs dense weights, but the model is kept quantized (leave out quantize, or fine-tune a dense copy)`);
    }
    this.model = model;
    this.config = config;
    const re = trainableRegExp(config.trainable);
    for (const name of expectedWeights(model.config).keys()) {
      if (re && !re.test(name)) continue;
      const w = model.weight(name);
      if (w.dtype !== 'f32') {
        throw new PeftkitError('E_UNSUPPORTED', `${model.dir}: full fine-tuning keeps f32 master weights, but '${name}' is held in ${w.dtype} (load the model with dtype f32; bf16 compute is compute: 'bf16')`);
      }
      const grad = Tensor.zeros(w.shape, { device: model.device });
      this.grads.set(name, grad);
      this.params.push({ name, param: w, grad, decay: decays(name) });
    }
    if (this.params.length === 0) throw new PeftkitError('E_ARG', `trainable: ${JSON.stringify(config.trainable)} matches no weight of ${model.dir} (names such as 'model.layers.0.self_attn.q_proj.weight')`);
  }

  private grad(name: string): Tensor | null {
    return this.grads.get(name) ?? null;
  }

  linear(module: string): LinearSite | undefined {
    // The head trains through head(): its product is fused with the loss.
    if (module === 'lm_head') return undefined;
    let s = this.linears.get(module);
    if (s) return s;
    const dW = this.grad(`${module}.weight`);
    const db = this.grad(`${module}.bias`);
    if (!dW && !db) return undefined;
    const w = this.model.linear(`${module}.weight`);
    if (!('W' in w)) return undefined;
    s = new TrainedLinear(w.W, dW, this.model.maybeWeight(`${module}.bias`), db);
    this.linears.set(module, s);
    return s;
  }

  norm(module: string): NormSite | undefined {
    const grad = this.grad(`${module}.weight`);
    return grad ? { weight: this.model.weight(`${module}.weight`), grad } : undefined;
  }

  embedding(): WeightSite | undefined {
    const grad = this.grad('model.embed_tokens.weight');
    return grad ? { weight: this.model.weight('model.embed_tokens.weight'), grad } : undefined;
  }

  head(): WeightSite | undefined {
    // Tied: the head is the embedding matrix, one parameter with one gradient.
    const name = this.model.config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    const grad = this.grad(name);
    return grad ? { weight: this.model.weight(name), grad } : undefined;
  }

  parameters(): TrainableParam[] {
    return this.params;
  }

  zeroGrad(): void {
    for (const g of this.grads.values()) g.zero();
  }

  stateDict(): Map<string, Float32Array> {
    return stateDictOf(this.params);
  }

  save(dir: string): void {
    saveAtomically(this, dir);
  }

  /** The whole model as a Hugging Face folder: every weight (trained or not), config.json, tokenizer files. */
  writeFiles(dir: string): void {
    const tensors: Record<string, { dtype: 'F32' | 'BF16'; shape: number[]; data: Float32Array | Uint16Array }> = {};
    for (const name of expectedWeights(this.model.config).keys()) {
      const w = this.model.weight(name);
      tensors[name] = w.dtype === 'bf16' ? { dtype: 'BF16', shape: w.shape, data: w.toArray() as Uint16Array } : { dtype: 'F32', shape: w.shape, data: w.toFloat32Array() };
    }
    const config = readConfigJson(this.model.dir);
    config.torch_dtype = 'float32';
    if ('dtype' in config) config.dtype = 'float32';
    writeModelFiles(dir, { source: this.model.dir, config, tensors });
  }

  /** The trained weights from a model folder this method wrote (a checkpoint: resume). */
  loadWeightsFrom(dir: string): void {
    const ck = new SafetensorsCheckpoint(dir);
    for (const p of this.params) p.param.write(checkFinite(path.join(dir, 'model.safetensors'), p.name, ck.readFloat32(p.name, p.param.shape)));
  }

  mergeEdits(): MergeEdit[] {
    throw new PeftkitError('E_UNSUPPORTED', 'full fine-tuning writes the whole model: there is no adapter to merge');
  }

  /** The weights belong to the model: only the gradients are freed. */
  dispose(): void {
    for (const g of this.grads.values()) g.dispose();
    this.grads.clear();
  }
}
