/**
 * `npm run bench:train`: LoRA training throughput and peak memory on the SmolLM2-135M shape
 * (random init, r=16, alpha=32, all linear layers, batch 4 × 256 tokens), side by side in one
 * run with ../shared/bench/torch_lora_ref.py (the PyTorch peer) in f32 and bf16 autocast.
 * Our figures come from a child process each, so peak RSS is that run's alone.
 *   npm run bench:train [-- --steps 3 --shape smol135|tiny]
 * With --device cuda (or cpu): LoRA bf16 and QLoRA NF4 bf16 at --batch 8 × --seq 512 beside the
 * PyTorch GPU peer (bench/peers/torch_lora_train_gpu.py), peak GPU memory sampled with nvidia-smi:
 *   npm run bench:train -- --device cuda --shape smol135|tinyllama [--batch 8 --seq 512 --steps 3]
 * --tag NAME adds NAME to the results file's name (an A/B run beside the default one, e.g. under
 * PEFTKIT_CUBLASLT=0); --no-peer leaves the PyTorch runs out. The file records which GEMM ran.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runtimeInfo } from '../src/index';
import { writeBenchModel } from './train_child';
import { arg } from './args';


interface Row {
  who: string;
  tokensPerS: number;
  stepS: number;
  peakRssMb: number;
  note?: string;
}

/** Runs a command under GNU time for its peak RSS. */
function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): { out: string; rssMb: number } {
  // Without GNU time (a bare GPU machine), the run still counts; its RSS is NaN.
  const r = fs.existsSync('/usr/bin/time')
    ? spawnSync('/usr/bin/time', ['-f', 'PEAK_RSS_KB=%M', cmd, ...args], { encoding: 'utf8', env, maxBuffer: 1 << 26 })
    : spawnSync(cmd, args, { encoding: 'utf8', env, maxBuffer: 1 << 26 });
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

/** Samples the GPU's used memory (MiB, nvidia-smi every 50 ms) while `run` runs: its peak above the idle level, or null without nvidia-smi. */
function gpuPeakMb<T>(run: () => T): { result: T; peakMb: number | null } {
  const query = ['--query-gpu=memory.used', '--format=csv,noheader,nounits'];
  const idle = spawnSync('nvidia-smi', query, { encoding: 'utf8' });
  if (idle.status !== 0) return { result: run(), peakMb: null };
  const file = path.join(os.tmpdir(), `peftkit-gpumem-${process.pid}-${Date.now()}.txt`);
  const fd = fs.openSync(file, 'w');
  const sampler = spawn('nvidia-smi', [...query, '-lms', '50'], { stdio: ['ignore', fd, 'ignore'] });
  try {
    const result = run();
    return { result, peakMb: Math.max(0, ...fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number)) - Number(idle.stdout.trim().split('\n')[0]) };
  } finally {
    sampler.kill();
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
  }
}

/** A python3 that imports torch, or null; the peer's versions line says what else it has. */
function torchPython(): string | null {
  for (const py of ['python3', '/usr/bin/python3']) if (spawnSync(py, ['-c', 'import torch'], { encoding: 'utf8' }).status === 0) return py;
  return null;
}

/**
 * `--device cuda` (or cpu, for a dry run of the plumbing): LoRA bf16 and QLoRA NF4 bf16 on SHAPE
 * at batch B × T, each in its own child, and the same two runs of bench/peers/torch_lora_train_gpu.py
 * where python3 has torch. Peak memory: the GPU's used memory above idle while the run lasts (the
 * same sampling for both), the peer's own torch.cuda.max_memory_reserved in its note.
 */
