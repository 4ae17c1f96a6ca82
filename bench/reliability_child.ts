/**
 * One hostile input of issue 16 for bench/reliability.ts, in a process of its own (some used to
 * take the process down): builds the input in DIR (not timed), then times the real code path
 * from the call to its refusal. Prints one JSON line: {case, code, errno?, message, ms}.
 *   node reliability_child.js CASE DIR
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { createAdapter, estimateMemory, PeftkitError, Tensor, train, writeRandomModel } from '../src';
import { writeByteTokenizer } from '../src/data';
import { LlamaModel } from '../src/model/llama';
import { runTraining } from '../src/train/run';
import type { TrainOptions } from '../src/train/options';
import { HOSTILE_TEMPLATES } from '../test/helpers/template_child';

const [name, dir] = process.argv.slice(2);
const BIN = path.join(__dirname, '..', '..', 'bin', 'peftkit.js');

/** A tiny model with the byte tokenizer (and `chatTemplate` in its tokenizer_config.json). */
function model(chatTemplate?: string): string {
  const m = path.join(dir, 'model');
  writeRandomModel(m, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 5 });
  if (chatTemplate !== undefined) writeByteTokenizer(m, { chatTemplate });
  return m;
}

function data(rows: unknown[], file = path.join(dir, 'data.jsonl')): string {
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return file;
}

const textRows = (n = 8) => Array.from({ length: n }, (_, i) => ({ text: `row ${i}: the number ${i} comes before ${i + 1}.` }));
const chat = [{ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }] }];
const base = (): Pick<TrainOptions, 'model' | 'data' | 'out' | 'steps' | 'maxLength'> => ({ model: model(), data: data(textRows()), out: path.join(dir, 'out'), steps: 1, maxLength: 32 });

