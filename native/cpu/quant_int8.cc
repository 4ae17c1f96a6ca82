// LLM.int8 weight format: int8 codes per output row with one f32 absmax per row (SCB).
#include <cmath>

#include "grain.h"
#include "peftkit/kernels.h"

namespace pk::cpu {

void quantize_int8_rowwise(int8_t* cb, float* scb, const float* w, int64_t rows, int64_t cols) {
#pragma omp parallel for num_threads(threads_for(rows * cols)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float* row = w + r * cols;
    float m = 0.f;
    for (int64_t c = 0; c < cols; c++) {
      const float a = std::fabs(row[c]);
      if (a > m) m = a;
    }
    scb[r] = m;
    const float scale = 127.f / m;
    for (int64_t c = 0; c < cols; c++) {
      const float v = row[c] * scale;
      // nearbyint rounds half to even in the default rounding mode; |v| <= 127 unless NaN.
      cb[r * cols + c] = v == v ? int8_t(std::nearbyint(v)) : int8_t(0);
    }
  }
}

void dequantize_int8_rowwise(void* out, DType out_dtype, const int8_t* cb, const float* scb, int64_t rows,
                             int64_t cols) {
  const float inv127 = 1.f / 127.f;  // bitsandbytes multiplies by this f32, 7.874015718698502e-3
#pragma omp parallel for num_threads(threads_for(rows * cols)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = 0; c < cols; c++) {
      const float v = (float(cb[r * cols + c]) * scb[r]) * inv127;
      if (out_dtype == DType::F32) static_cast<float*>(out)[r * cols + c] = v;
      else static_cast<bf16*>(out)[r * cols + c] = f32_to_bf16(v);
    }
  }
}

}  // namespace pk::cpu
