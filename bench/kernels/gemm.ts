/**
 * GEMM GFLOP/s at training shapes: M = 1024 tokens against the (in, out) sizes of SmolLM2-135M
 * (576, 1536) and of a 1B-class Llama (2048, 5632), both ways round, and 2048³; f32 and bf16;
 * the three training layouts (X·Wᵀ forward, dY·W input gradient, dYᵀ·X weight gradient).
 * Beside each: PyTorch's matmul on the same shape and dtype in the same run
 * (bench/peers/torch_matmul.py), and the machine's measured f32 FMA ceiling for the % of peak.
 *
 * On a shared machine wall time also counts the time our threads wait for a core, so each row
 * also reports efficiency by CPU time: flops per CPU-second (ours and PyTorch's, measured the
 * same way) against the per-core ceiling by thread CPU time.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Tensor, ops, runtimeInfo } from '../../src/index';
import type { BenchRow } from './types';

type DT = 'f32' | 'bf16';

interface Case {
  kernel: string;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  a: DT;
  b: DT;
  c: DT;
  /** the dtype PyTorch runs it in; none when it has no such product (mixed operands) */
  peer?: DT;
}

const ROOT = path.join(__dirname, '..', '..', '..');
const BUDGET_S = 1.0; // time per measurement, at least 3 calls

/** The three training layouts of a Linear layer W [out, in] with X [M, in], as GEMM shapes. */
function layouts(M: number, inF: number, outF: number, dt: DT): Case[] {
  const base = { a: dt, b: dt, c: dt, peer: dt };
  return [
    { kernel: `gemm ${dt} X·Wᵀ`, M, N: outF, K: inF, transA: false, transB: true, ...base },
    { kernel: `gemm ${dt} dY·W`, M, N: inF, K: outF, transA: false, transB: false, ...base },
    { kernel: `gemm ${dt} dYᵀ·X`, M: outF, N: inF, K: M, transA: true, transB: false, ...base },
  ];
}

function cases(): Case[] {
  const M = 1024;
  const list: Case[] = [];
  for (const dt of ['f32', 'bf16'] as const) {
    for (const [inF, outF] of [[576, 1536], [1536, 576], [2048, 5632], [5632, 2048]])
      list.push(layouts(M, inF, outF, dt)[0]);
    list.push(...layouts(2048, 2048, 2048, dt).slice(0, 1));
    list.push(...layouts(M, 2048, 5632, dt).slice(1)); // the backward layouts at the big shape
  }
  // bf16 weights under f32 activations (a frozen bf16 base): no PyTorch twin.
  list.push({ kernel: 'gemm f32·bf16 X·Wᵀ', M, N: 5632, K: 2048, transA: false, transB: true, a: 'f32', b: 'bf16', c: 'f32' });
  return list;
}

interface Timing {
  ms: number; // median wall time per call
  cpuMs: number; // median process CPU time per call (all threads, spinning included)
}

function measure(fn: () => void): Timing {
  fn();
  const wall: number[] = [], cpu: number[] = [];
  const start = process.hrtime.bigint();
  const elapsed = () => Number(process.hrtime.bigint() - start) / 1e9;
  while (wall.length < 3 || (elapsed() < BUDGET_S && wall.length < 50)) {
    const t = process.hrtime.bigint(), c = process.cpuUsage();
    fn();
    const dc = process.cpuUsage(c);
    wall.push(Number(process.hrtime.bigint() - t) / 1e6);
    cpu.push((dc.user + dc.system) / 1e3);
  }
  const median = (x: number[]) => x.sort((a, b) => a - b)[Math.floor(x.length / 2)];
  return { ms: median(wall), cpuMs: median(cpu) };
}

function ours(c: Case): Timing {
  const rnd = (n: number) => Float32Array.from({ length: n }, () => Math.random() - 0.5);
  const A = Tensor.from(rnd(c.M * c.K), c.transA ? [c.K, c.M] : [c.M, c.K], { dtype: c.a });
  const B = Tensor.from(rnd(c.K * c.N), c.transB ? [c.N, c.K] : [c.K, c.N], { dtype: c.b });
  const C = Tensor.empty([c.M, c.N], { dtype: c.c });
  const t = measure(() => ops.gemm(C, A, B, { transA: c.transA, transB: c.transB }));
  for (const x of [A, B, C]) x.dispose();
  return t;
}

