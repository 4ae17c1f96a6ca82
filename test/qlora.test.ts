/**
 * QLoRA end to end: a base whose decoder Linear weights are kept quantized trains a LoRA adapter
 * exactly as LoRA does on the dequantized base, train() runs it, and a bitsandbytes folder loads
 * quantized.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ops, PeftkitError, Tensor } from '../src/index';
import { LlamaModel } from '../src/model/llama';
import { SafetensorsCheckpoint, TensorToWrite, writeSafetensors } from '../src/model/safetensors';
import { expectedWeights } from '../src/model/weights';
import { KvGenerator } from '../src/model/llama_generate';
import { writeRandomModel } from '../src/model/random_model';
import { LoraAdapter } from '../src/peft/lora';
import { quantizeModelSync } from '../src/quant';
import type { QuantWeight } from '../src/ops/gemm_quant';
import { Trainer } from '../src/train/trainer';
import { train } from '../src/train/train';
import { ALL_DEVICES, relErr } from './helpers/check';
import { deviceTest } from './helpers/device_test';
import { countingTask } from './helpers/counting_task';

const GOLDEN = path.join(__dirname, '..', '..', 'test', 'golden');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-qlora-'));

function dequantized(q: QuantWeight): Float32Array {
  const out = Tensor.empty(q.shape, { device: q.format === 'int8' ? q.cb.device : q.packed.device });
  try {
    if (q.format === 'int8') ops.dequantizeInt8Rowwise(out, q.cb, q.scb);
    else ops.dequantize4bit(out, q.packed, q.absmax, q.blocksize, q.format);
    return out.toFloat32Array();
  } finally {
    out.dispose();
  }
}

/** A plain f32 model folder holding the quantized model's weights, dequantized. */
function writeDequantizedFolder(src: string, qmodel: LlamaModel, out: string): void {
  fs.mkdirSync(out, { recursive: true });
  fs.copyFileSync(path.join(src, 'config.json'), path.join(out, 'config.json'));
  const ck = new SafetensorsCheckpoint(src);
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, shape] of expectedWeights(qmodel.config)) {
    const lw = /_proj\.weight$/.test(name) ? qmodel.linear(name) : null;
    const data = lw && 'q' in lw ? dequantized(lw.q) : ck.readFloat32(name, shape);
    tensors[name] = { dtype: 'F32', shape, data };
  }
  writeSafetensors(path.join(out, 'model.safetensors'), tensors);
}

/** 3 AdamW steps of the golden llama adapter on `model`: the losses and the final adapter. */
function runGolden(model: LlamaModel, dir: string, exp: { input_ids: number[][]; labels: number[][]; hyper: { lr: number; betas: [number, number]; eps: number; weight_decay: number; steps: number } }) {
  const B = exp.input_ids.length, T = exp.input_ids[0].length;
  const batch = { inputIds: Int32Array.from(exp.input_ids.flat()), labels: Int32Array.from(exp.labels.flat()), B, T };
  const h = exp.hyper;
  const adapter = LoraAdapter.load(path.join(dir, 'adapter_in'), model.linearModules, { device: model.device });
  const trainer = new Trainer(model, adapter, {
    maxRows: B * T, maxT: T, dropout: 0, maxGradNorm: 0, betas: h.betas, eps: h.eps, weightDecay: h.weight_decay,
  });
  const losses: number[] = [];
  for (let s = 0; s < h.steps; s++) losses.push(trainer.step([batch], h.lr).loss);
  const state = new Map(adapter.stateDict());
  trainer.dispose();
  adapter.dispose();
  return { losses, state };
}

