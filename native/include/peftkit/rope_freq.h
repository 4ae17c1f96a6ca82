// Rotary inverse frequencies as transformers forms them, shared by the CPU and CUDA tables so
// both devices rotate by exactly the same angles: inv_freq[i] = theta^(-2i/D) with the exponent
// 2i/D and the power each rounded to f32, then the f32 reciprocal; then rope_type "llama3"
// scaling as _compute_llama3_parameters: wavelengths shorter than original/high_freq_factor keep
// their frequency, longer than original/low_freq_factor are divided by factor, and the band
// between blends the two with smooth = (original/wavelen - low)/(high - low), done in double
// from the f32 inv_freq and rounded once. Host code; `static` keeps a private copy per file.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels.h"

namespace pk {

static inline void rope_inv_freq(float* out, int64_t D, float theta, const RopeScaling& s) {
  const int64_t half = D / 2;
  const double orig = s.original_max_position_embeddings, low = s.low_freq_factor, high = s.high_freq_factor;
  for (int64_t i = 0; i < half; i++) {
    const float exponent = float(2 * i) / float(D);
    const float power = float(std::pow(double(theta), double(exponent)));
    double v = double(1.0f / power);
    if (s.factor > 0.f) {
      const double wavelen = 2.0 * M_PI / v;
      if (wavelen < orig / high) {
        // high frequency: unchanged
      } else if (wavelen > orig / low) {
        v = v / s.factor;
      } else {
        const double smooth = (orig / wavelen - low) / (high - low);
        v = (1.0 - smooth) * v / s.factor + smooth * v;
      }
    }
    out[i] = float(v);
  }
}

}  // namespace pk
