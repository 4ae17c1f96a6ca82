/**
 * Diff pruning's mask, applied where δ lives (ops.keepMasked; nothing weight-sized goes through
 * the host): after pruning, the pruned entries of δ and of its gradient are zero before clipping
 * sees the gradient (prepareGrads) and after every update (afterUpdate); the kept ones are untouched.
 */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { writeRandomModel } from '../src/model/random_model';
import { DiffAdapter } from '../src/peft/diff/adapter';
import { createAdapter } from '../src/peft/registry';
import { makeRng, randn } from './helpers/check';

test('after pruning, prepareGrads zeroes the pruned gradient entries and afterUpdate the pruned δ entries; kept ones stay', (t) => {
  const rng = makeRng(t);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-diffmask-'));
  writeRandomModel(dir, { hiddenSize: 64, intermediateSize: 160, numHeads: 4, numKvHeads: 2, numLayers: 1, seed: 2 });
  const model = LlamaModel.load(dir);
  const a = createAdapter('diff', model, { targets: 'all-linear', diff: { density: 0.1, pruneStep: 1 } }) as DiffAdapter;
  try {
    for (const l of a.layers.values()) l.delta.write(randn(rng, l.numel));
    a.afterUpdate(1); // the prune step
    for (const l of a.layers.values()) {
      const mask = l.mask!;
      t.is(mask.reduce((s, v) => s + v, 0), Math.ceil(0.1 * l.numel), l.module.name);
      const g = randn(rng, l.numel), d = randn(rng, l.numel);
      l.grad.write(g);
      l.delta.write(d);
      a.prepareGrads();
      t.deepEqual(l.grad.toFloat32Array(), Float32Array.from(g, (v, i) => (mask[i] ? v : 0)), `${l.module.name} grad`);
      a.afterUpdate(2);
      t.deepEqual(l.delta.toFloat32Array(), Float32Array.from(d, (v, i) => (mask[i] ? v : 0)), `${l.module.name} δ`);
    }
  } finally {
    a.dispose();
    model.dispose();
  }
});
