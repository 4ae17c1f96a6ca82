/**
 * End-to-end LoRA training against PyTorch: scripts/golden/torch_llama_lora.py wrote small
 * random checkpoints in Hugging Face layout, a starting adapter with non-zero B, and what
 * 3 AdamW steps of a PyTorch implementation of the HF model produce. We must agree to 1e-5 (measured ~1e-6).
 */
import * as fs from 'fs';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { SafetensorsCheckpoint } from '../src/model/safetensors';
import { LoraAdapter } from '../src/peft/lora';
import { Trainer } from '../src/train/trainer';
import { ALL_DEVICES, relErr } from './helpers/check';
import { deviceTest } from './helpers/device_test';

const GOLDEN = path.join(__dirname, '..', '..', 'test', 'golden');

interface Expected {
  input_ids: number[][];
  labels: number[][];
  hyper: { lr: number; betas: [number, number]; eps: number; weight_decay: number; steps: number };
  losses: number[];
  final_loss: number;
}

// The same tolerances on cuda: f32 compute is exact f32 there (no TF32), as the kernel tests check to 1e-5.
for (const name of ['llama', 'llama_tied', 'qwen2']) {
  for (const device of ALL_DEVICES) deviceTest(device, `${name}: 3 LoRA AdamW steps match PyTorch (losses, step-0 gradients, final adapter)`, (t) => {
    const dir = path.join(GOLDEN, name);
    const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as Expected;
    const model = LlamaModel.load(dir, { device });
    const adapter = LoraAdapter.load(path.join(dir, 'adapter_in'), model.linearModules, { device });
    const B = exp.input_ids.length, T = exp.input_ids[0].length;
    const batch = { inputIds: Int32Array.from(exp.input_ids.flat()), labels: Int32Array.from(exp.labels.flat()), B, T };
    const h = exp.hyper;
    const trainer = new Trainer(model, adapter, {
      maxRows: B * T, maxT: T, dropout: 0, maxGradNorm: 0, betas: h.betas, eps: h.eps, weightDecay: h.weight_decay,
    });
    for (let s = 0; s < h.steps; s++) {
      const r = trainer.step([batch], h.lr);
      t.true(Math.abs(r.loss - exp.losses[s]) <= 1e-5 * Math.abs(exp.losses[s]), `step ${s}: loss ${r.loss} vs torch ${exp.losses[s]}`);
      if (s === 0) {
        const g = new SafetensorsCheckpoint(dir, 'grads_step0.safetensors');
        for (const p of trainer.optimizer.params) {
          const e = relErr(p.grad.toFloat32Array(), g.readFloat32(p.name));
          t.true(e <= 1e-5, `step-0 gradient of ${p.name}: relative error ${e.toExponential(2)}`);
        }
      }
    }
    const out = new SafetensorsCheckpoint(dir, 'adapter_out.safetensors');
    let worst = 0;
    for (const [tensorName, value] of adapter.stateDict()) {
      const e = relErr(value, out.readFloat32(tensorName));
      worst = Math.max(worst, e);
      t.true(e <= 1e-5, `${tensorName}: relative error ${e.toExponential(2)} after ${h.steps} steps`);
    }
    t.log(`worst relative error over the adapter after ${h.steps} steps: ${worst.toExponential(2)}`);
    const final = trainer.evaluate([batch]);
    t.true(Math.abs(final.loss - exp.final_loss) <= 1e-5 * exp.final_loss, `final loss ${final.loss} vs ${exp.final_loss}`);
    trainer.dispose();
    adapter.dispose();
    model.dispose();
  });
}

for (const device of ALL_DEVICES) deviceTest(device, 'bf16 base weights and bf16 compute (f32 sums) stay within bf16 rounding of the PyTorch f32 run', (t) => {
  const dir = path.join(GOLDEN, 'llama');
  const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as Expected;
  const model = LlamaModel.load(dir, { dtype: 'bf16', device });
  t.is(model.compute, 'bf16');
  t.is(model.weight('model.layers.0.self_attn.q_proj.weight').dtype, 'bf16');
  t.is(model.weight('model.embed_tokens.weight').dtype, 'bf16', 'dtype bf16 covers the embeddings too');
  const adapter = LoraAdapter.load(path.join(dir, 'adapter_in'), model.linearModules, { device });
  const B = exp.input_ids.length, T = exp.input_ids[0].length;
  const batch = { inputIds: Int32Array.from(exp.input_ids.flat()), labels: Int32Array.from(exp.labels.flat()), B, T };
  const h = exp.hyper;
  const trainer = new Trainer(model, adapter, { maxRows: B * T, maxT: T, dropout: 0, maxGradNorm: 0, betas: h.betas, eps: h.eps, weightDecay: h.weight_decay });
  for (let s = 0; s < h.steps; s++) {
    const r = trainer.step([batch], h.lr);
    t.true(Math.abs(r.loss - exp.losses[s]) <= 1e-2 * exp.losses[s], `step ${s}: ${r.loss} vs ${exp.losses[s]}`);
  }
  const out = new SafetensorsCheckpoint(dir, 'adapter_out.safetensors');
  let worst = 0;
  for (const [name, value] of adapter.stateDict()) worst = Math.max(worst, relErr(value, out.readFloat32(name)));
  t.log(`worst adapter relative error with bf16 base weights: ${worst.toExponential(2)}`);
  t.true(worst <= 0.1, `${worst}`);
  trainer.dispose();
  adapter.dispose();
  model.dispose();
});
