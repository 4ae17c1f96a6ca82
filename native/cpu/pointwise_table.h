// The compute-bound elementwise loops (sigmoid-based activations, the dropout mask, the
// softmax passes of the cross-entropy) as one
// table per ISA: pointwise.cc holds the portable one and the dispatch, pointwise_avx2.cc and
// pointwise_avx512.cc the same loops (pointwise_loops.h) compiled with wider instructions.
// Each loop runs over one contiguous range on the calling thread; the kernels split the work.
#pragma once
#include <cstdint>

namespace pk::cpu {

struct PointwiseTable {
  void (*silu_forward)(float* out, const float* x, int64_t n);
  void (*silu_backward)(float* dx, const float* dout, const float* x, int64_t n);
  void (*gelu_tanh_forward)(float* out, const float* x, int64_t n);
  void (*gelu_tanh_backward)(float* dx, const float* dout, const float* x, int64_t n);
  void (*swiglu_forward)(float* out, const float* gate, const float* up, int64_t n);
  void (*swiglu_backward)(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                          int64_t n);
  // out[i] = dropout_keep(key, first_index + i, p) ? in[i]·scale : 0
  void (*dropout)(float* out, const float* in, int64_t n, float p, uint64_t key, uint64_t first_index, float scale);
  // The largest x[i] (NaN elements are skipped; -inf for n = 0).
  float (*max)(const float* x, int64_t n);
  // Σ e^(x[i] - m) in f32, for m >= every x[i]; when out != null each term is also written to
  // out[i] (out may be x).
  float (*exp_shifted_sum)(float* out, const float* x, int64_t n, float m);
  // x[i] *= k
  void (*scale)(float* x, int64_t n, float k);
};

// The table of the ISA cpu_isa() picks (PEFTKIT_ISA caps it).
const PointwiseTable& pointwise();

#ifdef PEFTKIT_X86
const PointwiseTable& pointwise_avx2();
const PointwiseTable& pointwise_avx512();
#endif

}  // namespace pk::cpu
