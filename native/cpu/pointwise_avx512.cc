// pointwise_loops.h compiled with the AVX-512 flags (see binding.gyp); reached through pointwise().
#include "pointwise_loops.h"

namespace pk::cpu {

const PointwiseTable& pointwise_avx512() { return kPointwiseLoops; }

}  // namespace pk::cpu
