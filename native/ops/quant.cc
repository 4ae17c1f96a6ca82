#include "peftkit/ops/quant.h"

#include "peftkit/kernels.h"

namespace pk::ops {

namespace {

void expect_blocksize(int64_t blocksize, const char* what) {
  if (blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)) != 0)
    fail("E_ARG", std::string(what) + " must be a power of two from 32 to 4096 (32, 64, 128, 256, 512, 1024, 2048 "
                                      "or 4096), got " + std::to_string(blocksize));
}

void expect_numel(const Tensor& t, int64_t n, const char* what, const char* why) {
  if (t.numel() != n)
    fail("E_SHAPE", std::string(what) + ": expected " + std::to_string(n) + " elements (" + why + "), got " +
                        t.describe());
}

void expect_float_out(const Tensor& t, const char* what) {
  if (t.dtype != DType::F32 && t.dtype != DType::BF16)
    fail("E_DTYPE", std::string(what) + ": expected dtype f32 or bf16, got " + t.describe());
}

int64_t blocks(int64_t n, int64_t blocksize) { return (n + blocksize - 1) / blocksize; }

// packed and absmax of a 4-bit tensor of n elements.
void expect_4bit_state(const Tensor& packed, const Tensor& absmax, int64_t n, int64_t blocksize) {
  expect_dtype(packed, DType::U8, "packed");
  expect_dtype(absmax, DType::F32, "absmax");
  expect_numel(packed, (n + 1) / 2, "packed", "two 4-bit codes a byte");
  expect_numel(absmax, blocks(n, blocksize), "absmax", "one per block");
}

}  // namespace

void quantize_4bit(const Tensor& packed, const Tensor& absmax, const Tensor& x, int64_t blocksize, Quant4Type type) {
  expect_blocksize(blocksize, "blocksize");
  expect_dtype(x, DType::F32, "x");
  const int64_t n = x.numel();
  expect_4bit_state(packed, absmax, n, blocksize);
  expect_same_device(x, packed, "x", "packed");
  expect_same_device(x, absmax, "x", "absmax");
  if (x.device == Device::CPU)
    return cpu::quantize_4bit(packed.data<uint8_t>(), absmax.data<float>(), x.data<float>(), n, blocksize, type);
#ifdef PEFTKIT_CUDA
  cuda::quantize_4bit(packed.data<uint8_t>(), absmax.data<float>(), x.data<float>(), n, blocksize, type);
#endif
}

void dequantize_4bit(const Tensor& out, const Tensor& packed, const Tensor& absmax, int64_t blocksize,
                     Quant4Type type) {
  expect_blocksize(blocksize, "blocksize");
  expect_float_out(out, "out");
  const int64_t n = out.numel();
  expect_4bit_state(packed, absmax, n, blocksize);
  expect_same_device(out, packed, "out", "packed");
  expect_same_device(out, absmax, "out", "absmax");
  if (out.device == Device::CPU)
    return cpu::dequantize_4bit(out.raw(), out.dtype, packed.data<uint8_t>(), absmax.data<float>(), n, blocksize, type);
#ifdef PEFTKIT_CUDA
  cuda::dequantize_4bit(out.raw(), out.dtype, packed.data<uint8_t>(), absmax.data<float>(), n, blocksize, type);
#endif
}

namespace {
void expect_double_quant(const Tensor& absmax, const Tensor& q, const Tensor& absmax2, int64_t blocksize) {
  expect_blocksize(blocksize, "nested blocksize");
  expect_dtype(absmax, DType::F32, "absmax");
  expect_dtype(q, DType::U8, "q");
  expect_dtype(absmax2, DType::F32, "absmax2");
  expect_numel(q, absmax.numel(), "q", "one code per absmax");
  expect_numel(absmax2, blocks(absmax.numel(), blocksize), "absmax2", "one per nested block");
  expect_same_device(absmax, q, "absmax", "q");
  expect_same_device(absmax, absmax2, "absmax", "absmax2");
}
}  // namespace

float double_quant(const Tensor& q, const Tensor& absmax2, const Tensor& absmax, int64_t blocksize) {
  expect_double_quant(absmax, q, absmax2, blocksize);
  const int64_t n = absmax.numel();
  if (absmax.device == Device::CPU) {
    const float offset = cpu::absmax_mean(absmax.data<float>(), n);
    cpu::quantize_8bit_dynamic(q.data<uint8_t>(), absmax2.data<float>(), absmax.data<float>(), offset, n, blocksize);
    return offset;
  }
#ifdef PEFTKIT_CUDA
  const float offset = cuda::absmax_mean(absmax.data<float>(), n);
  cuda::quantize_8bit_dynamic(q.data<uint8_t>(), absmax2.data<float>(), absmax.data<float>(), offset, n, blocksize);
  return offset;
#else
  return 0.f;
#endif
}

void double_dequant(const Tensor& absmax, const Tensor& q, const Tensor& absmax2, float offset, int64_t blocksize) {
  expect_double_quant(absmax, q, absmax2, blocksize);
  const int64_t n = absmax.numel();
  if (absmax.device == Device::CPU)
    return cpu::dequantize_8bit_dynamic(absmax.data<float>(), q.data<uint8_t>(), absmax2.data<float>(), offset, n,
                                        blocksize);
#ifdef PEFTKIT_CUDA
  cuda::dequantize_8bit_dynamic(absmax.data<float>(), q.data<uint8_t>(), absmax2.data<float>(), offset, n, blocksize);
#endif
}

namespace {
// rows, cols of an int8 weight [rows, cols] with scb [rows].
void expect_int8_state(const Tensor& cb, const Tensor& scb) {
  expect_dtype(cb, DType::I8, "cb");
  expect_ndim(cb, 2, "cb");
  expect_dtype(scb, DType::F32, "scb");
  expect_shape(scb, {cb.dim(0)}, "scb");
  expect_same_device(cb, scb, "cb", "scb");
}
}  // namespace

void quantize_int8_rowwise(const Tensor& cb, const Tensor& scb, const Tensor& w) {
  expect_dtype(w, DType::F32, "w");
  expect_ndim(w, 2, "w");
  expect_int8_state(cb, scb);
  expect_shape(cb, w.shape, "cb");
  expect_same_device(w, cb, "w", "cb");
  const int64_t rows = w.dim(0), cols = w.dim(1);
  if (w.device == Device::CPU)
    return cpu::quantize_int8_rowwise(cb.data<int8_t>(), scb.data<float>(), w.data<float>(), rows, cols);
#ifdef PEFTKIT_CUDA
  cuda::quantize_int8_rowwise(cb.data<int8_t>(), scb.data<float>(), w.data<float>(), rows, cols);
#endif
}

void dequantize_int8_rowwise(const Tensor& out, const Tensor& cb, const Tensor& scb) {
  expect_float_out(out, "out");
  expect_int8_state(cb, scb);
  expect_shape(out, cb.shape, "out");
  expect_same_device(out, cb, "out", "cb");
  const int64_t rows = cb.dim(0), cols = cb.dim(1);
  if (out.device == Device::CPU)
    return cpu::dequantize_int8_rowwise(out.raw(), out.dtype, cb.data<int8_t>(), scb.data<float>(), rows, cols);
#ifdef PEFTKIT_CUDA
  cuda::dequantize_int8_rowwise(out.raw(), out.dtype, cb.data<int8_t>(), scb.data<float>(), rows, cols);
#endif
}

}  // namespace pk::ops
