/**
 * Inference off the main thread: loadModel's worker gives the same tokens as the
 * synchronous Model (whole and streamed), the caller's event loop keeps running meanwhile, an
 * AbortSignal stops a stream promptly, and errors keep their PeftkitError codes; merge and
 * quantize in a worker write what the synchronous forms write.
 */
import test, { ExecutionContext } from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as v8 from 'v8';
import * as vm from 'vm';
import { loadTokenizer } from '../src/data/tokenizer';
import { modelWorkersAlive } from '../src/inference/async_model';
import { IncrementalText } from '../src/inference/incremental_text';
import { loadModelSync, loadModel, mergeAdapterSync, mergeAdapter, PeftkitError, quantizeModelSync, quantizeModel, writeRandomModel } from '../src/index';
import type { Generation, GenerationPiece } from '../src/index';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-async-'));

/** A small random model with a byte tokenizer; `big` takes long enough per token to time. */
function model(big = false): string {
  const dir = path.join(tmp(), 'model');
  writeRandomModel(dir, big ? { hiddenSize: 256, numLayers: 4, numHeads: 4, seed: 11 } : { hiddenSize: 32, numLayers: 2, numHeads: 2, numKvHeads: 1, seed: 9 });
  return dir;
}

function adapterFor(dir: string): string {
  const m = loadModelSync(dir);
  const a = LoraAdapter.create(m.llama.linearModules, defaultLoraConfig({ r: 4, lora_alpha: 32, target_modules: ['q_proj', 'v_proj'] }), { seed: 2 });
  for (const l of a.layers.values()) l.B.write(Float32Array.from({ length: l.B.numel }, (_, i) => Math.sin(i)));
  const out = path.join(tmp(), 'adapter');
  a.save(out);
  a.dispose();
  m.dispose();
  return out;
}

/** The largest gap between the ticks of a 5 ms interval while `during` runs. */
async function largestGap(during: () => unknown): Promise<number> {
  let last = performance.now();
  let gap = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    gap = Math.max(gap, now - last);
    last = now;
  }, 5);
  await during();
  await new Promise((r) => setTimeout(r, 15)); // the tick that was held back, if any
  clearInterval(timer);
  return gap;
}

async function rejects(t: ExecutionContext, p: Promise<unknown>, code: string, re?: RegExp): Promise<PeftkitError | undefined> {
  const e = await t.throwsAsync(p, { instanceOf: PeftkitError });
  t.is(e?.code, code, e?.message);
  if (re) t.regex(e?.message ?? '', re);
  return e;
}

test('generate and stream give the same tokens and text as the synchronous Model, with and without an adapter', async (t) => {
  const dir = model();
  const adapter = adapterFor(dir);
  const sync = loadModelSync(dir);
  const am = await loadModel(dir);
  t.deepEqual(am.config, sync.config);
  t.true(am.hasTokenizer);
  for (const o of [
    { maxNewTokens: 12, temperature: 0, stopTokens: [] },
    { maxNewTokens: 12, temperature: 0.9, topP: 0.9, seed: 4, stopTokens: [] },
    { maxNewTokens: 12, temperature: 0, adapter, stopTokens: [] },
    { maxNewTokens: 40, temperature: 1.2, seed: 1 }, // stops at EOS, or not
  ]) {
    const expected = sync.generate('Hello there', o);
    t.deepEqual(await am.generate('Hello there', o), expected, JSON.stringify(o));
    t.deepEqual(await am.generate([1, 72, 101], o), sync.generate([1, 72, 101], o));
    // The sync stream's pieces are the same as the async one's.
    const syncPieces = [...sync.stream('Hello there', o)];
    const pieces: GenerationPiece[] = [];
    for await (const p of am.stream('Hello there', o)) pieces.push(p);
    t.deepEqual(pieces, syncPieces);
    t.deepEqual(pieces.map((p) => p.id), expected.ids);
    t.is(pieces.map((p) => p.text).join(''), expected.text);
  }
  // Requests asked for at once run one after another, each with its own answer.
  const many = await Promise.all([3, 5, 7].map((n) => am.generate([1, 2], { maxNewTokens: n, temperature: 0, stopTokens: [] })));
  t.deepEqual(many.map((g) => g.ids.length), [3, 5, 7]);
  t.deepEqual(many[2], sync.generate([1, 2], { maxNewTokens: 7, temperature: 0, stopTokens: [] }));
  await am.dispose();
  sync.dispose();
});

