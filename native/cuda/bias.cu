// Linear biases on the GPU: broadcast add, and the column sum for the bias gradient.
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
__global__ void bias_add_kernel(float* y, const float* bias, int64_t N, int64_t C) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < N * C) y[i] += bias[i % C];
}

// One thread per column: rows are read coalesced across the threads of a warp.
__global__ void bias_backward_kernel(float* dbias, const float* dy, int64_t N, int64_t C) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  float acc = 0.f;
  for (int64_t n = 0; n < N; n++) acc += dy[n * C + c];
  dbias[c] += acc;
}
}  // namespace

void bias_add(float* y, const float* bias, int64_t N, int64_t C) {
  if (N * C == 0) return;
  bias_add_kernel<<<blocks_for(N * C, 256), 256, 0, stream()>>>(y, bias, N, C);
  check_launch("bias_add");
}

void bias_backward(float* dbias, const float* dy, int64_t N, int64_t C) {
  if (C == 0) return;
  bias_backward_kernel<<<blocks_for(C, 128), 128, 0, stream()>>>(dbias, dy, N, C);
  check_launch("bias_backward");
}

}  // namespace pk::cuda
