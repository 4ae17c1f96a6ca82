/**
 * `npm run bench:memory`: estimateMemory against the measured peak RSS of real training runs on
 * a benchmark shape (bench/train_child.ts's SHAPES; SmolLM2-135M by default), one child process
 * per run (bench/memory_child.ts: train() with its worker, as an application runs it), batch
 * 4 × 256, pre-tokenized rows. Prints a Markdown table for BENCHMARKS.md.
 *   npm run bench:memory [-- --shape smol135|tiny --steps 2]
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { TrainOptions } from '../src/train/options';
import { writeBenchModel } from './train_child';
import { arg } from './args';

const RUNS: Array<[string, Partial<TrainOptions>]> = [
  ['LoRA f32', {}],
  ['LoRA f32 + activation checkpointing', { activationCheckpointing: true }],
  ['LoRA `--bf16`', { bf16: true }],
  ['QLoRA (NF4), f32 compute', { method: 'qlora' }],
  ['QLoRA (NF4), bf16 compute', { method: 'qlora', bf16: true }],
  ['int8-LoRA, f32 compute', { method: 'int8-lora' }],
  ['LoRA, adamw8bit', { optim: 'adamw8bit' }],
  ['DoRA', { method: 'dora' }],
  ['full fine-tuning', { method: 'full', r: undefined, alpha: undefined, targets: undefined }],
];

function main(): void {
  const shape = arg('shape', 'smol135');
  const steps = Number(arg('steps', '2'));
  const [B, T] = [4, 256];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bench-memory-'));
  try {
    const model = path.join(dir, shape);
    writeBenchModel(model, shape);
    const V = JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')).vocab_size as number;
    const data = path.join(dir, 'train.jsonl');
    fs.writeFileSync(data, Array.from({ length: 4 * B }, (_, r) => JSON.stringify({ input_ids: Array.from({ length: T }, (_, i) => (r * 7919 + i * 104729) % V) })).join('\n') + '\n');
    const common = { model, data, steps, batchSize: B, maxLength: T, r: 16, alpha: 32, targets: 'all-linear' as const, dropout: 0, overwrite: true };
    console.log(`shape ${shape}, batch ${B} × ${T}, ${steps} steps, r 16 all-linear where LoRA, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    console.log('| run | estimate MiB | peak RSS MiB | estimate / peak | largest parts (MiB) |\n|---|---|---|---|---|');
    for (const [name, o] of RUNS) {
      const options = { ...common, ...o, out: path.join(dir, 'out') };
      const r = spawnSync(process.execPath, [path.join(__dirname, 'memory_child.js'), JSON.stringify(options)], { encoding: 'utf8', maxBuffer: 1 << 26 });
      const m = JSON.parse(r.stdout.trim().split('\n').pop() || '{}') as { estimate?: { total: number; parts: Record<string, number> }; maxRSS?: number; message?: string };
      if (!m.estimate || !m.maxRSS) {
        console.log(`| ${name} | failed: ${m.message ?? r.stderr.slice(-300)} | | | |`);
        continue;
      }
      const mib = (b: number) => (b / 2 ** 20).toFixed(0);
      const parts = Object.entries(m.estimate.parts).sort((a, b) => b[1] - a[1]).slice(0, 4).map(([k, v]) => `${k} ${mib(v)}`).join(', ');
      console.log(`| ${name} | ${mib(m.estimate.total)} | ${mib(m.maxRSS)} | ${(m.estimate.total / m.maxRSS).toFixed(3)} | ${parts} |`);
    }
    console.log(`load average after: ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main();
