// Linear biases: broadcast add over rows, and the column sum that is its gradient.
#include "peftkit/kernels.h"
#include "peftkit/parallel.h"

namespace pk::cpu {

void bias_add(float* y, const float* bias, int64_t N, int64_t C) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t n = 0; n < N; n++) {
    float* row = y + n * C;
    for (int64_t c = 0; c < C; c++) row[c] += bias[c];
  }
}

// Columns are split between threads so each dbias element has one writer.
void bias_backward(float* dbias, const float* dy, int64_t N, int64_t C) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t c0 = 0; c0 < C; c0 += 64) {
    const int64_t c1 = c0 + 64 < C ? c0 + 64 : C;
    double acc[64] = {0};
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = c0; c < c1; c++) acc[c - c0] += dy[n * C + c];
    for (int64_t c = c0; c < c1; c++) dbias[c] += float(acc[c - c0]);
  }
}

}  // namespace pk::cpu
