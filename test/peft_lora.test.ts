/** PEFT's own checklist for LoRA, on random checkpoints in HF layout made by the test. */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError } from '../src/index';
import { LlamaModel } from '../src/model/llama';
import { KvGenerator } from '../src/model/llama_generate';
import { LlamaForward } from '../src/model/llama_forward';
import { writeRandomModel } from '../src/model/random_model';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import { mergeAdapterSync } from '../src/peft/merge';
import { Trainer } from '../src/train/trainer';
import type { Device } from '../src/index';
import { ALL_DEVICES, makeRng, relErr } from './helpers/check';
import { deviceTest } from './helpers/device_test';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-lora-'));

function setup(t: { log: (s: string) => void }, arch: 'LlamaForCausalLM' | 'Qwen2ForCausalLM' = 'LlamaForCausalLM', device: Device = 'cpu') {
  const rng = makeRng(t as never);
  const dir = tmp();
  writeRandomModel(dir, { architecture: arch, hiddenSize: 48, numHeads: 4, numKvHeads: 2, numLayers: 2, tieWordEmbeddings: arch === 'LlamaForCausalLM', seed: rng.seed });
  const model = LlamaModel.load(dir, { device });
  const V = model.config.vocabSize;
  const B = 2, T = 11;
  const inputIds = Int32Array.from({ length: B * T }, () => rng.int(0, V));
  const batch = { inputIds, labels: inputIds.slice(), B, T };
  return { dir, model, batch, rng };
}

function logits(model: LlamaModel, adapter: LoraAdapter | null, ids: ArrayLike<number>): Float32Array {
  const g = new KvGenerator(model, ids.length, adapter);
  const out = g.feed(Array.from(ids));
  g.dispose();
  return out;
}

function trainSome(model: LlamaModel, adapter: LoraAdapter, batch: { inputIds: Int32Array; labels: Int32Array; B: number; T: number }, steps: number, lr = 1e-2) {
  const trainer = new Trainer(model, adapter, { maxRows: batch.B * batch.T, maxT: batch.T, dropout: 0, maxGradNorm: 1 });
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) losses.push(trainer.step([batch], lr).loss);
  trainer.dispose();
  return losses;
}

for (const device of ALL_DEVICES) deviceTest(device, 'a fresh adapter changes no output; disabling it restores the base', (t) => {
  const { model, batch } = setup(t, 'LlamaForCausalLM', device);
  const ids = batch.inputIds.subarray(0, batch.T);
  const base = logits(model, null, ids);
  const fresh = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear' }), { seed: 1, device });
  t.true(relErr(logits(model, fresh, ids), base) <= 1e-6);
  trainSome(model, fresh, batch, 2);
  t.true(relErr(logits(model, fresh, ids), base) > 1e-3, 'training moved the outputs');
  t.deepEqual(logits(model, null, ids), base, 'without the adapter the base model is untouched');
  fresh.dispose();
  model.dispose();
});

for (const device of ALL_DEVICES) deviceTest(device, 'training changes only adapter parameters, and lowers the loss', (t) => {
  const { model, batch } = setup(t, 'Qwen2ForCausalLM', device);
  const before = new Map([...model.entries()].map(([n, w]) => [n, w.toFloat32Array()]));
  const adapter = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj', 'down_proj'] }), { seed: 2, device });
  const a0 = adapter.stateDict();
  const losses = trainSome(model, adapter, batch, 8);
  t.true(losses[7] < losses[0] * 0.9, `loss ${losses[0]} -> ${losses[7]}`);
  for (const [n, w] of model.entries()) t.deepEqual(w.toFloat32Array(), before.get(n), `${n} must not change`);
  let changed = 0;
  for (const [n, v] of adapter.stateDict()) if (relErr(v, a0.get(n)!) > 0) changed++;
  t.is(changed, adapter.parameters().length, 'every A and B moved');
  t.is(adapter.layers.size, 2 * 3);
  adapter.dispose();
  model.dispose();
});

