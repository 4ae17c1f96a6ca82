// Dropout with the counter-based mask of dropout_rng.h: the same (seed, offset) gives the same
// mask as the CPU kernel, bit for bit, so backward recomputes it.
#include "common.cuh"
#include "peftkit/dropout_rng.h"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
// out[i] = keep(key, offset + i) ? x[i]·scale : 0 with the CPU's key and scale (dropout_rng.h),
// both formed on the host so --use_fast_math cannot change them. Forward and backward are the
// same map.
__global__ void dropout_kernel(float* out, const float* x, int64_t n, float p, uint64_t key, uint64_t offset,
                               float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = dropout_keep(key, offset + uint64_t(i), p) ? __fmul_rn(x[i], scale) : 0.f;
}
}  // namespace

void dropout_forward(float* out, const float* x, int64_t n, float p, uint64_t seed, uint64_t offset) {
  if (n == 0) return;
  dropout_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(out, x, n, p, dropout_key(seed), offset, dropout_scale(p));
  check_launch("dropout_forward");
}

void dropout_backward(float* dx, const float* dout, int64_t n, float p, uint64_t seed, uint64_t offset) {
  if (n == 0) return;
  dropout_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(dx, dout, n, p, dropout_key(seed), offset, dropout_scale(p));
  check_launch("dropout_backward");
}

}  // namespace pk::cuda
