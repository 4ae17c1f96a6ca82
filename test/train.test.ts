/** train(): the worker-thread run, its files, events, abort + resume, and errors. */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError } from '../src/index';
import { writeRandomModel } from '../src/model/random_model';
import { LoraAdapter } from '../src/peft/lora';
import { LlamaModel } from '../src/model/llama';
import { train } from '../src/train/train';
import { readLog } from '../src/train/log';
import { ALL_DEVICES } from './helpers/check';
import { deviceTest } from './helpers/device_test';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-train-'));

function fixture(): { model: string; data: string } {
  const dir = tmp();
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 11 });
  const rows: string[] = [];
  for (let i = 0; i < 24; i++) {
    rows.push(JSON.stringify(i % 2 ? { prompt: `Q${i}: what is ${i} + 1?`, completion: ` ${i + 1}` } : { text: `the number ${i} comes before ${i + 1}.` }));
  }
  const data = path.join(dir, 'train.jsonl');
  fs.writeFileSync(data, rows.join('\n') + '\n');
  return { model, data };
}

const common = { r: 4, alpha: 8, dropout: 0.1, targets: 'all-linear' as const, batchSize: 4, lr: 5e-3, maxLength: 64, seed: 3 };

test('train() runs in a worker, writes a PEFT adapter, a log and a loss curve; the event loop stays free', async (t) => {
  const { model, data } = fixture();
  const out = path.join(tmp(), 'adapter');
  let ticks = 0;
  const timer = setInterval(() => ticks++, 5);
  const steps: number[] = [];
  const run = train({ ...common, model, data, out, steps: 12, evalSplit: 0.2, evalEvery: 6, gradAccum: 2, schedule: 'cosine', warmupSteps: 2 });
  run.on('step', (e) => steps.push(e.loss));
  const result = await run;
  clearInterval(timer);
  t.true(ticks > 5, `the caller's timers kept firing (${ticks})`);
  t.is(result.steps, 12);
  t.is(steps.length, 12);
  t.true(steps[11] < steps[0], `loss fell: ${steps[0].toFixed(3)} -> ${steps[11].toFixed(3)}`);
  t.true(Number.isFinite(result.evalLoss!));
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'train_log.jsonl', 'loss_curve.svg']) t.true(fs.existsSync(path.join(out, f)), f);
  const log = readLog(result.logFile);
  t.is(log.filter((r) => 'loss' in r).length, 12);
  t.is(log.filter((r) => 'eval_loss' in r).length, 2);
  t.regex(fs.readFileSync(result.lossCurve, 'utf8'), /<svg[\s\S]*polyline/);
  const m = LlamaModel.load(model);
  const a = LoraAdapter.load(out, m.linearModules);
  t.is(a.layers.size, 2 * 7);
  t.is(a.config.lora_dropout, 0.1);
  a.dispose();
  m.dispose();
});

test('an AbortSignal aborted before train() starts rejects at once, and nothing is written', async (t) => {
  const { model, data } = fixture();
  const out = path.join(tmp(), 'never');
  const ctrl = new AbortController();
  ctrl.abort();
  let started = false;
  const run = train({ ...common, model, data, out, steps: 8, signal: ctrl.signal });
  run.on('start', () => (started = true));
  const err = await t.throwsAsync(run.result, { instanceOf: PeftkitError });
  t.is(err?.code, 'E_ABORTED');
  t.false(started);
  t.false(fs.existsSync(out));
});

