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
// The scaling half of clip_grad_norm, for a norm the caller already has (computed on the
// device by grad_sumsq_into and read back with a step's other scalars): the same coefficient,
// the same grads left alone when norm is NaN or infinite.
void clip_grads_to(const std::vector<Tensor>& grads, double max_norm, double norm);

// out[0] = Σ g² over every tensor (f64 [1] on their device), summed as grad_norm sums: the
// squared norm stays on the device until the caller reads it.
void grad_sumsq_into(const Tensor& out, const std::vector<Tensor>& tensors);

}  // namespace pk::ops
