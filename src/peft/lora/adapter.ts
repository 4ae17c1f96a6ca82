/**
 * A LoRA adapter (and rsLoRA, and DoRA when the config says use_dora): per target module,
 * A [r, in] and B [out, r] with their gradients, PEFT's initializations, and the adapter folder
 * PEFT reads (adapter_config.json + adapter_model.safetensors with names
 * base_model.model.<module>.lora_{A,B}.weight, and .lora_magnitude_vector for DoRA).
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../../errors';
import type { LlamaModel } from '../../model/llama';
import { SafetensorsCheckpoint } from '../../model/safetensors';
import type { LinearModule, ModelAdapter, NormSite, WeightSite } from '../../model/sites';
import { BiasLayer } from '../bitfit/adapter';
import * as ops from '../../ops';
import { Device, Tensor } from '../../tensor';
import { SeededRng } from '../../util/rng';
import { DoraLayer, doraMagnitudeName } from '../dora/layer';
import { checkFinite, MergeEdit, ParamAdapter, PeftMethod, TrainableParam } from '../method';
import { selectTargets } from '../targets';
import { LoraConfig, loraScaling, patternValue, readLoraConfig, writeLoraConfig } from './config';
import { LoraLayer } from './layer';

export type { TrainableParam } from '../method';
export { LoraLayer } from './layer';

const tensorName = (module: string, which: 'A' | 'B') => `base_model.model.${module}.lora_${which}.weight`;
/** A bias of a module without a LoRA layer (bias "all"), as PEFT saves it. */
const biasName = (module: string) => `base_model.model.${module}.bias`;
/** A bias of a LoRA-wrapped module: PEFT's key names the wrapped base layer. Both spellings load. */
const loraBiasName = (module: string) => `base_model.model.${module}.base_layer.bias`;
/** modules_to_save copies: PEFT saves them under the module's own name. */
const EMBED = 'model.embed_tokens', HEAD = 'lm_head';
const savedName = (module: string) => `base_model.model.${module}.weight`;

/** What trains beside the low-rank layers: biases (bias "all"/"lora_only") and modules_to_save copies. */
interface Extras {
  /** Trained biases of modules without a LoRA layer (bias "all"). */
  biases: Map<string, BiasLayer>;
  embed: (WeightSite & { grad: Tensor }) | null;
  head: (WeightSite & { grad: Tensor }) | null;
}

const noExtras = (): Extras => ({ biases: new Map(), embed: null, head: null });

function copySite(v: Float32Array, shape: number[], device: Device): WeightSite & { grad: Tensor } {
  return { weight: Tensor.from(v, shape, { device }), grad: Tensor.zeros(shape, { device }) };
}

/** Whether modules_to_save names `module` (suffix match, as PEFT). */
const saves = (config: LoraConfig, short: 'embed_tokens' | 'lm_head') => (config.modules_to_save ?? []).some((m) => m.split('.').pop() === short);

/** Rank and scaling of one module: rank_pattern / alpha_pattern override the config's r / lora_alpha. */
export function moduleRank(config: LoraConfig, module: string): { r: number; scaling: number } {
  const r = patternValue(config.rank_pattern, module) ?? config.r;
  const alpha = patternValue(config.alpha_pattern, module) ?? config.lora_alpha;
  return { r, scaling: loraScaling({ r, lora_alpha: alpha, use_rslora: config.use_rslora }) };
}

export class LoraAdapter extends ParamAdapter<LoraConfig> implements PeftMethod, ModelAdapter {
  readonly config: LoraConfig;
  readonly layers: ReadonlyMap<string, LoraLayer>;
  /** The adapter_model.safetensors it was loaded from (null for a new adapter), for messages. */
  readonly source: string | null;

  private readonly extras: Extras;

  private constructor(config: LoraConfig, layers: Map<string, LoraLayer>, source: string | null = null, extras: Extras = noExtras()) {
    super();
    this.config = config;
    this.layers = layers;
    this.source = source;
    this.extras = extras;
  }

  /** lora_alpha / r (or / sqrt(r) with rsLoRA): the scaling of modules without a pattern. */
  get scaling(): number {
    return loraScaling(this.config);
  }

  override get dropout(): number {
    return this.config.lora_dropout;
  }

  linear(module: string): LoraLayer | BiasLayer | undefined {
    return this.layers.get(module) ?? this.extras.biases.get(module);
  }

  embedding(): WeightSite | undefined {
    return this.extras.embed ?? undefined;
  }

