// The Linear op (ops/linear.h): one entry for every storage of the frozen weight, dispatching to
// the kernels of the op table — lora_forward/backward (dense W), lora_forward/backward_quant
// (NF4/FP4/int8 W), llm_int8_forward (int8 W with an outlier threshold), gemm/gemm_quant (no
// low-rank term). The per-storage checks below name the caller's arguments.
#include "peftkit/ops/linear.h"

#include <cmath>
#include <initializer_list>

#include "peftkit/kernels.h"
#include "peftkit/ops/bias.h"
#include "peftkit/ops/check.h"
#include "peftkit/ops/gemm.h"

namespace pk::ops {

namespace {

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

void expect_threshold(float threshold) {
  if (!std::isfinite(threshold) || threshold < 0.f)
    fail("E_ARG", "LLM.int8 threshold: expected a finite number >= 0 (0: no outlier columns), got " +
                      std::to_string(threshold));
}

// The activations' int32 sums reach 127²·K; bitsandbytes' igemm has the same int32 bound.
void expect_int32_sums(int64_t K) {
  constexpr int64_t kMaxK = 2147483647 / (127 * 127);
  if (K > kMaxK)
    fail("E_SHAPE", "LLM.int8: K = " + std::to_string(K) + " in_features would overflow the int32 sums (at most " +
                        std::to_string(kMaxK) + ")");
}

int64_t rows_of(const Tensor& x, const char* what) {
  if (x.ndim() < 1) fail("E_SHAPE", std::string(what) + ": expected at least 1 dimension [..., K], got " + x.describe());
  int64_t m = 1;
  for (int i = 0; i + 1 < x.ndim(); i++) m *= x.dim(i);
  return m;
}

std::vector<int64_t> with_last(const Tensor& x, int64_t last) {
  std::vector<int64_t> s(x.shape.begin(), x.shape.end() - 1);
  s.push_back(last);
  return s;
}

void expect_int8_weight(const QuantWeightTensors& W, int64_t K) {
  if (W.format != QuantFormat::INT8)
    fail("E_UNSUPPORTED", "LLM.int8 W: expected an int8 weight (CB, SCB), got a 4-bit one (the outlier threshold "
                          "applies to int8 bases only)");
  check_quant_weight(W);
  if (W.cols != K)
    fail("E_SHAPE", "LLM.int8 W: expected shape [N, " + std::to_string(K) + "] (K from X [..., K]), got [" +
                        std::to_string(W.rows) + ", " + std::to_string(W.cols) + "]");
}

// Carves LlmInt8Scratch out of one byte tensor, each part 64-byte aligned.
struct ScratchLayout {
  int64_t ca, sca, outlier, cols, acc, bytes;
  ScratchLayout(int64_t M, int64_t N, int64_t K) {
    auto up = [](int64_t b) { return (b + 63) / 64 * 64; };
    int64_t at = 0;
    acc = at;
    at += K > kLlmInt8ExactK ? up(4 * M * N) : 0;
    sca = at;
    at += up(4 * M);
    cols = at;
    at += up(4 * K);
    ca = at;
    at += up(M * K);
    outlier = at;
    at += up(K);
    bytes = at;
  }
};

}  // namespace

static void lora_forward(const Tensor& Y, const Tensor& XA, const Tensor& X, const Tensor& Xa, const Tensor& W,
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
  PK_DISPATCH(Y.device, lora_forward(Y.data<float>(), XA.data<float>(), X.data<float>(), xa_ptr, W.raw(), W.dtype, A.data<float>(), B.data<float>(), bias_ptr, s, M, N, K, r, compute));
}

static void lora_backward(const Tensor& dX, const Tensor& dXa, const Tensor& dA, const Tensor& dB, const Tensor& dY,
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
  PK_DISPATCH(dA.device, lora_backward(dx_ptr, dxa_ptr, dA.data<float>(), dB.data<float>(), dY.data<float>(), Xa.data<float>(), XA.data<float>(), W.raw(), W.dtype, A.data<float>(), B.data<float>(), s, M, N, K, r, scratch.data<float>(), compute));
}

static void lora_forward_quant(const Tensor& Y, const Tensor& XA, const Tensor& X, const Tensor& Xa,
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
  PK_DISPATCH(Y.device, lora_forward_quant(Y.data<float>(), XA.data<float>(), X.data<float>(), xa_ptr, q, A.data<float>(), B.data<float>(), bias_ptr, s, M, N, K, r, compute));
}

static void lora_backward_quant(const Tensor& dX, const Tensor& dXa, const Tensor& dA, const Tensor& dB, const Tensor& dY,
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
  PK_DISPATCH(dA.device, lora_backward_quant(dx_ptr, dxa_ptr, dA.data<float>(), dB.data<float>(), dY.data<float>(), Xa.data<float>(), XA.data<float>(), q, A.data<float>(), B.data<float>(), s, M, N, K, r, scratch.data<float>(), compute));
}



static void llm_int8_forward(const Tensor& Y, const Tensor& XA, const Tensor& X, const Tensor& Xa,
                      const QuantWeightTensors& W, float threshold, const Tensor& A, const Tensor& B,
                      const Tensor& bias, float s) {
  expect_threshold(threshold);
  if (!std::isfinite(s)) fail("E_ARG", "llmInt8Forward scale: expected a finite number, got " + std::to_string(s));
  expect_dtype(X, DType::F32, "llmInt8Forward X");
  expect_dtype(Y, DType::F32, "llmInt8Forward Y");
  const int64_t M = rows_of(X, "llmInt8Forward X"), K = X.dim(-1);
  expect_int8_weight(W, K);
  expect_int32_sums(K);
  const int64_t N = W.rows;
  expect_shape(Y, with_last(X, N), "llmInt8Forward Y");
  if (present(bias)) {
    expect_dtype(bias, DType::F32, "llmInt8Forward bias");
    expect_shape(bias, {N}, "llmInt8Forward bias");
  }
  const bool lora = present(A);
  int64_t r = 0;
  if (lora) {
    expect_dtype(A, DType::F32, "llmInt8Forward A");
    expect_ndim(A, 2, "llmInt8Forward A");
    r = A.dim(0);
    if (A.dim(1) != K || r < 1)
      fail("E_SHAPE", "llmInt8Forward A: expected shape [r, " + std::to_string(K) + "] with rank r >= 1, got " +
                          A.describe());
    expect_dtype(B, DType::F32, "llmInt8Forward B");
    expect_shape(B, {N, r}, "llmInt8Forward B");
    expect_dtype(XA, DType::F32, "llmInt8Forward XA");
    expect_shape(XA, with_last(X, r), "llmInt8Forward XA");
    if (present(Xa)) {
      expect_dtype(Xa, DType::F32, "llmInt8Forward Xa (dropoutInput)");
      expect_shape(Xa, X.shape, "llmInt8Forward Xa (dropoutInput)");
    }
  } else if (present(B) || present(XA) || present(Xa)) {
    fail("E_ARG", "llmInt8Forward: B, XA and dropoutInput belong to a LoRA term, which needs A too");
  }
  struct Named {
    const Tensor& t;
    const char* what;
  };
  const std::initializer_list<Named> all = {
      {Y, "llmInt8Forward Y"}, {XA, "llmInt8Forward XA"}, {X, "llmInt8Forward X"},
      {Xa, "llmInt8Forward Xa (dropoutInput)"}, {W.codes, "llmInt8Forward W cb"}, {W.scales, "llmInt8Forward W scb"},
      {A, "llmInt8Forward A"}, {B, "llmInt8Forward B"}, {bias, "llmInt8Forward bias"}};
  for (const Named& a : all)
    if (present(a.t)) expect_same_device(Y, a.t, "llmInt8Forward Y", a.what);
  // Y and XA are written while everything else is read.
  for (const Named* o = all.begin(); o != all.begin() + 2; o++) {
    if (!present(o->t)) continue;
    for (const Named& a : all)
      if (a.what != o->what && present(a.t) && a.t.storage == o->t.storage)
        fail("E_ARG", std::string(o->what) + " and " + a.what + " are the same tensor; " + o->what +
                          " is written while " + a.what + " is read, so pass a separate tensor");
  }

  const ScratchLayout lay(M, N, K);
  const Tensor scratch = Tensor::empty({lay.bytes}, DType::U8, Y.device);
  uint8_t* base = scratch.data<uint8_t>();
  LlmInt8Scratch sc;
  sc.ca = reinterpret_cast<int8_t*>(base + lay.ca);
  sc.sca = reinterpret_cast<float*>(base + lay.sca);
  sc.outlier = base + lay.outlier;
  sc.cols = reinterpret_cast<int32_t*>(base + lay.cols);
  sc.acc = K > kLlmInt8ExactK ? reinterpret_cast<int32_t*>(base + lay.acc) : nullptr;
  const QuantWeight q{W.format, W.codes.raw(), W.scales.data<float>(), W.blocksize, W.rows, W.cols};
  const float* xa_ptr = present(Xa) ? Xa.data<float>() : X.data<float>();
  float* xa_out = lora ? XA.data<float>() : nullptr;
  const float* a_ptr = lora ? A.data<float>() : nullptr;
  const float* b_ptr = lora ? B.data<float>() : nullptr;
  const float* bias_ptr = present(bias) ? bias.data<float>() : nullptr;
  PK_DISPATCH(Y.device, llm_int8_forward(Y.data<float>(), xa_out, X.data<float>(), xa_ptr, q, threshold, a_ptr, b_ptr, bias_ptr, s, M, N, K, r, sc));
}


void linear_forward(const Tensor& Y, const Tensor& X, const LinearWeight& W, const Tensor& bias, const LowRank& lr,
                    Compute compute) {
  if (W.quantized() && W.threshold >= 0.f) {
    // Its products are int8 with an f32 outlier part, whatever the model's compute precision.
    return llm_int8_forward(Y, lr.XA, X, lr.Xa, W.quant, W.threshold, lr.A, lr.B, bias, lr.s);
  }
  if (lr.present()) {
    if (W.quantized()) return lora_forward_quant(Y, lr.XA, X, lr.Xa, W.quant, lr.A, lr.B, bias, lr.s, compute);
    return lora_forward(Y, lr.XA, X, lr.Xa, W.dense, lr.A, lr.B, bias, lr.s, compute);
  }
  if (present(lr.B) || present(lr.XA) || present(lr.Xa))
    fail("E_ARG", "linear_forward: B, XA and dropoutInput belong to a low-rank term, which needs A too");
  // A plain Linear: the GEMM of the weight's storage on [M, K] views, then the bias.
  const Arg x{X, "linear_forward X"}, y{Y, "linear_forward Y"};
  const std::vector<int64_t> lead = leading_dims(x, "K");
  const int64_t M = product(lead), K = X.dim(-1);
  const int64_t N = W.quantized() ? W.quant.rows : (W.dense.ndim() == 2 ? W.dense.dim(0) : -1);
  if (!W.quantized()) expect_weight({W.dense, "linear_forward W"}, K, "X [..., K]");
  else expect_quant_weight(W.quant, K, "linear_forward W", "X [..., K]");
  expect_shape(Y, with_last(lead, N), y.what);
  const Tensor Y2 = Y.view(0, {M, N}), X2 = X.view(0, {M, K});
  if (W.quantized()) gemm_quant(Y2, X2, W.quant, true, 1.f, 0.f, compute);
  else gemm(Y2, X2, W.dense, false, true, 1.f, 0.f, compute);
  if (present(bias)) bias_add(Y, bias);
}

void linear_backward(const Tensor& dX, const Tensor& dY, const LinearWeight& W, const LowRank& lr, Compute compute) {
  if (lr.present()) {
    if (W.quantized()) return lora_backward_quant(dX, lr.dXa, lr.dA, lr.dB, dY, lr.Xa, lr.XA, W.quant, lr.A, lr.B, lr.s, compute);
    return lora_backward(dX, lr.dXa, lr.dA, lr.dB, dY, lr.Xa, lr.XA, W.dense, lr.A, lr.B, lr.s, compute);
  }
  if (!present(dX)) return;  // no input gradient wanted, and nothing else to compute
  const Arg dy{dY, "linear_backward dY"}, dx{dX, "linear_backward dX"};
  const std::vector<int64_t> lead = leading_dims(dy, "N");
  const int64_t M = product(lead), N = dY.dim(-1);
  const int64_t K = W.quantized() ? W.quant.cols : (W.dense.ndim() == 2 ? W.dense.dim(1) : -1);
  if (!W.quantized()) expect_weight({W.dense, "linear_backward W"}, K, "W [N, K]");
  else check_quant_weight(W.quant);
  expect_shape(dX, with_last(lead, K), dx.what);
  const Tensor dX2 = dX.view(0, {M, K}), dY2 = dY.view(0, {M, N});
  if (W.quantized()) gemm_quant(dX2, dY2, W.quant, false, 1.f, 0.f, compute);
  else gemm(dX2, dY2, W.dense, false, false, 1.f, 0.f, compute);
}

}  // namespace pk::ops
