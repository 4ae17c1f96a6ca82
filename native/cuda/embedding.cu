// Token embedding lookup and its gradient. An id outside [0, V) (only where the op layer left the
// check to the kernel by giving a fault record) is recorded there and reads or adds nothing.
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(uint16_t x) { return bf16_bits_to_f32(x); }

// One block per token n: out[n, :] = table[ids[n], :] (T: float, or bf16 bits widened exactly).
template <typename T>
__global__ void embedding_gather(float* out, const int32_t* ids, const T* table, int64_t C, int64_t V, double* fault) {
  const int64_t n = blockIdx.x;
  const int32_t id = ids[n];
  if (id < 0 || id >= V) {
    if (threadIdx.x == 0) record_index_fault(fault, IndexFaultOp::EmbeddingForward, n, id, V);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[n * C + c] = 0.f;
    return;
  }
  const T* src = table + int64_t(id) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[n * C + c] = widen(src[c]);
}

// One block per token n: dtable[ids[n], :] += dout[n, :]. Repeated ids meet in atomicAdd (the
// summation order, and so the last bits of a repeated row, vary from run to run).
__global__ void embedding_scatter_add(float* dtable, const float* dout, const int32_t* ids, int64_t C, int64_t V,
                                      double* fault) {
  const int64_t n = blockIdx.x;
  const int32_t id = ids[n];
  if (id < 0 || id >= V) {
    if (threadIdx.x == 0) record_index_fault(fault, IndexFaultOp::EmbeddingBackward, n, id, V);
    return;
  }
  float* dst = dtable + int64_t(id) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(&dst[c], dout[n * C + c]);
}

unsigned row_threads(int64_t C) { return C >= 256 ? 256u : unsigned((C + 31) / 32 * 32); }
}  // namespace

void embedding_forward(float* out, const int32_t* ids, const void* table, DType table_dtype, int64_t N, int64_t C,
                       int64_t V, double* fault) {
  if (N * C == 0) return;
  if (table_dtype == DType::BF16)
    embedding_gather<uint16_t><<<unsigned(N), row_threads(C), 0, stream()>>>(out, ids, static_cast<const uint16_t*>(table),
                                                                              C, V, fault);
  else
    embedding_gather<float><<<unsigned(N), row_threads(C), 0, stream()>>>(out, ids, static_cast<const float*>(table), C,
                                                                           V, fault);
  check_launch("embedding_forward");
}

void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N, int64_t C, int64_t V,
                        double* fault) {
  if (N * C == 0) return;
  embedding_scatter_add<<<unsigned(N), row_threads(C), 0, stream()>>>(dtable, dout, ids, C, V, fault);
  check_launch("embedding_backward");
}

}  // namespace pk::cuda