// Bit for bit on cuda too: a LoRA step there has no atomicAdd sums (those are the norm-weight,
// bias and embedding gradients; ARCHITECTURE.md, CUDA backend).
for (const device of ALL_DEVICES) deviceTest(device, 'a stopped run resumes from its checkpoint to the same adapter as an uninterrupted run', async (t) => {
  const { model, data } = fixture();
  // The abort is asked for at step 3's event, which this thread reads while the worker runs on;
  // it takes effect at the next step boundary the worker reaches after that. The steps after 3
  // are the room for this thread's delay (other tests' synchronous work here, a loaded machine):
  // with 8 steps, a 300 ms stall of this thread already let the abort land only at step 7, and
  // a longer one let the run finish unstopped. 32 steps leave seconds.
  const STEPS = 32;
  const straight = path.join(tmp(), 'straight');
  await train({ ...common, device, model, data, out: straight, steps: STEPS });
  const out = path.join(tmp(), 'resumed');
  const ctrl = new AbortController();
  const run = train({ ...common, device, model, data, out, steps: STEPS, saveEvery: 2, signal: ctrl.signal });
  run.on('start', (e) => t.is(e.device, device, 'the run is on the device asked for'));
  run.on('step', (e) => {
    if (e.step === 3) ctrl.abort();
  });
  const err = await t.throwsAsync(run.result, { instanceOf: PeftkitError });
  t.is(err?.code, 'E_ABORTED');
  t.true(fs.existsSync(path.join(out, 'checkpoints')));
  const result = await train({ ...common, device, model, data, out, steps: STEPS, resume: out });
  t.is(result.steps, STEPS);
  const m = LlamaModel.load(model);
  const a = LoraAdapter.load(straight, m.linearModules).stateDict();
  const b = LoraAdapter.load(out, m.linearModules).stateDict();
  for (const [k, v] of a) t.deepEqual(b.get(k), v, `${k} after resume`);
  t.is(readLog(result.logFile).filter((r) => 'loss' in r).length, STEPS, 'the log has each step once');
  m.dispose();
});

test('bad options and bad data fail with clear errors', async (t) => {
  const { model, data } = fixture();
  const out = path.join(tmp(), 'x');
  // Bad options reject the run as every other failure does (they used to throw synchronously).
  await t.throwsAsync(train({ model, data, out, r: 0 }).result, { instanceOf: PeftkitError, message: /r: expected a positive integer/ });
  await t.throwsAsync(train({ model, data, out, steps: 2, epochs: 1 }).result, { message: /steps and epochs/ });
  await t.throwsAsync(train({ model, data, out, steps: 1, evalData: data, evalSplit: 0.5 }).result, { instanceOf: PeftkitError, message: /evalData and evalSplit/ });
  await t.throwsAsync(train({ model, data, out, lr: 5 }).result, { instanceOf: PeftkitError, message: /lr: expected a number in \[0, 1\], got 5/ });
  await t.throwsAsync(train({ model, data, out, eps: 0 }).result, { instanceOf: PeftkitError, message: /eps: expected a number in \(0, 1\]/ });
  await t.throwsAsync(train({ model, data, out, adapter: out, r: 4 }).result, { instanceOf: PeftkitError, message: /r cannot be given with adapter/ });
  await t.throwsAsync(train({ model, data, out, pagedDir: path.join(tmp(), 'missing') }).result, { instanceOf: PeftkitError, message: /pagedDir: .*missing is not an existing folder/ });
  const e1 = await t.throwsAsync(train({ model, data, out, steps: 1, targets: ['nope_proj'] }).result, { instanceOf: PeftkitError });
  t.regex(e1!.message, /'nope_proj' matches no module/);
  const bad = path.join(tmp(), 'bad.jsonl');
  fs.writeFileSync(bad, '{"text": "ok"}\n{"prompt": 3}\n');
  const e2 = await t.throwsAsync(train({ model, data: bad, out, steps: 1 }).result, { instanceOf: PeftkitError });
  t.regex(e2!.message, /bad\.jsonl:2/);
  const e3 = await t.throwsAsync(train({ model: path.join(tmp(), 'none'), data, out, steps: 1 }).result, { instanceOf: PeftkitError });
  t.regex(e3!.message, /config\.json/);
});

