/**
 * Fuzz cases of bitsandbytes-layout folders (as `peftkit quantize` writes them): the quant state
 * JSON stored as a U8 tensor, absmax / quant_map / nested_* / SCB / weight_format tensors, and
 * config.json's quantization_config; loaded and generated from, or merged with an adapter.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadModelSync, mergeAdapterSync, quantizeModelSync } from '../../src/index';
import { readModelConfig } from '../../src/model/config';
import { SafetensorsFile, TensorToWrite, writeSafetensors } from '../../src/model/safetensors';
import { linearModules } from '../../src/model/weights';
import { LoraAdapter } from '../../src/peft/lora';
import { defaultLoraConfig } from '../../src/peft/lora/config';
import { damageJsonFile, damageSafetensors, expectNoOutput, FuzzRng, mutateJson, oddValueFor, outcome } from './fuzz';
import { expectComplete, FuzzCase, generateSome } from './fuzz_case';
import { writeTinyModel } from './fuzz_model_cases';

const FORMATS = [
  { name: 'nf4-dq', format: 'nf4', blocksize: 64, doubleQuant: true },
  { name: 'fp4', format: 'fp4', blocksize: 32, doubleQuant: false },
  { name: 'int8', format: 'int8', blocksize: 64, doubleQuant: false },
] as const;

/** Every tensor of a safetensors file, editable, written back in one piece. */
export function editTensors(file: string, edit: (t: Record<string, TensorToWrite>) => string): string {
  const f = new SafetensorsFile(file);
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, info] of f.tensors) tensors[name] = { dtype: info.dtype, shape: info.shape, data: f.readBytes(name) };
  const what = edit(tensors);
  writeSafetensors(file, tensors, { format: 'pt' });
  return what;
}

const ODD_FLOATS = [NaN, Infinity, -Infinity, -1, -1e-3, 0, 1e38, 3.4e38, 1e-45];

/** One damage to the quantized tensors of one Linear module. */
function damageQuantTensors(t: Record<string, TensorToWrite>, rng: FuzzRng): string {
  const modules = Object.keys(t).filter((n) => /_proj\.weight$/.test(n)).map((n) => n.replace(/\.weight$/, ''));
  const m = rng.pick(modules);
  const parts = Object.keys(t).filter((n) => n.startsWith(`${m}.`));
  const name = rng.pick(parts);
  const e = t[name];
  const kind = rng.int(0, 10);
  if (/quant_state/.test(name) && kind < 6) {
    // The JSON blob: a field damaged, or the bytes made non-JSON.
    const text = Buffer.from(e.data as Uint8Array).toString('utf8');
    let json: string;
    let what: string;
    if (rng.chance(0.85)) {
      const doc = JSON.parse(text) as Record<string, unknown>;
      const field = rng.pick(['blocksize', 'shape', 'quant_type', 'dtype', 'nested_blocksize', 'nested_offset', 'nested_dtype', '*']);
      if (field === '*' || !(field in doc)) what = mutateJson(doc, rng);
      else if (rng.chance(0.2)) {
        delete doc[field];
        what = `deleted ${field}`;
      } else {
        doc[field] = field === 'blocksize' || field === 'nested_blocksize' ? rng.pick([16, 48, 65, 128, 256, 8192, 0, -64, 64.5, '64']) : oddValueFor(doc[field], rng);
        what = `${field} = ${JSON.stringify(doc[field])}`;
      }
      json = JSON.stringify(doc);
    } else {
      json = rng.pick(['', '{', 'null', '[1,2]', '{"quant_type": "nf4", "blocksize": NaN}', '\u0000\u0001', '{"a":1}']);
      what = `replaced by ${JSON.stringify(json)}`;
    }
    const bytes = Buffer.from(json, 'utf8');
    t[name] = { dtype: 'U8', shape: [bytes.length], data: new Uint8Array(bytes) };
    return `${name}: ${what}`;
  }
  if (kind < 3) {
    delete t[name];
    return `deleted ${name}`;
  }
  if (kind < 5) {
    // The same bytes under another dtype or shape.
    const bytes = new Uint8Array(e.data.buffer, e.data.byteOffset, e.data.byteLength);
    const r = rng.int(0, 4);
    if (r === 0) t[name] = { dtype: 'U8', shape: [bytes.length], data: bytes };
    else if (r === 1 && bytes.length % 4 === 0) t[name] = { dtype: 'F32', shape: [bytes.length / 4], data: bytes };
    else if (r === 2 && bytes.length % 2 === 0) t[name] = { dtype: rng.pick(['F16', 'BF16', 'I16'] as const), shape: [bytes.length / 2], data: bytes };
    else t[name] = { dtype: e.dtype, shape: [...e.shape, 1], data: bytes };
    return `${name}: now ${t[name].dtype}[${t[name].shape.join(', ')}]`;
  }
  if (kind < 6) {
    // One element fewer or more.
    const bytes = new Uint8Array(e.data.buffer, e.data.byteOffset, e.data.byteLength);
    const elem = e.shape.length ? bytes.length / Math.max(1, e.shape.reduce((a, b) => a * b, 1)) : bytes.length;
    const grow = rng.chance(0.5);
    const n = (e.shape.length ? e.shape.reduce((a, b) => a * b, 1) : 1) + (grow ? 1 : -1);
    if (n < 0) return 'no-op';
    const data = new Uint8Array(n * elem);
    data.set(bytes.subarray(0, Math.min(bytes.length, data.length)));
    t[name] = { dtype: e.dtype, shape: [n], data };
    return `${name}: ${grow ? 'one more' : 'one fewer'} element`;
  }
  // Odd values inside: NaN / Inf / negative scales, a bad code book, a tiled weight_format.
  const data = new Uint8Array(e.data.buffer.slice(e.data.byteOffset, e.data.byteOffset + e.data.byteLength));
  if (e.dtype === 'F32' && data.length >= 4) {
    const f = new Float32Array(data.buffer);
    const i = rng.int(0, f.length);
    f[i] = rng.pick(ODD_FLOATS);
    t[name] = { ...e, data };
    return `${name}[${i}] = ${f[i]}`;
  }
  if (data.length) {
    const i = rng.int(0, data.length);
    data[i] = rng.pick([0, 1, 2, 127, 128, 255]);
    t[name] = { ...e, data };
    return `${name} byte ${i} = ${data[i]}`;
  }
  return 'no-op';
}

