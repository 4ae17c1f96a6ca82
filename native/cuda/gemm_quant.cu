// The quantized-weight GEMM on the GPU: W is decoded a chunk of rows at a time by the quant.cu
// kernels into a stream-ordered temporary, and the GEMM runs on each chunk. The full-precision W
// never exists whole (a chunk is at most 16 MiB), and the values multiplied are exactly the CPU's
// dequantized ones: f32 for f32 compute; for bf16 compute (W.round_bf16) their bf16 roundings,
// decoded straight into a bf16 chunk, so that with A also bf16 the product takes the tensor cores
// (gemm.cu). A decode inside the GEMM's tile loads is left for later.
#include <algorithm>
#include <numeric>

#include "common.cuh"
#include "gemm.cuh"
#include "gemm_quant.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {

constexpr int64_t kChunkBytes = int64_t(16) << 20;

// The chunk's element type: bf16 compute multiplies bf16 roundings, so it stores them.
DType chunk_dtype(const QuantWeight& W) { return W.round_bf16 ? DType::BF16 : DType::F32; }

// Decodes rows [r0, r0 + rows) of W into w[rows, W.cols] (of chunk_dtype(W)).
void dequantize_rows(void* w, const QuantWeight& W, int64_t r0, int64_t rows) {
  const int64_t e0 = r0 * W.cols, n = rows * W.cols;
  const DType dt = chunk_dtype(W);
  if (W.format == QuantFormat::INT8) {
    dequantize_int8_rowwise(w, dt, static_cast<const int8_t*>(W.codes) + e0, W.scales + r0, rows, W.cols);
    return;
  }
  // e0 is a multiple of the block size (chunk_rows below), so of 2: whole bytes, whole blocks.
  dequantize_4bit(w, dt, static_cast<const uint8_t*>(W.codes) + e0 / 2, W.scales + e0 / W.blocksize, n,
                  W.blocksize, W.format == QuantFormat::FP4 ? Quant4Type::FP4 : Quant4Type::NF4);
}

// Rows per chunk: as many as fit chunk_elems, at least one step, a multiple of the step that
// keeps 4-bit chunks starting on a block.
int64_t chunk_rows(const QuantWeight& W, int64_t chunk_elems) {
  const int64_t step = W.format == QuantFormat::INT8 ? 1 : W.blocksize / std::gcd(W.cols, W.blocksize);
  const int64_t fit = chunk_elems / W.cols / step * step;
  return fit > step ? fit : step;
}

// op(A) with its first k0 columns skipped.
MatRef skip_columns(MatRef A, int64_t k0) {
  const int64_t elem = A.dtype == DType::F32 ? 4 : 2, offset = A.trans ? k0 * A.ld : k0;
  A.data = static_cast<const char*>(A.data) + offset * elem;
  return A;
}

}  // namespace

void gemm_quant_chunked(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, QuantWeight W, bool w_trans, float beta,
                        float* C, int64_t ldc, int64_t chunk_elems) {
  if (M <= 0 || N <= 0) return;
  if (W.rows * W.cols == 0) return gemm(M, N, K, alpha, A, operand(static_cast<const float*>(nullptr), 1), beta, C, DType::F32, ldc);
  const int64_t rows = chunk_rows(W, chunk_elems);
  const DType dt = chunk_dtype(W);
  const size_t elem = dt == DType::F32 ? 4 : 2;
  void* w = nullptr;
  check(cudaMallocAsync(&w, size_t(std::min(rows, W.rows) * W.cols) * elem, stream()), "gemm_quant alloc");
  // Freed on the way out, also when a launch below fails and check() throws.
  struct Release {
    void* p;
    ~Release() { cudaFreeAsync(p, stream()); }
  } release{w};
  for (int64_t r0 = 0; r0 < W.rows; r0 += rows) {
    const int64_t nr = std::min(rows, W.rows - r0);
    dequantize_rows(w, W, r0, nr);
    const MatRef wt = operand(w, dt, W.cols, w_trans);
    if (w_trans)  // W[N,K]: rows r0.. are C's columns r0..
      gemm(M, nr, K, alpha, A, wt, beta, C + r0, DType::F32, ldc);
    else  // W[K,N]: rows r0.. are the reduction's k0..; the first chunk applies beta, the rest add
      gemm(M, N, nr, alpha, skip_columns(A, r0), wt, r0 == 0 ? beta : 1.f, C, DType::F32, ldc);
  }
}

void gemm_quant(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, QuantWeight W, bool w_trans, float beta,
                float* C, int64_t ldc) {
  gemm_quant_chunked(M, N, K, alpha, A, W, w_trans, beta, C, ldc, kChunkBytes / (W.round_bf16 ? 2 : 4));
}

}  // namespace pk::cuda
