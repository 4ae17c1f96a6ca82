// One AdamW element in torch.optim.AdamW's order of f32 operations, each IEEE-rounded (the _rn
// intrinsics cannot be contracted or approximated), as the CPU's adamw.cc computes it: the f32
// and 8-bit AdamW on CUDA and both on CPU take the same steps, bit for bit.
#pragma once
#include <cuda_runtime.h>

#include "peftkit/adamw_scalars.h"

namespace pk::cuda {

// m.lerp_(g, w1) as torch's lerp; v·b2 + (w2·g)·g; p·decay + (-step_size·m) / (sqrt(v)/bc2_sqrt + eps).
__device__ __forceinline__ void adamw_element(float& p, float& m, float& v, float g, const AdamWScalars& k,
                                              float decay) {
  m = k.w1 < 0.5f ? __fadd_rn(m, __fmul_rn(k.w1, __fsub_rn(g, m))) : __fsub_rn(g, __fmul_rn(__fsub_rn(g, m), k.w1c));
  v = __fadd_rn(__fmul_rn(v, k.b2), __fmul_rn(__fmul_rn(k.w2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), k.bc2_sqrt), k.eps);
  p = __fadd_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(-k.step_size, m), denom));
}

}  // namespace pk::cuda
