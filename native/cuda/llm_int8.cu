// LLM.int8 (bitsandbytes' MatMul8bitLt forward) on the GPU: the activation codes of the CPU
// kernel (every rounding an _rn intrinsic or rintf, since the build uses --use_fast_math), then
// one tiled kernel that sums the int8 products in int32 (exact, like bitsandbytes' igemm) and,
// in the same pass over K, the outlier columns in f32 against the dequantized weight. Simple
// 16×16 tiles, no tensor cores: correct first; an IMMA kernel is left for later.
#include "common.cuh"
#include "gemm.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kTile = 16;
// bitsandbytes' constants: int8_vectorwise_dequant's f32(1/127), kdequant_mm_int32_fp16's
// 6.200012e-05f = f32(1/127²).
constexpr float kInv127 = 1.f / 127.f;
constexpr float kInv127Sq = 1.f / (127.f * 127.f);

// One thread per column, walking the rows: a column is an outlier column when any of its
// elements is not below the threshold (NaN and ±inf included).
__global__ void outlier_cols_kernel(uint8_t* outlier, const float* x, int64_t rows, int64_t cols, float threshold) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x) {
    uint8_t flag = 0;
    if (threshold > 0.f)
      for (int64_t r = 0; r < rows && !flag; r++)
        if (!(fabsf(x[r * cols + c]) < threshold)) flag = 1;
    outlier[c] = flag;
  }
}

// max that keeps a NaN once it has seen one (threshold 0: a NaN row gets a NaN scale).
__device__ __forceinline__ float max_keep_nan(float a, float b) {
  if (isnan(a)) return a;
  if (isnan(b)) return b;
  return b > a ? b : a;
}

// One block per row: its absmax over the elements that are not outliers, then the codes.
__global__ void quantize_rows_kernel(int8_t* ca, float* sca, const uint8_t* outlier, const float* x, int64_t cols,
                                     float threshold) {
  __shared__ float part[kThreads];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * cols;
  const bool decompose = threshold > 0.f;
  float m = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float a = fabsf(xr[c]);
    if (decompose) {
      if (a < threshold && a > m) m = a;
    } else {
      m = max_keep_nan(m, a);
    }
  }
  part[threadIdx.x] = m;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) part[threadIdx.x] = max_keep_nan(part[threadIdx.x], part[threadIdx.x + s]);
    __syncthreads();
  }
  const float absmax = part[0];
  if (threadIdx.x == 0) sca[row] = absmax;
  const float scale = __fdiv_rn(127.f, absmax);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = __fmul_rn(xr[c], scale);
    ca[row * cols + c] = outlier[c] || isnan(v) ? int8_t(0) : int8_t(rintf(v));  // rintf: half to even
  }
}

// Y[i,j] = f32(f32(f32(Σ CA·CB)·SCA[i])·SCB[j])·f32(1/127²) (+ bias[j]) + Σ_{k outlier} X[i,k]·Wdq[j,k].
// A block computes a 16×16 tile of Y: rows on x of the grid (M may be large), columns on y.
// Outlier columns have CA = 0, so one pass over K serves both sums.
__global__ void llm_int8_matmul_kernel(float* Y, const int8_t* ca, const int8_t* cb, const float* sca,
                                       const float* scb, const uint8_t* outlier, const float* X, const float* bias,
                                       int64_t M, int64_t N, int64_t K) {
  __shared__ int8_t a_t[kTile][kTile];  // a_t[i][k]: activation codes
  __shared__ int8_t b_t[kTile][kTile];  // b_t[j][k]: weight codes
  __shared__ float x_t[kTile][kTile];   // x_t[i][k]: X in outlier columns, else 0
  __shared__ uint8_t o_t[kTile];
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t i0 = int64_t(blockIdx.x) * kTile, j0 = int64_t(blockIdx.y) * kTile;
  const int64_t i = i0 + ty, j = j0 + tx;
  const float sj = j < N ? scb[j] : 0.f;
  int32_t acc = 0;
  float outl = 0.f;
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    const int64_t k = k0 + tx;
    const bool kin = k < K;
    const bool ko = kin && outlier[k];
    const int64_t ai = i0 + ty, bj = j0 + ty;
    a_t[ty][tx] = ai < M && kin ? ca[ai * K + k] : int8_t(0);
    b_t[ty][tx] = bj < N && kin ? cb[bj * K + k] : int8_t(0);
    x_t[ty][tx] = ai < M && ko ? X[ai * K + k] : 0.f;
    if (ty == 0) o_t[tx] = ko ? 1 : 0;
    __syncthreads();
    for (int kk = 0; kk < kTile; kk++) {
      acc += int32_t(a_t[ty][kk]) * int32_t(b_t[tx][kk]);
      if (o_t[kk]) outl += x_t[ty][kk] * __fmul_rn(__fmul_rn(float(b_t[tx][kk]), sj), kInv127);
    }
    __syncthreads();
  }
  if (i >= M || j >= N) return;
  float v = __fmul_rn(__fmul_rn(__fmul_rn(float(acc), sca[i]), sj), kInv127Sq);
  if (bias) v = v + bias[j];
  Y[i * N + j] = v + outl;
}

}  // namespace

void quantize_int8_vectorwise(int8_t* ca, float* sca, uint8_t* outlier_cols, const float* x, int64_t rows,
                              int64_t cols, float threshold) {
  if (cols <= 0) return;
  outlier_cols_kernel<<<elt_blocks(cols), kEltThreads, 0, stream()>>>(outlier_cols, x, rows, cols, threshold);
  check_launch("outlier_cols_kernel");
  if (rows <= 0) return;
  quantize_rows_kernel<<<unsigned(rows), kThreads, 0, stream()>>>(ca, sca, outlier_cols, x, cols, threshold);
  check_launch("quantize_rows_kernel");
}

void llm_int8_forward(float* Y, float* XA, const float* X, const float* Xa, QuantWeight W, float threshold,
                      const float* A, const float* B, const float* bias, float s, int64_t M, int64_t N, int64_t K,
                      int64_t r, LlmInt8Scratch scratch) {
  if (M <= 0 || N <= 0) return;
  if ((N + kTile - 1) / kTile > 65535)  // column tiles are grid dimension y
    fail("E_ARG", "llm_int8_forward: N = " + std::to_string(N) + " exceeds the CUDA kernel's " +
                      std::to_string(65535 * kTile) + " output features");
  if (r > 0) gemm_f32(XA, r, operand(Xa, K), operand(A, K, /*trans=*/true), M, r, K, 1.f, false);  // XA = Xa·Aᵀ
  quantize_int8_vectorwise(scratch.ca, scratch.sca, scratch.outlier, X, M, K, threshold);
  const dim3 grid(unsigned((M + kTile - 1) / kTile), unsigned((N + kTile - 1) / kTile));
  llm_int8_matmul_kernel<<<grid, dim3(kTile, kTile), 0, stream()>>>(
      Y, scratch.ca, static_cast<const int8_t*>(W.codes), scratch.sca, W.scales, scratch.outlier, X, bias, M, N, K);
  check_launch("llm_int8_matmul_kernel");
  if (r > 0) gemm_f32(Y, N, operand(XA, r), operand(B, r, /*trans=*/true), M, N, r, s, true);  // + s·XA·Bᵀ
}

}  // namespace pk::cuda
