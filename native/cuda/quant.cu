// bitsandbytes formats on the GPU: blockwise 4-bit (NF4/FP4), double quantization of the block
// scales, LLM.int8 rows. The same bytes as the CPU kernels: codes are decided by the shared
// quant_decide.h, and every rounding that matters is spelled with an _rn intrinsic, because
// the build uses --use_fast_math (approximate division, FMA contraction).
#include <cuda_bf16.h>

#include "common.cuh"
#include "peftkit/kernels.h"

#define PK_QUANT_TABLE static __constant__
#define PK_QUANT_FN static __device__ __forceinline__
#include "peftkit/quant_decide.h"

namespace pk::cuda {

namespace {

constexpr int kThreads = 256;

// max |x[i] - offset| over [i0, i1) by the whole thread block (NaN ignored, as on the CPU).
__device__ float block_absmax(const float* x, float offset, int64_t i0, int64_t i1) {
  __shared__ float part[kThreads];
  float m = 0.f;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
    const float a = fabsf(__fsub_rn(x[i], offset));
    if (a > m) m = a;
  }
  part[threadIdx.x] = m;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s && part[threadIdx.x + s] > part[threadIdx.x]) part[threadIdx.x] = part[threadIdx.x + s];
    __syncthreads();
  }
  const float result = part[0];
  __syncthreads();
  return result;
}

__device__ void store(void* out, DType dtype, int64_t i, float v) {
  if (dtype == DType::F32) static_cast<float*>(out)[i] = v;
  else static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v);
}

// One thread block per quantization block; each thread writes whole bytes (two elements).
__global__ void quantize_4bit_kernel(uint8_t* packed, float* absmax, const float* x, int64_t n, int64_t blocksize,
                                     bool nf4) {
  const int64_t i0 = int64_t(blockIdx.x) * blocksize, i1 = n - i0 < blocksize ? n : i0 + blocksize;
  const float m = block_absmax(x, 0.f, i0, i1);
  if (threadIdx.x == 0) absmax[blockIdx.x] = m;
  const float r = m == 0.f ? 0.f : __frcp_rn(m);  // a zero block scales by 0: see kernels.inc
  for (int64_t i = i0 + 2 * int64_t(threadIdx.x); i < i1; i += 2 * int64_t(blockDim.x)) {
    const float a = __fmul_rn(x[i], r), b = i + 1 < i1 ? __fmul_rn(x[i + 1], r) : 0.f;
    const uint8_t hi = nf4 ? quant_codes::nf4_code(a) : quant_codes::fp4_code(a);
    const uint8_t lo = nf4 ? quant_codes::nf4_code(b) : quant_codes::fp4_code(b);
    packed[i / 2] = uint8_t(hi << 4 | lo);
  }
}

__global__ void dequantize_4bit_kernel(void* out, DType dtype, const uint8_t* packed, const float* absmax, int64_t n,
                                       int64_t blocksize, bool nf4) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint8_t byte = packed[i / 2];
  const int c = i % 2 == 0 ? byte >> 4 : byte & 15;
  store(out, dtype, i, __fmul_rn(nf4 ? quant_codes::kNf4[c] : quant_codes::kFp4[c], absmax[i / blocksize]));
}

// One block: per-thread double sums, then a tree; written as f32 once.
__global__ void mean_kernel(float* result, const float* x, int64_t n) {
  __shared__ double part[kThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) *result = n == 0 ? 0.f : float(part[0] / double(n));
}

__global__ void quantize_8bit_dynamic_kernel(uint8_t* q, float* absmax2, const float* x, float offset, int64_t n,
                                             int64_t blocksize) {
  const int64_t i0 = int64_t(blockIdx.x) * blocksize, i1 = n - i0 < blocksize ? n : i0 + blocksize;
  const float m = block_absmax(x, offset, i0, i1);
  if (threadIdx.x == 0) absmax2[blockIdx.x] = m;
  const float r = __frcp_rn(m);  // inf for a zero block, as bitsandbytes: its codes become 0
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x)
    q[i] = quant_codes::dynamic_signed_code(__fmul_rn(__fsub_rn(x[i], offset), r));
}

