/**
 * A checkpoint stored in bf16 (as real Llama checkpoints are): the embeddings and an untied
 * head stay bf16 in memory, and everything computed from them equals what the same values
 * stored in f32 give (a bf16 value widens exactly).
 */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { LlamaForward } from '../src/model/llama_forward';
import { generateIds, KvGenerator } from '../src/model/llama_generate';
import { writeRandomModel } from '../src/model/random_model';
import { SafetensorsCheckpoint, TensorToWrite, writeSafetensors } from '../src/model/safetensors';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import { ALL_DEVICES, makeRng, relErr } from './helpers/check';
import { deviceTest } from './helpers/device_test';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bf16ck-'));

/** A bf16 random model and an f32 folder holding the same (widened) values. */
function pair(tied: boolean, seed: number): { bf16: string; f32: string } {
  const root = tmp();
  const bf16 = path.join(root, 'bf16'), f32 = path.join(root, 'f32');
  writeRandomModel(bf16, { dtype: 'bf16', hiddenSize: 48, intermediateSize: 101, numLayers: 2, numHeads: 4, numKvHeads: 2, vocabSize: 300, tieWordEmbeddings: tied, seed });
  fs.mkdirSync(f32);
  fs.copyFileSync(path.join(bf16, 'config.json'), path.join(f32, 'config.json'));
  const ck = new SafetensorsCheckpoint(bf16);
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, info] of ck.tensors) tensors[name] = { dtype: 'F32', shape: info.shape, data: ck.readFloat32(name) };
  writeSafetensors(path.join(f32, 'model.safetensors'), tensors);
  return { bf16, f32 };
}

for (const tied of [false, true]) {
  for (const quantize of [undefined, 'nf4'] as const) {
    for (const device of ALL_DEVICES) deviceTest(device, `bf16 checkpoint (${tied ? 'tied' : 'untied'}${quantize ? ', nf4' : ''}): embeddings/head stay bf16, loss, gradients and logits equal the f32 copy's`, (t) => {
      const rng = makeRng(t);
      const dirs = pair(tied, rng.int(0, 1 << 30));
      const a = LlamaModel.load(dirs.bf16, { quantize, device }), b = LlamaModel.load(dirs.f32, { quantize, device });
      t.is(a.weight('model.embed_tokens.weight').dtype, 'bf16');
      t.is(a.weight('lm_head.weight').dtype, 'bf16');
      t.is(a.weight('model.norm.weight').dtype, 'f32');
      t.is(b.weight('model.embed_tokens.weight').dtype, 'f32', 'an f32 checkpoint keeps f32');
      t.is(b.weight('lm_head.weight').dtype, 'f32');
      const lw = a.linear('model.layers.1.mlp.down_proj.weight');
      t.is('W' in lw ? lw.W.dtype : lw.q.format, quantize ?? 'f32', 'Linear weights as before');

      const B = 2, T = 9, V = a.config.vocabSize;
      const ids = Int32Array.from({ length: B * T }, () => rng.int(0, V));
      const labels = Int32Array.from(ids, (x, i) => (i % 5 === 2 ? -100 : x));
      const cfg = defaultLoraConfig({ r: 3, lora_alpha: 6, target_modules: 'all-linear' });
      const run = (m: LlamaModel) => {
        const ad = LoraAdapter.create(m.linearModules, cfg, { seed: 11, device });
        for (const l of ad.layers.values()) l.B.write(Float32Array.from({ length: l.B.numel }, (_, i) => Math.cos(i) * 0.05));
        const f = new LlamaForward(m, ad, B * T, T, false);
        ad.zeroGrad();
        const r = f.run({ inputIds: ids, labels, B, T }, { dropout: 0, dropoutSeed: 0 }, 1 / 10);
        const grads = ad.parameters().map((p) => p.grad.toFloat32Array());
        const g = new KvGenerator(m, T, ad);
        const logits = g.feed(Array.from(ids.subarray(0, T)));
        const greedy = generateIds(m, [1, 2, 3], { maxNewTokens: 4, temperature: 0, stopTokens: [], adapter: ad });
        g.dispose();
        f.dispose();
        ad.dispose();
        return { loss: r.lossSum, grads, logits, greedy };
      };
      const ra = run(a), rb = run(b);
      t.true(Math.abs(ra.loss - rb.loss) <= 1e-6 * Math.abs(rb.loss), `loss ${ra.loss} vs ${rb.loss}`);
      for (let i = 0; i < rb.grads.length; i++) t.true(relErr(ra.grads[i], rb.grads[i]) <= 1e-6, `grad ${i}`);
      t.true(relErr(ra.logits, rb.logits) <= 1e-6, `logits ${relErr(ra.logits, rb.logits)}`);
      t.deepEqual(ra.greedy, rb.greedy);
      a.dispose();
      b.dispose();
    });
  }
}

test("dtype 'bf16' stores the embeddings (tied: the head too) in bf16", (t) => {
  const dir = tmp();
  writeRandomModel(dir, { hiddenSize: 32, numLayers: 1, numHeads: 2, vocabSize: 50, tieWordEmbeddings: true, seed: 3 });
  const m = LlamaModel.load(dir, { dtype: 'bf16' });
  t.is(m.weight('model.embed_tokens.weight').dtype, 'bf16');
  t.is(m.weight('lm_head.weight'), m.weight('model.embed_tokens.weight'));
  t.is(m.weight('model.layers.0.input_layernorm.weight').dtype, 'f32');
  t.is(generateIds(m, [1, 2], { maxNewTokens: 3, temperature: 0, stopTokens: [] }).length, 3);
  m.dispose();
});
