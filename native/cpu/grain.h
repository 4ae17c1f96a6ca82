// How much work is worth waking the OpenMP team: the memory-bound kernels of the transformer
// ops run alone below this many elements (a parallel region costs a few microseconds).
#pragma once
#include <cstdint>

#include "peftkit/parallel.h"

namespace pk::cpu {

constexpr int64_t kParallelMinElements = int64_t(1) << 15;

inline int threads_for(int64_t elements) { return elements < kParallelMinElements ? 1 : num_threads(); }

}  // namespace pk::cpu
