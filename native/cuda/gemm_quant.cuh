// The quantized-weight GEMM's chunked form, for the kernels built on it (lora_quant.cu) and
// for the emulator checks, which run it with chunks small enough that every shape is cut.
// Internal to native/cuda.
#pragma once
#include "peftkit/kernels.h"

namespace pk::cuda {

// gemm_quant (kernels.inc) decoding at most `chunk_elems` weights at a time (rounded to whole
// rows, and for 4-bit to rows that start on a block): a chunk of W's rows is dequantized into a
// stream-ordered f32 temporary and multiplied, then the next chunk reuses it. With w_trans a
// chunk of rows is a slice of C's columns; without, a slice of the reduction (added into C).
void gemm_quant_chunked(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, QuantWeight W, bool w_trans, float beta,
                        float* C, int64_t ldc, int64_t chunk_elems);

}  // namespace pk::cuda
