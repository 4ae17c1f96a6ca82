// CPU-internal: a quantized frozen weight as a GEMM operand, for kernels that put it in a
// gemm_panels term next to f32 terms (QLoRA's fused LoRA).
#pragma once
#include "gemm.h"
#include "peftkit/kernels.h"

namespace pk::cpu {

// op(W) as a K×X panel source that dequantizes while it packs: trans: X(k, x) = W[x, k] (the
// forward X·Wᵀ); else X(k, x) = W[k, x] (the input gradient dY·W). Packed values are exactly
// what dequantize_4bit / dequantize_int8_rowwise store. The source points at *w, which must
// outlive it.
PanelSource quant_weight_source(const QuantWeight* w, bool trans);

}  // namespace pk::cpu
