/**
 * Fuzz cases of a PEFT adapter folder (adapter_config.json + adapter_model.safetensors): used to
 * generate, merged into its base, and continued in training (`adapter`).
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadModelSync, mergeAdapterSync } from '../../src/index';
import { readModelConfig } from '../../src/model/config';
import { linearModules } from '../../src/model/weights';
import { LoraAdapter } from '../../src/peft/lora';
import { defaultLoraConfig } from '../../src/peft/lora/config';
import { runTraining } from '../../src/train/run';
import { damageJsonFile, damageSafetensors, expectNoOutput, FuzzRng, FuzzViolation, mutateJson, oddValueFor, outcome } from './fuzz';
import { editTensors } from './fuzz_bnb_cases';
import { expectComplete, FuzzCase, generateSome } from './fuzz_case';
import { writeTinyModel } from './fuzz_model_cases';

/** adapter_config.json fields the loader reads. */
const ADAPTER_FIELDS = [
  'r', 'lora_alpha', 'lora_dropout', 'target_modules', 'exclude_modules', 'use_rslora', 'peft_type', 'bias', 'use_dora', 'fan_in_fan_out',
  'rank_pattern', 'alpha_pattern', 'modules_to_save', 'layers_to_transform', 'init_lora_weights', 'task_type',
];

function damageAdapterConfig(file: string, rng: FuzzRng): string {
  if (rng.chance(0.15)) return damageJsonFile(file, rng);
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  let what: string;
  if (rng.chance(0.2)) what = mutateJson(cfg, rng);
  else {
    const key = rng.pick(ADAPTER_FIELDS);
    if (rng.chance(0.2)) {
      delete cfg[key];
      what = `deleted ${key}`;
    } else {
      cfg[key] = key === 'r' ? rng.pick([0, -4, 2, 3, 5, 8, 4.5, 1e9, 2 ** 53, '4', null]) : key === 'lora_alpha' ? rng.pick([0, -8, 1e30, 1e300, 3e38, '8', null]) : oddValueFor(cfg[key], rng);
      what = `${key} = ${JSON.stringify(cfg[key])}`;
    }
  }
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
  return `adapter_config.json: ${what}`;
}

/** A damage that keeps the file valid safetensors but breaks what it says about the model. */
function damageAdapterTensors(file: string, rng: FuzzRng): string {
  return editTensors(file, (t) => {
    const names = Object.keys(t);
    const name = rng.pick(names);
    const e = t[name];
    const k = rng.int(0, 7);
    if (k === 0) {
      delete t[name];
      return `deleted ${name}`;
    }
    if (k === 1) {
      const to = name.replace(/layers\.\d+/, rng.pick(['layers.7', 'layers.1', 'layers.-1'])).replace(/(q|v)_proj/, rng.pick(['k_proj', 'up_proj', 'x_proj', 'q_proj']));
      delete t[name];
      t[to] = e;
      return `renamed ${name} -> ${to}`;
    }
    if (k === 2) {
      t[name] = { ...e, shape: [...e.shape].reverse() };
      return `${name}: shape reversed`;
    }
    if (k === 3) {
      // Another rank: r ± 1 rows (A) or columns (B), with zeros.
      const [a, b] = e.shape;
      const isA = /lora_A/.test(name);
      const r2 = Math.max(1, (isA ? a : b) + rng.pick([-1, 1, 4]));
      const shape = isA ? [r2, b] : [a, r2];
      t[name] = { dtype: 'F32', shape, data: new Float32Array(shape[0] * shape[1]) };
      return `${name}: rank ${r2}`;
    }
    if (k === 4) {
      const f = new Float32Array((e.data as Uint8Array).buffer.slice(0));
      f[rng.int(0, f.length)] = rng.pick([NaN, Infinity, -Infinity, 3e38]);
      t[name] = { ...e, data: f };
      return `${name}: a NaN/Inf/huge value`;
    }
    if (k === 5) {
      t[rng.pick(['base_model.model.lm_head.weight', 'base_model.model.model.norm.weight', 'lora_A.weight', `${name}.extra`, name.replace('lora_', 'lora_embedding_')])] = e;
      return 'added a non-LoRA tensor';
    }
    t[name] = { dtype: rng.pick(['BF16', 'F16'] as const), shape: e.shape, data: new Uint16Array(e.shape.reduce((x, y) => x * y, 1)) };
    return `${name}: now ${t[name].dtype}`;
  });
}