__global__ void dequantize_8bit_dynamic_kernel(float* out, const uint8_t* q, const float* absmax2, float offset,
                                               int64_t n, int64_t blocksize) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __fadd_rn(__fmul_rn(quant_codes::kDynamicSigned[q[i]], absmax2[i / blocksize]), offset);
}

// One thread block per row.
__global__ void quantize_int8_rowwise_kernel(int8_t* cb, float* scb, const float* w, int64_t cols) {
  const int64_t r = blockIdx.x;
  const float m = block_absmax(w, 0.f, r * cols, (r + 1) * cols);
  if (threadIdx.x == 0) scb[r] = m;
  const float scale = __fdiv_rn(127.f, m);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = __fmul_rn(w[r * cols + c], scale);
    cb[r * cols + c] = v == v ? int8_t(__float2int_rn(v)) : int8_t(0);
  }
}

__global__ void dequantize_int8_rowwise_kernel(void* out, DType dtype, const int8_t* cb, const float* scb,
                                               int64_t rows, int64_t cols) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const float inv127 = __frcp_rn(127.f);  // the f32 nearest 1/127, as bitsandbytes multiplies by
  store(out, dtype, i, __fmul_rn(__fmul_rn(float(cb[i]), scb[i / cols]), inv127));
}

}  // namespace

void quantize_4bit(uint8_t* packed, float* absmax, const float* x, int64_t n, int64_t blocksize, Quant4Type type) {
  if (n == 0) return;
  const unsigned blocks = blocks_for(n, int(blocksize));
  quantize_4bit_kernel<<<blocks, kThreads, 0, stream()>>>(packed, absmax, x, n, blocksize, type == Quant4Type::NF4);
  check_launch("quantize_4bit");
}

void dequantize_4bit(void* out, DType out_dtype, const uint8_t* packed, const float* absmax, int64_t n,
                     int64_t blocksize, Quant4Type type) {
  if (n == 0) return;
  dequantize_4bit_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(out, out_dtype, packed, absmax, n,
                                                                             blocksize, type == Quant4Type::NF4);
  check_launch("dequantize_4bit");
}

float absmax_mean(const float* absmax, int64_t n) {
  float* d = nullptr;
  check(cudaMallocAsync(&d, sizeof(float), stream()), "absmax_mean alloc");
  mean_kernel<<<1, kThreads, 0, stream()>>>(d, absmax, n);
  check_launch("absmax_mean");
  float h = 0.f;
  count_copy(true, sizeof(float));
  check(cudaMemcpyAsync(&h, d, sizeof(float), cudaMemcpyDeviceToHost, stream()), "absmax_mean copy");
  check(cudaFreeAsync(d, stream()), "absmax_mean free");
  check(cudaStreamSynchronize(stream()), "absmax_mean sync");
  return h;
}

void quantize_8bit_dynamic(uint8_t* q, float* absmax2, const float* x, float offset, int64_t n, int64_t blocksize) {
  if (n == 0) return;
  quantize_8bit_dynamic_kernel<<<blocks_for(n, int(blocksize)), kThreads, 0, stream()>>>(q, absmax2, x, offset, n,
                                                                                       blocksize);
  check_launch("quantize_8bit_dynamic");
}

void dequantize_8bit_dynamic(float* out, const uint8_t* q, const float* absmax2, float offset, int64_t n,
                             int64_t blocksize) {
  if (n == 0) return;
  dequantize_8bit_dynamic_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(out, q, absmax2, offset, n,
                                                                                     blocksize);
  check_launch("dequantize_8bit_dynamic");
}

void quantize_int8_rowwise(int8_t* cb, float* scb, const float* w, int64_t rows, int64_t cols) {
  if (rows == 0) return;
  quantize_int8_rowwise_kernel<<<unsigned(rows), kThreads, 0, stream()>>>(cb, scb, w, cols);
  check_launch("quantize_int8_rowwise");
}

void dequantize_int8_rowwise(void* out, DType out_dtype, const int8_t* cb, const float* scb, int64_t rows,
                             int64_t cols) {
  if (rows * cols == 0) return;
  dequantize_int8_rowwise_kernel<<<blocks_for(rows * cols, kThreads), kThreads, 0, stream()>>>(out, out_dtype, cb, scb,
                                                                                              rows, cols);
  check_launch("dequantize_int8_rowwise");
}

}  // namespace pk::cuda
