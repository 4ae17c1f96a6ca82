/**
 * addWeightedAdapter against a float64 reference of PEFT's add_weighted_adapter formulas
 * ('linear': √(w·s) on both A and B; 'cat': w·s on A, ranks concatenated), and the combined
 * adapter's generation against the base with the formula's ΔW merged in.
 */
import test, { ExecutionContext } from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { addWeightedAdapter, loadModelSync, PeftkitError, writeRandomModel } from '../src/index';
import { SafetensorsCheckpoint, writeSafetensors } from '../src/model/safetensors';
import { createAdapter } from '../src/peft/registry';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig, readLoraConfig } from '../src/peft/lora/config';
import type { Model } from '../src/index';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-combine-'));

function modelDir(): string {
  const dir = path.join(tmp(), 'model');
  writeRandomModel(dir, { hiddenSize: 32, numLayers: 2, numHeads: 2, numKvHeads: 1, seed: 3 });
  return dir;
}

function lora(m: Model, seed: number, r: number, targets: string[] | 'all-linear', alpha = 2 * r): string {
  const a = LoraAdapter.create(m.llama.linearModules, defaultLoraConfig({ r, lora_alpha: alpha, target_modules: targets, init_lora_weights: false }), { seed });
  const out = path.join(tmp(), `a${seed}`);
  a.save(out);
  a.dispose();
  return out;
}

/** Per module: A [r, in], B [out, r] (f64 copies of the file's f32) and the adapter's scaling. */
function readLayers(dir: string): Map<string, { A: Float64Array; B: Float64Array; r: number; inF: number; outF: number; s: number }> {
  const c = readLoraConfig(dir);
  const ck = new SafetensorsCheckpoint(dir, 'adapter_model.safetensors');
  const out = new Map();
  for (const name of ck.tensors.keys()) {
    const m = /^base_model\.model\.(.+)\.lora_A\.weight$/.exec(name);
    if (!m) continue;
    const [r, inF] = ck.info(name).shape;
    const bName = name.replace('lora_A', 'lora_B');
    const outF = ck.info(bName).shape[0];
    out.set(m[1], { A: Float64Array.from(ck.readFloat32(name, [r, inF])), B: Float64Array.from(ck.readFloat32(bName, [outF, r])), r, inF, outF, s: c.lora_alpha / c.r });
  }
  return out;
}

/** s·B·A in float64, [out, in]. */
function delta(l: { A: Float64Array; B: Float64Array; r: number; inF: number; outF: number }, s: number): Float64Array {
  const d = new Float64Array(l.outF * l.inF);
  for (let o = 0; o < l.outF; o++) for (let i = 0; i < l.inF; i++) {
    let acc = 0;
    for (let k = 0; k < l.r; k++) acc += l.B[o * l.r + k] * l.A[k * l.inF + i];
    d[o * l.inF + i] = s * acc;
  }
  return d;
}

function maxRelDiff(t: ExecutionContext, got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  t.is(got.length, want.length, what);
  let scale = 0, err = 0;
  for (let i = 0; i < want.length; i++) {
    scale = Math.max(scale, Math.abs(want[i]));
    err = Math.max(err, Math.abs(got[i] - want[i]));
  }
  t.true(err <= tol * scale, `${what}: max |diff| ${err.toExponential(2)} vs ${tol} × ${scale.toExponential(2)}`);
}

