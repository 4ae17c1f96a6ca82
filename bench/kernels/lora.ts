/**
 * Fused LoRA linear, forward + backward with the input gradient, against the base GEMMs it
 * rides on (X·Wᵀ forward + dY·W input gradient): the low-rank path should cost at most 15% on
 * top (r/K more work, plus the small r-wide products). SmolLM2-135M projections, batch 4 × 256
 * tokens, r = 16. The peer is PyTorch doing the same LoRA step with autograd.
 * bf16 rows: W stored bf16 and compute 'bf16' (X, dY rounded while packed, VDPBF16PS where the CPU
 * has it; the rank-r products stay f32), against the bf16-compute base and the f32 LoRA; the peer
 * runs the same step under torch.autocast(bfloat16).
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { Tensor, ops, runtimeInfo } from '../../src/index';
import { medianMs, MIN_REPS, MIN_SECONDS } from './_timing';
import type { BenchRow } from './types';

const M = 1024; // batch 4 × 256 tokens
const R = 16;
const SCALE = 2; // lora_alpha 32 / r 16
const SHAPES: Array<[number, number]> = [[576, 576], [576, 1536], [1536, 576]]; // (K, N): q/o, gate/up, down
const BAR = 1.15;

function randomTensor(shape: number[], scale: number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = (Math.random() * 2 - 1) * scale;
  return Tensor.from(data, shape);
}

interface TorchTimes { lora_ms: number; base_ms: number; torch: string }

/** The PyTorch peer in its own process, with this process's thread count; undefined when it cannot run. */
function torchPeer(K: number, N: number, threads: number, dtype: 'f32' | 'bf16' = 'f32'): TorchTimes | undefined {
  const script = path.join(__dirname, '..', '..', '..', 'bench', 'peers', 'torch_lora_linear.py');
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const args = [script, M, K, N, R, threads, MIN_REPS, MIN_SECONDS, dtype].map(String);
  const res = spawnSync('/usr/bin/python3', args, { env, encoding: 'utf8', timeout: 300_000 });
  if (res.status !== 0) {
    console.error(`torch peer failed (K=${K} N=${N}): ${res.error?.message ?? res.stderr.trim().split('\n').pop()}`);
    return undefined;
  }
  return JSON.parse(res.stdout.trim().split('\n').pop()!) as TorchTimes;
}

export function run(): BenchRow[] {
  const threads = runtimeInfo().threads;
  const rows: BenchRow[] = [];
  for (const [K, N] of SHAPES) {
    const X = randomTensor([M, K], 1), W = randomTensor([N, K], 1 / Math.sqrt(K));
    const A = randomTensor([R, K], 1 / Math.sqrt(K)), B = randomTensor([N, R], 1), dY = randomTensor([M, N], 1);
    const Y = Tensor.empty([M, N]), XA = Tensor.empty([M, R]), dX = Tensor.empty([M, K]);
    const dA = Tensor.zeros([R, K]), dB = Tensor.zeros([N, R]);

    const baseMs = medianMs(() => {
      ops.gemm(Y, X, W, { transB: true });
      ops.gemm(dX, dY, W);
    });
    const loraMs = medianMs(() => {
      ops.loraForward(Y, XA, X, W, A, B, { scale: SCALE });
      ops.loraBackward(dX, dA, dB, dY, X, XA, W, A, B, { scale: SCALE });
    });
    const baseFlop = 2 * 2 * M * N * K;
    // + XA, XA·Bᵀ, dY·B, (dY·B)·A, dA, dB: three products of 2·M·r·K flop and three of 2·M·r·N.
    const loraFlop = baseFlop + 6 * M * R * (K + N);
    const torch = torchPeer(K, N, threads);
    const shape = `M=${M} K=${K} N=${N} r=${R}`;
    rows.push({ kernel: 'base gemm f32 X·Wᵀ + dY·W', shape, ms: baseMs, gflops: baseFlop / (baseMs * 1e6),
      peer: torch && { name: `torch ${torch.torch}`, ms: torch.base_ms, gflops: baseFlop / (torch.base_ms * 1e6) } });
    const ratio = loraMs / baseMs;
    rows.push({
      kernel: 'lora f32 fwd+bwd (dX, dA, dB)',
      shape,
      ms: loraMs,
      gflops: loraFlop / (loraMs * 1e6),
      peer: torch && { name: `torch ${torch.torch}`, ms: torch.lora_ms, gflops: loraFlop / (torch.lora_ms * 1e6) },
      note: `${ratio.toFixed(3)}× base (bar ≤ ${BAR}×: ${ratio <= BAR ? 'met' : 'NOT met'})` +
        (torch ? `; torch ${(torch.lora_ms / torch.base_ms).toFixed(2)}× its base` : ''),
    });

    // bf16 compute, W stored bf16 (what --bf16 trains with).
    const Wb = Tensor.empty([N, K], { dtype: 'bf16' });
    ops.cast(Wb, W);
    const compute = 'bf16' as const;
    const baseBf16Ms = medianMs(() => {
      ops.gemm(Y, X, Wb, { transB: true, compute });
      ops.gemm(dX, dY, Wb, { compute });
    });
    const loraBf16Ms = medianMs(() => {
      ops.loraForward(Y, XA, X, Wb, A, B, { scale: SCALE, compute });
      ops.loraBackward(dX, dA, dB, dY, X, XA, Wb, A, B, { scale: SCALE, compute });
    });
    const torchBf16 = torchPeer(K, N, threads, 'bf16');
    rows.push({ kernel: 'base gemm bf16-compute X·Wᵀ + dY·W (W bf16)', shape, ms: baseBf16Ms, gflops: baseFlop / (baseBf16Ms * 1e6),
      peer: torchBf16 && { name: `torch ${torchBf16.torch} autocast`, ms: torchBf16.base_ms, gflops: baseFlop / (torchBf16.base_ms * 1e6) } });
    rows.push({
      kernel: 'lora bf16-compute fwd+bwd (W bf16)',
      shape,
      ms: loraBf16Ms,
      gflops: loraFlop / (loraBf16Ms * 1e6),
      peer: torchBf16 && { name: `torch ${torchBf16.torch} autocast`, ms: torchBf16.lora_ms, gflops: loraFlop / (torchBf16.lora_ms * 1e6) },
      note: `${(loraBf16Ms / baseBf16Ms).toFixed(3)}× its base; ${(loraMs / loraBf16Ms).toFixed(2)}× faster than f32 LoRA`,
    });
    for (const t of [X, W, Wb, A, B, dY, Y, XA, dX, dA, dB]) t.dispose();
  }
  return rows;
}
