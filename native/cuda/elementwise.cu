// Elementwise kernels without a backward of their own: residual add, axpy, dtype casts.
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
// Grid-stride loops: out may alias an input because each element is read before it is
// written, by the same thread.
__global__ void add_kernel(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

__global__ void copy_cols_kernel(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows,
                                 int64_t width) {
  const int64_t n = rows * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, c = i % width;
    dst[r * ld_dst + c] = src[r * ld_src + c];
  }
}

__global__ void keep_masked_kernel(float* x, const uint8_t* keep, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (!keep[i]) x[i] = 0.f;
}

__global__ void axpy_kernel(float* y, const float* x, float a, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = fmaf(a, x[i], y[i]);
}

__global__ void f32_to_bf16_kernel(uint16_t* out, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = f32_to_bf16_bits(x[i]);
}

__global__ void bf16_to_f32_kernel(float* out, const uint16_t* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = bf16_bits_to_f32(x[i]);
}
}  // namespace

void add(float* out, const float* a, const float* b, int64_t n) {
  if (n == 0) return;
  add_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(out, a, b, n);
  check_launch("add");
}

void axpy(float* y, const float* x, float a, int64_t n) {
  if (n == 0) return;
  axpy_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(y, x, a, n);
  check_launch("axpy");
}

void copy_cols(float* dst, int64_t ld_dst, int64_t dst_col, const float* src, int64_t ld_src, int64_t src_col,
               int64_t rows, int64_t width) {
  if (rows * width == 0) return;
  copy_cols_kernel<<<elt_blocks(rows * width), kEltThreads, 0, stream()>>>(dst + dst_col, ld_dst, src + src_col, ld_src,
                                                                           rows, width);
  check_launch("copy_cols");
}

void keep_masked(float* x, const uint8_t* keep, int64_t n) {
  if (n == 0) return;
  keep_masked_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(x, keep, n);
  check_launch("keep_masked");
}

void cast_f32_to_bf16(bf16* out, const float* x, int64_t n) {
  if (n == 0) return;
  f32_to_bf16_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(out, x, n);
  check_launch("cast_f32_to_bf16");
}

void cast_bf16_to_f32(float* out, const bf16* x, int64_t n) {
  if (n == 0) return;
  bf16_to_f32_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(out, x, n);
  check_launch("cast_bf16_to_f32");
}

}  // namespace pk::cuda
