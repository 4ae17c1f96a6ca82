// Double quantization: the f32 block scales of a 4-bit tensor stored as 8-bit codes of the
// signed dynamic map around their mean, one f32 scale per 256 of them (bitsandbytes'
// compress_statistics).
#include <cmath>

#include "grain.h"
#include "peftkit/kernels.h"
#include "peftkit/quant_decide.h"

namespace pk::cpu {

float absmax_mean(const float* absmax, int64_t n) {
  if (n == 0) return 0.f;
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += absmax[i];
  return float(sum / double(n));
}

void quantize_8bit_dynamic(uint8_t* q, float* absmax2, const float* x, float offset, int64_t n, int64_t blocksize) {
  const int64_t blocks = (n + blocksize - 1) / blocksize;
#pragma omp parallel for num_threads(threads_for(n)) schedule(static)
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t i0 = b * blocksize, i1 = n - i0 < blocksize ? n : i0 + blocksize;
    float m = 0.f;
    for (int64_t i = i0; i < i1; i++) {
      const float a = std::fabs(x[i] - offset);
      if (a > m) m = a;
    }
    absmax2[b] = m;
    // Unlike the 4-bit path this keeps 1/0 = inf, as bitsandbytes does: 0·inf is NaN, code 0.
    const float r = 1.f / m;
    for (int64_t i = i0; i < i1; i++) q[i] = quant_codes::dynamic_signed_code((x[i] - offset) * r);
  }
}

void dequantize_8bit_dynamic(float* out, const uint8_t* q, const float* absmax2, float offset, int64_t n,
                             int64_t blocksize) {
#pragma omp parallel for num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) {
    // Two roundings as bitsandbytes (dequantize, then add the offset); the portable x86-64 build
    // has no FMA instruction to contract them into.
    const float scaled = quant_codes::kDynamicSigned[q[i]] * absmax2[i / blocksize];
    out[i] = scaled + offset;
  }
}

}  // namespace pk::cpu
