/**
 * `npm run bench:methods`: one training step of each method (lora, dora, ia3, ln, bitfit, diff,
 * full, adapter, prompt, p-tuning, prefix) on the SmolLM2-135M shape (random init, batch 4 × 256, f32), beside the same method in
 * plain PyTorch (bench/peers/torch_methods_ref.py) in the same run. Each side runs in its own
 * child process under GNU time, so peak RSS is that run's alone; step time is the median of the
 * timed steps after 2 warm-up steps.
 *   npm run bench:methods [-- --steps 3 --shape smol135|tiny --runs 1 --methods lora,dora
 *                             --wait-load 2.5 --wait-max-s 1200 --no-peer --peer-blas DIR]
 * --runs N repeats the whole set N times (figures are the medians over runs); --wait-load waits
 * before each method's pair of runs until the 1-minute load average is below the value (at most
 * --wait-max-s each time; the loads seen are in the JSON).
 * The soft prompts (20 virtual tokens) are also given against `frozen`, the same batch's forward
 * and backward through the frozen base down to the embeddings, in the same run.
 * Full fine-tuning is also given as a fraction of the machine's f32 FMA peak (bench/fma_ceiling.c,
 * measured before and after, as bench:kernels does). Writes bench/results/methods.json.
 * Debian's PyTorch calls whatever libblas.so.3 resolves to; where that is the reference BLAS
 * (single-threaded, ~25× slower on a 1024×1536×576 product here) the peer is not what a user would run: install
 * libopenblas0-pthread, or give --peer-blas DIR (a folder holding OpenBLAS's libblas.so.3, put on
 * the peer's LD_LIBRARY_PATH only). The peer reports the library it loaded.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runtimeInfo } from '../src/index';
import { ceiling, Ceiling } from './kernels/gemm';
import { writeBenchModel } from './train_child';
import { arg } from './args';

const ROOT = path.join(__dirname, '..', '..');
/** The methods the PyTorch peer writes out, and `frozen`: the soft prompts' yardstick (methods_child.ts). */
const METHODS = ['lora', 'dora', 'ia3', 'ln', 'bitfit', 'diff', 'full', 'adapter', 'prompt', 'p-tuning', 'prefix', 'frozen'];
/** The methods whose cost is compared with the frozen base's forward + backward (issue: ≤ 1.15×). */
const SOFT_PROMPTS = ['prompt', 'p-tuning', 'prefix'];

interface Side {
  trainable: number;
  /** The peer's BLAS library. */
  blas?: string;
  tokensPerS: number;
  stepS: number;
  peakRssMb: number;
  loss?: number;
}

interface Measured {
  run: number;
  method: string;
  load1: [number, number]; // 1-minute load average before / after the pair
  peftkit: Side;
  torch?: Side;
}

