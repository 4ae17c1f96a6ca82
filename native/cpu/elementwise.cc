// Elementwise arithmetic and dtype casts over n values. out may alias an input (see
// activation.cc for why `omp simd` is safe then).
#include <cstring>

#include "grain.h"
#include "peftkit/kernels.h"

namespace pk::cpu {

void add(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void axpy(float* y, const float* x, float a, int64_t n) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) y[i] = a * x[i] + y[i];
}

void copy_cols(float* dst, int64_t ld_dst, int64_t dst_col, const float* src, int64_t ld_src, int64_t src_col,
               int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; r++)
    std::memcpy(dst + r * ld_dst + dst_col, src + r * ld_src + src_col, size_t(width) * sizeof(float));
}

void keep_masked(float* x, const uint8_t* keep, int64_t n) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) x[i] = keep[i] ? x[i] : 0.f;
}

void cast_f32_to_bf16(bf16* out, const float* x, int64_t n) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(x[i]);
}

void cast_bf16_to_f32(float* out, const bf16* x, int64_t n) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) out[i] = bf16_to_f32(x[i]);
}

}  // namespace pk::cpu
