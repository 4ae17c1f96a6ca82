// Token embedding lookup and its gradient. table is [V, C] (f32, or bf16 for the lookup), ids [N], out / dout [N, C].
// On the CPU the op layer checks every id before these run (reading them costs nothing here),
// so the fault record of the op table (kernels.h) is never needed.
#include <cstring>

#include "grain.h"
#include "peftkit/kernels.h"

namespace pk::cpu {

void embedding_forward(float* out, const int32_t* ids, const void* table, DType table_dtype, int64_t N, int64_t C,
                       int64_t V, double* fault) {
  (void)V, (void)fault;
  if (table_dtype == DType::BF16) {
    const bf16* t = static_cast<const bf16*>(table);
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(static)
    for (int64_t n = 0; n < N; n++) {
      const bf16* src = t + int64_t(ids[n]) * C;
      float* dst = out + n * C;
#pragma omp simd
      for (int64_t j = 0; j < C; j++) dst[j] = bf16_to_f32(src[j]);
    }
    return;
  }
  const float* t = static_cast<const float*>(table);
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(static)
  for (int64_t n = 0; n < N; n++) std::memcpy(out + n * C, t + int64_t(ids[n]) * C, size_t(C) * sizeof(float));
}

// Repeated ids add into the same row, so rows cannot be split among threads. Columns can:
// each thread owns a block of columns and walks all N ids in order, which also makes the
// sum order (and so the result) the same at any thread count.
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N, int64_t C, int64_t V,
                        double* fault) {
  (void)V, (void)fault;
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(static)
  for (int64_t blk = 0; blk < blocks; blk++) {
    const int64_t c0 = blk * kBlock, width = C - c0 < kBlock ? C - c0 : kBlock;
    for (int64_t n = 0; n < N; n++) {
      float* dst = dtable + int64_t(ids[n]) * C + c0;
      const float* src = dout + n * C + c0;
#pragma omp simd
      for (int64_t j = 0; j < width; j++) dst[j] += src[j];
    }
  }
}

}  // namespace pk::cpu
