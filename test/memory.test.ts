/**
 * The memory estimate (issue 15's "Jobs", issue 16's OOM): it counts exactly the parameters each
 * method trains, it is within 15% of the peak RSS of real runs, and train() refuses a run that
 * cannot fit (E_MEMORY, with the figures and what to lower) unless told not to check.
 */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { estimateMemory, PeftkitError, train } from '../src';
import { LlamaModel } from '../src/model/llama';
import { writeRandomModel } from '../src/model/random_model';
import { Scratch } from '../src/model/sites';
import { AdapterMethod, createAdapter, CreateAdapterOptions, newAdapterConfig } from '../src/peft/registry';
import { adapterFootprint, availableMemory } from '../src/train/memory';
import type { TrainOptions } from '../src/train/options';
import { runTraining } from '../src/train/run';
import { spawnChild } from './helpers/spawn';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-memory-'));
const BIN = path.join(__dirname, '..', '..', 'bin', 'peftkit.js');

/** A model and pre-tokenized rows of `T` tokens. */
function fixture(o: Parameters<typeof writeRandomModel>[1], T: number, rows = 8): { model: string; data: string } {
  const dir = tmp();
  const model = path.join(dir, 'model');
  writeRandomModel(model, { tokenizer: false, seed: 3, ...o });
  const V = JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')).vocab_size as number;
  const data = path.join(dir, 'train.jsonl');
  fs.writeFileSync(data, Array.from({ length: rows }, (_, r) => JSON.stringify({ input_ids: Array.from({ length: T }, (_, i) => (r * 7919 + i * 104729) % V) })).join('\n') + '\n');
  return { model, data };
}

const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);

const ROWS: Array<[AdapterMethod, CreateAdapterOptions]> = [
  ['lora', {}],
  ['lora', { targets: 'all-linear', lora: { r: 4 } }],
  ['lora', { lora: { bias: 'all', modules_to_save: ['embed_tokens', 'lm_head'] } }],
  ['dora', { targets: ['q_proj', 'down_proj'], lora: { r: 2, lora_dropout: 0 } }],
  ['ia3', {}],
  ['ia3', { targets: ['q_proj', 'down_proj'], feedforwardModules: ['down_proj'] }],
  ['ln', {}],
  ['bitfit', {}],
  ['bitfit', { targets: ['q_proj'] }],
  ['diff', {}],
  ['adapter', {}],
  ['adapter', { bottleneck: { type: 'pfeiffer', reductionFactor: 8 } }],
  ['prompt', { numVirtualTokens: 3 }],
  ['p-tuning', { numVirtualTokens: 3, encoderHiddenSize: 8 }],
  ['p-tuning', { numVirtualTokens: 3, encoderHiddenSize: 8, encoder: 'lstm' }],
  ['prefix', { numVirtualTokens: 2 }],
  ['prefix', { numVirtualTokens: 2, prefixProjection: true, encoderHiddenSize: 8 }],
  ['full', {}],
  ['full', { trainable: 'layers\\.1\\.' }],
];

test('the estimate counts exactly the tensors each method trains, new or loaded from its folder', (t) => {
  // Qwen2: q/k/v biases, which BitFit and LoRA's bias option train.
  const { model: dir } = fixture({ architecture: 'Qwen2ForCausalLM', hiddenSize: 32, intermediateSize: 48, numHeads: 4, numKvHeads: 2, numLayers: 2, vocabSize: 64, tieWordEmbeddings: true }, 4);
  const model = LlamaModel.load(dir);
  try {
    for (const [method, o] of ROWS) {
      const what = `${method} ${JSON.stringify(o)}`;
      const a = createAdapter(method, model, { ...o, seed: 1 });
      try {
        const actual = a.parameters().map((p) => p.param.numel);
        t.deepEqual(sorted(adapterFootprint(method, model.config, newAdapterConfig(method, model.config, o)).tensors), sorted(actual), what);
        if (method === 'full') continue;
        const saved = path.join(tmp(), 'adapter');
        a.save(saved);
        t.is(estimateMemory({ model: dir, adapter: saved, seqLength: 8 }).trainableParams, actual.reduce((x, y) => x + y, 0), `${what}, loaded`);
      } finally {
        a.dispose();
      }
    }
  } finally {
    model.dispose();
  }
});

