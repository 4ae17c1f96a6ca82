/**
 * A weighted combination of LoRA adapters saved as a new adapter, as PEFT's
 * LoraModel.add_weighted_adapter builds it (tuners/lora/model.py):
 *  - 'linear' (every adapter of the same r): per module, with c_i = √(w_i·s_i) (s_i the adapter's
 *    scaling there), A = Σ c_i·A_i and B = Σ c_i·B_i (_generalized_task_arithmetic_weighted_adapter).
 *    The new ΔW = s·B·A holds the cross terms c_i·c_j·B_i·A_j too: it is PEFT's approximation of
 *    Σ w_i·ΔW_i, exact for one adapter.
 *  - 'cat': ranks concatenated, A = [w_1·s_1·A_1; w_2·s_2·A_2; ...], B = [B_1 | B_2 | ...], so
 *    ΔW = s·Σ w_i·s_i·B_i·A_i exactly; a module only some adapters have is zero-padded to the total rank.
 * The new adapter_config.json is the first adapter's with r = the new rank, lora_alpha = r (s = 1;
 * √r with use_rslora, as PEFT's config gives it) and target_modules their union (lists), or
 * "(re1)|(re2)" (regular expressions). A module missing from an adapter takes only the others.
 */
import * as path from 'path';
import { PeftkitError } from '../../errors';
import { writeDirAtomic } from '../../io/atomic';
import { SafetensorsCheckpoint, TensorToWrite, writeSafetensors } from '../../model/safetensors';
import { checkFinite } from '../method';
import { moduleRank } from './adapter';
import { LoraConfig, readLoraConfig, writeLoraConfig } from './config';

export interface WeightedAdapterOptions {
  /** LoRA adapter folders to combine (PEFT's `adapters`). */
  adapters: readonly string[];
  /** One weight per adapter (PEFT's `weights`). */
  weights: readonly number[];
  /** The new adapter folder, written atomically. */
  out: string;
  /** 'linear' (same r) or 'cat' (ranks concatenated). With one adapter PEFT uses 'linear' whatever is asked. Defaults to `'linear'`. */
  combinationType?: 'linear' | 'cat';
}

interface Loaded {
  dir: string;
  config: LoraConfig;
  /** Per module: A [r, in], B [out, r] as float64, and its scaling. */
  layers: Map<string, { A: Float64Array; B: Float64Array; r: number; inF: number; outF: number; s: number }>;
}

// As the loader reads them: PEFT saves `lora_A.weight`; some writers keep the adapter's name (`lora_A.default.weight`).
const KEY = /^base_model\.model\.(.+)\.lora_A(?:\.[^.]+)?\.weight$/;

function readLora(dir: string): Loaded {
  const config = readLoraConfig(dir);
  const file = path.join(dir, 'adapter_config.json');
  if (config.use_dora) throw new PeftkitError('E_UNSUPPORTED', `${file}: a DoRA adapter ("use_dora": true) cannot be combined: its magnitudes have no weighted form (PEFT's add_weighted_adapter has none either)`);
  if (config.bias !== 'none' || config.modules_to_save) throw new PeftkitError('E_UNSUPPORTED', `${file}: trained biases or modules_to_save cannot be combined (only lora_A / lora_B are)`);
  if (Object.keys(config.rank_pattern).length || Object.keys(config.alpha_pattern).length) {
    throw new PeftkitError('E_UNSUPPORTED', `${file}: rank_pattern / alpha_pattern cannot be combined (the new adapter has one rank)`);
  }
  const ck = new SafetensorsCheckpoint(dir, 'adapter_model.safetensors');
  const layers: Loaded['layers'] = new Map();
  for (const name of ck.tensors.keys()) {
    const m = KEY.exec(name);
    if (!m) continue;
    const bName = name.replace('.lora_A.', '.lora_B.');
    if (!ck.has(bName)) throw new PeftkitError('E_MISSING', `${ck.source}: '${name}' has no matching '${bName}'`);
    const [r, inF] = ck.info(name).shape, [outF, rb] = ck.info(bName).shape;
    if (r !== config.r || rb !== r) throw new PeftkitError('E_CONFIG', `${ck.source}: '${name}' / '${bName}' have rank ${r} / ${rb}, adapter_config.json says r=${config.r}`);
    const A = Float64Array.from(checkFinite(ck.source, name, ck.readFloat32(name, [r, inF])));
    const B = Float64Array.from(checkFinite(ck.source, bName, ck.readFloat32(bName, [outF, r])));
    layers.set(m[1], { A, B, r, inF, outF, s: moduleRank(config, m[1]).scaling });
  }
  if (layers.size === 0) throw new PeftkitError('E_FORMAT', `${ck.source}: holds no LoRA weights`);
  return { dir, config, layers };
}

