/**
 * Transformer ops at the sizes of one Llama-style layer over a micro-batch (tokens × hidden,
 * tokens × MLP width). These kernels are memory-bound or close to it, so the note gives the
 * bytes each call moves per second (GB/s); gflops is left empty.
 */
import { Tensor, ops } from '../../src/index';
import type { BenchRow } from './types';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function time(fn: () => void, reps = 7): number {
  fn();
  const ms: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    fn();
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return median(ms);
}

function rand(n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.random() * 4 - 2;
  return a;
}

export function run(): BenchRow[] {
  const N = Number(process.env.BENCH_TOKENS ?? 512), C = 4096, F = 11008, H = 32, D = 128, V = 32000;
  const rows: BenchRow[] = [];
  const row = (kernel: string, shape: string, bytes: number, fn: () => void) => {
    const ms = time(fn);
    rows.push({ kernel, shape, ms, note: `${(bytes / ms / 1e6).toFixed(1)} GB/s` });
  };
  const x = Tensor.from(rand(N * C), [N, C]), w = Tensor.from(rand(C), [C]), out = Tensor.empty([N, C]);
  const dx = Tensor.empty([N, C]), dw = Tensor.zeros([C]), rstd = Tensor.empty([N]), mean = Tensor.empty([N]);
  const nc = `N=${N} C=${C}`, b = 4 * N * C;
  row('rmsnorm fwd', nc, 2 * b, () => ops.rmsnormForward(out, rstd, x, w));
  row('rmsnorm bwd (dx, dw)', nc, 5 * b, () => ops.rmsnormBackward(dx, dw, out, x, w, rstd));
  row('layernorm fwd', nc, 2 * b, () => ops.layernormForward(out, mean, rstd, x, w, w));
  row('layernorm bwd (dx, dw, db)', nc, 5 * b, () => ops.layernormBackward(dx, dw, dw, out, x, w, mean, rstd));
  row('add', nc, 3 * b, () => ops.add(out, x, dx));
  const xb = Tensor.empty([N, C], { dtype: 'bf16' });
  row('cast f32->bf16', nc, 1.5 * b, () => ops.cast(xb, x));

  const pos = Tensor.from(Int32Array.from({ length: N }, (_, i) => i), [N]);
  const cos = Tensor.empty([N, D / 2]), sin = Tensor.empty([N, D / 2]);
  row('rope table', `T=${N} D=${D}`, 2 * 4 * N * (D / 2), () => ops.ropeTable(cos, sin, pos, { theta: 500000 }));
  const q = Tensor.from(rand(N * H * D), [1, N, H, D]);
  const q2 = Tensor.empty([1, N, H, D]);
  row('rope fwd (in place)', `T=${N} H=${H} D=${D}`, 2 * 4 * N * H * D, () => ops.ropeForward(q, q, cos, sin));
  row('rope bwd', `T=${N} H=${H} D=${D}`, 2 * 4 * N * H * D, () => ops.ropeBackward(q2, q, cos, sin));

  const g = Tensor.from(rand(N * F), [N, F]), u = Tensor.from(rand(N * F), [N, F]), h = Tensor.empty([N, F]);
  const dg = Tensor.empty([N, F]), du = Tensor.empty([N, F]);
  const nf = `N=${N} F=${F}`, bf = 4 * N * F;
  row('silu fwd', nf, 2 * bf, () => ops.siluForward(h, g));
  row('gelu tanh fwd', nf, 2 * bf, () => ops.geluForward(h, g, { approximate: 'tanh' }));
  row('gelu erf fwd', nf, 2 * bf, () => ops.geluForward(h, g));
  row('swiglu fwd', nf, 3 * bf, () => ops.swigluForward(h, g, u));
  row('swiglu bwd', nf, 5 * bf, () => ops.swigluBackward(dg, du, h, g, u));
  row('dropout fwd p=0.1', nf, 2 * bf, () => ops.dropoutForward(h, g, { p: 0.1, seed: 1 }));

  const ids = Tensor.from(Int32Array.from({ length: N }, () => Math.floor(Math.random() * V)), [N]);
  const table = Tensor.from(rand(V * 256), [V, 256]), e = Tensor.empty([N, 256]);
  row('embedding fwd', `N=${N} V=${V} C=256`, 2 * 4 * N * 256, () => ops.embeddingForward(e, ids, table));
  row('embedding bwd', `N=${N} V=${V} C=256`, 3 * 4 * N * 256, () => ops.embeddingBackward(table, e, ids));
  return rows;
}
