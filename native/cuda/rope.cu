// Rotary position embedding, Hugging Face rotate-half layout: feature i pairs with i + D/2.
#include "common.cuh"
#include "peftkit/kernels.h"
#include "peftkit/rope_freq.h"

namespace pk::cuda {

namespace {
// The inverse frequencies come from the host (rope_freq.h, the CPU's own function) by value.
constexpr int kMaxHalf = 256;
struct InvFreq {
  float v[kMaxHalf];
};

// cos/sin [T, D/2] of angle = position·inv_freq rounded to f32 (one f32 product, as HF's f32
// matmul forms it; __fmul_rn so it is never fused), then cos and sin in double: the same table
// as the CPU's, whatever --use_fast_math does to f32 math.
__global__ void rope_table_kernel(float* cos_out, float* sin_out, const int32_t* positions, int64_t T, int64_t half,
                                  InvFreq f) {
  const int64_t total = T * half;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < total; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = p / half, i = p % half;
    double s, c;
    sincos(double(__fmul_rn(float(positions[t]), f.v[i])), &s, &c);
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
  if (D / 2 > kMaxHalf) fail("E_ARG", "rope_table: head_dim " + std::to_string(D) + " exceeds the CUDA table's 512");
  InvFreq f{};
  rope_inv_freq(f.v, D, theta, scaling);
  rope_table_kernel<<<elt_blocks(T * (D / 2)), kEltThreads, 0, stream()>>>(cos, sin, positions, T, D / 2, f);
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
