#include "peftkit/ops/llm_int8.h"

#include <cmath>
#include <initializer_list>

#include "peftkit/kernels.h"

namespace pk::ops {

namespace {

bool present(const Tensor& t) { return t.storage != nullptr; }

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

void quantize_int8_vectorwise(const Tensor& CA, const Tensor& SCA, const Tensor& outlier_cols, const Tensor& X,
                              float threshold) {
  expect_threshold(threshold);
  expect_dtype(X, DType::F32, "quantizeInt8Vectorwise X");
  expect_ndim(X, 2, "quantizeInt8Vectorwise X");
  const int64_t M = X.dim(0), K = X.dim(1);
  expect_dtype(CA, DType::I8, "quantizeInt8Vectorwise CA");
  expect_dtype(SCA, DType::F32, "quantizeInt8Vectorwise SCA");
  expect_dtype(outlier_cols, DType::U8, "quantizeInt8Vectorwise outlierCols");
  expect_shape(CA, {M, K}, "quantizeInt8Vectorwise CA");
  expect_shape(SCA, {M}, "quantizeInt8Vectorwise SCA");
  expect_shape(outlier_cols, {K}, "quantizeInt8Vectorwise outlierCols");
  expect_same_device(X, CA, "quantizeInt8Vectorwise X", "quantizeInt8Vectorwise CA");
  expect_same_device(X, SCA, "quantizeInt8Vectorwise X", "quantizeInt8Vectorwise SCA");
  expect_same_device(X, outlier_cols, "quantizeInt8Vectorwise X", "quantizeInt8Vectorwise outlierCols");
  if (X.device == Device::CPU)
    return cpu::quantize_int8_vectorwise(CA.data<int8_t>(), SCA.data<float>(), outlier_cols.data<uint8_t>(),
                                         X.data<float>(), M, K, threshold);
#ifdef PEFTKIT_CUDA
  cuda::quantize_int8_vectorwise(CA.data<int8_t>(), SCA.data<float>(), outlier_cols.data<uint8_t>(), X.data<float>(),
                                 M, K, threshold);
#endif
}

void llm_int8_forward(const Tensor& Y, const Tensor& XA, const Tensor& X, const Tensor& Xa,
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
  if (Y.device == Device::CPU)
    return cpu::llm_int8_forward(Y.data<float>(), xa_out, X.data<float>(), xa_ptr, q, threshold, a_ptr, b_ptr,
                                 bias_ptr, s, M, N, K, r, sc);
#ifdef PEFTKIT_CUDA
  cuda::llm_int8_forward(Y.data<float>(), xa_out, X.data<float>(), xa_ptr, q, threshold, a_ptr, b_ptr, bias_ptr, s,
                         M, N, K, r, sc);
#endif
}

}  // namespace pk::ops