/** PyTorch's times for the cases that have a peer, or the reason there are none. */
function torchTimes(list: Case[], threads: number): { t: Array<Timing | undefined>; note?: string } {
  const script = path.join(ROOT, 'bench', 'peers', 'torch_matmul.py');
  const withPeer = list.filter((c) => c.peer);
  const input = JSON.stringify(withPeer.map((c) => ({
    M: c.M, N: c.N, K: c.K, transA: c.transA, transB: c.transB, dtype: c.peer, budget_s: BUDGET_S,
  })));
  // The machine's OPENBLAS_CORETYPE (if any) is for other programs: let OpenBLAS pick its kernels.
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  const r = spawnSync('/usr/bin/python3', [script, String(threads)], { input, env, encoding: 'utf8', maxBuffer: 1 << 20 });
  if (r.status !== 0) return { t: list.map(() => undefined), note: `PyTorch peer failed: ${(r.stderr || String(r.error)).trim().split('\n').pop()}` };
  const got = JSON.parse(r.stdout) as Array<{ ms: number; cpu_ms: number }>;
  let i = 0;
  return { t: list.map((c) => (c.peer ? { ms: got[i].ms, cpuMs: got[i++].cpu_ms } : undefined)) };
}

interface Ceiling {
  wall?: number; // GFLOP/s of all threads together
  perCore?: number; // GFLOP/s of one core, by thread CPU time
}

/** Runs an FMA-ceiling program (compiled here, -march=native) on `threads` threads. */
function ceiling(src: string, threads: number): Ceiling {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-fma-'));
  try {
    const exe = path.join(dir, 'fma');
    execFileSync('cc', ['-O2', '-march=native', '-fopenmp', src, '-o', exe], { stdio: 'pipe' });
    const out = execFileSync(exe, { env: { ...process.env, OMP_NUM_THREADS: String(threads) }, encoding: 'utf8' });
    const wall = /^ceiling:\s*([\d.]+)/m.exec(out), cpu = /^cpu ceiling:\s*([\d.]+)/m.exec(out);
    return { wall: wall ? Number(wall[1]) : undefined, perCore: cpu ? Number(cpu[1]) : undefined };
  } catch {
    return {};
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function run(): BenchRow[] {
  const threads = runtimeInfo().threads;
  const ownSrc = path.join(ROOT, 'bench', 'fma_ceiling.c');
  // ../shared from the main checkout; ../../shared from a worktree under it.
  const sharedSrc = [path.join(ROOT, '..', 'shared'), path.join(ROOT, '..', '..', 'shared')]
    .map((d) => path.join(d, 'bench', 'fma_peak.c'))
    .find((f) => fs.existsSync(f));
  // A ceiling is a maximum: other processes only lower it, so keep the best of a reading
  // before the GEMMs and one after.
  const c0 = ceiling(ownSrc, threads);
  const shared = sharedSrc ? ceiling(sharedSrc, threads).wall : undefined;

  const list = cases();
  const mine = list.map((c) => ours(c));
  const torch = torchTimes(list, threads);
  const c1 = ceiling(ownSrc, threads);
  const peak = Math.max(c0.wall ?? 0, c1.wall ?? 0) || undefined;
  const perCore = Math.max(c0.perCore ?? 0, c1.perCore ?? 0) || undefined;

  const rows: BenchRow[] = list.map((c, i) => {
    const flop = 2 * c.M * c.N * c.K;
    const gflops = flop / mine[i].ms / 1e6;
    const pt = torch.t[i];
    const notes: string[] = [];
    if (peak) notes.push(`${((100 * gflops) / peak).toFixed(0)}% of FMA peak`);
    if (pt) notes.push(`${(pt.ms / mine[i].ms).toFixed(2)}× PyTorch`);
    if (perCore) {
      const eff = (t: Timing) => `${((100 * flop) / (t.cpuMs * 1e6) / perCore).toFixed(0)}%`;
      notes.push(`by CPU time ${eff(mine[i])} of peak${pt ? ` (PyTorch ${eff(pt)})` : ''}`);
    }
    if (c.c === 'bf16') notes.push('bf16 C');
    return {
      kernel: c.kernel,
      shape: `M=${c.M} N=${c.N} K=${c.K}`,
      ms: mine[i].ms,
      gflops,
      peer: pt ? { name: `torch ${c.peer} matmul`, ms: pt.ms, gflops: flop / pt.ms / 1e6 } : undefined,
      note: notes.join('; '),
    };
  });
  const fmt = (x?: number) => (x === undefined ? '?' : x.toFixed(0));
  rows.push({
    kernel: 'f32 FMA ceiling',
    shape: `${threads} threads`,
    ms: 0,
    gflops: peak,
    note:
      `bench/fma_ceiling.c: wall ${fmt(c0.wall)} / ${fmt(c1.wall)} GFLOP/s (before / after), ` +
      `per core by CPU time ${fmt(perCore)}` +
      (shared !== undefined
        ? `; ../shared/bench/fma_peak.c reads ${shared.toFixed(0)} GFLOP/s, not used: the compiler merges its identically seeded chains into one`
        : '; ../shared/bench/fma_peak.c absent') +
      (torch.note ? `; ${torch.note}` : ''),
  });
  return rows;
}
