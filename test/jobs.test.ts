/** JobManager: concurrent jobs equal to lone ones, the queue, cancel, shutdown + restore, failures, the memory check. */
import test from 'ava';
import * as fs from 'fs';
import * as path from 'path';
import { estimateMemory, estimateMemoryAsync, JobManager, JobEvent, JobTrainOptions, PeftkitError, train } from '../src/index';
import { newMemory } from '../src/train/memory';
import { tinyTrainFixture, tmpDir } from './helpers/train_fixture';

const common = { r: 4, alpha: 8, dropout: 0.1, targets: 'all-linear' as const, batchSize: 4, lr: 5e-3, maxLength: 64 };

function setup(prefix: string): { dir: string; options: (name: string, extra?: Partial<JobTrainOptions>) => JobTrainOptions } {
  const dir = tmpDir(prefix);
  const { model, data } = tinyTrainFixture(dir);
  return { dir, options: (name, extra = {}) => ({ ...common, model, data, out: path.join(dir, name), steps: 6, seed: 3, ...extra }) };
}

const adapterBytes = (out: string) => fs.readFileSync(path.join(out, 'adapter_model.safetensors'));

/** Every event the manager emits but steps, in order, as `type:id`; and the most jobs seen running at once. */
function record(m: JobManager): { events: string[]; maxRunning: () => number } {
  const events: string[] = [];
  let max = 0;
  for (const type of ['queued', 'started', 'step', 'done', 'failed', 'cancelled', 'interrupted'] as const) {
    m.on(type, (e: JobEvent) => {
      if (e.type !== 'step') events.push(`${e.type}:${e.id}`);
      max = Math.max(max, m.status().filter((j) => j.status === 'running').length);
    });
  }
  return { events, maxRunning: () => max };
}

test('two jobs at once finish with the same adapters, byte for byte, as each alone with the same seeds', async (t) => {
  const { dir, options } = setup('jobs-same');
  const other = tinyTrainFixture(dir, 7).data;
  // No memory estimate first: both start at once, whatever the machine's load.
  const jobs = [options('a', { seed: 3, steps: 20, memoryCheck: false }), options('b', { seed: 5, steps: 20, data: other, method: 'dora', memoryCheck: false })];
  const m = new JobManager({ concurrency: 2, threads: 2 });
  const { maxRunning } = record(m);
  const together = jobs.map((o) => m.submit(o));
  await Promise.all(together.map((j) => j.result));
  t.is(maxRunning(), 2, 'both ran at once');
  t.deepEqual(together.map((j) => j.info().status), ['done', 'done']);
  for (const o of jobs) {
    const alone = path.join(dir, `${path.basename(o.out)}-alone`);
    await train({ ...o, out: alone });
    t.true(adapterBytes(o.out).equals(adapterBytes(alone)), `${o.out} equals the lone run`);
  }
});

test('the queue is FIFO and at most `concurrency` jobs run at once; status() lists every job', async (t) => {
  const { options } = setup('jobs-queue');
  const m = new JobManager({ concurrency: 2 });
  const { events, maxRunning } = record(m);
  const jobs = ['j1', 'j2', 'j3', 'j4', 'j5'].map((id) => m.submit(options(id, { steps: 10, memoryCheck: false }), { id })); // no estimate: each starts as soon as a slot frees
  t.deepEqual(m.status().map((j) => [j.id, j.status]), jobs.map((j) => [j.id, 'queued']));
  await m.onIdle();
  t.deepEqual(events.filter((e) => e.startsWith('started')).sort(), ['started:j1', 'started:j2', 'started:j3', 'started:j4', 'started:j5']);
  const started = jobs.map((j) => Date.parse(j.info().startedAt!));
  t.deepEqual(started, [...started].sort((x, y) => x - y), 'started in the order submitted');
  t.is(maxRunning(), 2);
  t.deepEqual(m.status().map((j) => j.status), ['done', 'done', 'done', 'done', 'done']);
  t.true(m.status().every((j) => j.step === 10 && j.totalSteps === 10 && j.result?.steps === 10));
  t.throws(() => m.submit(options('j1'), { id: 'j1' }), { code: 'E_ARG', message: /already exists/ });
});

