// Activations of the MLP block, elementwise over n values: SiLU, GELU (tanh approximation and
// exact erf) and SwiGLU. The sigmoid-based ones run the per-ISA loops of pointwise_loops.h;
// exact GELU needs erf, which stays libm's (scalar) here. Every output may alias its input:
// each element is read before it is written and no element reads another.
#include <cmath>

#include "grain.h"
#include "peftkit/kernels.h"
#include "pointwise_table.h"

namespace pk::cpu {

namespace {
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;  // 1/sqrt(2π)
}  // namespace

void silu_forward(float* out, const float* x, int64_t n) {
  const auto loop = pointwise().silu_forward;
  parallel_ranges(n, [&](int64_t b, int64_t e) { loop(out + b, x + b, e - b); });
}

void silu_backward(float* dx, const float* dout, const float* x, int64_t n) {
  const auto loop = pointwise().silu_backward;
  parallel_ranges(n, [&](int64_t b, int64_t e) { loop(dx + b, dout + b, x + b, e - b); });
}

// Memory-bound: a plain loop the compiler vectorizes. NaN stays NaN (x > 0 is false, and
// max(NaN, 0) would hide it): out = x > 0 ? x : (x != x ? x : 0).
void relu_forward(float* out, const float* x, int64_t n) {
  parallel_ranges(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) out[i] = x[i] > 0.f || x[i] != x[i] ? x[i] : 0.f;
  });
}

void relu_backward(float* dx, const float* dout, const float* x, int64_t n) {
  parallel_ranges(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) dx[i] = x[i] > 0.f ? dout[i] : 0.f;
  });
}

void tanh_forward(float* out, const float* x, int64_t n) {
  parallel_ranges(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) out[i] = float(std::tanh(double(x[i])));
  });
}

void tanh_backward(float* dx, const float* dout, const float* out, int64_t n) {
  parallel_ranges(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) dx[i] = float(double(dout[i]) * (1.0 - double(out[i]) * double(out[i])));
  });
}

// tanh form ("gelu_pytorch_tanh"): 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))).
// erf form ("gelu"):               0.5·x·(1 + erf(x/√2)); d/dx = Φ(x) + x·φ(x).
void gelu_forward(float* out, const float* x, int64_t n, bool tanh_approx) {
  if (tanh_approx) {
    const auto loop = pointwise().gelu_tanh_forward;
    parallel_ranges(n, [&](int64_t b, int64_t e) { loop(out + b, x + b, e - b); });
    return;
  }
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) out[i] = 0.5f * x[i] * (1.f + std::erf(x[i] * kInvSqrt2));
}

void gelu_backward(float* dx, const float* dout, const float* x, int64_t n, bool tanh_approx) {
  if (tanh_approx) {
    const auto loop = pointwise().gelu_tanh_backward;
    parallel_ranges(n, [&](int64_t b, int64_t e) { loop(dx + b, dout + b, x + b, e - b); });
    return;
  }
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float v = x[i];
    dx[i] = dout[i] * (0.5f * (1.f + std::erf(v * kInvSqrt2)) + v * std::exp(-0.5f * v * v) * kInvSqrt2Pi);
  }
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  const auto loop = pointwise().swiglu_forward;
  parallel_ranges(n, [&](int64_t b, int64_t e) { loop(out + b, gate + b, up + b, e - b); });
}

// dgate may alias gate and dup may alias up (not dgate and dup: the op layer refuses that).
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  const auto loop = pointwise().swiglu_backward;
  parallel_ranges(n, [&](int64_t b, int64_t e) { loop(dgate + b, dup + b, dout + b, gate + b, up + b, e - b); });
}

}  // namespace pk::cpu
