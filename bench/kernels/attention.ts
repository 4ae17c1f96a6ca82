/**
 * Causal grouped-query attention, forward and forward+backward, at the SmolLM2-135M shape
 * (batch 4 × 256 tokens, 9 query heads over 3 kv heads, D = 64) and a long-context one
 * (2048 tokens, 32 query heads over 4 kv heads). FLOPs count the causal half only: forward
 * 2 products × 2·B·Hq·D·T²/2; forward+backward 3.5× that (backward is 5 products, 2 of them
 * recomputing the forward's, counted as the usual 2.5×). The peer is PyTorch's
 * scaled_dot_product_attention(is_causal=True) with K/V repeated per group (or the same math
 * spelled out on a PyTorch without it), with this process's thread count.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { Tensor, ops, runtimeInfo } from '../../src/index';
import { medianMs, MIN_REPS, MIN_SECONDS } from './_timing';
import type { BenchRow } from './types';

const SHAPES = [
  { B: 4, T: 256, Hq: 9, Hkv: 3, D: 64 },
  { B: 1, T: 2048, Hq: 32, Hkv: 4, D: 64 },
];

function randomTensor(shape: number[]): Tensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = Math.random() * 2 - 1;
  return Tensor.from(data, shape);
}

interface TorchTimes { fwd_ms: number; fwdbwd_ms: number; torch: string; impl: string }

/** The PyTorch peer in its own process; undefined (and a message) when it cannot run. */
function torchPeer(s: (typeof SHAPES)[number], threads: number): TorchTimes | undefined {
  const script = path.join(__dirname, '..', '..', '..', 'bench', 'peers', 'torch_attention.py');
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const args = [script, s.B, s.T, s.Hq, s.Hkv, s.D, threads, MIN_REPS, MIN_SECONDS].map(String);
  const res = spawnSync('/usr/bin/python3', args, { env, encoding: 'utf8', timeout: 600_000 });
  if (res.status !== 0) {
    console.error(`torch peer failed (T=${s.T}): ${res.error?.message ?? res.stderr.trim().split('\n').pop()}`);
    return undefined;
  }
  return JSON.parse(res.stdout.trim().split('\n').pop()!) as TorchTimes;
}

export function run(): BenchRow[] {
  const threads = runtimeInfo().threads;
  const rows: BenchRow[] = [];
  for (const s of SHAPES) {
    const { B, T, Hq, Hkv, D } = s;
    const q = randomTensor([B, T, Hq, D]), k = randomTensor([B, T, Hkv, D]), v = randomTensor([B, T, Hkv, D]);
    const dout = randomTensor([B, T, Hq, D]);
    const out = Tensor.empty([B, T, Hq, D]), lse = Tensor.empty([B, Hq, T]);
    const dq = Tensor.empty([B, T, Hq, D]), dk = Tensor.empty([B, T, Hkv, D]), dv = Tensor.empty([B, T, Hkv, D]);

    const fwdMs = medianMs(() => ops.attentionForward(out, lse, q, k, v));
    const fwdBwdMs = medianMs(() => {
      ops.attentionForward(out, lse, q, k, v);
      ops.attentionBackward(dq, dk, dv, dout, q, k, v, out, lse);
    });
    const fwdFlop = 2 * 2 * B * Hq * D * (T * T) / 2;
    const gflops = (flop: number, ms: number) => flop / (ms * 1e6);
    const torch = torchPeer(s, threads);
    const shape = `B=${B} T=${T} Hq=${Hq} Hkv=${Hkv} D=${D}`;
    const peerName = torch ? `torch ${torch.torch} ${torch.impl === 'sdpa' ? 'sdpa' : 'math (no sdpa)'}` : '';
    const note = (ours: number, peer?: number) =>
      `${threads} threads` + (peer ? `; ours/peer time ${(ours / peer).toFixed(2)}` : '; peer unavailable');
    rows.push({
      kernel: 'attention fwd f32 causal GQA', shape, ms: fwdMs, gflops: gflops(fwdFlop, fwdMs),
      peer: torch && { name: peerName, ms: torch.fwd_ms, gflops: gflops(fwdFlop, torch.fwd_ms) },
      note: note(fwdMs, torch?.fwd_ms),
    });
    rows.push({
      kernel: 'attention fwd+bwd f32 causal GQA', shape, ms: fwdBwdMs, gflops: gflops(3.5 * fwdFlop, fwdBwdMs),
      peer: torch && { name: peerName, ms: torch.fwdbwd_ms, gflops: gflops(3.5 * fwdFlop, torch.fwdbwd_ms) },
      note: note(fwdBwdMs, torch?.fwdbwd_ms),
    });
    for (const t of [q, k, v, dout, out, lse, dq, dk, dv]) t.dispose();
  }
  return rows;
}
