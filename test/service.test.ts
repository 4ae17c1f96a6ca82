/**
 * examples/service end to end on 127.0.0.1, in a child process as a user runs it: a training job
 * posted, its progress read as SSE, its adapter downloaded, a generation with it streamed as SSE
 * and equal to loadModelSync().generate with the downloaded adapter; a job cancelled by DELETE; a
 * SIGTERM checkpoints and the next start resumes.
 */
import test, { ExecutionContext } from 'ava';
import * as fs from 'fs';
import * as path from 'path';
import { loadModelSync, train } from '../src/index';
import { readSse, SseEvent, startService } from './helpers/sse';
import { tinyTrainFixture, tmpDir } from './helpers/train_fixture';

const post = (body: unknown) => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }) satisfies RequestInit & { method: string };
const ended = (e: SseEvent) => ['done', 'failed', 'cancelled', 'interrupted'].includes(e.event);
const exited = (child: import('child_process').ChildProcess) => new Promise<number | null>((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', resolve)));

test('the example service trains a job, streams its progress, serves its adapter and streams generations with it', async (t) => {
  const dir = tmpDir('service');
  const { model, data } = tinyTrainFixture(dir);
  const { child, base } = await startService({ PEFTKIT_SERVICE_DIR: path.join(dir, 'service') });
  t.teardown(() => child.kill('SIGKILL'));

  t.deepEqual(await (await fetch(`${base}/health`)).json(), { ok: true, running: 0, queued: 0 });
  const job = { model, data, steps: 12, r: 8, alpha: 16, targets: 'all-linear', lr: 5e-2, batchSize: 4, maxLength: 64, seed: 1 };
  const refused = await fetch(`${base}/jobs`, post({ ...job, out: '/tmp/x' }));
  t.is(refused.status, 400);
  t.regex(((await refused.json()) as { error: { message: string } }).error.message, /out: set by the service/);

  const created = await fetch(`${base}/jobs`, post({ ...job, id: 'tiny' }));
  t.is(created.status, 201);
  t.deepEqual(await created.json(), { id: 'tiny', status: 'queued' });
  const early = await fetch(`${base}/jobs/tiny/adapter`);
  t.is(early.status, 409, 'no adapter before the job is done');

  const { events } = await readSse(`${base}/jobs/tiny/events`);
  t.is(events[0].event, 'status');
  const steps = events.filter((e) => e.event === 'step').map((e) => (e.data as { step: number }).step);
  t.deepEqual(steps, Array.from({ length: 12 }, (_, i) => i + 1), 'every step streamed in order');
  t.is(events.at(-1)!.event, 'done');
  t.true(events.some((e) => e.event === 'started'));

  // The adapter: a listing, then each file; downloaded into a folder of the client's.
  const listing = (await (await fetch(`${base}/jobs/tiny/adapter`)).json()) as { files: Array<{ name: string; bytes: number; url: string }> };
  const names = listing.files.map((f) => f.name);
  for (const f of ['adapter_config.json', 'adapter_model.safetensors']) t.true(names.includes(f), f);
  const downloaded = path.join(dir, 'downloaded');
  fs.mkdirSync(downloaded);
  for (const f of listing.files) {
    const bytes = Buffer.from(await (await fetch(`${base}${f.url}`)).arrayBuffer());
    t.is(bytes.length, f.bytes, f.name);
    fs.writeFileSync(path.join(downloaded, f.name), bytes);
  }
  t.true(fs.readFileSync(path.join(downloaded, 'adapter_model.safetensors')).equals(fs.readFileSync(path.join(dir, 'service', 'jobs', 'tiny', 'adapter_model.safetensors'))));
  t.is((await fetch(`${base}/jobs/tiny/adapter/..%2F..%2Fstate%2Fjobs.json`)).status, 404, 'only the listed files are served');

  // A generation with the adapter, streamed token by token, as the library gives it.
  const prompt = 'Q3: what is 3 + 1?';
  const gen = await readSse(`${base}/generate`, post({ adapter: 'tiny', prompt, maxNewTokens: 8, temperature: 0 }));
  const tokens = gen.events.filter((e) => e.event === 'token').map((e) => (e.data as { id: number }).id);
  const done = gen.events.at(-1)!;
  t.is(done.event, 'done');
  const local = loadModelSync(model);
  try {
    const expected = local.generate(prompt, { adapter: downloaded, maxNewTokens: 8, temperature: 0 });
    t.deepEqual(tokens, expected.ids);
    t.is((done.data as { text: string }).text, expected.text);
    const plain = local.generate(prompt, { maxNewTokens: 8, temperature: 0 });
    t.notDeepEqual(plain.ids, expected.ids, 'the adapter changes the tokens (so the service must have applied it)');
    const withoutAdapter = await readSse(`${base}/generate`, post({ model, prompt, maxNewTokens: 8, temperature: 0 }));
    t.deepEqual(withoutAdapter.events.filter((e) => e.event === 'token').map((e) => (e.data as { id: number }).id), plain.ids);
  } finally {
    local.dispose();
  }

  // DELETE cancels a running job at a step boundary, with a checkpoint.
  t.is((await fetch(`${base}/jobs`, post({ ...job, steps: 100000, id: 'long' }))).status, 201);
  const cancelled = readSse(`${base}/jobs/long/events`, {}, ended);
  await readSse(`${base}/jobs/long/events`, {}, (e) => e.event === 'step');
  const del = await fetch(`${base}/jobs/long`, { method: 'DELETE' });
  t.is(del.status, 202);
  const last = (await cancelled).events.at(-1)!;
  t.is(last.event, 'cancelled');
  t.true(fs.existsSync(path.join((last.data as { checkpoint: string }).checkpoint, 'trainer_state.json')));
  t.is((await fetch(`${base}/jobs/nope`)).status, 404);

  child.kill('SIGTERM');
  t.is(await exited(child), 0, 'a SIGTERM stops the service cleanly');
});

/**
 * Starts the service, posts job `id`, stops the service with `signal` once `stopWhen` sees an
 * event of it, returns what the state file recorded; then starts it again, reads the job's
 * events to its end, and checks its adapter against an uninterrupted train() of the same options.
 */
async function stopAndResume(t: ExecutionContext, id: string, signal: NodeJS.Signals, extra: Record<string, unknown>, stopWhen: (e: SseEvent) => boolean): Promise<{ status: string; step: number }> {
  const dir = tmpDir(`service-${id}`);
  const { model, data } = tinyTrainFixture(dir);
  const env = { PEFTKIT_SERVICE_DIR: path.join(dir, 'service') };
  const options = { model, data, steps: 60, r: 4, batchSize: 4, maxLength: 64, ...extra };
  const first = await startService(env);
  t.teardown(() => first.child.kill('SIGKILL'));
  t.is((await fetch(`${first.base}/jobs`, post({ ...options, id }))).status, 201);
  await readSse(`${first.base}/jobs/${id}/events`, {}, stopWhen);
  first.child.kill(signal);
  t.is(await exited(first.child), signal === 'SIGKILL' ? null : 0);
  const recorded = JSON.parse(fs.readFileSync(path.join(dir, 'service', 'state', 'jobs.json'), 'utf8')).jobs[0];

  const second = await startService(env);
  t.teardown(() => second.child.kill('SIGKILL'));
  const { events } = await readSse(`${second.base}/jobs/${id}/events`, {}, ended);
  t.is(events.at(-1)!.event, 'done');
  second.child.kill('SIGTERM');
  t.is(await exited(second.child), 0);
  const alone = path.join(dir, 'alone');
  await train({ ...options, out: alone });
  const adapter = (d: string) => fs.readFileSync(path.join(d, 'adapter_model.safetensors'));
  t.true(adapter(path.join(dir, 'service', 'jobs', id)).equals(adapter(alone)), 'the resumed job ends with the uninterrupted adapter');
  return recorded;
}

const stepAt = (e: SseEvent) => (e.data as { step: number }).step;

test('a SIGTERM checkpoints the running job; the service started again resumes it to the adapter of an uninterrupted run', async (t) => {
  const recorded = await stopAndResume(t, 'resumed', 'SIGTERM', { seed: 2 }, (e) => e.event === 'step' && stepAt(e) >= 3);
  t.is(recorded.status, 'interrupted');
  t.true(recorded.step >= 3 && recorded.step < 60, `stopped at step ${recorded.step}`);
});

test('a service killed (SIGKILL) mid-job resumes it at the next start from its last checkpoint', async (t) => {
  const recorded = await stopAndResume(t, 'crashed', 'SIGKILL', { seed: 4, saveEvery: 4 }, (e) => e.event === 'checkpoint' && stepAt(e) >= 8);
  t.is(recorded.status, 'running', 'the crash left the job recorded as running');
  t.true(recorded.step >= 8);
});