/** Mounts a small tmpfs at `at` (read-only with `ro`); null with the reason where that is not allowed. */
function mountTmpfs(at: string, size: string, ro = false): string | null {
  fs.mkdirSync(at, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}${ro ? ',ro' : ''}`, 'tmpfs', at], { encoding: 'utf8' });
  return r.status === 0 ? null : `cannot mount a tmpfs here (${(r.stderr || r.error?.message || '').trim()})`;
}

/**
 * Each case: its setup, then the timed call (which returns a note when it is not a refusal);
 * `restart()` moves the start of the timing (past a first run's start-up). A string: the reason
 * the case cannot be reproduced on this machine.
 */
type Case = { run: (restart: () => void) => unknown; cleanup?: () => void } | string;
const CASES: Record<string, () => Case> = {
  'template-huge-range': () => ({ run: () => train({ ...base(), model: model(HOSTILE_TEMPLATES.hugeRange), data: data(chat) }).result }),
  'template-nested-loops': () => ({ run: () => train({ ...base(), model: model(HOSTILE_TEMPLATES.nestedLoops), data: data(chat) }).result }),
  'template-runaway-output': () => ({ run: () => train({ ...base(), model: model(HOSTILE_TEMPLATES.doubling), data: data(chat) }).result }),
  'regex-bomb': () => {
    const o = base();
    const file = path.join(o.model, 'tokenizer.json');
    const tok = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    tok.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: '(a+)+b' }, behavior: 'Isolated', invert: false }, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] };
    fs.writeFileSync(file, JSON.stringify(tok));
    return { run: () => train({ ...o, data: data([{ text: 'a'.repeat(28) }]) }).result };
  },
  'row-50MB-max-length-64': () => {
    const file = path.join(dir, 'big.jsonl');
    fs.writeFileSync(file, `${JSON.stringify({ text: 'the cat sat. '.repeat((50 << 20) / 13) })}\n`);
    return { run: () => train({ ...base(), data: file, maxLength: 64 }).result.then(() => 'trains: the row is cut before encoding') };
  },
  'row-over-64Mi-chars': () => {
    const file = path.join(dir, 'huge.jsonl');
    fs.writeFileSync(file, `{"text": "short"}\n{"text": "${'y'.repeat(64 * 2 ** 20 + 1)}"}\n`);
    return { run: () => train({ ...base(), data: file }).result };
  },
  'fifo-data': () => {
    const o = base();
    fs.rmSync(o.data);
    execFileSync('mkfifo', [o.data]);
    return { run: () => train(o).result };
  },
  'fifo-shard': () => {
    const o = base();
    const shard = path.join(o.model, 'model.safetensors');
    fs.rmSync(shard);
    execFileSync('mkfifo', [shard]);
    return { run: () => train(o).result };
  },
  'second-run-same-out': () => {
    const o = base();
    const first = train({ ...o, steps: 1_000_000 });
    first.catch(() => {});
    return {
      run: async (restart: () => void) => {
        await new Promise((resolve) => first.once('step', resolve));
        restart(); // timed from the second run's start, not from the first's start-up
        try {
          await train(o).result;
        } finally {
          first.abort();
        }
      },
    };
  },
  'run-b-into-run-a-out': () => {
    const o = base();
    runTraining({ ...o, steps: 4, saveEvery: 2 });
    return { run: () => train({ ...o, steps: 2, lr: 1e-2, r: 4 }).result };
  },
  'cli-empty-lr': () => {
    const o = base();
    return {
      run: () => {
        const r = spawnSync(process.execPath, [BIN, 'train', '--model', o.model, '--data', o.data, '--out', o.out, '--lr', ''], { encoding: 'utf8' });
        throw new PeftkitError(`exit ${r.status}`, r.stderr.trim().split('\n')[0].replace(/^peftkit: /, ''));
      },
    };
  },
  'eps-0': () => ({ run: () => train({ ...base(), eps: 0 }).result }),
  'lr-10': () => ({ run: () => train({ ...base(), lr: 10 }).result }),
  'r-100000': () => ({ run: () => train({ ...base(), r: 100000 }).result }),
  'batch-over-memory': () => {
    const o = { ...base(), packing: true, maxLength: 2048 };
    const perRow = estimateMemory({ ...o, batchSize: 2 }).required - estimateMemory({ ...o, batchSize: 1 }).required;
    const batchSize = Math.ceil((2 * estimateMemory(o).available.bytes) / perRow);
    return { run: () => train({ ...o, batchSize }).result };
  },
  'tensor-shape-overflow': () => ({ run: () => Tensor.empty([2 ** 62, 4]) }),
  'adapter-with-nan': () => {
    const o = base();
    const m = LlamaModel.load(o.model);
    const a = createAdapter('lora', m, { targets: ['q_proj'] });
    const p = a.parameters()[0].param;
    p.write(new Float32Array(p.numel).fill(NaN));
    a.save(path.join(dir, 'adapter'));
    a.dispose();
    m.dispose();
    return { run: () => train({ ...o, adapter: path.join(dir, 'adapter') }).result };
  },
  'adapter-overflowing': () => {
    const o = base();
    const m = LlamaModel.load(o.model);
    const a = createAdapter('lora', m, { targets: 'all-linear' });
    for (const p of a.parameters()) if (/lora_B/.test(p.name)) p.param.write(new Float32Array(p.param.numel).fill(1e30));
    a.save(path.join(dir, 'adapter'));
    a.dispose();
    m.dispose();
    return { run: () => train({ ...o, adapter: path.join(dir, 'adapter') }).result };
  },
  'lr-1-adamw8bit': () => {
    const o = { ...base(), lr: 1, optim: 'adamw8bit' as const, targets: 'all-linear' as const, steps: 4 };
    return {
      run: () => new Promise((resolve, reject) => {
        const run = train(o);
        run.once('warning', (e) => resolve(`warns: ${e.message}`));
        run.result.then(() => reject(new Error('no warning')), reject);
      }),
    };
  },
  'invalid-utf8': () => {
    const o = base();
    fs.writeFileSync(o.data, Buffer.concat([Buffer.from('{"text": "caf'), Buffer.from([0xe9]), Buffer.from(' au lait"}\n{"text": "fine"}\n')]));
    return { run: () => new Promise((resolve, reject) => train(o).once('warning', (e) => resolve(`warns: ${e.message}`)).result.catch(reject)) };
  },
  'disk-full': () => {
    const o = base();
    const at = path.join(dir, 'full');
    const why = mountTmpfs(at, '96k');
    if (why) return why;
    return { run: () => train({ ...o, out: path.join(at, 'out'), steps: 50, saveEvery: 1 }).result, cleanup: () => spawnSync('umount', [at]) };
  },
  'permission-denied': () => {
    const o = base();
    const locked = path.join(dir, 'locked');
    fs.mkdirSync(locked, { mode: 0o555 });
    // root writes anywhere: drop to nobody (the inputs stay readable), as an unprivileged user would run.
    if (process.getuid?.() === 0) {
      for (const d of [dir, path.dirname(dir)]) fs.chmodSync(d, 0o755); // the bench's temporary folders
      process.setgid!(65534);
      process.setuid!(65534);
    }
    return { run: () => train({ ...o, out: path.join(locked, 'out') }).result };
  },
  'read-only-disk': () => {
    const o = base();
    const at = path.join(dir, 'ro');
    const why = mountTmpfs(at, '1m', true);
    if (why) return why;
    return { run: () => train({ ...o, out: path.join(at, 'new', 'out') }).result, cleanup: () => spawnSync('umount', [at]) };
  },
};

async function main(): Promise<void> {
  const setup = CASES[name];
  if (!setup) throw new Error(`unknown case ${name} (cases: ${Object.keys(CASES).join(', ')})`);
  fs.mkdirSync(dir, { recursive: true });
  const c = setup();
  if (typeof c === 'string') {
    console.log(JSON.stringify({ case: name, code: 'not reproduced', message: c, ms: null }));
    return;
  }
  let t0 = performance.now();
  let out: Record<string, unknown>;
  try {
    const note = await c.run(() => (t0 = performance.now()));
    out = { code: 'ok', message: typeof note === 'string' ? note : 'accepted' };
  } catch (e) {
    const p = e as PeftkitError;
    out = { code: p.code ?? `other: ${String(e)}`, errno: p.errno, message: p.message };
  } finally {
    c.cleanup?.();
  }
  console.log(JSON.stringify({ case: name, ...out, ms: performance.now() - t0 }));
}

main().catch((e) => {
  console.log(JSON.stringify({ case: name, code: 'harness error', message: String(e), ms: null }));
  process.exitCode = 1;
});