test('the options train() takes make the same adapter in the estimate as in the run', (t) => {
  const f = fixture({ hiddenSize: 32, intermediateSize: 48, numHeads: 4, numKvHeads: 2, numLayers: 2, vocabSize: 64 }, 8);
  const cases: Array<Omit<TrainOptions, 'model' | 'data' | 'out'>> = [
    { r: 4, targets: 'all-linear' }, { method: 'dora', r: 2, dropout: 0 }, { method: 'ia3' }, { method: 'adapter', adapterType: 'pfeiffer', adapterReduction: 8 },
    { method: 'prompt', numVirtualTokens: 3 }, { method: 'p-tuning', encoder: 'lstm', encoderHiddenSize: 8 }, { method: 'prefix', prefixProjection: true, encoderHiddenSize: 8 },
    { method: 'full', trainable: 'norm' },
  ];
  for (const c of cases) {
    let started = -1;
    runTraining({ ...f, ...c, out: path.join(tmp(), 'out'), steps: 1, maxLength: 8 }, { onEvent: (e) => e.type === 'start' && (started = e.trainableParams) });
    t.is(estimateMemory({ ...f, ...c }).trainableParams, started, JSON.stringify(c));
  }
});

test('the estimate is within 15% of the peak RSS of real runs (several methods, storages and checkpointing)', async (t) => {
  // The benchmark's small shape (bench/train_child.ts 'tiny'), batch 4 × 256, one step: a
  // child process each, train() with its worker as an application runs it.
  const f = fixture({ hiddenSize: 256, intermediateSize: 688, numLayers: 4, numHeads: 4, numKvHeads: 2, vocabSize: 4096, ropeTheta: 10000 }, 256);
  const common = { ...f, steps: 1, batchSize: 4, maxLength: 256, dropout: 0, overwrite: true };
  const runs: Array<[string, Partial<TrainOptions>]> = [
    ['LoRA r 16 all-linear, f32', { r: 16, targets: 'all-linear' }],
    ['LoRA, activation checkpointing, adamw8bit', { r: 16, targets: 'all-linear', activationCheckpointing: true, optim: 'adamw8bit' }],
    ['QLoRA (NF4) with bf16 compute', { method: 'qlora', bf16: true, r: 16, targets: 'all-linear' }],
    ['DoRA with dropout', { method: 'dora', r: 16, targets: 'all-linear', dropout: 0.05 }],
    ['full fine-tuning', { method: 'full', dropout: undefined }],
  ];
  const child = path.join(__dirname, '..', 'bench', 'memory_child.js');
  const results = await Promise.all(runs.map(async ([name, o]) => {
    const { child: c } = await spawnChild(process.execPath, [child, JSON.stringify({ ...common, ...o, out: path.join(tmp(), 'out') })], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout!.on('data', (d) => (out += d));
    c.stderr!.on('data', (d) => (out += d));
    await new Promise((r) => c.on('close', r));
    return { name, out };
  }));
  for (const { name, out } of results) {
    const r = JSON.parse(out.trim().split('\n').pop()!) as { estimate: { total: number }; maxRSS: number; message?: string };
    t.truthy(r.estimate, `${name}: ${out}`);
    if (!r.estimate) continue;
    const ratio = r.estimate.total / r.maxRSS;
    t.log(`${name}: estimate ${(r.estimate.total / 2 ** 20).toFixed(0)} MiB, peak RSS ${(r.maxRSS / 2 ** 20).toFixed(0)} MiB (${ratio.toFixed(3)})`);
    t.true(ratio >= 0.85 && ratio <= 1.15, `${name}: estimate ${r.estimate.total} vs peak RSS ${r.maxRSS}: ${JSON.stringify(r.estimate)}`);
  }
});

test('a run that does not fit is refused before the model loads (E_MEMORY, the figures, what to lower); memoryCheck: false starts it', (t) => {
  const f = fixture({ hiddenSize: 32, intermediateSize: 48, numHeads: 4, numKvHeads: 2, numLayers: 2, vocabSize: 64 }, 8);
  const out = path.join(tmp(), 'out');
  const tight = () => ({ bytes: 2 ** 20, source: 'a test' });
  const o = { ...f, out, steps: 1, maxLength: 8 };
  const err = t.throws(() => runTraining(o, { availableMemory: tight }), { instanceOf: PeftkitError });
  t.is(err?.code, 'E_MEMORY');
  t.regex(err!.message, /^this run needs about [\d.]+ MiB more memory \(.*activations [\d.]+ MiB.*\) but 1\.0 MiB is available \(a test\): lower 'batchSize' \(now 4\) or 'maxLength' \(now 8.*\); turn on activationCheckpointing.*; or pass memoryCheck: false to start it anyway$/);
  t.false(fs.existsSync(out), 'nothing written');
  t.is(runTraining({ ...o, memoryCheck: false }, { availableMemory: tight }).steps, 1);
});

test('train() refuses a batch this machine cannot hold, with the memory it has (MemAvailable, cgroup)', async (t) => {
  const avail = availableMemory();
  t.true(avail.bytes > 0, avail.source);
  const f = fixture({ hiddenSize: 32, intermediateSize: 48, numHeads: 4, numKvHeads: 2, numLayers: 2, vocabSize: 64 }, 64, 4);
  const shape = { ...f, packing: true, maxLength: 2048 };
  const perRow = estimateMemory({ ...shape, batchSize: 2 }).required - estimateMemory({ ...shape, batchSize: 1 }).required;
  const batchSize = Math.ceil((2 * avail.bytes) / perRow);
  const e = estimateMemory({ ...shape, batchSize });
  t.false(e.fits);
  const out = path.join(tmp(), 'out');
  const err = await t.throwsAsync(train({ ...shape, batchSize, out, steps: 1 }).result, { instanceOf: PeftkitError });
  t.is(err?.code, 'E_MEMORY');
  t.regex(err!.message, new RegExp(`lower 'batchSize' \\(now ${batchSize}\\)`));
  // The CLI: the same refusal in its flags' words, and the estimate part by part.
  const cli = spawnSync(process.execPath, [BIN, 'train', '--model', f.model, '--data', f.data, '--out', out, '--packing', '--max-length', '2048', '--batch-size', String(batchSize)], { encoding: 'utf8' });
  t.is(cli.status, 1, cli.stderr);
  t.regex(cli.stderr, /^peftkit: this run needs about .* lower --batch-size \(now \d+\) or --max-length \(now 2048.*; or pass --no-memory-check to start it anyway\n$/);
  const est = spawnSync(process.execPath, [BIN, 'estimate', '--model', f.model, '--data', f.data, '--method', 'qlora', '--optim', 'paged_adamw8bit'], { encoding: 'utf8' });
  t.is(est.status, 0, est.stderr);
  for (const part of ['runtime', 'weights', 'parameters', 'gradients', 'optimizer', 'activations', 'scratch', 'checkpoint', 'data', 'total']) t.regex(est.stdout, new RegExp(`^  ${part} +[\\d.]+ [MG]iB `, 'm'), part);
  t.regex(est.stdout, /decoder Linear weights nf4/);
  t.regex(est.stdout, /available \(.*\): it fits\n$/);
});

test('a Scratch frees what it lent: its views go with their slot when it grows and at dispose() (a view holds the memory)', (t) => {
  const s = new Scratch('cpu');
  const small = s.get(0, [4]);
  const other = s.get(1, [4]);
  const big = s.get(0, [1024]);
  t.throws(() => small.toFloat32Array(), { code: 'E_DISPOSED' }, 'the grown slot\'s old view');
  t.is(other.toFloat32Array().length, 4);
  s.dispose();
  for (const v of [other, big]) t.throws(() => v.toFloat32Array(), { code: 'E_DISPOSED' });
});
