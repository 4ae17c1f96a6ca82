/** Generation with a KV cache against PyTorch's full-sequence logits (test/golden). */
import test from 'ava';
import * as fs from 'fs';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { generateIds, KvGenerator, sample } from '../src/model/llama_generate';
import { LoraAdapter } from '../src/peft/lora';
import { SeededRng } from '../src/train/rng';
import { relErr } from './helpers/check';

const GOLDEN = path.join(__dirname, '..', '..', 'test', 'golden');

for (const name of ['llama', 'llama_tied', 'qwen2']) {
  test(`${name}: cached token-by-token and chunked prefill logits match PyTorch`, (t) => {
    const dir = path.join(GOLDEN, name);
    const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as { input_ids: number[][]; logits_row0: number[][] };
    const model = LlamaModel.load(dir);
    const adapter = LoraAdapter.load(path.join(dir, 'adapter_in'), model.linearModules);
    const ids = exp.input_ids[0];
    const one = new KvGenerator(model, ids.length, adapter);
    for (let i = 0; i < ids.length; i++) {
      const e = relErr(one.feed([ids[i]]), exp.logits_row0[i]);
      t.true(e <= 1e-4, `position ${i}: relative error ${e.toExponential(2)}`);
    }
    one.dispose();
    // Prefill of 4 tokens, then the rest in a chunk of 3 and single steps.
    const chunked = new KvGenerator(model, ids.length, adapter);
    t.true(relErr(chunked.feed(ids.slice(0, 4)), exp.logits_row0[3]) <= 1e-4, 'prefill');
    t.true(relErr(chunked.feed(ids.slice(4, 7)), exp.logits_row0[6]) <= 1e-4, 'chunk');
    t.true(relErr(chunked.feed(ids.slice(7, 8)), exp.logits_row0[7]) <= 1e-4, 'step');
    t.throws(() => chunked.feed([1, 2]), { message: /exceeds the cache/ });
    chunked.dispose();
    // Greedy decoding is deterministic and stops at max tokens.
    const a = generateIds(model, ids.slice(0, 3), { maxNewTokens: 5, temperature: 0, adapter, stopTokens: [] });
    const b = generateIds(model, ids.slice(0, 3), { maxNewTokens: 5, temperature: 0, adapter, stopTokens: [] });
    t.deepEqual(a, b);
    t.is(a.length, 5);
    adapter.dispose();
    model.dispose();
  });
}

test('sampling: greedy at temperature 0, top-p keeps the nucleus, seeded', (t) => {
  const logits = new Float32Array([0, 5, 1, 4.9, -3]);
  t.is(sample(logits, 0, 1, new SeededRng(1)), 1);
  const seen = new Set<number>();
  const rng = new SeededRng(7);
  for (let i = 0; i < 200; i++) seen.add(sample(logits, 1, 0.8, rng));
  t.deepEqual([...seen].sort(), [1, 3], 'top-p 0.8 keeps only the two near-equal best tokens');
  const r1 = new SeededRng(3), r2 = new SeededRng(3);
  t.deepEqual(Array.from({ length: 20 }, () => sample(logits, 2, 1, r1)), Array.from({ length: 20 }, () => sample(logits, 2, 1, r2)));
});