test('a queued job cancelled ends at once; a running one stops at a step boundary with a checkpoint', async (t) => {
  const { options } = setup('jobs-cancel');
  const m = new JobManager({ concurrency: 1 });
  const { events } = record(m);
  const running = m.submit(options('running', { steps: 40 }), { id: 'running' });
  const ctrl = new AbortController();
  const queued = m.submit(options('queued'), { id: 'queued', signal: ctrl.signal });
  const third = m.submit(options('third'), { id: 'third' });
  let cancelled: { checkpoint: string | null } | null = null;
  running.on('cancelled', (e) => (cancelled = e));
  running.on('step', (e) => {
    if (e.step === 2) {
      ctrl.abort(); // the queued job, through its AbortSignal
      m.cancel('running');
    }
  });
  const err = await t.throwsAsync(running.result, { instanceOf: PeftkitError });
  t.is(err?.code, 'E_ABORTED');
  t.is(running.status, 'cancelled');
  const stoppedAt = running.info().step;
  t.true(stoppedAt >= 2 && stoppedAt < 40, `stopped at step ${stoppedAt}`);
  t.truthy(cancelled);
  t.is(cancelled!.checkpoint, running.info().checkpoint);
  t.true(fs.existsSync(path.join(cancelled!.checkpoint!, 'trainer_state.json')), 'the checkpoint it stopped at is on disk');
  t.is(queued.status, 'cancelled');
  t.is((await t.throwsAsync(queued.result))?.message.includes('cancelled'), true);
  t.false(fs.existsSync(queued.info().options.out), 'the queued job never started');
  await third.result;
  t.deepEqual(events, ['queued:running', 'queued:queued', 'queued:third', 'started:running', 'cancelled:queued', 'cancelled:running', 'started:third', 'done:third']);
  third.cancel(); // an ended job stays as it is
  t.is(third.status, 'done');
});

test('shutdown() checkpoints the running job and records the queued one; a manager with resume: true ends both as uninterrupted runs', async (t) => {
  const { dir, options } = setup('jobs-restore');
  const stateDir = path.join(dir, 'state');
  const first = new JobManager({ concurrency: 1, stateDir });
  const a = first.submit(options('a', { steps: 8, saveEvery: 100 }), { id: 'a' });
  const b = first.submit(options('b', { steps: 5, seed: 9 }), { id: 'b' });
  t.throws(() => new JobManager({ stateDir }), { code: 'E_BUSY' }, 'the stateDir is locked while in use');
  const stopped = new Promise<void>((resolve) => a.on('step', (e) => e.step === 3 && resolve()));
  await stopped;
  const states = await first.shutdown();
  t.deepEqual(states.map((j) => [j.id, j.status]), [['a', 'interrupted'], ['b', 'interrupted']]);
  t.is((await t.throwsAsync(a.result, { instanceOf: PeftkitError }))?.code, 'E_ABORTED');
  t.true(a.info().step >= 3 && a.info().step < 8);
  t.regex(a.info().checkpoint!, /checkpoint/);
  t.is(b.info().startedAt, null);
  t.throws(() => first.submit(options('c')), { code: 'E_ARG', message: /shut down/ });

  const second = new JobManager({ concurrency: 1, stateDir, resume: true });
  const starts: number[] = [];
  second.on('started', (e) => starts.push(e.startStep));
  await Promise.all([second.job('a')!.result, second.job('b')!.result]);
  t.deepEqual(starts, [a.info().step, 0], 'a resumed from its checkpoint, b started');
  await second.shutdown();
  for (const [o, id] of [[options('a', { steps: 8 }), 'a'], [options('b', { steps: 5, seed: 9 }), 'b']] as const) {
    const alone = path.join(dir, `${id}-alone`);
    await train({ ...o, out: alone });
    t.true(adapterBytes(o.out).equals(adapterBytes(alone)), `${id} equals an uninterrupted run`);
  }
  const third = new JobManager({ stateDir });
  t.deepEqual(third.status().map((j) => [j.id, j.status]), [['a', 'done'], ['b', 'done']], 'the state file keeps the ended jobs');
  t.is((await third.job('a')!).steps, 8, 'an ended job read from the state file is settled as it ended');
  t.deepEqual(third.restore(), []);
  await third.shutdown();
});

