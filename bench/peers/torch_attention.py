"""PyTorch peer of bench/kernels/attention.ts: causal grouped-query attention, forward and
forward+backward, timed the way the engine's bench times its kernels (one warm-up call, then the
median of at least `reps` calls, more while under `seconds`).

    python3 torch_attention.py B T Hq Hkv D threads reps seconds

Tensors are [B, H, T, D] (PyTorch's layout); K/V are repeated to Hq heads inside the timed step,
as Hugging Face's repeat_kv does for grouped-query attention. Uses
F.scaled_dot_product_attention(is_causal=True) where this PyTorch has it (2.0+), else the same
math spelled out (softmax of masked scaled scores times V, which is what its math backend does).
Prints one JSON line: {"fwd_ms", "fwdbwd_ms", "torch", "impl"}.
"""
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def median_ms(step, reps, seconds):
    step()
    times = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < seconds and len(times) < 50):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    B, T, Hq, Hkv, D, threads, reps = (int(a) for a in sys.argv[1:8])
    seconds = float(sys.argv[8])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    group = Hq // Hkv
    q = torch.randn(B, Hq, T, D, requires_grad=True)
    k = torch.randn(B, Hkv, T, D, requires_grad=True)
    v = torch.randn(B, Hkv, T, D, requires_grad=True)
    g = torch.randn(B, Hq, T, D)
    has_sdpa = hasattr(F, "scaled_dot_product_attention")
    mask = None if has_sdpa else torch.ones(T, T, dtype=torch.bool).triu(1)

    def attention():
        kr = k.repeat_interleave(group, dim=1)
        vr = v.repeat_interleave(group, dim=1)
        if has_sdpa:
            return F.scaled_dot_product_attention(q, kr, vr, is_causal=True)
        s = (q @ kr.transpose(-2, -1)) * (1.0 / math.sqrt(D))
        return torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1) @ vr

    def fwd():
        with torch.no_grad():
            attention()

    def fwdbwd():
        q.grad = k.grad = v.grad = None
        attention().backward(g)

    print(json.dumps({
        "fwd_ms": median_ms(fwd, reps, seconds),
        "fwdbwd_ms": median_ms(fwdbwd, reps, seconds),
        "torch": torch.__version__,
        "impl": "sdpa" if has_sdpa else "math",
    }))


if __name__ == "__main__":
    main()
