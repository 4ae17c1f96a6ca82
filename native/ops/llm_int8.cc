#include "peftkit/ops/llm_int8.h"

#include <cmath>
#include <initializer_list>

#include "peftkit/kernels.h"

namespace pk::ops {

namespace {

void expect_threshold(float threshold) {
  if (!std::isfinite(threshold) || threshold < 0.f)
    fail("E_ARG", "LLM.int8 threshold: expected a finite number >= 0 (0: no outlier columns), got " +
                      std::to_string(threshold));
}

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

}  // namespace pk::ops
