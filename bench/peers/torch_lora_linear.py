"""PyTorch peer of peftkit's fused LoRA linear: forward + backward of
Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ with W frozen, gradients for X, A and B (as PEFT's lora.Linear without
dropout), and the base alone (X·Wᵀ forward, dY·W input gradient) for the same shapes.

usage: torch_lora_linear.py M K N r threads min_reps min_seconds
prints one JSON line: {"lora_ms": median, "base_ms": median, "torch": version, "threads": n}
"""
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
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    s = 2.0
    X = torch.randn(M, K, requires_grad=True)
    W = torch.randn(N, K) / K**0.5  # frozen base: no gradient
    A = (torch.randn(r, K) / K**0.5).requires_grad_()
    B = torch.randn(N, r).requires_grad_()
    G = torch.randn(M, N)

    def lora_step():
        Y = torch.nn.functional.linear(X, W) + s * torch.nn.functional.linear(torch.nn.functional.linear(X, A), B)
        Y.backward(G)

    def base_step():
        torch.nn.functional.linear(X.detach(), W)
        G.mm(W)

    lora_ms = median_ms(lora_step, min_reps, min_seconds)
    base_ms = median_ms(base_step, min_reps, min_seconds)
    print(json.dumps({"lora_ms": lora_ms, "base_ms": base_ms, "torch": torch.__version__, "threads": threads}))


if __name__ == "__main__":
    main()
