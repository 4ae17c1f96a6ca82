#pragma once
#include "../tensor.h"

namespace pk::ops {

// y[..., C] += bias[C]
void bias_add(const Tensor& y, const Tensor& bias);
// dbias[C] += Σ over rows of dy[..., C]
void bias_backward(const Tensor& dbias, const Tensor& dy);

}  // namespace pk::ops