// The merged models load on the cpu: on cuda this also compares the two devices' logits.
for (const device of ALL_DEVICES) deviceTest(device, 'save/load round trip is exact; merged == unmerged within 1e-4', (t) => {
  const { dir, model, batch } = setup(t, 'LlamaForCausalLM', device);
  const adapter = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 3, lora_alpha: 6, target_modules: 'all-linear', use_rslora: true }), { seed: 3, device });
  trainSome(model, adapter, batch, 3);
  const out = path.join(tmp(), 'adapter');
  adapter.save(out);
  t.deepEqual(fs.readdirSync(out).sort(), ['adapter_config.json', 'adapter_model.safetensors']);
  // "all-linear" is written out as the module names it chose, as PEFT does.
  const written = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8')) as { target_modules: unknown };
  t.deepEqual(written.target_modules, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
  const back = LoraAdapter.load(out, model.linearModules, { device });
  t.deepEqual(back.stateDict(), adapter.stateDict());
  t.is(back.scaling, adapter.scaling);
  const ids = batch.inputIds.subarray(0, batch.T);
  const unmerged = logits(model, back, ids);
  t.deepEqual(logits(model, adapter, ids), unmerged);
  const mergedDir = path.join(tmp(), 'merged');
  // A base saved by transformers 5, which writes "dtype" where older versions wrote "torch_dtype".
  const cfgFile = path.join(dir, 'config.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), dtype: 'bfloat16' }));
  mergeAdapterSync({ model: dir, adapter: out, out: mergedDir });
  const mergedCfg = JSON.parse(fs.readFileSync(path.join(mergedDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  t.deepEqual([mergedCfg.torch_dtype, mergedCfg.dtype], ['float32', 'float32'], 'the dtype keys say what was written');
  const merged = LlamaModel.load(mergedDir);
  const e = relErr(logits(merged, null, ids), unmerged);
  t.true(e <= 1e-4, `merged vs unmerged: ${e.toExponential(2)}`);
  t.true(fs.existsSync(path.join(mergedDir, 'tokenizer.json')));
  mergeAdapterSync({ model: dir, adapter: out, out: mergedDir, dtype: 'bf16' });
  const mergedBf16 = LlamaModel.load(mergedDir);
  t.true(relErr(logits(mergedBf16, null, ids), unmerged) <= 5e-2, 'bf16 merge is close');
  for (const m of [merged, mergedBf16, model]) m.dispose();
  back.dispose();
  adapter.dispose();
});

test('a LoRA on lm_head: generation applies it (== merged), training refuses it instead of ignoring it', (t) => {
  const { dir, model, batch } = setup(t);
  const adapter = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 2, lora_alpha: 4, target_modules: ['lm_head', 'v_proj'] }), { seed: 4 });
  for (const l of adapter.layers.values()) l.B.write(Float32Array.from({ length: l.B.numel }, (_, i) => Math.cos(i) * 0.2));
  const out = path.join(tmp(), 'adapter');
  adapter.save(out);
  const ids = batch.inputIds.subarray(0, batch.T);
  const unmerged = logits(model, adapter, ids);
  const mergedDir = path.join(tmp(), 'merged');
  // A base saved by transformers 5, which writes "dtype" where older versions wrote "torch_dtype".
  const cfgFile = path.join(dir, 'config.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), dtype: 'bfloat16' }));
  mergeAdapterSync({ model: dir, adapter: out, out: mergedDir });
  const mergedCfg = JSON.parse(fs.readFileSync(path.join(mergedDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  t.deepEqual([mergedCfg.torch_dtype, mergedCfg.dtype], ['float32', 'float32'], 'the dtype keys say what was written');
  const merged = LlamaModel.load(mergedDir);
  const e = relErr(logits(merged, null, ids), unmerged);
  t.true(e <= 1e-4, `merged vs unmerged with a LoRA on lm_head: ${e.toExponential(2)}`);
  // And the head's adapter matters: without it the logits differ.
  const vOnly = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 2, lora_alpha: 4, target_modules: ['v_proj'] }), { seed: 4 });
  vOnly.layers.get('model.layers.0.self_attn.v_proj')!.B.write(adapter.layers.get('model.layers.0.self_attn.v_proj')!.B.toFloat32Array());
  vOnly.layers.get('model.layers.1.self_attn.v_proj')!.B.write(adapter.layers.get('model.layers.1.self_attn.v_proj')!.B.toFloat32Array());
  t.true(relErr(logits(model, vOnly, ids), unmerged) > 1e-3, 'the lm_head LoRA changes the logits');
  const err = t.throws(() => new LlamaForward(model, adapter, batch.B * batch.T, batch.T));
  t.is((err as { code?: string }).code, 'E_UNSUPPORTED');
  t.regex(err!.message, /lm_head/);
  for (const x of [merged, model]) x.dispose();
  vOnly.dispose();
  adapter.dispose();
});

test('activation checkpointing and LoRA dropout: same gradients as without / mask is seeded', (t) => {
  const { model, batch } = setup(t);
  const cfg = defaultLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear' });
  const grads = (ckpt: boolean, dropout: number, seed: number) => {
    const a = LoraAdapter.create(model.linearModules, cfg, { seed: 5 });
    for (const l of a.layers.values()) l.B.write(Float32Array.from({ length: l.B.numel }, (_, i) => Math.sin(i) * 0.1));
    const f = new LlamaForward(model, a, batch.B * batch.T, batch.T, ckpt);
    a.zeroGrad();
    f.run(batch, { dropout, dropoutSeed: seed }, 1 / 20);
    const g = a.parameters().map((p) => p.grad.toFloat32Array());
    f.dispose();
    a.dispose();
    return g;
  };
  const plain = grads(false, 0, 0);
  const ckpt = grads(true, 0, 0);
  for (let i = 0; i < plain.length; i++) t.true(relErr(ckpt[i], plain[i]) <= 1e-6, `checkpointed grad ${i}`);
  const d1 = grads(false, 0.3, 7), d2 = grads(true, 0.3, 7), d3 = grads(false, 0.3, 8);
  for (let i = 0; i < plain.length; i++) t.true(relErr(d2[i], d1[i]) <= 1e-6, `dropout is reproducible from its seed (${i})`);
  t.true(relErr(d1[0], plain[0]) > 1e-3 && relErr(d3[0], d1[0]) > 1e-3, 'dropout changes the gradients, and the seed picks the mask');
  model.dispose();
});

test('targets that match nothing, and adapters for another model, are errors', (t) => {
  const { model } = setup(t);
  const e = t.throws(() => LoraAdapter.create(model.linearModules, defaultLoraConfig({ target_modules: ['qkv_proj'] })), { instanceOf: PeftkitError });
  t.regex(e!.message, /'qkv_proj' matches no module.*q_proj/);
  const out = path.join(tmp(), 'a');
  const a = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 2 }));
  a.save(out);
  const other = model.linearModules.filter((m) => !m.name.includes('layers.1.'));
  t.regex(t.throws(() => LoraAdapter.load(out, other), { instanceOf: PeftkitError })!.message, /module 'model.layers.1.self_attn.q_proj', which this model does not have/);
  a.dispose();
  model.dispose();
});

