// Tensor-level transformer ops: embedding, norms, rotary embedding, activations, elementwise
// arithmetic, casts and dropout. Each checks dtype, shape and device (messages name the
// argument), flattens leading dimensions into rows, and runs the kernel of the tensors' device.
// Shapes below write [..., C] for "any leading dimensions, then C"; "(optional)" arguments may
// be an empty Tensor (no storage). Parameter gradients (dtable, dw, db) accumulate; activation
// gradients are overwritten.
#pragma once
#include "../kernels.h"
#include "../tensor.h"

namespace pk::ops {

// out[..., C] = table[ids[...], :]. ids: i32, any shape, each in [0, V); table: f32 [V, C].
// fault (optional): where a GPU records a bad id instead of this op checking them on the host
// (index_fault.h).
void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table, const Tensor& fault = Tensor{});
// dtable[V, C] += dout[..., C] scattered by ids (repeated ids add up). fault as above.
void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& ids, const Tensor& fault = Tensor{});

// x, out: f32 [..., C]; w: [C]; rstd: [...] (x's shape without the last dimension).
void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, float eps);
// dx (may be dout itself) is overwritten; dw (optional) accumulates.
void rmsnorm_backward(const Tensor& dx, const Tensor& dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                      const Tensor& rstd);
// As rmsnorm, plus mean [...] and the bias b [C] (optional).
void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& x, const Tensor& w,
                       const Tensor& b, float eps);
// dw and db (both optional) accumulate.
void layernorm_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dout, const Tensor& x,
                        const Tensor& w, const Tensor& mean, const Tensor& rstd);

// cos, sin: f32 [T, D/2] for positions: i32 [T]. D is even; theta > 0; scaling.factor 0 = none.
void rope_table(const Tensor& cos, const Tensor& sin, const Tensor& positions, float theta, RopeScaling scaling);
// x, out: f32 [..., T, H, D] (out may be x); cos, sin: [T, D/2] from rope_table.
void rope_forward(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin);
void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin);

// Elementwise over same-shape f32 tensors; an output may be one of the inputs.
void silu_forward(const Tensor& out, const Tensor& x);
void silu_backward(const Tensor& dx, const Tensor& dout, const Tensor& x);
void gelu_forward(const Tensor& out, const Tensor& x, bool tanh_approx);
void gelu_backward(const Tensor& dx, const Tensor& dout, const Tensor& x, bool tanh_approx);
void relu_forward(const Tensor& out, const Tensor& x);
void relu_backward(const Tensor& dx, const Tensor& dout, const Tensor& x);
// tanh: out = tanh(x); dx = dout·(1 − out²) from the forward's output. f32, one shape.
void tanh_forward(const Tensor& out, const Tensor& x);
void tanh_backward(const Tensor& dx, const Tensor& dout, const Tensor& out);
void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up);
void add(const Tensor& out, const Tensor& a, const Tensor& b);
void axpy(const Tensor& y, const Tensor& x, float a);  // y += a·x
// dst[:, dst_col : dst_col + width] = src[:, src_col : src_col + width]; both f32 [rows, ·], apart.
void copy_cols(const Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width);
// x (f32) = 0 where keep (u8, x's shape) is 0; unchanged elsewhere.
void keep_masked(const Tensor& x, const Tensor& keep);
// out = x converted f32 -> bf16 (round to nearest even) or bf16 -> f32; same shape.
void cast(const Tensor& out, const Tensor& x);

// out = keep(seed, offset + i) ? x / (1 - p) : 0 for p in [0, 1]; backward applies the same mask.
void dropout_forward(const Tensor& out, const Tensor& x, float p, uint64_t seed, uint64_t offset);
void dropout_backward(const Tensor& dx, const Tensor& dout, float p, uint64_t seed, uint64_t offset);

}  // namespace pk::ops
