/**
 * BitFit (Ben Zaken et al. 2022): only biases train. Not a PEFT method, so the adapter folder is
 * peftkit's own, laid out as PEFT's are: adapter_config.json with peft_type "BITFIT" and
 * target_modules, and adapter_model.safetensors holding base_model.model.<module>.bias [out] for
 * each targeted Linear. Where the base has that bias (Qwen2's q/k/v) the adapter's tensor is the
 * trained bias and replaces it; where it has none (Llama) the bias is new, starting at zero, so
 * a new adapter is the identity. Merging writes the biases into the model.
 */
import { PeftkitError } from '../../errors';
import type { ModelConfig } from '../../model/config';
import type { LlamaModel } from '../../model/llama';
import { baseBackwardInput, baseForward, BaseLinear, LinearModule, LinearSite, ModelAdapter, NormSite, SiteCall } from '../../model/sites';
import { linearModules } from '../../model/weights';
import * as ops from '../../ops';
import { Device, Tensor } from '../../tensor';
import { MergeEdit, ParamAdapter, PeftMethod, readAdapterConfigJson, readAdapterTensors, TrainableParam } from '../method';
import { selectTargets } from '../targets';
import { BitFitConfig, parseBitFitConfig } from './config';

export type { BitFitConfig } from './config';
export { defaultBitFitConfig, parseBitFitConfig } from './config';

/** A Linear whose bias is the adapter's: Y = X·Wᵀ + b. */
export class BiasLayer implements LinearSite {
  readonly b: Tensor;
  readonly db: Tensor;

  constructor(readonly module: LinearModule, init: Float32Array, device: Device) {
    this.b = Tensor.from(init, [module.outFeatures], { device });
    this.db = Tensor.zeros([module.outFeatures], { device });
  }

  forward(Y: Tensor, X: Tensor, base: BaseLinear): void {
    baseForward(base, Y, X, false);
    ops.biasAdd(Y, this.b);
  }

  backward(dX: Tensor | null, dY: Tensor, _X: Tensor, base: BaseLinear, _call: SiteCall): void {
    ops.biasBackward(this.db, dY);
    if (dX) baseBackwardInput(base, dX, dY);
  }
}

const tensorName = (module: string) => `base_model.model.${module}.bias`;

export class BitFitAdapter extends ParamAdapter<BitFitConfig> implements PeftMethod, ModelAdapter {
  readonly config: BitFitConfig;
  readonly source: string | null;
  readonly layers: ReadonlyMap<string, BiasLayer>;

  private constructor(config: BitFitConfig, layers: Map<string, BiasLayer>, source: string | null) {
    super();
    this.config = config;
    this.layers = layers;
    this.source = source;
  }

  static targets(config: BitFitConfig, c: ModelConfig): LinearModule[] {
    return selectTargets(linearModules(c), config.target_modules).filter((m) => m.name !== 'lm_head' || config.target_modules !== 'all-linear');
  }

  /** A new adapter: the base's bias where it has one, else zeros. */
  static create(model: LlamaModel, config: BitFitConfig): BitFitAdapter {
    const layers = new Map<string, BiasLayer>();
    for (const m of BitFitAdapter.targets(config, model.config)) {
      if (m.name === 'lm_head') throw new PeftkitError('E_UNSUPPORTED', 'BitFit on lm_head is not supported for training (the head is fused with the loss); remove lm_head from the target modules');
      const b = model.maybeWeight(`${m.name}.bias`);
      layers.set(m.name, new BiasLayer(m, b ? b.toFloat32Array() : new Float32Array(m.outFeatures), model.device));
    }
    return new BitFitAdapter(config, layers, null);
  }

  static load(dir: string, c: ModelConfig, opts: { device?: Device } = {}): BitFitAdapter {
    const config = parseBitFitConfig(readAdapterConfigJson(dir), `${dir}/adapter_config.json`);
    const targets = BitFitAdapter.targets(config, c);
    const values = readAdapterTensors(dir, new Map(targets.map((m) => [tensorName(m.name), [m.outFeatures]])), 'BITFIT');
    const layers = new Map(targets.map((m) => [m.name, new BiasLayer(m, values.get(tensorName(m.name))!, opts.device ?? 'cpu')]));
    return new BitFitAdapter(config, layers, `${dir}/adapter_model.safetensors`);
  }

  linear(module: string): BiasLayer | undefined {
    return this.layers.get(module);
  }

  norm(): NormSite | undefined {
    return undefined;
  }

  parameters(): TrainableParam[] {
    return [...this.layers.values()].map((l) => ({ name: tensorName(l.module.name), param: l.b, grad: l.db, decay: false }));
  }

  mergeEdits(): MergeEdit[] {
    return [...this.layers.values()].map((l) => ({ tensor: `${l.module.name}.bias`, shape: [l.module.outFeatures], apply: () => l.b.toFloat32Array() }));
  }
}