function deviceMain(device: 'cpu' | 'cuda'): void {
  const shape = arg('shape', 'smol135');
  const steps = Number(arg('steps', '3'));
  const B = Number(arg('batch', '8')), T = Number(arg('seq', '512'));
  console.log(`device: ${device}; shape: ${shape}, LoRA r=16 alpha=32 on q,k,v,o,gate,up,down, batch ${B}x${T}, ${steps} timed steps`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bench-'));
  const rows: Array<Row & { peakGpuMb: number | null; peer?: string }> = [];
  const runs: Array<[string, string, 'none' | 'nf4', string]> = [['LoRA bf16', 'lora-bf16', 'none', 'bf16'], ['QLoRA NF4 bf16', 'qlora-nf4', 'nf4', 'bf16']];
  try {
    writeBenchModel(path.join(dir, shape), shape);
    const child = path.join(__dirname, 'train_child.js');
    for (const [what, , quant, dtype] of runs) {
      try {
        const { result: r, peakMb } = gpuPeakMb(() => timed(process.execPath, [child, dir, shape, String(steps), String(B), String(T), '0', quant, dtype, device]));
        const m = JSON.parse(r.out.trim().split('\n').pop()!) as { tokensPerS: number; stepS: number };
        rows.push({ who: `peftkit ${what}`, tokensPerS: m.tokensPerS, stepS: m.stepS, peakRssMb: r.rssMb, peakGpuMb: peakMb, peer: what });
      } catch (e) {
        console.log(`peftkit ${what} failed: ${(e as Error).message.split('\n').slice(0, 6).join(' | ')}`);
        process.exitCode = 1; // the peer may be absent; our own run may not fail
      }
    }
    const py = process.argv.includes('--no-peer') ? null : torchPython();
    if (!py && !process.argv.includes('--no-peer')) console.log('PyTorch peer absent: no python3 with torch on this machine');
    for (const [what, mode] of py ? runs : []) {
      try {
        const { result: r, peakMb } = gpuPeakMb(() => timed(py!, [path.join(__dirname, '..', '..', 'bench', 'peers', 'torch_lora_train_gpu.py'), shape, mode, String(B), String(T), String(steps)]));
        const m = JSON.parse(r.out.trim().split('\n').pop()!) as { tokens_per_s: number; step_s: number; peak_mb: number | null; torch: string; bitsandbytes: string | null; peft: string | null; device: string };
        const note = `torch ${m.torch} on ${m.device}, bitsandbytes ${m.bitsandbytes ?? 'absent'}, peft ${m.peft ?? 'absent (LoRA written out as PEFT\'s lora.Linear)'}, torch max reserved ${m.peak_mb?.toFixed(0) ?? '-'} MiB`;
        rows.push({ who: `PyTorch ${what}`, tokensPerS: m.tokens_per_s, stepS: m.step_s, peakRssMb: r.rssMb, peakGpuMb: peakMb, note, peer: what });
      } catch (e) {
        console.log(`PyTorch ${what} failed or absent: ${(e as Error).message.split('\n').filter(Boolean).slice(-3).join(' | ')}`);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log('\nwho | tokens/s | step s | peak GPU MiB | peak RSS MB | note');
  for (const r of rows) console.log(`${r.who} | ${r.tokensPerS.toFixed(0)} | ${r.stepS.toFixed(3)} | ${r.peakGpuMb?.toFixed(0) ?? '-'} | ${r.peakRssMb.toFixed(0)} | ${r.note ?? ''}`);
  const out = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(out, { recursive: true });
  const tag = arg('tag', '');
  // The dense GEMMs: libcublasLt where it loaded (the children inherit PEFTKIT_CUBLASLT), else ours.
  const gemm = device === 'cuda' ? runtimeInfo().cublasLt ?? 'own kernels' : 'cpu';
  console.log(`GEMM: ${gemm}`);
  const file = `train-${device}-${shape}${tag ? `-${tag}` : ''}.json`;
  fs.writeFileSync(path.join(out, file), JSON.stringify({ device, date: new Date().toISOString(), shape, tag, gemm, B, T, steps, rows }, null, 2));
}

function main(): void {
  const device = arg('device', '');
  if (device === 'cuda' || device === 'cpu') return deviceMain(device);
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
