#pragma once
#include <vector>

#include "../kernels.h"
#include "../tensor.h"

namespace pk::ops {

// One trainable tensor and its 8-bit AdamW state. param, grad: f32 of one shape. The moments
// are either 8-bit (m, v: u8 codes of the param's shape; m_absmax, v_absmax: f32
// [ceil(numel / 256)]) or f32 (m, v: f32 of the param's shape, absmax tensors empty). The
// caller picks: bitsandbytes keeps f32 states for tensors under 4096 elements. Any of them
// may be paged (Storage::paged).
struct AdamW8bitSlot {
  Tensor param, grad, m, v, m_absmax, v_absmax;
  float weight_decay = 0.f;
};

// One blockwise 8-bit AdamW step (kernels.inc: adamw8bit) over every slot, all on one device;
// hyperparameters as ops::adamw. Paged tensors are paged in before the kernel and out after.
// Returns how many tensors were left unchanged because their gradient held a NaN or an inf, or -1
// without count_skipped (nothing brought back from a GPU: see kernels.inc).
int64_t adamw8bit(const std::vector<AdamW8bitSlot>& slots, const AdamWHyper& h, bool count_skipped = true);

}  // namespace pk::ops
