/**
 * `npm run bench:train`: LoRA training throughput and peak memory on the SmolLM2-135M shape
 * (random init, r=16, alpha=32, all linear layers, batch 4 × 256 tokens), side by side in one
 * run with ../shared/bench/torch_lora_ref.py (the PyTorch peer) in f32 and bf16 autocast.
 * Our figures come from a child process each, so peak RSS is that run's alone.
 *   npm run bench:train [-- --steps 3 --shape smol135|tiny]
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runtimeInfo } from '../src/index';
import { writeBenchModel } from './train_child';


function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
}

interface Row {
  who: string;
  tokensPerS: number;
  stepS: number;
  peakRssMb: number;
  note?: string;
}

/** Runs a command under GNU time for its peak RSS. */
function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): { out: string; rssMb: number } {
  const r = spawnSync('/usr/bin/time', ['-f', 'PEAK_RSS_KB=%M', cmd, ...args], { encoding: 'utf8', env, maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed:\n${r.stderr}`);
  const kb = Number(/PEAK_RSS_KB=(\d+)/.exec(r.stderr)?.[1] ?? NaN);
  return { out: r.stdout, rssMb: kb / 1024 };
}

/** ../shared/bench/torch_lora_ref.py beside the repo (or beside any folder above it). */
function findPeer(): string | null {
  for (let d = path.join(__dirname, '..', '..'); d !== path.dirname(d); d = path.dirname(d)) {
    const p = path.join(path.dirname(d), 'shared', 'bench', 'torch_lora_ref.py');
    if (fs.existsSync(p)) return p;
  }
  return null;
}

function main(): void {
  const shape = arg('shape', 'smol135');
  const steps = Number(arg('steps', '3'));
  const [B, T] = shape === 'tinyllama' ? [1, 512] : [4, 256];
  const machine = `${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} cores, ${runtimeInfo().cpuIsa}`;
  console.log(`machine: ${machine}\nshape: ${shape}, LoRA r=16 alpha=32 on q,k,v,o,gate,up,down, batch ${B}x${T}, ${steps} timed steps`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bench-'));
  const rows: Row[] = [];
  try {
    const child = path.join(__dirname, 'train_child.js');
    writeBenchModel(path.join(dir, shape), shape);
    const runs: Array<[string, boolean, string, 'f32' | 'bf16']> = shape === 'tinyllama'
      ? [['peftkit QLoRA (nf4) + activation checkpointing', true, 'nf4', 'f32'],
        ['peftkit QLoRA (nf4, bf16 compute) + activation checkpointing', true, 'nf4', 'bf16']]
      : [['peftkit f32', false, 'none', 'f32'], ['peftkit f32 + activation checkpointing', true, 'none', 'f32'],
        ['peftkit LoRA --bf16 (bf16 weights and compute)', false, 'none', 'bf16'],
        ['peftkit QLoRA (nf4, f32 compute)', false, 'nf4', 'f32'], ['peftkit QLoRA (nf4, bf16 compute)', false, 'nf4', 'bf16'],
        ['peftkit int8-LoRA (f32 compute)', false, 'int8', 'f32']];
    for (const [who, ckpt, quant, dtype] of runs) {
      const r = timed(process.execPath, [child, dir, shape, String(steps), String(B), String(T), ckpt ? '1' : '0', quant, dtype]);
      const m = JSON.parse(r.out.trim().split('\n').pop()!) as { tokensPerS: number; stepS: number };
      rows.push({ who, tokensPerS: m.tokensPerS, stepS: m.stepS, peakRssMb: r.rssMb });
    }
    const peer = shape === 'tinyllama' ? null : findPeer();
    if (shape === 'tinyllama') {
      // The peer script has no 1.1B shape; this row is about our own peak memory.
    } else if (fs.existsSync('/usr/bin/python3') && peer) {
      const env = { ...process.env };
      delete env.OPENBLAS_CORETYPE; // slows a current OpenBLAS (shared/bench/README.md)
      delete env.OPENBLAS_L2_SIZE;
      for (const dtype of ['fp32', 'bf16']) {
        const r = timed('/usr/bin/python3', [peer, shape, dtype, String(B), String(T), String(steps)], env);
        const tps = Number(/tokens_per_s=(\d+)/.exec(r.out)?.[1]);
        const step = Number(/step_median=([\d.]+)s/.exec(r.out)?.[1]);
        rows.push({ who: `PyTorch ${dtype === 'bf16' ? 'bf16 autocast' : 'f32'}`, tokensPerS: tps, stepS: step, peakRssMb: r.rssMb, note: r.out.trim().split(' ').slice(0, 2).join(' ') });
      }
    } else {
      console.log('(PyTorch peer not found: install python3-torch and keep ../shared/bench beside the repo)');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log('\nwho | tokens/s | step s | peak RSS MB');
  for (const r of rows) console.log(`${r.who} | ${r.tokensPerS.toFixed(0)} | ${r.stepS.toFixed(3)} | ${r.peakRssMb.toFixed(0)}`);
  const ours = rows[0];
  for (const r of rows.filter((x) => x.who.startsWith('PyTorch'))) console.log(`ratio peftkit f32 / ${r.who}: ${(ours.tokensPerS / r.tokensPerS).toFixed(2)}x tokens/s, ${(ours.peakRssMb / r.peakRssMb).toFixed(2)}x peak RSS`);
  const oursBf16 = rows.find((x) => x.who.startsWith('peftkit LoRA --bf16'));
  const autocast = rows.find((x) => x.who === 'PyTorch bf16 autocast');
  if (oursBf16 && autocast) console.log(`ratio peftkit --bf16 / PyTorch bf16 autocast: ${(oursBf16.tokensPerS / autocast.tokensPerS).toFixed(2)}x tokens/s, ${(oursBf16.peakRssMb / autocast.peakRssMb).toFixed(2)}x peak RSS`);
  const out = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'train.json'), JSON.stringify({ machine, date: new Date().toISOString(), shape, B, T, steps, rows }, null, 2));
}

main();
