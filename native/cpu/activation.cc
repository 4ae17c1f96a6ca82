// Activations of the MLP block, elementwise over n values: SiLU, GELU (tanh approximation and
// exact erf) and SwiGLU. Every output may alias its input: each element is read before it is
// written and no element reads another, which is also what lets `omp simd` skip alias checks.
#include <cmath>

#include "grain.h"
#include "peftkit/kernels.h"

namespace pk::cpu {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2/π), the tanh-GELU constant
constexpr float kGeluCubic = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;  // 1/sqrt(2π)

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }
}  // namespace

// ---- SiLU: x·σ(x); d/dx = σ(x)·(1 + x·(1 - σ(x))) -----------------------------------------------
void silu_forward(float* out, const float* x, int64_t n) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * sigmoid(x[i]);
}

void silu_backward(float* dx, const float* dout, const float* x, int64_t n) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float s = sigmoid(x[i]);
    dx[i] = dout[i] * s * (1.f + x[i] * (1.f - s));
  }
}

// ---- GELU ---------------------------------------------------------------------------------------
// tanh form ("gelu_pytorch_tanh"): 0.5·x·(1 + tanh(u)), u = sqrt(2/π)·(x + 0.044715·x³).
// erf form ("gelu"):               0.5·x·(1 + erf(x/√2)).
void gelu_forward(float* out, const float* x, int64_t n, bool tanh_approx) {
  if (tanh_approx) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
    for (int64_t i = 0; i < n; i++) {
      const float v = x[i];
      out[i] = 0.5f * v * (1.f + std::tanh(kSqrt2OverPi * (v + kGeluCubic * v * v * v)));
    }
  } else {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = 0.5f * x[i] * (1.f + std::erf(x[i] * kInvSqrt2));
  }
}

void gelu_backward(float* dx, const float* dout, const float* x, int64_t n, bool tanh_approx) {
  if (tanh_approx) {
    // d/dx = 0.5·(1 + t) + 0.5·x·(1 - t²)·sqrt(2/π)·(1 + 3·0.044715·x²), t = tanh(u)
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
    for (int64_t i = 0; i < n; i++) {
      const float v = x[i];
      const float t = std::tanh(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
      const float du = kSqrt2OverPi * (1.f + 3.f * kGeluCubic * v * v);
      dx[i] = dout[i] * (0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * du);
    }
  } else {
    // d/dx = Φ(x) + x·φ(x) = 0.5·(1 + erf(x/√2)) + x·exp(-x²/2)/sqrt(2π)
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
    for (int64_t i = 0; i < n; i++) {
      const float v = x[i];
      dx[i] = dout[i] * (0.5f * (1.f + std::erf(v * kInvSqrt2)) + v * std::exp(-0.5f * v * v) * kInvSqrt2Pi);
    }
  }
}

// ---- SwiGLU (Llama MLP): out = silu(gate) ⊙ up -----------------------------------------------------
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

// dgate = dout·up·silu'(gate) ; dup = dout·silu(gate). dgate may alias gate and dup may alias up.
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i], u = up[i], d = dout[i];
    const float s = sigmoid(g);
    dgate[i] = d * u * s * (1.f + g * (1.f - s));
    dup[i] = d * g * s;
  }
}

}  // namespace pk::cpu
