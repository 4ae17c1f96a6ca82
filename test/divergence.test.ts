/**
 * A run that diverges says so (issue 16: `--lr 10` with the 8-bit optimizer trained to adapter
 * weights of 5.8e5 without a word), and a non-finite loss or gradient norm stops it.
 */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { cliWording, TRAIN_FLAGS } from '../src/cli/flags';
import { PeftkitError } from '../src/errors';
import { LlamaModel } from '../src/model/llama';
import { writeRandomModel } from '../src/model/random_model';
import { createAdapter } from '../src/peft/registry';
import { runTraining } from '../src/train/run';
import type { TrainOptions } from '../src/train/options';
import { divergenceWarning, Trainer, UPDATE_RATIO_WARN } from '../src/train/trainer';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-diverge-'));

function fixture(): { model: string; data: string } {
  const dir = tmp();
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 64, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 5 });
  const data = path.join(dir, 'train.jsonl');
  fs.writeFileSync(data, Array.from({ length: 16 }, (_, i) => JSON.stringify({ text: `row ${i}: the number ${i} comes before ${i + 1}.` })).join('\n') + '\n');
  return { model, data };
}

/** The warning events of a short in-process run. */
function warnings(o: Omit<TrainOptions, 'out'>): string[] {
  const out: string[] = [];
  runTraining({ ...o, out: path.join(tmp(), 'out') }, { onEvent: (e) => e.type === 'warning' && out.push(e.message) });
  return out;
}

const common = { targets: 'all-linear' as const, r: 8, batchSize: 4, maxLength: 32, steps: 4, seed: 1, optim: 'adamw8bit' as const };

test('a huge learning rate (8-bit optimizer) warns once, naming the step, the ratio and what to lower; a normal run does not', (t) => {
  const f = fixture();
  const huge = warnings({ ...f, ...common, lr: 1 });
  t.is(huge.length, 1, huge.join('\n'));
  t.regex(huge[0], /^step 1: the update moved the trainable weights by at least [\d.]+× their norm .*: training is diverging; lower 'lr' \(now 1\)$/);
  const ratio = Number(/at least ([\d.]+)×/.exec(huge[0])![1]);
  t.true(ratio > UPDATE_RATIO_WARN, `ratio ${ratio}`);
  // Clipping off: enabling it is part of the advice.
  const noClip = warnings({ ...f, ...common, lr: 1, maxGradNorm: 0 });
  t.regex(noClip[0], /lower 'lr' \(now 1\), and turn gradient clipping on \('maxGradNorm', e\.g\. 1; it is off\)$/);
  t.deepEqual(warnings({ ...f, ...common, lr: 2e-4 }), []);
  t.deepEqual(warnings({ ...f, ...common, optim: 'adamw', lr: 1e-2 }), []);
});

test('a run stopped or failing right after a diverging step still warns of it (the ratio is measured a step late)', (t) => {
  const f = fixture();
  // Stopped after step 1: its update is reported by the step that never runs.
  const stopped: string[] = [];
  let stepped = false;
  const err = t.throws(() => runTraining({ ...f, ...common, lr: 1, out: path.join(tmp(), 'out') }, {
    onEvent: (e) => {
      if (e.type === 'step') stepped = true;
      if (e.type === 'warning') stopped.push(e.message);
    },
    shouldStop: () => stepped,
  }), { instanceOf: PeftkitError });
  t.is(err?.code, 'E_ABORTED');
  t.is(stopped.length, 1, stopped.join('\n'));
  t.regex(stopped[0], /^step 1: the update moved the trainable weights by at least [\d.]+× their norm/);
  // Step 2 fails (as a NaN loss after a diverging update would): the warning that explains it comes first.
  const failed: string[] = [];
  const step = Trainer.prototype.step;
  let calls = 0;
  Trainer.prototype.step = function (this: Trainer, ...args: Parameters<Trainer['step']>) {
    if (++calls === 2) throw new PeftkitError('E_NAN', 'loss is NaN (simulated)');
    return step.apply(this, args);
  };
  try {
    const err2 = t.throws(() => runTraining({ ...f, ...common, lr: 1, out: path.join(tmp(), 'out') }, {
      onEvent: (e) => e.type === 'warning' && failed.push(e.message),
    }), { instanceOf: PeftkitError });
    t.is(err2?.code, 'E_NAN');
  } finally {
    Trainer.prototype.step = step;
  }
  t.is(failed.length, 1, failed.join('\n'));
  t.regex(failed[0], /^step 1: the update moved the trainable weights by at least [\d.]+× their norm/);
});

