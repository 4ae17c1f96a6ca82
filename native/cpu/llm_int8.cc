// LLM.int8 (bitsandbytes' MatMul8bitLt forward) on the CPU: activations quantized row by row to
// int8 with their outlier columns set aside, the integer product of activation and weight codes,
// scaled by both absmaxes, plus the outlier columns multiplied in f32 by the dequantized weight.
//
// The integer product runs through the blocked f32 GEMM with both operands packed as exact f32
// integers (kernels.h: every partial sum of <= kLlmInt8ExactK int8 products is exact in f32), one
// K-chunk of 1024 at a time, chunks summed in int32: the result is the exact int32 sum
// bitsandbytes' igemm computes, on every ISA and thread count.
//
// Shapes: X, Xa [M,K]; W [N,K] int8 (CB, SCB [N]); A [r,K]; B [N,r]; Y [M,N]; XA [M,r].
#include <algorithm>
#include <cmath>

#include "gemm.h"
#include "grain.h"
#include "peftkit/kernels.h"
#include "peftkit/parallel.h"

namespace pk::cpu {

namespace {

// bitsandbytes' dequantization constants: int8_vectorwise_dequant multiplies by f32(1/127);
// kdequant_mm_int32_fp16 by 6.200012e-05f, which is f32(1/(127·127)).
constexpr float kInv127 = 1.f / 127.f;
constexpr float kInv127Sq = 1.f / (127.f * 127.f);

// Round half to even for |v| < 2^22 in the default rounding mode: adding 1.5·2^23 moves v where
// the f32 spacing is 1, so the addition itself rounds (to even), and the subtraction is exact.
// Vectorizes, unlike nearbyint without SSE4.1. NaN stays NaN.
inline float round_half_even(float v) {
  const float magic = 12582912.f;
  return (v + magic) - magic;
}

// An int8 matrix C [rows, ld] seen as the K×X operand X(k, x) = C[x, k] (activation codes as
// op(A)ᵀ, weight codes as Wᵀ), packed as exact f32 integers.
struct CodesCtx {
  const int8_t* codes;
  int64_t ld;
};

// A panel's columns nx..width are zero (PanelSource's contract).
void zero_columns(float* dst, int64_t width, int64_t kc, int64_t nx) {
  for (int64_t k = 0; k < kc; k++)
    for (int64_t x = nx; x < width; x++) dst[k * width + x] = 0.f;
}

void pack_codes(float* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, float scale,
                const void* ctx) {
  const CodesCtx& c = *static_cast<const CodesCtx*>(ctx);
  for (int64_t x = 0; x < nx; x++) {
    const int8_t* row = c.codes + (x0 + x) * c.ld + k0;
    for (int64_t k = 0; k < kc; k++) dst[k * width + x] = scale * float(row[k]);
  }
  zero_columns(dst, width, kc, nx);
}

// The outlier columns of a row-major matrix [rows, ld] as a K×X operand X(k, x) = M[x, cols[k]]:
// f32 activations (scb null), or the int8 weight dequantized as dequantize_int8_rowwise does.
struct GatherCtx {
  const void* data;
  const float* scb;  // null: data is f32; else data is int8 CB and these are its row scales
  int64_t ld;
  const int32_t* cols;
};

void pack_gather(float* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, float scale,
                 const void* ctx) {
  const GatherCtx& g = *static_cast<const GatherCtx*>(ctx);
  const int32_t* cols = g.cols + k0;
  for (int64_t x = 0; x < nx; x++) {
    if (g.scb) {
      const int8_t* row = static_cast<const int8_t*>(g.data) + (x0 + x) * g.ld;
      const float sr = g.scb[x0 + x];
      for (int64_t k = 0; k < kc; k++) dst[k * width + x] = scale * ((float(row[cols[k]]) * sr) * kInv127);
    } else {
      const float* row = static_cast<const float*>(g.data) + (x0 + x) * g.ld;
      for (int64_t k = 0; k < kc; k++) dst[k * width + x] = scale * row[cols[k]];
    }
  }
  zero_columns(dst, width, kc, nx);
}

// A source whose panels `pack` writes from `ctx` (which must outlive it).
PanelSource panel_source(decltype(PanelSource::pack) pack, const void* ctx) {
  PanelSource s;
  s.pack = pack;
  s.ctx = ctx;
  return s;
}

MatRef f32(const float* p, int64_t ld, bool trans = false) { return MatRef{p, DType::F32, ld, trans}; }

}  // namespace

void quantize_int8_vectorwise(int8_t* ca, float* sca, uint8_t* outlier_cols, const float* x, int64_t rows,
                              int64_t cols, float threshold) {
  const bool decompose = threshold > 0.f;
  // Outlier columns first, by column stripes (each stripe owned by one thread, rows walked in order).
  constexpr int64_t kStripe = 256;
  const int64_t stripes = (cols + kStripe - 1) / kStripe;
#pragma omp parallel for num_threads(threads_for(rows * cols)) schedule(static)
  for (int64_t st = 0; st < stripes; st++) {
    const int64_t c0 = st * kStripe, c1 = std::min(cols, c0 + kStripe);
    for (int64_t c = c0; c < c1; c++) outlier_cols[c] = 0;
    if (!decompose) continue;
    for (int64_t r = 0; r < rows; r++) {
      const float* row = x + r * cols;
      for (int64_t c = c0; c < c1; c++)
        if (!(std::fabs(row[c]) < threshold)) outlier_cols[c] = 1;
    }
  }

#pragma omp parallel for num_threads(threads_for(rows * cols)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float* row = x + r * cols;
    int8_t* out = ca + r * cols;
    float m = 0.f;
    bool nan = false;
    for (int64_t c = 0; c < cols; c++) {
      const float a = std::fabs(row[c]);
      if (decompose) {
        if (a < threshold && a > m) m = a;  // an outlier (or NaN) does not set the scale
      } else {
        m = a > m ? a : m;
        nan |= a != a;
      }
    }
    if (nan) m = NAN;
    sca[r] = m;
    const float scale = 127.f / m;
    for (int64_t c = 0; c < cols; c++) {
      // |x·scale| <= 127·(1 + 2^-23) for x counted in m, so the rounded value fits an int8.
      const float v = round_half_even(row[c] * scale);
      out[c] = outlier_cols[c] || v != v ? int8_t(0) : int8_t(v);
    }
  }
}

