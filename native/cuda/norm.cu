// RMSNorm and LayerNorm over rows of C features: one block per row for the output and the
// input gradient; the weight (and bias) gradients sum over rows with per-block column
// partials added into dw / db atomically (they accumulate, as every parameter gradient).
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
// Threads per row block: a warp multiple, no more than the row needs, at most 256.
unsigned row_threads(int64_t C) {
  const int64_t t = (C + 31) / 32 * 32;
  return unsigned(t < 256 ? t : 256);
}

// Column sums over rows: blocks of 32 columns × 8 row lanes; each block walks a strided set
// of rows, folds its 8 lanes in shared memory, then adds its partial into the output.
constexpr int kColTile = 32, kRowLanes = 8;
dim3 column_grid(int64_t N, int64_t C) {
  const unsigned row_blocks = blocks_for(N, 64 * kRowLanes);
  return dim3(blocks_for(C, kColTile), row_blocks < 1024 ? row_blocks : 1024);
}

// Adds this block's partial column sums (acc, one per thread) into out[col].
__device__ void add_column_partial(float* out, float acc, int64_t col, int64_t C) {
  __shared__ float part[kRowLanes][kColTile + 1];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < C) {
    float s = 0.f;
    for (int y = 0; y < kRowLanes; y++) s += part[y][threadIdx.x];
    atomicAdd(&out[col], s);
  }
}

__global__ void rmsnorm_fwd(float* out, float* rstd, const float* x, const float* w, int64_t C, float eps) {
  const int64_t row = blockIdx.x;
  const float* xr = x + row * C;
  float ss = 0.f;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) ss += xr[j] * xr[j];
  const float r = rsqrtf(block_sum(ss) / float(C) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) out[row * C + j] = xr[j] * r * w[j];
}

// With y = x·r·w and r = (mean(x²) + eps)^-½: dx = r·(w·g - x·r²·mean(w·g·x)).
__global__ void rmsnorm_bwd_dx(float* dx, const float* dout, const float* x, const float* w, const float* rstd,
                               int64_t C) {
  const int64_t row = blockIdx.x;
  const float *xr = x + row * C, *gr = dout + row * C;
  const float r = rstd[row];
  float dot = 0.f;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) dot += w[j] * gr[j] * xr[j];
  const float k = r * r * block_sum(dot) / float(C);
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) dx[row * C + j] = r * (w[j] * gr[j] - xr[j] * k);
}

// dw[j] += Σ_rows dout·x·rstd.
__global__ void rmsnorm_bwd_dw(float* dw, const float* dout, const float* x, const float* rstd, int64_t N, int64_t C) {
  const int64_t col = int64_t(blockIdx.x) * kColTile + threadIdx.x;
  float acc = 0.f;
  if (col < C)
    for (int64_t row = int64_t(blockIdx.y) * kRowLanes + threadIdx.y; row < N; row += int64_t(gridDim.y) * kRowLanes)
      acc += dout[row * C + col] * x[row * C + col] * rstd[row];
  add_column_partial(dw, acc, col, C);
}

__global__ void layernorm_fwd(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b,
                              int64_t C, float eps) {
  const int64_t row = blockIdx.x;
  const float* xr = x + row * C;
  float s = 0.f;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) s += xr[j];
  const float mu = block_sum(s) / float(C);
  float ss = 0.f;  // two passes: the variance of x - mean, free of cancellation
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) ss += (xr[j] - mu) * (xr[j] - mu);
  const float r = rsqrtf(block_sum(ss) / float(C) + eps);
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = r;
  }
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
    out[row * C + j] = (xr[j] - mu) * r * (w ? w[j] : 1.f) + (b ? b[j] : 0.f);
}

// With x̂ = (x - mean)·rstd and ĝ = g·w: dx = rstd·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂)).
__global__ void layernorm_bwd_dx(float* dx, const float* dout, const float* x, const float* w, const float* mean,
                                 const float* rstd, int64_t C) {
  const int64_t row = blockIdx.x;
  const float *xr = x + row * C, *gr = dout + row * C;
  const float mu = mean[row], r = rstd[row];
  float sg = 0.f, sgx = 0.f;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
    const float g = gr[j] * (w ? w[j] : 1.f);
    sg += g;
    sgx += g * (xr[j] - mu) * r;
  }
  const float mg = block_sum(sg) / float(C), mgx = block_sum(sgx) / float(C);
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
    const float g = gr[j] * (w ? w[j] : 1.f);
    dx[row * C + j] = r * (g - mg - (xr[j] - mu) * r * mgx);
  }
}

// dw[j] += Σ_rows dout·x̂ ; db[j] += Σ_rows dout (either may be null).
__global__ void layernorm_bwd_dwdb(float* dw, float* db, const float* dout, const float* x, const float* mean,
                                   const float* rstd, int64_t N, int64_t C) {
  const int64_t col = int64_t(blockIdx.x) * kColTile + threadIdx.x;
  float aw = 0.f, ab = 0.f;
  if (col < C)
    for (int64_t row = int64_t(blockIdx.y) * kRowLanes + threadIdx.y; row < N; row += int64_t(gridDim.y) * kRowLanes) {
      const float g = dout[row * C + col];
      aw += g * (x[row * C + col] - mean[row]) * rstd[row];
      ab += g;
    }
  if (dw) add_column_partial(dw, aw, col, C);
  __syncthreads();  // the partials' shared scratch is reused
  if (db) add_column_partial(db, ab, col, C);
}
}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N, int64_t C, float eps) {
  if (N == 0 || C == 0) return;
  rmsnorm_fwd<<<unsigned(N), row_threads(C), 0, stream()>>>(out, rstd, x, w, C, eps);
  check_launch("rmsnorm_forward");
}

void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd,
                      int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  // dw first: it reads dout, which dx may overwrite when the caller aliases them.
  if (dw) {
    rmsnorm_bwd_dw<<<column_grid(N, C), dim3(kColTile, kRowLanes), 0, stream()>>>(dw, dout, x, rstd, N, C);
    check_launch("rmsnorm_backward dw");
  }
  rmsnorm_bwd_dx<<<unsigned(N), row_threads(C), 0, stream()>>>(dx, dout, x, w, rstd, C);
  check_launch("rmsnorm_backward dx");
}

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t N,
                       int64_t C, float eps) {
  if (N == 0 || C == 0) return;
  layernorm_fwd<<<unsigned(N), row_threads(C), 0, stream()>>>(out, mean, rstd, x, w, b, C, eps);
  check_launch("layernorm_forward");
}

void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                        const float* mean, const float* rstd, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  if (dw || db) {
    layernorm_bwd_dwdb<<<column_grid(N, C), dim3(kColTile, kRowLanes), 0, stream()>>>(dw, db, dout, x, mean, rstd, N,
                                                                                       C);
    check_launch("layernorm_backward dw/db");
  }
  layernorm_bwd_dx<<<unsigned(N), row_threads(C), 0, stream()>>>(dx, dout, x, w, mean, rstd, C);
  check_launch("layernorm_backward dx");
}

}  // namespace pk::cuda
