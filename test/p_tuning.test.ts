/**
 * P-tuning beyond the golden runs: the LSTM encoder's backward against float64 finite differences,
 * adapter_config.json's encoder fields, and a folder as PEFT saves it (the encoder's output only):
 * it generates as trained, and training it is refused by name.
 */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { KvGenerator } from '../src/model/llama_generate';
import { writeSafetensors, SafetensorsCheckpoint } from '../src/model/safetensors';
import { lstmBackward, lstmForward, lstmShapes, LstmSpec } from '../src/peft/p_tuning/lstm';
import { createAdapter, loadAdapter } from '../src/peft/registry';
import { resolveTrainOptions } from '../src/train/options';
import { Trainer } from '../src/train/trainer';
import { ALL_DEVICES, makeRng, relErr } from './helpers/check';
import { deviceTest } from './helpers/device_test';

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

for (const fixture of ['llama_p_tuning', 'llama_p_tuning_lstm']) {
  for (const device of ALL_DEVICES) deviceTest(device, `a PEFT-saved P-tuning folder (no prompt encoder; ${fixture}) generates as the trained one; training it is refused`, (t) => {
    const src = path.join(ROOT, fixture);
    const exp = JSON.parse(fs.readFileSync(path.join(src, 'expected.json'), 'utf8')) as { micro_batches: Array<{ input_ids: number[][] }>; logits_row0: number[][] };
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-ptuning-'));
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) fs.copyFileSync(path.join(src, 'adapter_in', f), path.join(dir, f));
    const model = LlamaModel.load(path.join(ROOT, 'models', 'llama'), { device });
    const adapter = loadAdapter(dir, model.config, { device });
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
}

test('adapter_config.json\'s encoder fields: LSTM dropout between layers refused, MLP dropout ignored as PEFT does, unknown types and missing LSTM tensors named', (t) => {
  const src = path.join(ROOT, 'llama_p_tuning_lstm', 'adapter_in');
  const model = LlamaModel.load(path.join(ROOT, 'models', 'llama'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-ptuning-config-'));
  const file = path.join(dir, 'adapter_config.json');
  const base = JSON.parse(fs.readFileSync(path.join(src, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
  for (const f of ['adapter_model.safetensors', 'prompt_encoder.safetensors']) fs.copyFileSync(path.join(src, f), path.join(dir, f));
  const load = (over: Record<string, unknown>) => {
    fs.writeFileSync(file, JSON.stringify({ ...base, ...over }));
    return () => loadAdapter(dir, model.config).dispose();
  };
  t.notThrows(load({}));
  t.throws(load({ encoder_dropout: 0.1 }), { code: 'E_UNSUPPORTED', message: `${file}: "encoder_dropout" = 0.1 is not supported by peftkit: dropout between the LSTM encoder's 2 layers is not implemented (only 0)` });
  t.throws(load({ encoder_dropout: '0.1' }), { code: 'E_CONFIG', message: `${file}: "encoder_dropout" is "0.1", expected a number in [0, 1)` });
  t.throws(load({ encoder_reparameterization_type: 'GRU' }), { code: 'E_CONFIG', message: `${file}: "encoder_reparameterization_type" is "GRU", expected "MLP" or "LSTM"` });
  // A 3-layer LSTM needs tensors this 2-layer file lacks.
  t.throws(load({ encoder_num_layers: 3 }), { code: 'E_MISSING', message: /prompt_encoder\.safetensors: no tensor 'prompt_encoder\.lstm_head\.weight_ih_l2' \(adapter_config\.json's LSTM encoder needs it\)/ });
  // One layer: nn.LSTM applies no dropout, so neither does peftkit.
  const ck = new SafetensorsCheckpoint(dir, 'prompt_encoder.safetensors');
  const one: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [name, info] of ck.tensors) if (!/_l1(_reverse)?$/.test(name)) one[name] = { dtype: 'F32', shape: info.shape, data: ck.readFloat32(name) };
  writeSafetensors(path.join(dir, 'prompt_encoder.safetensors'), one);
  t.notThrows(load({ encoder_num_layers: 1, encoder_dropout: 0.1 }));
  // The MLP encoder: PEFT passes encoder_dropout nowhere.
  const mlp = createAdapter('p-tuning', model, { numVirtualTokens: 4, encoderHiddenSize: 8 });
  mlp.save(path.join(dir, 'mlp'));
  mlp.dispose();
  fs.writeFileSync(path.join(dir, 'mlp', 'adapter_config.json'), JSON.stringify({ ...JSON.parse(fs.readFileSync(path.join(dir, 'mlp', 'adapter_config.json'), 'utf8')), encoder_dropout: 0.1 }));
  t.notThrows(() => loadAdapter(path.join(dir, 'mlp'), model.config).dispose());
  t.throws(() => createAdapter('p-tuning', model, { encoder: 'gru' as never }), { code: 'E_ARG', message: "encoder: expected mlp or lstm, got 'gru'" });
  model.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a new LSTM encoder has PEFT\'s tensors (names, shapes) and PyTorch\'s init bounds', (t) => {
  const model = LlamaModel.load(path.join(ROOT, 'models', 'qwen2'));
  const C = model.config.hiddenSize, h = 5;
  const a = createAdapter('p-tuning', model, { numVirtualTokens: 3, encoderHiddenSize: h, encoder: 'lstm', seed: 1 });
  const ref = new SafetensorsCheckpoint(path.join(ROOT, 'llama_p_tuning_lstm', 'adapter_in'), 'prompt_encoder.safetensors');
  t.deepEqual(a.parameters().map((p) => p.name).sort(), [...ref.tensors.keys()].sort());
  for (const p of a.parameters()) {
    const v = p.param.toFloat32Array();
    const max = v.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    if (p.name.includes('lstm_head')) t.true(max <= 1 / Math.sqrt(h), `${p.name}: |x| <= 1/sqrt(h)`);
    t.is(p.decay, p.name.includes('bias') ? false : undefined, p.name);
  }
  t.deepEqual(a.parameters().find((p) => p.name === 'prompt_encoder.lstm_head.weight_ih_l1_reverse')!.param.shape, [4 * h, 2 * h]);
  t.deepEqual(a.parameters().find((p) => p.name === 'prompt_encoder.mlp_head.2.weight')!.param.shape, [C, 2 * h]);
  t.is((a.config as unknown as { encoder_reparameterization_type: string }).encoder_reparameterization_type, 'LSTM');
  a.dispose();
  model.dispose();
});

test('train()\'s encoder option: mlp or lstm, anything else refused by name', (t) => {
  const base = { model: 'm', data: 'd', out: 'o', method: 'p-tuning' } as const;
  t.is(resolveTrainOptions({ ...base, encoder: 'lstm' }).encoder, 'lstm');
  t.is(resolveTrainOptions(base).encoder, undefined, 'the method\'s default (mlp) applies');
  t.throws(() => resolveTrainOptions({ ...base, encoder: 'gru' as never }), { code: 'E_ARG', message: "encoder: expected mlp or lstm, got 'gru'" });
});
