// Cross-entropy over the vocabulary: one block per row. A single pass keeps a running
// (max, sum of exp) per thread (online softmax), the block merges them, and a second pass
// writes the gradient, in place over the logits when the caller asks.
#include "common.cuh"
#include "gemm.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
// Running softmax statistics: the max m and Σ exp(x - m). m = -inf means "nothing yet".
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};
  return {m, (a.m == -INFINITY ? 0.f : a.s * __expf(a.m - m)) + (b.m == -INFINITY ? 0.f : b.s * __expf(b.m - m))};
}

__device__ MaxSum block_merge(MaxSum v) {
  __shared__ MaxSum partial[32];
  __shared__ MaxSum total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1)
    v = merge(v, {__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)});
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    MaxSum w = lane < warps ? partial[lane] : MaxSum{-INFINITY, 0.f};
    for (int o = 16; o > 0; o >>= 1)
      w = merge(w, {__shfl_xor_sync(0xffffffffu, w.m, o), __shfl_xor_sync(0xffffffffu, w.s, o)});
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

// A target outside [0, V) that is not ignore_index is rejected by the op layer, or recorded in
// the fault record where the op left the check to the kernel (row0: the chunk's first row);
// either way it is treated as ignored rather than read out of bounds.
__global__ void cross_entropy_rows(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                   int64_t V, int32_t ignore_index, float grad_scale, double* fault, int64_t row0) {
  const int64_t row = blockIdx.x;
  const float* x = logits + row * V;
  const int32_t target = targets[row];
  const bool counted = target != ignore_index && target >= 0 && target < V;
  if (!counted && target != ignore_index && threadIdx.x == 0)
    record_index_fault(fault, IndexFaultOp::Targets, row0 + row, target, V, ignore_index);
  // Read before any thread can overwrite it (dlogits may be logits; the merge below syncs).
  const float x_target = counted && threadIdx.x == 0 ? x[target] : 0.f;

  MaxSum st{-INFINITY, 0.f};
  if (counted)
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float v = x[j];
      if (v > st.m) {
        st.s = st.s * __expf(st.m - v) + 1.f;
        st.m = v;
      } else if (st.m > -INFINITY) {
        st.s += __expf(v - st.m);
      }
    }
  const MaxSum all = block_merge(st);  // uniform: every thread of the block calls it
  const float lse = all.m + __logf(all.s);
  if (threadIdx.x == 0 && losses) losses[row] = counted ? lse - x_target : 0.f;
  if (!dlogits) return;
  float* d = dlogits + row * V;
  if (!counted) {
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) d[j] = 0.f;
    return;
  }
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x)
    d[j] = grad_scale * (__expf(x[j] - lse) - (j == target ? 1.f : 0.f));
}

unsigned ce_threads(int64_t V) {
  const int64_t t = (V + 31) / 32 * 32;
  return unsigned(t < 512 ? t : 512);
}

void launch_cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t N,
                          int64_t V, int32_t ignore_index, float grad_scale, double* fault, int64_t row0) {
  if (N == 0 || V == 0) return;
  cross_entropy_rows<<<unsigned(N), ce_threads(V), 0, stream()>>>(losses, dlogits, logits, targets, V, ignore_index,
                                                                  grad_scale, fault, row0);
  check_launch("cross_entropy");
}
}  // namespace

void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t N, int64_t V,
                   int32_t ignore_index, float grad_scale) {
  launch_cross_entropy(losses, dlogits, logits, targets, N, V, ignore_index, grad_scale, nullptr, 0);
}

// Per chunk of rows: logits = H·Wᵀ into scratch, softmax - onehot (times grad_scale) in place,
// then dH = scratch·W and dW += scratchᵀ·H. bf16 compute rounds the operands of all three.
void linear_cross_entropy(float* losses, float* dH, float* dW, const float* H, const void* W, DType w_dtype,
                          const int32_t* targets, int64_t N, int64_t C, int64_t V, int32_t ignore_index,
                          float grad_scale, int64_t chunk_rows, float* scratch, Compute compute, double* fault) {
  if (chunk_rows <= 0) chunk_rows = N;
  const auto op = [compute](const void* p, DType dt, int64_t ld, bool trans) {
    return with_compute(operand(p, dt, ld, trans), compute);
  };
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
    const int64_t n = N - r0 < chunk_rows ? N - r0 : chunk_rows;
    const float* Hc = H + r0 * C;
    gemm_f32(scratch, V, op(Hc, DType::F32, C, false), op(W, w_dtype, C, true), n, V, C, 1.f, false);
    launch_cross_entropy(losses ? losses + r0 : nullptr, scratch, scratch, targets + r0, n, V, ignore_index, grad_scale,
                         fault, r0);
    if (dH) gemm_f32(dH + r0 * C, C, op(scratch, DType::F32, V, false), op(W, w_dtype, C, false), n, C, V, 1.f, false);
    if (dW) gemm_f32(dW, C, op(scratch, DType::F32, V, true), op(Hc, DType::F32, C, false), V, C, n, 1.f, true);
  }
}

}  // namespace pk::cuda
