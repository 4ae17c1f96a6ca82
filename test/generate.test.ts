/** Generation with a KV cache against PyTorch's full-sequence logits (test/golden). */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError } from '../src/errors';
import { LlamaModel } from '../src/model/llama';
import { loadModelSync } from '../src/inference/model';
import { writeRandomModel } from '../src/model/random_model';
import { generateIds, KvGenerator, sample } from '../src/model/llama_generate';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import { SeededRng } from '../src/util/rng';
import { ALL_DEVICES, makeRng, relErr } from './helpers/check';
import { deviceTest } from './helpers/device_test';

const GOLDEN = path.join(__dirname, '..', '..', 'test', 'golden');

for (const name of ['llama', 'llama_tied', 'qwen2']) {
  for (const device of ALL_DEVICES) deviceTest(device, `${name}: cached token-by-token and chunked prefill logits match PyTorch`, (t) => {
    const dir = path.join(GOLDEN, name);
    const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as { input_ids: number[][]; logits_row0: number[][] };
    const model = LlamaModel.load(dir, { device });
    const adapter = LoraAdapter.load(path.join(dir, 'adapter_in'), model.linearModules, { device });
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

test('top-p sampling picks exactly what sorting the whole vocabulary would', (t) => {
  // The straightforward sampler: every token sorted by probability, the nucleus its prefix.
  const reference = (logits: Float32Array, temperature: number, topP: number, rng: SeededRng): number => {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    const probs = Float64Array.from(logits, (l) => Math.exp((l - logits[best]) / temperature));
    const sum = probs.reduce((a, b) => a + b, 0);
    const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]);
    let kept = 0;
    let mass = 0;
    while (kept < order.length && (kept === 0 || mass < topP * sum)) mass += probs[order[kept++]];
    let u = rng.next() * mass;
    for (let i = 0; i < kept; i++) {
      u -= probs[order[i]];
      if (u <= 0) return order[i];
    }
    return order[kept - 1];
  };
  const rng = makeRng(t);
  for (const V of [1, 7, 1000, 32000]) {
    for (const [temperature, topP] of [[1, 0.9], [0.7, 0.95], [1.5, 0.5], [1, 1], [0.2, 0.99]]) {
      // Peaked, flat and tied logits.
      const logits = Float32Array.from({ length: V }, (_, i) => (i % 5 === 0 ? 3 : Math.round(rng.normal() * 4) / 2));
      const seed = rng.int(0, 2 ** 31);
      const a = new SeededRng(seed), b = new SeededRng(seed);
      for (let k = 0; k < 20; k++) t.is(sample(logits, temperature, topP, a), reference(logits, temperature, topP, b), `V=${V} T=${temperature} p=${topP}`);
    }
  }
});

test('generate() stops at every end-of-sequence id the folder names: tokenizer, config.json list, generation_config.json', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-gen-'));
  const cfg = writeRandomModel(dir, { hiddenSize: 32, numLayers: 1, numHeads: 2, seed: 5 });
  const greedy = { maxNewTokens: 6, temperature: 0 };
  const free = loadModelSync(dir);
  const ids = free.generate('Hi', { ...greedy, stopTokens: [] }).ids;
  free.dispose();
  t.is(ids.length, 6);
  const first = ids[0];
  const stopsAtFirst = (what: string) => {
    const m = loadModelSync(dir);
    t.deepEqual(m.generate('Hi', greedy).ids, [first], what);
    m.dispose();
  };
  // Llama 3.x Instruct style: a list in config.json beside the tokenizer's own eos_token.
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, eos_token_id: [cfg.eos_token_id, first] }));
  stopsAtFirst('config.json eos_token_id list');
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: cfg.bos_token_id, eos_token_id: [cfg.eos_token_id, first] }));
  stopsAtFirst('generation_config.json eos_token_id list');
  fs.writeFileSync(path.join(dir, 'generation_config.json'), '{"eos_token_id": "x"}');
  const m = loadModelSync(dir);
  const e = t.throws(() => m.generate('Hi', greedy), { instanceOf: PeftkitError });
  t.regex(e!.message, /generation_config\.json: field "eos_token_id" is "x"/);
  m.dispose();
});

for (const device of ALL_DEVICES) deviceTest(device, 'generate() with an adapter folder reads it again when it has been written again', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-gen-'));
  writeRandomModel(dir, { hiddenSize: 32, numLayers: 1, numHeads: 2, seed: 6 });
  const model = loadModelSync(dir, { device });
  t.is(model.llama.device, device);
  const adapterDir = path.join(dir, 'adapter');
  const save = (seed: number) => {
    const a = LoraAdapter.create(model.llama.linearModules, defaultLoraConfig({ r: 4, lora_alpha: 64, target_modules: ['q_proj', 'v_proj', 'o_proj'] }), { seed, device });
    for (const l of a.layers.values()) l.B.write(Float32Array.from({ length: l.B.numel }, (_, i) => Math.sin(seed * 7 + i)));
    a.save(adapterDir);
    return a;
  };
  const opts = { maxNewTokens: 6, temperature: 0, stopTokens: [] as number[] };
  const first = save(1);
  const fromFirst = model.generate([1, 2, 3], { ...opts, adapter: adapterDir }).ids;
  t.deepEqual(fromFirst, model.generate([1, 2, 3], { ...opts, adapter: first }).ids);
  const second = save(2);
  const fromSecond = model.generate([1, 2, 3], { ...opts, adapter: adapterDir }).ids;
  t.deepEqual(fromSecond, model.generate([1, 2, 3], { ...opts, adapter: second }).ids, 'the rewritten folder is used');
  t.notDeepEqual(fromSecond, fromFirst, 'the two adapters generate differently');
  for (const a of [first, second]) a.dispose();
  model.dispose();
});
