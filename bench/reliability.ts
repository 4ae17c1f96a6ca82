/**
 * `npm run bench:reliability`: issue 16's figures, measured from the real code paths on this
 * machine. (1) Each hostile input (bench/reliability_child.ts, a process each): the error code,
 * the start of its message and the time from the call to the refusal. (2) SIGKILLs at random
 * moments of a CLI training run that checkpoints every step, each resumed with --resume, the
 * final adapter compared byte for byte with an uninterrupted run's. (3) abort() latency, from
 * abort() to the run's promise rejecting: at a step boundary, mid data preparation, mid chat
 * template. Prints Markdown for BENCHMARKS.md. Not part of `npm test`.
 *   npm run bench:reliability [-- --kills 10 --aborts 5]
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { train, writeRandomModel } from '../src';
import type { TrainRunOptions } from '../src/train/train';
import { HOSTILE_TEMPLATES } from '../test/helpers/template_child';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

const BIN = path.join(__dirname, '..', '..', 'bin', 'peftkit.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const s = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);

/** Issue 16's hostile inputs: the case, what it is, the error expected. */
const HOSTILE: Array<[string, string, string]> = [
  ['template-huge-range', '`{% for i in range(1000000000) %}` in tokenizer_config.json\'s chat template, `train` on chat rows', 'E_DATA'],
  ['template-nested-loops', 'three nested `range(100000)` loops in the chat template', 'E_DATA'],
  ['template-runaway-output', 'a template doubling a string 64 times', 'E_DATA'],
  ['regex-bomb', '`(a+)+b` as a pre-tokenizer Split regex in tokenizer.json', 'E_CONFIG'],
  ['row-50MB-max-length-64', 'one 50 MB `{"text"}` row, `--max-length 64`', 'trains'],
  ['row-over-64Mi-chars', 'a row over 64 Mi characters', 'E_DATA'],
  ['fifo-data', 'a FIFO as the data file', 'E_IO'],
  ['fifo-shard', 'a FIFO as model.safetensors', 'E_IO'],
  ['second-run-same-out', 'a second run into the `--out` of a live run', 'E_BUSY'],
  ['run-b-into-run-a-out', 'run B into run A\'s output folder (A left checkpoints)', 'E_ARG'],
  ['cli-empty-lr', '`peftkit train ... --lr ""` (time includes starting Node)', 'exit 2'],
  ['eps-0', '`eps: 0`', 'E_ARG'],
  ['lr-10', '`lr: 10`', 'E_ARG'],
  ['r-100000', '`r: 100000` on a 32-wide model', 'E_ARG'],
  ['batch-over-memory', 'a batch twice the memory available (packing, 2048 tokens)', 'E_MEMORY'],
  ['tensor-shape-overflow', '`Tensor.empty([2 ** 62, 4])`', 'E_SHAPE'],
  ['adapter-with-nan', '`--adapter` whose lora_A holds NaN', 'E_FORMAT'],
  ['adapter-overflowing', '`--adapter` whose lora_B holds 1e30 (activations overflow)', 'E_NAN'],
  ['lr-1-adamw8bit', '`lr: 1`, `optim: adamw8bit`', 'warning'],
  ['invalid-utf8', 'invalid UTF-8 in the data', 'warning'],
  ['disk-full', '`--out` on a full disk (a 96 KiB tmpfs), checkpoint every step', 'E_IO ENOSPC'],
  ['read-only-disk', '`--out` under a read-only mount', 'E_IO EROFS'],
  ['permission-denied', '`--out` in a folder the user may not write (run as nobody)', 'E_IO EACCES'],
];

function hostile(root: string): string[] {
  const rows = ['| input | expected | got | message (start) | time to refuse (to the warning; to the end of a run that trains) |', '|---|---|---|---|---|'];
  for (const [name, what, expected] of HOSTILE) {
    const dir = path.join(root, name);
    const r = spawnSync(process.execPath, [path.join(__dirname, 'reliability_child.js'), name, dir], { encoding: 'utf8', timeout: 300_000, killSignal: 'SIGKILL' });
    const line = r.stdout.trim().split('\n').pop() || '{}';
    const m = JSON.parse(line) as { code?: string; errno?: string; message?: string; ms?: number | null };
    const note = /^(warns|trains)\b/.exec(m.message ?? '')?.[1];
    const got = r.signal ? `killed (${r.signal}): a hang or crash` : m.code === 'ok' && note ? (note === 'warns' ? 'warning' : 'trains') : `${m.code ?? '?'}${m.errno ? ` ${m.errno}` : ''}`;
    const msg = (m.message ?? r.stderr.slice(-200)).replace(new RegExp(dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'g'), '…').replace(/\|/g, '\\|');
    rows.push(`| ${what} | ${expected} | ${got} | ${msg.slice(0, 110)}${msg.length > 110 ? '…' : ''} | ${m.ms === null || m.ms === undefined ? '—' : s(m.ms)} |`);
    console.error(`hostile ${name}: ${got}`);
  }
  return rows;
}

