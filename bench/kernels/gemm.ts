/**
 * GEMM GFLOP/s at training shapes: M = 1024 tokens against the (in, out) sizes of SmolLM2-135M
 * (576, 1536) and of a 1B-class Llama (2048, 5632), both ways round, and 2048³; f32 and bf16;
 * the three training layouts (X·Wᵀ forward, dY·W input gradient, dYᵀ·X weight gradient).
 * Beside each: PyTorch's matmul on the same shape and dtype in the same run
 * (bench/peers/torch_matmul.py), and the machine's measured f32 FMA ceiling for the % of peak.
 *
 * On a shared machine wall time also counts the time our threads wait for a core, and the load
 * changes by the second: ours and PyTorch's take turns case by case, and each row gives the
 * fastest call beside the median. With one thread (PEFTKIT_NUM_THREADS=1) the rows also give
 * efficiency by CPU time against the per-core ceiling by thread CPU time, for both libraries:
 * that measures the kernels, whatever else the machine runs.
 */
import { ChildProcessWithoutNullStreams, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as readline from 'readline';
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
  /** LoRA rank: the product is gemmSum's X·Wᵀ + s·(X·Aᵀ)·Bᵀ (PyTorch: matmul then addmm_) */
  r?: number;
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
  // The fused LoRA forward, one pass over Y, against PyTorch's two GEMMs.
  const f32 = { a: 'f32', b: 'f32', c: 'f32', peer: 'f32' } as const;
  list.push({ kernel: 'gemmSum f32 X·Wᵀ + s·(XAᵀ)·Bᵀ', M, N: 5632, K: 2048, r: 16, transA: false, transB: true, ...f32 });
  // Skinny LoRA products (rank 16) and one decoding step (M = 1).
  list.push({ kernel: 'gemm f32 X·Aᵀ (r=16)', M, N: 16, K: 2048, transA: false, transB: true, ...f32 });
  list.push({ kernel: 'gemm f32 dA: (dY·B)ᵀ·X', M: 16, N: 2048, K: M, transA: true, transB: false, ...f32 });
  list.push({ kernel: 'gemm f32 dB: dYᵀ·(XAᵀ)', M: 5632, N: 16, K: M, transA: true, transB: false, ...f32 });
  list.push({ kernel: 'gemm f32 x·Wᵀ (M=1)', M: 1, N: 5632, K: 2048, transA: false, transB: true, ...f32 });
  return list;
}

interface Timing {
  ms: number; // median wall time per call
  bestMs: number; // fastest call
  cpuMs: number; // median process CPU time per call
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
  return { ms: median(wall), bestMs: Math.min(...wall), cpuMs: median(cpu) };
}

function ours(c: Case): Timing {
  const rnd = (n: number) => Float32Array.from({ length: n }, () => Math.random() - 0.5);
  const A = Tensor.from(rnd(c.M * c.K), c.transA ? [c.K, c.M] : [c.M, c.K], { dtype: c.a });
  const B = Tensor.from(rnd(c.K * c.N), c.transB ? [c.N, c.K] : [c.K, c.N], { dtype: c.b });
  const C = Tensor.empty([c.M, c.N], { dtype: c.c });
  const made = [A, B, C];
  let t: Timing;
  if (c.r) {
    const XA = Tensor.from(rnd(c.M * c.r), [c.M, c.r]), Bl = Tensor.from(rnd(c.N * c.r), [c.N, c.r]);
    made.push(XA, Bl);
    t = measure(() => ops.gemmSum(C, [{ A, B, transB: true }, { A: XA, B: Bl, transB: true, alpha: 2 }]));
  } else {
    t = measure(() => ops.gemm(C, A, B, { transA: c.transA, transB: c.transB }));
  }
  for (const x of made) x.dispose();
  return t;
}

/** bench/peers/torch_matmul.py, kept running for the whole run: one JSON line per case each way. */
class TorchPeer {
  private readonly proc: ChildProcessWithoutNullStreams;
  private readonly lines: AsyncIterableIterator<string>;
  private stderr = '';

  constructor(threads: number) {
    // The machine's OPENBLAS_CORETYPE (if any) is for other programs: let OpenBLAS pick its kernels.
    const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
    delete env.OPENBLAS_CORETYPE;
    this.proc = spawn('/usr/bin/python3', [path.join(ROOT, 'bench', 'peers', 'torch_matmul.py'), String(threads)], { env });
    this.proc.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.proc.on('error', (e) => (this.stderr += String(e)));
    this.lines = readline.createInterface({ input: this.proc.stdout })[Symbol.asyncIterator]();
  }

  async time(c: Case): Promise<Timing> {
    this.proc.stdin.write(JSON.stringify({
      M: c.M, N: c.N, K: c.K, transA: c.transA, transB: c.transB, dtype: c.peer, r: c.r, budget_s: BUDGET_S,
    }) + '\n');
    const next = await this.lines.next();
    if (next.done) throw new Error(`PyTorch peer exited: ${this.stderr.trim().split('\n').pop() ?? ''}`);
    const r = JSON.parse(next.value) as { ms: number; best_ms: number; cpu_ms: number };
    return { ms: r.ms, bestMs: r.best_ms, cpuMs: r.cpu_ms };
  }

  close(): void {
    this.proc.stdin.end();
  }
}

