// Argument checks and device dispatch shared by the ops (native/ops/*.cc). Every message names
// the argument ("lora_forward W: expected ..."), so a caller learns which tensor is wrong.
#pragma once
#include <cmath>
#include <initializer_list>
#include <string>
#include <vector>

#include "../tensor.h"

namespace pk::ops {

// An optional tensor argument and its name for messages; an absent one is an empty Tensor.
struct Arg {
  const Tensor& t;
  const char* what;
  bool present() const { return t.storage != nullptr; }
};

inline bool present(const Tensor& t) { return t.storage != nullptr; }

inline void expect_f32(const Arg& a) {
  if (a.present()) expect_dtype(a.t, DType::F32, a.what);
}

// The leading dims of x [..., last]: they flatten into the M rows of a matmul.
inline std::vector<int64_t> leading_dims(const Arg& x, const char* last_name) {
  if (x.t.ndim() < 1)
    fail("E_SHAPE", std::string(x.what) + ": expected at least 1 dimension [..., " + last_name + "], got " +
                        x.t.describe());
  return std::vector<int64_t>(x.t.shape.begin(), x.t.shape.end() - 1);
}

inline std::vector<int64_t> with_last(std::vector<int64_t> lead, int64_t last) {
  lead.push_back(last);
  return lead;
}

inline int64_t product(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

inline void expect_scale(float s, const char* what) {
  if (!std::isfinite(s)) fail("E_ARG", std::string(what) + ": expected a finite number, got " + std::to_string(s));
}

// Every present tensor on the device of the first one.
inline void expect_one_device(std::initializer_list<Arg> args) {
  const Arg& first = *args.begin();
  for (const Arg& a : args)
    if (a.present()) expect_same_device(first.t, a.t, first.what, a.what);
}

// An output must not share memory with any other argument: kernels read inputs while writing it.
inline void expect_distinct(std::initializer_list<Arg> outputs, std::initializer_list<Arg> args) {
  for (const Arg& o : outputs) {
    if (!o.present()) continue;
    for (const Arg& a : args)
      if (a.what != o.what && a.present() && a.t.storage == o.t.storage)
        fail("E_ARG", std::string(o.what) + " and " + a.what + " are the same tensor; " + o.what +
                          " is written while " + a.what + " is read, so pass a separate tensor");
  }
}

}  // namespace pk::ops

// Runs the kernel `call` (a function of the op table, kernels.inc, with its arguments) on the
// device `dev`: pk::cpu::call or pk::cuda::call. The two namespaces declare the same table, so
// one expression serves both; a build without CUDA holds no CUDA tensor.
#define PK_DISPATCH(dev, ...)                                       \
  do {                                                              \
    if ((dev) == ::pk::Device::CPU) {                               \
      ::pk::cpu::__VA_ARGS__;                                       \
    } else {                                                        \
      PK_DISPATCH_CUDA_(__VA_ARGS__);                               \
    }                                                               \
  } while (0)
#ifdef PEFTKIT_CUDA
#define PK_DISPATCH_CUDA_(...) ::pk::cuda::__VA_ARGS__
#else
#define PK_DISPATCH_CUDA_(...) ::pk::fail("E_DEVICE", "this peftkit build has no CUDA support")
#endif
