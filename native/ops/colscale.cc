#include "peftkit/ops/colscale.h"

#include <initializer_list>
#include <string>

#include "peftkit/kernels.h"

namespace pk::ops {

#ifdef PEFTKIT_CUDA
#define PK_ON_DEVICE(device, kernel, ...) \
  ((device) == Device::CPU ? cpu::kernel(__VA_ARGS__) : cuda::kernel(__VA_ARGS__))
#else
#define PK_ON_DEVICE(device, kernel, ...) cpu::kernel(__VA_ARGS__)
#endif

namespace {

bool present(const Tensor& t) { return t.storage != nullptr; }

// "<op> <arg>", the name an error message gives an argument.
std::string named(const char* op, const char* arg) { return std::string(op) + " " + arg; }

// f32, on the device of `first` (named first_name).
void expect_f32_on(const char* op, const Tensor& t, const char* name, const Tensor& first, const char* first_name) {
  expect_dtype(t, DType::F32, named(op, name).c_str());
  expect_same_device(first, t, named(op, first_name).c_str(), named(op, name).c_str());
}

// x viewed as [N, C] rows; returns N.
int64_t rows_of(const char* op, const Tensor& x, const char* name) {
  if (x.ndim() < 1) fail("E_SHAPE", named(op, name) + ": expected at least 1 dimension, got " + x.describe());
  return x.dim(-1) == 0 ? 0 : x.numel() / x.dim(-1);
}

void expect_like(const char* op, const Tensor& t, const char* name, const Tensor& x, const char* xname) {
  if (t.shape != x.shape)
    fail("E_SHAPE", named(op, name) + ": expected the shape of " + xname + " " + shape_str(x.shape) + ", got " +
                        t.describe());
}

// A per-column vector: [C], C the last dimension of x.
void expect_cols(const char* op, const Tensor& v, const char* name, const Tensor& x, const char* xname) {
  const int64_t C = x.dim(-1);
  if (v.ndim() != 1 || v.dim(0) != C)
    fail("E_SHAPE", named(op, name) + ": expected shape [" + std::to_string(C) + "] (the last dimension of " + xname +
                        " " + x.describe() + "), got " + v.describe());
}

bool overlaps(const Tensor& a, const Tensor& b) {
  if (!a.storage || a.storage != b.storage) return false;
  const char *a0 = static_cast<const char*>(a.raw()), *b0 = static_cast<const char*>(b.raw());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// An output that shares memory with an input: allowed only when it is that input itself
// (may_be: the kernel reads each element before writing it), never a partial overlap.
void expect_apart(const char* op, const Tensor& out, const char* out_name, const Tensor& in, const char* in_name,
                  bool may_be) {
  if (!overlaps(out, in)) return;
  if (may_be && out.offset == in.offset && out.nbytes() == in.nbytes()) return;
  fail("E_ARG", named(op, out_name) + " " + out.describe() + " overlaps " + in_name + " " + in.describe() +
                    (may_be ? std::string(" (it may be ") + in_name + " itself, not part of it)"
                            : std::string(" (they must not share memory)")));
}

}  // namespace

void mul_cols(const Tensor& y, const Tensor& x, const Tensor& s) {
  const char* op = "mul_cols";
  expect_f32_on(op, x, "x", x, "x");
  expect_f32_on(op, y, "y", x, "x");
  expect_f32_on(op, s, "s", x, "x");
  const int64_t N = rows_of(op, x, "x");
  expect_like(op, y, "y", x, "x");
  expect_cols(op, s, "s", x, "x");
  expect_apart(op, y, "y", x, "x", true);
  expect_apart(op, y, "y", s, "s", false);
  PK_ON_DEVICE(x.device, mul_cols, y.data<float>(), x.data<float>(), s.data<float>(), N, x.dim(-1));
}

void mul_cols_backward(const Tensor& dx, const Tensor& ds, const Tensor& dy, const Tensor& x, const Tensor& s) {
  const char* op = "mul_cols_backward";
  expect_f32_on(op, x, "x", x, "x");
  expect_f32_on(op, dy, "dy", x, "x");
  expect_f32_on(op, s, "s", x, "x");
  const int64_t N = rows_of(op, x, "x");
  expect_like(op, dy, "dy", x, "x");
  expect_cols(op, s, "s", x, "x");
  if (present(dx)) {
    expect_f32_on(op, dx, "dx", x, "x");
    expect_like(op, dx, "dx", x, "x");
    expect_apart(op, dx, "dx", dy, "dy", true);
    expect_apart(op, dx, "dx", x, "x", true);
    expect_apart(op, dx, "dx", s, "s", false);
  }
  if (present(ds)) {
    expect_f32_on(op, ds, "ds", x, "x");
    expect_cols(op, ds, "ds", x, "x");
    expect_apart(op, ds, "ds", dy, "dy", false);
    expect_apart(op, ds, "ds", x, "x", false);
    expect_apart(op, ds, "ds", s, "s", false);
    if (present(dx)) expect_apart(op, ds, "ds", dx, "dx", false);
  }
  PK_ON_DEVICE(x.device, mul_cols_backward, present(dx) ? dx.data<float>() : nullptr,
               present(ds) ? ds.data<float>() : nullptr, dy.data<float>(), x.data<float>(), s.data<float>(), N,
               x.dim(-1));
}

void row_norms(const Tensor& out, const Tensor& w) {
  const char* op = "row_norms";
  if (w.dtype != DType::F32 && w.dtype != DType::BF16)
    fail("E_DTYPE", named(op, "w") + ": expected dtype f32 or bf16, got " + w.describe());
  expect_f32_on(op, out, "out", w, "w");
  expect_ndim(w, 2, named(op, "w").c_str());
  const int64_t R = w.dim(0), C = w.dim(1);
  if (out.ndim() != 1 || out.dim(0) != R)
    fail("E_SHAPE", named(op, "out") + ": expected shape [" + std::to_string(R) + "] (the rows of w " + w.describe() +
                        "), got " + out.describe());
  expect_apart(op, out, "out", w, "w", false);
  PK_ON_DEVICE(w.device, row_norms, out.data<float>(), w.raw(), w.dtype, R, C);
}

namespace {
struct VecArg {
  const Tensor& t;
  const char* what;
};

// DoRA's per-row vectors: f32, one shape [n], one device (that of norms); outputs apart from inputs.
int64_t expect_rows_vectors(const char* op, const Tensor& norms, std::initializer_list<VecArg> outs,
                            std::initializer_list<VecArg> ins) {
  expect_f32_on(op, norms, "norms", norms, "norms");
  if (norms.ndim() != 1) fail("E_SHAPE", named(op, "norms") + ": expected [n], got " + norms.describe());
  for (const VecArg& a : outs) {
    expect_f32_on(op, a.t, a.what, norms, "norms");
    expect_like(op, a.t, a.what, norms, "norms");
    expect_apart(op, a.t, a.what, norms, "norms", false);
    for (const VecArg& b : ins) expect_apart(op, a.t, a.what, b.t, b.what, false);
  }
  for (const VecArg& b : ins) {
    expect_f32_on(op, b.t, b.what, norms, "norms");
    expect_like(op, b.t, b.what, norms, "norms");
  }
  return norms.dim(0);
}
}  // namespace

void dora_scale(const Tensor& g, const Tensor& g_minus_1, const Tensor& m, const Tensor& norms) {
  const char* op = "dora_scale";
  const int64_t n = expect_rows_vectors(op, norms, {{g, "g"}, {g_minus_1, "gMinus1"}}, {{m, "m"}});
  expect_apart(op, g, "g", g_minus_1, "gMinus1", false);
  PK_ON_DEVICE(norms.device, dora_scale, g.data<float>(), g_minus_1.data<float>(), m.data<float>(),
               norms.data<float>(), n);
}

void dora_magnitude_backward(const Tensor& dm, const Tensor& dg, const Tensor& norms) {
  const char* op = "dora_magnitude_backward";
  const int64_t n = expect_rows_vectors(op, norms, {{dm, "dm"}}, {{dg, "dg"}});
  PK_ON_DEVICE(norms.device, dora_magnitude_backward, dm.data<float>(), dg.data<float>(), norms.data<float>(), n);
}

}  // namespace pk::ops
