/**
 * Serving many adapters on one base: adapters loaded, listed and unloaded by name (sync and in
 * the worker); a batch whose rows each use another adapter (LoRA, DoRA, IA3, prefix tuning, none)
 * gives each row the tokens it gets alone; adapters that cannot share a batch are refused by
 * name (and run alone by AsyncModel's queue); concurrent AsyncModel requests share a batch, each
 * with its own stream and AbortSignal; PEFT's add_weighted_adapter ('linear', 'cat') against a
 * float64 reference of its formula.
 */
import test, { ExecutionContext } from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModelSync, loadModel, PeftkitError, writeRandomModel } from '../src/index';
import type { Generation, Model } from '../src/index';
import { createAdapter } from '../src/peft/registry';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-serving-'));

function modelDir(): string {
  const dir = path.join(tmp(), 'model');
  writeRandomModel(dir, { hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, seed: 5 });
  return dir;
}

/** A LoRA adapter folder whose term changes the output clearly (random A and B, scaling 4). */
function loraFolder(m: Model, seed: number, o: { r?: number; targets?: string[] | 'all-linear'; rslora?: boolean } = {}): string {
  const r = o.r ?? 4;
  const a = LoraAdapter.create(m.llama.linearModules, defaultLoraConfig({ r, lora_alpha: 4 * r, target_modules: o.targets ?? 'all-linear', init_lora_weights: false, use_rslora: o.rslora ?? false }), { seed });
  const out = path.join(tmp(), `lora${seed}`);
  a.save(out);
  a.dispose();
  return out;
}

/** An adapter of another method, its parameters moved off their identity start so that it matters. */
function methodFolder(m: Model, method: 'dora' | 'ia3' | 'prefix' | 'ln' | 'bitfit' | 'adapter' | 'p-tuning' | 'diff', seed: number): string {
  const a = createAdapter(method, m.llama, { seed, targets: method === 'ia3' ? ['k_proj', 'v_proj', 'down_proj'] : method === 'dora' ? 'all-linear' : undefined, numVirtualTokens: 3 });
  for (const p of a.parameters()) {
    const v = p.param.toFloat32Array();
    const amplitude = method === 'ia3' || method === 'adapter' ? 2 : 0.3; // IA3 scales and bottleneck outputs need more to change greedy tokens
    p.param.write(v.map((x, i) => x + amplitude * Math.sin(seed + i * 0.7)));
  }
  const out = path.join(tmp(), `${method}${seed}`);
  a.save(out);
  a.dispose();
  return out;
}

function rejectsWith(t: ExecutionContext, fn: () => unknown, code: string, re?: RegExp): void {
  const e = t.throws(fn, { instanceOf: PeftkitError });
  t.is(e?.code, code, e?.message);
  if (re) t.regex(e?.message ?? '', re);
}

test('adapters by name: load, list, generate, unload; the base is loaded once', (t) => {
  const m = loadModelSync(modelDir());
  const f1 = loraFolder(m, 1), f2 = loraFolder(m, 2);
  const baseWeights = m.llama.weight('model.layers.0.self_attn.q_proj.weight');
  m.loadAdapter('one', f1);
  m.loadAdapter('two', f2);
  t.deepEqual(m.adapters(), [{ name: 'one', folder: path.resolve(f1), peftType: 'LORA' }, { name: 'two', folder: path.resolve(f2), peftType: 'LORA' }]);
  const o = { maxNewTokens: 8, temperature: 0, stopTokens: [] };
  const byName = m.generate('Hi', { ...o, adapter: 'one' });
  t.deepEqual(byName, m.generate('Hi', { ...o, adapter: f1 }), 'a name and its folder give the same tokens');
  t.notDeepEqual(byName.ids, m.generate('Hi', { ...o, adapter: 'two' }).ids, 'switching adapters changes the output');
  t.notDeepEqual(byName.ids, m.generate('Hi', o).ids, 'the adapter matters');
  t.is(m.llama.weight('model.layers.0.self_attn.q_proj.weight'), baseWeights, 'the base tensors are the same objects');
  rejectsWith(t, () => m.loadAdapter('one', f2), 'E_ARG', /'one' is loaded/);
  rejectsWith(t, () => m.loadAdapter('', f2), 'E_ARG', /name/);
  // Unloading while a stream uses the adapter: the stream finishes, then the adapter is freed.
  const s = m.stream('Hi', { ...o, adapter: 'one' });
  const first = s.next();
  m.unloadAdapter('one');
  const rest = [...(function* () { for (let r = s.next(); !r.done; r = s.next()) yield r.value.id; })()];
  t.deepEqual([(first.value as { id: number }).id, ...rest], byName.ids, 'the running stream kept its adapter');
  t.deepEqual(m.adapters().map((a) => a.name), ['two']);
  rejectsWith(t, () => m.unloadAdapter('one'), 'E_ARG', /no adapter named 'one' is loaded \(loaded: two\)/);
  // The name is free again; an unknown name is read as a folder.
  m.loadAdapter('one', f2);
  t.deepEqual(m.generate('Hi', { ...o, adapter: 'one' }), m.generate('Hi', { ...o, adapter: 'two' }));
  t.throws(() => m.generate('Hi', { ...o, adapter: 'three' }), { instanceOf: PeftkitError });
  m.dispose();
});

