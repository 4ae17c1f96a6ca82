/** Full fine-tuning: every weight (or a `trainable` subset) on f32 masters, written as a Hugging Face model folder. */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModelSync } from '../src/inference/model';
import { writeWeights } from '../src/model/hf_folder';
import { LlamaModel } from '../src/model/llama';
import { writeRandomModel } from '../src/model/random_model';
import { SafetensorsCheckpoint } from '../src/model/safetensors';
import { train } from '../src/train/train';
import { ALL_DEVICES, relErr } from './helpers/check';
import { deviceTest } from './helpers/device_test';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-full-'));

function fixture(tied: boolean): { model: string; data: string } {
  const dir = tmp();
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, tieWordEmbeddings: tied, tokenizer: true, seed: 5 });
  const rows = Array.from({ length: 16 }, (_, i) => JSON.stringify({ text: `the number ${i} comes before ${i + 1}.` }));
  const data = path.join(dir, 'train.jsonl');
  fs.writeFileSync(data, rows.join('\n') + '\n');
  return { model, data };
}

const weights = (dir: string) => {
  const ck = new SafetensorsCheckpoint(dir);
  return new Map([...ck.tensors.keys()].map((n) => [n, ck.readFloat32(n)]));
};
const changed = (a: Float32Array, b: Float32Array) => a.some((v, i) => v !== b[i]);

for (const tied of [false, true]) {
  for (const device of ALL_DEVICES) deviceTest(device, `method full (${tied ? 'tied' : 'untied'} embeddings): every weight trains, the output is a model folder that loads and generates`, async (t) => {
    const { model, data } = fixture(tied);
    const out = path.join(tmp(), 'out');
    const losses: number[] = [];
    const run = train({ model, data, out, device, method: 'full', steps: 8, batchSize: 4, lr: 3e-3, maxLength: 32, seed: 1, weightDecay: 0.1, saveEvery: 4 });
    run.on('step', (e) => losses.push(e.loss));
    const r = await run;
    t.true(losses[7] < losses[0], `loss ${losses[0].toFixed(3)} -> ${losses[7].toFixed(3)}`);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json']) t.true(fs.existsSync(path.join(out, f)), f);
    t.false(fs.existsSync(path.join(out, 'adapter_config.json')), 'no adapter: the model itself');
    const before = weights(model);
    const after = weights(out);
    t.deepEqual([...after.keys()].sort(), [...before.keys()].sort(), 'the same tensors as the base (tied stays tied)');
    for (const [n, w] of before) t.true(changed(after.get(n)!, w), `${n} trained`);
    const m = loadModelSync(r.adapterDir);
    const g = m.generate('the number', { maxNewTokens: 4, temperature: 0 });
    t.true(g.ids.length > 0);
    m.dispose();
    // A checkpoint holds the model too, and a resumed run reaches the same weights.
    const out2 = path.join(tmp(), 'out2');
    await train({ model, data, out: out2, device, method: 'full', steps: 5, batchSize: 4, lr: 3e-3, maxLength: 32, seed: 1, weightDecay: 0.1, saveEvery: 4 });
    await train({ model, data, out: out2, device, steps: 8, batchSize: 4, lr: 3e-3, maxLength: 32, seed: 1, weightDecay: 0.1, saveEvery: 4, resume: out2 });
    const resumed = weights(out2);
    // The cpu is deterministic; on CUDA the norm and embedding gradients are summed with
    // atomicAdd, whose order changes the last bits (ARCHITECTURE.md), so the weights agree
    // within a tolerance there (1e-4: not yet measured on a GPU).
    for (const [n, w] of after) {
      if (device === 'cpu') t.deepEqual(resumed.get(n), w, `${n}: resumed == uninterrupted`);
      else t.true(relErr(resumed.get(n)!, w) <= 1e-4, `${n}: resumed within 1e-4 of uninterrupted (${relErr(resumed.get(n)!, w)})`);
    }
  });
}

test('method full with trainable: only the matching weights change; quantize and adapters are refused', async (t) => {
  const { model, data } = fixture(false);
  const out = path.join(tmp(), 'out');
  await train({ model, data, out, method: 'full', trainable: 'model\\.layers\\.1\\.|model\\.norm', steps: 3, batchSize: 4, lr: 3e-3, maxLength: 32 });
  const before = weights(model);
  const after = weights(out);
  for (const [n, w] of before) t.is(changed(after.get(n)!, w), /model\.layers\.1\.|model\.norm/.test(n), n);
  await t.throwsAsync(train({ model, data, out: path.join(tmp(), 'q'), method: 'full', quantize: 'nf4', steps: 1 }).result, { message: /quantize/ });
  await t.throwsAsync(train({ model, data, out: path.join(tmp(), 'x'), method: 'full', trainable: 'nothing-matches', steps: 1 }).result, { message: /trainable/ });
  await t.throwsAsync(train({ model, data, out: model, method: 'full', steps: 1 }).result, { message: /out/ });
});

test('weights over the shard size are split as transformers does, with an index that loads', (t) => {
  const dir = tmp();
  writeRandomModel(dir, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 2 });
  const m = LlamaModel.load(dir);
  const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [n, w] of m.entries()) tensors[n] = { dtype: 'F32', shape: w.shape, data: w.toFloat32Array() };
  const out = tmp();
  writeWeights(out, tensors, 20_000);
  const index = JSON.parse(fs.readFileSync(path.join(out, 'model.safetensors.index.json'), 'utf8'));
  const shards = new Set(Object.values(index.weight_map as Record<string, string>));
  t.true(shards.size > 2, `${shards.size} shards`);
  for (const s of shards) t.regex(s, /^model-\d{5}-of-\d{5}\.safetensors$/);
  t.is(index.metadata.total_size, Object.values(tensors).reduce((a, x) => a + x.data.byteLength, 0));
  const back = new SafetensorsCheckpoint(out);
  for (const [n, x] of Object.entries(tensors)) t.deepEqual(back.readFloat32(n), x.data, n);
  m.dispose();
});
