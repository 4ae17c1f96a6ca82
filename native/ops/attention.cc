#include "peftkit/ops/attention.h"

#include <cmath>
#include <initializer_list>

#include "peftkit/kernels.h"

namespace pk::ops {

namespace {

struct AttentionShape {
  int64_t B, Tq, Tk, Hq, Hkv, D;
};

// q [B, Tq, Hq, D] and k, v [B, Tk, Hkv, D]: every size the kernels take, checked once.
AttentionShape check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const char* op) {
  const std::string o(op);
  expect_ndim(q, 4, (o + " q").c_str());
  expect_ndim(k, 4, (o + " k").c_str());
  expect_dtype(q, DType::F32, (o + " q").c_str());
  expect_dtype(k, DType::F32, (o + " k").c_str());
  expect_dtype(v, DType::F32, (o + " v").c_str());
  expect_same_device(q, k, (o + " q").c_str(), (o + " k").c_str());
  expect_same_device(q, v, (o + " q").c_str(), (o + " v").c_str());
  const AttentionShape s{q.dim(0), q.dim(1), k.dim(1), q.dim(2), k.dim(2), q.dim(3)};
  if (s.D < 1) fail("E_SHAPE", o + " q: head size D (last dimension) must be at least 1, got " + q.describe());
  if (s.Hq < 1 || s.Hkv < 1)
    fail("E_SHAPE", o + ": q and k need at least one head (dimension 2), got q " + q.describe() + " and k " +
                        k.describe());
  if (k.dim(0) != s.B || k.dim(3) != s.D)
    fail("E_SHAPE", o + " k: expected [B=" + std::to_string(s.B) + ", Tk, Hkv, D=" + std::to_string(s.D) +
                        "] to match q " + q.describe() + ", got " + k.describe());
  if (s.Hq % s.Hkv != 0)
    fail("E_SHAPE", o + ": query heads Hq=" + std::to_string(s.Hq) + " must be a multiple of key/value heads Hkv=" +
                        std::to_string(s.Hkv) + " (grouped-query attention)");
  if (s.Tk < s.Tq)
    fail("E_SHAPE", o + ": k has Tk=" + std::to_string(s.Tk) + " positions, fewer than the Tq=" +
                        std::to_string(s.Tq) + " queries (the causal offset Tk - Tq must be >= 0)");
  expect_shape(v, k.shape, (o + " v").c_str());
  if (!std::isfinite(scale)) fail("E_ARG", o + ": scale must be a finite number, got " + std::to_string(scale));
  return s;
}

// Outputs are written while inputs are still read (and by other threads), so none may share memory.
void expect_no_overlap(std::initializer_list<const Tensor*> outputs, std::initializer_list<const Tensor*> all,
                       const char* op) {
  for (const Tensor* o : outputs)
    for (const Tensor* t : all)
      if (o != t && o->storage && o->storage == t->storage)
        fail("E_ARG", std::string(op) + ": an output shares memory with another argument (" + o->describe() + ")");
}

}  // namespace

void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                       float scale) {
  const AttentionShape s = check_inputs(q, k, v, scale, "attention_forward");
  expect_dtype(out, DType::F32, "attention_forward out");
  expect_dtype(lse, DType::F32, "attention_forward lse");
  expect_shape(out, q.shape, "attention_forward out");
  expect_shape(lse, {s.B, s.Hq, s.Tq}, "attention_forward lse");
  expect_same_device(q, out, "attention_forward q", "attention_forward out");
  expect_same_device(q, lse, "attention_forward q", "attention_forward lse");
  expect_no_overlap({&out, &lse}, {&out, &lse, &q, &k, &v}, "attention_forward");
  float *o = out.data<float>(), *l = lse.data<float>();
  const float *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>();
  if (q.device == Device::CPU) {
    cpu::attention_forward(o, l, qp, kp, vp, s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.D, scale);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::attention_forward(o, l, qp, kp, vp, s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.D, scale);
#endif
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, float scale) {
  const AttentionShape s = check_inputs(q, k, v, scale, "attention_backward");
  const char* what[] = {"attention_backward dq", "attention_backward dk", "attention_backward dv",
                        "attention_backward dout", "attention_backward out", "attention_backward lse"};
  const Tensor* ts[] = {&dq, &dk, &dv, &dout, &out, &lse};
  for (int i = 0; i < 6; i++) {
    expect_dtype(*ts[i], DType::F32, what[i]);
    expect_same_device(q, *ts[i], "attention_backward q", what[i]);
  }
  expect_shape(dq, q.shape, what[0]);
  expect_shape(dk, k.shape, what[1]);
  expect_shape(dv, k.shape, what[2]);
  expect_shape(dout, q.shape, what[3]);
  expect_shape(out, q.shape, what[4]);
  expect_shape(lse, {s.B, s.Hq, s.Tq}, what[5]);
  expect_no_overlap({&dq, &dk, &dv}, {&dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse}, "attention_backward");
  float *gq = dq.data<float>(), *gk = dk.data<float>(), *gv = dv.data<float>();
  const float *go = dout.data<float>(), *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>(),
              *op = out.data<float>(), *lp = lse.data<float>();
  if (q.device == Device::CPU) {
    cpu::attention_backward(gq, gk, gv, go, qp, kp, vp, op, lp, s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.D, scale);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::attention_backward(gq, gk, gv, go, qp, kp, vp, op, lp, s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.D, scale);
#endif
}

}  // namespace pk::ops
