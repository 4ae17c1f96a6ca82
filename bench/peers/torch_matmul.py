"""PyTorch's CPU matmul on the shapes bench/kernels/gemm.ts measures: the peer for our GEMM.

Reads one JSON case per line on stdin, {"M", "N", "K", "transA", "transB", "dtype": "f32"|"bf16",
"budget_s", "r"}, and answers each with one JSON line {"ms", "best_ms", "cpu_ms"}: the median and the fastest
wall time per call, and the median process CPU time per call. One process serves a whole run, so our GEMM and this one can take turns
case by case on a shared machine. A is stored [K, M] when transA and B [N, K] when transB, as
in peftkit; the transposes are strided views, so the BLAS gets transpose flags, not copies.
With "r" (a LoRA rank) the product is X·Wᵀ + s·(XAᵀ)·Bᵀ the way PyTorch code writes it: matmul,
then addmm_ of the low-rank part (two passes over Y).
Run with /usr/bin/python3 (Debian's python3-torch, OpenBLAS underneath); argv[1] = threads.
"""
import json
import statistics
import sys
import time

import torch


def timing(fn, budget_s):
    fn()  # warm-up: first-call allocations and thread start
    times, cpu = [], []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 50):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return {"ms": statistics.median(times), "best_ms": min(times), "cpu_ms": statistics.median(cpu)}


def run(c):
    dtype = torch.bfloat16 if c["dtype"] == "bf16" else torch.float32
    M, N, K = c["M"], c["N"], c["K"]
    a = (torch.randn(K, M) if c["transA"] else torch.randn(M, K)).to(dtype)
    b = (torch.randn(N, K) if c["transB"] else torch.randn(K, N)).to(dtype)
    a = a.t() if c["transA"] else a
    b = b.t() if c["transB"] else b
    y = torch.empty(M, N, dtype=dtype)
    if c.get("r"):
        xa, bl = torch.randn(M, c["r"]).to(dtype), torch.randn(N, c["r"]).to(dtype).t()

        def lora():
            torch.matmul(a, b, out=y)
            y.addmm_(xa, bl, alpha=2.0)

        return timing(lora, c.get("budget_s", 1.0))
    return timing(lambda: torch.matmul(a, b, out=y), c.get("budget_s", 1.0))


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
