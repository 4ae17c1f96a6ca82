// QLoRA's fused LoRA on the CPU: lora.cc with the frozen weight quantized. The base term is a
// panel source that decodes W while it packs (gemm_quant.h), so the forward is still ONE pass
// over Y for [X | s·XA]·[W | B]ᵀ and the f32 W never exists in memory. With bf16 compute X is
// rounded and W decoded to rounded bf16 while packed: the base term runs on the bf16 kernel and
// the f32 rank-r term joins each C tile after it, as in lora.cc.
//
// Shapes: X, Xa [M,K]; W [N,K] quantized; A [r,K]; B [N,r]; Y [M,N]; XA [M,r].
#include <cstring>

#include "gemm.h"
#include "gemm_quant.h"
#include "peftkit/kernels.h"
#include "peftkit/parallel.h"

namespace pk::cpu {

namespace {
MatRef f32(const float* p, int64_t ld, bool trans = false) { return MatRef{p, DType::F32, ld, trans}; }

// A term of gemm_panels from an f32 product alpha·op(A)·op(B), as gemm_sum builds it: the A
// source reads op(A)ᵀ. The views are stored by the caller, since sources point at them.
PanelTerm f32_term(const MatRef* a_t, const MatRef* b, int64_t K, float alpha) {
  return PanelTerm{matref_source(a_t), matref_source(b), K, alpha};
}
}  // namespace

void lora_forward_quant(float* Y, float* XA, const float* X, const float* Xa, QuantWeight W, const float* A,
                        const float* B, const float* bias, float s, int64_t M, int64_t N, int64_t K, int64_t r,
                        Compute compute) {
  if (M <= 0) return;
  W.round_bf16 = compute == Compute::BF16;
  // XA[M,r] = Xa·Aᵀ, saved for the backward pass.
  gemm(M, r, K, 1.f, f32(Xa, K), f32(A, K, /*trans=*/true), 0.f, XA, DType::F32, r);

  float beta = 0.f;
  if (bias) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t i = 0; i < M; i++) std::memcpy(Y + i * N, bias, size_t(N) * sizeof(float));
    beta = 1.f;
  }
  const MatRef x_t = with_compute(f32(X, K, /*trans=*/true), compute);  // op(X)ᵀ
  const MatRef xa_t = f32(XA, r, /*trans=*/true);                        // op(XA)ᵀ
  const MatRef b_t = f32(B, r, /*trans=*/true);                          // Bᵀ
  const PanelTerm terms[2] = {
      {matref_source(&x_t), quant_weight_source(&W, /*trans=*/true), K, 1.f},  // X·Wᵀ
      f32_term(&xa_t, &b_t, r, s),                                             // s·XA·Bᵀ
  };
  gemm_panels(M, N, terms, 2, beta, Y, DType::F32, N);
}

void lora_backward_quant(float* dX, float* dXa, float* dA, float* dB, const float* dY, const float* Xa,
                         const float* XA, QuantWeight W, const float* A, const float* B, float s, int64_t M,
                         int64_t N, int64_t K, int64_t r, float* scratch, Compute compute) {
  if (M <= 0) return;
  W.round_bf16 = compute == Compute::BF16;
  // dYB[M,r] = dY·B.
  float* dYB = scratch;
  gemm(M, r, N, 1.f, f32(dY, N), f32(B, r), 0.f, dYB, DType::F32, r);

  const MatRef dy_t = with_compute(f32(dY, N, /*trans=*/true), compute);
  if (dX && !dXa) {
    // Xa is X: [dY | s·dYB]·[W ; A] in one pass over dX.
    const MatRef dyb_t = f32(dYB, r, /*trans=*/true);
    const MatRef a = f32(A, K);
    const PanelTerm terms[2] = {
        {matref_source(&dy_t), quant_weight_source(&W, /*trans=*/false), N, 1.f},  // dY·W
        f32_term(&dyb_t, &a, r, s),                                                // s·dYB·A
    };
    gemm_panels(M, K, terms, 2, 0.f, dX, DType::F32, K);
  } else {
    if (dX) {
      const PanelTerm term{matref_source(&dy_t), quant_weight_source(&W, /*trans=*/false), N, 1.f};
      gemm_panels(M, K, &term, 1, 0.f, dX, DType::F32, K);
    }
    if (dXa) gemm(M, K, r, s, f32(dYB, r), f32(A, K), 0.f, dXa, DType::F32, K);
  }

  // Parameter gradients accumulate (beta = 1).
  gemm(r, K, M, s, f32(dYB, r, /*trans=*/true), f32(Xa, K), 1.f, dA, DType::F32, K);  // dA += s·dYBᵀ·Xa
  gemm(N, r, M, s, f32(dY, N, /*trans=*/true), f32(XA, r), 1.f, dB, DType::F32, r);   // dB += s·dYᵀ·XA
}

}  // namespace pk::cpu