test('the warning reads as the CLI\'s flags on the command line', (t) => {
  const m = divergenceWarning({ step: 3, lr: 0.5, ratio: 12.5 }, { maxGradNorm: 0 });
  t.regex(cliWording(TRAIN_FLAGS, m), /^step 3: .* 12\.5× .*lower --lr \(now 0\.5\), and turn gradient clipping on \(--max-grad-norm, e\.g\. 1; it is off\)$/);
});

test('zero-initialized parameters (BitFit\'s new biases, diff pruning\'s δ) at a high but sane rate do not warn', (t) => {
  const f = fixture();
  for (const method of ['bitfit', 'diff'] as const) t.deepEqual(warnings({ ...f, method, batchSize: 4, maxLength: 32, steps: 6, lr: 0.1, diffPruneStep: 2 }), [], method);
});

test('a non-finite loss (an adapter whose weights overflow the activations) stops the run at its first step with E_NAN naming the adapter', (t) => {
  const f = fixture();
  const model = LlamaModel.load(f.model);
  const bad = path.join(tmp(), 'nan-adapter');
  const a = createAdapter('lora', model, { targets: 'all-linear' });
  for (const p of a.parameters()) if (/lora_B/.test(p.name)) p.param.write(new Float32Array(p.param.numel).fill(1e30)); // finite, so the folder loads; the activations overflow
  a.save(bad);
  a.dispose();
  model.dispose();
  const steps: number[] = [];
  const err = t.throws(() => runTraining({ ...f, adapter: bad, out: path.join(tmp(), 'out'), steps: 3, maxLength: 32 }, { onEvent: (e) => e.type === 'step' && steps.push(e.step) }), { instanceOf: PeftkitError });
  t.is(err?.code, 'E_NAN');
  t.regex(err!.message, /^loss is NaN: the forward pass produced a non-finite value \(.*nan-adapter\/adapter_model\.safetensors holds NaN or Infinity, or the activations overflowed\)$/);
  t.deepEqual(steps, []);
});

test('a non-finite gradient norm stops the step with E_NAN before the optimizer touches the weights', (t) => {
  const f = fixture();
  const model = LlamaModel.load(f.model);
  const a = createAdapter('lora', model, { targets: ['q_proj', 'v_proj'] });
  const trainer = new Trainer(model, a, { maxRows: 32, maxT: 16, dropout: 0, optim: 'adamw8bit' });
  try {
    const ids = Int32Array.from({ length: 32 }, (_, i) => (i * 7) % model.config.vocabSize);
    const batch = { inputIds: ids, labels: ids, B: 2, T: 16 };
    trainer.step([batch], 1e-3);
    const before = a.parameters().map((p) => p.param.toFloat32Array());
    // A gradient that overflowed (the loss itself finite): what prepareGrads sees is what clipping sees.
    a.prepareGrads = () => {
      const g = a.parameters()[0].grad;
      const v = g.toFloat32Array();
      v[0] = Infinity;
      g.write(v);
    };
    const err = t.throws(() => trainer.step([batch], 1e-3), { instanceOf: PeftkitError });
    t.is(err?.code, 'E_NAN');
    t.regex(err!.message, /^gradient norm is Infinity at step 2: stopping before the adapter is corrupted/);
    a.parameters().forEach((p, i) => t.deepEqual(p.param.toFloat32Array(), before[i], p.name));
    t.is(trainer.optimizer.step, 1);
  } finally {
    trainer.dispose();
    a.dispose();
    model.dispose();
  }
});
