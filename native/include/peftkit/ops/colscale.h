// Column scales and row norms (IA3, DoRA). Shapes write [..., C] for "any leading dimensions,
// then C" (flattened into rows); "(optional)" arguments may be an empty Tensor (no storage).
#pragma once
#include "../tensor.h"

namespace pk::ops {

// y[..., C] = x[..., C]·s[C]; all f32; y may be x itself (in place).
void mul_cols(const Tensor& y, const Tensor& x, const Tensor& s);
// dx[..., C] = dy·s (optional; it may be dy or x itself, overwritten);
// ds[C] += Σ over rows of dy·x (optional; accumulates, like every parameter gradient).
void mul_cols_backward(const Tensor& dx, const Tensor& ds, const Tensor& dy, const Tensor& x, const Tensor& s);
// out[R] = sqrt(Σ_c w[r, c]²); w: [R, C] f32 or bf16; out: f32.
void row_norms(const Tensor& out, const Tensor& w);
// DoRA's scale: g = m / norms, g_minus_1 = g − 1; all f32 [n] on one device.
void dora_scale(const Tensor& g, const Tensor& g_minus_1, const Tensor& m, const Tensor& norms);
// DoRA's magnitude gradient: dm += dg / norms (the norm detached); all f32 [n] on one device.
void dora_magnitude_backward(const Tensor& dm, const Tensor& dg, const Tensor& norms);

}  // namespace pk::ops
