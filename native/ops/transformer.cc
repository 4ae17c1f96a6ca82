#include "peftkit/ops/transformer.h"

#include <cmath>
#include <initializer_list>
#include <string>
#include <vector>

#include "peftkit/kernels.h"
#include "peftkit/ops/index_fault.h"

namespace pk::ops {

// Runs kernel(args...) on the device the tensors live on (checked to be one device).
#ifdef PEFTKIT_CUDA
#define PK_ON_DEVICE(device, kernel, ...) \
  ((device) == Device::CPU ? cpu::kernel(__VA_ARGS__) : cuda::kernel(__VA_ARGS__))
#else
#define PK_ON_DEVICE(device, kernel, ...) cpu::kernel(__VA_ARGS__)
#endif

namespace {

struct Arg {
  const Tensor& t;
  const char* name;
};

bool present(const Tensor& t) { return t.storage != nullptr; }

// "<op> <arg>", the name an error message gives an argument.
std::string named(const char* op, const char* arg) { return std::string(op) + " " + arg; }

// Every tensor argument has the dtype and the device of the first one.
void expect_args(const char* op, DType dtype, std::initializer_list<Arg> args) {
  const Arg& first = *args.begin();
  for (const Arg& a : args) {
    expect_dtype(a.t, dtype, named(op, a.name).c_str());
    expect_same_device(first.t, a.t, named(op, first.name).c_str(), named(op, a.name).c_str());
  }
}

// The shape of every other argument is that of the first.
void expect_same_shape(const char* op, std::initializer_list<Arg> args) {
  const Arg& first = *args.begin();
  for (const Arg& a : args) {
    if (a.t.shape != first.t.shape)
      fail("E_SHAPE", named(op, a.name) + ": expected the shape of " + first.name + " " + shape_str(first.t.shape) +
                          ", got " + a.t.describe());
  }
}

// x viewed as [N, C] rows: C is the last dimension, N the product of the others.
struct Rows {
  int64_t N, C;
  std::vector<int64_t> leading;  // x.shape without its last dimension
};

Rows rows_of(const Tensor& x, const char* op, const char* name) {
  if (x.ndim() < 1) fail("E_SHAPE", named(op, name) + ": expected at least 1 dimension, got " + x.describe());
  Rows r;
  r.leading.assign(x.shape.begin(), x.shape.end() - 1);
  r.C = x.dim(-1);
  r.N = 1;
  for (int64_t d : r.leading) r.N *= d;
  return r;
}

void expect_eps(const char* op, float eps) {
  if (!(eps >= 0.f) || !std::isfinite(eps))
    fail("E_ARG", named(op, "eps") + ": expected a finite number >= 0, got " + std::to_string(eps));
}

void expect_norm_args(const char* op, const Tensor& x, const Rows& r, const Tensor& w,
                      std::initializer_list<Arg> per_row) {
  if (r.C == 0) fail("E_SHAPE", named(op, "x") + ": the normalized (last) dimension is empty: " + x.describe());
  expect_shape(w, {r.C}, named(op, "w").c_str());
  for (const Arg& a : per_row) expect_shape(a.t, r.leading, named(op, a.name).c_str());
}

void expect_probability(const char* op, float p) {
  if (!(p >= 0.f && p <= 1.f)) fail("E_ARG", named(op, "p") + ": expected a probability in [0, 1], got " + std::to_string(p));
}

// x: [..., T, H, D] against tables [T, D/2]; returns B, the product of the leading dimensions.
int64_t rope_batch(const char* op, const Tensor& x, const char* xname, const Tensor& cos, const Tensor& sin) {
  if (x.ndim() < 3) fail("E_SHAPE", named(op, xname) + ": expected [..., T, H, D], got " + x.describe());
  const int64_t T = x.dim(-3), D = x.dim(-1);
  if (D % 2 != 0 || D == 0)
    fail("E_SHAPE", named(op, xname) + ": the head size D (last dimension) must be even and > 0, got " + x.describe());
  expect_shape(cos, {T, D / 2}, named(op, "cos").c_str());
  expect_shape(sin, {T, D / 2}, named(op, "sin").c_str());
  int64_t B = 1;
  for (int k = 0; k < x.ndim() - 3; k++) B *= x.shape[size_t(k)];
  return B;
}

}  // namespace

// ---- Embedding --------------------------------------------------------------------------------

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table, const Tensor& fault) {
  const char* op = "embedding_forward";
  expect_args(op, DType::F32, {{out, "out"}});
  if (table.dtype != DType::F32 && table.dtype != DType::BF16)
    fail("E_DTYPE", named(op, "table") + ": expected dtype f32 or bf16, got " + table.describe());
  expect_same_device(out, table, named(op, "out").c_str(), named(op, "table").c_str());
  expect_dtype(ids, DType::I32, named(op, "ids").c_str());
  expect_same_device(out, ids, named(op, "out").c_str(), named(op, "ids").c_str());
  expect_ndim(table, 2, named(op, "table").c_str());
  const int64_t V = table.dim(0), C = table.dim(1);
  std::vector<int64_t> want = ids.shape;
  want.push_back(C);
  expect_shape(out, want, named(op, "out").c_str());
  double* record = check_ids(op, ids, V, fault);
  PK_ON_DEVICE(out.device, embedding_forward, out.data<float>(), ids.data<int32_t>(), table.raw(), table.dtype,
               ids.numel(), C, V, record);
}

