/**
 * Prompt tuning (Lester et al. 2021), PEFT's PROMPT_TUNING: n trained embeddings before every
 * sequence's own, run as PEFT runs a prompt-tuned model — one causal sequence of n + T positions
 * (the virtual ones first, at positions 0..n-1, their labels -100). In generation they are
 * computed once per request into the KV cache. File: prompt_embeddings [n, hidden], as PEFT saves it.
 */
import * as path from 'path';
import { PeftkitError } from '../../errors';
import type { ModelConfig } from '../../model/config';
import type { LlamaModel } from '../../model/llama';
import type { LinearSite, ModelAdapter, NormSite, WeightSite } from '../../model/sites';
import { Device, Tensor } from '../../tensor';
import { SeededRng } from '../../util/rng';
import { MergeEdit, ParamAdapter, PeftMethod, readAdapterConfigJson, readAdapterTensors, TrainableParam } from '../method';
import { parsePromptTuningConfig, PromptTuningConfig } from './config';

export type { PromptTuningConfig } from './config';
export { defaultPromptTuningConfig, parsePromptTuningConfig } from './config';

const NAME = 'prompt_embeddings';

export class PromptTuningAdapter extends ParamAdapter<PromptTuningConfig> implements PeftMethod, ModelAdapter {
  readonly config: PromptTuningConfig;
  readonly source: string | null;
  readonly site: WeightSite & { grad: Tensor };

  private constructor(config: PromptTuningConfig, v: Float32Array, device: Device, source: string | null) {
    super();
    this.config = config;
    this.source = source;
    const shape = [config.num_virtual_tokens, config.token_dim];
    this.site = { weight: Tensor.from(v, shape, { device }), grad: Tensor.zeros(shape, { device }) };
  }

  /**
   * A new prompt, as PEFT starts one: RANDOM N(0, 1); SAMPLE_VOCAB the embeddings of random
   * vocabulary tokens; TEXT those of `initIds` (the init text's token ids, which the caller
   * encodes with the model's tokenizer), repeated or cut to n.
   */
  static create(model: LlamaModel, config: PromptTuningConfig, opts: { seed?: number; initIds?: readonly number[] } = {}): PromptTuningAdapter {
    const rng = new SeededRng(opts.seed ?? 0);
    const n = config.num_virtual_tokens, C = config.token_dim;
    let v: Float32Array;
    if (config.prompt_tuning_init === 'RANDOM') {
      v = Float32Array.from({ length: n * C }, () => rng.normal());
    } else {
      let ids: number[];
      if (config.prompt_tuning_init === 'SAMPLE_VOCAB') {
        ids = Array.from({ length: n }, () => rng.nextU32() % model.config.vocabSize);
      } else {
        const text = opts.initIds ?? [];
        if (!text.length) throw new PeftkitError('E_ARG', 'prompt_tuning_init TEXT: the init text encodes to no tokens (give a non-empty prompt_tuning_init_text, and a model folder with tokenizer.json)');
        ids = Array.from({ length: n }, (_, i) => text[i % text.length]);
      }
      const table = model.weight('model.embed_tokens.weight').toFloat32Array();
      v = new Float32Array(n * C);
      ids.forEach((id, i) => v.set(table.subarray(id * C, (id + 1) * C), i * C));
    }
    return new PromptTuningAdapter(config, v, model.device, null);
  }

  static load(dir: string, c: ModelConfig, opts: { device?: Device } = {}): PromptTuningAdapter {
    const config = parsePromptTuningConfig(readAdapterConfigJson(dir), path.join(dir, 'adapter_config.json'), c);
    const v = readAdapterTensors(dir, new Map([[NAME, [config.num_virtual_tokens, config.token_dim]]]), 'PROMPT_TUNING').get(NAME)!;
    return new PromptTuningAdapter(config, v, opts.device ?? 'cpu', path.join(dir, 'adapter_model.safetensors'));
  }

  linear(): LinearSite | undefined {
    return undefined;
  }

  norm(): NormSite | undefined {
    return undefined;
  }

  virtualTokens(): WeightSite {
    return this.site;
  }

  parameters(): TrainableParam[] {
    return [{ name: NAME, param: this.site.weight, grad: this.site.grad }];
  }

  mergeEdits(): MergeEdit[] {
    throw new PeftkitError('E_UNSUPPORTED', 'prompt tuning cannot be merged: its virtual tokens are extra positions of every sequence, which no weight of the model holds; keep the adapter unmerged');
  }
}
