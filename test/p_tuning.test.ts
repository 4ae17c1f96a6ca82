/**
 * P-tuning beyond the golden runs: the LSTM encoder's backward against float64 finite differences,
 * and a folder as PEFT saves it (the encoder's output only): it generates as trained, and training
 * it is refused by name.
 */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { KvGenerator } from '../src/model/llama_generate';
import { lstmBackward, lstmForward, lstmShapes, LstmSpec } from '../src/peft/p_tuning/lstm';
import { loadAdapter } from '../src/peft/registry';
import { Trainer } from '../src/train/trainer';
import { makeRng, relErr } from './helpers/check';

const ROOT = path.join(__dirname, '..', '..', 'test', 'golden', 'methods');

/** Σ dy ⊙ lstm(x), in float64. */
function lstmLoss(s: LstmSpec, w: Map<string, Float64Array>, x: Float64Array, steps: number, dy: Float64Array): number {
  const y = lstmForward(s, w, x, steps).xs[s.layers];
  return y.reduce((a, v, i) => a + v * dy[i], 0);
}

// Awkward sizes: odd widths, one step (no recurrence), a 1-wide hidden state, 3 stacked layers.
for (const [s, steps] of [[{ input: 5, hidden: 3, layers: 3 }, 7], [{ input: 2, hidden: 1, layers: 1 }, 1], [{ input: 4, hidden: 6, layers: 2 }, 2], [{ input: 7, hidden: 2, layers: 2 }, 5]] as Array<[LstmSpec, number]>) {
  test(`LSTM backward (input ${s.input}, hidden ${s.hidden}, ${s.layers} layers, ${steps} steps) = float64 central differences of its forward, every entry`, (t) => {
    const rng = makeRng(t);
    const w = new Map([...lstmShapes(s)].map(([name, shape]) => [name, Float64Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => 0.6 * rng.normal())]));
    const x = Float64Array.from({ length: steps * s.input }, () => rng.normal());
    const dy = Float64Array.from({ length: steps * 2 * s.hidden }, () => rng.normal());
    const { dx, grads } = lstmBackward(s, w, lstmForward(s, w, x, steps), dy);
    // The five-point stencil (error O(h⁴)): truncation and rounding both near 1e-12 at h = 1e-3.
    const h = 1e-3;
    const fd = (v: Float64Array, i: number) => {
      const old = v[i];
      const at = (d: number) => {
        v[i] = old + d;
        return lstmLoss(s, w, x, steps, dy);
      };
      const g = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h);
      v[i] = old;
      return g;
    };
    let worst = 0;
    for (const [name, v] of [['x', x] as const, ...w]) {
      const an = name === 'x' ? dx : grads.get(name)!;
      const num = Float64Array.from(v, (_, i) => fd(v, i));
      const e = relErr(an, num);
      worst = Math.max(worst, e);
      // Measured: up to 4e-10 over 84 random draws of these sizes.
      t.true(e <= 2e-9, `${name}: relative error ${e.toExponential(2)}`);
    }
    t.log(`worst relative error ${worst.toExponential(2)}`);
  });
}

test('a PEFT-saved P-tuning folder (no prompt encoder) generates as the trained one; training it is refused', (t) => {
  const fixture = path.join(ROOT, 'llama_p_tuning');
  const exp = JSON.parse(fs.readFileSync(path.join(fixture, 'expected.json'), 'utf8')) as { micro_batches: Array<{ input_ids: number[][] }>; logits_row0: number[][] };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-ptuning-'));
  for (const f of ['adapter_config.json', 'adapter_model.safetensors']) fs.copyFileSync(path.join(fixture, 'adapter_in', f), path.join(dir, f));
  const model = LlamaModel.load(path.join(ROOT, 'models', 'llama'));
  const adapter = loadAdapter(dir, model.config);
  t.deepEqual(adapter.parameters(), [], 'nothing to train without the encoder');
  const ids = exp.micro_batches[0].input_ids[0];
  const g = new KvGenerator(model, ids.length, adapter);
  let worst = 0;
  ids.forEach((id, i) => (worst = Math.max(worst, relErr(g.feed([id]), Float32Array.from(exp.logits_row0[i])))));
  t.true(worst <= 1e-5, `logits vs PyTorch: ${worst.toExponential(2)}`);
  g.dispose();
  const T = ids.length;
  const trainer = new Trainer(model, adapter, { maxRows: T, maxT: T, dropout: 0 });
  const batch = { inputIds: Int32Array.from(ids), labels: Int32Array.from(ids), B: 1, T };
  t.throws(() => trainer.step([batch], 1e-2), { code: 'E_UNSUPPORTED', message: /holds no prompt encoder .* can be used, not trained/ });
  trainer.dispose();
  adapter.dispose();
  model.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});
