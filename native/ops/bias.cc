#include "peftkit/ops/bias.h"

#include "peftkit/kernels.h"

namespace pk::ops {

namespace {
// Rows of a [..., C] tensor whose last dimension must equal the bias length.
int64_t rows_for(const Tensor& x, const Tensor& bias, const char* what) {
  expect_dtype(x, DType::F32, what);
  expect_dtype(bias, DType::F32, "bias");
  expect_ndim(bias, 1, "bias");
  expect_same_device(x, bias, what, "bias");
  if (x.ndim() < 1 || x.dim(-1) != bias.dim(0))
    fail("E_SHAPE", std::string(what) + ": last dimension must equal the bias length " + std::to_string(bias.dim(0)) +
                        ", got " + x.describe());
  return x.numel() / bias.dim(0);
}
}  // namespace

void bias_add(const Tensor& y, const Tensor& bias) {
  const int64_t N = rows_for(y, bias, "y"), C = bias.dim(0);
  if (y.device == Device::CPU) return cpu::bias_add(y.data<float>(), bias.data<float>(), N, C);
#ifdef PEFTKIT_CUDA
  cuda::bias_add(y.data<float>(), bias.data<float>(), N, C);
#endif
}

void bias_backward(const Tensor& dbias, const Tensor& dy) {
  const int64_t N = rows_for(dy, dbias, "dy"), C = dbias.dim(0);
  if (dy.device == Device::CPU) return cpu::bias_backward(dbias.data<float>(), dy.data<float>(), N, C);
#ifdef PEFTKIT_CUDA
  cuda::bias_backward(dbias.data<float>(), dy.data<float>(), N, C);
#endif
}

}  // namespace pk::ops
