/**
 * A training step keeps its scalars on the model's device and reads them back once (issue 13):
 * the loss summed into an f64 scalar (ops.sumInto), the squared gradient and parameter norms
 * (ops.gradSumsqInto), index faults recorded by the kernels instead of checked on the host
 * (ops.raiseIndexFault), the clipping for a norm already read (ops.clipGradsTo), and the update
 * ratio of a step reported with the next one (Trainer). On the CPU each must give the same bits
 * as the host-side way it replaces; the cuda rows run in scripts/gpu-check.sh.
 */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError } from '../src/errors';
import { LlamaModel } from '../src/model/llama';
import { writeRandomModel } from '../src/model/random_model';
import * as ops from '../src/ops';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import { Tensor } from '../src/tensor';
import { Trainer } from '../src/train/trainer';
import { makeRng, randn } from './helpers/check';
import { deviceTest } from './helpers/device_test';

test('sumInto adds Σx in float64 with the bits of a host loop over the values read back, and accumulates', (t) => {
  const rng = makeRng(t);
  const acc = Tensor.zeros([1], { dtype: 'f64' });
  let want = 0;
  for (const n of [1, 7, 1000, 4099]) {
    const x = randn(rng, n, 3);
    let s = 0;
    for (const v of x) s += v; // what LlamaForward did with the copied row losses
    want += s;
    ops.sumInto(acc, Tensor.from(x, [n]));
    t.is((acc.toArray() as Float64Array)[0], want, `after n=${n}`);
  }
  t.throws(() => ops.sumInto(Tensor.zeros([1]), Tensor.zeros([3])), { message: /sum_into acc: expected dtype f64/ });
  t.throws(() => ops.sumInto(Tensor.zeros([2], { dtype: 'f64' }), Tensor.zeros([3])), { message: /sum_into acc: expected one element/ });
});

test('gradSumsqInto writes gradNorm² with the same bits; clipGradsTo scales as clipGradNorm does', (t) => {
  const rng = makeRng(t);
  const shapes = [[5, 7], [1], [300], [0], [33, 65]];
  const make = (scale: number) => shapes.map((s) => Tensor.from(randn(rng, s.reduce((a, b) => a * b, 1), scale), s));
  const out = Tensor.zeros([1], { dtype: 'f64' });
  for (const scale of [1e-3, 1, 50]) {
    const a = make(scale);
    const b = a.map((g) => Tensor.from(g.toFloat32Array(), g.shape));
    ops.gradSumsqInto(out, a);
    const sq = (out.toArray() as Float64Array)[0];
    const norm = ops.gradNorm(a);
    t.is(Math.sqrt(sq), norm, `scale ${scale}`);
    // Clipping at 1: the large scales clip, the small one does not; both ways the same bits.
    t.is(ops.clipGradNorm(b, 1), norm);
    ops.clipGradsTo(a, 1, Math.sqrt(sq));
    a.forEach((g, i) => t.deepEqual(g.toFloat32Array(), b[i].toFloat32Array(), `scale ${scale}, tensor ${i}`));
  }
  // A non-finite norm leaves the gradients alone, as clipGradNorm does.
  const g = [Tensor.from([1, 2, 3], [3])];
  ops.clipGradsTo(g, 1, NaN);
  ops.clipGradsTo(g, 1, Infinity);
  t.deepEqual([...g[0].toFloat32Array()], [1, 2, 3]);
  t.throws(() => ops.clipGradsTo(g, -1, 1), { message: /maxNorm: expected a number >= 0/ });
  t.throws(() => ops.gradSumsqInto(Tensor.zeros([1]), g), { message: /gradSumsqInto out: expected dtype f64/ });
});

test('raiseIndexFault names the op, the position, the index and the limit; a clear record returns', (t) => {
  const record = (...v: number[]) => Float64Array.from(v);
  t.notThrows(() => ops.raiseIndexFault(new Float64Array(ops.INDEX_FAULT_DOUBLES)));
  const cases: [Float64Array, RegExp][] = [
    [record(1, 1, 13, 70000, 256, 0), /^embedding_forward ids: ids\[13\] \(flattened\) = 70000 is outside \[0, 256\) \(the table has 256 rows\)$/],
    [record(1, 2, 0, -1, 256, 0), /^embedding_backward ids: ids\[0\] \(flattened\) = -1 is outside \[0, 256\)/],
    [record(1, 3, 5, 300, 256, -100), /^linear_cross_entropy targets: row 5 has target 300, outside \[0, 256\) and not ignore_index \(-100\)$/],
    [record(1, 9, 0, 0, 0, 0), /unknown op 9/],
  ];
  for (const [r, re] of cases) {
    const e = t.throws(() => ops.raiseIndexFault(r), { instanceOf: PeftkitError });
    t.is(e?.code, 'E_ARG');
    t.regex(e!.message, re);
  }
  t.throws(() => ops.raiseIndexFault(new Float64Array(3)), { message: /expected a Float64Array of 6 values/ });
});