test('rows with nothing to learn from (prompt past maxLength, label only at position 0) are skipped with a warning naming them', async (t) => {
  const { model } = fixture();
  const data = path.join(tmp(), 'mixed.jsonl');
  const rows = [
    { prompt: 'a prompt far longer than the sixteen tokens allowed here, so that its completion is cut away', completion: ' lost' },
    { input_ids: [5, 6, 7], labels: [5, -100, -100] }, // the label at position 0 is never a target
    ...Array.from({ length: 6 }, (_, i) => ({ prompt: `q${i}`, completion: ` a${i}` })),
  ];
  fs.writeFileSync(data, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const warnings: string[] = [];
  let examples = 0;
  const run = train({ model, data, out: path.join(tmp(), 'out'), batchSize: 1, maxLength: 16, steps: 8, shuffle: false });
  run.on('warning', (e) => warnings.push(e.message));
  run.on('start', (e) => (examples = e.trainExamples));
  const result = await run;
  t.is(result.steps, 8, 'the run did not stop at the rows that teach nothing');
  t.is(examples, 6);
  t.is(warnings.length, 1);
  t.regex(warnings[0], /^2 rows skipped, no label token to learn from after truncation to maxLength 16 .*mixed\.jsonl:1, .*mixed\.jsonl:2$/);
});

test('saveTotalLimit keeps the newest N checkpoints, and the run resumes from them', async (t) => {
  const { model, data } = fixture();
  const out = path.join(tmp(), 'limited');
  await train({ ...common, model, data, out, steps: 6, saveEvery: 1, saveTotalLimit: 2 });
  t.deepEqual(fs.readdirSync(path.join(out, 'checkpoints')).sort(), ['step-5', 'step-6'], 'the final step is checkpointed too');
  // A later checkpoint folder (not a complete one: no trainer_state.json) is not this run's to
  // prune, and never makes it prune the checkpoint it just wrote.
  fs.mkdirSync(path.join(out, 'checkpoints', 'step-300'), { recursive: true });
  const result = await train({ ...common, model, data, out, steps: 8, resume: out, saveEvery: 1, saveTotalLimit: 2 });
  t.is(result.steps, 8);
  t.deepEqual(fs.readdirSync(path.join(out, 'checkpoints')).sort(), ['step-300', 'step-7', 'step-8']);
  await t.throwsAsync(train({ model, data, out, saveTotalLimit: -1 }).result, { instanceOf: PeftkitError, message: /saveTotalLimit/ });
});

test('a paged optimizer creates its pagedDir, also inside a new output folder', async (t) => {
  const { model, data } = fixture();
  const out = path.join(tmp(), 'paged-out');
  const result = await train({ ...common, model, data, out, steps: 2, optim: 'paged_adamw', pagedDir: path.join(out, 'paged') });
  t.is(result.steps, 2);
  t.true(fs.existsSync(path.join(out, 'paged')));
});

test('epochs with gradAccum not dividing the batches: each row once per epoch, the last step of an epoch shorter (as transformers)', async (t) => {
  const { model } = fixture();
  // Rows of distinct lengths 2..6: the tokens trained on tell which rows a run saw.
  const data = path.join(tmp(), 'five.jsonl');
  fs.writeFileSync(data, [2, 3, 4, 5, 6].map((n) => JSON.stringify({ input_ids: Array.from({ length: n }, (_, i) => 10 + i) })).join('\n') + '\n');
  for (const epochs of [1, 2]) {
    const result = await train({ model, data, out: path.join(tmp(), `e${epochs}`), epochs, batchSize: 1, gradAccum: 2, shuffle: false });
    t.is(result.steps, 3 * epochs, 'ceil(5 batches / 2) steps per epoch');
    const last = readLog(result.logFile).filter((r) => 'loss' in r).pop() as { tokens: number };
    t.is(last.tokens, 20 * epochs, `epochs ${epochs}: every row exactly ${epochs} time(s)`);
  }
});

test('resume refuses options that change which rows train: evalSplit, maskPrompt', async (t) => {
  const { model, data } = fixture();
  const out = path.join(tmp(), 'fp');
  await train({ ...common, model, data, out, steps: 2, saveEvery: 1 });
  const e1 = await t.throwsAsync(train({ ...common, model, data, out, steps: 3, resume: out, evalSplit: 0.25 }).result, { instanceOf: PeftkitError });
  t.regex(e1!.message, /resume: 'evalSplit' was null in the checkpoint's run .* but is 0\.25 now/);
  const e2 = await t.throwsAsync(train({ ...common, model, data, out, steps: 3, resume: out, maskPrompt: false }).result, { instanceOf: PeftkitError });
  t.regex(e2!.message, /resume: 'maskPrompt' was true in the checkpoint's run .* but is false now/);
  t.is((await train({ ...common, model, data, out, steps: 3, resume: out })).steps, 3);
});

test('a failed run with only event listeners: an error event when listened to, else an unhandled rejection', async (t) => {
  const { model } = fixture();
  const bad = path.join(tmp(), 'bad.jsonl');
  fs.writeFileSync(bad, '{"prompt": 3}\n');
  const run = train({ model, data: bad, out: path.join(tmp(), 'o'), steps: 1 });
  const err = await new Promise<PeftkitError>((resolve) => run.on('error', resolve));
  t.true(err instanceof PeftkitError);
  t.regex(err.message, /bad\.jsonl:1/);
  // Bad options: also an 'error' event (the run is rejected, not thrown).
  const e2 = await new Promise<PeftkitError>((resolve) => train({ model, data: bad, out: 'x', r: -1 }).on('error', resolve));
  t.regex(e2.message, /r: expected a positive integer/);
  // Nobody listening for 'error' and nobody awaiting: the rejection is unhandled, as a plain
  // promise's, so the script does not end with exit code 0 (a child: ava reports unhandled rejections itself).
  const script = `const { train } = require(${JSON.stringify(path.join(__dirname, '..', 'src', 'index.js'))});
    train({ model: ${JSON.stringify(model)}, data: ${JSON.stringify(bad)}, out: ${JSON.stringify(path.join(tmp(), 'o2'))}, steps: 1 }).on('step', () => {});`;
  const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
  t.not(child.status, 0);
  t.regex(child.stderr, /bad\.jsonl:1/);
});

test('event names are typed: a misspelt one does not compile', (t) => {
  const run = train({ model: 'm', data: 'd', out: 'o', r: -1 });
  run.on('error', () => {});
  // @ts-expect-error 'stpe' is not an event of TrainRun
  run.on('stpe', () => {});
  run.on('step', (e) => e.loss.toFixed());
  // @ts-expect-error an eval event has no gradNorm
  run.on('eval', (e) => e.gradNorm);
  t.pass();
});

test('resume: every option that changes the result is recorded; resume alone continues the run, a changed one is refused, safe ones are stated', async (t) => {
  const { model, data } = fixture();
  const out = path.join(tmp(), 'rec');
  const first = { model, data, out, steps: 4, lr: 1e-3, optim: 'adamw8bit' as const, schedule: 'cosine' as const, warmupRatio: 0.5, weightDecay: 0.01, maxGradNorm: 0.5, r: 4, targets: 'all-linear' as const, maxLength: 64 };
  await train(first);
  const state = JSON.parse(fs.readFileSync(path.join(out, 'checkpoints', 'step-4', 'trainer_state.json'), 'utf8'));
  t.is(state.step, 4, 'a checkpoint at the final step');
  t.like(state.fingerprint, { lr: 1e-3, optim: 'adamw8bit', schedule: 'cosine', warmupSteps: 2, weightDecay: 0.01, maxGradNorm: 0.5, r: 4, alpha: 16, dropout: 0.05, method: 'lora', bf16: false, totalSteps: 4, eps: 1e-8 });
  t.deepEqual(state.fingerprint.betas, [0.9, 0.999]);
  // The run is complete: resuming it as it was has nothing to do.
  const done = await t.throwsAsync(train({ model, data, out, resume: out }).result, { instanceOf: PeftkitError });
  t.regex(done!.message, /the run is complete \(step 4 of 4\): give 'steps' above 4/);
  // Another lr or optimizer: refused, naming both values.
  const lr = await t.throwsAsync(train({ model, data, out, resume: out, steps: 6, lr: 2e-4 }).result, { instanceOf: PeftkitError });
  t.regex(lr!.message, /resume: 'lr' was 0\.001 in the checkpoint's run .* but is 0\.0002 now/);
  const op = await t.throwsAsync(train({ model, data, out, resume: out, steps: 6, optim: 'adamw' }).result, { instanceOf: PeftkitError });
  t.regex(op!.message, /'optim' was "adamw8bit" .* but is "adamw" now/);
  const rr = await t.throwsAsync(train({ model, data, out, resume: out, steps: 6, r: 8 }).result, { instanceOf: PeftkitError });
  t.regex(rr!.message, /'r' was 4 .* but is 8 now/);
  // More steps and another save frequency: fine, and stated.
  const warnings: string[] = [];
  const more = train({ model, data, out, resume: out, steps: 6, saveEvery: 1 });
  more.on('warning', (e) => warnings.push(e.message));
  const r = await more;
  t.is(r.steps, 6);
  t.true(warnings.some((w) => /4 -> 6 steps/.test(w)), warnings.join('\n'));
  t.true(warnings.some((w) => /'saveEvery' changed from 0 to 1/.test(w)), warnings.join('\n'));
  const s6 = JSON.parse(fs.readFileSync(path.join(out, 'checkpoints', 'step-6', 'trainer_state.json'), 'utf8'));
  t.like(s6.fingerprint, { lr: 1e-3, optim: 'adamw8bit', warmupSteps: 2, totalSteps: 6 }, 'the resumed run kept the checkpoint\'s options');
  // A new run into the folder: refused without overwrite; overwrite removes the old checkpoints.
  const again = await t.throwsAsync(train({ model, data, out, steps: 2 }).result, { instanceOf: PeftkitError });
  t.regex(again!.message, /holds another run's checkpoints: continue it with 'resume', or pass 'overwrite'/);
  await train({ model, data, out, steps: 2, overwrite: true });
  t.deepEqual(fs.readdirSync(path.join(out, 'checkpoints')), ['step-2']);
});

test('run A, then run B into the same folder, stopped, then resumed: B is refused A\'s checkpoints, and resumes as B', async (t) => {
  const { model, data } = fixture();
  const out = path.join(tmp(), 'shared');
  const base = { model, data, out, targets: 'all-linear' as const, batchSize: 4, maxLength: 64, seed: 3, dropout: 0 };
  await train({ ...base, r: 8, steps: 40, saveEvery: 5 });
  // B into A's folder without resume: refused, A's checkpoints untouched.
  await t.throwsAsync(train({ ...base, steps: 20, lr: 1e-2, r: 4 }).result, { message: /holds another run's checkpoints/ });
  t.true(fs.existsSync(path.join(out, 'checkpoints', 'step-40')));
  // B replacing A (overwrite), stopped mid-run as a kill would leave it.
  const ctrl = new AbortController();
  const b = train({ ...base, steps: 20, lr: 1e-2, r: 4, saveEvery: 5, overwrite: true, signal: ctrl.signal });
  b.on('step', (e) => {
    if (e.step === 7) ctrl.abort();
  });
  await t.throwsAsync(b.result, { code: 'E_ABORTED' });
  t.false(fs.existsSync(path.join(out, 'checkpoints', 'step-40')), "A's checkpoints were removed by B's overwrite");
  // Resuming is B's run: a changed option is refused, the same ones continue to B's 20 steps at r 4.
  await t.throwsAsync(train({ ...base, resume: out, lr: 5e-3 }).result, { message: /'lr' was 0\.01 .* but is 0\.005 now/ });
  const r = await train({ ...base, resume: out });
  t.is(r.steps, 20);
  t.false(Number.isNaN(r.finalLoss));
  const config = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8')) as { r: number };
  t.is(config.r, 4, "the adapter is B's");
});

test.serial('abort() takes effect within its grace also inside a long data preparation: the worker is terminated and says so', async (t) => {
  const dir = tmp();
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 11 });
  const data = path.join(dir, 'big.jsonl');
  // Enough rows that encoding them takes far longer than the grace (tens of seconds here).
  // (Built as one repeat, in milliseconds: the other tests of this file share this thread's timers.)
  fs.writeFileSync(data, `${JSON.stringify({ text: 'a row: the quick brown fox jumps over the lazy dog' })}\n`.repeat(400_000));
  const out = path.join(dir, 'out');
  const run = train({ model, data, out, steps: 2, batchSize: 4, maxLength: 32, abortGraceMs: 500 });
  await new Promise((r) => setTimeout(r, 300));
  const t0 = Date.now();
  run.abort();
  const e = await t.throwsAsync(run.result, { instanceOf: PeftkitError });
  const took = Date.now() - t0;
  t.is(e?.code, 'E_ABORTED');
  t.regex(e?.message ?? '', /terminating its worker 500 ms after abort\(\)/);
  t.true(took < 3000, `stopped ${took} ms after abort()`);
  t.false(fs.existsSync(path.join(out, '.peftkit.lock')), 'the lock of the terminated worker is released');
  await t.throwsAsync(train({ model, data, out: path.join(dir, 'x'), steps: 1, abortGraceMs: -1 }).result, { code: 'E_ARG', message: /abortGraceMs/ });
});