/** A tiny model with the byte tokenizer and prompt/completion rows (test/kill_resume.test.ts's). */
function killFixture(root: string): { model: string; data: string } {
  const model = path.join(root, 'kill-model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 21 });
  const data = path.join(root, 'kill-data.jsonl');
  fs.writeFileSync(data, Array.from({ length: 16 }, (_, i) => JSON.stringify({ prompt: `item ${i} is`, completion: ` number ${i * 3}` })).join('\n') + '\n');
  return { model, data };
}

const KILL_STEPS = 80;
const killFlags = ['--r', '4', '--alpha', '8', '--dropout', '0.1', '--targets', 'all-linear', '--batch-size', '2', '--lr', '5e-3', '--max-length', '48', '--seed', '7', '--steps', String(KILL_STEPS), '--save-every', '1'];

function cli(args: string[]): number | null {
  return spawnSync(process.execPath, [BIN, 'train', ...args], { stdio: 'ignore' }).status;
}

async function kills(root: string, trials: number): Promise<string[]> {
  const { model, data } = killFixture(root);
  const ref = path.join(root, 'kill-ref');
  const t0 = Date.now();
  if (cli(['--model', model, '--data', data, '--out', ref, ...killFlags]) !== 0) throw new Error('the uninterrupted run failed');
  const runMs = Date.now() - t0;
  const expected = fs.readFileSync(path.join(ref, 'adapter_model.safetensors'));
  let identical = 0;
  let done = 0;
  let early = 0;
  const moments: string[] = [];
  while (done < trials) {
    const out = path.join(root, `kill-${done}-${early}`);
    const child = spawn(process.execPath, [BIN, 'train', '--model', model, '--data', data, '--out', out, ...killFlags], { stdio: 'ignore' });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_c, sig) => resolve(sig)));
    // A random moment of the run: after its first checkpoint (before it there is nothing to resume), within its length.
    const first = path.join(out, 'checkpoints', 'step-1', 'trainer_state.json');
    for (const until = Date.now() + 120_000; !fs.existsSync(first) && Date.now() < until && child.exitCode === null;) await sleep(2);
    const delay = Math.random() * runMs;
    await sleep(delay);
    child.kill('SIGKILL');
    if ((await exited) !== 'SIGKILL' || fs.existsSync(path.join(out, 'adapter_model.safetensors'))) {
      early++; // it finished first: not a trial
      continue;
    }
    const steps = fs.readdirSync(path.join(out, 'checkpoints')).map((d) => Number(/^step-(\d+)$/.exec(d)?.[1] ?? -1)).filter((n) => n >= 0);
    const resumed = cli(['--resume', out]);
    const same = resumed === 0 && Buffer.compare(fs.readFileSync(path.join(out, 'adapter_model.safetensors')), expected) === 0;
    if (same) identical++;
    moments.push(`${delay.toFixed(0)} ms after checkpoint 1 (last complete: ${Math.max(...steps)})${same ? '' : `: DIFFERENT (resume exit ${resumed})`}`);
    done++;
  }
  return [
    `${trials} SIGKILLs at random moments of a CLI run (${KILL_STEPS} steps, a checkpoint each step, ~${s(runMs)} uninterrupted), each resumed with \`--resume\`: ` +
      `**${identical} / ${trials}** final adapter_model.safetensors byte-identical to the uninterrupted run's (${early} more runs finished before their kill and were not counted).`,
    '',
    ...moments.map((m, i) => `${i + 1}. killed ${m}`),
  ];
}

