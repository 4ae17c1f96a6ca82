// Rotary position embedding, Hugging Face "rotate-half" layout: within a head of D values, x[i]
// and x[i + D/2] form the pair rotated by angle position·inv_freq[i].
#include <cmath>
#include <vector>

#include "grain.h"
#include "peftkit/kernels.h"
#include "peftkit/rope_freq.h"

namespace pk::cpu {

namespace {

}  // namespace

// The angle is rounded to f32 as position·inv_freq (one f32 product, as HF's f32 matmul forms
// it), so the table matches the one a Hugging Face model was trained with; cos and sin of that
// angle are then taken in double.
void rope_table(float* cos, float* sin, const int32_t* positions, int64_t T, int64_t D, float theta,
                RopeScaling scaling) {
  const int64_t half = D / 2;
  std::vector<float> f(static_cast<size_t>(half));
  rope_inv_freq(f.data(), D, theta, scaling);
  const float* fp = f.data();
  // Weighted: a double cos and sin cost about as much as 16 elements of a memory-bound loop.
#pragma omp parallel for num_threads(threads_for(T * half * 16)) schedule(static)
  for (int64_t t = 0; t < T; t++) {
    const float pos = float(positions[t]);
    for (int64_t i = 0; i < half; i++) {
      const double angle = double(pos * fp[i]);
      cos[t * half + i] = float(std::cos(angle));
      sin[t * half + i] = float(std::sin(angle));
    }
  }
}

namespace {

// Each (b, t, h) row is one head of D values; cos/sin row t is shared by every b and h.
// `omp simd` vectorizes without a runtime alias check: with out == x every element is read
// before it is written and no iteration reads what another writes (i and i + half differ).
// INVERSE rotates by -angle (sin negated, exactly), the transpose of the rotation: the backward.
template <bool INVERSE>
void rotate(float* out, const float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
            int64_t D) {
  const int64_t half = D / 2, rows = B * T * H;
#pragma omp parallel for num_threads(threads_for(rows * D)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const int64_t t = (r / H) % T;
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    const float* xr = x + r * D;
    float* o = out + r * D;
#pragma omp simd
    for (int64_t i = 0; i < half; i++) {
      const float x1 = xr[i], x2 = xr[i + half], si = INVERSE ? -s[i] : s[i];
      o[i] = x1 * c[i] - x2 * si;
      o[i + half] = x2 * c[i] + x1 * si;
    }
  }
}

}  // namespace

void rope_forward(float* out, const float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                  int64_t D) {
  rotate<false>(out, x, cos, sin, B, T, H, D);
}

void rope_backward(float* dx, const float* dout, const float* cos, const float* sin, int64_t B, int64_t T,
                   int64_t H, int64_t D) {
  rotate<true>(dx, dout, cos, sin, B, T, H, D);
}

}  // namespace pk::cpu
