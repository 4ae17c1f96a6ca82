#pragma once
#include "../tensor.h"

namespace pk::ops {

// Causal attention with grouped-query heads (see kernels.inc for the exact rule).
// q, out: f32 [B, Tq, Hq, D]; k, v: f32 [B, Tk, Hkv, D] with Hq % Hkv == 0 and Tk >= Tq;
// lse: f32 [B, Hq, Tq]. `scale` multiplies q·k (the caller picks 1/sqrt(D) by default).
void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                       float scale);
// dq (like q), dk, dv (like k) are overwritten from dout and the forward's q, k, v, out, lse.
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, float scale);

}  // namespace pk::ops
