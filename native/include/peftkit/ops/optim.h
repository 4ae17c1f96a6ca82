#pragma once
#include <vector>

#include "../kernels.h"
#include "../tensor.h"

namespace pk::ops {

// One trainable tensor and its AdamW state: param, grad, m, v all f32, one shape, one device.
struct AdamWSlot {
  Tensor param, grad, m, v;
  float weight_decay = 0.f;
};

// One AdamW step (torch.optim.AdamW semantics) over every slot, all on one device. h.step is
// the 1-based count of steps including this one; lr >= 0, betas in [0, 1), eps >= 0, all finite.
void adamw(const std::vector<AdamWSlot>& slots, const AdamWHyper& h);

// The L2 norm of all grads taken together (f32 tensors, one device), summed in double.
double grad_norm(const std::vector<Tensor>& grads);

// torch.nn.utils.clip_grad_norm_: returns the total norm before clipping and, when it exceeds
// max_norm, scales every grad by max_norm / (norm + 1e-6). A NaN or infinite norm is returned
// as it is and the grads are left untouched: the caller decides (skip the step, stop).
double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm);

}  // namespace pk::ops
