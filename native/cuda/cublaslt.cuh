// cuBLASLt, loaded at run time (cublaslt.cu): the few declarations of cublasLt.h this engine
// uses, so that the build needs no cuBLAS headers or libraries (the toolkit CI builds with has
// none). Values as NVIDIA's cublasLt.h, library_types.h and cublas_api.h define them (cuBLAS
// documentation, "Using the cuBLASLt API": cublasLtMatmul, cublasLtMatmulAlgoGetHeuristic,
// cublasLtMatmulDescAttributes_t, cublasLtMatmulPreferenceAttributes_t). Internal to native/cuda.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "peftkit/kernels.h"

namespace pk::cuda::lt {

using Status = int;  // cublasStatus_t; CUBLAS_STATUS_SUCCESS = 0
using Handle = void*;
using MatmulDesc = void*;
using Layout = void*;
using Preference = void*;
struct Algo {
  uint64_t data[8];
};
struct HeuristicResult {
  Algo algo;
  size_t workspace_size;
  Status state;
  float waves_count;
  int reserved[4];
};

constexpr Status kSuccess = 0;
constexpr int32_t kR32F = 0, kR16BF = 14;                   // cudaDataType_t CUDA_R_32F, CUDA_R_16BF
constexpr int32_t kCompute32F = 68;                         // cublasComputeType_t CUBLAS_COMPUTE_32F
constexpr int32_t kOpN = 0, kOpT = 1;                       // cublasOperation_t
constexpr int32_t kDescTransA = 3, kDescTransB = 4;         // cublasLtMatmulDescAttributes_t
constexpr int32_t kPrefMaxWorkspace = 1, kPrefAlignA = 5;   // cublasLtMatmulPreferenceAttributes_t (A..D: 5..8)

// The entry points, as cublasLt.h declares them (enums passed as int32_t, descriptors as void*).
struct Api {
  Status (*create)(Handle*);
  Status (*matmul_desc_create)(MatmulDesc*, int32_t compute_type, int32_t scale_type);
  Status (*matmul_desc_set)(MatmulDesc, int32_t attr, const void* buf, size_t bytes);
  Status (*layout_create)(Layout*, int32_t type, uint64_t rows, uint64_t cols, int64_t ld);
  Status (*preference_create)(Preference*);
  Status (*preference_set)(Preference, int32_t attr, const void* buf, size_t bytes);
  Status (*preference_destroy)(Preference);
  Status (*heuristic)(Handle, MatmulDesc, Layout a, Layout b, Layout c, Layout d, Preference, int requested,
                      HeuristicResult* results, int* returned);
  Status (*matmul)(Handle, MatmulDesc, const void* alpha, const void* A, Layout, const void* B, Layout,
                   const void* beta, const void* C, Layout, void* D, Layout, const Algo*, void* workspace,
                   size_t workspace_bytes, cudaStream_t);
};

// The loaded library (null when absent or turned off by PEFTKIT_CUBLASLT=0).
const Api* api();
// Its file name, or "" when none is in use.
const char* library();
// Replaces the library with `a` (null: none) for this process: the emulator's checks install a
// CPU stand-in that follows the documented semantics, so the mapping below runs without a GPU.
void install_for_test(const Api* a, const char* name);

// C = alpha·op(A)·op(B) + beta·C through cuBLASLt when it is loaded and takes these operands
// (both bf16 values — f32 marked round_bf16 is rounded into a bf16 copy first — or both exact
// f32 with an f32 C). False when it does not: the caller runs its own kernels.
bool gemm(int64_t M, int64_t N, int64_t K, float alpha, const MatRef& A, const MatRef& B, float beta, void* C,
          DType cdtype, int64_t ldc);

}  // namespace pk::cuda::lt
