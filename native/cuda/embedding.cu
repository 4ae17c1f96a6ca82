// Token embedding lookup and its gradient. ids are already checked to lie in [0, V).
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
// out[n, c] = table[ids[n], c], one grid-stride pass over the N×C outputs.
__global__ void embedding_gather(float* out, const int32_t* ids, const float* table, int64_t N, int64_t C) {
  const int64_t total = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = table[int64_t(ids[i / C]) * C + i % C];
}

// dtable[ids[n], c] += dout[n, c]; repeated ids meet in atomicAdd (the summation order, and so
// the last bits of a repeated row, vary from run to run).
__global__ void embedding_scatter_add(float* dtable, const float* dout, const int32_t* ids, int64_t N, int64_t C) {
  const int64_t total = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    atomicAdd(&dtable[int64_t(ids[i / C]) * C + i % C], dout[i]);
}
}  // namespace

void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t C) {
  if (N * C == 0) return;
  embedding_gather<<<elt_blocks(N * C), kEltThreads, 0, stream()>>>(out, ids, table, N, C);
  check_launch("embedding_forward");
}

void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N, int64_t C, int64_t V) {
  (void)V;  // ids are in range; V only sizes dtable
  if (N * C == 0) return;
  embedding_scatter_add<<<elt_blocks(N * C), kEltThreads, 0, stream()>>>(dtable, dout, ids, N, C);
  check_launch("embedding_backward");
}

}  // namespace pk::cuda
