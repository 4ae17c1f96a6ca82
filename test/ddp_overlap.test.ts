/**
 * Where the overlapped gradient sums start (src/distributed/buckets.ts, the trainer's
 * onGradsFinal): during the backward of a window's last micro-batch, never an earlier one, each
 * bucket once, in bucket order. A one-rank Gloo group in this process, the trainer's calls
 * watched; what the sums give is ddp_train.test.ts's (overlap on and off, bit for bit).
 */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { distributedAvailable, ProcessGroup } from '../src/distributed/group';
import { freePort } from '../src/distributed/store';
import { LlamaModel } from '../src/model/llama';
import { writeRandomModel } from '../src/model/random_model';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import type { Tensor } from '../src/tensor';
import { backwardPoint, Trainer } from '../src/train/trainer';

const needsGloo = distributedAvailable() ? test : test.skip;

test('backwardPoint: a layer\'s parameters after its backward, the final norm and untied head first, the rest at the end', (t) => {
  t.is(backwardPoint('model.layers.3.self_attn.q_proj.weight', 30), 3);
  t.is(backwardPoint('base_model.model.model.layers.12.mlp.down_proj.lora_A.weight', 30), 12);
  t.is(backwardPoint('model.layers.0.input_layernorm.weight', 30), 0);
  t.is(backwardPoint('model.norm.weight', 30), 30);
  t.is(backwardPoint('base_model.model.model.norm.weight', 30), 30);
  t.is(backwardPoint('lm_head.weight', 30), 30);
  t.is(backwardPoint('model.embed_tokens.weight', 30), -1);
  t.is(backwardPoint('prompt_embeddings', 30), -1);
  t.is(backwardPoint('model.layers_extra.weight', 30), -1);
});

needsGloo('overlap: every bucket starts once, in order, during the last micro-batch\'s backward', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-overlap-'));
  writeRandomModel(dir, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 3, tokenizer: false, seed: 5 });
  const model = LlamaModel.load(dir);
  const adapter = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear' }), { seed: 1 });
  const group = await ProcessGroup.join(
    { rank: 0, worldSize: 1, localRank: 0, masterAddr: '127.0.0.1', masterPort: await freePort(), localAddr: '127.0.0.1', timeoutMs: 20000, overlap: true, bucketCapMb: 1 / 1024 },
    { prefix: 'overlap' },
  );
  const trainer = new Trainer(model, adapter, { maxRows: 16, maxT: 8, dropout: 0, maxGradNorm: 1, group });
  try {
    // Which micro-batch's run() is going on when each bucket starts (-1: none), and the last
    // backward point announced before it.
    let run = -1;
    let runs = 0;
    let point: number | null = null;
    const forwardRun = trainer.forward.run.bind(trainer.forward);
    trainer.forward.run = (b, o, scale) => {
      run = runs++;
      point = null;
      const announce = o.onGradsFinal;
      try {
        return forwardRun(b, { ...o, onGradsFinal: announce && ((p) => ((point = p), announce(p))) }, scale);
      } finally {
        run = -1;
      }
    };
    const starts: Array<{ run: number; point: number | null; what: string }> = [];
    const start = group.allReduceSumStart.bind(group);
    group.allReduceSumStart = (x: Tensor, what: string) => (starts.push({ run, point, what }), start(x, what));
    const ids = Int32Array.from({ length: 16 }, (_, i) => (i * 37) % 200);
    const batch = { inputIds: ids, labels: ids, B: 2, T: 8 };
    trainer.step([batch, batch], 1e-3);
    const count = starts.length;
    t.true(count > 3, `${count} buckets`);
    t.deepEqual(starts.map((s) => s.what), Array.from({ length: count }, (_, i) => `gradient bucket ${i + 1} of ${count}`));
    t.false(starts.some((s) => s.run === 0), 'nothing starts in the first micro-batch');
    // All in the last backward (LoRA has no gradient finished only at its end), spread over its
    // points: the head's point first (nothing of LoRA is final there), then layer 2's, 1's, 0's.
    t.true(starts.every((s) => s.run === 1));
    const at = (p: number) => starts.filter((s) => s.point === p).length;
    t.is(at(3), 0);
    for (const p of [2, 1, 0]) t.true(at(p) >= 1, `buckets started at point ${p}: ${at(p)}`);
    t.is(at(2) + at(1) + at(0), count);
    // The next step starts from the first bucket again.
    starts.length = 0;
    runs = 0;
    trainer.step([batch], 1e-3);
    t.is(starts.length, count);
    t.is(starts[0].what, `gradient bucket 1 of ${count}`);
  } finally {
    trainer.dispose();
    adapter.dispose();
    model.dispose();
    await group.close();
  }
});
