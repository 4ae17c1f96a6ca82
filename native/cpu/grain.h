// How much work is worth waking the OpenMP team: the memory-bound kernels of the transformer
// ops run alone below this many elements (a parallel region costs a few microseconds).
#pragma once
#include <cstdint>

#include "peftkit/parallel.h"

namespace pk::cpu {

constexpr int64_t kParallelMinElements = int64_t(1) << 15;

inline int threads_for(int64_t elements) { return elements < kParallelMinElements ? 1 : num_threads(); }

// Runs body(begin, end) over [0, n) in chunks of a few thousand elements, spread over the
// threads when n is large enough. For loops that live in a per-ISA table (pointwise_table.h).
template <typename Body>
void parallel_ranges(int64_t n, Body body) {
  constexpr int64_t kChunk = 8192;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(threads_for(n)) schedule(static)
  for (int64_t c = 0; c < chunks; c++) body(c * kChunk, c * kChunk + kChunk < n ? c * kChunk + kChunk : n);
}

}  // namespace pk::cpu