test.serial('the stream yields each token as it is produced, not all at the end', async (t) => {
  const am = await loadModel(model(true));
  const at: number[] = [];
  const t0 = performance.now();
  for await (const p of am.stream([1, 2, 3], { maxNewTokens: 40, temperature: 0, stopTokens: [] })) {
    t.is(typeof p.id, 'number');
    at.push(performance.now() - t0);
  }
  t.is(at.length, 40);
  // Pieces come one by one as the tokens are computed (a token takes milliseconds), not in one
  // batch at the end (microseconds apart).
  const apart = at.slice(1).filter((x, i) => x - at[i] > 0.25).length;
  t.true(apart >= 20, `${apart} of 39 pieces came more than 0.25 ms after the previous one: ${at.map((x) => x.toFixed(1)).join(' ')}`);
  await am.dispose();
});

test.serial('the event loop keeps running during loadModel and a long generate; the synchronous forms freeze it', async (t) => {
  const dir = model(true);
  const o = { maxNewTokens: 100, temperature: 0, stopTokens: [] };
  let am: Awaited<ReturnType<typeof loadModel>> | undefined;
  const loadGap = await largestGap(async () => (am = await loadModel(dir)));
  let asyncMs = 0;
  const asyncGap = await largestGap(async () => {
    const t0 = performance.now();
    await am!.generate([1, 2, 3], o);
    asyncMs = performance.now() - t0;
  });
  const sync = loadModelSync(dir);
  let syncMs = 0;
  const syncGap = await largestGap(() => {
    const t0 = performance.now();
    sync.generate([1, 2, 3], o);
    syncMs = performance.now() - t0;
  });
  t.log(`largest 5 ms-timer gap: async load ${loadGap.toFixed(1)} ms, async generate ${asyncGap.toFixed(1)} ms (of ${asyncMs.toFixed(0)} ms), sync generate ${syncGap.toFixed(1)} ms (of ${syncMs.toFixed(0)} ms)`);
  t.true(syncGap >= 0.9 * syncMs, 'the synchronous generate holds the event loop for its whole length');
  // Measured on a shared 2-core machine: 5-15 ms for load and generate, up to 43 ms when other
  // processes keep both cores busy; in one episode where that contention made the generate itself
  // 50x slower (11 s), 136 ms. Generation on the calling thread would make a gap of the whole run.
  const bound = (ms: number) => Math.max(60, ms / 20);
  t.true(asyncGap < bound(asyncMs), `async generate: largest gap ${asyncGap.toFixed(1)} ms of ${asyncMs.toFixed(0)} ms`);
  t.true(loadGap < 60, `loadModel: largest gap ${loadGap.toFixed(1)} ms`);
  sync.dispose();
  await am!.dispose();
});