// cuda keeps the cpu's tolerances: its kernel tests (gemm_quant, lora_quant) hold both devices to 1e-5.
for (const device of ALL_DEVICES) deviceTest(device, 'QLoRA with bf16 compute (compute_dtype=bfloat16) trains as bf16-compute LoRA on the dequantized weights', (t) => {
  const dir = path.join(GOLDEN, 'llama');
  const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8'));
  for (const quantize of ['nf4', 'int8'] as const) {
    const qmodel = LlamaModel.load(dir, { quantize, dtype: 'bf16', device });
    t.true(qmodel.isQuantized);
    t.is(qmodel.compute, 'bf16');
    const refDir = path.join(tmp(), 'dequantized');
    writeDequantizedFolder(dir, qmodel, refDir);
    // The reference stores the dequantized weights in bf16, i.e. rounded as the quantized path reads them.
    const ref = LlamaModel.load(refDir, { dtype: 'bf16', device });
    const q = runGolden(qmodel, dir, exp), r = runGolden(ref, dir, exp);
    for (let s = 0; s < q.losses.length; s++) {
      t.true(Math.abs(q.losses[s] - r.losses[s]) <= 1e-4 * Math.abs(r.losses[s]), `${quantize} step ${s}: qlora ${q.losses[s]} vs lora ${r.losses[s]}`);
    }
    let worst = 0;
    for (const [n, v] of r.state) worst = Math.max(worst, relErr(q.state.get(n)!, v));
    t.true(worst <= 1e-4, `${quantize}: worst adapter relative error ${worst.toExponential(2)}`);
    // And it is not the f32-compute QLoRA run.
    const f32 = LlamaModel.load(dir, { quantize, device });
    const qf = runGolden(f32, dir, exp);
    t.true(Math.abs(qf.losses[0] - q.losses[0]) > 1e-6 * q.losses[0], `${quantize}: bf16 compute gave the f32 loss ${q.losses[0]}`);
    t.log(`${quantize}: bf16-compute qlora vs lora losses ${q.losses.join(', ')} / ${r.losses.join(', ')}; f32-compute ${qf.losses.join(', ')}`);
    for (const m of [qmodel, ref, f32]) m.dispose();
  }
});

for (const device of ALL_DEVICES) deviceTest(device, 'QLoRA (nf4 + double quant at load) trains exactly as LoRA on the dequantized weights: 3 AdamW steps', (t) => {
  const dir = path.join(GOLDEN, 'llama');
  const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8'));
  const qmodel = LlamaModel.load(dir, { quantize: 'nf4', device });
  const name = 'model.layers.0.mlp.down_proj.weight';
  const lw = qmodel.linear(name);
  if (!('q' in lw)) return t.fail('the Linear weight was not kept quantized');
  t.is(lw.q.format, 'nf4');
  t.throws(() => qmodel.weight(name));
  t.true(qmodel.weight('model.norm.weight').dtype === 'f32' && qmodel.weight('lm_head.weight').dtype === 'f32');
  // The reference is not the original model: NF4 moves the weights.
  const orig = new SafetensorsCheckpoint(dir).readFloat32(name);
  t.true(relErr(dequantized(lw.q), orig) > 1e-3);
  const refDir = path.join(tmp(), 'dequantized');
  writeDequantizedFolder(dir, qmodel, refDir);
  const ref = LlamaModel.load(refDir, { device });
  t.false(ref.isQuantized);

  const h = exp.hyper;
  const q = runGolden(qmodel, dir, exp), r = runGolden(ref, dir, exp);
  for (let s = 0; s < h.steps; s++) {
    t.true(Math.abs(q.losses[s] - r.losses[s]) <= 1e-4 * Math.abs(r.losses[s]), `step ${s}: qlora ${q.losses[s]} vs lora ${r.losses[s]}`);
  }
  t.true(Math.abs(q.losses[0] - exp.losses[0]) > 1e-6, 'the quantized run differs from the f32 golden run');
  let worst = 0;
  for (const [n, v] of r.state) {
    const e = relErr(q.state.get(n)!, v);
    worst = Math.max(worst, e);
    t.true(e <= 1e-4, `${n}: relative error ${e.toExponential(2)}`);
  }
  const lossErr = Math.max(...q.losses.map((l, s) => Math.abs(l - r.losses[s]) / Math.abs(r.losses[s])));
  t.log(`qlora vs lora on the dequantized weights: worst loss rel ${lossErr.toExponential(2)}, worst adapter rel ${worst.toExponential(2)}`);

  // Generation reads the quantized weights too (gemmQuant, and the quantized LoRA with an adapter).
  const prompt = exp.input_ids[0].slice(0, 5) as number[];
  const logits = (model: LlamaModel, adapter: LoraAdapter | null) => {
    const g = new KvGenerator(model, prompt.length + 1, adapter);
    try {
      g.feed(prompt.slice(0, 3));
      return g.feed(prompt.slice(3));
    } finally {
      g.dispose();
    }
  };
  for (const withAdapter of [false, true]) {
    const aq = withAdapter ? LoraAdapter.load(path.join(dir, 'adapter_in'), qmodel.linearModules, { device }) : null;
    const ar = withAdapter ? LoraAdapter.load(path.join(dir, 'adapter_in'), ref.linearModules, { device }) : null;
    const e = relErr(logits(qmodel, aq), logits(ref, ar));
    t.true(e <= 1e-5, `generation logits${withAdapter ? ' with the adapter' : ''}: relative error ${e.toExponential(2)}`);
    aq?.dispose();
    ar?.dispose();
  }
  qmodel.dispose();
  ref.dispose();
});

