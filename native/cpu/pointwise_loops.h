// The loops of PointwiseTable, included once per ISA (pointwise.cc, pointwise_avx2.cc,
// pointwise_avx512.cc). Everything here is in an anonymous namespace and calls no std:: or
// libm function (memcpy is the compiler's builtin), so each ISA's object file has its own
// copies and none compiled with wide instructions can be linked into another path.
//
// Written for GCC's auto-vectorizer: libm's expf does not vectorize without -ffast-math, so
// e^x is computed here; and selects are integer bit masks, because float compares are not
// if-converted under the default -ftrapping-math.
#pragma once
#include <cstdint>

#include "peftkit/dropout_rng.h"
#include "pointwise_table.h"

namespace pk::cpu {
namespace {

inline uint32_t bits_of(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}

inline float float_of(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// mask ? a : b, for a mask of all ones or all zeros.
inline float pick(uint32_t mask, float a, float b) { return float_of((bits_of(a) & mask) | (bits_of(b) & ~mask)); }

inline float neg_abs(float x) { return float_of(bits_of(x) | 0x80000000u); }

#include "exp_approx.h"

// σ(x) = 1/(1 + e^-x) from e = e^-|x|, so nothing overflows: 1/(1 + e) for x >= 0, e/(1 + e) below.
inline float sigmoid(float x) {
  const float e = exp_nonpositive(neg_abs(x));
  const float s = 1.f / (1.f + e);
  const uint32_t negative = uint32_t(int32_t(bits_of(x)) >> 31);
  return pick(negative, e * s, s);
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;  // the tanh-GELU constants
constexpr float kGeluCubic = 0.044715f;

// SiLU: x·σ(x); d/dx = σ(x)·(1 + x·(1 - σ(x))).
void silu_forward_loop(float* out, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * sigmoid(x[i]);
}

void silu_backward_loop(float* dx, const float* dout, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const float v = x[i], s = sigmoid(v);
    dx[i] = dout[i] * s * (1.f + v * (1.f - s));
  }
}

// tanh-GELU: 0.5·x·(1 + tanh(u)) with u = sqrt(2/π)·(x + 0.044715·x³) is x·σ(2u); in that form
// the negative tail, where 1 + tanh(u) cancels, keeps its relative accuracy.
// d/dx = σ(2u) + x·σ(2u)·(1 - σ(2u))·2u', u' = sqrt(2/π)·(1 + 3·0.044715·x²).
void gelu_tanh_forward_loop(float* out, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const float v = x[i];
    out[i] = v * sigmoid(2.f * kSqrt2OverPi * (v + kGeluCubic * v * v * v));
  }
}

void gelu_tanh_backward_loop(float* dx, const float* dout, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const float v = x[i];
    const float s = sigmoid(2.f * kSqrt2OverPi * (v + kGeluCubic * v * v * v));
    const float du2 = 2.f * kSqrt2OverPi * (1.f + 3.f * kGeluCubic * v * v);
    dx[i] = dout[i] * (s + v * s * (1.f - s) * du2);
  }
}

// SwiGLU: out = silu(gate)·up; dgate = dout·up·silu'(gate), dup = dout·silu(gate).
void swiglu_forward_loop(float* out, const float* gate, const float* up, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

void swiglu_backward_loop(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                          int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i], u = up[i], d = dout[i];
    const float s = sigmoid(g);
    dgate[i] = d * u * s * (1.f + g * (1.f - s));
    dup[i] = d * g * s;
  }
}

// The mask is integer arithmetic and one exact float compare, so every ISA (and CUDA) draws
// the same bits; a kept value is one f32 product, so every ISA gives the same values too.
void dropout_loop(float* out, const float* in, int64_t n, float p, uint64_t key, uint64_t first_index, float scale) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const uint32_t keep = dropout_keep(key, first_index + uint64_t(i), p) ? 0xFFFFFFFFu : 0u;
    out[i] = pick(keep, in[i] * scale, 0.f);
  }
}

// The cross-entropy's passes over a row of logits (cross_entropy.cc): on the portable path
// e^x is a 4-wide SSE loop, and these passes were ~2% of a SmolLM2-135M training step.
float max_loop(const float* x, int64_t n) {
  float m = -__builtin_inff();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

float exp_shifted_sum_loop(float* out, const float* x, int64_t n, float m) {
  float s = 0.f;
  if (out) {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) {
      const float e = exp_nonpositive(x[i] - m);
      out[i] = e;
      s += e;
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += exp_nonpositive(x[i] - m);
  }
  return s;
}

void scale_loop(float* x, int64_t n, float k) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) x[i] *= k;
}

constexpr PointwiseTable kPointwiseLoops{silu_forward_loop,       silu_backward_loop,   gelu_tanh_forward_loop,
                                         gelu_tanh_backward_loop, swiglu_forward_loop,  swiglu_backward_loop,
                                         dropout_loop,            max_loop,             exp_shifted_sum_loop,
                                         scale_loop};

}  // namespace
}  // namespace pk::cpu