void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& ids, const Tensor& fault) {
  const char* op = "embedding_backward";
  expect_args(op, DType::F32, {{dtable, "dtable"}, {dout, "dout"}});
  expect_dtype(ids, DType::I32, named(op, "ids").c_str());
  expect_same_device(dtable, ids, named(op, "dtable").c_str(), named(op, "ids").c_str());
  expect_ndim(dtable, 2, named(op, "dtable").c_str());
  const int64_t V = dtable.dim(0), C = dtable.dim(1);
  std::vector<int64_t> want = ids.shape;
  want.push_back(C);
  expect_shape(dout, want, named(op, "dout").c_str());
  double* record = check_ids(op, ids, V, fault);
  PK_ON_DEVICE(dtable.device, embedding_backward, dtable.data<float>(), dout.data<float>(), ids.data<int32_t>(),
               ids.numel(), C, V, record);
}

// ---- Normalization ----------------------------------------------------------------------------

void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, float eps) {
  const char* op = "rmsnorm_forward";
  expect_args(op, DType::F32, {{x, "x"}, {out, "out"}, {rstd, "rstd"}, {w, "w"}});
  const Rows r = rows_of(x, op, "x");
  expect_same_shape(op, {{x, "x"}, {out, "out"}});
  expect_norm_args(op, x, r, w, {{rstd, "rstd"}});
  expect_eps(op, eps);
  PK_ON_DEVICE(x.device, rmsnorm_forward, out.data<float>(), rstd.data<float>(), x.data<float>(), w.data<float>(),
               r.N, r.C, eps);
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                      const Tensor& rstd) {
  const char* op = "rmsnorm_backward";
  expect_args(op, DType::F32, {{x, "x"}, {dx, "dx"}, {dout, "dout"}, {w, "w"}, {rstd, "rstd"}});
  const Rows r = rows_of(x, op, "x");
  expect_same_shape(op, {{x, "x"}, {dx, "dx"}, {dout, "dout"}});
  expect_norm_args(op, x, r, w, {{rstd, "rstd"}});
  if (present(dw)) {
    expect_args(op, DType::F32, {{x, "x"}, {dw, "dw"}});
    expect_shape(dw, {r.C}, named(op, "dw").c_str());
  }
  PK_ON_DEVICE(x.device, rmsnorm_backward, dx.data<float>(), present(dw) ? dw.data<float>() : nullptr,
               dout.data<float>(), x.data<float>(), w.data<float>(), rstd.data<float>(), r.N, r.C);
}

void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& x, const Tensor& w,
                       const Tensor& b, float eps) {
  const char* op = "layernorm_forward";
  expect_args(op, DType::F32, {{x, "x"}, {out, "out"}, {mean, "mean"}, {rstd, "rstd"}, {w, "w"}});
  const Rows r = rows_of(x, op, "x");
  expect_same_shape(op, {{x, "x"}, {out, "out"}});
  expect_norm_args(op, x, r, w, {{mean, "mean"}, {rstd, "rstd"}});
  if (present(b)) {
    expect_args(op, DType::F32, {{x, "x"}, {b, "b"}});
    expect_shape(b, {r.C}, named(op, "b").c_str());
  }
  expect_eps(op, eps);
  PK_ON_DEVICE(x.device, layernorm_forward, out.data<float>(), mean.data<float>(), rstd.data<float>(),
               x.data<float>(), w.data<float>(), present(b) ? b.data<float>() : nullptr, r.N, r.C, eps);
}

