// The portable PointwiseTable, and the choice of table by the CPU's ISA.
#include "pointwise_loops.h"
#include "peftkit/cpu_features.h"

namespace pk::cpu {

const PointwiseTable& pointwise() {
#ifdef PEFTKIT_X86
  switch (cpu_isa()) {
    case Isa::Avx512: return pointwise_avx512();
    case Isa::Avx2: return pointwise_avx2();
    default: break;
  }
#endif
  return kPointwiseLoops;
}

}  // namespace pk::cpu
