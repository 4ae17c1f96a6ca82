#include "peftkit/ops/lora.h"

#include <cmath>
#include <initializer_list>

#include "peftkit/kernels.h"

namespace pk::ops {

namespace {

struct Arg {
  const Tensor& t;
  const char* what;
  bool present() const { return t.storage != nullptr; }
};

void expect_f32(const Arg& a) {
  if (a.present()) expect_dtype(a.t, DType::F32, a.what);
}

// The leading dims of x [..., last]: they flatten into the M rows of the matmul.
std::vector<int64_t> leading_dims(const Arg& x, const char* last_name) {
  if (x.t.ndim() < 1)
    fail("E_SHAPE", std::string(x.what) + ": expected at least 1 dimension [..., " + last_name + "], got " +
                        x.t.describe());
  return std::vector<int64_t>(x.t.shape.begin(), x.t.shape.end() - 1);
}

std::vector<int64_t> with_last(std::vector<int64_t> lead, int64_t last) {
  lead.push_back(last);
  return lead;
}

int64_t product(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// W [N, K] (f32 or bf16) whose K must match the input's last dimension.
void expect_weight(const Arg& w, int64_t K, const char* k_from) {
  if (w.t.dtype != DType::F32 && w.t.dtype != DType::BF16)
    fail("E_DTYPE", std::string(w.what) + ": expected dtype f32 or bf16, got " + w.t.describe());
  expect_ndim(w.t, 2, w.what);
  if (w.t.dim(1) != K)
    fail("E_SHAPE", std::string(w.what) + ": expected shape [N, " + std::to_string(K) + "] (K from " + k_from +
                        "), got " + w.t.describe());
}

// A quantized W [N, K] (rows N, cols K) whose K must match the input's last dimension.
void expect_quant_weight(const QuantWeightTensors& W, int64_t K, const char* what, const char* k_from) {
  check_quant_weight(W);
  if (W.cols != K)
    fail("E_SHAPE", std::string(what) + ": expected shape [N, " + std::to_string(K) + "] (K from " + k_from +
                        "), got [" + std::to_string(W.rows) + ", " + std::to_string(W.cols) + "]");
}

QuantWeight kernel_weight(const QuantWeightTensors& W) {
  return QuantWeight{W.format, W.codes.raw(), W.scales.data<float>(), W.blocksize, W.rows, W.cols};
}

// A [r, K], r >= 1.
int64_t expect_lora_a(const Arg& a, int64_t K) {
  expect_dtype(a.t, DType::F32, a.what);
  expect_ndim(a.t, 2, a.what);
  if (a.t.dim(1) != K || a.t.dim(0) < 1)
    fail("E_SHAPE", std::string(a.what) + ": expected shape [r, " + std::to_string(K) + "] with rank r >= 1, got " +
                        a.t.describe());
  return a.t.dim(0);
}

// The low-rank side of a backward (shared by the f32 and quantized-W forms): A [r, K], B [N, r],
// XA [..., r], dA, dB, and the input gradients shaped like Xa. Returns r.
int64_t expect_backward_low_rank(const Arg& a, const Arg& b, const Arg& xa_saved, const Arg& da, const Arg& db,
                                 const Arg& dx, const Arg& dxa, const std::vector<int64_t>& lead,
                                 const std::vector<int64_t>& xa_shape, int64_t N, int64_t K) {
  const int64_t r = expect_lora_a(a, K);
  expect_shape(b.t, {N, r}, b.what);
  expect_shape(xa_saved.t, with_last(lead, r), xa_saved.what);
  expect_shape(da.t, {r, K}, da.what);
  expect_shape(db.t, {N, r}, db.what);
  if (dx.present()) expect_shape(dx.t, xa_shape, dx.what);
  if (dxa.present()) expect_shape(dxa.t, xa_shape, dxa.what);
  return r;
}

void expect_scale(float s, const char* what) {
  if (!std::isfinite(s)) fail("E_ARG", std::string(what) + ": expected a finite number, got " + std::to_string(s));
}

// Every present tensor on the device of the first one.
void expect_one_device(std::initializer_list<Arg> args) {
  const Arg& first = *args.begin();
  for (const Arg& a : args)
    if (a.present()) expect_same_device(first.t, a.t, first.what, a.what);
}

// An output must not share memory with any other argument: kernels read inputs while writing it.
void expect_distinct(std::initializer_list<Arg> outputs, std::initializer_list<Arg> args) {
  for (const Arg& o : outputs) {
    if (!o.present()) continue;
    for (const Arg& a : args)
      if (a.what != o.what && a.present() && a.t.storage == o.t.storage)
        fail("E_ARG", std::string(o.what) + " and " + a.what + " are the same tensor; " + o.what +
                          " is written while " + a.what + " is read, so pass a separate tensor");
  }
}

}  // namespace

void lora_forward(const Tensor& Y, const Tensor& XA, const Tensor& X, const Tensor& Xa, const Tensor& W,
                  const Tensor& A, const Tensor& B, const Tensor& bias, float s, Compute compute) {
  const Arg y{Y, "lora_forward Y"}, xa_out{XA, "lora_forward XA"}, x{X, "lora_forward X"},
      xa{Xa, "lora_forward Xa (dropoutInput)"}, w{W, "lora_forward W"}, a{A, "lora_forward A"}, b{B, "lora_forward B"},
      bi{bias, "lora_forward bias"};
  for (const Arg& t : {y, xa_out, x, xa, a, b, bi}) expect_f32(t);
  expect_scale(s, "lora_forward scale");
  const std::vector<int64_t> lead = leading_dims(x, "K");
  const int64_t K = X.dim(-1), M = product(lead);
  expect_weight(w, K, "X [..., K]");
  const int64_t N = W.dim(0), r = expect_lora_a(a, K);
  expect_shape(B, {N, r}, b.what);
  if (bi.present()) expect_shape(bias, {N}, bi.what);
  if (xa.present()) expect_shape(Xa, X.shape, xa.what);
  expect_shape(Y, with_last(lead, N), y.what);
  expect_shape(XA, with_last(lead, r), xa_out.what);
  expect_one_device({y, xa_out, x, xa, w, a, b, bi});
  expect_distinct({y, xa_out}, {y, xa_out, x, xa, w, a, b, bi});

  const float* xa_ptr = xa.present() ? Xa.data<float>() : X.data<float>();
  const float* bias_ptr = bi.present() ? bias.data<float>() : nullptr;
  if (Y.device == Device::CPU) {
    cpu::lora_forward(Y.data<float>(), XA.data<float>(), X.data<float>(), xa_ptr, W.raw(), W.dtype, A.data<float>(),
                      B.data<float>(), bias_ptr, s, M, N, K, r, compute);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::lora_forward(Y.data<float>(), XA.data<float>(), X.data<float>(), xa_ptr, W.raw(), W.dtype, A.data<float>(),
                     B.data<float>(), bias_ptr, s, M, N, K, r, compute);
#endif
}

void lora_backward(const Tensor& dX, const Tensor& dXa, const Tensor& dA, const Tensor& dB, const Tensor& dY,
                   const Tensor& Xa, const Tensor& XA, const Tensor& W, const Tensor& A, const Tensor& B, float s,
                   Compute compute) {
  const Arg dx{dX, "lora_backward dX"}, dxa{dXa, "lora_backward dXa (dDropoutInput)"}, da{dA, "lora_backward dA"},
      db{dB, "lora_backward dB"}, dy{dY, "lora_backward dY"}, xa{Xa, "lora_backward Xa"},
      xa_saved{XA, "lora_backward XA"}, w{W, "lora_backward W"}, a{A, "lora_backward A"}, b{B, "lora_backward B"};
  for (const Arg& t : {dx, dxa, da, db, dy, xa, xa_saved, a, b}) expect_f32(t);
  expect_scale(s, "lora_backward scale");
  const std::vector<int64_t> lead = leading_dims(dy, "N");
  const int64_t N = dY.dim(-1), M = product(lead);
  leading_dims(xa, "K");
  const int64_t K = Xa.dim(-1);
  expect_shape(Xa, with_last(lead, K), xa.what);
  expect_weight(w, K, "Xa [..., K]");
  if (W.dim(0) != N)
    fail("E_SHAPE", std::string(w.what) + ": expected shape [" + std::to_string(N) + ", " + std::to_string(K) +
                        "] (N from dY [..., N]), got " + W.describe());
  const int64_t r = expect_backward_low_rank(a, b, xa_saved, da, db, dx, dxa, lead, Xa.shape, N, K);
  expect_one_device({da, dx, dxa, db, dy, xa, xa_saved, w, a, b});
  expect_distinct({dx, dxa, da, db}, {dx, dxa, da, db, dy, xa, xa_saved, w, a, b});

  const Tensor scratch = Tensor::empty({M, r}, DType::F32, dA.device);
  float* dx_ptr = dx.present() ? dX.data<float>() : nullptr;
  float* dxa_ptr = dxa.present() ? dXa.data<float>() : nullptr;
  if (dA.device == Device::CPU) {
    cpu::lora_backward(dx_ptr, dxa_ptr, dA.data<float>(), dB.data<float>(), dY.data<float>(), Xa.data<float>(),
                       XA.data<float>(), W.raw(), W.dtype, A.data<float>(), B.data<float>(), s, M, N, K, r,
                       scratch.data<float>(), compute);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::lora_backward(dx_ptr, dxa_ptr, dA.data<float>(), dB.data<float>(), dY.data<float>(), Xa.data<float>(),
                      XA.data<float>(), W.raw(), W.dtype, A.data<float>(), B.data<float>(), s, M, N, K, r,
                      scratch.data<float>(), compute);
#endif
}

void lora_forward_quant(const Tensor& Y, const Tensor& XA, const Tensor& X, const Tensor& Xa,
                        const QuantWeightTensors& W, const Tensor& A, const Tensor& B, const Tensor& bias, float s,
                        Compute compute) {
  const Arg y{Y, "lora_forward Y"}, xa_out{XA, "lora_forward XA"}, x{X, "lora_forward X"},
      xa{Xa, "lora_forward Xa (dropoutInput)"}, wc{W.codes, "lora_forward W codes"}, a{A, "lora_forward A"},
      b{B, "lora_forward B"}, bi{bias, "lora_forward bias"};
  for (const Arg& t : {y, xa_out, x, xa, a, b, bi}) expect_f32(t);
  expect_scale(s, "lora_forward scale");
  const std::vector<int64_t> lead = leading_dims(x, "K");
  const int64_t K = X.dim(-1), M = product(lead);
  expect_quant_weight(W, K, "lora_forward W", "X [..., K]");
  const int64_t N = W.rows, r = expect_lora_a(a, K);
  expect_shape(B, {N, r}, b.what);
  if (bi.present()) expect_shape(bias, {N}, bi.what);
  if (xa.present()) expect_shape(Xa, X.shape, xa.what);
  expect_shape(Y, with_last(lead, N), y.what);
  expect_shape(XA, with_last(lead, r), xa_out.what);
  expect_one_device({y, xa_out, x, xa, wc, a, b, bi});
  expect_distinct({y, xa_out}, {y, xa_out, x, xa, wc, {W.scales, "lora_forward W scales"}, a, b, bi});

  const float* xa_ptr = xa.present() ? Xa.data<float>() : X.data<float>();
  const float* bias_ptr = bi.present() ? bias.data<float>() : nullptr;
  const QuantWeight q = kernel_weight(W);
  if (Y.device == Device::CPU) {
    cpu::lora_forward_quant(Y.data<float>(), XA.data<float>(), X.data<float>(), xa_ptr, q, A.data<float>(),
                            B.data<float>(), bias_ptr, s, M, N, K, r, compute);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::lora_forward_quant(Y.data<float>(), XA.data<float>(), X.data<float>(), xa_ptr, q, A.data<float>(),
                           B.data<float>(), bias_ptr, s, M, N, K, r, compute);
#endif
}

void lora_backward_quant(const Tensor& dX, const Tensor& dXa, const Tensor& dA, const Tensor& dB, const Tensor& dY,
                         const Tensor& Xa, const Tensor& XA, const QuantWeightTensors& W, const Tensor& A,
                         const Tensor& B, float s, Compute compute) {
  const Arg dx{dX, "lora_backward dX"}, dxa{dXa, "lora_backward dXa (dDropoutInput)"}, da{dA, "lora_backward dA"},
      db{dB, "lora_backward dB"}, dy{dY, "lora_backward dY"}, xa{Xa, "lora_backward Xa"},
      xa_saved{XA, "lora_backward XA"}, wc{W.codes, "lora_backward W codes"}, a{A, "lora_backward A"},
      b{B, "lora_backward B"};
  for (const Arg& t : {dx, dxa, da, db, dy, xa, xa_saved, a, b}) expect_f32(t);
  expect_scale(s, "lora_backward scale");
  const std::vector<int64_t> lead = leading_dims(dy, "N");
  const int64_t N = dY.dim(-1), M = product(lead);
  leading_dims(xa, "K");
  const int64_t K = Xa.dim(-1);
  expect_shape(Xa, with_last(lead, K), xa.what);
  expect_quant_weight(W, K, "lora_backward W", "Xa [..., K]");
  if (W.rows != N)
    fail("E_SHAPE", "lora_backward W: expected shape [" + std::to_string(N) + ", " + std::to_string(K) +
                        "] (N from dY [..., N]), got [" + std::to_string(W.rows) + ", " + std::to_string(W.cols) + "]");
  const int64_t r = expect_backward_low_rank(a, b, xa_saved, da, db, dx, dxa, lead, Xa.shape, N, K);
  expect_one_device({da, dx, dxa, db, dy, xa, xa_saved, wc, a, b});
  expect_distinct({dx, dxa, da, db},
                  {dx, dxa, da, db, dy, xa, xa_saved, wc, {W.scales, "lora_backward W scales"}, a, b});

  const Tensor scratch = Tensor::empty({M, r}, DType::F32, dA.device);
  float* dx_ptr = dx.present() ? dX.data<float>() : nullptr;
  float* dxa_ptr = dxa.present() ? dXa.data<float>() : nullptr;
  const QuantWeight q = kernel_weight(W);
  if (dA.device == Device::CPU) {
    cpu::lora_backward_quant(dx_ptr, dxa_ptr, dA.data<float>(), dB.data<float>(), dY.data<float>(), Xa.data<float>(),
                             XA.data<float>(), q, A.data<float>(), B.data<float>(), s, M, N, K, r,
                             scratch.data<float>(), compute);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::lora_backward_quant(dx_ptr, dxa_ptr, dA.data<float>(), dB.data<float>(), dY.data<float>(), Xa.data<float>(),
                            XA.data<float>(), q, A.data<float>(), B.data<float>(), s, M, N, K, r,
                            scratch.data<float>(), compute);
#endif
}

}  // namespace pk::ops