export interface Ceiling {
  wall?: number; // f32 GFLOP/s of all threads together
  perCore?: number; // f32 GFLOP/s of one core, by thread CPU time
  bf16?: number; // VDPBF16PS GFLOP/s of all threads, where the CPU has it
  bf16PerCore?: number; // the same for one core, by thread CPU time
}

/** Runs an FMA-ceiling program (compiled here, -march=native) on `threads` threads. */
export function ceiling(src: string, threads: number): Ceiling {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-fma-'));
  try {
    const exe = path.join(dir, 'fma');
    execFileSync('cc', ['-O2', '-march=native', '-fopenmp', src, '-o', exe], { stdio: 'pipe' });
    const out = execFileSync(exe, { env: { ...process.env, OMP_NUM_THREADS: String(threads) }, encoding: 'utf8' });
    const num = (re: RegExp) => {
      const m = re.exec(out);
      return m ? Number(m[1]) : undefined;
    };
    return {
      wall: num(/^ceiling:\s*([\d.]+)/m),
      perCore: num(/^cpu ceiling:\s*([\d.]+)/m),
      bf16: num(/^bf16 ceiling:\s*([\d.]+)/m),
      bf16PerCore: num(/^cpu bf16 ceiling:\s*([\d.]+)/m),
    };
  } catch {
    return {};
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export async function run(): Promise<BenchRow[]> {
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
  const peer = new TorchPeer(threads);
  let peerNote: string | undefined;
  // Wait for the peer to have imported torch (seconds of CPU on both cores): until then it would
  // slow the first case of ours (1024×1536×576 read 39% of peak beside it, 72% after).
  const firstPeer = list.find((c) => c.peer);
  if (firstPeer) {
    try {
      await peer.time({ ...firstPeer, M: 16, N: 16, K: 16, r: undefined });
    } catch (e) {
      peerNote = (e as Error).message;
    }
  }
  const mine: Timing[] = [];
  const theirs: Array<Timing | undefined> = [];
  for (const c of list) {
    mine.push(ours(c));
    let t: Timing | undefined;
    if (c.peer && !peerNote) {
      try {
        t = await peer.time(c);
      } catch (e) {
        peerNote = (e as Error).message;
      }
    }
    theirs.push(t);
  }
  peer.close();
  const c1 = ceiling(ownSrc, threads);
  const perCore = Math.max(c0.perCore ?? 0, c1.perCore ?? 0) || undefined;
  const bf16PerCore = Math.max(c0.bf16PerCore ?? 0, c1.bf16PerCore ?? 0) || undefined;
  // Other processes lower a wall-clock reading; threads × the per-core ceiling by CPU time is
  // what the cores do when we have them. The higher of the two is the peak (so % are not flattered).
  const peak = Math.max(c0.wall ?? 0, c1.wall ?? 0, threads * (perCore ?? 0)) || undefined;
  // bf16 × bf16 runs on VDPBF16PS where the CPU has it: its own, twice higher, ceiling.
  const bf16Peak = runtimeInfo().avx512bf16
    ? Math.max(c0.bf16 ?? 0, c1.bf16 ?? 0, threads * (bf16PerCore ?? 0)) || undefined
    : undefined;

  const rows: BenchRow[] = list.map((c, i) => {
    const flop = 2 * c.M * c.N * (c.K + (c.r ?? 0));
    const dot = c.a === 'bf16' && c.b === 'bf16' && bf16Peak !== undefined;
    const top = dot ? bf16Peak : peak;
    const pct = (ms: number) => `${((100 * flop) / (ms * 1e6) / (top ?? NaN)).toFixed(0)}%`;
    const pt = theirs[i];
    const notes: string[] = [];
    if (top) notes.push(`${pct(mine[i].ms)} of ${dot ? 'bf16 dot' : 'f32 FMA'} peak (best call ${pct(mine[i].bestMs)})`);
    if (pt) notes.push(`${(pt.ms / mine[i].ms).toFixed(2)}× PyTorch's speed (best calls ${(pt.bestMs / mine[i].bestMs).toFixed(2)}×)`);
    const core = dot ? bf16PerCore : perCore;
    if (threads === 1 && core) {
      const eff = (t: Timing) => `${((100 * flop) / (t.cpuMs * 1e6) / core).toFixed(0)}%`;
      notes.push(`by CPU time ${eff(mine[i])} of the core's peak${pt ? ` (PyTorch ${eff(pt)})` : ''}`);
    }
    if (c.c === 'bf16') notes.push('bf16 C');
    return {
      kernel: c.kernel,
      shape: `M=${c.M} N=${c.N} K=${c.K}`,
      ms: mine[i].ms,
      gflops: flop / mine[i].ms / 1e6,
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
      `peak ${fmt(peak)}; bench/fma_ceiling.c: ${fmt(c0.wall)} / ${fmt(c1.wall)} GFLOP/s (before / after), ` +
      `${fmt(perCore)} per core by thread CPU time` +
      (bf16Peak ? `; bf16 dot (VDPBF16PS) ceiling ${fmt(bf16Peak)} GFLOP/s, ${fmt(bf16PerCore)} per core by CPU time` : '') +
      (shared !== undefined
        ? `; ../shared/bench/fma_peak.c reads ${shared.toFixed(0)} GFLOP/s, not used: the compiler merges its identically seeded chains into one`
        : '; ../shared/bench/fma_peak.c absent') +
      (peerNote ? `; ${peerNote}` : ''),
  });
  return rows;
}
