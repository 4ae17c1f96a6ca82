// Which code a scaled value gets, in the three bitsandbytes code books. Shared by the CPU kernels
// and the CUDA kernels (which define PK_QUANT_FN as a __device__ function and PK_QUANT_TABLE as
// __constant__ before including this), so the two devices decide every value the same way.
#pragma once
#include <cmath>
#include <cstdint>

#include "quant_codes.h"

#ifndef PK_QUANT_FN
#define PK_QUANT_FN inline
#endif

namespace pk::quant_codes {

// NaN is above no threshold, so it takes code 0; a value on a threshold stays below it.
PK_QUANT_FN uint8_t nf4_code(float x) {
  int c = 0;
  for (int i = 0; i < 15; i++) c += x > kNf4Thresholds[i];
  return uint8_t(c);
}

// -0.0 and NaN are not < 0, so they keep the sign bit clear.
PK_QUANT_FN uint8_t fp4_code(float x) {
  const float a = fabsf(x);
  int rank = 0;
  for (int i = 0; i < 7; i++) rank += a > kFp4Pivots[i];
  return uint8_t(kFp4RankBits[rank] | (x < 0.f ? 8 : 0));
}

// bitsandbytes' search over the 256 ascending codes: seven halving steps from the middle, then
// the last two candidates split at their f32 midpoint. Reproduced step for step because a value
// exactly on a midpoint goes the way the search approached it (which is to the even index).
PK_QUANT_FN uint8_t dynamic_signed_code(float x) {
  int pivot = 127, below = 0, above = 255;
  float lower = -1.f, upper = 1.f, val = kDynamicSigned[127];
  for (int step = 64; step > 0; step >>= 1) {
    if (x > val) {
      below = pivot;
      lower = val;
      pivot += step;
    } else {
      above = pivot;
      upper = val;
      pivot -= step;
    }
    val = kDynamicSigned[pivot];
  }
  if (above == 255) upper = kDynamicSigned[255];
  if (below == 0) lower = kDynamicSigned[0];
  if (x > val) return uint8_t(x > (upper + val) * 0.5f ? above : pivot);
  return uint8_t(x < (lower + val) * 0.5f ? below : pivot);
}

}  // namespace pk::quant_codes