void layernorm_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dout, const Tensor& x,
                        const Tensor& w, const Tensor& mean, const Tensor& rstd) {
  const char* op = "layernorm_backward";
  expect_args(op, DType::F32, {{x, "x"}, {dx, "dx"}, {dout, "dout"}, {w, "w"}, {mean, "mean"}, {rstd, "rstd"}});
  const Rows r = rows_of(x, op, "x");
  expect_same_shape(op, {{x, "x"}, {dx, "dx"}, {dout, "dout"}});
  expect_norm_args(op, x, r, w, {{mean, "mean"}, {rstd, "rstd"}});
  for (const Arg& a : {Arg{dw, "dw"}, Arg{db, "db"}}) {
    if (!present(a.t)) continue;
    expect_args(op, DType::F32, {{x, "x"}, a});
    expect_shape(a.t, {r.C}, named(op, a.name).c_str());
  }
  PK_ON_DEVICE(x.device, layernorm_backward, dx.data<float>(), present(dw) ? dw.data<float>() : nullptr,
               present(db) ? db.data<float>() : nullptr, dout.data<float>(), x.data<float>(), w.data<float>(),
               mean.data<float>(), rstd.data<float>(), r.N, r.C);
}

// ---- Rotary position embedding ----------------------------------------------------------------

void rope_table(const Tensor& cos, const Tensor& sin, const Tensor& positions, float theta, RopeScaling scaling) {
  const char* op = "rope_table";
  expect_args(op, DType::F32, {{cos, "cos"}, {sin, "sin"}});
  expect_dtype(positions, DType::I32, named(op, "positions").c_str());
  expect_same_device(cos, positions, named(op, "cos").c_str(), named(op, "positions").c_str());
  expect_ndim(positions, 1, named(op, "positions").c_str());
  expect_ndim(cos, 2, named(op, "cos").c_str());
  const int64_t T = positions.dim(0), half = cos.dim(1);
  if (half == 0) fail("E_SHAPE", named(op, "cos") + ": expected [T, D/2] with D > 0, got " + cos.describe());
  expect_shape(cos, {T, half}, named(op, "cos").c_str());
  expect_shape(sin, {T, half}, named(op, "sin").c_str());
  if (!(theta > 0.f) || !std::isfinite(theta))
    fail("E_ARG", named(op, "theta") + ": expected a finite number > 0, got " + std::to_string(theta));
  if (!(scaling.factor >= 0.f) || !std::isfinite(scaling.factor))
    fail("E_ARG", named(op, "scaling.factor") + ": expected 0 (no scaling) or a finite number > 0, got " +
                      std::to_string(scaling.factor));
  if (scaling.factor > 0.f) {
    if (!(scaling.low_freq_factor > 0.f && scaling.low_freq_factor < scaling.high_freq_factor) ||
        !std::isfinite(scaling.high_freq_factor))
      fail("E_ARG", named(op, "scaling") + ": expected 0 < lowFreqFactor < highFreqFactor, got " +
                        std::to_string(scaling.low_freq_factor) + " and " + std::to_string(scaling.high_freq_factor));
    if (!(scaling.original_max_position_embeddings > 0.f) || !std::isfinite(scaling.original_max_position_embeddings))
      fail("E_ARG", named(op, "scaling.originalMaxPositionEmbeddings") + ": expected a number > 0, got " +
                        std::to_string(scaling.original_max_position_embeddings));
  }
  PK_ON_DEVICE(cos.device, rope_table, cos.data<float>(), sin.data<float>(), positions.data<int32_t>(), T, 2 * half,
               theta, scaling);
}

void rope_forward(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  const char* op = "rope_forward";
  expect_args(op, DType::F32, {{x, "x"}, {out, "out"}, {cos, "cos"}, {sin, "sin"}});
  const int64_t B = rope_batch(op, x, "x", cos, sin);
  expect_same_shape(op, {{x, "x"}, {out, "out"}});
  PK_ON_DEVICE(x.device, rope_forward, out.data<float>(), x.data<float>(), cos.data<float>(), sin.data<float>(), B,
               x.dim(-3), x.dim(-2), x.dim(-1));
}

void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin) {
  const char* op = "rope_backward";
  expect_args(op, DType::F32, {{dout, "dout"}, {dx, "dx"}, {cos, "cos"}, {sin, "sin"}});
  const int64_t B = rope_batch(op, dout, "dout", cos, sin);
  expect_same_shape(op, {{dout, "dout"}, {dx, "dx"}});
  PK_ON_DEVICE(dout.device, rope_backward, dx.data<float>(), dout.data<float>(), cos.data<float>(), sin.data<float>(),
               B, dout.dim(-3), dout.dim(-2), dout.dim(-1));
}

// ---- Activations and elementwise --------------------------------------------------------------

