"""PyTorch peer of peftkit's fused LoRA linear: forward + backward of
Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ with W frozen, gradients for X, A and B (as PEFT's lora.Linear without
dropout), and the base alone (X·Wᵀ forward, dY·W input gradient) for the same shapes.

With a last argument "bf16": W stored in bf16 and both steps under torch.autocast("cpu",
dtype=torch.bfloat16), as a bf16 LoRA run in PyTorch does (autocast runs the rank-r products in
bf16 too, where peftkit keeps them f32).

usage: torch_lora_linear.py M K N r threads min_reps min_seconds [f32|bf16]
prints one JSON line: {"lora_ms": median, "base_ms": median, "torch": version, "threads": n}
"""
import contextlib
import json
import statistics
import sys
import time

import torch


def median_ms(step, min_reps, min_seconds):
    step()  # warm-up: allocator, thread pool
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_seconds and len(times) < 50):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    M, K, N, r, threads, min_reps = (int(a) for a in sys.argv[1:7])
    min_seconds = float(sys.argv[7])
    bf16 = len(sys.argv) > 8 and sys.argv[8] == "bf16"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    s = 2.0
    X = torch.randn(M, K, requires_grad=True)
    W = torch.randn(N, K) / K**0.5  # frozen base: no gradient
    if bf16:
        W = W.to(torch.bfloat16)
    A = (torch.randn(r, K) / K**0.5).requires_grad_()
    B = torch.randn(N, r).requires_grad_()
    G = torch.randn(M, N)

    def lora_step():
        Y = torch.nn.functional.linear(X, W) + s * torch.nn.functional.linear(torch.nn.functional.linear(X, A), B)
        Y.backward(G)

    def base_step():
        torch.nn.functional.linear(X.detach(), W)
        G.mm(W)

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        lora_ms = median_ms(lora_step, min_reps, min_seconds)
        base_ms = median_ms(base_step, min_reps, min_seconds)
    print(json.dumps({"lora_ms": lora_ms, "base_ms": base_ms, "torch": torch.__version__, "threads": threads}))


if __name__ == "__main__":
    main()