  head(): WeightSite | undefined {
    return this.extras.head ?? undefined;
  }

  norm(): NormSite | undefined {
    return undefined;
  }

  /**
   * A new adapter on the modules the config targets, initialized as PEFT does. DoRA needs the
   * model: its magnitude starts as the row norms of the base weights.
   */
  static create(modules: readonly LinearModule[], config: LoraConfig, opts: { seed?: number; device?: Device; model?: LlamaModel } = {}): LoraAdapter {
    const rng = new SeededRng(opts.seed ?? 0);
    const layers = new Map<string, LoraLayer>();
    const chosen = selectTargets(modules, config.target_modules, config.exclude_modules, config.layers_to_transform);
    // PEFT writes "all-linear" out as the names it chose, and servers that check an adapter's
    // target_modules against the modules they support (vLLM) expect names: the chosen modules'
    // short names, which select the same modules beside exclude_modules / layers_to_transform.
    if (config.target_modules === 'all-linear') config = { ...config, target_modules: [...new Set(chosen.map((m) => m.name.split('.').pop()!))] };
    if ((config.use_dora || config.bias !== 'none' || config.modules_to_save) && !opts.model) {
      throw new Error('internal: a new DoRA adapter, trained biases or modules_to_save need the model (they start from its weights)');
    }
    const extras = noExtras();
    try {
      for (const m of chosen) {
        const { r, scaling } = moduleRank(config, m.name);
        // A rank past the layer's own (min(in, out)) adds nothing but memory: r = 100000 on a
        // 576-wide model asked for gigabytes and met the OOM killer without a word.
        if (r > Math.min(m.inFeatures, m.outFeatures)) {
          throw new PeftkitError('E_ARG', `r: ${r} exceeds ${m.name}'s rank bound min(in ${m.inFeatures}, out ${m.outFeatures}) = ${Math.min(m.inFeatures, m.outFeatures)}; a larger rank cannot express more`);
        }
        const a = new Float32Array(r * m.inFeatures);
        const b = new Float32Array(m.outFeatures * r);
        if (config.init_lora_weights === 'gaussian') {
          for (let i = 0; i < a.length; i++) a[i] = rng.normal() / r;
        } else {
          // kaiming_uniform(a=√5) as nn.Linear: U(-1/√fan_in, 1/√fan_in)
          const bound = 1 / Math.sqrt(m.inFeatures);
          for (let i = 0; i < a.length; i++) a[i] = rng.uniform(-bound, bound);
          if (config.init_lora_weights === false) {
            const bb = 1 / Math.sqrt(r);
            for (let i = 0; i < b.length; i++) b[i] = rng.uniform(-bb, bb);
          }
        }
        const device = opts.device ?? 'cpu';
        const layer = config.use_dora
          ? DoraLayer.init(m, r, scaling, a, b, opts.model!, device)
          : new LoraLayer(m, r, scaling, a, b, device);
        layers.set(m.name, layer);
      }
      const model = opts.model;
      const device = opts.device ?? 'cpu';
      if (model && config.bias !== 'none') {
        for (const m of modules) {
          const b = model.maybeWeight(`${m.name}.bias`);
          if (!b) continue;
          const l = layers.get(m.name);
          if (l) l.trainBias(b.toFloat32Array());
          else if (config.bias === 'all') extras.biases.set(m.name, new BiasLayer(m, b.toFloat32Array(), device));
        }
      }
      if (model && saves(config, 'embed_tokens')) extras.embed = copySite(model.weight(`${EMBED}.weight`).toFloat32Array(), model.weight(`${EMBED}.weight`).shape, device);
      if (model && saves(config, HEAD)) extras.head = copySite(model.weight(`${HEAD}.weight`).toFloat32Array(), model.weight(`${HEAD}.weight`).shape, device);
    } catch (e) {
      for (const l of layers.values()) l.dispose();
      disposeExtras(extras);
      throw e;
    }
    return new LoraAdapter(config, layers, null, extras);
  }

