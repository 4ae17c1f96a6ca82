#include "peftkit/ops/optim8.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

namespace pk::ops {

namespace {

void check_hyper(const AdamWHyper& h) {
  if (!std::isfinite(h.lr) || h.lr < 0) fail("E_ARG", "adamw8bit lr: expected a finite number >= 0, got " + std::to_string(h.lr));
  if (!(h.beta1 >= 0 && h.beta1 < 1)) fail("E_ARG", "adamw8bit beta1: expected a number in [0, 1), got " + std::to_string(h.beta1));
  if (!(h.beta2 >= 0 && h.beta2 < 1)) fail("E_ARG", "adamw8bit beta2: expected a number in [0, 1), got " + std::to_string(h.beta2));
  if (!std::isfinite(h.eps) || h.eps < 0) fail("E_ARG", "adamw8bit eps: expected a finite number >= 0, got " + std::to_string(h.eps));
  if (h.step < 1) fail("E_ARG", "adamw8bit step: expected the 1-based step number (>= 1), got " + std::to_string(h.step));
}

void expect_on(const Tensor& t, Device device, const std::string& what) {
  if (t.device != device)
    fail("E_DEVICE", what + ": expected a tensor on " + device_name(device) + " (like the first param), got " + t.describe());
}

// Checks one slot and returns its kernel view; every tensor it holds goes into `all`.
AdamW8bitRef slot_ref(const AdamW8bitSlot& s, const std::string& what,
                      std::vector<std::pair<const Tensor*, std::string>>& all) {
  const int64_t n = s.param.numel();
  expect_dtype(s.param, DType::F32, (what + ".param").c_str());
  expect_dtype(s.grad, DType::F32, (what + ".grad").c_str());
  expect_shape(s.grad, s.param.shape, (what + ".grad").c_str());
  all.emplace_back(&s.param, what + ".param");
  all.emplace_back(&s.grad, what + ".grad");
  AdamW8bitRef r{s.param.data<float>(), s.grad.data<float>(), n, s.weight_decay, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  const bool quantized = s.m.dtype == DType::U8;
  const DType state = quantized ? DType::U8 : DType::F32;
  if (s.m.dtype != DType::U8 && s.m.dtype != DType::F32)
    fail("E_DTYPE", what + ".m: expected u8 codes (8-bit states) or f32 (small tensors), got " + s.m.describe());
  expect_dtype(s.v, state, (what + ".v (like .m)").c_str());
  expect_shape(s.m, s.param.shape, (what + ".m").c_str());
  expect_shape(s.v, s.param.shape, (what + ".v").c_str());
  all.emplace_back(&s.m, what + ".m");
  all.emplace_back(&s.v, what + ".v");
  if (quantized) {
    const std::vector<int64_t> blocks{(n + kAdamW8bitBlock - 1) / kAdamW8bitBlock};
    for (const auto& [t, name] : {std::pair{&s.m_absmax, ".mAbsmax"}, std::pair{&s.v_absmax, ".vAbsmax"}}) {
      if (!t->storage) fail("E_ARG", what + name + ": 8-bit states need one f32 absmax per block of 256 elements");
      expect_dtype(*t, DType::F32, (what + name).c_str());
      expect_shape(*t, blocks, (what + name + " (one per block of 256)").c_str());
      all.emplace_back(t, what + name);
    }
    r.m_code = s.m.data<uint8_t>();
    r.v_code = s.v.data<uint8_t>();
    r.m_absmax = s.m_absmax.data<float>();
    r.v_absmax = s.v_absmax.data<float>();
  } else {
    if (s.m_absmax.storage || s.v_absmax.storage)
      fail("E_ARG", what + ": f32 states take no absmax (absmax belongs to 8-bit u8 states)");
    r.m = s.m.data<float>();
    r.v = s.v.data<float>();
  }
  if (!std::isfinite(s.weight_decay) || s.weight_decay < 0)
    fail("E_ARG", what + ".weightDecay: expected a finite number >= 0, got " + std::to_string(s.weight_decay));
  return r;
}

}  // namespace

int64_t adamw8bit(const std::vector<AdamW8bitSlot>& slots, const AdamWHyper& h, bool count_skipped) {
  check_hyper(h);
  if (slots.empty()) return count_skipped ? 0 : -1;
  const Device device = slots[0].param.device;
  std::vector<AdamW8bitRef> refs;
  std::vector<std::pair<const Tensor*, std::string>> all;
  for (size_t i = 0; i < slots.size(); i++)
    refs.push_back(slot_ref(slots[i], "adamw8bit params[" + std::to_string(i) + "]", all));
  // The kernel updates tensors in parallel: one listed twice would be written by two threads.
  std::vector<std::pair<const void*, const std::string*>> ptrs;
  for (const auto& [t, what] : all) {
    expect_on(*t, device, what);
    if (t->numel() > 0) ptrs.emplace_back(t->raw(), &what);
  }
  std::sort(ptrs.begin(), ptrs.end());
  for (size_t i = 1; i < ptrs.size(); i++)
    if (ptrs[i].first == ptrs[i - 1].first) fail("E_ARG", *ptrs[i - 1].second + " and " + *ptrs[i].second + " are the same tensor");

  for (const auto& e : all) page_in(*e.first);
  int64_t skipped = count_skipped ? 0 : -1;
  if (device == Device::CPU) skipped = cpu::adamw8bit(refs.data(), int64_t(refs.size()), h, count_skipped);
#ifdef PEFTKIT_CUDA
  else skipped = cuda::adamw8bit(refs.data(), int64_t(refs.size()), h, count_skipped);
#endif
  for (const auto& e : all) page_out(*e.first);
  return skipped;
}

}  // namespace pk::ops