test('target_modules as a regular expression (PEFT: a full match on the module name): created, saved and loaded', (t) => {
  const { model } = setup(t);
  const config = defaultLoraConfig({ r: 2, target_modules: 'model\\.layers\\.1\\.self_attn\\.(q|v)_proj' });
  const a = LoraAdapter.create(model.linearModules, config);
  t.deepEqual([...a.layers.keys()], ['model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj']);
  const out = path.join(tmp(), 'regex');
  a.save(out);
  const back = LoraAdapter.load(out, model.linearModules);
  t.is(back.config.target_modules, config.target_modules, 'written and read back as the string it was');
  t.deepEqual([...back.layers.keys()], [...a.layers.keys()]);
  const excluded = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 2, target_modules: '.*_proj', exclude_modules: '.*\\.(mlp|layers\\.0)\\..*' }));
  t.deepEqual([...excluded.layers.keys()], ['q', 'k', 'v', 'o'].map((p) => `model.layers.1.self_attn.${p}_proj`));
  // As a regular expression 'q_proj' matches no whole module name (in a list it is a suffix match).
  t.regex(t.throws(() => LoraAdapter.create(model.linearModules, defaultLoraConfig({ target_modules: 'q_proj' })), { instanceOf: PeftkitError })!.message,
    /target_modules "q_proj" \(a regular expression, matched against whole module names such as 'model\.layers\.0\.self_attn\.q_proj'\) leaves no module/);
  t.regex(t.throws(() => LoraAdapter.create(model.linearModules, defaultLoraConfig({ target_modules: '(q_proj' })), { instanceOf: PeftkitError })!.message,
    /target_modules "\(q_proj" is not a regular expression/);
  for (const x of [a, back, excluded]) x.dispose();
  model.dispose();
});
