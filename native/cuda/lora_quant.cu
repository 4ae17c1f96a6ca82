// QLoRA's LoRA on the GPU: W is dequantized by the quant.cu kernels into a stream-ordered
// temporary f32 buffer (as gemm_quant.cu does), then the f32 LoRA of lora.cu runs on it. Exact
// (the same dequantized values as the CPU); a fused per-tile dequantization is left for later.
// bf16 compute: lora.cu rounds the f32 temporary like any f32 W.
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
// The dequantized W [rows, cols] f32 in a temporary the caller frees with release().
float* dequantize_temp(const QuantWeight& W) {
  const int64_t n = W.rows * W.cols;
  float* w = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&w), size_t(n > 0 ? n : 1) * sizeof(float), stream()),
        "lora_quant alloc");
  if (n == 0) return w;
  if (W.format == QuantFormat::INT8)
    dequantize_int8_rowwise(w, DType::F32, static_cast<const int8_t*>(W.codes), W.scales, W.rows, W.cols);
  else
    dequantize_4bit(w, DType::F32, static_cast<const uint8_t*>(W.codes), W.scales, n, W.blocksize,
                    W.format == QuantFormat::FP4 ? Quant4Type::FP4 : Quant4Type::NF4);
  return w;
}

void release(float* w) { check(cudaFreeAsync(w, stream()), "lora_quant free"); }
}  // namespace

void lora_forward_quant(float* Y, float* XA, const float* X, const float* Xa, QuantWeight W, const float* A,
                        const float* B, const float* bias, float s, int64_t M, int64_t N, int64_t K, int64_t r,
                        Compute compute) {
  float* w = dequantize_temp(W);
  lora_forward(Y, XA, X, Xa, w, DType::F32, A, B, bias, s, M, N, K, r, compute);
  release(w);
}

void lora_backward_quant(float* dX, float* dXa, float* dA, float* dB, const float* dY, const float* Xa,
                         const float* XA, QuantWeight W, const float* A, const float* B, float s, int64_t M,
                         int64_t N, int64_t K, int64_t r, float* scratch, Compute compute) {
  float* w = dequantize_temp(W);
  lora_backward(dX, dXa, dA, dB, dY, Xa, XA, w, DType::F32, A, B, s, M, N, K, r, scratch, compute);
  release(w);
}

}  // namespace pk::cuda