const bnb: FuzzCase = {
  setup(dir) {
    const src = path.join(dir, 'src');
    writeTinyModel(src);
    for (const f of FORMATS) quantizeModelSync({ model: src, out: path.join(dir, f.name), format: f.format, blocksize: f.blocksize, doubleQuant: f.doubleQuant });
    const config = readModelConfig(src);
    const adapter = LoraAdapter.create(linearModules(config), defaultLoraConfig({ r: 2, target_modules: ['q_proj', 'down_proj'], init_lora_weights: false }), { seed: 1 });
    adapter.save(path.join(dir, 'adapter'));
    adapter.dispose();
    fs.rmSync(src, { recursive: true });
  },
  run(rng, dir, log) {
    const f = rng.pick(FORMATS);
    const model = path.join(dir, f.name);
    const weights = path.join(model, 'model.safetensors');
    const kind = rng.int(0, 10);
    if (kind < 7) log(`${f.name}: ${editTensors(weights, (t) => damageQuantTensors(t, rng))}`);
    else if (kind < 8) log(`${f.name}: ${damageSafetensors(weights, rng)}`);
    else {
      const file = path.join(model, 'config.json');
      if (rng.chance(0.8)) {
        const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
        log(`${f.name}: config.json: quantization_config: ${mutateJson(cfg.quantization_config as Record<string, unknown>, rng)}`);
        fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
      } else {
        log(`${f.name}: ${damageJsonFile(file, rng)}`);
      }
    }
    const files = ['model.safetensors', 'config.json'];
    if (rng.chance(0.3)) {
      const out = path.join(dir, 'merged');
      const dtype = rng.pick([undefined, 'f32', 'bf16'] as const);
      const got = outcome([...files, 'adapter'], () => {
        mergeAdapterSync({ model, adapter: path.join(dir, 'adapter'), out, dtype });
      });
      if (got === 'ok') expectComplete(out, ['model.safetensors', 'config.json']);
      else expectNoOutput(out);
      return got;
    }
    return outcome(files, () => {
      const m = loadModelSync(model);
      try {
        generateSome(m);
      } finally {
        m.dispose();
      }
    });
  },
};

export const BNB_CASES: Record<string, FuzzCase> = { bnb };
