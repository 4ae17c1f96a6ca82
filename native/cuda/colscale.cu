// Column scales (IA3, DoRA's magnitude over the norm) and DoRA's row norms on the GPU.
// The scale gradient is summed without atomics: one block owns 32 columns and walks every row,
// so ds is the same on every run (the norm and bias gradients add block partials atomically).
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
// Grid-stride: y may be x because each element is read before it is written, by one thread.
__global__ void mul_cols_kernel(float* y, const float* x, const float* s, int64_t n, int64_t C) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = x[i] * s[i % C];
}

// ds[c] += Σ_rows dy·x: thread (tx, ty) of a block sums rows ty, ty + kRowLanes, ... of column
// blockIdx.x·32 + tx in double (dy·x is exact in double; a warp reads 32 consecutive floats of a
// row), then the row lanes' sums are added in lane order. dx = dy·s (optional) in the same pass,
// each element written by the thread that read it, so dx may be dy or x.
constexpr int kColTile = 32, kRowLanes = 16;

__global__ void mul_cols_bwd_kernel(float* dx, float* ds, const float* dy, const float* x, const float* s, int64_t N,
                                    int64_t C) {
  __shared__ double part[kRowLanes][kColTile + 1];
  const int64_t col = int64_t(blockIdx.x) * kColTile + threadIdx.x;
  double acc = 0;
  if (col < C) {
    const float sc = s[col];
    for (int64_t row = threadIdx.y; row < N; row += kRowLanes) {
      const int64_t i = row * C + col;
      const float d = dy[i], xv = x[i];
      acc += double(d) * double(xv);
      if (dx) dx[i] = d * sc;
    }
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < C) {
    double t = ds[col];
    for (int y = 0; y < kRowLanes; y++) t += part[y][threadIdx.x];
    ds[col] = float(t);
  }
}

// One block per row; the squares summed in double (an f32 square is exact there).
__global__ void row_norms_kernel(float* out, const void* w, DType w_dtype, int64_t C) {
  const int64_t row = blockIdx.x;
  double ss = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const double v = load_as_f32(w, w_dtype, row * C + c);
    ss += v * v;
  }
  const double total = block_sum(ss);
  if (threadIdx.x == 0) out[row] = float(sqrt(total));
}

__global__ void dora_scale_kernel(float* g, float* g_minus_1, const float* m, const float* norms, int64_t n) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n; o += int64_t(gridDim.x) * blockDim.x) {
    const float q = __fdiv_rn(m[o], norms[o]);
    g[o] = q;
    g_minus_1[o] = __fsub_rn(q, 1.f);
  }
}

__global__ void dora_magnitude_backward_kernel(float* dm, const float* dg, const float* norms, int64_t n) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n; o += int64_t(gridDim.x) * blockDim.x)
    dm[o] = float(double(dm[o]) + double(dg[o]) / double(norms[o]));
}

// Threads per row block: a warp multiple, no more than the row needs, at most 256.
unsigned row_threads(int64_t C) {
  const int64_t t = (C + 31) / 32 * 32;
  return unsigned(t < 32 ? 32 : t < 256 ? t : 256);
}
}  // namespace

void mul_cols(float* y, const float* x, const float* s, int64_t N, int64_t C) {
  if (N * C == 0) return;
  mul_cols_kernel<<<elt_blocks(N * C), kEltThreads, 0, stream()>>>(y, x, s, N * C, C);
  check_launch("mul_cols");
}

void mul_cols_backward(float* dx, float* ds, const float* dy, const float* x, const float* s, int64_t N, int64_t C) {
  if (N * C == 0) return;
  if (!ds) {
    if (dx) mul_cols(dx, dy, s, N, C);
    return;
  }
  mul_cols_bwd_kernel<<<blocks_for(C, kColTile), dim3(kColTile, kRowLanes), 0, stream()>>>(dx, ds, dy, x, s, N, C);
  check_launch("mul_cols_backward");
}

void row_norms(float* out, const void* w, DType w_dtype, int64_t R, int64_t C) {
  if (R == 0) return;
  row_norms_kernel<<<unsigned(R), row_threads(C), 0, stream()>>>(out, w, w_dtype, C);
  check_launch("row_norms");
}

void dora_scale(float* g, float* g_minus_1, const float* m, const float* norms, int64_t n) {
  if (n == 0) return;
  dora_scale_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(g, g_minus_1, m, norms, n);
  check_launch("dora_scale");
}

void dora_magnitude_backward(float* dm, const float* dg, const float* norms, int64_t n) {
  if (n == 0) return;
  dora_magnitude_backward_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(dm, dg, norms, n);
  check_launch("dora_magnitude_backward");
}

}  // namespace pk::cuda
