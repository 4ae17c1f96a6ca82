// For CUDA kernels built from GEMMs (lora, linear_cross_entropy): operand helpers and an f32
// launcher that either overwrites C or adds into it. Internal to native/cuda.
#pragma once
#include "peftkit/kernels.h"

namespace pk::cuda {

// A matrix operand on the device: element (i, j) of op(M) is data[i*ld + j], or data[j*ld + i]
// when trans.
inline MatRef operand(const void* data, DType dtype, int64_t ld, bool trans = false) {
  MatRef m;
  m.data = data;
  m.dtype = dtype;
  m.ld = ld;
  m.trans = trans;
  return m;
}
inline MatRef operand(const float* data, int64_t ld, bool trans = false) {
  return operand(data, DType::F32, ld, trans);
}

// C[M,N] (f32, leading dimension ldc) = alpha·op(A)·op(B), or C += alpha·op(A)·op(B) when
// accumulate.
inline void gemm_f32(float* C, int64_t ldc, MatRef A, MatRef B, int64_t M, int64_t N, int64_t K, float alpha,
                     bool accumulate) {
  gemm(M, N, K, alpha, A, B, accumulate ? 1.f : 0.f, C, DType::F32, ldc);
}

}  // namespace pk::cuda