test("'linear': A = Σ √(w·s)·A_i, B = Σ √(w·s)·B_i per module, over the adapters that have it; config r, lora_alpha = r, targets' union", (t) => {
  const m = loadModelSync(modelDir());
  const dirs = [lora(m, 1, 4, ['q_proj', 'v_proj']), lora(m, 2, 4, ['q_proj', 'k_proj'], 16), lora(m, 3, 4, 'all-linear')];
  const weights = [0.5, 1.5, 0.7];
  const out = path.join(tmp(), 'linear');
  t.deepEqual(addWeightedAdapter({ adapters: dirs, weights, out, combinationType: 'linear' }), { r: 4 });
  const inputs = dirs.map(readLayers);
  const got = readLayers(out);
  const config = readLoraConfig(out);
  t.is(config.r, 4);
  t.is(config.lora_alpha, 4);
  t.deepEqual([...(config.target_modules as string[])].sort(), ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
  t.is(got.size, 2 * 7);
  for (const [module, g] of got) {
    const A = new Float64Array(g.A.length), B = new Float64Array(g.B.length);
    inputs.forEach((layers, i) => {
      const l = layers.get(module);
      if (!l) return;
      const c = Math.sqrt(weights[i] * l.s);
      l.A.forEach((v, j) => (A[j] += c * v));
      l.B.forEach((v, j) => (B[j] += c * v));
    });
    maxRelDiff(t, g.A, A, 1e-7, `${module} A`);
    maxRelDiff(t, g.B, B, 1e-7, `${module} B`);
  }
  // One adapter: ΔW = w·ΔW_1 exactly (PEFT uses 'linear' for one adapter, whatever is asked).
  const one = path.join(tmp(), 'one');
  addWeightedAdapter({ adapters: [dirs[0]], weights: [0.3], out: one, combinationType: 'cat' });
  for (const [module, g] of readLayers(one)) maxRelDiff(t, delta(g, 1), delta(inputs[0].get(module)!, 0.3 * inputs[0].get(module)!.s), 1e-6, `${module} ΔW`);
  m.dispose();
});

test("'cat': ranks concatenated, ΔW = Σ w_i·s_i·B_i·A_i exactly, and its generation equals the base with that ΔW merged", (t) => {
  const dir = modelDir();
  const m = loadModelSync(dir);
  const dirs = [lora(m, 4, 4, 'all-linear'), lora(m, 5, 2, ['q_proj', 'v_proj'], 8), lora(m, 6, 3, ['v_proj', 'down_proj'], 3)];
  const weights = [0.8, -1.2, 2];
  const out = path.join(tmp(), 'cat');
  t.deepEqual(addWeightedAdapter({ adapters: dirs, weights, out, combinationType: 'cat' }), { r: 9 });
  const inputs = dirs.map(readLayers);
  const got = readLayers(out);
  const merged = new Map<string, Float64Array>();
  for (const [module, g] of got) {
    t.is(g.r, 9, `${module}: zero-padded to the total rank`);
    const want = new Float64Array(g.outF * g.inF);
    inputs.forEach((layers, i) => {
      const l = layers.get(module);
      if (l) delta(l, weights[i] * l.s).forEach((v, j) => (want[j] += v));
    });
    maxRelDiff(t, delta(g, 1), want, 1e-6, `${module} ΔW`);
    merged.set(module, want);
  }
  // The base with ΔW merged in float64, against generation through the combined adapter.
  const mergedDir = path.join(tmp(), 'merged');
  fs.mkdirSync(mergedDir);
  for (const f of fs.readdirSync(dir)) if (f !== 'model.safetensors') fs.copyFileSync(path.join(dir, f), path.join(mergedDir, f));
  const ck = new SafetensorsCheckpoint(dir, 'model.safetensors');
  const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [name, info] of ck.tensors) {
    const w = ck.readFloat32(name, info.shape);
    const d = merged.get(name.replace(/\.weight$/, ''));
    tensors[name] = { dtype: 'F32', shape: info.shape, data: d ? Float32Array.from(w, (v, i) => v + d[i]) : w };
  }
  writeSafetensors(path.join(mergedDir, 'model.safetensors'), tensors);
  const mm = loadModelSync(mergedDir);
  const o = { maxNewTokens: 12, temperature: 0, stopTokens: [] };
  for (const prompt of ['Hello', 'abc', 'The']) {
    const viaAdapter = m.generate(prompt, { ...o, adapter: out });
    t.deepEqual(viaAdapter, mm.generate(prompt, o), prompt);
    t.notDeepEqual(viaAdapter.ids, m.generate(prompt, o).ids, 'the combination changes the output');
  }
  mm.dispose();
  m.dispose();
});

test('refusals: ranks under linear, negative √ under linear, weights, DoRA; nothing is written', (t) => {
  const m = loadModelSync(modelDir());
  const a = lora(m, 7, 4, ['q_proj']), b = lora(m, 8, 2, ['q_proj']);
  const dora = createAdapter('dora', m.llama, { seed: 1 });
  const doraDir = path.join(tmp(), 'dora');
  dora.save(doraDir);
  dora.dispose();
  const out = path.join(tmp(), 'never');
  const code = (o: Parameters<typeof addWeightedAdapter>[0], c: string, re: RegExp) => {
    const e = t.throws(() => addWeightedAdapter(o), { instanceOf: PeftkitError });
    t.is(e?.code, c, e?.message);
    t.regex(e?.message ?? '', re);
  };
  code({ adapters: [a, b], weights: [1, 1], out }, 'E_ARG', /same r.*r=4.*r=2/);
  code({ adapters: [a, a], weights: [1, -1], out }, 'E_ARG', /weight -1 × scaling 2 < 0/);
  code({ adapters: [a, b], weights: [1], out, combinationType: 'cat' }, 'E_ARG', /weights: expected 2 finite numbers/);
  code({ adapters: [a, b], weights: [1, 1], out, combinationType: 'svd' as never }, 'E_ARG', /combinationType/);
  code({ adapters: [a, doraDir], weights: [1, 1], out, combinationType: 'cat' }, 'E_UNSUPPORTED', /DoRA/);
  t.false(fs.existsSync(out));
  m.dispose();
});

test("adapters whose tensors keep the adapter's name (lora_A.default.weight), which the loader reads, combine as PEFT's bare names do", (t) => {
  const m = loadModelSync(modelDir());
  const bare = lora(m, 5, 4, ['q_proj', 'v_proj']);
  m.dispose();
  // The same tensors renamed: the safetensors header is JSON after its 8-byte length, data offsets are relative to the data.
  const named = path.join(tmp(), 'named');
  fs.cpSync(bare, named, { recursive: true });
  const file = path.join(named, 'adapter_model.safetensors');
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  const renamed = Object.fromEntries(Object.entries(header).map(([k, v]) => [k.replace(/\.lora_([AB])\.weight$/, '.lora_$1.default.weight'), v]));
  t.true(Object.keys(renamed).some((k) => k.endsWith('.lora_A.default.weight')));
  const json = Buffer.from(JSON.stringify(renamed), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, buf.subarray(8 + n)]));
  const outs = [bare, named].map((dir) => {
    const out = path.join(tmp(), `combined-${path.basename(dir)}`);
    addWeightedAdapter({ adapters: [dir, dir], weights: [0.5, 0.25], out, combinationType: 'cat' });
    return readLayers(out);
  });
  t.is(outs[1].size, outs[0].size);
  for (const [module, g] of outs[0]) {
    t.deepEqual([...outs[1].get(module)!.A], [...g.A], `${module} A`);
    t.deepEqual([...outs[1].get(module)!.B], [...g.B], `${module} B`);
  }
});
