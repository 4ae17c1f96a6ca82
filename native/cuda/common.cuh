// Shared by the CUDA kernels: error checks, launch sizes, the stream every kernel uses.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "peftkit/error.h"

namespace pk::cuda {

// Kernels run on the per-thread default stream: calls from different Node workers do not
// serialize against each other, and ops from one thread stay ordered.
inline cudaStream_t stream() { return cudaStreamPerThread; }

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("E_CUDA", std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
}

inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace pk::cuda
