// The optimizer over the host array of ParamRefs (pointers into device memory): one launch per
// tensor, each a grid-stride pass. A LoRA run has hundreds of tensors, so the launches cost
// well under a millisecond per step.
#include <cmath>

#include "adamw_element.cuh"
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, AdamWScalars k, float decay) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float pi = p[i], mi = m[i], vi = v[i];
    adamw_element(pi, mi, vi, g[i], k, decay);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

// acc += Σ g² over n elements, summed in double (per thread, per block, then atomically).
__global__ void sumsq_kernel(double* acc, const float* g, int64_t n) {
  double s = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    s += double(g[i]) * double(g[i]);
  s = block_sum(s);
  if (threadIdx.x == 0) atomicAdd(acc, s);
}

// acc[0] += Σ x over n elements in double, by one block (so in a fixed order).
__global__ void sum_kernel(double* acc, const float* x, int64_t n) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += double(x[i]);
  s = block_sum(s);
  if (threadIdx.x == 0) acc[0] += s;
}

__global__ void scale_kernel(float* g, int64_t n, float factor) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    g[i] *= factor;
}

unsigned reduce_blocks(int64_t n) {
  const unsigned b = blocks_for(n, kEltThreads);
  return b < 1024 ? b : 1024;
}
}  // namespace

void adamw(const ParamRef* params, int64_t count, AdamWHyper h) {
  const AdamWScalars k = adamw_scalars(h);
  for (int64_t t = 0; t < count; t++) {
    const ParamRef& pr = params[t];
    if (pr.n == 0) continue;
    const float decay = float(1.0 - h.lr * double(pr.weight_decay));  // as adamw.cc
    adamw_kernel<<<elt_blocks(pr.n), kEltThreads, 0, stream()>>>(pr.param, pr.grad, pr.m, pr.v, pr.n, k, decay);
    check_launch("adamw");
  }
}

void grad_sumsq_into(double* out, const ParamRef* params, int64_t count) {
  check(cudaMemsetAsync(out, 0, sizeof(double), stream()), "grad_sumsq_into memset");
  for (int64_t t = 0; t < count; t++) {
    if (params[t].n == 0) continue;
    sumsq_kernel<<<reduce_blocks(params[t].n), kEltThreads, 0, stream()>>>(out, params[t].grad, params[t].n);
    check_launch("grad_sumsq_into");
  }
}

double grad_sumsq(const ParamRef* params, int64_t count) {
  double* acc = nullptr;
  check(cudaMallocAsync(&acc, sizeof(double), stream()), "grad_sumsq alloc");
  double total = 0.0;
  try {
    grad_sumsq_into(acc, params, count);
    count_copy(true, sizeof(double));
    check(cudaMemcpyAsync(&total, acc, sizeof(double), cudaMemcpyDeviceToHost, stream()), "grad_sumsq copy");
    check(cudaStreamSynchronize(stream()), "grad_sumsq sync");
  } catch (...) {
    cudaFreeAsync(acc, stream());
    throw;
  }
  cudaFreeAsync(acc, stream());
  return total;
}

void sum_into(double* acc, const float* x, int64_t n) {
  if (n == 0) return;
  // One block: a fixed order of partial sums, so a step's loss has the same bits every run.
  sum_kernel<<<1, kEltThreads, 0, stream()>>>(acc, x, n);
  check_launch("sum_into");
}

void grad_scale(const ParamRef* params, int64_t count, float factor) {
  for (int64_t t = 0; t < count; t++) {
    if (params[t].n == 0) continue;
    // The one writer of gradients (ParamRef::grad is const for the optimizer).
    scale_kernel<<<elt_blocks(params[t].n), kEltThreads, 0, stream()>>>(const_cast<float*>(params[t].grad),
                                                                        params[t].n, factor);
    check_launch("grad_scale");
  }
}

}  // namespace pk::cuda
