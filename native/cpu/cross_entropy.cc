// Cross-entropy over the vocabulary, and the LM head fused with it.
//
// One row (V logits) at a time, in three passes over the row: its max; e = exp(x - max) written
// straight into the gradient row while summing; then the gradient row scaled by
// grad_scale / sum with grad_scale taken off at the target. So a row costs one exp per logit,
// and the probabilities exist only once, in the gradient buffer (which may be the logits).
#include <cmath>
#include <cstring>

#include "gemm.h"
#include "peftkit/kernels.h"
#include "peftkit/parallel.h"
#include "pointwise_table.h"

namespace pk::cpu {

namespace {

// Partial sums of at most this many exps stay in f32 (lanes of a vector register); the row
// total is kept in double, so a 150k vocabulary loses nothing to the order of additions.
constexpr int64_t kSumBlock = 1024;

// Loss of one row; when d != null also its gradient (d may be x itself).
void row(float* loss, float* d, const float* x, int32_t target, int64_t V, int32_t ignore_index,
         float grad_scale) {
  if (target == ignore_index) {
    *loss = 0.f;
    if (d) std::memset(d, 0, size_t(V) * sizeof(float));
    return;
  }
  const PointwiseTable& pw = pointwise();
  const float m = pw.max(x, V);
  const float xt = x[target];  // read before d (maybe x) is overwritten

  double sum = 0.0;
  for (int64_t j0 = 0; j0 < V; j0 += kSumBlock)
    sum += double(pw.exp_shifted_sum(d ? d + j0 : nullptr, x + j0, j0 + kSumBlock < V ? kSumBlock : V - j0, m));
  // (m - xt) first: for logits near ±1e4 the large parts cancel exactly before log(sum) is added.
  *loss = float((double(m) - double(xt)) + std::log(sum));
  if (!d) return;
  pw.scale(d, V, float(double(grad_scale) / sum));
  d[target] -= grad_scale;
}

}  // namespace

void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t N,
                   int64_t V, int32_t ignore_index, float grad_scale) {
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (N > 1 && N * V > 32768)
  for (int64_t n = 0; n < N; n++)
    row(losses + n, dlogits ? dlogits + n * V : nullptr, logits + n * V, targets[n], V, ignore_index,
        grad_scale);
}

void linear_cross_entropy(float* losses, float* dH, float* dW, const float* H, const void* W, DType w_dtype,
                          const int32_t* targets, int64_t N, int64_t C, int64_t V, int32_t ignore_index,
                          float grad_scale, int64_t chunk_rows, float* scratch, Compute compute, double* fault) {
  (void)fault;  // the op layer checked the targets (embedding.cc says why)
  const bool backward = dH || dW;
  const auto op = [compute](const void* p, DType dt, int64_t ld, bool trans) {
    return with_compute(MatRef{p, dt, ld, trans}, compute);
  };
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
    const int64_t rows = r0 + chunk_rows < N ? chunk_rows : N - r0;
    const float* Hc = H + r0 * C;
    bool any = false;  // a chunk of masked rows (a prompt, padding) costs nothing
    for (int64_t n = 0; n < rows && !any; n++) any = targets[r0 + n] != ignore_index;
    if (!any) {
      std::memset(losses + r0, 0, size_t(rows) * sizeof(float));
      if (dH) std::memset(dH + r0 * C, 0, size_t(rows * C) * sizeof(float));
      continue;
    }
    // logits[rows, V] = Hc·Wᵀ, then turned into grad_scale·(softmax - onehot) in place.
    gemm(rows, V, C, 1.f, op(Hc, DType::F32, C, false), op(W, w_dtype, C, true), 0.f, scratch, DType::F32, V);
    cross_entropy(losses + r0, backward ? scratch : nullptr, scratch, targets + r0, rows, V, ignore_index,
                  grad_scale);
    if (dW)  // dW[V, C] += dlogitsᵀ·Hc
      gemm(V, C, rows, 1.f, op(scratch, DType::F32, V, true), op(Hc, DType::F32, C, false), 1.f, dW, DType::F32, C);
    if (dH)  // dHc[rows, C] = dlogits·W
      gemm(rows, C, V, 1.f, op(scratch, DType::F32, V, false), op(W, w_dtype, C, false), 0.f, dH + r0 * C,
           DType::F32, C);
  }
}

}  // namespace pk::cpu
