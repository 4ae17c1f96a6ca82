// RMSNorm (Llama) and LayerNorm, each forward beside its backward. x, out, dout, dx: [N, C]
// row-major; w, b, dw, db: [C]; rstd, mean: [N]. Row sums are taken in double: a float sum
// over C = 8192 squares can lose more than the 1e-5 the tests allow.
//
// The weight gradients sum over all N rows. Rather than per-thread partial buffers (whose
// order, and so whose rounding, depends on the thread count), a separate pass gives each
// thread a block of columns and walks the rows in order: the result is the same at any thread
// count. That pass runs first, so dx may alias dout.
#include <cmath>

#include "grain.h"
#include "peftkit/kernels.h"

namespace pk::cpu {

namespace {
constexpr int64_t kColBlock = 128;  // columns per task in the weight-gradient pass

inline int64_t col_blocks(int64_t C) { return (C + kColBlock - 1) / kColBlock; }
}  // namespace

// ---- RMSNorm: out = x · rstd · w, rstd = 1/sqrt(mean(x²) + eps) ------------------------------
// The product is formed as (x·rstd)·w, the order Hugging Face's LlamaRMSNorm uses.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N, int64_t C, float eps) {
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const float* xr = x + n * C;
    float* o = out + n * C;
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < C; j++) ss += double(xr[j]) * double(xr[j]);
    const float r = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
    rstd[n] = r;
#pragma omp simd
    for (int64_t j = 0; j < C; j++) o[j] = (xr[j] * r) * w[j];
  }
}

// With r = rstd[n] and g = dout ⊙ w:  dx = r·g - (r³/C)·(g·x)·x ;  dw += Σ_n dout ⊙ x·r.
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd,
                      int64_t N, int64_t C) {
  if (dw) {
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(static)
    for (int64_t blk = 0; blk < col_blocks(C); blk++) {
      const int64_t c0 = blk * kColBlock, width = C - c0 < kColBlock ? C - c0 : kColBlock;
      double acc[kColBlock] = {};
      for (int64_t n = 0; n < N; n++) {
        const float* d = dout + n * C + c0;
        const float* xr = x + n * C + c0;
        const float r = rstd[n];
#pragma omp simd
        for (int64_t j = 0; j < width; j++) acc[j] += double(d[j] * (xr[j] * r));
      }
      for (int64_t j = 0; j < width; j++) dw[c0 + j] += float(acc[j]);
    }
  }
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const float* d = dout + n * C;
    const float* xr = x + n * C;
    float* g = dx + n * C;
    double dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < C; j++) dot += double(d[j] * w[j]) * double(xr[j]);
    const float r = rstd[n];
    const float coef = float(double(r) * double(r) * double(r) * dot / double(C));
#pragma omp simd
    for (int64_t j = 0; j < C; j++) g[j] = r * (d[j] * w[j]) - coef * xr[j];
  }
}

// ---- LayerNorm: out = (x - mean)·rstd·w + b, rstd = 1/sqrt(var + eps) ------------------------
// The variance is taken around the mean in a second pass (never E[x²] - mean², which cancels).
void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b,
                       int64_t N, int64_t C, float eps) {
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const float* xr = x + n * C;
    float* o = out + n * C;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < C; j++) s += double(xr[j]);
    const double mu = s / double(C);
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < C; j++) ss += (double(xr[j]) - mu) * (double(xr[j]) - mu);
    const float m = float(mu), r = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
    mean[n] = m;
    rstd[n] = r;
    if (b) {
#pragma omp simd
      for (int64_t j = 0; j < C; j++) o[j] = (xr[j] - m) * r * w[j] + b[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < C; j++) o[j] = (xr[j] - m) * r * w[j];
    }
  }
}

// With x̂ = (x - mean)·rstd and g = dout ⊙ w:  dx = rstd·(g - mean(g) - x̂·mean(g ⊙ x̂));
// dw += Σ_n dout ⊙ x̂ ; db += Σ_n dout. dw and db may each be null (frozen or absent).
void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                        const float* mean, const float* rstd, int64_t N, int64_t C) {
  if (dw || db) {
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(static)
    for (int64_t blk = 0; blk < col_blocks(C); blk++) {
      const int64_t c0 = blk * kColBlock, width = C - c0 < kColBlock ? C - c0 : kColBlock;
      double acc_w[kColBlock] = {}, acc_b[kColBlock] = {};
      for (int64_t n = 0; n < N; n++) {
        const float* d = dout + n * C + c0;
        const float* xr = x + n * C + c0;
        const float m = mean[n], r = rstd[n];
#pragma omp simd
        for (int64_t j = 0; j < width; j++) {
          acc_w[j] += double(d[j] * ((xr[j] - m) * r));
          acc_b[j] += double(d[j]);
        }
      }
      if (dw)
        for (int64_t j = 0; j < width; j++) dw[c0 + j] += float(acc_w[j]);
      if (db)
        for (int64_t j = 0; j < width; j++) db[c0 + j] += float(acc_b[j]);
    }
  }
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const float* d = dout + n * C;
    const float* xr = x + n * C;
    float* g = dx + n * C;
    const float m = mean[n], r = rstd[n];
    double sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int64_t j = 0; j < C; j++) {
      const float gj = d[j] * w[j];
      sum_g += double(gj);
      sum_gx += double(gj) * double((xr[j] - m) * r);
    }
    const float mean_g = float(sum_g / double(C)), mean_gx = float(sum_gx / double(C));
#pragma omp simd
    for (int64_t j = 0; j < C; j++) g[j] = r * ((d[j] * w[j] - mean_g) - ((xr[j] - m) * r) * mean_gx);
  }
}

}  // namespace pk::cpu