/** The union of the target_modules, as PEFT joins them. */
function unionTargets(all: readonly Loaded[]): string[] | string {
  const ts = all.map((a) => a.config.target_modules);
  if (ts.every((t) => typeof t === 'string')) return ts.length === 1 ? ts[0] : ts.map((t) => `(${t})`).join('|');
  if (ts.every((t) => Array.isArray(t))) return [...new Set(ts.flat())];
  throw new PeftkitError('E_ARG', `addWeightedAdapter: adapters: target_modules mix lists and regular expressions (${all.map((a) => a.dir).join(', ')}); PEFT refuses that too`);
}

/**
 * Writes the weighted combination of LoRA adapters (PEFT's add_weighted_adapter, 'linear' or
 * 'cat') as a new PEFT adapter folder, atomically. Throws E_ARG for mismatched arguments (weights,
 * ranks for 'linear', a negative w·s under 'linear', whose square root PEFT cannot take either),
 * E_UNSUPPORTED for DoRA, trained biases, modules_to_save or rank patterns, and what reading an
 * adapter throws. Returns the new adapter's rank.
 */
export function addWeightedAdapter(o: WeightedAdapterOptions): { r: number } {
  const { adapters, weights, out } = o;
  if (!Array.isArray(adapters) || adapters.length === 0) throw new PeftkitError('E_ARG', 'addWeightedAdapter: adapters: expected a non-empty list of LoRA adapter folders');
  if (!Array.isArray(weights) || weights.length !== adapters.length || !weights.every(Number.isFinite)) {
    throw new PeftkitError('E_ARG', `addWeightedAdapter: weights: expected ${adapters.length} finite numbers (one per adapter), got ${JSON.stringify(weights)}`);
  }
  if (o.combinationType !== undefined && o.combinationType !== 'linear' && o.combinationType !== 'cat') {
    throw new PeftkitError('E_ARG', `addWeightedAdapter: combinationType: expected 'linear' or 'cat', got ${JSON.stringify(o.combinationType)}`);
  }
  const type = adapters.length === 1 ? 'linear' : o.combinationType ?? 'linear';
  const all = adapters.map(readLora);
  if (type === 'linear' && new Set(all.map((a) => a.config.r)).size > 1) {
    throw new PeftkitError('E_ARG', `addWeightedAdapter: 'linear' needs every adapter of the same r, got ${all.map((a) => `r=${a.config.r} (${a.dir})`).join(', ')}; use 'cat'`);
  }
  const r = type === 'linear' ? all[0].config.r : all.reduce((n, a) => n + a.config.r, 0);
  const config: LoraConfig = { ...all[0].config, r, lora_alpha: r, target_modules: unionTargets(all), inference_mode: true };
  const modules = [...new Set(all.flatMap((a) => [...a.layers.keys()]))];
  const tensors: Record<string, TensorToWrite> = {};
  for (const module of modules) {
    const present = all.map((a, i) => ({ l: a.layers.get(module), w: weights[i], dir: a.dir })).filter((p) => p.l !== undefined);
    const { inF, outF } = present[0].l!;
    if (present.some((p) => p.l!.inF !== inF || p.l!.outF !== outF)) throw new PeftkitError('E_ARG', `addWeightedAdapter: '${module}' has different shapes in ${present.map((p) => p.dir).join(', ')} (adapters of different models)`);
    const A = new Float64Array(r * inF), B = new Float64Array(outF * r);
    let col = 0;
    for (const { l, w, dir } of present) {
      const { A: Ai, B: Bi, r: ri, s } = l!;
      if (type === 'linear') {
        if (w * s < 0) throw new PeftkitError('E_ARG', `addWeightedAdapter: 'linear' takes √(weight·scaling) and ${dir} has weight ${w} × scaling ${s} < 0; use 'cat' for negative weights`);
        const c = Math.sqrt(w * s);
        for (let i = 0; i < A.length; i++) A[i] += c * Ai[i];
        for (let i = 0; i < B.length; i++) B[i] += c * Bi[i];
      } else {
        // A's rows [col, col + ri) are w·s·A_i; B's columns, B_i.
        for (let i = 0; i < ri * inF; i++) A[col * inF + i] = w * s * Ai[i];
        for (let o2 = 0; o2 < outF; o2++) for (let j = 0; j < ri; j++) B[o2 * r + col + j] = Bi[o2 * ri + j];
        col += ri;
      }
    }
    tensors[`base_model.model.${module}.lora_A.weight`] = { dtype: 'F32', shape: [r, inF], data: Float32Array.from(A) };
    tensors[`base_model.model.${module}.lora_B.weight`] = { dtype: 'F32', shape: [outF, r], data: Float32Array.from(B) };
  }
  writeDirAtomic(out, (tmp) => {
    writeSafetensors(path.join(tmp, 'adapter_model.safetensors'), tensors);
    writeLoraConfig(tmp, config);
  });
  return { r };
}

