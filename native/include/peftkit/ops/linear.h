#pragma once
#include "../tensor.h"
#include "gemm_quant.h"

namespace pk::ops {

// The frozen weight W [N, K] of a Linear layer, in whichever storage it is kept: dense (f32 or
// bf16, `dense`) or quantized (NF4/FP4/int8, `quant`). An int8 weight may carry LLM.int8's
// outlier threshold (>= 0): its forward product then quantizes the activations too, as
// bitsandbytes' MatMul8bitLt; its backward uses the dequantized weight, as bitsandbytes' does.
struct LinearWeight {
  Tensor dense;
  QuantWeightTensors quant;
  float threshold = -1.f;  // < 0: none
  bool quantized() const { return dense.storage == nullptr; }
};

// The low-rank term of a LoRA-adapted Linear: s·(Xa·Aᵀ)·Bᵀ, A [r, K], B [N, r]; Xa is dropout(X)
// (empty: X itself); XA [..., r] receives Xa·Aᵀ in the forward, and is read back in the backward.
// Absent (A empty): a plain Linear. In the backward, dA += s·(dY·B)ᵀ·Xa and dB += s·dYᵀ·XA; dXa
// (when the forward had dropout) receives s·(dY·B)·A instead of dX.
struct LowRank {
  Tensor A, B, XA, Xa;
  Tensor dA, dB, dXa;
  float s = 1.f;
  bool present() const { return A.storage != nullptr; }
};

// The Linear op, one for every storage: Y [..., N] = X [..., K]·Wᵀ (+ bias [N]) (+ the low-rank
// term), leading dims flattened into M rows, W + s·B·A never formed. compute BF16: the base
// product reads X and W (dequantized) rounded to bf16 with f32 sums; the rank-r products stay f32.
void linear_forward(const Tensor& Y, const Tensor& X, const LinearWeight& W, const Tensor& bias, const LowRank& lr,
                    Compute compute);

// Its gradients for dY [..., N]: dX [..., K] (or empty) = dY·W (+ s·(dY·B)·A unless lr.dXa takes
// it). With a low-rank term lr.dA and lr.dB accumulate, and lr.Xa must be what the forward's
// low-rank path read (X itself when there was no dropout). W gets no gradient.
void linear_backward(const Tensor& dX, const Tensor& dY, const LinearWeight& W, const LowRank& lr, Compute compute);

}  // namespace pk::ops
