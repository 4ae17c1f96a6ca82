// Rotary position embedding, Hugging Face rotate-half layout: feature i pairs with i + D/2.
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
// cos/sin [T, D/2]. Computed in double: positions reach 1e5 radians and more, where f32 angles
// (and --use_fast_math's __sinf) would lose several digits; the table is small.
// llama3 scaling as transformers' _compute_llama3_parameters: long wavelengths are divided by
// factor, short ones kept, the band between them interpolated.
__global__ void rope_table_kernel(float* cos_out, float* sin_out, const int32_t* positions, int64_t T, int64_t D,
                                  float theta, RopeScaling sc) {
  const int64_t half = D / 2, total = T * half;
  const double kTwoPi = 6.283185307179586;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < total; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = p / half, i = p % half;
    double inv_freq = 1.0 / pow(double(theta), double(2 * i) / double(D));
    if (sc.factor > 0.f) {
      const double old_ctx = sc.original_max_position_embeddings;
      const double low_wavelen = old_ctx / sc.low_freq_factor, high_wavelen = old_ctx / sc.high_freq_factor;
      const double wavelen = kTwoPi / inv_freq;
      if (wavelen > low_wavelen) {
        inv_freq /= sc.factor;
      } else if (!(wavelen < high_wavelen)) {
        const double smooth = (old_ctx / wavelen - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor);
        inv_freq = (1.0 - smooth) * inv_freq / sc.factor + smooth * inv_freq;
      }
    }
    double s, c;
    sincos(double(positions[t]) * inv_freq, &s, &c);
    cos_out[p] = float(c);
    sin_out[p] = float(s);
  }
}

// One thread per rotated pair (b, t, h, i < D/2); it reads both features before writing
// either, so out may alias x. kInverse rotates by -θ (the backward pass).
template <bool kInverse>
__global__ void rope_rotate(float* out, const float* x, const float* cos_t, const float* sin_t, int64_t T, int64_t H,
                            int64_t D, int64_t pairs) {
  const int64_t half = D / 2;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < pairs; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = p / half, i = p % half;  // row indexes [B, T, H]
    const int64_t t = row / H % T;
    const float c = cos_t[t * half + i], s = kInverse ? -sin_t[t * half + i] : sin_t[t * half + i];
    const float x0 = x[row * D + i], x1 = x[row * D + i + half];
    out[row * D + i] = x0 * c - x1 * s;
    out[row * D + i + half] = x1 * c + x0 * s;
  }
}
}  // namespace

void rope_table(float* cos, float* sin, const int32_t* positions, int64_t T, int64_t D, float theta,
                RopeScaling scaling) {
  if (T * (D / 2) == 0) return;
  rope_table_kernel<<<elt_blocks(T * (D / 2)), kEltThreads, 0, stream()>>>(cos, sin, positions, T, D, theta, scaling);
  check_launch("rope_table");
}

void rope_forward(float* out, const float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                  int64_t D) {
  const int64_t pairs = B * T * H * (D / 2);
  if (pairs == 0) return;
  rope_rotate<false><<<elt_blocks(pairs), kEltThreads, 0, stream()>>>(out, x, cos, sin, T, H, D, pairs);
  check_launch("rope_forward");
}

void rope_backward(float* dx, const float* dout, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                   int64_t D) {
  const int64_t pairs = B * T * H * (D / 2);
  if (pairs == 0) return;
  rope_rotate<true><<<elt_blocks(pairs), kEltThreads, 0, stream()>>>(dx, dout, cos, sin, T, H, D, pairs);
  check_launch("rope_backward");
}

}  // namespace pk::cuda
