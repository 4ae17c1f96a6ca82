/**
 * The LLM.int8 outlier threshold end to end: loadModelSync / train() / the CLI put it on an int8 base
 * only, generation and training run through LLM.int8, and a bad value is refused before loading.
 */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModelSync, PeftkitError } from '../src/index';
import { LlamaModel } from '../src/model/llama';
import { KvGenerator } from '../src/model/llama_generate';
import { writeRandomModel } from '../src/model/random_model';
import { quantizeModelSync } from '../src/quant';
import { train } from '../src/train/train';
import { ALL_DEVICES, relErr } from './helpers/check';
import { deviceTest } from './helpers/device_test';
import { countingTask } from './helpers/counting_task';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-int8-'));
const BIN = path.join(__dirname, '..', '..', 'bin', 'peftkit.js');

function logits(model: LlamaModel, prompt: number[]): Float32Array {
  const g = new KvGenerator(model, prompt.length, null);
  try {
    return g.feed(prompt);
  } finally {
    g.dispose();
  }
}

test('loadModelSync: int8Threshold goes on every int8 weight; other bases and bad values are refused', (t) => {
  const dir = tmp();
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 3 });
  const prompt = [5, 17, 42, 99, 3, 64];
  const plain = LlamaModel.load(model, { quantize: 'int8' });
  const ref = logits(plain, prompt);
  for (const threshold of [0, 6]) {
    const m = loadModelSync(model, { quantize: 'int8', int8Threshold: threshold });
    const lw = m.llama.linear('model.layers.1.mlp.down_proj.weight');
    t.true('q' in lw && lw.q.format === 'int8' && lw.q.threshold === threshold);
    // The int8 activations cost a little accuracy against the dequantized-weight path, no more.
    const e = relErr(logits(m.llama, prompt), ref);
    t.log(`threshold ${threshold}: logits relative to the dequantized path ${e.toExponential(2)}`);
    t.true(e > 0 && e < 0.05, `threshold ${threshold}: logits relative to the dequantized path ${e.toExponential(2)}`);
    m.dispose();
  }
  plain.dispose();

  // A bitsandbytes 8-bit folder takes it too; 4-bit and unquantized bases do not.
  quantizeModelSync({ model, out: path.join(dir, 'int8'), format: 'int8' });
  quantizeModelSync({ model, out: path.join(dir, 'nf4'), format: 'nf4' });
  const b8 = LlamaModel.load(path.join(dir, 'int8'), { int8Threshold: 6 });
  const lw = b8.linear('model.layers.0.self_attn.q_proj.weight');
  t.true('q' in lw && lw.q.format === 'int8' && lw.q.threshold === 6);
  b8.dispose();
  const unsupported = { instanceOf: PeftkitError, code: 'E_UNSUPPORTED' };
  t.throws(() => LlamaModel.load(path.join(dir, 'nf4'), { int8Threshold: 6 }), { ...unsupported, message: /nf4 weights/ });
  t.throws(() => LlamaModel.load(model, { int8Threshold: 6 }), { ...unsupported, message: /unquantized/ });
  t.throws(() => LlamaModel.load(model, { quantize: 'nf4', int8Threshold: 6 }), unsupported);
  for (const bad of [-1, NaN, Infinity, '6' as unknown as number]) {
    t.throws(() => loadModelSync(model, { quantize: 'int8', int8Threshold: bad }), { instanceOf: PeftkitError, code: 'E_ARG', message: /int8Threshold/ });
  }
});

for (const device of ALL_DEVICES) deviceTest(device, 'train() int8-lora with an LLM.int8 threshold lowers the loss; a non-int8 method or a bad value is refused', async (t) => {
  const dir = tmp();
  const { model, data } = countingTask(dir);
  const common = { model, data, device, r: 4, alpha: 8, dropout: 0.1, targets: 'all-linear' as const, batchSize: 4, lr: 1e-2, maxLength: 32, seed: 1, shuffle: false };
  const losses: number[] = [];
  const run = train({ ...common, out: path.join(dir, 'out'), method: 'int8-lora', int8Threshold: 6, steps: 12 });
  run.on('step', (e) => losses.push(e.loss));
  run.on('start', (e) => t.is(e.device, device, 'the run is on the device asked for'));
  const result = await run;
  t.is(result.steps, 12);
  t.log(`losses ${losses.map((l) => l.toFixed(3)).join(' ')}`);
  t.true(losses.every(Number.isFinite), `losses ${losses.join(' ')}`);
  t.true(result.finalLoss < losses[0] * 0.8, `loss ${losses[0]} -> ${result.finalLoss}`);
  await t.throwsAsync(train({ ...common, out: path.join(dir, 'x'), method: 'qlora', int8Threshold: 6 }).result, { instanceOf: PeftkitError, code: 'E_UNSUPPORTED' });
  await t.throwsAsync(train({ ...common, out: path.join(dir, 'x'), method: 'int8-lora', int8Threshold: -0.5 }).result, { instanceOf: PeftkitError, code: 'E_ARG' });
  // Without a quantized base the refusal comes from loading, in the run.
  await t.throwsAsync(train({ ...common, out: path.join(dir, 'y'), method: 'lora', int8Threshold: 6, steps: 1 }), { instanceOf: PeftkitError, code: 'E_UNSUPPORTED' });
});

test('peftkit --int8-threshold: a number, refused with a non-int8 base', (t) => {
  const r1 = spawnSync(process.execPath, [BIN, 'generate', '--model', 'm', '--prompt', 'p', '--int8-threshold', 'six'], { encoding: 'utf8' });
  t.is(r1.status, 2);
  t.regex(r1.stderr, /--int8-threshold: expected a number, got 'six'/);
  const r2 = spawnSync(process.execPath, [BIN, 'train', '--model', 'm', '--data', 'd', '--out', 'o', '--method', 'qlora', '--int8-threshold', '6'], { encoding: 'utf8' });
  t.is(r2.status, 2, 'an option error: bad usage');
  t.regex(r2.stderr, /^peftkit: --int8-threshold applies to an int8 base \(LLM\.int8\), not to quantize 'nf4'\n/);
});