test('a batch of 8 LoRA adapters, rows without one, DoRA, IA3, prefix, BitFit, bottleneck, P-tuning and diff rows gives each row its tokens alone (greedy and seeded sampling)', (t) => {
  const m = loadModelSync(modelDir());
  for (let i = 0; i < 8; i++) m.loadAdapter(`lora${i}`, loraFolder(m, 10 + i));
  const others = ['dora', 'ia3', 'prefix', 'bitfit', 'adapter', 'p-tuning', 'diff'] as const;
  others.forEach((method, i) => m.loadAdapter(method, methodFolder(m, method, i + 1)));
  const names = [...Array.from({ length: 8 }, (_, i) => `lora${i}`), null, ...others, null, 'lora3'];
  for (const sampling of [{ temperature: 0 }, { temperature: 0.9, topP: 0.9 }]) {
    // Different prompts, lengths and seeds; the same adapter twice (lora3), rows ending at different steps.
    const requests = names.map((adapter, i) => ({ prompt: `row ${i} says`.slice(0, 4 + (i % 5)), adapter, maxNewTokens: 6 + (i % 4) * 3, seed: i, stopTokens: [], ...sampling }));
    const alone = requests.map(({ prompt, ...o }) => m.generate(prompt, o));
    const batched = m.generateBatch(requests);
    t.deepEqual(batched, alone, JSON.stringify(sampling));
    const unchanged = requests.filter((r, i) => r.adapter && m.generate(r.prompt, { ...r, adapter: null }).ids.join() === alone[i].ids.join());
    t.deepEqual(unchanged.map((r) => r.adapter), [], 'every adapter changes its row');
    t.deepEqual(batched.map((g) => g.ids.length), requests.map((r) => r.maxNewTokens));
  }
  // Streaming: each row's pieces in order, joined to its text; the last piece carries the Generation.
  const reqs = [{ prompt: 'ab', adapter: 'lora0', maxNewTokens: 5, temperature: 0 }, { prompt: 'cd', adapter: 'ia3', maxNewTokens: 3, temperature: 0 }];
  const pieces: Array<{ index: number; text: string; generation?: Generation }> = [...iterate(m.streamBatch(reqs))];
  for (const [i, r] of reqs.entries()) {
    const mine = pieces.filter((p) => p.index === i);
    const whole = m.generate(r.prompt, r);
    t.is(mine.map((p) => p.text).join(''), whole.text);
    t.deepEqual(mine[mine.length - 1].generation, whole);
  }
  m.dispose();
});

function* iterate<T>(g: Generator<T, unknown, undefined>): Generator<T> {
  for (let r = g.next(); !r.done; r = g.next()) yield r.value;
}

