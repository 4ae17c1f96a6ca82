"""PyTorch's CPU matmul on the shapes bench/kernels/gemm.ts measures: the peer for our GEMM.

Reads a JSON list of cases on stdin: {"M", "N", "K", "transA", "transB", "dtype": "f32"|"bf16",
"budget_s"}; prints one JSON list of {"ms", "cpu_ms"} (medians of wall and process CPU time
per call) in the same order.
A is stored [K, M] when transA and B is stored [N, K] when transB, as in peftkit, and the
transposes are strided views, so the BLAS gets the transpose flags rather than copies.
Run with /usr/bin/python3 (Debian's python3-torch, OpenBLAS underneath).
"""
import json
import statistics
import sys
import time

import torch


def median_ms(fn, budget_s):
    fn()  # warm-up: first-call allocations and thread start
    times, cpu = [], []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 50):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return {"ms": statistics.median(times), "cpu_ms": statistics.median(cpu)}


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    out = []
    for c in json.load(sys.stdin):
        dtype = torch.bfloat16 if c["dtype"] == "bf16" else torch.float32
        M, N, K = c["M"], c["N"], c["K"]
        a = torch.randn(K, M) if c["transA"] else torch.randn(M, K)
        b = torch.randn(N, K) if c["transB"] else torch.randn(K, N)
        a, b = a.to(dtype), b.to(dtype)
        a = a.t() if c["transA"] else a
        b = b.t() if c["transB"] else b
        y = torch.empty(M, N, dtype=dtype)
        out.append(median_ms(lambda: torch.matmul(a, b, out=y), c.get("budget_s", 1.0)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