const adapter: FuzzCase = {
  setup(dir) {
    const model = path.join(dir, 'model');
    writeTinyModel(model);
    const a = LoraAdapter.create(linearModules(readModelConfig(model)), defaultLoraConfig({ r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj', 'down_proj'], init_lora_weights: false }), { seed: 2 });
    a.save(path.join(dir, 'adapter'));
    a.dispose();
    const rows = Array.from({ length: 8 }, (_, i) => JSON.stringify({ input_ids: Array.from({ length: 6 + (i % 3) }, (_, j) => (i * 7 + j * 3) % 40) }));
    fs.writeFileSync(path.join(dir, 'data.jsonl'), rows.join('\n') + '\n');
  },
  run(rng, dir, log) {
    const model = path.join(dir, 'model');
    const adapterDir = path.join(dir, 'adapter');
    const kind = rng.int(0, 10);
    if (kind < 5) log(damageAdapterConfig(path.join(adapterDir, 'adapter_config.json'), rng));
    else if (kind < 7) log(`adapter_model.safetensors: ${damageSafetensors(path.join(adapterDir, 'adapter_model.safetensors'), rng)}`);
    else log(`adapter_model.safetensors: ${damageAdapterTensors(path.join(adapterDir, 'adapter_model.safetensors'), rng)}`);
    const files = ['adapter_config.json', 'adapter_model.safetensors'];
    const action = rng.int(0, 10);
    if (action < 5) {
      return outcome(files, () => {
        const m = loadModelSync(model);
        try {
          const ids = m.generate([1, 2, 3], { maxNewTokens: 3, temperature: 0, adapter: adapterDir }).ids;
          if (ids.some((id) => !Number.isInteger(id) || id < 0 || id >= m.config.vocabSize)) throw new FuzzViolation(`generate returned ${ids}`);
        } finally {
          m.dispose();
        }
      });
    }
    if (action < 8) {
      const out = path.join(dir, 'merged');
      const got = outcome(files, () => {
        mergeAdapterSync({ model, adapter: adapterDir, out });
      });
      if (got === 'ok') {
        expectComplete(out, ['model.safetensors', 'config.json']);
        // A merge that succeeded wrote a usable model (activations may still overflow: E_NAN, named).
        const merged = outcome([path.join(out, 'model.safetensors')], () => {
          const m = loadModelSync(out);
          try {
            generateSome(m);
          } finally {
            m.dispose();
          }
        });
        if (merged !== 'ok' && merged !== 'E_NAN') throw new FuzzViolation(`the merged model does not load: ${merged}`);
      } else {
        expectNoOutput(out);
      }
      return got;
    }
    const out = path.join(dir, 'trained');
    let loss = NaN;
    const got = outcome(files, () => {
      loss = runTraining({ model, data: path.join(dir, 'data.jsonl'), out, adapter: adapterDir, steps: 1, batchSize: 2, maxLength: 8 }).finalLoss;
    });
    if (got === 'ok' && !Number.isFinite(loss)) throw new FuzzViolation(`training succeeded with loss ${loss}`);
    if (got !== 'ok' && fs.existsSync(path.join(out, 'adapter_model.safetensors'))) throw new FuzzViolation('a failed run left an adapter in its output folder');
    return got;
  },
};

export const ADAPTER_CASES: Record<string, FuzzCase> = { adapter };
