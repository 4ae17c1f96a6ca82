// What every emulator check file shares: random inputs, float64 comparison, the failure count.
#pragma once
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "peftkit/kernels.h"

using Vec = std::vector<float>;
using Ref = std::vector<double>;

inline std::mt19937_64 rng(12345);
inline int failures = 0, checks = 0;

inline Vec randn(size_t n, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  Vec v(n);
  for (float& x : v) x = float(d(rng));
  return v;
}
inline Vec poison(size_t n) { return Vec(n, NAN); }
inline Vec round_bf16(const Vec& v) {
  Vec r(v.size());
  for (size_t i = 0; i < v.size(); i++) r[i] = pk::bf16_to_f32(pk::f32_to_bf16(v[i]));
  return r;
}
inline std::vector<pk::bf16> to_bf16(const Vec& v) {
  std::vector<pk::bf16> r(v.size());
  for (size_t i = 0; i < v.size(); i++) r[i] = pk::f32_to_bf16(v[i]);
  return r;
}

template <typename A, typename B>
double rel_err(const A& a, const B& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    if (!std::isfinite(double(a[i])) && std::isfinite(double(ref[i]))) return INFINITY;
    num += (double(a[i]) - double(ref[i])) * (double(a[i]) - double(ref[i]));
    den += double(ref[i]) * double(ref[i]);
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

template <typename A, typename B>
void expect(const std::string& what, const A& a, const B& ref, double tol = 1e-5) {
  checks++;
  const double e = rel_err(a, ref);
  if (!(e <= tol)) {
    failures++;
    printf("FAIL %s: relative error %.3e > %.1e\n", what.c_str(), e, tol);
  }
}
inline void expect_true(const std::string& what, bool ok) {
  checks++;
  if (!ok) {
    failures++;
    printf("FAIL %s\n", what.c_str());
  }
}

// XA = Xa·Aᵀ [M,r] in float64: the low-rank input of every LoRA check.
inline Ref ref_xa(const Vec& Xa, const Vec& A, int64_t M, int64_t K, int64_t r) {
  Ref xa(size_t(M * r));
  for (int64_t i = 0; i < M; i++)
    for (int64_t q = 0; q < r; q++) {
      double acc = 0;
      for (int64_t k = 0; k < K; k++) acc += double(Xa[size_t(i * K + k)]) * A[size_t(q * K + k)];
      xa[size_t(i * r + q)] = acc;
    }
  return xa;
}
