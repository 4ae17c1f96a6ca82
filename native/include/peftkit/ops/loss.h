#pragma once
#include <cstdint>

#include "../kernels.h"
#include "../tensor.h"

namespace pk::ops {

// Cross-entropy of logits [..., V] (f32) against targets [...] (i32), one loss per row into
// losses [...] (f32). Rows whose target is ignore_index get loss 0 and gradient 0; any other
// target outside [0, V) is an E_ARG naming the row. dlogits: a tensor shaped like logits, the
// logits tensor itself (gradient in place), or empty (losses only); it receives
// grad_scale·(softmax - onehot), e.g. grad_scale = 1/(counted rows) for a mean loss.
void cross_entropy(const Tensor& losses, const Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                   int32_t ignore_index, float grad_scale);

// The LM head fused with its loss: logits = H·Wᵀ for H [..., C] f32 and W [V, C] f32 or bf16,
// formed chunk_rows rows at a time so N×V logits never exist (chunk_rows 0 picks a chunk of
// about 128 MiB of logits). losses and targets as in cross_entropy. dH (like H, overwritten) and
// dW ([V, C] f32, accumulated) may each be empty when that gradient is not wanted.
// compute BF16: the three products read their operands rounded to bf16 (the loss stays f32).
// fault (optional): where a GPU records a bad target instead of this op checking them on the
// host (index_fault.h).
void linear_cross_entropy(const Tensor& losses, const Tensor& dH, const Tensor& dW, const Tensor& H,
                          const Tensor& W, const Tensor& targets, int32_t ignore_index, float grad_scale,
                          int64_t chunk_rows, Compute compute, const Tensor& fault = Tensor{});

// acc[0] += Σ x in double (acc: f64 [1], x: f32, one device): a step's loss kept where it is
// computed, so it comes back to the host once with the step's other scalars.
void sum_into(const Tensor& acc, const Tensor& x);

}  // namespace pk::ops