/** Runs a command under GNU time for its peak RSS. */
function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): { out: string; rssMb: number } {
  const r = spawnSync('/usr/bin/time', ['-f', 'PEAK_RSS_KB=%M', cmd, ...args], { encoding: 'utf8', env, maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed:\n${r.stderr}`);
  const kb = Number(/PEAK_RSS_KB=(\d+)/.exec(r.stderr)?.[1] ?? NaN);
  return { out: r.stdout, rssMb: kb / 1024 };
}

const sleep = (s: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, s * 1000);

/** Waits until the 1-minute load average is below `max`, at most `maxS` seconds; returns what it saw. */
function waitForLoad(max: number, maxS: number): { waitedS: number; load1: number } {
  const t0 = Date.now();
  while (os.loadavg()[0] >= max && (Date.now() - t0) / 1000 < maxS) {
    console.log(`  load average ${os.loadavg()[0].toFixed(2)} >= ${max}: waiting`);
    sleep(30);
  }
  return { waitedS: (Date.now() - t0) / 1000, load1: os.loadavg()[0] };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function main(): void {
  const shape = arg('shape', 'smol135');
  const steps = Number(arg('steps', '3'));
  const runs = Number(arg('runs', '1'));
  const methods = arg('methods', METHODS.join(',')).split(',');
  const waitLoad = Number(arg('wait-load', '0'));
  const waitMaxS = Number(arg('wait-max-s', '1200'));
  const withPeer = !process.argv.includes('--no-peer');
  const [B, T] = [4, 256];
  const threads = runtimeInfo().threads;
  const machine = `${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} cores, ${runtimeInfo().cpuIsa}`;
  console.log(`machine: ${machine}\nshape: ${shape}, f32, batch ${B}x${T}, ${steps} timed steps after 2 warm-up, ${runs} run(s); methods ${methods.join(', ')}`);
  const fmaSrc = path.join(ROOT, 'bench', 'fma_ceiling.c');
  const c0: Ceiling = ceiling(fmaSrc, threads);
  const peer = path.join(ROOT, 'bench', 'peers', 'torch_methods_ref.py');
  const havePeer = withPeer && fs.existsSync('/usr/bin/python3');
  if (withPeer && !havePeer) console.log('(no /usr/bin/python3: PyTorch columns left empty; apt-get install -y python3-torch)');
  const peerEnv = { ...process.env };
  delete peerEnv.OPENBLAS_CORETYPE; // slows a current OpenBLAS (shared/bench/README.md)
  delete peerEnv.OPENBLAS_L2_SIZE;
  const peerBlas = arg('peer-blas', '');
  if (peerBlas) peerEnv.LD_LIBRARY_PATH = [peerBlas, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bench-methods-'));
  const measured: Measured[] = [];
  const waits: Array<{ run: number; method: string; waitedS: number; load1: number }> = [];
  let cfg: Record<string, number>;
  try {
    writeBenchModel(path.join(dir, shape), shape);
    cfg = JSON.parse(fs.readFileSync(path.join(dir, shape, 'config.json'), 'utf8')) as Record<string, number>;
    const child = path.join(__dirname, 'methods_child.js');
    for (let run = 1; run <= runs; run++) {
      console.log(`run ${run} (1-minute load average ${os.loadavg()[0].toFixed(2)})`);
      for (const method of methods) {
        if (waitLoad > 0) waits.push({ run, method, ...waitForLoad(waitLoad, waitMaxS) });
        const before = os.loadavg()[0];
        const r = timed(process.execPath, [child, dir, shape, method, String(steps), String(B), String(T)]);
        const m = JSON.parse(r.out.trim().split('\n').pop()!) as { trainable: number; tokensPerS: number; stepS: number; loss: number };
        const row: Measured = { run, method, load1: [before, 0], peftkit: { trainable: m.trainable, tokensPerS: m.tokensPerS, stepS: m.stepS, peakRssMb: r.rssMb, loss: m.loss } };
        if (havePeer) {
          const p = timed('/usr/bin/python3', [peer, method, shape, String(B), String(T), String(steps)], peerEnv);
          const num = (re: RegExp) => Number(re.exec(p.out)?.[1]);
          row.torch = {
            trainable: num(/trainable=(\d+)/), tokensPerS: num(/tokens_per_s=([\d.]+)/), stepS: num(/step_median=([\d.]+)s/),
            peakRssMb: p.rssMb, loss: num(/ loss=([\d.]+)/), blas: /blas=(\S+)/.exec(p.out)?.[1],
          };
          if (/libblas\.so\.3\.\d/.test(row.torch.blas ?? '') && !/openblas|blis|mkl/i.test(row.torch.blas ?? '')) {
            console.log(`  (warning: the peer runs on the reference BLAS ${row.torch.blas}: not a fair peer; see --peer-blas)`);
          }
        }
        row.load1[1] = os.loadavg()[0];
        measured.push(row);
        const t = row.torch;
        console.log(`  ${method}: peftkit ${m.tokensPerS.toFixed(1)} tok/s, ${m.stepS.toFixed(3)} s, ${r.rssMb.toFixed(0)} MB` +
          (t ? `; PyTorch ${t.tokensPerS.toFixed(1)} tok/s, ${t.stepS.toFixed(3)} s, ${t.peakRssMb.toFixed(0)} MB` : '') +
          ` (load ${row.load1[0].toFixed(2)} → ${row.load1[1].toFixed(2)})`);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const c1: Ceiling = ceiling(fmaSrc, threads);
  // As bench:kernels: a ceiling is a maximum that other processes only lower, so the peak is the
  // best of the wall-clock readings before and after and threads × the per-core ceiling by CPU time.
  const perCore = Math.max(c0.perCore ?? 0, c1.perCore ?? 0) || undefined;
  const peak = Math.max(c0.wall ?? 0, c1.wall ?? 0, threads * (perCore ?? 0)) || undefined;

  // Medians over runs, per method and side.
  const med = (method: string, side: 'peftkit' | 'torch', key: keyof Side) => {
    const xs = measured.filter((m) => m.method === method && m[side]).map((m) => m[side]![key] as number);
    return xs.length ? median(xs) : NaN;
  };
  const rows = methods.map((method) => {
    const o = { trainable: med(method, 'peftkit', 'trainable'), tokensPerS: med(method, 'peftkit', 'tokensPerS'), stepS: med(method, 'peftkit', 'stepS'), peakRssMb: med(method, 'peftkit', 'peakRssMb') };
    const t = havePeer ? { trainable: med(method, 'torch', 'trainable'), tokensPerS: med(method, 'torch', 'tokensPerS'), stepS: med(method, 'torch', 'stepS'), peakRssMb: med(method, 'torch', 'peakRssMb') } : undefined;
    return { method, peftkit: o, torch: t, tokensRatio: t ? o.tokensPerS / t.tokensPerS : undefined, rssRatio: t ? o.peakRssMb / t.peakRssMb : undefined };
  });

  const f = (x: number | undefined, d = 0) => (x === undefined || Number.isNaN(x) ? '—' : x.toFixed(d));
  console.log(`\nmedians over ${runs} run(s)`);
  console.log('method | trainable | peftkit tok/s | step s | peak RSS MB | PyTorch tok/s | step s | peak RSS MB | tok/s ratio | RSS ratio');
  for (const r of rows) {
    const tr = r.torch && r.torch.trainable !== r.peftkit.trainable ? `${r.peftkit.trainable} (PyTorch ${r.torch.trainable})` : String(r.peftkit.trainable);
    console.log(`${r.method} | ${tr} | ${f(r.peftkit.tokensPerS, 1)} | ${f(r.peftkit.stepS, 3)} | ${f(r.peftkit.peakRssMb)} | ` +
      `${f(r.torch?.tokensPerS, 1)} | ${f(r.torch?.stepS, 3)} | ${f(r.torch?.peakRssMb)} | ${f(r.tokensRatio, 2)}× | ${f(r.rssRatio, 2)}×`);
  }

  // DoRA against LoRA: the step-time ratio, per run and the median.
  const stepOf = (run: number, method: string, side: 'peftkit' | 'torch') => measured.find((m) => m.run === run && m.method === method)?.[side]?.stepS;
  const doraRatio = (side: 'peftkit' | 'torch') => {
    const xs: number[] = [];
    for (let run = 1; run <= runs; run++) {
      const d = stepOf(run, 'dora', side), l = stepOf(run, 'lora', side);
      if (d !== undefined && l !== undefined) xs.push(d / l);
    }
    return xs.length ? { perRun: xs, median: median(xs) } : undefined;
  };
  const dora = { peftkit: doraRatio('peftkit'), torch: havePeer ? doraRatio('torch') : undefined };
  // Soft prompts against the frozen base's forward + backward of the same batch, per run and the median.
  const overFrozen = (method: string, side: 'peftkit' | 'torch') => {
    const xs: number[] = [];
    for (let run = 1; run <= runs; run++) {
      const m = stepOf(run, method, side), f = stepOf(run, 'frozen', side);
      if (m !== undefined && f !== undefined) xs.push(m / f);
    }
    return xs.length ? { perRun: xs, median: median(xs) } : undefined;
  };
  const softPrompts = Object.fromEntries(SOFT_PROMPTS.filter((m) => methods.includes(m) && methods.includes('frozen'))
    .map((m) => [m, { peftkit: overFrozen(m, 'peftkit'), torch: havePeer ? overFrozen(m, 'torch') : undefined }]));
  for (const [m, r] of Object.entries(softPrompts)) {
    if (r.peftkit) console.log(`${m} / frozen base fwd+bwd step time: peftkit ${r.peftkit.perRun.map((x) => x.toFixed(3)).join(' / ')} (median ${r.peftkit.median.toFixed(3)}×)` +
      (r.torch ? `; PyTorch median ${r.torch.median.toFixed(3)}×` : ''));
  }
  if (dora.peftkit) console.log(`DoRA / LoRA step time: peftkit ${dora.peftkit.perRun.map((x) => x.toFixed(2)).join(' / ')} (median ${dora.peftkit.median.toFixed(2)}×)` +
    (dora.torch ? `; PyTorch ${dora.torch.perRun.map((x) => x.toFixed(2)).join(' / ')} (median ${dora.torch.median.toFixed(2)}×)` : ''));

  // Full fine-tuning against the FMA peak. FLOPs of a step: 6 · (non-embedding Linear params +
  // the tied LM head's vocab × hidden) · tokens (forward 2, input gradient 2, weight gradient 2
  // per weight and token) + 12 · L · T² · hidden · B for attention (QKᵀ and P·V, 2·2·T²·hidden
  // per layer and sequence forward, twice that backward, counted over the full T×T square).
  const [L, d, ff, V] = [cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size];
  const kvDim = (d / cfg.num_attention_heads) * cfg.num_key_value_heads;
  const linearParams = L * (2 * d * d + 2 * d * kvDim + 3 * d * ff);
  const headParams = V * d;
  const attnFlops = 12 * L * T * T * d * B;
  const fullFlops = 6 * (linearParams + headParams) * B * T + attnFlops;
  const full = rows.find((r) => r.method === 'full');
  const fullFt = full && peak ? {
    formula: '6·(non-embedding Linear params + vocab·hidden)·B·T + 12·L·T²·hidden·B',
    linearParams, headParams, flopsPerStep: fullFlops, attentionFlops: attnFlops, peakGflops: peak,
    peftkitGflops: fullFlops / full.peftkit.stepS / 1e9, peftkitFractionOfPeak: fullFlops / full.peftkit.stepS / 1e9 / peak,
    torchGflops: full.torch ? fullFlops / full.torch.stepS / 1e9 : undefined,
    torchFractionOfPeak: full.torch ? fullFlops / full.torch.stepS / 1e9 / peak : undefined,
    // With the causal half of attention only (what a causal kernel needs to do):
    peftkitFractionOfPeakCausal: (fullFlops - attnFlops / 2) / full.peftkit.stepS / 1e9 / peak,
  } : undefined;
  const fmt = (x?: number) => (x === undefined ? '?' : x.toFixed(0));
  console.log(`f32 FMA peak ${fmt(peak)} GFLOP/s (bench/fma_ceiling.c on ${threads} threads: ${fmt(c0.wall)} / ${fmt(c1.wall)} before / after, ${fmt(perCore)} per core by thread CPU time)`);
  if (fullFt) {
    console.log(`full FT: ${(fullFlops / 1e9).toFixed(0)} GFLOP per step (${fullFt.formula}; attention ${(attnFlops / 1e9).toFixed(0)}): ` +
      `peftkit ${fullFt.peftkitGflops.toFixed(0)} GFLOP/s = ${(100 * fullFt.peftkitFractionOfPeak).toFixed(0)}% of peak` +
      (fullFt.torchGflops ? `, PyTorch ${fullFt.torchGflops.toFixed(0)} GFLOP/s = ${(100 * fullFt.torchFractionOfPeak!).toFixed(0)}%` : ''));
  }

  const out = path.join(ROOT, 'bench', 'results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'methods.json'), JSON.stringify({
    machine, date: new Date().toISOString(), shape, B, T, steps, runs, threads, peerBlas: measured.find((m) => m.torch)?.torch?.blas,
    ceiling: { before: c0, after: c1, peakGflops: peak }, waits, rows, doraOverLora: dora, softPromptsOverFrozen: softPrompts, fullFt, measured,
  }, null, 2));
  console.log(`wrote ${path.join(out, 'methods.json')}`);
}

main();
