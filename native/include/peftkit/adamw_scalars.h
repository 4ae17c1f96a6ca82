// AdamW's scalars for one step, formed as torch.optim.AdamW forms them: in double, from Python
// floats, then rounded to f32 where they meet the f32 tensors. One definition for every AdamW
// (f32 and 8-bit, CPU and CUDA), so their steps agree to the bit where their f32 operations do.
#pragma once
#include <cmath>

#include "peftkit/kernels.h"

namespace pk {

struct AdamWScalars {
  float step_size;  // lr / (1 - beta1^t)
  float bc2_sqrt;   // sqrt(1 - beta2^t)
  float w1, w1c;    // the lerp weight 1 - beta1, and 1 - w1 (torch's lerp for w >= 0.5)
  float b2, w2;     // beta2, 1 - beta2
  float eps;
};

inline AdamWScalars adamw_scalars(const AdamWHyper& h) {
  const double t = double(h.step);
  AdamWScalars k;
  k.step_size = float(h.lr / (1.0 - std::pow(h.beta1, t)));
  k.bc2_sqrt = float(std::sqrt(1.0 - std::pow(h.beta2, t)));
  k.w1 = float(1.0 - h.beta1);
  k.w1c = 1.f - k.w1;
  k.b2 = float(h.beta2);
  k.w2 = float(1.0 - h.beta2);
  k.eps = float(h.eps);
  return k;
}

}  // namespace pk
