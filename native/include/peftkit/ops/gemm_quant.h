#pragma once
#include "../kernels.h"
#include "../tensor.h"

namespace pk::ops {

// A quantized frozen Linear weight W[rows, cols] held as tensors (layouts: QuantWeight in
// kernels.h). NF4/FP4: codes u8 [(rows·cols+1)/2], scales f32 absmax [ceil(rows·cols/blocksize)];
// INT8: codes i8 CB (rows·cols elements), scales f32 SCB [rows].
struct QuantWeightTensors {
  QuantFormat format = QuantFormat::NF4;
  Tensor codes, scales;
  int64_t blocksize = 64;
  int64_t rows = 0, cols = 0;
};

// Throws unless the tensors hold a W[rows, cols] of the format (dtypes, sizes, blocksize, one device).
void check_quant_weight(const QuantWeightTensors& W);

// C = alpha·X·op(W) + beta·C, C f32 [M, N], X f32 or bf16 [M, K]: transW: op(W) = Wᵀ with W
// [N, K] (forward); else op(W) = W with W [K, N] (input gradient). Equal to gemm on the
// dequantized W.
// compute BF16: X (if f32) and the dequantized W are read rounded to bf16 (f32 sums).
void gemm_quant(const Tensor& C, const Tensor& X, const QuantWeightTensors& W, bool transW, float alpha, float beta,
                Compute compute);

}  // namespace pk::ops