void silu_forward(const Tensor& out, const Tensor& x) {
  const char* op = "silu_forward";
  expect_args(op, DType::F32, {{x, "x"}, {out, "out"}});
  expect_same_shape(op, {{x, "x"}, {out, "out"}});
  PK_ON_DEVICE(x.device, silu_forward, out.data<float>(), x.data<float>(), x.numel());
}

void silu_backward(const Tensor& dx, const Tensor& dout, const Tensor& x) {
  const char* op = "silu_backward";
  expect_args(op, DType::F32, {{x, "x"}, {dx, "dx"}, {dout, "dout"}});
  expect_same_shape(op, {{x, "x"}, {dx, "dx"}, {dout, "dout"}});
  PK_ON_DEVICE(x.device, silu_backward, dx.data<float>(), dout.data<float>(), x.data<float>(), x.numel());
}

void gelu_forward(const Tensor& out, const Tensor& x, bool tanh_approx) {
  const char* op = "gelu_forward";
  expect_args(op, DType::F32, {{x, "x"}, {out, "out"}});
  expect_same_shape(op, {{x, "x"}, {out, "out"}});
  PK_ON_DEVICE(x.device, gelu_forward, out.data<float>(), x.data<float>(), x.numel(), tanh_approx);
}

void gelu_backward(const Tensor& dx, const Tensor& dout, const Tensor& x, bool tanh_approx) {
  const char* op = "gelu_backward";
  expect_args(op, DType::F32, {{x, "x"}, {dx, "dx"}, {dout, "dout"}});
  expect_same_shape(op, {{x, "x"}, {dx, "dx"}, {dout, "dout"}});
  PK_ON_DEVICE(x.device, gelu_backward, dx.data<float>(), dout.data<float>(), x.data<float>(), x.numel(), tanh_approx);
}

void relu_forward(const Tensor& out, const Tensor& x) {
  const char* op = "relu_forward";
  expect_args(op, DType::F32, {{x, "x"}, {out, "out"}});
  expect_same_shape(op, {{x, "x"}, {out, "out"}});
  PK_ON_DEVICE(x.device, relu_forward, out.data<float>(), x.data<float>(), x.numel());
}

void relu_backward(const Tensor& dx, const Tensor& dout, const Tensor& x) {
  const char* op = "relu_backward";
  expect_args(op, DType::F32, {{x, "x"}, {dx, "dx"}, {dout, "dout"}});
  expect_same_shape(op, {{x, "x"}, {dx, "dx"}, {dout, "dout"}});
  PK_ON_DEVICE(x.device, relu_backward, dx.data<float>(), dout.data<float>(), x.data<float>(), x.numel());
}

void tanh_forward(const Tensor& out, const Tensor& x) {
  const char* op = "tanh_forward";
  expect_args(op, DType::F32, {{x, "x"}, {out, "out"}});
  expect_same_shape(op, {{x, "x"}, {out, "out"}});
  PK_ON_DEVICE(x.device, tanh_forward, out.data<float>(), x.data<float>(), x.numel());
}

void tanh_backward(const Tensor& dx, const Tensor& dout, const Tensor& out) {
  const char* op = "tanh_backward";
  expect_args(op, DType::F32, {{out, "out"}, {dx, "dx"}, {dout, "dout"}});
  expect_same_shape(op, {{out, "out"}, {dx, "dx"}, {dout, "dout"}});
  PK_ON_DEVICE(out.device, tanh_backward, dx.data<float>(), dout.data<float>(), out.data<float>(), out.numel());
}

void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up) {
  const char* op = "swiglu_forward";
  expect_args(op, DType::F32, {{gate, "gate"}, {up, "up"}, {out, "out"}});
  expect_same_shape(op, {{gate, "gate"}, {up, "up"}, {out, "out"}});
  PK_ON_DEVICE(gate.device, swiglu_forward, out.data<float>(), gate.data<float>(), up.data<float>(), gate.numel());
}

void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up) {
  const char* op = "swiglu_backward";
  expect_args(op, DType::F32, {{gate, "gate"}, {up, "up"}, {dout, "dout"}, {dgate, "dgate"}, {dup, "dup"}});
  expect_same_shape(op, {{gate, "gate"}, {up, "up"}, {dout, "dout"}, {dgate, "dgate"}, {dup, "dup"}});
  if (dgate.raw() == dup.raw() && gate.numel() > 0)
    fail("E_ARG", named(op, "dup") + ": must not be the same tensor as dgate");
  PK_ON_DEVICE(gate.device, swiglu_backward, dgate.data<float>(), dup.data<float>(), dout.data<float>(),
               gate.data<float>(), up.data<float>(), gate.numel());
}