  /** Loads a PEFT adapter folder and checks it against the model's modules. */
  static load(dir: string, modules: readonly LinearModule[], opts: { device?: Device } = {}): LoraAdapter {
    const config = readLoraConfig(dir);
    const ck = new SafetensorsCheckpoint(dir, 'adapter_model.safetensors');
    const byName = new Map(modules.map((m) => [m.name, m]));
    const file = path.join(dir, 'adapter_model.safetensors');
    const layers = new Map<string, LoraLayer>();
    const device = opts.device ?? 'cpu';
    const extras = noExtras();
    try {
      // Check every tensor's name first, then load in the model's module order.
      const wanted = new Map<string, string>();
      const head = byName.get(HEAD)!;
      const extraShapes = new Map<string, number[]>();
      for (const m of modules) {
        extraShapes.set(biasName(m.name), [m.outFeatures]);
        extraShapes.set(loraBiasName(m.name), [m.outFeatures]);
      }
      if (saves(config, 'embed_tokens')) extraShapes.set(savedName(EMBED), [head.outFeatures, head.inFeatures]);
      if (saves(config, HEAD)) extraShapes.set(savedName(HEAD), [head.outFeatures, head.inFeatures]);
      for (const name of ck.tensors.keys()) {
        if (extraShapes.has(name) && (config.bias !== 'none' || !name.endsWith('.bias'))) continue;
        const mag = /^base_model\.model\.(.+)\.lora_magnitude_vector(?:\.weight)?$/.exec(name);
        if (mag) {
          if (!config.use_dora) throw new PeftkitError('E_CONFIG', `${file}: tensor '${name}' is a DoRA magnitude, but adapter_config.json does not set "use_dora": true`);
          if (!byName.has(mag[1])) throw new PeftkitError('E_CONFIG', `${file}: tensor '${name}' is for module '${mag[1]}', which this model does not have`);
          continue;
        }
        const m = /^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$/.exec(name);
        if (!m) throw new PeftkitError('E_UNSUPPORTED', `${file}: tensor '${name}' is not a LoRA A/B weight or DoRA magnitude`);
        if (!byName.has(m[1])) throw new PeftkitError('E_CONFIG', `${file}: tensor '${name}' is for module '${m[1]}', which this model does not have`);
        if (m[2] === 'A') wanted.set(m[1], name);
        // A B without its A would be dropped silently: the adapter would load without that layer.
        else if (!ck.has(name.replace('.lora_B', '.lora_A'))) throw new PeftkitError('E_MISSING', `${file}: '${name}' has no matching '${name.replace('.lora_B', '.lora_A')}'`);
      }
      for (const mod of modules) {
        const name = wanted.get(mod.name);
        if (!name) continue;
        const bName = name.replace('.lora_A', '.lora_B');
        if (!ck.has(bName)) throw new PeftkitError('E_MISSING', `${file}: '${name}' has no matching '${bName}'`);
        const { r: expected, scaling } = moduleRank(config, mod.name);
        const r = ck.info(name).shape[0];
        if (r !== expected) {
          const why = expected === config.r ? `adapter_config.json says r=${config.r}` : `adapter_config.json's rank_pattern gives it r=${expected}`;
          throw new PeftkitError('E_CONFIG', `${file}: '${name}' has rank ${r} but ${why}`);
        }
        const a = checkFinite(file, name, ck.readFloat32(name, [r, mod.inFeatures]));
        const b = checkFinite(file, bName, ck.readFloat32(bName, [mod.outFeatures, r]));
        if (config.use_dora) {
          const magName = [doraMagnitudeName(mod.name), `${doraMagnitudeName(mod.name)}.weight`].find((n) => ck.has(n));
          if (!magName) throw new PeftkitError('E_MISSING', `${file}: DoRA adapter has no '${doraMagnitudeName(mod.name)}' for '${mod.name}'`);
          const m = checkFinite(file, magName, ck.readFloat32(magName, [mod.outFeatures]));
          layers.set(mod.name, new DoraLayer(mod, r, scaling, a, b, m, device));
        } else {
          layers.set(mod.name, new LoraLayer(mod, r, scaling, a, b, device));
        }
      }
      // The extras are read by name; a bias of a module with a LoRA layer is that layer's.
      for (const [name, shape] of extraShapes) {
        if (!ck.has(name)) {
          if (name.endsWith('.bias')) continue;
          throw new PeftkitError('E_MISSING', `${file}: adapter_config.json's modules_to_save needs '${name}'`);
        }
        const v = checkFinite(file, name, ck.readFloat32(name, shape));
        if (name === savedName(EMBED)) extras.embed = copySite(v, shape, device);
        else if (name === savedName(HEAD)) extras.head = copySite(v, shape, device);
        else {
          const module = name.slice('base_model.model.'.length).replace(/(\.base_layer)?\.bias$/, '');
          const l = layers.get(module);
          if (l) l.trainBias(v);
          else extras.biases.set(module, new BiasLayer(byName.get(module)!, v, device));
        }
      }
    } catch (e) {
      for (const l of layers.values()) l.dispose();
      disposeExtras(extras);
      throw e;
    }
    if (layers.size === 0) throw new PeftkitError('E_FORMAT', `${file}: holds no LoRA weights`);
    return new LoraAdapter(config, layers, file, extras);
  }

