// Column scales (IA3's learned vector, DoRA's magnitude over the weight norm) and the row norms
// DoRA divides by. x, y, dy, dx: [N, C] row-major; s, ds: [C]; w: [R, C]; out: [R].
//
// The scale gradient ds sums over all N rows. The rows are cut into chunks whose size depends
// on N and C only, and the columns into blocks; each (chunk, block) task sums its rows in order
// in double (dy·x is exact in double) into its own slot, and the chunks' sums are then added in
// chunk order. So ds is the same at any thread count, and tasks exist for shapes whose C alone
// would leave threads idle (IA3 on a 192-wide k_proj). dx is written in the same pass (one
// read of dy and x); every element is read before it is written, so dx may be dy or x itself.
#include <cmath>
#include <vector>

#include "grain.h"
#include "peftkit/kernels.h"

namespace pk::cpu {

namespace {
constexpr int64_t kColBlock = 128;             // columns per task (the double sums stay on the stack)
constexpr int64_t kMinChunkRows = 1024;        // rows per task at least
constexpr int64_t kMaxChunks = 16;             // row chunks at most
constexpr int64_t kMaxScratch = int64_t(1) << 20;  // doubles of chunk sums at most (8 MiB)

// Row chunks of the ds pass: a function of (N, C) alone. More than one only while their sums
// (chunks × C doubles) fit kMaxScratch; a C that wide has column blocks enough for the threads.
int64_t ds_chunks(int64_t N, int64_t C) {
  int64_t chunks = (N + kMinChunkRows - 1) / kMinChunkRows;
  if (chunks > kMaxChunks) chunks = kMaxChunks;
  if (chunks * C > kMaxScratch) chunks = C >= kMaxScratch ? 1 : kMaxScratch / C;
  return chunks < 1 ? 1 : chunks;
}

// The chunk sums, kept per calling thread between calls (as GEMM's packing buffers are): a
// fresh buffer above glibc's 1 MiB mmap threshold would be page-faulted in on every call.
double* chunk_scratch(size_t n) {
  thread_local std::vector<double> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}
}  // namespace

void mul_cols(float* y, const float* x, const float* s, int64_t N, int64_t C) {
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const float* xr = x + n * C;
    float* yr = y + n * C;
    // omp simd: the only dependence is within one element (y may be x), so vectors are safe.
#pragma omp simd
    for (int64_t c = 0; c < C; c++) yr[c] = xr[c] * s[c];
  }
}

void mul_cols_backward(float* dx, float* ds, const float* dy, const float* x, const float* s, int64_t N, int64_t C) {
  if (!ds) {
    if (dx) mul_cols(dx, dy, s, N, C);
    return;
  }
  if (N == 0 || C == 0) return;
  const int64_t chunks = ds_chunks(N, C), rows = (N + chunks - 1) / chunks;
  const int64_t blocks = (C + kColBlock - 1) / kColBlock;
  double* part = chunks > 1 ? chunk_scratch(size_t(chunks * C)) : nullptr;
#pragma omp parallel for num_threads(threads_for(N * C)) schedule(dynamic, 1)
  for (int64_t task = 0; task < chunks * blocks; task++) {
    const int64_t k = task / blocks, c0 = (task % blocks) * kColBlock;
    const int64_t width = C - c0 < kColBlock ? C - c0 : kColBlock;
    const int64_t r0 = k * rows, r1 = r0 + rows < N ? r0 + rows : N;
    double acc[kColBlock] = {};
    for (int64_t n = r0; n < r1; n++) {
      const float* d = dy + n * C + c0;
      const float* xr = x + n * C + c0;
      if (dx) {
        float* o = dx + n * C + c0;
        const float* sc = s + c0;
#pragma omp simd
        for (int64_t j = 0; j < width; j++) {
          acc[j] += double(d[j]) * double(xr[j]);
          o[j] = d[j] * sc[j];
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < width; j++) acc[j] += double(d[j]) * double(xr[j]);
      }
    }
    if (part) {
      for (int64_t j = 0; j < width; j++) part[k * C + c0 + j] = acc[j];
    } else {
      for (int64_t j = 0; j < width; j++) ds[c0 + j] = float(double(ds[c0 + j]) + acc[j]);
    }
  }
  if (!part) return;
  // The chunks' sums in chunk order, added to the old ds in double and rounded once.
#pragma omp parallel for num_threads(threads_for(chunks * C)) schedule(static)
  for (int64_t c = 0; c < C; c++) {
    double t = ds[c];
    for (int64_t k = 0; k < chunks; k++) t += part[k * C + c];
    ds[c] = float(t);
  }
}

void row_norms(float* out, const void* w, DType w_dtype, int64_t R, int64_t C) {
  if (w_dtype == DType::BF16) {
    const bf16* wb = static_cast<const bf16*>(w);
#pragma omp parallel for num_threads(threads_for(R * C)) schedule(static)
    for (int64_t r = 0; r < R; r++) {
      const bf16* row = wb + r * C;
      double ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < C; c++) {
        const double v = bf16_to_f32(row[c]);
        ss += v * v;
      }
      out[r] = float(std::sqrt(ss));
    }
    return;
  }
  const float* wf = static_cast<const float*>(w);
#pragma omp parallel for num_threads(threads_for(R * C)) schedule(static)
  for (int64_t r = 0; r < R; r++) {
    const float* row = wf + r * C;
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; c++) ss += double(row[c]) * double(row[c]);
    out[r] = float(std::sqrt(ss));
  }
}

void dora_scale(float* g, float* g_minus_1, const float* m, const float* norms, int64_t n) {
  for (int64_t o = 0; o < n; o++) {
    const float q = m[o] / norms[o];
    g[o] = q;
    g_minus_1[o] = q - 1.f;
  }
}

void dora_magnitude_backward(float* dm, const float* dg, const float* norms, int64_t n) {
  for (int64_t o = 0; o < n; o++) dm[o] = float(double(dm[o]) + double(dg[o]) / double(norms[o]));
}

}  // namespace pk::cpu
