// Fused low-rank matmul (LoRA) on the CPU, built on the GEMM entry points of gemm.h.
// The low-rank update is never merged into W: the forward is one GEMM over the concatenated
// K range [X | s·XA]·[W | B]ᵀ (gemm_sum), so a LoRA layer costs the base GEMM plus r/K more
// work, not a second pass over Y.
//
// With bf16 compute the base product's operands are rounded while packed (X, dY, an f32 W):
// the GEMM runs it on the bf16 kernel and adds the f32 low-rank term to each C tile right after
// (gemm.cc's f32 tail), so Y and dX are still written once.
//
// Shapes: X, Xa [M,K]; W [N,K] (f32 or bf16); A [r,K]; B [N,r]; Y [M,N]; XA [M,r].
#include <cstring>

#include "gemm.h"
#include "peftkit/kernels.h"
#include "peftkit/parallel.h"

namespace pk::cpu {

namespace {
MatRef f32(const float* p, int64_t ld, bool trans = false) { return MatRef{p, DType::F32, ld, trans}; }
}  // namespace

void lora_forward(float* Y, float* XA, const float* X, const float* Xa, const void* W, DType w_dtype,
                  const float* A, const float* B, const float* bias, float s, int64_t M, int64_t N,
                  int64_t K, int64_t r, Compute compute) {
  // XA[M,r] = Xa·Aᵀ: small (r columns), and saved for the backward pass (dB needs it).
  gemm(M, r, K, 1.f, f32(Xa, K), f32(A, K, /*trans=*/true), 0.f, XA, DType::F32, r);

  // The bias enters as the initial C of the fused GEMM (beta = 1), so Y is written by one pass.
  float beta = 0.f;
  if (bias) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t i = 0; i < M; i++) std::memcpy(Y + i * N, bias, size_t(N) * sizeof(float));
    beta = 1.f;
  }
  const MatRef x = with_compute(f32(X, K), compute), w = with_compute(MatRef{W, w_dtype, K, /*trans=*/true}, compute);
  const GemmTerm terms[2] = {
      {x, w, K, 1.f},                                 // X·Wᵀ
      {f32(XA, r), f32(B, r, /*trans=*/true), r, s},  // s·XA·Bᵀ
  };
  gemm_sum(M, N, terms, 2, beta, Y, DType::F32, N);
}

void lora_backward(float* dX, float* dXa, float* dA, float* dB, const float* dY, const float* Xa,
                   const float* XA, const void* W, DType w_dtype, const float* A, const float* B,
                   float s, int64_t M, int64_t N, int64_t K, int64_t r, float* scratch, Compute compute) {
  // dYB[M,r] = dY·B: the gradient reaching the low-rank bottleneck (before the scale s).
  float* dYB = scratch;
  gemm(M, r, N, 1.f, f32(dY, N), f32(B, r), 0.f, dYB, DType::F32, r);

  const MatRef dy = with_compute(f32(dY, N), compute), w = with_compute(MatRef{W, w_dtype, K, /*trans=*/false}, compute);
  if (dX && !dXa) {
    // Xa is X: both paths reach dX, fused as [dY | s·dYB]·[W ; A] in one pass over dX.
    const GemmTerm terms[2] = {
        {dy, w, N, 1.f},                 // dY·W
        {f32(dYB, r), f32(A, K), r, s},  // s·dYB·A
    };
    gemm_sum(M, K, terms, 2, 0.f, dX, DType::F32, K);
  } else {
    // Dropout between X and the low-rank path: its gradient goes to dXa for the caller to
    // chain through the dropout backward.
    if (dX) gemm(M, K, N, 1.f, dy, w, 0.f, dX, DType::F32, K);
    if (dXa) gemm(M, K, r, s, f32(dYB, r), f32(A, K), 0.f, dXa, DType::F32, K);
  }

  // Parameter gradients accumulate (beta = 1).
  gemm(r, K, M, s, f32(dYB, r, /*trans=*/true), f32(Xa, K), 1.f, dA, DType::F32, K);  // dA += s·dYBᵀ·Xa
  gemm(N, r, M, s, f32(dY, N, /*trans=*/true), f32(XA, r), 1.f, dB, DType::F32, r);   // dB += s·dYᵀ·XA
}

}  // namespace pk::cpu