void llm_int8_forward(float* Y, float* XA, const float* X, const float* Xa, QuantWeight W, float threshold,
                      const float* A, const float* B, const float* bias, float s, int64_t M, int64_t N, int64_t K,
                      int64_t r, LlmInt8Scratch scratch) {
  if (M <= 0 || N <= 0) return;
  if (r > 0) gemm(M, r, K, 1.f, f32(Xa, K), f32(A, K, /*trans=*/true), 0.f, XA, DType::F32, r);  // XA = Xa·Aᵀ

  quantize_int8_vectorwise(scratch.ca, scratch.sca, scratch.outlier, X, M, K, threshold);
  int64_t n_out = 0;
  for (int64_t k = 0; k < K; k++)
    if (scratch.outlier[k]) scratch.cols[n_out++] = int32_t(k);

  // The integer product, K-chunk by K-chunk: Y holds the last chunk's exact sums, acc the earlier ones'.
  const int8_t* cb = static_cast<const int8_t*>(W.codes);
  const int64_t chunks = (K + kLlmInt8ExactK - 1) / kLlmInt8ExactK;
  for (int64_t ch = 0; ch < chunks; ch++) {
    const int64_t k0 = ch * kLlmInt8ExactK, kc = std::min(kLlmInt8ExactK, K - k0);
    const CodesCtx a{scratch.ca + k0, K}, b{cb + k0, K};
    const PanelTerm term{panel_source(pack_codes, &a), panel_source(pack_codes, &b), kc, 1.f};
    gemm_panels(M, N, &term, 1, 0.f, Y, DType::F32, N);
    if (ch == chunks - 1) break;
    int32_t* acc = scratch.acc;
#pragma omp parallel for num_threads(threads_for(M * N)) schedule(static)
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++)
        acc[i * N + j] = (ch == 0 ? 0 : acc[i * N + j]) + int32_t(Y[i * N + j]);
  }

  // Dequantize as kdequant_mm_int32_fp16 does (int32 -> f32, ·row scale, ·column scale, ·1/127²);
  // the bias after it, then the f32 terms on top in one more GEMM pass.
  const float* scb = W.scales;
  const int32_t* acc = chunks > 1 ? scratch.acc : nullptr;
  const float* sca = scratch.sca;
#pragma omp parallel for num_threads(threads_for(M * N)) schedule(static)
  for (int64_t i = 0; i < M; i++) {
    float* y = Y + i * N;
    const float si = sca[i];
    for (int64_t j = 0; j < N; j++) {
      const float total = acc ? float(acc[i * N + j] + int32_t(y[j])) : y[j];
      const float v = ((total * si) * scb[j]) * kInv127Sq;
      y[j] = bias ? v + bias[j] : v;
    }
  }

  const GatherCtx xo{X, nullptr, K, scratch.cols}, wo{cb, scb, K, scratch.cols};
  const MatRef xa_t = f32(XA, r, /*trans=*/true);  // op(XA)ᵀ
  const MatRef b_t = f32(B, r, /*trans=*/true);    // Bᵀ
  PanelTerm terms[2];
  int nterms = 0;
  if (n_out > 0) terms[nterms++] = PanelTerm{panel_source(pack_gather, &xo), panel_source(pack_gather, &wo), n_out, 1.f};  // X_O·Wdq_Oᵀ
  if (r > 0) terms[nterms++] = PanelTerm{matref_source(&xa_t), matref_source(&b_t), r, s};      // s·XA·Bᵀ
  if (nterms > 0) gemm_panels(M, N, terms, nterms, 1.f, Y, DType::F32, N);
}

}  // namespace pk::cpu
