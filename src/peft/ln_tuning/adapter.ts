/**
 * LayerNorm tuning (Zhao et al. 2023), PEFT's peft_type "LN_TUNING": the targeted norms'
 * scales train (a copy of each, starting from the base's), everything else stays frozen. On a
 * Llama-family model the norms are RMSNorms: input_layernorm, post_attention_layernorm and the
 * final model.norm. Tensors: base_model.model.<norm>.ln_tuning_layers.weight, as PEFT saves them.
 * Merging writes the trained scales into the model.
 */
import type { ModelConfig } from '../../model/config';
import type { LlamaModel } from '../../model/llama';
import type { LinearSite, ModelAdapter, NormSite } from '../../model/sites';
import { Device, Tensor } from '../../tensor';
import { MergeEdit, ParamAdapter, PeftMethod, readAdapterConfigJson, readAdapterTensors, TrainableParam } from '../method';
import { selectTargets } from '../targets';
import { LnTuningConfig, parseLnTuningConfig } from './config';

export type { LnTuningConfig } from './config';
export { defaultLnTuningConfig, parseLnTuningConfig } from './config';

/** Every RMSNorm of the model by module name. */
export function normModules(c: ModelConfig): string[] {
  const out: string[] = [];
  for (let l = 0; l < c.numLayers; l++) out.push(`model.layers.${l}.input_layernorm`, `model.layers.${l}.post_attention_layernorm`);
  out.push('model.norm');
  return out;
}

const tensorName = (module: string) => `base_model.model.${module}.ln_tuning_layers.weight`;

export class LnTuningAdapter extends ParamAdapter<LnTuningConfig> implements PeftMethod, ModelAdapter {
  readonly config: LnTuningConfig;
  readonly source: string | null;
  readonly norms: ReadonlyMap<string, NormSite & { grad: Tensor }>;

  private constructor(config: LnTuningConfig, norms: Map<string, NormSite & { grad: Tensor }>, source: string | null) {
    super();
    this.config = config;
    this.norms = norms;
    this.source = source;
  }

  static targets(config: LnTuningConfig, c: ModelConfig): string[] {
    const modules = normModules(c).map((name) => ({ name, inFeatures: c.hiddenSize, outFeatures: c.hiddenSize }));
    return selectTargets(modules, config.target_modules).map((m) => m.name);
  }

  private static site(v: Float32Array, device: Device): NormSite & { grad: Tensor } {
    return { weight: Tensor.from(v, [v.length], { device }), grad: Tensor.zeros([v.length], { device }) };
  }

  /** A new adapter: each targeted norm's scale copied from the base (the identity). */
  static create(model: LlamaModel, config: LnTuningConfig): LnTuningAdapter {
    const norms = new Map<string, NormSite & { grad: Tensor }>();
    for (const name of LnTuningAdapter.targets(config, model.config)) {
      norms.set(name, LnTuningAdapter.site(model.weight(`${name}.weight`).toFloat32Array(), model.device));
    }
    return new LnTuningAdapter(config, norms, null);
  }

  static load(dir: string, c: ModelConfig, opts: { device?: Device } = {}): LnTuningAdapter {
    const config = parseLnTuningConfig(readAdapterConfigJson(dir), `${dir}/adapter_config.json`);
    const names = LnTuningAdapter.targets(config, c);
    const values = readAdapterTensors(dir, new Map(names.map((n) => [tensorName(n), [c.hiddenSize]])), 'LN_TUNING');
    const norms = new Map(names.map((n) => [n, LnTuningAdapter.site(values.get(tensorName(n))!, opts.device ?? 'cpu')]));
    return new LnTuningAdapter(config, norms, `${dir}/adapter_model.safetensors`);
  }

  linear(): LinearSite | undefined {
    return undefined;
  }

  norm(module: string): NormSite | undefined {
    return this.norms.get(module);
  }

  parameters(): TrainableParam[] {
    return [...this.norms].map(([module, s]) => ({ name: tensorName(module), param: s.weight, grad: s.grad, decay: false }));
  }

  mergeEdits(): MergeEdit[] {
    return [...this.norms].map(([module, s]) => ({ tensor: `${module}.weight`, shape: s.weight.shape, apply: () => s.weight.toFloat32Array() }));
  }
}