test('a failing job is failed with its PeftkitError and the others go on', async (t) => {
  const { dir, options } = setup('jobs-fail');
  const m = new JobManager({ concurrency: 2 });
  const failures: PeftkitError[] = [];
  m.on('failed', (e) => failures.push(e.error));
  const bad = m.submit(options('bad', { data: path.join(dir, 'missing.jsonl') }));
  const badOption = m.submit(options('bad-option', { r: -1 }));
  const good = m.submit(options('good'));
  await good.result;
  await m.onIdle();
  t.is(good.status, 'done');
  t.is(bad.status, 'failed');
  t.is(bad.info().error?.code, 'E_IO');
  t.regex(bad.info().error!.message, /missing\.jsonl/);
  t.is(badOption.status, 'failed');
  t.is(badOption.info().error?.code, 'E_ARG');
  t.deepEqual(failures.map((e) => e.code).sort(), ['E_ARG', 'E_IO']);
  t.throws(() => m.submit({ ...options('fn'), onStep: () => {} } as JobTrainOptions), { code: 'E_ARG', message: /plain data/ });
  t.true(failures.every((e) => e instanceof PeftkitError));
});

// Serial: no other test's manager moves the process's thread cap, which the estimate's GEMM buffers count.
test.serial('estimateMemoryAsync gives estimateMemory\'s report from a worker, and its errors', async (t) => {
  const { dir, options } = setup('jobs-estimate');
  t.deepEqual({ ...(await estimateMemoryAsync(options('x'))), available: null }, { ...estimateMemory(options('x')), available: null });
  const err = await t.throwsAsync(estimateMemoryAsync(options('x', { data: path.join(dir, 'missing.jsonl') })), { instanceOf: PeftkitError });
  t.is(err?.code, 'E_IO');
  // Its signal ends it (the job manager's cancel and shutdown do not wait for a long dataset's tokenization).
  await t.throwsAsync(estimateMemoryAsync(options('x'), { signal: AbortSignal.abort() }), { code: 'E_ABORTED' });
  const ctrl = new AbortController();
  const running = estimateMemoryAsync(options('x'), { signal: ctrl.signal });
  setImmediate(() => ctrl.abort());
  await t.throwsAsync(running, { code: 'E_ABORTED' });
});

test('a job submitted with an aborted signal is cancelled, and no queued event follows its cancelled one', async (t) => {
  const { options } = setup('jobs-preaborted');
  const m = new JobManager({ concurrency: 1 });
  const { events } = record(m);
  const job = m.submit(options('pre'), { id: 'pre', signal: AbortSignal.abort() });
  await t.throwsAsync(job.result, { code: 'E_ABORTED' });
  await new Promise((r) => setImmediate(r));
  t.deepEqual(events, ['cancelled:pre']);
  t.is(job.status, 'cancelled');
});

test('memory: a job that cannot fit is E_MEMORY with the figures; one that fits alone waits for the running job; memoryCheck false skips', async (t) => {
  const { options } = setup('jobs-memory');
  const needed = newMemory(estimateMemory(options('x')));
  const tight = new JobManager({ concurrency: 2, memoryBudget: needed / 2 });
  const refused = tight.submit(options('refused'), { id: 'refused' });
  const err = await t.throwsAsync(refused.result, { instanceOf: PeftkitError });
  t.is(err?.code, 'E_MEMORY');
  t.regex(err!.message, /job 'refused' needs about [\d.]+ MiB \(estimateMemory\) but [\d.]+ MiB is available \(the memoryBudget option\)/);
  const unchecked = tight.submit(options('unchecked', { memoryCheck: false }));
  await unchecked.result;
  t.is(unchecked.status, 'done');

  // Room for one job, not two: the second waits for the first although a slot is free.
  const one = new JobManager({ concurrency: 2, memoryBudget: needed * 1.5 });
  const { maxRunning, events } = record(one);
  const jobs = ['m1', 'm2'].map((id) => one.submit(options(id), { id }));
  await Promise.all(jobs.map((j) => j.result));
  t.is(maxRunning(), 1);
  t.deepEqual(events.filter((e) => !e.startsWith('queued')), ['started:m1', 'done:m1', 'started:m2', 'done:m2']);
  // Not equal to `needed`: the estimate counts GEMM buffers per thread, and the other tests' managers move the process's thread cap.
  t.true(Math.abs(jobs[0].info().memoryBytes! - needed) < needed / 4, `${jobs[0].info().memoryBytes} recorded, ${needed} estimated here`);
});