test.serial('an AbortSignal ends the stream at once with E_ABORTED and stops the worker within a token or two', async (t) => {
  const am = await loadModel(model(true));
  const ctrl = new AbortController();
  const at: number[] = [];
  let abortedAt = 0;
  const err = await t.throwsAsync(
    (async () => {
      for await (const _ of am.stream([1, 2, 3], { maxNewTokens: 2000, temperature: 0, stopTokens: [], signal: ctrl.signal })) {
        at.push(performance.now());
        if (at.length === 8) {
          abortedAt = performance.now();
          ctrl.abort();
        }
      }
    })(),
    { instanceOf: PeftkitError },
  );
  const thrownMs = performance.now() - abortedAt;
  t.is(err?.code, 'E_ABORTED');
  t.is(at.length, 8, 'no piece after the abort');
  // The worker is free again once it has stopped: a one-token generate waits for that.
  const t0 = performance.now();
  await am.generate([1, 2, 3], { maxNewTokens: 1, temperature: 0 });
  const freeMs = performance.now() - t0;
  const perToken = (at[7] - at[1]) / 6;
  t.log(`abort -> iterator threw: ${thrownMs.toFixed(1)} ms; abort -> the next request answered: ${freeMs.toFixed(0)} ms (a token takes ${perToken.toFixed(0)} ms; the whole run would take ~${((2000 * perToken) / 1000).toFixed(0)} s)`);
  t.true(thrownMs < 20, `the iterator threw ${thrownMs.toFixed(1)} ms after abort()`);
  t.true(freeMs < Math.max(500, 20 * perToken), `the worker stopped: the next request took ${freeMs.toFixed(0)} ms`);
  // Leaving the loop early stops generation too, without an error; so does an aborted signal before the start.
  let n = 0;
  for await (const _ of am.stream([1, 2], { maxNewTokens: 2000, temperature: 0, stopTokens: [] })) if (++n === 3) break;
  const t1 = performance.now();
  await am.generate([1, 2, 3], { maxNewTokens: 1, temperature: 0 });
  t.true(performance.now() - t1 < Math.max(500, 20 * perToken), 'break stopped the worker');
  await rejects(t, am.generate([1, 2], { signal: AbortSignal.abort() }), 'E_ABORTED');
  // An aborted generate rejects too.
  const c2 = new AbortController();
  const p = am.generate([1, 2], { maxNewTokens: 2000, temperature: 0, stopTokens: [], signal: c2.signal });
  setTimeout(() => c2.abort(), 50);
  await rejects(t, p, 'E_ABORTED');
  await am.dispose();
});

test('errors reject with the codes of the synchronous forms', async (t) => {
  const dir = model();
  const sync = loadModelSync(dir);
  const am = await loadModel(dir);
  const codeOf = (fn: () => unknown) => t.throws(fn, { instanceOf: PeftkitError })?.code;
  const missing = path.join(tmp(), 'no-adapter');
  const badAdapter = path.join(tmp(), 'bad-adapter');
  fs.mkdirSync(badAdapter);
  fs.writeFileSync(path.join(badAdapter, 'adapter_config.json'), '{"peft_type": "LORA", "r": -1}');
  for (const [prompt, o] of [
    [[1, 2], { adapter: missing }],
    [[1, 2], { adapter: badAdapter }],
    [[], {}],
    [[1, 99999], {}],
  ] as const) {
    const code = codeOf(() => sync.generate(prompt, o));
    t.truthy(code);
    await rejects(t, am.generate(prompt, o), code!);
    await rejects(t, (async () => { for await (const _ of am.stream(prompt, o)) t.fail('no piece'); })(), code!);
  }
  const adapterObject = LoraAdapter.create(sync.llama.linearModules, defaultLoraConfig({ r: 2 }), { seed: 1 });
  await rejects(t, am.generate([1], { adapter: adapterObject as never }), 'E_ARG', /adapter folder/);
  adapterObject.dispose();
  await rejects(t, am.generate([1], { stopTokens: [() => 1] as never }), 'E_ARG', /cannot be sent/);
  t.deepEqual((await am.generate([1, 2], { maxNewTokens: 2, temperature: 0, stopTokens: [] })).ids.length, 2, 'still works after errors');
  // Loading: the same codes as loadModelSync.
  const noTok = path.join(tmp(), 'notok');
  writeRandomModel(noTok, { hiddenSize: 16, numLayers: 1, numHeads: 2, vocabSize: 40, tokenizer: false, seed: 1 });
  const plain = await loadModel(noTok);
  t.false(plain.hasTokenizer);
  await rejects(t, plain.generate('text'), 'E_MISSING', /no tokenizer\.json/);
  await plain.dispose();
  for (const bad of [path.join(tmp(), 'none'), badAdapter]) {
    const code = codeOf(() => loadModelSync(bad));
    await rejects(t, loadModel(bad), code!);
  }
  // Disposed: running and later requests reject with E_DISPOSED.
  const running = am.generate([1], { maxNewTokens: 500, temperature: 0, stopTokens: [] });
  const queued = am.generate([1], { maxNewTokens: 5 });
  await am.dispose();
  await rejects(t, running, 'E_DISPOSED');
  await rejects(t, queued, 'E_DISPOSED');
  await rejects(t, am.generate([1]), 'E_DISPOSED');
  sync.dispose();
});

