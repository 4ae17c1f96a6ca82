/**
 * A LoRA adapter: per target module, A [r, in] and B [out, r] with their gradients, PEFT's
 * initializations, and the adapter folder PEFT reads (adapter_config.json +
 * adapter_model.safetensors with names base_model.model.<module>.lora_{A,B}.weight).
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';
import { writeDirAtomic } from '../io/atomic';
import { SafetensorsCheckpoint, writeSafetensors } from '../model/safetensors';
import { Device, Tensor } from '../tensor';
import { SeededRng } from '../train/rng';
import { LoraConfig, loraScaling, readLoraConfig, writeLoraConfig } from './lora_config';
import { LinearModule, selectTargets } from './targets';

export interface LoraLayer {
  module: string;
  inFeatures: number;
  outFeatures: number;
  A: Tensor;
  B: Tensor;
  dA: Tensor;
  dB: Tensor;
}

/** One trainable tensor with its gradient, for the optimizer. */
export interface TrainableParam {
  name: string;
  param: Tensor;
  grad: Tensor;
}

const tensorName = (module: string, which: 'A' | 'B') => `base_model.model.${module}.lora_${which}.weight`;

export class LoraAdapter {
  readonly config: LoraConfig;
  readonly layers: ReadonlyMap<string, LoraLayer>;
  /** The adapter_model.safetensors it was loaded from (null for a new adapter), for messages. */
  readonly source: string | null;

  private constructor(config: LoraConfig, layers: Map<string, LoraLayer>, source: string | null = null) {
    this.config = config;
    this.layers = layers;
    this.source = source;
  }

  /** lora_alpha / r (or / sqrt(r) with rsLoRA). */
  get scaling(): number {
    return loraScaling(this.config);
  }

  /** A new adapter on the modules the config targets, initialized as PEFT does. */
  static create(modules: readonly LinearModule[], config: LoraConfig, opts: { seed?: number; device?: Device } = {}): LoraAdapter {
    const rng = new SeededRng(opts.seed ?? 0);
    const r = config.r;
    const layers = new Map<string, LoraLayer>();
    const chosen = selectTargets(modules, config.target_modules, config.exclude_modules, config.layers_to_transform);
    // PEFT writes "all-linear" out as the names it chose, and servers that check an adapter's
    // target_modules against the modules they support (vLLM) expect names: the chosen modules'
    // short names, which select the same modules beside exclude_modules / layers_to_transform.
    if (config.target_modules === 'all-linear') config = { ...config, target_modules: [...new Set(chosen.map((m) => m.name.split('.').pop()!))] };
    for (const m of chosen) {
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
      layers.set(m.name, LoraAdapter.layer(m, r, a, b, opts.device ?? 'cpu'));
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
    try {
      // Check every tensor's name first, then load in the model's module order.
      const wanted = new Map<string, string>();
      for (const name of ck.tensors.keys()) {
        const m = /^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$/.exec(name);
        if (!m) throw new PeftkitError('E_UNSUPPORTED', `${file}: tensor '${name}' is not a LoRA A/B weight (only plain LoRA adapters are supported)`);
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
        const r = ck.info(name).shape[0];
        if (r !== config.r) throw new PeftkitError('E_CONFIG', `${file}: '${name}' has rank ${r} but adapter_config.json says r=${config.r}`);
        const a = checkFinite(file, name, ck.readFloat32(name, [r, mod.inFeatures]));
        const b = checkFinite(file, bName, ck.readFloat32(bName, [mod.outFeatures, r]));
        layers.set(mod.name, LoraAdapter.layer(mod, r, a, b, opts.device ?? 'cpu'));
      }
    } catch (e) {
      for (const l of layers.values()) LoraAdapter.disposeLayer(l);
      throw e;
    }
    if (layers.size === 0) throw new PeftkitError('E_FORMAT', `${file}: holds no LoRA weights`);
    return new LoraAdapter(config, layers, file);
  }

  private static layer(m: LinearModule, r: number, a: Float32Array, b: Float32Array, device: Device): LoraLayer {
    return {
      module: m.name,
      inFeatures: m.inFeatures,
      outFeatures: m.outFeatures,
      A: Tensor.from(a, [r, m.inFeatures], { device }),
      B: Tensor.from(b, [m.outFeatures, r], { device }),
      dA: Tensor.zeros([r, m.inFeatures], { device }),
      dB: Tensor.zeros([m.outFeatures, r], { device }),
    };
  }

  private static disposeLayer(l: LoraLayer): void {
    for (const t of [l.A, l.B, l.dA, l.dB]) t.dispose();
  }

  /** Trainable tensors in a fixed order (module order, A before B). */
  parameters(): TrainableParam[] {
    const out: TrainableParam[] = [];
    for (const l of this.layers.values()) {
      out.push({ name: tensorName(l.module, 'A'), param: l.A, grad: l.dA });
      out.push({ name: tensorName(l.module, 'B'), param: l.B, grad: l.dB });
    }
    return out;
  }

  zeroGrad(): void {
    for (const l of this.layers.values()) {
      // In place: a host buffer per tensor would leave the whole gradient's size of garbage each step.
      l.dA.zero();
      l.dB.zero();
    }
  }

  /** The adapter's tensors by their PEFT names (copied to host f32). */
  stateDict(): Map<string, Float32Array> {
    const out = new Map<string, Float32Array>();
    for (const p of this.parameters()) out.set(p.name, p.param.toFloat32Array());
    return out;
  }

  /** Writes a PEFT adapter folder atomically (the folder appears complete or not at all). */
  save(dir: string, extra: Partial<LoraConfig> = {}): void {
    writeDirAtomic(dir, (tmp) => this.writeFiles(tmp, extra));
  }

  /** Writes adapter_config.json and adapter_model.safetensors into an existing folder. */
  writeFiles(dir: string, extra: Partial<LoraConfig> = {}): void {
    const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (const p of this.parameters()) tensors[p.name] = { dtype: 'F32', shape: p.param.shape, data: p.param.toFloat32Array() };
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors);
    writeLoraConfig(dir, { ...this.config, ...extra });
  }

  /** Overwrites A and B from another adapter folder with the same modules and ranks (resume). */
  loadWeightsFrom(dir: string): void {
    const ck = new SafetensorsCheckpoint(dir, 'adapter_model.safetensors');
    for (const p of this.parameters()) p.param.write(checkFinite(ck.source, p.name, ck.readFloat32(p.name, p.param.shape)));
  }

  dispose(): void {
    for (const l of this.layers.values()) LoraAdapter.disposeLayer(l);
  }
}

/** A NaN or an infinity in saved LoRA weights would poison every output: refused at load, with its place. */
function checkFinite(file: string, name: string, v: Float32Array): Float32Array {
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i])) throw new PeftkitError('E_FORMAT', `${file}: tensor '${name}' element ${i} is ${v[i]}, expected finite values`);
  }
  return v;
}

export function isAdapterDir(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'adapter_config.json'));
}
