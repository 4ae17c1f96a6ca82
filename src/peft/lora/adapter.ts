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
import { SafetensorsCheckpoint, writeSafetensors } from '../../model/safetensors';
import type { LinearModule, ModelAdapter, NormSite } from '../../model/sites';
import * as ops from '../../ops';
import { Device, Tensor } from '../../tensor';
import { SeededRng } from '../../util/rng';
import { DoraLayer, doraMagnitudeName } from '../dora/layer';
import { checkFinite, loadParamsFrom, MergeEdit, PeftMethod, saveAtomically, stateDictOf, TrainableParam } from '../method';
import { selectTargets } from '../targets';
import { LoraConfig, loraScaling, patternValue, readLoraConfig, writeLoraConfig } from './config';
import { LoraLayer } from './layer';

export type { TrainableParam } from '../method';
export { LoraLayer } from './layer';

const tensorName = (module: string, which: 'A' | 'B') => `base_model.model.${module}.lora_${which}.weight`;

/** Rank and scaling of one module: rank_pattern / alpha_pattern override the config's r / lora_alpha. */
function moduleRank(config: LoraConfig, module: string): { r: number; scaling: number } {
  const r = patternValue(config.rank_pattern, module) ?? config.r;
  const alpha = patternValue(config.alpha_pattern, module) ?? config.lora_alpha;
  return { r, scaling: loraScaling({ r, lora_alpha: alpha, use_rslora: config.use_rslora }) };
}

export class LoraAdapter implements PeftMethod, ModelAdapter {
  readonly peftType = 'LORA';
  readonly config: LoraConfig;
  readonly layers: ReadonlyMap<string, LoraLayer>;
  /** The adapter_model.safetensors it was loaded from (null for a new adapter), for messages. */
  readonly source: string | null;

  private constructor(config: LoraConfig, layers: Map<string, LoraLayer>, source: string | null = null) {
    this.config = config;
    this.layers = layers;
    this.source = source;
  }

  /** lora_alpha / r (or / sqrt(r) with rsLoRA): the scaling of modules without a pattern. */
  get scaling(): number {
    return loraScaling(this.config);
  }

  get dropout(): number {
    return this.config.lora_dropout;
  }

  linear(module: string): LoraLayer | undefined {
    return this.layers.get(module);
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
    if (config.use_dora && !opts.model) throw new Error('internal: a new DoRA adapter needs the model (its magnitude is the base weights\' norm)');
    try {
      for (const m of chosen) {
        const { r, scaling } = moduleRank(config, m.name);
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
    } catch (e) {
      for (const l of layers.values()) l.dispose();
      throw e;
    }
    return new LoraAdapter(config, layers);
  }

  /** Loads a PEFT adapter folder and checks it against the model's modules. */
  static load(dir: string, modules: readonly LinearModule[], opts: { device?: Device } = {}): LoraAdapter {
    const config = readLoraConfig(dir);
    const ck = new SafetensorsCheckpoint(dir, 'adapter_model.safetensors');
    const byName = new Map(modules.map((m) => [m.name, m]));
    const file = path.join(dir, 'adapter_model.safetensors');
    const layers = new Map<string, LoraLayer>();
    const device = opts.device ?? 'cpu';
    try {
      // Check every tensor's name first, then load in the model's module order.
      const wanted = new Map<string, string>();
      for (const name of ck.tensors.keys()) {
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
    } catch (e) {
      for (const l of layers.values()) l.dispose();
      throw e;
    }
    if (layers.size === 0) throw new PeftkitError('E_FORMAT', `${file}: holds no LoRA weights`);
    return new LoraAdapter(config, layers, file);
  }

  /** Trainable tensors in a fixed order (module order, A before B, then DoRA's magnitude). */
  parameters(): TrainableParam[] {
    const out: TrainableParam[] = [];
    for (const l of this.layers.values()) {
      out.push({ name: tensorName(l.module, 'A'), param: l.A, grad: l.dA });
      out.push({ name: tensorName(l.module, 'B'), param: l.B, grad: l.dB });
      if (l instanceof DoraLayer) out.push({ name: doraMagnitudeName(l.module), param: l.m, grad: l.dm });
    }
    return out;
  }

  zeroGrad(): void {
    // In place: a host buffer per tensor would leave the whole gradient's size of garbage each step.
    for (const p of this.parameters()) p.grad.zero();
  }

  /** The adapter's tensors by their PEFT names (copied to host f32). */
  stateDict(): Map<string, Float32Array> {
    return stateDictOf(this.parameters());
  }

  /** Writes a PEFT adapter folder atomically (the folder appears complete or not at all). */
  save(dir: string): void {
    saveAtomically(this, dir);
  }

  /** Writes adapter_config.json and adapter_model.safetensors into an existing folder. */
  writeFiles(dir: string): void {
    const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (const p of this.parameters()) tensors[p.name] = { dtype: 'F32', shape: p.param.shape, data: p.param.toFloat32Array() };
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors);
    writeLoraConfig(dir, this.config);
  }

  /** Overwrites A and B (and DoRA's magnitude) from another adapter folder with the same modules and ranks (resume). */
  loadWeightsFrom(dir: string): void {
    loadParamsFrom(this.parameters(), dir);
  }

  /** W' = W + s·B·A (DoRA: m ⊙ (W + s·B·A) / ‖W + s·B·A‖ per row), as PEFT's merge. */
  mergeEdits(): MergeEdit[] {
    return [...this.layers.values()].map((l) => ({
      tensor: `${l.module}.weight`,
      shape: [l.outFeatures, l.inFeatures],
      apply: (w) => {
        if (!w) throw new Error(`internal: no base weight for ${l.module}`);
        return mergeLoraLayer(l, w, this.source);
      },
    }));
  }

  dispose(): void {
    for (const l of this.layers.values()) l.dispose();
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

export function isAdapterDir(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'adapter_config.json'));
}