test('adapters that change what every row shares are refused by name; bad requests name their index', (t) => {
  const m = loadModelSync(modelDir());
  m.loadAdapter('ln', methodFolder(m, 'ln', 4));
  m.loadAdapter('lora', loraFolder(m, 4));
  rejectsWith(t, () => m.generateBatch([{ prompt: 'a', adapter: 'lora' }, { prompt: 'b', adapter: 'ln' }]), 'E_UNSUPPORTED', /adapter 'ln' changes model\.(layers\.0\.input_layernorm|norm)/);
  rejectsWith(t, () => m.generateBatch([{ prompt: 'a', adapter: 'ln' }]), 'E_UNSUPPORTED', /generate its requests alone/);
  t.is(m.generate('a', { adapter: 'ln', maxNewTokens: 2, stopTokens: [] }).ids.length, 2, 'alone it runs');
  rejectsWith(t, () => m.generateBatch([]), 'E_ARG', /non-empty/);
  const zero = { maxNewTokens: 0, stopTokens: [] };
  t.deepEqual(m.generateBatch([{ prompt: 'a', ...zero }, { prompt: 'b', maxNewTokens: 1, stopTokens: [] }]), [m.generate('a', zero), m.generate('b', { maxNewTokens: 1, stopTokens: [] })]);
  t.deepEqual(m.generate('a', zero).ids, []);
  rejectsWith(t, () => m.generateBatch([{ prompt: 'a' }, { prompt: [] }]), 'E_ARG', /request 1: the prompt is empty/);
  m.dispose();
});

test('AsyncModel: adapters by name in the worker; concurrent requests share a batch, each with its own tokens, stream and AbortSignal', async (t) => {
  const dir = modelDir();
  const sync = loadModelSync(dir);
  const folders = [0, 1, 2].map((i) => loraFolder(sync, 20 + i));
  const am = await loadModel(dir);
  t.is(am.maxBatchSize, 8);
  await Promise.all(folders.map((f, i) => am.loadAdapter(`a${i}`, f)));
  t.deepEqual((await am.adapters()).map((a) => a.name), ['a0', 'a1', 'a2']);
  await t.throwsAsync(am.loadAdapter('a0', folders[1]), { instanceOf: PeftkitError, message: /'a0' is loaded/ });
  await t.throwsAsync(am.loadAdapter('f', (() => 1) as never), { instanceOf: PeftkitError, message: /folder: expected a string/ });
  const o = { maxNewTokens: 10, temperature: 0.8, stopTokens: [] };
  const requests = [{ prompt: 'x', adapter: 'a0', seed: 1 }, { prompt: 'yy', adapter: 'a1', seed: 2 }, { prompt: 'z', adapter: null, seed: 3 }, { prompt: 'w', adapter: folders[2], seed: 4 }];
  folders.forEach((f, i) => sync.loadAdapter(`a${i}`, f));
  const alone = requests.map(({ prompt, adapter, seed }) => sync.generate(prompt, { ...o, seed, adapter }));
  t.deepEqual(await am.generateBatch(requests.map((r) => ({ ...r, ...o }))), alone);
  // Streams asked together interleave (one batch); with maxBatchSize 1 they run one after the other.
  const order = async (model: typeof am) => {
    const seen: number[] = [];
    const texts = await Promise.all(requests.slice(0, 2).map(async (r, i) => {
      let text = '';
      for await (const p of model.stream(r.prompt, { ...o, seed: r.seed, adapter: r.adapter })) {
        seen.push(i);
        text += p.text;
      }
      return text;
    }));
    return { seen, texts };
  };
  const together = await order(am);
  t.deepEqual(together.texts, alone.slice(0, 2).map((g) => g.text));
  t.true(together.seen.indexOf(1) < together.seen.lastIndexOf(0), `batched: ${together.seen.join('')}`);
  const serial = await loadModel(dir, { maxBatchSize: 1 });
  await serial.loadAdapter('a0', folders[0]);
  await serial.loadAdapter('a1', folders[1]);
  const oneByOne = await order(serial);
  t.deepEqual(oneByOne.seen, [...Array(10).fill(0), ...Array(10).fill(1)]);
  t.deepEqual(oneByOne.texts, together.texts);
  await serial.dispose();
  // Aborting one row of a batch ends it alone; the others finish with their own tokens.
  const ctrl = new AbortController();
  const long = { ...o, maxNewTokens: 400 };
  const running = [am.generate('x', { ...long, seed: 1, adapter: 'a0' }), am.generate('yy', { ...long, seed: 2, adapter: 'a1', signal: ctrl.signal }), am.generate('z', { ...o, seed: 3 })];
  const third = await running[2];
  ctrl.abort();
  await t.throwsAsync(running[1], { instanceOf: PeftkitError, message: /aborted/ });
  t.deepEqual(await running[0], sync.generate('x', { ...long, seed: 1, adapter: folders[0] }));
  t.deepEqual(third, alone[2]);
  t.deepEqual(await Promise.all([am.generate('x', { ...o, maxNewTokens: 0 }), am.generate('y', { ...o, maxNewTokens: 2 })]).then((g) => g.map((x) => x.ids.length)), [0, 2]);
  // A row the batch refuses runs alone: an LN-tuning adapter beside a LoRA one, and a bad folder beside both.
  const lnDir = methodFolder(sync, 'ln', 6);
  await am.loadAdapter('ln', lnDir);
  const mixed = await Promise.allSettled([am.generate('x', { ...o, seed: 1, adapter: 'a0' }), am.generate('q', { ...o, adapter: 'ln' }), am.generate('q', { ...o, adapter: path.join(tmp(), 'none') })]);
  t.deepEqual(mixed[0], { status: 'fulfilled', value: alone[0] });
  t.deepEqual(mixed[1], { status: 'fulfilled', value: sync.generate('q', { ...o, adapter: lnDir }) });
  t.is(mixed[2].status, 'rejected');
  await am.unloadAdapter('a0');
  await t.throwsAsync(am.unloadAdapter('a0'), { instanceOf: PeftkitError, message: /no adapter named 'a0'/ });
  await am.dispose();
  sync.dispose();
});

