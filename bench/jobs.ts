/**
 * `npm run bench:jobs`: two training jobs through a JobManager, at once on half the threads each
 * (concurrency 2) against one after another on all the threads (concurrency 1): the wall time
 * until both are done, and the CPU seconds spent. LoRA r=16 on all linear layers, batch 4 ×
 * `--seq` random tokens, `--steps` steps each, on the `tiny` shape by default (a small job) or
 * `--shape smol135`; the configurations alternate `--rounds` times so load on a shared machine
 * hits both. JobManager's DEFAULT_CONCURRENCY follows what this measures.
 *   npm run bench:jobs [-- --rounds 3 --steps 20 --seq 128 --shape tiny]
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { JobManager, runtimeInfo } from '../src/index';
import { writeBenchModel } from './train_child';
import { arg } from './args';

/** Rows of random token ids (the bench models have no tokenizer). */
function writeTokenData(file: string, rows: number, T: number, vocab: number, seed: number): void {
  let s = seed;
  const next = () => ((s = (s * 1103515245 + 12345) >>> 0) % vocab);
  const lines = Array.from({ length: rows }, () => JSON.stringify({ input_ids: Array.from({ length: T }, next) }));
  fs.writeFileSync(file, lines.join('\n') + '\n');
}

async function both(model: string, data: string[], dir: string, concurrency: number, threads: number, steps: number, T: number): Promise<{ wallS: number; cpuS: number; threadsEach: number[] }> {
  const m = new JobManager({ concurrency, threads });
  const threadsEach: number[] = [];
  m.on('started', (e) => threadsEach.push(e.threads));
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const jobs = data.map((d, i) => m.submit({
    model, data: d, out: path.join(dir, `c${concurrency}-${i}-${Date.now()}`), steps, batchSize: 4, maxLength: T, r: 16, alpha: 32,
    targets: 'all-linear', dropout: 0, seed: i, memoryCheck: false,
  }));
  await Promise.all(jobs.map((j) => j.result));
  const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  await m.shutdown();
  return { wallS, cpuS: (cpu.user + cpu.system) / 1e6, threadsEach };
}

async function main(): Promise<void> {
  const shape = arg('shape', 'tiny');
  const rounds = Number(arg('rounds', '3'));
  const steps = Number(arg('steps', '20'));
  const T = Number(arg('seq', '128'));
  const threads = runtimeInfo().threads;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bench-jobs-'));
  try {
    const model = path.join(dir, shape);
    writeBenchModel(model, shape);
    const vocab = (JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size;
    const data = [0, 1].map((i) => path.join(dir, `data${i}.jsonl`));
    data.forEach((f, i) => writeTokenData(f, 4 * steps, T, vocab, i + 1));
    console.log(`${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} cores, ${threads} threads; shape ${shape}, 2 jobs × ${steps} steps of 4 × ${T} tokens`);
    console.log('| round | config | wall s (both done) | CPU s | threads per job | load before |');
    console.log('|---|---|---|---|---|---|');
    for (let r = 1; r <= rounds; r++) {
      for (const concurrency of [1, 2]) {
        const load = os.loadavg()[0].toFixed(1);
        const x = await both(model, data, dir, concurrency, threads, steps, T);
        const config = concurrency === 1 ? `one after another, ${threads} threads` : `2 at once, ${Math.max(1, Math.floor(threads / 2))} thread(s) each`;
        console.log(`| ${r} | ${config} | ${x.wallS.toFixed(2)} | ${x.cpuS.toFixed(1)} | ${x.threadsEach.join(', ')} | ${load} |`);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

void main();
