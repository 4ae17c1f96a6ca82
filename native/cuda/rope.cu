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

// One block per position row (b, t), its threads over the H·D/2 rotated pairs (h, i); each
// reads both features before writing either, so out may alias x. kInverse rotates by -θ (the
// backward pass).
template <bool kInverse>
__global__ void rope_rotate(float* out, const float* x, const float* cos_t, const float* sin_t, int64_t T, int H,
                            int D) {
  const int64_t bt = blockIdx.x, t = bt % T;
  const int half = D / 2;
  const float *c_row = cos_t + t * half, *s_row = sin_t + t * half;
  for (int p = threadIdx.x; p < H * half; p += blockDim.x) {
    const int h = p / half, i = p % half;
    const int64_t base = (bt * H + h) * D;
    const float c = c_row[i], s = kInverse ? -s_row[i] : s_row[i];
    const float x0 = x[base + i], x1 = x[base + i + half];
    out[base + i] = x0 * c - x1 * s;
    out[base + i + half] = x1 * c + x0 * s;
  }
}

unsigned pair_threads(int64_t pairs) { return pairs >= 256 ? 256u : unsigned((pairs + 31) / 32 * 32); }
}  // namespace

void rope_table(float* cos, float* sin, const int32_t* positions, int64_t T, int64_t D, float theta,
                RopeScaling scaling) {
  if (T * (D / 2) == 0) return;
  rope_table_kernel<<<elt_blocks(T * (D / 2)), kEltThreads, 0, stream()>>>(cos, sin, positions, T, D, theta, scaling);
  check_launch("rope_table");
}

void rope_forward(float* out, const float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                  int64_t D) {
  if (B * T * H * (D / 2) == 0) return;
  rope_rotate<false><<<unsigned(B * T), pair_threads(H * (D / 2)), 0, stream()>>>(out, x, cos, sin, T, int(H), int(D));
  check_launch("rope_forward");
}

void rope_backward(float* dx, const float* dout, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                   int64_t D) {
  if (B * T * H * (D / 2) == 0) return;
  rope_rotate<true><<<unsigned(B * T), pair_threads(H * (D / 2)), 0, stream()>>>(dx, dout, cos, sin, T, int(H), int(D));
  check_launch("rope_backward");
}

}  // namespace pk::cuda