test('a row whose adapter overflows fails alone (E_NAN); the other rows finish', async (t) => {
  const dir = modelDir();
  const m = loadModelSync(dir);
  const good = loraFolder(m, 30);
  const a = LoraAdapter.create(m.llama.linearModules, defaultLoraConfig({ r: 4, lora_alpha: 16, target_modules: 'all-linear', init_lora_weights: false }), { seed: 31 });
  for (const l of a.layers.values()) l.B.write(l.B.toFloat32Array().map((v) => v * 1e30));
  const huge = path.join(tmp(), 'huge');
  a.save(huge);
  a.dispose();
  m.loadAdapter('good', good);
  m.loadAdapter('huge', huge);
  const o = { maxNewTokens: 6, temperature: 0, stopTokens: [] };
  const requests = [{ prompt: 'ab', adapter: 'good', ...o }, { prompt: 'cd', adapter: 'huge', ...o }, { prompt: 'ef', ...o }];
  rejectsWith(t, () => m.generateBatch(requests), 'E_NAN', /adapter/);
  const failed: Array<[number, string]> = [];
  const it = m.streamBatch(requests, false, { onError: (i, e) => failed.push([i, e.code]) });
  let r = it.next();
  while (!r.done) r = it.next();
  t.deepEqual(failed, [[1, 'E_NAN']]);
  t.deepEqual(r.value[0], m.generate('ab', requests[0]));
  t.deepEqual(r.value[2], m.generate('ef', requests[2]));
  const am = await loadModel(dir);
  await am.loadAdapter('good', good);
  await am.loadAdapter('huge', huge);
  const settled = await Promise.allSettled(requests.map(({ prompt, ...ro }) => am.generate(prompt, ro)));
  t.deepEqual(settled.map((s) => s.status), ['fulfilled', 'rejected', 'fulfilled']);
  t.is(((settled[1] as PromiseRejectedResult).reason as PeftkitError).code, 'E_NAN');
  t.deepEqual((settled[0] as PromiseFulfilledResult<Generation>).value, r.value[0]);
  await am.dispose();
  m.dispose();
});