test('mergeAdapter and quantizeModel write what the synchronous forms write, and fail with their codes', async (t) => {
  const dir = model();
  const adapter = adapterFor(dir);
  const [a, b] = [path.join(tmp(), 'merged'), path.join(tmp(), 'merged')];
  const r1 = mergeAdapterSync({ model: dir, adapter, out: a });
  const r2 = await mergeAdapter({ model: dir, adapter, out: b });
  t.deepEqual({ ...r2, out: '' }, { ...r1, out: '' });
  t.deepEqual(fs.readFileSync(path.join(b, 'model.safetensors')), fs.readFileSync(path.join(a, 'model.safetensors')));
  const [q1, q2] = [path.join(tmp(), 'q'), path.join(tmp(), 'q')];
  t.deepEqual(await quantizeModel({ model: dir, out: q2, format: 'nf4' }), quantizeModelSync({ model: dir, out: q1, format: 'nf4' }));
  t.deepEqual(fs.readFileSync(path.join(q2, 'model.safetensors')), fs.readFileSync(path.join(q1, 'model.safetensors')));
  const codeOf = (fn: () => unknown) => t.throws(fn, { instanceOf: PeftkitError })?.code;
  const badMerge = { model: dir, adapter: path.join(tmp(), 'none'), out: path.join(tmp(), 'x') };
  await rejects(t, mergeAdapter(badMerge), codeOf(() => mergeAdapterSync(badMerge))!);
  const badQuant = { model: dir, out: path.join(tmp(), 'y'), format: 'nf5' as never };
  await rejects(t, quantizeModel(badQuant), codeOf(() => quantizeModelSync(badQuant))!);
});

/** The model is held only by this function's frame (an async caller's frame may keep temporaries). */
async function generateFromDroppedModel(dir: string): Promise<{ result: Promise<Generation> }> {
  const am = await loadModel(dir);
  return { result: am.generate([1, 2], { maxNewTokens: 30, temperature: 0, stopTokens: [] }) };
}

test.serial('a model dropped without dispose() has its worker ended once it is garbage collected, but not while it generates', async (t) => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const before = modelWorkersAlive();
  const collect = async () => {
    for (let i = 0; i < 50 && modelWorkersAlive() > before; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const dir = model();
  // A generation in flight keeps its model alive though nobody holds it.
  const pending = await generateFromDroppedModel(dir);
  gc();
  t.is((await pending.result).ids.length, 30);
  await collect();
  t.is(modelWorkersAlive(), before, 'the worker exited');
});

test('incremental text: the pieces join to the whole decoding, characters split across byte tokens come whole', (t) => {
  const tok = loadTokenizer(model());
  const ids = tok.encode('héllo wörld 😀 日本語!', { addSpecialTokens: false });
  const decode = (x: number[]) => tok.decode(x, { skipSpecialTokens: true });
  const inc = new IncrementalText(decode);
  const pieces = ids.map((id, i) => inc.push(id, i === ids.length - 1));
  t.is(pieces.join(''), decode(ids));
  t.true(pieces.some((p) => p === '') && pieces.every((p) => !p.includes('\uFFFD')), JSON.stringify(pieces));
  t.true(pieces.includes('😀'), 'a 4-byte character comes in one piece');
  // A decoder that drops the first token's leading space (SentencePiece): the window's context keeps it.
  const words = [' The', ' cat', ' sat', ' down'];
  const sp = (x: number[]) => x.map((i) => words[i]).join('').replace(/^ /, '');
  const inc2 = new IncrementalText(sp);
  t.is([0, 1, 2, 3].map((i) => inc2.push(i, i === 3)).join(''), 'The cat sat down');
});