test('on the CPU a fault record changes nothing: ids and targets are checked as the op runs, in the same words', (t) => {
  const fault = ops.newIndexFault('cpu');
  const table = Tensor.from(new Float32Array(4 * 3).fill(1), [4, 3]);
  const out = Tensor.zeros([2, 3]);
  const e = t.throws(() => ops.embeddingForward(out, Tensor.from(Int32Array.from([1, 4]), [2]), table, fault), { instanceOf: PeftkitError });
  t.regex(e!.message, /^embedding_forward ids: ids\[1\] = 4 is outside \[0, 4\)/);
  const losses = Tensor.zeros([2]);
  const H = Tensor.from(new Float32Array(2 * 3).fill(0.5), [2, 3]);
  const e2 = t.throws(() => ops.linearCrossEntropy(losses, null, null, H, table, Tensor.from(Int32Array.from([-100, 7]), [2]), { fault }), { instanceOf: PeftkitError });
  t.regex(e2!.message, /^linear_cross_entropy targets: row 1 has target 7, outside \[0, 4\) and not ignore_index \(-100\)$/);
  t.deepEqual([...(fault.toArray() as Float64Array)], new Array(ops.INDEX_FAULT_DOUBLES).fill(0));
});

function smallTrainer(device: 'cpu' | 'cuda') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-scalars-'));
  writeRandomModel(dir, { hiddenSize: 64, intermediateSize: 160, numHeads: 4, numKvHeads: 2, numLayers: 2, vocabSize: 256, seed: 3 });
  const model = LlamaModel.load(dir, { device });
  const adapter = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 8, lora_alpha: 16, target_modules: 'all-linear' }), { seed: 5, device });
  const B = 2, T = 12;
  const trainer = new Trainer(model, adapter, { maxRows: B * T, maxT: T, dropout: 0, maxGradNorm: 1, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 });
  const batch = (bad?: { id?: number; label?: number }) => {
    const ids = Int32Array.from({ length: B * T }, (_, i) => 3 + ((i * 37) % 200));
    const labels = Int32Array.from(ids);
    if (bad?.id !== undefined) ids[17] = bad.id;
    if (bad?.label !== undefined) labels[9] = bad.label;
    return { inputIds: ids, labels, B, T };
  };
  const params = () => adapter.parameters().map((p) => p.param.toFloat32Array());
  const norm = () => ops.gradNorm(adapter.parameters().map((p) => p.param));
  const dispose = () => {
    trainer.dispose();
    adapter.dispose();
    model.dispose();
  };
  return { trainer, batch, params, norm, dispose };
}

for (const device of ['cpu', 'cuda'] as const) {
  deviceTest(device, 'a token id or a target out of range fails the step with E_ARG naming it, before any weight moves', (t) => {
    const f = smallTrainer(device);
    try {
      f.trainer.step([f.batch()], 1e-2);
      const before = f.params();
      for (const [bad, re] of [
        [{ id: 256 }, /^embedding_forward ids: ids\[17\]( \(flattened\))? = 256 is outside \[0, 256\) \(the table has 256 rows\)$/],
        [{ id: -5 }, /^embedding_forward ids: ids\[17\]( \(flattened\))? = -5 is outside \[0, 256\)/],
        [{ label: 999 }, /^linear_cross_entropy targets: row 8 has target 999, outside \[0, 256\) and not ignore_index \(-100\)$/],
      ] as const) {
        const e = t.throws(() => f.trainer.step([f.batch(), f.batch(bad)], 1e-2), { instanceOf: PeftkitError });
        t.is(e?.code, 'E_ARG');
        t.regex(e!.message, re);
        f.params().forEach((p, i) => t.deepEqual(p, before[i]));
      }
      // The record was cleared: the next good step trains.
      const r = f.trainer.step([f.batch()], 1e-2);
      t.true(Number.isFinite(r.loss));
      t.notDeepEqual(f.params()[0], before[0]);
    } finally {
      f.dispose();
    }
  });

  deviceTest(device, 'a step reports the previous step\'s update ratio, measured from the parameter norms; lastUpdate() the last one', (t) => {
    const f = smallTrainer(device);
    try {
      const norms = [f.norm()];
      const lrs = [5e-2, 2e-2, 1e-2];
      const results = lrs.map((lr) => {
        const r = f.trainer.step([f.batch()], lr);
        norms.push(f.norm());
        return r;
      });
      t.is(results[0].previousUpdate, undefined);
      for (let s = 1; s <= 3; s++) {
        const u = s < 3 ? results[s].previousUpdate! : f.trainer.lastUpdate()!;
        t.is(u.step, s);
        t.is(u.lr, lrs[s - 1]);
        const want = Math.abs(norms[s] - norms[s - 1]) / norms[s - 1];
        t.true(Math.abs(u.ratio - want) <= 1e-12 * want + 1e-15, `step ${s}: ${u.ratio} vs ${want}`);
        t.true(u.ratio > 0);
      }
      t.is(f.trainer.lastUpdate(), undefined);
    } finally {
      f.dispose();
    }
  });
}