for (const device of ALL_DEVICES) deviceTest(device, 'train() with method qlora runs on a quantized base (f32 and bf16 compute) and lowers the loss; a contradicting quantize is refused', async (t) => {
  const dir = tmp();
  const { model, data } = countingTask(dir);
  const common = { model, data, device, r: 4, alpha: 8, dropout: 0, targets: 'all-linear' as const, batchSize: 4, lr: 1e-2, maxLength: 32, seed: 1, shuffle: false };
  const losses: number[] = [];
  const run = train({ ...common, out: path.join(dir, 'out'), method: 'qlora', steps: 12 });
  run.on('step', (e) => losses.push(e.loss));
  run.on('start', (e) => t.is(e.device, device, 'the run is on the device asked for'));
  const result = await run;
  t.is(result.steps, 12);
  const first = losses.length ? losses[0] : NaN;
  t.true(Number.isFinite(result.finalLoss) && result.finalLoss < first, `loss ${first} -> ${result.finalLoss}`);
  t.true(fs.existsSync(path.join(dir, 'out', 'adapter_model.safetensors')));
  const bf16Losses: number[] = [];
  const runBf16 = train({ ...common, out: path.join(dir, 'out-bf16'), method: 'qlora', bf16: true, steps: 12 });
  runBf16.on('step', (e) => bf16Losses.push(e.loss));
  const resultBf16 = await runBf16;
  t.true(Number.isFinite(resultBf16.finalLoss) && resultBf16.finalLoss < bf16Losses[0], `bf16: loss ${bf16Losses[0]} -> ${resultBf16.finalLoss}`);
  await t.throwsAsync(train({ ...common, out: path.join(dir, 'x'), method: 'qlora', quantize: 'int8' }).result, { instanceOf: PeftkitError, code: 'E_ARG' });
  await t.throwsAsync(train({ ...common, out: path.join(dir, 'x'), method: 'dora-x' as never }).result, { instanceOf: PeftkitError, code: 'E_ARG' });
});

for (const device of ALL_DEVICES) deviceTest(device, 'a quantized base loads with dtype bf16 (bf16 compute)', (t) => {
  const dir = tmp();
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 1, seed: 2 });
  const qb = LlamaModel.load(model, { quantize: 'nf4', dtype: 'bf16', device });
  t.true(qb.isQuantized && qb.compute === 'bf16' && qb.device === device);
  qb.dispose();
  t.throws(() => LlamaModel.load(model, { quantize: 'nf3' as never }), { instanceOf: PeftkitError, code: 'E_ARG' });
  quantizeModelSync({ model, out: path.join(dir, 'bnb'), format: 'nf4' });
  const bnb = LlamaModel.load(path.join(dir, 'bnb'), { dtype: 'bf16', device });
  t.true(bnb.isQuantized && bnb.compute === 'bf16');
  bnb.dispose();
  const m = LlamaModel.load(model, { quantize: 'int8', device });
  t.true(m.isQuantized);
  m.dispose();
});