void add(const Tensor& out, const Tensor& a, const Tensor& b) {
  const char* op = "add";
  expect_args(op, DType::F32, {{a, "a"}, {b, "b"}, {out, "out"}});
  expect_same_shape(op, {{a, "a"}, {b, "b"}, {out, "out"}});
  PK_ON_DEVICE(a.device, add, out.data<float>(), a.data<float>(), b.data<float>(), a.numel());
}

void axpy(const Tensor& y, const Tensor& x, float a) {
  const char* op = "axpy";
  expect_args(op, DType::F32, {{y, "y"}, {x, "x"}});
  expect_same_shape(op, {{y, "y"}, {x, "x"}});
  PK_ON_DEVICE(y.device, axpy, y.data<float>(), x.data<float>(), a, y.numel());
}

void copy_cols(const Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width) {
  const char* op = "copy_cols";
  expect_args(op, DType::F32, {{dst, "dst"}, {src, "src"}});
  expect_ndim(dst, 2, named(op, "dst").c_str());
  expect_ndim(src, 2, named(op, "src").c_str());
  if (dst.dim(0) != src.dim(0))
    fail("E_SHAPE", named(op, "dst") + ": expected " + std::to_string(src.dim(0)) + " rows (src's), got " + dst.describe());
  const auto fits = [&](const Tensor& t, int64_t col, const char* name) {
    if (col < 0 || width < 0 || col + width > t.dim(1))
      fail("E_ARG", named(op, name) + ": columns [" + std::to_string(col) + ", " + std::to_string(col + width) +
                        ") are outside its " + std::to_string(t.dim(1)) + " (" + t.describe() + ")");
  };
  fits(dst, dst_col, "dst");
  fits(src, src_col, "src");
  if (dst.storage == src.storage) fail("E_ARG", named(op, "dst") + ": must not share memory with src");
  PK_ON_DEVICE(dst.device, copy_cols, dst.data<float>(), dst.dim(1), dst_col, src.data<float>(), src.dim(1), src_col,
               src.dim(0), width);
}

void keep_masked(const Tensor& x, const Tensor& keep) {
  const char* op = "keep_masked";
  expect_args(op, DType::F32, {{x, "x"}});
  expect_dtype(keep, DType::U8, named(op, "keep").c_str());
  expect_same_device(x, keep, named(op, "x").c_str(), named(op, "keep").c_str());
  expect_shape(keep, x.shape, named(op, "keep").c_str());
  PK_ON_DEVICE(x.device, keep_masked, x.data<float>(), keep.data<uint8_t>(), x.numel());
}

void cast(const Tensor& out, const Tensor& x) {
  const char* op = "cast";
  expect_same_device(x, out, named(op, "x").c_str(), named(op, "out").c_str());
  expect_same_shape(op, {{x, "x"}, {out, "out"}});
  if (x.dtype == DType::F32 && out.dtype == DType::BF16) {
    PK_ON_DEVICE(x.device, cast_f32_to_bf16, out.data<bf16>(), x.data<float>(), x.numel());
  } else if (x.dtype == DType::BF16 && out.dtype == DType::F32) {
    PK_ON_DEVICE(x.device, cast_bf16_to_f32, out.data<float>(), x.data<bf16>(), x.numel());
  } else {
    fail("E_DTYPE", std::string(op) + ": converts f32 -> bf16 or bf16 -> f32, got x " + x.describe() + " and out " +
                        out.describe());
  }
}

// ---- Dropout ----------------------------------------------------------------------------------

void dropout_forward(const Tensor& out, const Tensor& x, float p, uint64_t seed, uint64_t offset) {
  const char* op = "dropout_forward";
  expect_args(op, DType::F32, {{x, "x"}, {out, "out"}});
  expect_same_shape(op, {{x, "x"}, {out, "out"}});
  expect_probability(op, p);
  PK_ON_DEVICE(x.device, dropout_forward, out.data<float>(), x.data<float>(), x.numel(), p, seed, offset);
}

void dropout_backward(const Tensor& dx, const Tensor& dout, float p, uint64_t seed, uint64_t offset) {
  const char* op = "dropout_backward";
  expect_args(op, DType::F32, {{dout, "dout"}, {dx, "dx"}});
  expect_same_shape(op, {{dout, "dout"}, {dx, "dx"}});
  expect_probability(op, p);
  PK_ON_DEVICE(dout.device, dropout_backward, dx.data<float>(), dout.data<float>(), dout.numel(), p, seed, offset);
}

}  // namespace pk::ops
