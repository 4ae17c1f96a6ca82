#include "peftkit/ops/optim.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

namespace pk::ops {

namespace {

std::string at(const char* what, size_t i) { return std::string(what) + "[" + std::to_string(i) + "]"; }

void expect_f32_on(const Tensor& t, Device device, const std::string& what) {
  expect_dtype(t, DType::F32, what.c_str());
  if (t.device != device)
    fail("E_DEVICE", what + ": expected a tensor on " + device_name(device) + " (like the first one), got " +
                         t.describe());
}

// The kernels update tensors in parallel: a tensor listed twice (or a grad that is also a
// param or a state) would be written by two threads at once.
void expect_distinct(std::vector<std::pair<const void*, std::string>> ptrs) {
  std::sort(ptrs.begin(), ptrs.end());
  for (size_t i = 1; i < ptrs.size(); i++)
    if (ptrs[i].first == ptrs[i - 1].first)
      fail("E_ARG", ptrs[i - 1].second + " and " + ptrs[i].second + " are the same tensor");
}

std::vector<ParamRef> grad_refs(const std::vector<Tensor>& grads, const char* op) {
  std::vector<ParamRef> refs;
  std::vector<std::pair<const void*, std::string>> ptrs;
  for (size_t i = 0; i < grads.size(); i++) {
    const std::string what = at(op, i);
    expect_f32_on(grads[i], grads[0].device, what);
    refs.push_back(ParamRef{nullptr, grads[i].data<float>(), nullptr, nullptr, grads[i].numel(), 0.f});
    if (grads[i].numel() > 0) ptrs.emplace_back(grads[i].raw(), what);
  }
  expect_distinct(std::move(ptrs));
  return refs;
}

double sumsq(const std::vector<ParamRef>& refs, Device device) {
  if (device == Device::CPU) return cpu::grad_sumsq(refs.data(), int64_t(refs.size()));
#ifdef PEFTKIT_CUDA
  return cuda::grad_sumsq(refs.data(), int64_t(refs.size()));
#else
  return 0.0;  // unreachable: a CUDA tensor cannot exist without the CUDA build
#endif
}

}  // namespace

void adamw(const std::vector<AdamWSlot>& slots, const AdamWHyper& h) {
  if (!std::isfinite(h.lr) || h.lr < 0) fail("E_ARG", "adamw lr: expected a finite number >= 0, got " + std::to_string(h.lr));
  if (!(h.beta1 >= 0 && h.beta1 < 1)) fail("E_ARG", "adamw beta1: expected a number in [0, 1), got " + std::to_string(h.beta1));
  if (!(h.beta2 >= 0 && h.beta2 < 1)) fail("E_ARG", "adamw beta2: expected a number in [0, 1), got " + std::to_string(h.beta2));
  if (!std::isfinite(h.eps) || h.eps < 0) fail("E_ARG", "adamw eps: expected a finite number >= 0, got " + std::to_string(h.eps));
  if (h.step < 1) fail("E_ARG", "adamw step: expected the 1-based step number (>= 1), got " + std::to_string(h.step));
  if (slots.empty()) return;
  const Device device = slots[0].param.device;
  std::vector<ParamRef> refs;
  std::vector<std::pair<const void*, std::string>> ptrs;
  for (size_t i = 0; i < slots.size(); i++) {
    const AdamWSlot& s = slots[i];
    const std::string what = at("adamw params", i);
    const std::pair<const Tensor*, const char*> parts[] = {{&s.param, ".param"}, {&s.grad, ".grad"}, {&s.m, ".m"}, {&s.v, ".v"}};
    for (const auto& [t, name] : parts) {
      expect_f32_on(*t, device, what + name);
      if (t->shape != s.param.shape)
        fail("E_SHAPE", what + name + ": expected shape " + shape_str(s.param.shape) + " (the param's), got " +
                            t->describe());
      if (t->numel() > 0) ptrs.emplace_back(t->raw(), what + name);
    }
    if (!std::isfinite(s.weight_decay) || s.weight_decay < 0)
      fail("E_ARG", what + ".weightDecay: expected a finite number >= 0, got " + std::to_string(s.weight_decay));
    refs.push_back(ParamRef{s.param.data<float>(), s.grad.data<float>(), s.m.data<float>(), s.v.data<float>(),
                            s.param.numel(), s.weight_decay});
  }
  expect_distinct(std::move(ptrs));
  if (device == Device::CPU) {
    cpu::adamw(refs.data(), int64_t(refs.size()), h);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::adamw(refs.data(), int64_t(refs.size()), h);
#endif
}

double grad_norm(const std::vector<Tensor>& grads) {
  const std::vector<ParamRef> refs = grad_refs(grads, "gradNorm grads");
  return refs.empty() ? 0.0 : std::sqrt(sumsq(refs, grads[0].device));
}

void grad_sumsq_into(const Tensor& out, const std::vector<Tensor>& grads) {
  expect_dtype(out, DType::F64, "gradSumsqInto out");
  if (out.numel() != 1) fail("E_SHAPE", "gradSumsqInto out: expected one element, got " + out.describe());
  const std::vector<ParamRef> refs = grad_refs(grads, "gradSumsqInto tensors");
  if (!refs.empty()) expect_same_device(out, grads[0], "gradSumsqInto out", "gradSumsqInto tensors[0]");
  if (out.device == Device::CPU) {
    cpu::grad_sumsq_into(out.data<double>(), refs.data(), int64_t(refs.size()));
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::grad_sumsq_into(out.data<double>(), refs.data(), int64_t(refs.size()));
#endif
}

namespace {

void expect_max_norm(double max_norm) {
  if (std::isnan(max_norm) || max_norm < 0)
    fail("E_ARG", "clipGradNorm maxNorm: expected a number >= 0, got " + std::to_string(max_norm));
}

// The scaling of clip_grad_norm for `norm` over the (non-empty) refs.
void scale_to(const std::vector<ParamRef>& refs, Device device, double max_norm, double norm) {
  if (!std::isfinite(norm)) return;
  // As torch: the norm is an f32 tensor and the coefficient is formed in f32, then clamped to 1.
  const float coef = float(max_norm) / (float(norm) + 1e-6f);
  if (!(coef < 1.f)) return;
  if (device == Device::CPU) {
    cpu::grad_scale(refs.data(), int64_t(refs.size()), coef);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::grad_scale(refs.data(), int64_t(refs.size()), coef);
#endif
}

}  // namespace

double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm) {
  expect_max_norm(max_norm);
  const std::vector<ParamRef> refs = grad_refs(grads, "clipGradNorm grads");
  if (refs.empty()) return 0.0;
  const double norm = std::sqrt(sumsq(refs, grads[0].device));
  scale_to(refs, grads[0].device, max_norm, norm);
  return norm;
}

void clip_grads_to(const std::vector<Tensor>& grads, double max_norm, double norm) {
  expect_max_norm(max_norm);
  const std::vector<ParamRef> refs = grad_refs(grads, "clipGradNorm grads");
  if (!refs.empty()) scale_to(refs, grads[0].device, max_norm, norm);
}

}  // namespace pk::ops