  /** Trainable tensors in a fixed order (module order, A before B, then DoRA's magnitude). */
  parameters(): TrainableParam[] {
    const out: TrainableParam[] = [];
    for (const l of this.layers.values()) {
      out.push({ name: tensorName(l.module, 'A'), param: l.A, grad: l.dA });
      out.push({ name: tensorName(l.module, 'B'), param: l.B, grad: l.dB });
      if (l instanceof DoraLayer) out.push({ name: doraMagnitudeName(l.module), param: l.m, grad: l.dm });
      if (l.bias) out.push({ name: loraBiasName(l.module), param: l.bias.b, grad: l.bias.db, decay: false });
    }
    for (const b of this.extras.biases.values()) out.push({ name: biasName(b.module.name), param: b.b, grad: b.db, decay: false });
    if (this.extras.embed) out.push({ name: savedName(EMBED), param: this.extras.embed.weight, grad: this.extras.embed.grad });
    if (this.extras.head) out.push({ name: savedName(HEAD), param: this.extras.head.weight, grad: this.extras.head.grad });
    return out;
  }

  /** PEFT's adapter_config.json (exclude_modules only when set, for older readers). */
  protected override writeConfig(dir: string): void {
    writeLoraConfig(dir, this.config);
  }

  /** W' = W + s·B·A (DoRA: m ⊙ (W + s·B·A) / ‖W + s·B·A‖ per row), as PEFT's merge. */
  mergeEdits(): MergeEdit[] {
    const edits: MergeEdit[] = [...this.layers.values()].map((l) => ({
      tensor: `${l.module}.weight`,
      shape: [l.outFeatures, l.inFeatures],
      apply: (w) => {
        if (!w) throw new Error(`internal: no base weight for ${l.module}`);
        return mergeLoraLayer(l, w, this.source);
      },
    }));
    // Trained biases and module copies replace the base's.
    const replace = (tensor: string, t: Tensor): MergeEdit => ({ tensor, shape: t.shape, apply: () => t.toFloat32Array() });
    for (const l of this.layers.values()) if (l.bias) edits.push(replace(`${l.module}.bias`, l.bias.b));
    for (const b of this.extras.biases.values()) edits.push(replace(`${b.module.name}.bias`, b.b));
    if (this.extras.embed) edits.push(replace(`${EMBED}.weight`, this.extras.embed.weight));
    if (this.extras.head) edits.push(replace(`${HEAD}.weight`, this.extras.head.weight));
    return edits;
  }

  override dispose(): void {
    for (const l of this.layers.values()) l.dispose();
    disposeExtras(this.extras);
  }
}

/** W + s·B·A (then DoRA's rescaling), in f32; a sum out of f32 range is refused, naming the module. */
function mergeLoraLayer(l: LoraLayer, w: Float32Array, source: string | null): Float32Array {
  const t = Tensor.from(w, [l.outFeatures, l.inFeatures]);
  try {
    const A = l.A.device === 'cpu' ? l.A : Tensor.from(l.A.toFloat32Array(), l.A.shape);
    const B = l.B.device === 'cpu' ? l.B : Tensor.from(l.B.toFloat32Array(), l.B.shape);
    ops.gemm(t, B, A, { alpha: l.scaling, beta: 1 });
    if (A !== l.A) A.dispose();
    if (B !== l.B) B.dispose();
    const out = t.toFloat32Array();
    if (l instanceof DoraLayer) l.rescaleMerged(out);
    for (let i = 0; i < out.length; i++) {
      if (!Number.isFinite(out[i])) {
        throw new PeftkitError(
          'E_NAN',
          `${source ?? 'adapter'}: merging into '${l.module}.weight' gives ${out[i]} at element ${i}: ` +
            `scaling ${l.scaling} × B·A (or the base weight) is out of f32 range, expected an adapter whose delta is finite`,
        );
      }
    }
    return out;
  } finally {
    t.dispose();
  }
}

function disposeExtras(e: Extras): void {
  for (const b of e.biases.values()) {
    b.b.dispose();
    b.db.dispose();
  }
  for (const s of [e.embed, e.head]) {
    s?.weight.dispose();
    s?.grad.dispose();
  }
}

export function isAdapterDir(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'adapter_config.json'));
}
