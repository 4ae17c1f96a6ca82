/**
 * GEMM GFLOP/s at training shapes: M = 1024 tokens against the (in, out) sizes of SmolLM2-135M
 * (576, 1536) and of a 1B-class Llama (2048, 5632), both ways round, and 2048³; f32 and bf16;
 * the three training layouts (X·Wᵀ forward, dY·W input gradient, dYᵀ·X weight gradient).
 * Beside each: PyTorch's matmul on the same shape and dtype in the same run
 * (bench/peers/torch_matmul.py), and the machine's measured f32 FMA ceiling for the % of peak.
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

function medianMs(fn: () => void): number {
  fn();
  const times: number[] = [];
  const start = process.hrtime.bigint();
  const elapsed = () => Number(process.hrtime.bigint() - start) / 1e9;
  while (times.length < 3 || (elapsed() < BUDGET_S && times.length < 50)) {
    const t = process.hrtime.bigint();
    fn();
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  times.sort((x, y) => x - y);
  return times[Math.floor(times.length / 2)];
}

function ours(c: Case): number {
  const rnd = (n: number) => Float32Array.from({ length: n }, () => Math.random() - 0.5);
  const A = Tensor.from(rnd(c.M * c.K), c.transA ? [c.K, c.M] : [c.M, c.K], { dtype: c.a });
  const B = Tensor.from(rnd(c.K * c.N), c.transB ? [c.N, c.K] : [c.K, c.N], { dtype: c.b });
  const C = Tensor.empty([c.M, c.N], { dtype: c.c });
  const ms = medianMs(() => ops.gemm(C, A, B, { transA: c.transA, transB: c.transB }));
  for (const t of [A, B, C]) t.dispose();
  return ms;
}

/** PyTorch's times for the cases that have a peer, or the reason there are none. */
function torchTimes(list: Case[], threads: number): { ms: Array<number | undefined>; note?: string } {
  const script = path.join(ROOT, 'bench', 'peers', 'torch_matmul.py');
  const withPeer = list.filter((c) => c.peer);
  const input = JSON.stringify(withPeer.map((c) => ({
    M: c.M, N: c.N, K: c.K, transA: c.transA, transB: c.transB, dtype: c.peer, budget_s: BUDGET_S,
  })));
  // The machine's OPENBLAS_CORETYPE (if any) is for other programs: let OpenBLAS pick its kernels.
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  const r = spawnSync('/usr/bin/python3', [script, String(threads)], { input, env, encoding: 'utf8', maxBuffer: 1 << 20 });
  if (r.status !== 0) return { ms: list.map(() => undefined), note: `PyTorch peer failed: ${(r.stderr || String(r.error)).trim().split('\n').pop()}` };
  const got = JSON.parse(r.stdout) as Array<{ ms: number }>;
  let i = 0;
  return { ms: list.map((c) => (c.peer ? got[i++].ms : undefined)) };
}

/** Runs an FMA-ceiling program (compiled here, -march=native) on `threads` threads. */
function ceiling(src: string, threads: number): number | undefined {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-fma-'));
  try {
    const exe = path.join(dir, 'fma');
    execFileSync('cc', ['-O2', '-march=native', '-fopenmp', src, '-o', exe], { stdio: 'pipe' });
    const out = execFileSync(exe, { env: { ...process.env, OMP_NUM_THREADS: String(threads) }, encoding: 'utf8' });
    const m = /ceiling:\s*([\d.]+)/.exec(out);
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
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
  // The ceiling is a maximum: noise from other processes only lowers it, so keep the best of
  // a reading before and one after the GEMMs.
  const peak0 = ceiling(ownSrc, threads);
  const shared = sharedSrc ? ceiling(sharedSrc, threads) : undefined;

  const list = cases();
  const rows: BenchRow[] = [];
  const mine = list.map((c) => ours(c));
  const torch = torchTimes(list, threads);
  const peak1 = ceiling(ownSrc, threads);
  const peak = Math.max(peak0 ?? 0, peak1 ?? 0) || undefined;

  list.forEach((c, i) => {
    const flop = 2 * c.M * c.N * c.K;
    const gflops = flop / mine[i] / 1e6;
    const notes: string[] = [];
    if (peak) notes.push(`${((100 * gflops) / peak).toFixed(0)}% of FMA peak`);
    const pms = torch.ms[i];
    if (pms !== undefined) notes.push(`${(pms / mine[i]).toFixed(2)}× PyTorch`);
    if (c.c === 'bf16') notes.push('bf16 C');
    rows.push({
      kernel: c.kernel,
      shape: `M=${c.M} N=${c.N} K=${c.K}`,
      ms: mine[i],
      gflops,
      peer: pms !== undefined ? { name: `torch ${c.peer} matmul`, ms: pms, gflops: flop / pms / 1e6 } : undefined,
      note: notes.join('; '),
    });
  });
  rows.push({
    kernel: 'f32 FMA ceiling',
    shape: `${threads} threads`,
    ms: 0,
    gflops: peak,
    note:
      (peak ? `bench/fma_ceiling.c, best of ${peak0?.toFixed(0)} and ${peak1?.toFixed(0)} GFLOP/s (before, after)` : 'could not compile bench/fma_ceiling.c') +
      (shared !== undefined ? `; ../shared/bench/fma_peak.c reads ${shared.toFixed(0)} GFLOP/s (not used: its identically seeded chains can be merged by the compiler into one)` : '; ../shared/bench/fma_peak.c absent') +
      (torch.note ? `; ${torch.note}` : ''),
  });
  return rows;
}
