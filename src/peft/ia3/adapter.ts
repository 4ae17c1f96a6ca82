/**
 * IA3 (Liu et al. 2022, "(IA)³"), PEFT's peft_type "IA3": a learned vector l per targeted Linear
 * that rescales its output (attention keys and values: Y = (X·Wᵀ + b) ⊙ l, l [out, 1] on disk) or,
 * for the `feedforward_modules`, its input (Y = (X ⊙ l)·Wᵀ + b, l [1, in]). l starts at ones, so
 * a new adapter is the identity. Tensors: base_model.model.<module>.ia3_l, as PEFT saves them.
 */
import type { ModelConfig } from '../../model/config';
import { baseBackwardInput, baseForward, BaseLinear, LinearModule, LinearSite, ModelAdapter, NormSite, SiteCall } from '../../model/sites';
import { linearModules } from '../../model/weights';
import * as ops from '../../ops';
import { Device, Tensor } from '../../tensor';
import { MergeEdit, ParamAdapter, PeftMethod, readAdapterConfigJson, readAdapterTensors, TrainableParam } from '../method';
import { selectTargets } from '../targets';
import { Ia3Config, parseIa3Config } from './config';

export type { Ia3Config } from './config';
export { defaultIa3Config, parseIa3Config } from './config';

/** One rescaled Linear. */
export class Ia3Layer implements LinearSite {
  readonly l: Tensor;
  readonly dl: Tensor;
  /** The unscaled output X·Wᵀ + b of the last forward (output scaling only), kept for dl. */
  private zStore: Tensor | null = null;

  constructor(readonly module: LinearModule, readonly feedforward: boolean, init: Float32Array, device: Device) {
    const n = feedforward ? module.inFeatures : module.outFeatures;
    this.l = Tensor.from(init, [n], { device });
    this.dl = Tensor.zeros([n], { device });
  }

  /** The shape PEFT stores: [1, in] for input scaling, [out, 1] for output scaling. */
  get fileShape(): number[] {
    return this.feedforward ? [1, this.module.inFeatures] : [this.module.outFeatures, 1];
  }

  private z(rows: number): Tensor {
    const n = rows * this.module.outFeatures;
    if (!this.zStore || this.zStore.numel < n) {
      this.zStore?.dispose();
      this.zStore = Tensor.empty([n], { device: this.l.device });
    }
    return this.zStore.view(0, [rows, this.module.outFeatures]);
  }

  forward(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    if (this.feedforward) {
      const Xs = call.scratch.get(0, X.shape);
      ops.mulCols(Xs, X, this.l);
      baseForward(base, Y, Xs);
    } else {
      const Z = this.z(X.shape[0]);
      baseForward(base, Z, X);
      ops.mulCols(Y, Z, this.l);
    }
  }

  /** Output scaling: Y (the base output) ⊙ l in place; input scaling needs its own product (forward). */
  forwardOnBase(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    if (this.feedforward) this.forward(Y, X, base, call);
    else ops.mulCols(Y, Y, this.l);
  }

  backward(dX: Tensor | null, dY: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    if (this.feedforward) {
      // G = dY·W is ∂L/∂(X ⊙ l): dX = G ⊙ l, dl = Σ_rows G ⊙ X.
      const G = call.scratch.get(0, X.shape);
      baseBackwardInput(base, G, dY);
      ops.mulColsBackward(dX, this.dl, G, X, this.l);
    } else {
      const dZ = call.scratch.get(0, dY.shape);
      ops.mulColsBackward(dZ, this.dl, dY, this.z(X.shape[0]), this.l);
      if (dX) baseBackwardInput(base, dX, dZ);
    }
  }

  disposeStore(): void {
    this.zStore?.dispose();
    this.zStore = null;
  }
}

const tensorName = (module: string) => `base_model.model.${module}.ia3_l`;

export class Ia3Adapter extends ParamAdapter<Ia3Config> implements PeftMethod, ModelAdapter {
  readonly config: Ia3Config;
  readonly source: string | null;
  readonly layers: ReadonlyMap<string, Ia3Layer>;

  private constructor(config: Ia3Config, layers: Map<string, Ia3Layer>, source: string | null) {
    super();
    this.config = config;
    this.layers = layers;
    this.source = source;
  }

  /** The targeted modules, each with whether it is a feedforward (input-scaled) one. */
  static targets(config: Ia3Config, modules: readonly LinearModule[]): Array<[LinearModule, boolean]> {
    const chosen = selectTargets(modules, config.target_modules);
    const ff = new Set(selectTargets(modules, config.feedforward_modules).map((m) => m.name));
    return chosen.map((m) => [m, ff.has(m.name)]);
  }

  static create(modelConfig: ModelConfig, config: Ia3Config, opts: { device?: Device } = {}): Ia3Adapter {
    const layers = new Map<string, Ia3Layer>();
    for (const [m, ff] of Ia3Adapter.targets(config, linearModules(modelConfig))) {
      const n = ff ? m.inFeatures : m.outFeatures;
      // init_ia3_weights false: PEFT draws randn (a debugging init); ones are the method.
      layers.set(m.name, new Ia3Layer(m, ff, new Float32Array(n).fill(1), opts.device ?? 'cpu'));
    }
    return new Ia3Adapter(config, layers, null);
  }

  static load(dir: string, modelConfig: ModelConfig, opts: { device?: Device } = {}): Ia3Adapter {
    const file = `${dir}/adapter_config.json`;
    const config = parseIa3Config(readAdapterConfigJson(dir), file);
    const targets = Ia3Adapter.targets(config, linearModules(modelConfig));
    const expected = new Map(targets.map(([m, ff]) => [tensorName(m.name), ff ? [1, m.inFeatures] : [m.outFeatures, 1]]));
    const values = readAdapterTensors(dir, expected, 'IA3');
    const layers = new Map<string, Ia3Layer>();
    for (const [m, ff] of targets) layers.set(m.name, new Ia3Layer(m, ff, values.get(tensorName(m.name))!, opts.device ?? 'cpu'));
    return new Ia3Adapter(config, layers, `${dir}/adapter_model.safetensors`);
  }

  linear(module: string): Ia3Layer | undefined {
    return this.layers.get(module);
  }

  norm(): NormSite | undefined {
    return undefined;
  }

  parameters(): TrainableParam[] {
    return [...this.layers.values()].map((l) => ({ name: tensorName(l.module.name), param: l.l.view(0, l.fileShape), grad: l.dl.view(0, l.fileShape) }));
  }

  /** Output scaling: W ⊙ l per row (and the bias); input scaling: W ⊙ l per column. */
  mergeEdits(): MergeEdit[] {
    const edits: MergeEdit[] = [];
    for (const l of this.layers.values()) {
      const { name, inFeatures: I, outFeatures: O } = l.module;
      const v = l.l.toFloat32Array();
      edits.push({
        tensor: `${name}.weight`, shape: [O, I],
        apply: (w) => {
          const out = Float32Array.from(w!);
          for (let o = 0; o < O; o++) for (let i = 0; i < I; i++) out[o * I + i] *= l.feedforward ? v[i] : v[o];
          return out;
        },
      });
      if (!l.feedforward) edits.push({ tensor: `${name}.bias`, shape: [O], ifPresent: true, apply: (b) => b!.map((x, o) => x * v[o]) });
    }
    return edits;
  }

  override dispose(): void {
    // parameters() are views in the file's shape: the layer's own tensors are freed.
    for (const l of this.layers.values()) {
      l.disposeStore();
      l.l.dispose();
      l.dl.dispose();
    }
  }
}