/** ms from abort() to the run's promise rejecting; the code it rejected with; whether the run had reached its first step. */
async function abortAfter(o: TrainRunOptions, when: 'step' | number): Promise<{ ms: number; code: string; started: boolean }> {
  const run = train(o);
  let started = false;
  run.on('start', () => (started = true));
  if (when === 'step') await new Promise<void>((resolve) => run.on('step', (e) => e.step === 5 && resolve()));
  else await sleep(when);
  const t0 = performance.now();
  run.abort();
  const code = await run.result.then(() => 'finished', (e: { code?: string }) => e.code ?? '?');
  return { ms: performance.now() - t0, code, started };
}

async function aborts(root: string, reps: number): Promise<string[]> {
  const model = path.join(root, 'abort-model');
  writeRandomModel(model, { hiddenSize: 64, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 3 });
  const text = path.join(root, 'abort-text.jsonl');
  fs.writeFileSync(text, Array.from({ length: 32 }, (_, i) => JSON.stringify({ text: `row ${i}: the number ${i} comes before ${i + 1}.` })).join('\n') + '\n');
  // Data whose preparation takes seconds: many rows to tokenize.
  const many = path.join(root, 'abort-many.jsonl');
  fs.writeFileSync(many, Array.from({ length: 15_000 }, (_, i) => JSON.stringify({ text: `row ${i}: ${'the quick brown fox jumps over the lazy dog. '.repeat(8)}` })).join('\n') + '\n');
  // A chat template that runs until its 5 s limit.
  const slow = path.join(root, 'abort-template-model');
  writeRandomModel(slow, { hiddenSize: 64, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 3 });
  const cfg = path.join(slow, 'tokenizer_config.json');
  fs.writeFileSync(cfg, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, 'utf8')), chat_template: HOSTILE_TEMPLATES.nestedLoops }));
  const chat = path.join(root, 'abort-chat.jsonl');
  fs.writeFileSync(chat, `${JSON.stringify({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }] })}\n`);
  let n = 0;
  const out = () => path.join(root, `abort-out-${n++}`);
  const rows = ['| where | abortGraceMs | runs | abort() → rejection, median (max) | rejected with | run had started stepping |', '|---|---|---|---|---|---|'];
  const measure = async (where: string, o: Omit<TrainRunOptions, 'out'>, when: 'step' | number, count: number) => {
    const r: Array<{ ms: number; code: string; started: boolean }> = [];
    for (let i = 0; i < count; i++) r.push(await abortAfter({ ...o, out: out() }, when));
    rows.push(`| ${where} | ${o.abortGraceMs ?? 2000} | ${count} | ${s(median(r.map((x) => x.ms)))} (${s(Math.max(...r.map((x) => x.ms)))}) | ${[...new Set(r.map((x) => x.code))].join(', ')} | ${r.filter((x) => x.started).length} / ${count} |`);
    console.error(`abort ${where}: ${r.map((x) => x.ms.toFixed(0)).join(' ')}`);
  };
  await measure('at a step boundary (abort at step 5; a checkpoint is written, then it stops)', { model, data: text, steps: 1_000_000, maxLength: 32 }, 'step', reps);
  // 1.5 s in: the worker is up and reading (its start-up takes a few hundred ms here).
  await measure('mid data preparation (15k rows to tokenize; abort 1.5 s in)', { model, data: many, steps: 1, maxLength: 128 }, 1500, reps);
  await measure('mid data preparation, shorter grace', { model, data: many, steps: 1, maxLength: 128, abortGraceMs: 250 }, 1500, reps);
  await measure('mid chat template (a template running to its 5 s limit; abort 1.5 s in)', { model: slow, data: chat, steps: 1, maxLength: 32 }, 1500, reps);
  return rows;
}

async function main(): Promise<void> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-reliability-'));
  const load = () => os.loadavg().map((l) => l.toFixed(1)).join(' ');
  console.log(`${new Date().toISOString()}, ${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}, Node ${process.version}, load average ${load()}\n`);
  try {
    console.log('### Hostile inputs\n');
    console.log(hostile(root).join('\n'));
    console.log(`\n### Kill and resume (load average ${load()})\n`);
    console.log((await kills(root, arg('kills', 10))).join('\n'));
    console.log(`\n### abort() latency (load average ${load()})\n`);
    console.log((await aborts(root, arg('aborts', 5))).join('\n'));
    console.log(`\nload average at the end: ${load()}`);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

void main();
